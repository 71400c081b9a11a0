// Package stats is the arithmetic behind comparison verdicts (README "Comparisons"):
// is the after sample worse than the before sample by more than a practical
// margin, are errors per request up by more than a margin, how much of the
// error budget a look may spend, and was the baseline already moving the
// bad way before the deploy. It is pure: given numbers, it returns numbers
// and the reasons for them, ready for an audit record. Distributions come
// from gonum's stat/distuv; only the rank and count arithmetic is written
// here.
//
// # Samples: Shift
//
// The test is a Mann-Whitney rank test with the margin in the null
// hypothesis: the after sample is shifted back by the margin before it is
// ranked against the before sample, so a shift no larger than the margin is
// the null and never fails, however many samples show it. Ties (metrics
// are full of zeros) get mid-ranks and the tie-corrected variance.
//
// A rank test of location is blind to one shape of regression: part of the
// after sample jumping far up while the rest ties with the before sample
// (spinnaker #6278: canary [100 x7, 1 x3] against [1 x10] passes Kayenta,
// because after the shift the three 1s rank below every baseline value).
// Mood's median test on the same shifted samples sees it (seven of the ten
// values above the pooled median, none of the baseline's). Both are run and
// joined by Bonferroni: P = min(1, 2 min(p_mw, p_median)), a valid level
// whatever the dependence between the two.
//
// The rank test's p-value is exact (the permutation distribution of the
// tied rank sum) when the samples hold at most 30 values in all, and the
// normal approximation with continuity correction beyond; the median
// test's hypergeometric tail is exact at any size.
//
// Metric samples are autocorrelated (rate(x[1m]) sampled every 15s shares
// three quarters of its window with its neighbour), and a rank test that
// assumes independent samples then fails far more often than alpha on data
// that did not change. Both statistics are averages of per-sample scores,
// so their variance grows by the long-run variance factor 1 + 2 sum(rho_k)
// of the scores' autocorrelations (the effective sample size shrinks by the
// same factor). It is estimated from the ranks of the before sample in time
// order (the longer side, undisturbed by the deploy: a regression that
// starts mid-sample would inflate the after side's own estimate), summing
// the autocorrelations by Geyer's initial positive sequence, and kept
// within [1, 40]; both sides are taken to share it. For an AR(1) process
// the factor is (1+rho)/(1-rho), for rate(x[1m]) at a 15s step about 4.
// When it exceeds 1 the exact permutation p-values, which assume
// exchangeable samples, are replaced by the larger of exact and inflated
// normal.
//
// The Hodges-Lehmann estimate (median of the pairwise differences) and its
// interval (the inversion of the large-sample test, same variance factor,
// each bound one-sided at alpha, at alpha/2 for Either) describe the shift
// for the record; the verdict is the p-value.
//
// The margin is relative: margin x |median(before)|. When that median is 0
// (sparse metrics), margin x mean(|before|) stands for the typical size;
// when every before value is 0 the absolute margin is 0: any rise from an
// all-zero baseline is larger than any relative margin. The margin is that
// of the baseline as observed (the record shows it); for a metric that is
// mostly zeros it rests on a few blips and varies from sample to sample.
//
// # Counts: Rates
//
// Errors after and before are taken as Poisson counts over their requests
// (exposures). Given the total number of errors, the after side's share is
// binomial with p = R t_a / (R t_a + t_b), R the rate ratio; the null
// R <= 1+margin is tested exactly with the binomial tail at R = 1+margin
// (R's poisson.test with r = 1+margin), which stays exact for small counts
// and when the before side had no errors. The interval for R is the
// Clopper-Pearson interval of p, transformed. For error rates far from 0
// the binomial variance of each side is below the Poisson one, so the test
// is conservative there. increase() extrapolates to the range's edges, so
// counts arrive as floats: they are rounded to the nearest integer (3.2
// errors were 3 errors seen over a slightly longer span), negative or NaN
// values count as 0, and errors above the total are capped at the total.
//
// Errors often come in bursts (a retry storm, a flapping dependency), and
// a Poisson test then fails on a variance-only change. RatesSeries takes the
// per-step counts instead of the totals, estimates each side's dispersion
// (the long-run variance of its per-step errors about its own rate, over
// the Poisson variance) and divides that side's counts by it before the
// same test: the quasi-Poisson approximation (the dispersion is estimated
// and at least 1, so with Poisson errors it is close to Rates on the sums).
// It judges nothing until each side has MinSteps steps, since a few steps
// cannot show burstiness. Rates, on totals alone, cannot see
// bursts and is for callers that have nothing else.
//
// # Repeated looks: LookAlpha
//
// A run looks every interval; the false-failure rate must hold over the
// whole window. LookAlpha gives each planned look the increment of the
// Lan-DeMets Pocock-type spending function alpha ln(1 + (e-1) t), t = k/K,
// and a look fails only at its own increment. The increments sum to alpha,
// so by the union bound the chance of any false failure over the K looks is
// at most alpha, with no assumption on how the looks are correlated (they
// share most of their data, which makes the bound conservative). Pocock's
// shape spends about evenly, a little more early, so a gross regression is
// caught in the first judged looks; O'Brien-Fleming's would spend almost
// nothing before the window's second half. A look past the plan (a resumed
// run catching up, or a miscount) gets 0: the budget is spent, and such a
// look can pass but not fail. Each look index must be tested at most once,
// and K should count the looks that can be judged: a look skipped for too
// few samples leaves its share unspent.
//
// # Not the deploy's fault: Trend, RateTrend
//
// Trend compares the last 1/32, 1/16, 1/8 and 1/4 of the before sample
// (in time order) with its first half by the same Shift test, Bonferroni
// over the four: when the end is already worse by more than the margin, an
// incident began before the deploy and the measurement is inconclusive
// rather than a failure. RateTrend does the same for counts, comparing the
// later half of the lookback with the earlier.
package stats
