package stats

import (
	"encoding/json"
	"fmt"
	"math"

	"gonum.org/v1/gonum/stat/distuv"
)

// RateTest names the test in every RateResult.
const RateTest = "conditional binomial"

// RateResult is a comparison of errors per request, with what an audit
// record needs to explain it.
type RateResult struct {
	Test string
	// The counts as judged: rounded to integers, see the package
	// documentation.
	ErrorsAfter, TotalAfter   int64
	ErrorsBefore, TotalBefore int64
	RateAfter, RateBefore     float64 // errors per request
	// Ratio is RateAfter / RateBefore: +Inf when only the after side had
	// errors, 1 when neither had any. Low and High bound it (High is +Inf
	// when every error is on the after side). JSON has no infinity: they
	// are recorded as null and read back as +Inf.
	Ratio, Low, High float64
	// Dispersion of each side's errors: their variance over the Poisson
	// variance, from the per-step counts of RatesSeries (bursts, runs of
	// errors); 1 for Rates, which sees totals only.
	DispersionAfter, DispersionBefore float64
	Level                             float64 // the interval's coverage, 1 - 2 alpha
	Margin                            float64 // the null hypothesis is Ratio <= 1 + Margin
	P                                 float64
	Worse                             bool   // P <= alpha: the rate grew by more than the margin
	Note                              string // why it could not be judged, if so
}

// Rates tests whether errors per request after are worse than before by
// more than margin (rate ratio above 1+margin), at level alpha, exactly by
// the conditional binomial test of the rate ratio. The counts are PromQL
// increase() values (floats); see the package documentation for how they
// are rounded.
func Rates(errorsAfter, totalAfter, errorsBefore, totalBefore, margin, alpha float64) RateResult {
	return rates(count(errorsAfter), count(totalAfter), count(errorsBefore), count(totalBefore), 1, 1, margin, alpha)
}

// RatesSeries is Rates for per-step counts in time order (increase() over
// each step: a range query at step), which show how bursty the errors
// are. Each side's dispersion (the long-run variance of its per-step
// errors about its own rate, over the Poisson variance, at least 1) divides
// its counts and requests: the rates stay, the evidence shrinks to what
// that many independent errors would carry (the quasi-Poisson
// approximation). With Poisson errors it is Rates on the sums. Steps where
// either count is NaN or ±Inf are left out. A side with fewer than
// MinSteps steps is not judged (P 1, Note says why): a few steps cannot
// show how bursty errors are, and taking them as Poisson fails steady
// services with bursty errors in the first looks. A side without errors
// has dispersion 1.
func RatesSeries(errorsAfter, totalAfter, errorsBefore, totalBefore []float64, margin, alpha float64) RateResult {
	ea, ta, da, na := sumSteps(errorsAfter, totalAfter)
	eb, tb, db, nb := sumSteps(errorsBefore, totalBefore)
	if na < MinSteps || nb < MinSteps {
		res := rates(ea, ta, eb, tb, 1, 1, margin, alpha)
		res.P, res.Worse = 1, false
		res.Note = fmt.Sprintf("%d steps after the deploy and %d before: at least %d a side are needed to judge how bursty the errors are", na, nb, MinSteps)
		return res
	}
	return rates(ea, ta, eb, tb, da, db, margin, alpha)
}

// MinSteps is the fewest per-step counts a side of RatesSeries needs.
const MinSteps = 10

// sumSteps sums per-step errors and requests (each step rounded as count
// does) and estimates the errors' dispersion from the steps used.
func sumSteps(errs, totals []float64) (e, t int64, dispersion float64, steps int) {
	n := min(len(errs), len(totals))
	es, ts := make([]float64, 0, n), make([]float64, 0, n)
	for i := range n {
		if math.IsNaN(errs[i]) || math.IsInf(errs[i], 0) || math.IsNaN(totals[i]) || math.IsInf(totals[i], 0) {
			continue
		}
		ti := count(totals[i])
		ei := min(count(errs[i]), ti)
		e += ei
		t += ti
		es, ts = append(es, float64(ei)), append(ts, float64(ti))
	}
	dispersion, steps = 1, len(es)
	if steps < MinSteps || e == 0 {
		return e, t, dispersion, steps
	}
	rate := float64(e) / float64(t)
	res := make([]float64, len(es))
	var ss float64
	for i := range es {
		res[i] = es[i] - rate*ts[i]
		ss += res[i] * res[i]
	}
	k := float64(len(es))
	// The Poisson variance of the total is e itself.
	return e, t, max(1, ss*k/(k-1)*longRunFactor(res)/float64(e)), steps
}

func rates(ea, ta, eb, tb int64, da, db, margin, alpha float64) RateResult {
	ea, eb = min(ea, ta), min(eb, tb)
	res := RateResult{
		Test:        RateTest,
		ErrorsAfter: ea, TotalAfter: ta, ErrorsBefore: eb, TotalBefore: tb,
		Ratio: 1, Low: 0, High: math.Inf(1),
		DispersionAfter: da, DispersionBefore: db,
		Level: 1 - 2*alpha, Margin: margin, P: 1,
	}
	// Each side's rate is set even when the other side cannot be judged:
	// the record shows what the before side was while the after side
	// waits for its first requests.
	if ta > 0 {
		res.RateAfter = float64(ea) / float64(ta)
	}
	if tb > 0 {
		res.RateBefore = float64(eb) / float64(tb)
	}
	switch {
	case ta == 0 && tb == 0:
		res.Note = "no requests on either side"
		return res
	case ta == 0:
		res.Note = "no requests after the deploy"
		return res
	case tb == 0:
		res.Note = "no requests before the deploy"
		return res
	}
	switch {
	case eb > 0:
		res.Ratio = res.RateAfter / res.RateBefore
	case ea > 0:
		res.Ratio = math.Inf(1)
	}
	if ea+eb == 0 {
		return res
	}
	// Given x errors in all, the after side's share is binomial with
	// p = R ta / (R ta + tb) for the rate ratio R; overdispersed sides
	// count as da, db times fewer errors and requests.
	ka, kb := float64(ea)/da, float64(eb)/db
	fa, fb := float64(ta)/da, float64(tb)/db
	toRatio := func(p float64) float64 {
		if p >= 1 {
			return math.Inf(1)
		}
		return p / (1 - p) * fb / fa
	}
	lowP, highP := clopperPearson(ka, kb, alpha)
	res.Low, res.High = toRatio(lowP), toRatio(highP)
	r0 := 1 + margin
	p0 := r0 * fa / (r0*fa + fb)
	res.P = binomialUpper(ka, kb, p0)
	res.Worse = alpha > 0 && res.P <= alpha
	return res
}

// MarshalJSON records an infinite Ratio, Low or High as null.
func (r RateResult) MarshalJSON() ([]byte, error) {
	type plain RateResult
	finite := func(v float64) *float64 {
		if math.IsInf(v, 0) || math.IsNaN(v) {
			return nil
		}
		return &v
	}
	return json.Marshal(struct {
		plain
		Ratio, Low, High *float64
	}{plain(r), finite(r.Ratio), finite(r.Low), finite(r.High)})
}

// UnmarshalJSON reads a RateResult recorded by MarshalJSON: null as +Inf.
func (r *RateResult) UnmarshalJSON(b []byte) error {
	type plain RateResult
	var v struct {
		plain
		Ratio, Low, High *float64
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	orInf := func(p *float64) float64 {
		if p == nil {
			return math.Inf(1)
		}
		return *p
	}
	*r = RateResult(v.plain)
	r.Ratio, r.Low, r.High = orInf(v.Ratio), orInf(v.Low), orInf(v.High)
	return nil
}

// RateTrend compares the later half of the lookback with the earlier
// half: Worse means the error rate was already rising by more than the
// margin before the deploy, which then cannot be blamed for it.
func RateTrend(errorsEarly, totalEarly, errorsLate, totalLate, margin, alpha float64) RateResult {
	return Rates(errorsLate, totalLate, errorsEarly, totalEarly, margin, alpha)
}

// count rounds an increase() value to a count: to the nearest integer,
// with NaN and negative values as 0 and values beyond 2^62 capped there.
func count(v float64) int64 {
	switch {
	case math.IsNaN(v) || v <= 0:
		return 0
	case v >= 1<<62:
		return 1 << 62
	}
	return int64(math.Round(v))
}

// binomialUpper is P(X >= k) for X ~ Binomial(k + other, p), from the
// regularized incomplete beta function: I_p(k, other+1) (as the Beta CDF,
// which keeps precision in the far tail where 1 - CDF would not). Counts
// scaled by a dispersion are not integers; the function is continuous in
// them.
func binomialUpper(k, other, p float64) float64 {
	if k <= 0 {
		return 1
	}
	return distuv.Beta{Alpha: k, Beta: other + 1}.CDF(p)
}

// clopperPearson is the exact interval for a binomial proportion with k
// successes and other failures, each bound one-sided at alpha.
func clopperPearson(k, other, alpha float64) (low, high float64) {
	low, high = 0, 1
	if k > 0 {
		low = distuv.Beta{Alpha: k, Beta: other + 1}.Quantile(alpha)
	}
	if other > 0 {
		high = distuv.Beta{Alpha: k + 1, Beta: other}.Quantile(1 - alpha)
	}
	return low, high
}
