package stats

import (
	"encoding/json"
	"math"
	"testing"
)

// R's ?poisson.test example, lung cancer in Fredericia against three other
// cities: poisson.test(c(11, 6+8+7), c(800, 1083+1050+878)) estimates the
// rate ratio 1.971488 with the 95% interval 0.8584264 4.2772659.
func TestRatesAgainstR(t *testing.T) {
	res := Rates(11, 800, 21, 3011, 0, 0.025)
	near(t, "Ratio", res.Ratio, 1.971488, 1e-6)
	near(t, "Low", res.Low, 0.8584264, 1e-6)
	near(t, "High", res.High, 4.2772659, 1e-6)
	near(t, "Level", res.Level, 0.95, 1e-12)
	// One-sided p, summed term by term: P(Bin(32, 800/3811) >= 11).
	near(t, "P", res.P, 0.05600865978769965, 1e-10)
	if res.Worse || res.Test != "conditional binomial" {
		t.Errorf("%+v", res)
	}
	// The margin moves the null: P(Bin(32, 1200/4211) >= 11).
	near(t, "P with margin 0.5", Rates(11, 800, 21, 3011, 0.5, 0.025).P, 0.2877484041969884, 1e-10)
}

// R's ?binom.test example: binom.test(682, 925, p = 0.75) gives the 95%
// interval 0.7076683 0.7654066.
func TestClopperPearsonAgainstR(t *testing.T) {
	low, high := clopperPearson(682, 925-682, 0.025)
	near(t, "low", low, 0.7076683, 1e-7)
	near(t, "high", high, 0.7654066, 1e-7)
	low, high = clopperPearson(0, 10, 0.025)
	near(t, "low of 0/10", low, 0, 0)
	near(t, "high of 0/10", high, 1-math.Pow(0.025, 0.1), 1e-12)
	low, high = clopperPearson(10, 0, 0.025)
	near(t, "low of 10/10", low, math.Pow(0.025, 0.1), 1e-12)
	near(t, "high of 10/10", high, 1, 0)
}

func TestRatesZeroErrorsBefore(t *testing.T) {
	// Equal traffic, 5 errors after and none before: all five on the after
	// side has probability 1/2^5 with equal rates, 0.6^5 with a ratio of
	// 1.5.
	res := Rates(5, 1000, 0, 1000, 0, 0.05)
	near(t, "P", res.P, 1.0/32, 1e-12)
	if !res.Worse || !math.IsInf(res.Ratio, 1) || !math.IsInf(res.High, 1) || !(res.Low > 1) {
		t.Errorf("%+v", res)
	}
	res = Rates(5, 1000, 0, 1000, 0.5, 0.05)
	near(t, "P with margin", res.P, math.Pow(0.6, 5), 1e-12)
	if res.Worse {
		t.Errorf("%+v", res)
	}
	// spinnaker #5622's shape with a longer baseline: a few errors after
	// an hour without any.
	if res := Rates(4, 1000, 0, 6000, 0.5, 0.01); !res.Worse {
		t.Errorf("4 errors after, none in 6x the traffic before: %+v", res)
	}
}

func TestRatesEdges(t *testing.T) {
	for _, c := range []struct {
		name       string
		ea, ta     float64
		eb, tb     float64
		worse      bool
		note       bool
		p, ratio   float64
		eaR, taR   int64
		checkCount bool
	}{
		{name: "no errors anywhere", ea: 0, ta: 500, eb: 0, tb: 500, p: 1, ratio: 1},
		{name: "no requests after", ea: 0, ta: 0, eb: 3, tb: 500, note: true, p: 1, ratio: 1},
		{name: "no requests before", ea: 3, ta: 100, eb: 0, tb: 0, note: true, p: 1, ratio: 1},
		{name: "no requests at all", note: true, p: 1, ratio: 1},
		{name: "rounded", ea: 3.2, ta: 999.6, eb: 3, tb: 1000, p: -1, ratio: 1, eaR: 3, taR: 1000, checkCount: true},
		{name: "negative and NaN", ea: -0.4, ta: 100, eb: math.NaN(), tb: 100, p: 1, ratio: 1, eaR: 0, taR: 100, checkCount: true},
		{name: "more errors than requests", ea: 120.4, ta: 100, eb: 1, tb: 100, worse: true, p: -1, ratio: 100, eaR: 100, taR: 100, checkCount: true},
		{name: "fewer errors after", ea: 1, ta: 1000, eb: 30, tb: 1000, p: -1, ratio: 1.0 / 30},
	} {
		res := Rates(c.ea, c.ta, c.eb, c.tb, 0.5, 0.01)
		if res.Worse != c.worse || (res.Note != "") != c.note || (c.p >= 0 && res.P != c.p) || math.IsNaN(res.P) {
			t.Errorf("%s: %+v", c.name, res)
		}
		near(t, c.name+": Ratio", res.Ratio, c.ratio, 1e-12)
		if c.checkCount && (res.ErrorsAfter != c.eaR || res.TotalAfter != c.taR) {
			t.Errorf("%s: counts %d/%d, want %d/%d", c.name, res.ErrorsAfter, res.TotalAfter, c.eaR, c.taR)
		}
	}
}

func TestRatesHugeCounts(t *testing.T) {
	// A billion requests a side: 5% more errors is far beyond 1% of
	// margin; 100 more errors in ten million is not.
	res := Rates(1.05e7, 1e9, 1e7, 1e9, 0.01, 0.01)
	if !res.Worse || res.P > 1e-12 || math.IsNaN(res.Low) || !(res.Low > 1.04 && res.High < 1.06) {
		t.Errorf("5%% more errors: %+v", res)
	}
	near(t, "Ratio", res.Ratio, 1.05, 1e-12)
	res = Rates(1e7+100, 1e9, 1e7, 1e9, 0.01, 0.01)
	if res.Worse || res.P < 0.99 || math.IsNaN(res.P) {
		t.Errorf("100 more errors in ten million: %+v", res)
	}
	res = Rates(1e18, 1e19, 1e17, 1e19, 0.5, 0.01)
	if !res.Worse || math.IsNaN(res.P) {
		t.Errorf("counts near the int64 range: %+v", res)
	}
}

func TestRateTrend(t *testing.T) {
	// The later half of the lookback with 40 errors where the earlier had
	// 10 on the same traffic: rising before the deploy.
	if res := RateTrend(10, 5000, 40, 5000, 0.5, 0.01); !res.Worse || res.ErrorsAfter != 40 {
		t.Errorf("rising: %+v", res)
	}
	if res := RateTrend(10, 5000, 12, 5000, 0.5, 0.01); res.Worse {
		t.Errorf("steady: %+v", res)
	}
}

func TestLookAlpha(t *testing.T) {
	for _, looks := range []int{1, 2, 5, 20, 120} {
		var sum float64
		prev := math.Inf(1)
		for k := 1; k <= looks; k++ {
			a := LookAlpha(0.02, k, looks)
			if !(a > 0) || a > prev+1e-15 {
				t.Errorf("look %d of %d: %g (previous %g): increments must be positive and not grow", k, looks, a, prev)
			}
			prev = a
			sum += a
		}
		near(t, "spent over all looks", sum, 0.02, 1e-15)
	}
	near(t, "one look", LookAlpha(0.05, 1, 1), 0.05, 0)
	near(t, "first of 20", LookAlpha(0.02, 1, 20), 0.02*math.Log1p((math.E-1)/20), 1e-15)
	for _, c := range [][2]int{{0, 20}, {-1, 20}, {21, 20}, {1, 0}} {
		if a := LookAlpha(0.02, c[0], c[1]); a != 0 {
			t.Errorf("look %d of %d: %g, want 0", c[0], c[1], a)
		}
	}
	if a := LookAlpha(math.NaN(), 1, 2); a != 0 {
		t.Errorf("NaN alpha: %g", a)
	}
}

func TestRatesSeries(t *testing.T) {
	steady := func(n int, errs, total float64) (e, tot []float64) {
		for range n {
			e, tot = append(e, errs), append(tot, total)
		}
		return e, tot
	}
	// No variation at all: dispersion 1, the same as Rates on the sums.
	ea, ta := steady(20, 2, 100)
	eb, tb := steady(60, 1, 100)
	got := RatesSeries(ea, ta, eb, tb, 0.5, 0.01)
	want := Rates(40, 2000, 60, 6000, 0.5, 0.01)
	if got != want {
		t.Errorf("steady series: %+v, want Rates on the sums %+v", got, want)
	}

	// 4% after, all of it in two bursts of 40 errors: the totals alone
	// say the rate quadrupled; two bursts are little evidence of anything.
	burst := make([]float64, 20)
	for i := range burst {
		if i%10 == 9 {
			burst[i] = 40
		}
	}
	got = RatesSeries(burst, ta, eb, tb, 0.5, 0.01)
	if got.Worse || !(got.DispersionAfter > 30) || got.DispersionBefore != 1 || got.ErrorsAfter != 80 {
		t.Errorf("bursty after: %+v", got)
	}
	if tot := Rates(80, 2000, 60, 6000, 0.5, 0.01); !tot.Worse {
		t.Errorf("the same totals without the steps should look worse: %+v", tot)
	}
	near(t, "ratio kept", got.Ratio, 4, 1e-12)

	// Fewer than 10 steps a side: not judged, whatever the totals say.
	if got := RatesSeries(burst[9:18], ta[:9], zeros(60), tb, 0, 0.01); got.Worse || got.P != 1 || got.Note == "" || got.ErrorsAfter != 40 {
		t.Errorf("9 steps after: %+v", got)
	}
	if got := RatesSeries(ea, ta, eb[:9], tb[:9], 0.5, 0.01); got.Worse || got.Note == "" {
		t.Errorf("9 steps before: %+v", got)
	}
	// NaN steps are left out, on both series.
	nanE := append([]float64{math.NaN()}, ea...)
	nanT := append([]float64{100}, ta...)
	if got := RatesSeries(nanE, nanT, eb, tb, 0.5, 0.01); got.TotalAfter != 2000 || got.ErrorsAfter != 40 {
		t.Errorf("a NaN step: %+v", got)
	}
	// Zero errors before stays valid: the before side's dispersion is 1.
	if got := RatesSeries(ea, ta, zeros(60), tb, 0.5, 0.01); !got.Worse || got.DispersionBefore != 1 {
		t.Errorf("errors after only: %+v", got)
	}
}

func zeros(n int) []float64 { return make([]float64, n) }

func TestRateResultJSON(t *testing.T) {
	for _, r := range []RateResult{
		Rates(5, 1000, 0, 1000, 0, 0.05),   // ratio and upper bound infinite
		Rates(11, 800, 21, 3011, 0, 0.025), // all finite
		Rates(0, 0, 0, 0, 0, 0.05),         // not judged
	} {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		var back RateResult
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if back != r {
			t.Errorf("%s read back as %+v, want %+v", b, back, r)
		}
	}
	b, _ := json.Marshal(Rates(5, 1000, 0, 1000, 0, 0.05))
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil || m["Ratio"] != nil || m["High"] != nil || m["ErrorsAfter"] != 5.0 {
		t.Errorf("recorded as %s", b)
	}
}

// TestRatesOneSideEmpty: with no requests after the deploy yet, the
// before side's rate is still reported (and the look not judged).
func TestRatesOneSideEmpty(t *testing.T) {
	errs, totals := []float64{2, 3, 1, 4, 0, 2, 3, 1, 2, 2}, []float64{100, 100, 100, 100, 100, 100, 100, 100, 100, 100}
	r := RatesSeries(nil, nil, errs, totals, 0.5, 0.05)
	if r.RateBefore != 0.02 || r.RateAfter != 0 || r.Worse || r.P != 1 {
		t.Errorf("rate before %v after %v worse %v p %v, want 0.02, 0, false, 1", r.RateBefore, r.RateAfter, r.Worse, r.P)
	}
	if r := Rates(5, 100, 0, 0, 0.5, 0.05); r.RateAfter != 0.05 || r.Note == "" {
		t.Errorf("rate after %v note %q, want 0.05 and a note", r.RateAfter, r.Note)
	}
}
