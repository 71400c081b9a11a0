package policy

import (
	"fmt"
	"math"
	"strings"

	"github.com/rollback-watcher/watcher/internal/stats"
)

// Sides is what one look at a comparison has gathered, every slice in time
// order (one value per step, or several per step for series pooled by a
// canary comparison without aggregate).
type Sides struct {
	// After and Before are the samples of a sample comparison.
	After, Before []float64
	// ErrorsAfter/TotalAfter and ErrorsBefore/TotalBefore are a count
	// comparison's errors and requests per step, paired by index.
	ErrorsAfter, TotalAfter, ErrorsBefore, TotalBefore []float64

	// Look is this look's number among the Looks that can be judged in
	// the window (see stats.LookAlpha): the confidence holds over all of
	// them, so each spends a share of 1 - confidence.
	Look, Looks int
}

// Comparison is how a look at a comparison came out: the numbers behind
// the Judgement, for the audit record.
type Comparison struct {
	Look, Looks int
	// Alpha is this look's share of 1 - confidence: the level its test
	// ran at.
	Alpha float64
	// Samples or Counts is the test, when the look got as far as one.
	Samples *stats.ShiftResult
	Counts  *stats.RateResult
	// Trend is the pre-deploy baseline's own trend, tested when the after
	// side came out worse (pre_deploy only): Worse there makes the
	// measurement inconclusive, not failed.
	Trend      *stats.ShiftResult
	CountTrend *stats.RateResult
	// NotJudged says why the look was not judged (too few samples or
	// requests), when it was not.
	NotJudged string
}

// JudgeCompare judges one look at the check's comparison: the after side
// fails when the test says, at this look's share of 1 - confidence, that
// it is worse than the before side by more than the margin in the bad
// direction; it passes otherwise. Too few samples (min_samples) or
// requests (min_total) on a side make it inconclusive ("not judged yet"),
// as does a baseline that was already moving the bad way before the
// deploy (pre_deploy): an incident that began before it is not the
// deploy's fault. fetchErr is a failed query: the outcome is an error.
//
// The Judgement's Value is the after side's median (or error rate),
// Baseline the before side's, Ratio their ratio; the Comparison has the
// test's numbers (nil after a failed query).
func (c *Check) JudgeCompare(in Sides, fetchErr error) (Judgement, *Comparison) {
	cmp := c.Compare
	j := Judgement{Value: nan, Baseline: nan, Ratio: nan, Threshold: cmp.String()}
	if fetchErr != nil {
		j.Outcome, j.Reason = Error, "query failed: "+fetchErr.Error()
		return j, nil
	}
	alpha := 1 - cmp.Confidence
	cr := &Comparison{Look: in.Look, Looks: in.Looks, Alpha: stats.LookAlpha(alpha, in.Look, in.Looks)}
	margin := 0.0
	if cmp.Margin != nil {
		margin = *cmp.Margin
	}
	if cmp.Counts() {
		return c.judgeCounts(j, cr, in, margin, alpha), cr
	}

	dir, err := stats.ParseDirection(cmp.Direction)
	if err != nil {
		dir = stats.Increase
	}
	res := stats.Shift(in.After, in.Before, dir, margin, cr.Alpha)
	cr.Samples = &res
	j.Value, j.Baseline = res.MedianAfter, res.MedianBefore
	if res.MedianBefore != 0 {
		j.Ratio = res.MedianAfter / res.MedianBefore
	}
	med := func(v float64, n int) string {
		if n == 0 {
			return "-"
		}
		return formatNumber(v)
	}
	sides := fmt.Sprintf("median %s after vs %s before (%d vs %d samples)",
		med(res.MedianAfter, res.NAfter), med(res.MedianBefore, res.NBefore), res.NAfter, res.NBefore)
	switch {
	case res.NAfter < cmp.MinSamples:
		cr.NotJudged = fmt.Sprintf("not judged yet: %d samples since the deploy, min_samples %d", res.NAfter, cmp.MinSamples)
	case res.NBefore < cmp.MinSamples:
		cr.NotJudged = fmt.Sprintf("not judged: %d samples before, min_samples %d (no history to compare with)", res.NBefore, cmp.MinSamples)
	case res.Note != "":
		cr.NotJudged = "not judged: " + res.Note
	}
	if cr.NotJudged != "" {
		j.Outcome, j.Reason = Inconclusive, cr.NotJudged+"; "+sides
		return j, cr
	}
	shift := c.shiftText(res)
	// The trend guard runs when the after side looks worse by more than
	// the margin, significant or not: a baseline already moving the bad
	// way also inflates the test's variance, so an incident that began
	// before the deploy often fails to be significant and would pass.
	if cmp.With.Kind == WithPreDeploy && (res.Worse || beyond(res, dir)) {
		tr := stats.Trend(in.Before, dir, margin, alpha)
		cr.Trend = &tr
		if tr.Worse {
			j.Outcome = Inconclusive
			j.Reason = fmt.Sprintf("%s: shift %s, but the baseline was already moving %s before the deploy (its end %s vs its start %s, p %s): not blamed on the deploy",
				sides, shift, dir, formatNumber(tr.MedianAfter), formatNumber(tr.MedianBefore), formatP(tr.P))
			return j, cr
		}
	}
	if !res.Worse {
		j.Outcome = Pass
		j.Reason = fmt.Sprintf("%s: shift %s, not worse by more than %s %s", sides, shift, percent(margin), lookText(res.P, cr))
		return j, cr
	}
	j.Outcome = Fail
	j.Reason = fmt.Sprintf("%s: shift %s, worse by more than %s %s", sides, shift, percent(margin), lookText(res.P, cr))
	return j, cr
}

// judgeCounts is JudgeCompare for errors among requests.
func (c *Check) judgeCounts(j Judgement, cr *Comparison, in Sides, margin, alpha float64) Judgement {
	cmp := c.Compare
	res := stats.RatesSeries(in.ErrorsAfter, in.TotalAfter, in.ErrorsBefore, in.TotalBefore, margin, cr.Alpha)
	cr.Counts = &res
	j.Value, j.Baseline, j.Ratio = res.RateAfter, res.RateBefore, res.Ratio
	if res.TotalAfter == 0 {
		j.Value = nan
	}
	if res.TotalBefore == 0 {
		j.Baseline, j.Ratio = nan, nan
	}
	sides := fmt.Sprintf("errors %d of %d (%s) after vs %d of %d (%s) before",
		res.ErrorsAfter, res.TotalAfter, rateText(res.RateAfter, res.TotalAfter),
		res.ErrorsBefore, res.TotalBefore, rateText(res.RateBefore, res.TotalBefore))
	switch {
	case res.TotalAfter < int64(cmp.MinTotal):
		cr.NotJudged = fmt.Sprintf("not judged yet: %d requests since the deploy, min_total %d", res.TotalAfter, cmp.MinTotal)
	case res.TotalBefore < int64(cmp.MinTotal):
		cr.NotJudged = fmt.Sprintf("not judged: %d requests before, min_total %d (no history to compare with)", res.TotalBefore, cmp.MinTotal)
	case res.Note != "":
		cr.NotJudged = "not judged yet: " + res.Note
	}
	if cr.NotJudged != "" {
		j.Outcome, j.Reason = Inconclusive, cr.NotJudged+"; "+sides
		return j
	}
	ratio := fmt.Sprintf("rate x%s [x%s, x%s]", ratioNumber(res.Ratio), ratioNumber(res.Low), ratioNumber(res.High))
	if cmp.With.Kind == WithPreDeploy && (res.Worse || res.Ratio > 1+margin) {
		// The later half of the lookback against the earlier: errors
		// already climbing before the deploy are not its fault.
		h := len(in.ErrorsBefore) / 2
		early := func(xs []float64) float64 { return sum(xs[:min(h, len(xs))]) }
		late := func(xs []float64) float64 { return sum(xs[min(h, len(xs)):]) }
		tr := stats.RateTrend(early(in.ErrorsBefore), early(in.TotalBefore), late(in.ErrorsBefore), late(in.TotalBefore), margin, alpha)
		cr.CountTrend = &tr
		if tr.Worse {
			j.Outcome = Inconclusive
			j.Reason = fmt.Sprintf("%s: %s, but the error rate was already rising before the deploy (%s in the later half of the lookback vs %s in the earlier, p %s): not blamed on the deploy",
				sides, ratio, rateText(tr.RateAfter, tr.TotalAfter), rateText(tr.RateBefore, tr.TotalBefore), formatP(tr.P))
			return j
		}
	}
	if !res.Worse {
		j.Outcome = Pass
		j.Reason = fmt.Sprintf("%s: %s, not worse by more than %s %s", sides, ratio, percent(margin), lookText(res.P, cr))
		return j
	}
	j.Outcome = Fail
	j.Reason = fmt.Sprintf("%s: %s, worse by more than %s %s", sides, ratio, percent(margin), lookText(res.P, cr))
	return j
}

// beyond reports whether the estimated shift is past the margin in the
// bad direction, significant or not.
func beyond(r stats.ShiftResult, dir stats.Direction) bool {
	switch dir {
	case stats.Decrease:
		return r.Shift < -r.Margin
	case stats.Either:
		return math.Abs(r.Shift) > r.Margin
	}
	return r.Shift > r.Margin
}

// shiftText is the estimated shift and its interval, relative to the
// before median when it is not 0: "+55% [+40%, +70%]", else absolute.
func (c *Check) shiftText(r stats.ShiftResult) string {
	if r.MedianBefore == 0 || !finite(r.MedianBefore) {
		return fmt.Sprintf("%s [%s, %s]", signed(r.Shift), signed(r.Low), signed(r.High))
	}
	rel := func(v float64) string {
		if !finite(v) {
			return formatNumber(v)
		}
		return signedG(100*v/math.Abs(r.MedianBefore)) + "%"
	}
	return fmt.Sprintf("%s [%s, %s]", rel(r.Shift), rel(r.Low), rel(r.High))
}

// lookText is "(p 0.0004 <= 0.0021 at look 3 of 18)".
func lookText(p float64, cr *Comparison) string {
	op := ">"
	if p <= cr.Alpha {
		op = "<="
	}
	return fmt.Sprintf("(p %s %s %s at look %d of %d)", formatP(p), op, formatP(cr.Alpha), cr.Look, cr.Looks)
}

// signedG is signed to 3 significant digits, for percentages.
func signedG(v float64) string {
	s := strings.TrimSuffix(fmt.Sprintf("%.3g", v), ".")
	if strings.Contains(s, "e") {
		s = formatNumber(math.Round(v))
	}
	if v > 0 {
		return "+" + s
	}
	return s
}

func signed(v float64) string {
	if v > 0 {
		return "+" + formatNumber(v)
	}
	return formatNumber(v)
}

func percent(m float64) string { return formatNumber(m*100) + "%" }

// formatP writes a p-value or level to 2 significant digits.
func formatP(p float64) string {
	if p == 0 || !finite(p) {
		return formatNumber(p)
	}
	return strings.TrimSuffix(fmt.Sprintf("%.2g", p), ".")
}

// rateText is an error rate as a percentage, "n/a" without requests.
func rateText(rate float64, total int64) string {
	if total == 0 {
		return "n/a"
	}
	return strings.TrimSuffix(fmt.Sprintf("%.3g", rate*100), ".") + "%"
}

func ratioNumber(r float64) string {
	if math.IsInf(r, 1) {
		return "∞"
	}
	return strings.TrimSuffix(fmt.Sprintf("%.3g", r), ".")
}

func sum(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		if finite(x) {
			s += x
		}
	}
	return s
}

// HasThresholds reports whether the check sets min, max, min_ratio or
// max_ratio (a comparison may stand alone).
func (c *Check) HasThresholds() bool {
	return c.Min != nil || c.Max != nil || c.MinRatio != nil || c.MaxRatio != nil
}

// AggregateValues reduces values to one the way Aggregate reduces series
// (how is one of the Aggregate constants).
func AggregateValues(how string, vs []float64) float64 {
	ss := make([]Series, len(vs))
	for i, v := range vs {
		ss[i].Value = v
	}
	return aggregate(how, ss)
}

// Combine joins the judgement of a check's thresholds (t) with that of its
// comparison (cmp) into the measurement's: a failure of either fails it,
// else an error errs it, else a pass of either passes it (a comparison not
// judged yet leaves the thresholds to decide). Value stays the
// thresholds'; the reason gives both.
func Combine(t, cmp Judgement) Judgement {
	rank := map[Outcome]int{Inconclusive: 0, Pass: 1, Error: 2, Fail: 3}
	j := t
	if rank[cmp.Outcome] > rank[t.Outcome] {
		j.Outcome = cmp.Outcome
	}
	j.Reason = t.Reason + "; comparison: " + cmp.Reason
	return j
}
