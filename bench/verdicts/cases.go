package main

import (
	"fmt"

	"github.com/rollback-watcher/watcher/internal/stats"
)

// publishedCase is a failure of another canary judge, replayed as data.
type publishedCase struct {
	name     string
	mustFail bool
	run      func() caseResult
}

type caseResult struct {
	failed bool
	detail string
}

func shiftCase(after, before []float64, margin, alpha float64) caseResult {
	r := stats.Shift(after, before, stats.Increase, margin, alpha)
	return caseResult{r.Worse, fmt.Sprintf("Shift: n %d vs %d, medians %g vs %g, shift %.3g [%.3g, %.3g], margin %.3g, p %.3g (mann-whitney %.3g, median %.3g, exact %v)",
		r.NAfter, r.NBefore, r.MedianAfter, r.MedianBefore, r.Shift, r.Low, r.High, r.Margin, r.P, r.PMannWhitney, r.PMedian, r.Exact)}
}

func rateCase(ea, ta, eb, tb, margin, alpha float64) caseResult {
	r := stats.Rates(ea, ta, eb, tb, margin, alpha)
	return caseResult{r.Worse, fmt.Sprintf("Rates: errors %d/%d vs %d/%d, ratio %.3g [%.3g, %.3g], null ratio <= %.3g, p %.3g",
		r.ErrorsAfter, r.TotalAfter, r.ErrorsBefore, r.TotalBefore, r.Ratio, r.Low, r.High, 1+r.Margin, r.P)}
}

func repeat(v float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func cat(xs ...[]float64) []float64 {
	var out []float64
	for _, x := range xs {
		out = append(out, x...)
	}
	return out
}

func publishedCases() []publishedCase {
	k426 := []float64{0, 1, 2, 1, 0, 0}
	k799 := []float64{1, 4, 2, 3, 1}
	// spinnaker #5622: HTTP 307 rates per second, NaN replaced by 0 as the
	// reporter's nanStrategy did; as counts, each a rate over 1m.
	s5622 := []float64{0, 0.048, 0, 0.18, 0.089, 0, 0.098, 0.035, 0, 0}
	var s5622Errors float64
	for _, r := range s5622 {
		s5622Errors += r * 60
	}
	s6278 := cat(repeat(100, 7), repeat(1, 3))
	return []publishedCase{
		{"kayenta #426, sparse errors: canary [0,1,2,1,0,0] against 6 zeros, as Kayenta compared them (tolerance 0.25): no permutation or conditional test can fail this at 98%; even as 4 errors against 0 on equal traffic, all 4 on the canary's side has probability 0.0625 at equal rates, 0.095 at a ratio of 1.25", false,
			func() caseResult { return shiftCase(k426, repeat(0, 6), 0.25, 0.02) }},
		{"kayenta #426 as the watcher compares it: pre_deploy, lookback 30m of zeros at step 15s (120 samples)", true,
			func() caseResult { return shiftCase(k426, repeat(0, 120), 0.25, 0.02) }},
		{"kayenta #426 as counts: 4 errors in the canary's 6 intervals, none in the 120 of the lookback, 100 requests per interval", true,
			func() caseResult { return rateCase(4, 600, 0, 12000, 0.25, 0.02) }},
		{"kayenta #799: canary [1,4,2,3,1] against control [0,0,0,0,0] (NaN replaced by 0)", true,
			func() caseResult { return shiftCase(k799, repeat(0, 5), 0.25, 0.02) }},
		{"kayenta #799 as counts: 11 errors against 0, equal traffic (1000 requests a side)", true,
			func() caseResult { return rateCase(11, 1000, 0, 1000, 0.25, 0.02) }},
		{"spinnaker #5622: 0 HTTP 307s before, several after, judged a pass; as counts (each rate x 60s), equal traffic (10000 requests a side)", true,
			func() caseResult { return rateCase(s5622Errors, 10000, 0, 10000, 0.25, 0.02) }},
		{"spinnaker #5622 as samples against the lookback: 10 rates against 120 zeros", true,
			func() caseResult { return shiftCase(s5622, repeat(0, 120), 0.25, 0.02) }},
		{"spinnaker #6278: canary [100 x7, 1 x3] against control [1 x10], tolerance 0.25 (Kayenta passes it; a 70x jump)", true,
			func() caseResult { return shiftCase(s6278, repeat(1, 10), 0.25, 0.02) }},
		{"variance only: the same 1% error rate, burstier after (40 errors in 4000 requests, in bursts of 10) against steady (120 of 12000)", false,
			func() caseResult { return rateCase(40, 4000, 120, 12000, 0.5, 0.02) }},
		{"a shift under the margin, however clear: 40 samples at 110 against 120 at 100 (sd 1), margin 0.2", false,
			func() caseResult {
				return shiftCase(cat(repeat(109.5, 20), repeat(110.5, 20)), cat(repeat(99.5, 60), repeat(100.5, 60)), 0.2, 0.02)
			}},
	}
}
