package stats

import (
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
	// when every error is on the after side); an encoder without infinities
	// records them as null.
	Ratio, Low, High float64
	Level            float64 // the interval's coverage, 1 - 2 alpha
	Margin           float64 // the null hypothesis is Ratio <= 1 + Margin
	P                float64
	Worse            bool   // P <= alpha: the rate grew by more than the margin
	Note             string // why it could not be judged, if so
}

// Rates tests whether errors per request after are worse than before by
// more than margin (rate ratio above 1+margin), at level alpha, exactly by
// the conditional binomial test of the rate ratio. The counts are PromQL
// increase() values (floats); see the package documentation for how they
// are rounded.
func Rates(errorsAfter, totalAfter, errorsBefore, totalBefore, margin, alpha float64) RateResult {
	ea, ta := count(errorsAfter), count(totalAfter)
	eb, tb := count(errorsBefore), count(totalBefore)
	ea, eb = min(ea, ta), min(eb, tb)
	res := RateResult{
		Test:        RateTest,
		ErrorsAfter: ea, TotalAfter: ta, ErrorsBefore: eb, TotalBefore: tb,
		Ratio: 1, Low: 0, High: math.Inf(1),
		Level: 1 - 2*alpha, Margin: margin, P: 1,
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
	res.RateAfter = float64(ea) / float64(ta)
	res.RateBefore = float64(eb) / float64(tb)
	switch {
	case eb > 0:
		res.Ratio = res.RateAfter / res.RateBefore
	case ea > 0:
		res.Ratio = math.Inf(1)
	}
	x := ea + eb
	if x == 0 {
		return res
	}
	// Given x errors in all, the after side's share is binomial with
	// p = R ta / (R ta + tb) for the rate ratio R.
	fa, fb := float64(ta), float64(tb)
	toRatio := func(p float64) float64 {
		if p >= 1 {
			return math.Inf(1)
		}
		return p / (1 - p) * fb / fa
	}
	lowP, highP := clopperPearson(ea, x, alpha)
	res.Low, res.High = toRatio(lowP), toRatio(highP)
	r0 := 1 + margin
	p0 := r0 * fa / (r0*fa + fb)
	res.P = binomialUpper(ea, x, p0)
	res.Worse = res.P <= alpha
	return res
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

// binomialUpper is P(X >= k) for X ~ Binomial(n, p), from the regularized
// incomplete beta function: I_p(k, n-k+1) (as the Beta CDF, which keeps
// precision in the far tail where 1 - CDF would not).
func binomialUpper(k, n int64, p float64) float64 {
	if k <= 0 {
		return 1
	}
	if k > n {
		return 0
	}
	return distuv.Beta{Alpha: float64(k), Beta: float64(n - k + 1)}.CDF(p)
}

// clopperPearson is the exact interval for a binomial proportion with k
// successes in n trials, each bound one-sided at alpha.
func clopperPearson(k, n int64, alpha float64) (low, high float64) {
	low, high = 0, 1
	if k > 0 {
		low = distuv.Beta{Alpha: float64(k), Beta: float64(n - k + 1)}.Quantile(alpha)
	}
	if k < n {
		high = distuv.Beta{Alpha: float64(k + 1), Beta: float64(n - k)}.Quantile(1 - alpha)
	}
	return low, high
}
