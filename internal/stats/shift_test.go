package stats

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func near(t *testing.T, name string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol {
		t.Errorf("%s = %.7g, want %.7g (±%g)", name, got, want, tol)
	}
}

// R's ?wilcox.test example: wilcox.test(x, y, alternative = "g") gives
// W = 35, p-value = 0.1272 (exact); with exact = FALSE, correct = FALSE
// 0.1103; wilcox.test(x, y, conf.int = TRUE) estimates the difference in
// location as 0.305.
var (
	rX = []float64{0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46}
	rY = []float64{1.15, 0.88, 0.90, 0.74, 1.21}
)

func TestShiftAgainstR(t *testing.T) {
	res := Shift(rX, rY, Increase, 0, 0.05)
	if !res.Exact || res.NAfter != 10 || res.NBefore != 5 {
		t.Fatalf("got %+v, want an exact test of 10 against 5", res)
	}
	near(t, "PMannWhitney", res.PMannWhitney, 0.1272, 5e-5)
	near(t, "Shift", res.Shift, 0.305, 1e-9)
	near(t, "MedianAfter", res.MedianAfter, 1.415, 1e-9)
	near(t, "MedianBefore", res.MedianBefore, 0.90, 1e-9)
	if res.Worse {
		t.Errorf("Worse at p = %g", res.P)
	}

	pooled := append(slices.Clone(rX), rY...)
	near(t, "normal p without continuity correction", mannWhitneyUpperNoCC(pooled, 10), 0.1103, 5e-5)
	// With the continuity correction: z = (35 - 25 - 0.5) / sqrt(10*5*16/12).
	near(t, "normal p", mannWhitneyUpper(pooled, 10, 1, false), upperNormal(9.5/math.Sqrt(200.0/3)), 1e-12)
}

// mannWhitneyUpperNoCC is the textbook statistic without continuity
// correction, to meet R's published normal value.
func mannWhitneyUpperNoCC(pooled []float64, m int) float64 {
	n := len(pooled) - m
	r2, _ := midranks(pooled)
	s := 0
	for _, r := range r2[:m] {
		s += r
	}
	u := float64(s)/2 - float64(m*(m+1))/2
	return upperNormal((u - float64(m*n)/2) / math.Sqrt(float64(m*n*(m+n+1))/12))
}

// bruteUpper enumerates every split of the pooled values: the permutation
// p-value of the U statistic (ties counted 1/2), computed independently of
// the rank-sum table.
func bruteUpper(y, x []float64) float64 {
	pooled := append(slices.Clone(y), x...)
	u := func(in []bool) float64 {
		var s float64
		for i, a := range pooled {
			if !in[i] {
				continue
			}
			for j, b := range pooled {
				if in[j] {
					continue
				}
				switch {
				case a > b:
					s++
				case a == b:
					s += 0.5
				}
			}
		}
		return s
	}
	in := make([]bool, len(pooled))
	for i := range y {
		in[i] = true
	}
	u0 := u(in)
	var hits, all float64
	var walk func(i, left int)
	walk = func(i, left int) {
		if left == 0 {
			all++
			if u(in) >= u0-1e-9 {
				hits++
			}
			return
		}
		if len(pooled)-i < left {
			return
		}
		in[i] = true
		walk(i+1, left-1)
		in[i] = false
		walk(i+1, left)
	}
	clear(in)
	walk(0, len(y))
	return hits / all
}

func TestExactRankSumWithTies(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	cases := [][2][]float64{
		{{0, 0, 1, 2, 2, 3}, {0, 0, 0, 1, 1, 2, 0}}, // 0.1544289 by enumeration
		{{100, 100, 100, 100, 100, 100, 100, 1, 1, 1}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{{5, 5, 5}, {5, 5, 5, 5}},
	}
	for range 20 {
		m, n := 2+rng.IntN(6), 2+rng.IntN(7)
		y, x := make([]float64, m), make([]float64, n)
		for i := range y {
			y[i] = float64(rng.IntN(4))
		}
		for i := range x {
			x[i] = float64(rng.IntN(3))
		}
		cases = append(cases, [2][]float64{y, x})
	}
	for _, c := range cases {
		y, x := c[0], c[1]
		pooled := append(slices.Clone(y), x...)
		got := mannWhitneyUpper(pooled, len(y), 1, true)
		want := bruteUpper(y, x)
		if math.Abs(got-want) > 1e-12 && !(want == 1 && got == 1) {
			t.Errorf("exact p of %v against %v = %.10g, want %.10g", y, x, got, want)
		}
	}
	near(t, "first case", mannWhitneyUpper([]float64{0, 0, 1, 2, 2, 3, 0, 0, 0, 1, 1, 2, 0}, 6, 1, true), 0.1544289044, 1e-9)
}

// spinnaker #6278: Kayenta passes canary [100 x7, 1 x3] against control
// [1 x10] at tolerance 0.25 and confidence 0.98.
func TestShiftSparseJump(t *testing.T) {
	canary := []float64{100, 100, 100, 100, 100, 100, 100, 1, 1, 1}
	control := []float64{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}
	res := Shift(canary, control, Increase, 0.25, 0.02)
	near(t, "Margin", res.Margin, 0.25, 0)
	// By enumeration: the rank test alone sees p = 0.0517872 (it cannot
	// fail this); the median test C(10,7)/C(20,7) = 120/77520.
	near(t, "PMannWhitney", res.PMannWhitney, 0.05178722, 1e-7)
	near(t, "PMedian", res.PMedian, 120.0/77520, 1e-12)
	near(t, "P", res.P, 240.0/77520, 1e-12)
	if !res.Worse {
		t.Errorf("not worse: %+v", res)
	}
	near(t, "Shift", res.Shift, 99, 1e-12)
}

func TestShiftMargin(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	before := make([]float64, 200)
	for i := range before {
		before[i] = 100 + rng.NormFloat64()
	}
	shifted := func(by float64) []float64 {
		out := make([]float64, 200)
		for i := range out {
			out[i] = 100 + by + rng.NormFloat64()
		}
		return out
	}
	// margin 0.02 of a median of 100: 2, two standard deviations.
	for _, c := range []struct {
		by    float64
		worse bool
	}{{0, false}, {1, false}, {2, false}, {3, true}, {-5, false}} {
		res := Shift(shifted(c.by), before, Increase, 0.02, 0.01)
		near(t, "Margin", res.Margin, 2, 0.05)
		if res.Worse != c.worse {
			t.Errorf("shift %v: Worse = %v, want %v (p = %g, HL %g [%g, %g])", c.by, res.Worse, c.worse, res.P, res.Shift, res.Low, res.High)
		}
		if res.Exact {
			t.Errorf("shift %v: 400 values judged exactly", c.by)
		}
		if !(res.Low <= res.Shift && res.Shift <= res.High) || math.Abs(res.Shift-c.by) > 0.5 {
			t.Errorf("shift %v: estimate %g in [%g, %g]", c.by, res.Shift, res.Low, res.High)
		}
	}
	// The mirror image, and either.
	res := Shift(shifted(-3), before, Decrease, 0.02, 0.01)
	if !res.Worse || res.Shift > -2 || res.High < res.Shift || res.Low > res.Shift {
		t.Errorf("decrease by 3: %+v", res)
	}
	if res := Shift(shifted(3), before, Decrease, 0.02, 0.01); res.Worse {
		t.Errorf("an increase judged worse for a decreasing metric: %+v", res)
	}
	for _, by := range []float64{-3, 3} {
		res := Shift(shifted(by), before, Either, 0.02, 0.01)
		if !res.Worse || res.Level != 0.99 || !(res.Low < by && by < res.High) {
			t.Errorf("either, by %v: %+v", by, res)
		}
	}
	if res := Shift(shifted(1), before, Either, 0.02, 0.01); res.Worse {
		t.Errorf("either, by 1 (under the margin): %+v", res)
	}
}

func TestShiftEdges(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	for _, c := range []struct {
		name          string
		after, before []float64
		note          bool
		worse         bool
	}{
		{"empty after", nil, []float64{1, 2}, true, false},
		{"empty before", []float64{1, 2}, nil, true, false},
		{"both empty", nil, nil, true, false},
		{"only NaN after", []float64{nan, inf}, []float64{1, 2}, true, false},
		{"all ties", []float64{3, 3, 3, 3}, []float64{3, 3, 3, 3, 3}, false, false},
		{"all zeros", make([]float64, 30), make([]float64, 90), false, false},
		// kayenta #799: every canary interval above an all-zero control;
		// exact p = 1/C(10,5).
		{"sparse errors against zeros", []float64{1, 4, 2, 3, 1}, make([]float64, 5), false, true},
		{"a single value each", []float64{5}, []float64{1}, false, false},
	} {
		res := Shift(c.after, c.before, Increase, 0.25, 0.02)
		if (res.Note != "") != c.note || res.Worse != c.worse || math.IsNaN(res.P) || res.P < 0 || res.P > 1 {
			t.Errorf("%s: %+v", c.name, res)
		}
		for _, v := range []float64{res.MedianAfter, res.MedianBefore, res.Shift, res.Low, res.High, res.Margin} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Errorf("%s: a field an audit record cannot hold: %+v", c.name, res)
			}
		}
	}
	res := Shift([]float64{1, 4, 2, 3, 1}, make([]float64, 5), Increase, 0.25, 0.02)
	near(t, "#799 PMannWhitney", res.PMannWhitney, 1.0/252, 1e-12)
	near(t, "#799 margin over zeros", res.Margin, 0, 0)

	res = Shift([]float64{1, nan, 2, inf, 3}, []float64{math.Inf(-1), 1, 2}, Increase, 0.1, 0.05)
	if res.NAfter != 3 || res.DroppedAfter != 2 || res.NBefore != 2 || res.DroppedBefore != 1 {
		t.Errorf("NaN and Inf not dropped and counted: %+v", res)
	}
	// A median of 0 with some mass: the margin is relative to the mean size.
	res = Shift([]float64{1}, []float64{0, 0, 0, 4}, Increase, 0.5, 0.05)
	near(t, "margin for a zero median", res.Margin, 0.5, 1e-12)
}

func TestLag1(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	ar := make([]float64, 4000)
	iid := make([]float64, 4000)
	for i := range ar {
		iid[i] = rng.NormFloat64()
		if i > 0 {
			ar[i] = 0.8*ar[i-1] + rng.NormFloat64()
		}
	}
	// The rank autocorrelation of a Gaussian AR(1) at 0.8 is
	// (6/pi) asin(0.4) = 0.786.
	near(t, "AR(1) 0.8", lag1(ar), 6/math.Pi*math.Asin(0.4), 0.03)
	near(t, "independent", lag1(iid), 0, 0.03)
	near(t, "short", lag1([]float64{1, 2, 3}), 0, 0)
	near(t, "constant", lag1(make([]float64, 50)), 0, 0)

	// The rank autocorrelations of a Gaussian process are
	// (6/pi) asin(rho_k/2): summed for AR(1) 0.8, and for a moving sum of
	// four independent values (rate(x[1m]) every 15s: rho 3/4, 1/2, 1/4).
	var arWant float64 = 1
	for k := 1; k < 200; k++ {
		arWant += 2 * 6 / math.Pi * math.Asin(math.Pow(0.8, float64(k))/2)
	}
	ma := make([]float64, 4000)
	for i := range ma {
		ma[i] = iid[i] + iid[(i+1)%4000] + iid[(i+2)%4000] + iid[(i+3)%4000]
	}
	maWant := 1.0
	for _, r := range []float64{0.75, 0.5, 0.25} {
		maWant += 2 * 6 / math.Pi * math.Asin(r/2)
	}
	near(t, "factor of AR(1) 0.8", varianceFactor(ar), arWant, 0.15*arWant)
	near(t, "factor of a moving sum", varianceFactor(ma), maWant, 0.15*maWant)
	near(t, "factor of independent values", varianceFactor(iid), 1, 0.2)
	near(t, "factor of a short sample", varianceFactor(iid[:9]), 1, 0)
	near(t, "factor of a constant sample", varianceFactor(make([]float64, 50)), 1, 0)
	trend := make([]float64, 400)
	for i := range trend {
		trend[i] = float64(i)
	}
	near(t, "factor of a straight line (capped)", varianceFactor(trend), 40, 0)
}

func TestTrend(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	flat := make([]float64, 120)
	rising := make([]float64, 120)
	for i := range flat {
		flat[i] = 100 + rng.NormFloat64()
		rising[i] = 100 + rng.NormFloat64()
		if i >= 100 {
			rising[i] += 30 // an incident 5 minutes before the deploy
		}
	}
	if res := Trend(flat, Increase, 0.1, 0.01); res.Worse || res.Note != "" {
		t.Errorf("flat baseline: %+v", res)
	}
	res := Trend(rising, Increase, 0.1, 0.01)
	if !res.Worse || res.NBefore != 60 {
		t.Errorf("rising baseline: %+v", res)
	}
	// An incident two minutes old at a 15s step: the last 8 samples.
	recent := slices.Clone(flat)
	for i := 112; i < 120; i++ {
		recent[i] += 30
	}
	if res := Trend(recent, Increase, 0.1, 0.01); !res.Worse || res.NAfter > 8 {
		t.Errorf("an incident two minutes old: %+v", res)
	}
	if res := Trend(rising, Decrease, 0.1, 0.01); res.Worse {
		t.Errorf("rising baseline of a metric whose bad direction is down: %+v", res)
	}
	if res := Trend(flat[:15], Increase, 0.1, 0.01); res.Worse || res.Note == "" {
		t.Errorf("15 samples: %+v", res)
	}
}

func TestNth(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for _, n := range []int{1, 2, 3, 10, 101, 1000} {
		for _, levels := range []int{1, 3, 1 << 30} {
			d := make([]float64, n)
			for i := range d {
				d[i] = float64(rng.IntN(levels))
			}
			sorted := slices.Clone(d)
			slices.Sort(sorted)
			for _, k := range []int{0, n / 3, n / 2, n - 1} {
				if got := nth(slices.Clone(d), k); got != sorted[k] {
					t.Errorf("n %d, %d levels: nth(%d) = %v, want %v", n, levels, k, got, sorted[k])
				}
			}
			// Repeated selections on the same, reordered slice.
			for k := range n {
				if got := nth(d, k); got != sorted[k] {
					t.Fatalf("n %d, %d levels: repeated nth(%d) = %v, want %v", n, levels, k, got, sorted[k])
				}
			}
		}
	}
}

func TestDirectionText(t *testing.T) {
	for _, d := range []Direction{Increase, Decrease, Either} {
		b, err := json.Marshal(ShiftResult{Direction: d})
		if err != nil {
			t.Fatal(err)
		}
		var back ShiftResult
		if err := json.Unmarshal(b, &back); err != nil || back.Direction != d {
			t.Errorf("%v: %s read back as %v (%v)", d, b, back.Direction, err)
		}
		if got, err := ParseDirection(d.String()); got != d || err != nil {
			t.Errorf("ParseDirection(%q) = %v, %v", d, got, err)
		}
	}
	if _, err := ParseDirection("up"); err == nil {
		t.Error("ParseDirection(\"up\") accepted")
	}
	if _, err := json.Marshal(ShiftResult{}); err == nil {
		t.Error("the zero Direction was recorded")
	}
	if res := Shift([]float64{1}, []float64{2}, 0, 0, 0.05); res.Direction != Increase {
		t.Errorf("Shift with direction 0 recorded %v", res.Direction)
	}
}

// A look past the plan is tested at level 0: it fails nothing, however
// far apart the samples, although P is (for counts, underflows to) 0 there.
func TestLevelZero(t *testing.T) {
	before := make([]float64, 120)
	after := make([]float64, 40)
	for i := range before {
		before[i] = float64(i % 7)
	}
	for i := range after {
		after[i] = 1e6 + float64(i)
	}
	a := LookAlpha(0.02, 21, 20)
	res := Shift(after, before, Increase, 0.1, a)
	if res.P > 1e-12 || res.Worse || res.Low > res.High {
		t.Errorf("level %g: %+v", a, res)
	}
	if res := Shift(after, before, Increase, 0.1, 0.02); !res.Worse {
		t.Errorf("level 0.02: %+v", res)
	}
	if res := Trend(append(before, after...), Increase, 0.1, 0); res.Worse {
		t.Errorf("trend at level 0: %+v", res)
	}
	if res := Rates(1e9, 1e10, 1e6, 1e10, 0.5, 0); res.P != 0 || res.Worse {
		t.Errorf("rates at level 0: %+v", res)
	}
	// Levels of 1/2 and above still give an interval, low <= high.
	if res := Shift(after[:5], before, Increase, 0.1, 0.9); res.Low > res.High {
		t.Errorf("level 0.9: %+v", res)
	}
}

// TestDiffsNth: the k-th pairwise difference found without building the
// m x n differences is the one sorting them gives, for every k, with ties
// (metrics are full of repeated values) and without.
func TestDiffsNth(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for trial := range 60 {
		m, n := 1+r.IntN(40), 1+r.IntN(90)
		y, x := make([]float64, m), make([]float64, n)
		for i := range y {
			y[i] = float64(r.IntN(5 + trial))
		}
		for i := range x {
			x[i] = float64(r.IntN(5+trial)) + r.Float64()*float64(trial%2)
		}
		var all []float64
		for _, a := range y {
			for _, b := range x {
				all = append(all, a-b)
			}
		}
		slices.Sort(all)
		d := newDiffs(y, x)
		for k := range all {
			if got := d.nth(k); got != all[k] {
				t.Fatalf("trial %d (%d x %d): nth(%d) = %v, want %v", trial, m, n, k, got, all[k])
			}
		}
	}
}

// BenchmarkShift is a late look of a canary comparison: 120 samples after
// against 360 before.
func BenchmarkShift(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	after, before := make([]float64, 120), make([]float64, 360)
	for i := range after {
		after[i] = 1 + r.NormFloat64()*0.1
	}
	for i := range before {
		before[i] = 1 + r.NormFloat64()*0.1
	}
	b.ReportAllocs()
	for b.Loop() {
		Shift(after, before, Increase, 0.2, 0.01)
	}
}

func TestTieTerm(t *testing.T) {
	a, b := []float64{0, 0, 1, 2, 2, 2}, []float64{0, 2, 3}
	_, want := midranks(append(slices.Clone(a), b...))
	if got := tieTerm(a, b); got != want {
		t.Errorf("tieTerm = %v, want midranks' %v", got, want)
	}
}
