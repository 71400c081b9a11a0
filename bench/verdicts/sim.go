package main

import (
	"math"
	"math/rand/v2"
	"slices"

	"gonum.org/v1/gonum/stat/distuv"

	"github.com/rollback-watcher/watcher/internal/stats"
)

// plan is a check's schedule: the policy keys of README "Comparisons" that shape
// the samples.
type plan struct {
	lookbackSteps int // lookback / step: the before sample's size
	looks         int // window / interval
	stepsPerLook  int // interval / step: after samples added per look
	minSamples    int // fewer after samples: not judged
	minTotal      float64
	confidence    float64
}

// watcherPlan: window 10m, interval 30s, step 15s, lookback 30m,
// confidence 0.98, min_samples 10, min_total 200.
var watcherPlan = plan{lookbackSteps: 120, looks: 20, stepsPerLook: 2, minSamples: 10, minTotal: 200, confidence: 0.98}

func (p plan) alpha() float64   { return 1 - p.confidence }
func (p plan) afterSteps() int  { return p.looks * p.stepsPerLook }
func (p plan) seriesSteps() int { return p.lookbackSteps + p.afterSteps() }

// outcome of many simulated deploys of one kind.
type outcome struct {
	deploys, failed int
	firstFail       []int // look of the first failure, per failed deploy
}

func (o *outcome) add(look int) {
	o.deploys++
	if look > 0 {
		o.failed++
		o.firstFail = append(o.firstFail, look)
	}
}

func (o outcome) rate() float64 { return float64(o.failed) / float64(o.deploys) }

// medianLook is the median look of first failure, 0 with none.
func (o outcome) medianLook() float64 {
	if len(o.firstFail) == 0 {
		return 0
	}
	s := slices.Clone(o.firstFail)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return float64(s[n/2])
	}
	return float64(s[n/2-1]+s[n/2]) / 2
}

// noise is a metric's sample kind: a generator of a series in time order
// and the population reference the relative margin applies to (its
// |median|, or its mean size when the median is 0, as stats does).
type noise struct {
	name, what string
	margin     float64
	ref        float64
	gen        func(rng *rand.Rand, n int) []float64
	// pointMass: most values are one value (0), so the margin, estimated
	// from the rest, is itself noisy.
	pointMass bool
}

func gaussian(rng *rand.Rand, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = 100 + 10*rng.NormFloat64()
	}
	return out
}

// ar1 is a stationary AR(1) series around 100 with standard deviation 10.
func ar1(rho float64) func(*rand.Rand, int) []float64 {
	return func(rng *rand.Rand, n int) []float64 {
		out := make([]float64, n)
		x := rng.NormFloat64()
		for i := range out {
			x = rho*x + math.Sqrt(1-rho*rho)*rng.NormFloat64()
			out[i] = 100 + 10*x
		}
		return out
	}
}

// rate1m is rate(x[1m]) sampled every 15s: a per-second rate over four
// 15-second Poisson counts (mean 25 each), so neighbours share three of
// their four counts.
func rate1m(rng *rand.Rand, n int) []float64 {
	pois := distuv.Poisson{Lambda: 25, Src: rng}
	counts := make([]float64, n+3)
	for i := range counts {
		counts[i] = pois.Rand()
	}
	out := make([]float64, n)
	for i := range out {
		out[i] = (counts[i] + counts[i+1] + counts[i+2] + counts[i+3]) / 60
	}
	return out
}

// lognormal latency, skewed: median 0.2s, sigma 0.5 on the log scale,
// with AR(1) 0.5 on the log scale.
func lognormal(rng *rand.Rand, n int) []float64 {
	out := make([]float64, n)
	x := rng.NormFloat64()
	for i := range out {
		x = 0.5*x + math.Sqrt(0.75)*rng.NormFloat64()
		out[i] = 0.2 * math.Exp(0.5*x)
	}
	return out
}

// sparse is an error rate that is 0 most of the time: 80% zeros, else
// exponential with mean 1 (a mean size of 0.2, the margin's reference).
func sparse(rng *rand.Rand, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		if rng.Float64() < 0.2 {
			out[i] = rng.ExpFloat64()
		}
	}
	return out
}

var noises = []noise{
	{"gaussian", "independent normal, sd 10% of the median", 0.1, 100, gaussian, false},
	{"ar1-0.7", "AR(1) rho 0.7, sd 10% of the median (a latency that wanders)", 0.1, 100, ar1(0.7), false},
	{"rate1m", "rate(x[1m]) of a Poisson counter every 15s (overlapping windows), sd 10%", 0.1, 100.0 / 60, rate1m, false},
	{"lognormal", "skewed latency, lognormal sigma 0.5, AR(1) 0.5 on the log scale", 0.2, 0.2, lognormal, false},
	{"sparse", "80% zeros (a sparse error rate), median 0", 0.5, 0.2, sparse, true},
}

// sampleDeploy simulates one deploy of a sample comparison against
// pre_deploy: the after side gets the noise plus shift (in the metric's
// unit); it returns the first failing look, 0 if none.
func sampleDeploy(rng *rand.Rand, p plan, nz noise, shift float64) int {
	series := nz.gen(rng, p.seriesSteps())
	before := series[:p.lookbackSteps]
	after := series[p.lookbackSteps:]
	for i := range after {
		after[i] += shift
	}
	for look := 1; look <= p.looks; look++ {
		n := look * p.stepsPerLook
		if n < p.minSamples {
			continue
		}
		if stats.Shift(after[:n], before, stats.Increase, nz.margin, stats.LookAlpha(p.alpha(), look, p.looks)).Worse {
			return look
		}
	}
	return 0
}

func runSamples(seed uint64, p plan, nz noise, deploys int, shiftMult float64) outcome {
	rng := rand.New(rand.NewPCG(seed, 1))
	var o outcome
	for range deploys {
		o.add(sampleDeploy(rng, p, nz, shiftMult*nz.margin*nz.ref))
	}
	return o
}

// counts is a count check's traffic: requests per 15s step and the error
// share, with errors Poisson given the requests, or bursty: a gamma-mixed
// (negative binomial) rate per step with the same mean.
type counts struct {
	name, what string
	requests   float64 // per step
	errorRate  float64
	margin     float64
	burst      float64 // gamma shape of the per-step error rate; 0: steady
}

var countKinds = []counts{
	{"poisson-1%", "200 requests/min, 1% errors, steady", 50, 0.01, 0.5, 0},
	{"poisson-0.1%", "200 requests/min, 0.1% errors (mostly zero errors)", 50, 0.001, 1, 0},
	{"busy-1%", "2000 requests/min, 1% errors", 500, 0.01, 0.5, 0},
}

// stepCounts draws the errors and requests of n steps with the error rate
// multiplied by mult from step from on.
func stepCounts(rng *rand.Rand, c counts, n, from int, mult float64, burst float64) (errs, reqs []float64) {
	reqP := distuv.Poisson{Lambda: c.requests, Src: rng}
	errs, reqs = make([]float64, n), make([]float64, n)
	for i := range n {
		reqs[i] = reqP.Rand()
		rate := c.errorRate
		if i >= from {
			rate *= mult
		}
		if burst > 0 {
			rate *= distuv.Gamma{Alpha: burst, Beta: burst, Src: rng}.Rand()
		}
		if lam := rate * reqs[i]; lam > 0 {
			errs[i] = distuv.Poisson{Lambda: lam, Src: rng}.Rand()
		}
	}
	return errs, reqs
}

func sum(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s
}

// countDeploy simulates one deploy of a count comparison against
// pre_deploy; burstAfter makes the after side's errors bursty (same mean).
// With totalsOnly the check sees the totals (stats.Rates), else the
// per-step counts (stats.RatesSeries).
func countDeploy(rng *rand.Rand, p plan, c counts, mult, burstAfter float64, totalsOnly bool) int {
	eb, rb := stepCounts(rng, c, p.lookbackSteps, p.lookbackSteps, 1, c.burst)
	burst := c.burst
	if burstAfter > 0 {
		burst = burstAfter
	}
	ea, ra := stepCounts(rng, c, p.afterSteps(), 0, mult, burst)
	for look := 1; look <= p.looks; look++ {
		n := look * p.stepsPerLook
		if sum(ra[:n]) < p.minTotal {
			continue
		}
		a := stats.LookAlpha(p.alpha(), look, p.looks)
		var r stats.RateResult
		if totalsOnly {
			r = stats.Rates(sum(ea[:n]), sum(ra[:n]), sum(eb), sum(rb), c.margin, a)
		} else {
			r = stats.RatesSeries(ea[:n], ra[:n], eb, rb, c.margin, a)
		}
		if r.Worse {
			return look
		}
	}
	return 0
}

func runCounts(seed uint64, p plan, c counts, deploys int, shiftMult, burstAfter float64, totalsOnly bool) outcome {
	rng := rand.New(rand.NewPCG(seed, 2))
	var o outcome
	for range deploys {
		o.add(countDeploy(rng, p, c, 1+shiftMult*c.margin, burstAfter, totalsOnly))
	}
	return o
}

// fleet is canary against baseline: one canary host and four baseline
// hosts over the same span, each host's latency an AR(1) 0.5 around 100
// (sd 10) times a load factor common to all hosts.
type fleet struct {
	baselineHosts int
	margin        float64
}

var canaryFleet = fleet{baselineHosts: 4, margin: 0.1}

// canaryDeploy simulates one canary run: incident multiplies every host's
// latency by 2 and error rate by 5 from a random step in the first half of
// the window on; bad shifts the canary's latency by bad x margin x 100 and
// multiplies its error rate by 1 + bad x countMargin. It returns the first
// failing look of the sample check and of the count check.
func canaryDeploy(rng *rand.Rand, p plan, f fleet, incident bool, bad float64) (sampleLook, countLook int) {
	n := p.afterSteps()
	incidentFrom := n
	if incident {
		incidentFrom = rng.IntN(n / 2)
	}
	load := make([]float64, n)
	l := rng.NormFloat64()
	for i := range load {
		l = 0.9*l + math.Sqrt(1-0.81)*rng.NormFloat64()
		load[i] = 1 + 0.05*l
		if i >= incidentFrom {
			load[i] *= 2
		}
	}
	reqP := distuv.Poisson{Lambda: 50, Src: rng}
	hostCounts := func(mult float64) (errs, reqs []float64) {
		errs, reqs = make([]float64, n), make([]float64, n)
		for i := range n {
			reqs[i] = reqP.Rand()
			rate := 0.01 * mult
			if i >= incidentFrom {
				rate *= 5
			}
			errs[i] = distuv.Poisson{Lambda: rate * reqs[i], Src: rng}.Rand()
		}
		return errs, reqs
	}
	host := func(shift float64) []float64 {
		s := ar1(0.5)(rng, n)
		for i := range s {
			s[i] = s[i]*load[i] + shift
		}
		return s
	}
	canary := host(bad * f.margin * 100)
	cErr, cReq := hostCounts(1 + bad*countMargin)
	baseline := make([][]float64, f.baselineHosts)
	bErr, bReq := make([][]float64, f.baselineHosts), make([][]float64, f.baselineHosts)
	for h := range baseline {
		baseline[h] = host(0)
		bErr[h], bReq[h] = hostCounts(1)
	}
	for look := 1; look <= p.looks; look++ {
		k := look * p.stepsPerLook
		a := stats.LookAlpha(p.alpha(), look, p.looks)
		if sampleLook == 0 && k >= p.minSamples {
			var base []float64
			for _, s := range baseline {
				base = append(base, s[:k]...)
			}
			if stats.Shift(canary[:k], base, stats.Increase, f.margin, a).Worse {
				sampleLook = look
			}
		}
		if countLook == 0 && sum(cReq[:k]) >= p.minTotal {
			// The baseline's per-step counts: the sum over its hosts, as
			// sum(increase(...)) without the canary's series gives them.
			be, br := make([]float64, k), make([]float64, k)
			for h := range bErr {
				for i := range k {
					be[i] += bErr[h][i]
					br[i] += bReq[h][i]
				}
			}
			if stats.RatesSeries(cErr[:k], cReq[:k], be, br, countMargin, a).Worse {
				countLook = look
			}
		}
	}
	return sampleLook, countLook
}

// countMargin is the canary count check's margin.
const countMargin = 0.5

func runCanary(seed uint64, p plan, f fleet, deploys int, incident bool, bad float64) (samples, cnts outcome) {
	rng := rand.New(rand.NewPCG(seed, 3))
	for range deploys {
		s, c := canaryDeploy(rng, p, f, incident, bad)
		samples.add(s)
		cnts.add(c)
	}
	return samples, cnts
}

// incidentDeploy simulates a deploy made while an incident that began
// minutesBefore the deploy (latency +50%) goes on: whether a look fails,
// and whether stats.Trend saw the baseline already rising (the watcher
// then makes the measurement inconclusive instead).
func incidentDeploy(rng *rand.Rand, p plan, nz noise, minutesBefore int) (failed, flagged bool) {
	series := nz.gen(rng, p.seriesSteps())
	for i := p.lookbackSteps - minutesBefore*4; i < len(series); i++ {
		series[i] *= 1.5
	}
	before, after := series[:p.lookbackSteps], series[p.lookbackSteps:]
	flagged = stats.Trend(before, stats.Increase, nz.margin, p.alpha()).Worse
	for look := 1; look <= p.looks; look++ {
		n := look * p.stepsPerLook
		if n >= p.minSamples && stats.Shift(after[:n], before, stats.Increase, nz.margin, stats.LookAlpha(p.alpha(), look, p.looks)).Worse {
			return true, flagged
		}
	}
	return false, flagged
}

// runIncident counts deploys that a look failed, and among them those
// whose failure the trend guard turns inconclusive.
func runIncident(seed uint64, p plan, nz noise, deploys, minutesBefore int) (failed, excused int) {
	rng := rand.New(rand.NewPCG(seed, 4))
	for range deploys {
		f, fl := incidentDeploy(rng, p, nz, minutesBefore)
		if f {
			failed++
			if fl {
				excused++
			}
		}
	}
	return failed, excused
}
