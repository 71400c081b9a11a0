package policy

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
)

// noisy is n values around level, ±5%, reproducibly.
func noisy(n int, level float64, seed uint64) []float64 {
	r := rand.New(rand.NewPCG(seed, 7))
	out := make([]float64, n)
	for i := range out {
		out[i] = level * (1 + 0.1*(r.Float64()-0.5))
	}
	return out
}

func repeat(n int, v float64) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func sampleCheck(with string) *Check {
	m := 0.2
	return &Check{Name: "latency", Compare: &Compare{With: CompareWith{Kind: with}, Lookback: model.Duration(1800e9), Step: model.Duration(15e9),
		Direction: DirectionIncrease, Margin: &m, Confidence: 0.95, MinSamples: 10}}
}

func countCheck() *Check {
	m := 0.5
	return &Check{Name: "errors", Compare: &Compare{With: CompareWith{Kind: WithPreDeploy}, Lookback: model.Duration(1800e9), Step: model.Duration(30e9),
		Direction: DirectionIncrease, Margin: &m, Confidence: 0.95, MinTotal: 100, Errors: "e", Total: "t"}}
}

// TestJudgeCompare: one look at a comparison, pure.
func TestJudgeCompare(t *testing.T) {
	// A baseline that climbs in its last quarter: an incident that began
	// before the deploy.
	climbing := append(noisy(90, 1, 3), noisy(30, 2, 4)...)
	rising := func() (e, tot []float64) {
		e, tot = repeat(60, 0), repeat(60, 1000)
		for i := 30; i < 60; i++ {
			e[i] = 20
		}
		return e, tot
	}
	eb, tb := rising()
	cases := []struct {
		name    string
		c       *Check
		in      Sides
		err     error
		outcome Outcome
		reason  []string
	}{
		{"noise passes", sampleCheck(WithPreDeploy), Sides{After: noisy(30, 1, 1), Before: noisy(120, 1, 2), Look: 3, Looks: 10},
			nil, Pass, []string{"(30 vs 120 samples)", "not worse by more than 20%", "at look 3 of 10"}},
		{"a shift under the margin passes", sampleCheck(WithPreDeploy), Sides{After: noisy(60, 1.1, 1), Before: noisy(120, 1, 2), Look: 10, Looks: 10},
			nil, Pass, []string{"not worse by more than 20%"}},
		{"a doubling fails", sampleCheck(WithPreDeploy), Sides{After: noisy(30, 2, 1), Before: noisy(120, 1, 2), Look: 3, Looks: 10},
			nil, Fail, []string{"shift +", "worse by more than 20% (p ", "<= "}},
		{"a look outside the plan cannot fail", sampleCheck(WithPreDeploy), Sides{After: noisy(30, 2, 1), Before: noisy(120, 1, 2), Look: 0, Looks: 10},
			nil, Pass, []string{"at look 0 of 10"}},
		{"too few samples after: not judged yet", sampleCheck(WithPreDeploy), Sides{After: noisy(9, 5, 1), Before: noisy(120, 1, 2), Look: 1, Looks: 10},
			nil, Inconclusive, []string{"not judged yet: 9 samples since the deploy, min_samples 10"}},
		{"no history before: not judged", sampleCheck(WithOffset), Sides{After: noisy(30, 5, 1), Look: 1, Looks: 10},
			nil, Inconclusive, []string{"0 samples before, min_samples 10", "after vs - before (30 vs 0 samples)"}},
		{"a baseline already climbing: not blamed on the deploy", sampleCheck(WithPreDeploy), Sides{After: noisy(30, 2, 1), Before: climbing, Look: 3, Looks: 10},
			nil, Inconclusive, []string{"the baseline was already moving increase before the deploy", "not blamed on the deploy"}},
		{"a failed query is an error", sampleCheck(WithPreDeploy), Sides{}, errors.New("boom"), Error, []string{"query failed: boom"}},

		{"new errors where there were none fail", countCheck(),
			Sides{ErrorsAfter: repeat(12, 2), TotalAfter: repeat(12, 1000), ErrorsBefore: repeat(60, 0), TotalBefore: repeat(60, 1000), Look: 2, Looks: 10},
			nil, Fail, []string{"errors 24 of 12000 (0.2%) after vs 0 of 60000 (0%) before", "rate x∞", "worse by more than 50%"}},
		{"steady errors pass", countCheck(),
			Sides{ErrorsAfter: repeat(12, 2), TotalAfter: repeat(12, 1000), ErrorsBefore: repeat(60, 2), TotalBefore: repeat(60, 1000), Look: 2, Looks: 10},
			nil, Pass, []string{"rate x1 [", "not worse by more than 50%"}},
		{"too little traffic: not judged yet", countCheck(),
			Sides{ErrorsAfter: repeat(12, 2), TotalAfter: repeat(12, 5), ErrorsBefore: repeat(60, 0), TotalBefore: repeat(60, 1000), Look: 2, Looks: 10},
			nil, Inconclusive, []string{"not judged yet: 60 requests since the deploy, min_total 100"}},
		{"too few steps to see bursts: not judged yet", countCheck(),
			Sides{ErrorsAfter: repeat(5, 50), TotalAfter: repeat(5, 1000), ErrorsBefore: repeat(60, 0), TotalBefore: repeat(60, 1000), Look: 1, Looks: 10},
			nil, Inconclusive, []string{"not judged yet: 5 steps after the deploy"}},
		{"errors already rising before the deploy: not blamed on it", countCheck(),
			Sides{ErrorsAfter: repeat(12, 40), TotalAfter: repeat(12, 1000), ErrorsBefore: eb, TotalBefore: tb, Look: 2, Looks: 10},
			nil, Inconclusive, []string{"the error rate was already rising before the deploy"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j, cr := tc.c.JudgeCompare(tc.in, tc.err)
			if j.Outcome != tc.outcome {
				t.Errorf("outcome %s (%s), want %s", j.Outcome, j.Reason, tc.outcome)
			}
			for _, s := range tc.reason {
				if !strings.Contains(j.Reason, s) {
					t.Errorf("reason %q does not say %q", j.Reason, s)
				}
			}
			if (cr == nil) != (tc.err != nil) {
				t.Errorf("comparison %+v with error %v", cr, tc.err)
			}
			if cr != nil && (cr.Samples == nil) == (cr.Counts == nil) {
				t.Errorf("comparison has samples %v and counts %v: want exactly one", cr.Samples != nil, cr.Counts != nil)
			}
		})
	}
}

// TestCombine: a check with thresholds and a comparison fails when either
// does; a comparison not judged yet leaves the thresholds to decide.
func TestCombine(t *testing.T) {
	j := func(o Outcome, reason string) Judgement {
		return Judgement{Outcome: o, Value: 1, Baseline: nan, Ratio: nan, Threshold: "max 2", Reason: reason}
	}
	for _, c := range []struct {
		t, cmp Outcome
		want   Outcome
	}{
		{Pass, Fail, Fail}, {Fail, Pass, Fail}, {Pass, Inconclusive, Pass}, {Inconclusive, Pass, Pass},
		{Error, Pass, Error}, {Pass, Error, Error}, {Inconclusive, Inconclusive, Inconclusive}, {Error, Fail, Fail},
	} {
		got := Combine(j(c.t, "t"), j(c.cmp, "c"))
		if got.Outcome != c.want || got.Reason != "t; comparison: c" {
			t.Errorf("Combine(%s, %s) = %s %q, want %s", c.t, c.cmp, got.Outcome, got.Reason, c.want)
		}
	}
}
