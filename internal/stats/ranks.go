package stats

import (
	"cmp"
	"math"
	"slices"
)

// exactLimit is the largest pooled sample size given exact permutation
// p-values; above it the normal approximation is within a few percent of
// them and the exact distribution would cost too much per look.
const exactLimit = 30

// clean drops NaN and ±Inf values, keeping the order, and counts them.
func clean(xs []float64) (kept []float64, dropped int) {
	kept = make([]float64, 0, len(xs))
	for _, x := range xs {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			dropped++
			continue
		}
		kept = append(kept, x)
	}
	return kept, dropped
}

// median of xs, 0 for an empty sample (an audit record cannot hold NaN).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// midranks returns twice the mid-rank of every value (integers, so that
// exact distributions can be tabulated by sum) and the tie term
// sum(t^3 - t) over groups of t equal values.
func midranks(xs []float64) (rank2 []int, ties float64) {
	n := len(xs)
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(xs[a], xs[b]) })
	rank2 = make([]int, n)
	for i := 0; i < n; {
		j := i
		for j+1 < n && xs[idx[j+1]] == xs[idx[i]] {
			j++
		}
		// Positions i..j (0-based) share ranks i+1..j+1: twice their mean
		// is i+j+2.
		for k := i; k <= j; k++ {
			rank2[idx[k]] = i + j + 2
		}
		if t := float64(j - i + 1); t > 1 {
			ties += t*t*t - t
		}
		i = j + 1
	}
	return rank2, ties
}

// lag1 is the lag-1 autocorrelation of the ranks of xs in time order, 0
// for fewer than 10 values or a constant sample. It is reported; the
// variance factor uses every lag (varianceFactor).
func lag1(xs []float64) float64 {
	n := len(xs)
	if n < 10 {
		return 0
	}
	r2, _ := midranks(xs)
	mean := float64(n + 1) // of the doubled ranks
	var num, den float64
	for i, r := range r2 {
		d := float64(r) - mean
		den += d * d
		if i+1 < n {
			num += d * (float64(r2[i+1]) - mean)
		}
	}
	if den == 0 {
		return 0
	}
	return num / den
}

// upperNormal is P(Z >= z) for a standard normal Z, from the
// complementary error function: distuv's Survival is 1 - CDF, which stops
// at about 1e-16 where a record should say how far beyond that it is.
func upperNormal(z float64) float64 {
	return 0.5 * math.Erfc(z/math.Sqrt2)
}

// exactRankSumUpper is P(S >= s) where S is the sum of m values drawn
// without replacement from the doubled ranks r2 (the permutation
// distribution of the tied rank sum).
func exactRankSumUpper(r2 []int, m, s int) float64 {
	sorted := slices.Clone(r2)
	slices.Sort(sorted)
	maxSum := 0
	for _, r := range sorted[len(sorted)-m:] {
		maxSum += r
	}
	if s > maxSum {
		return 0
	}
	// ways[k][v]: number of k-subsets of the ranks seen so far summing to v.
	ways := make([][]float64, m+1)
	for k := range ways {
		ways[k] = make([]float64, maxSum+1)
	}
	ways[0][0] = 1
	for i, r := range sorted {
		for k := min(i+1, m); k >= 1; k-- {
			prev, cur := ways[k-1], ways[k]
			for v := maxSum - r; v >= 0; v-- {
				if prev[v] != 0 {
					cur[v+r] += prev[v]
				}
			}
		}
	}
	var total, upper float64
	for v, w := range ways[m] {
		total += w
		if v >= s {
			upper += w
		}
	}
	return upper / total
}

// hyperUpper is P(X >= a) for X hypergeometric: m draws without
// replacement from N items of which K are marked.
func hyperUpper(a, m, K, N int) float64 {
	lchoose := func(n, k int) float64 {
		x, _ := math.Lgamma(float64(n + 1))
		y, _ := math.Lgamma(float64(k + 1))
		z, _ := math.Lgamma(float64(n - k + 1))
		return x - y - z
	}
	hi := min(m, K)
	if a > hi {
		return 0
	}
	a = max(a, 0, m-(N-K))
	lall := lchoose(N, m)
	var p float64
	for x := a; x <= hi; x++ {
		p += math.Exp(lchoose(K, x) + lchoose(N-K, m-x) - lall)
	}
	return min(p, 1)
}

// varianceFactor is the long-run variance factor 1 + 2 sum(rho_k) of the
// ranks of xs in time order (longRunFactor of the ranks).
func varianceFactor(xs []float64) float64 {
	if len(xs) < 10 {
		return 1
	}
	r2, _ := midranks(xs)
	d := make([]float64, len(r2))
	for i, r := range r2 {
		d[i] = float64(r)
	}
	return longRunFactor(d)
}

// longRunFactor is 1 + 2 sum(rho_k) for the series d in time order, the
// autocorrelations summed by Geyer's initial positive sequence (pairs of
// lags while their sum stays positive, up to a quarter of the series),
// within [1, 40]: below 1 would trust negative correlation to shrink the
// variance, which is not a risk worth taking; at 40 a sample holds almost
// no information anyway.
func longRunFactor(xs []float64) float64 {
	n := len(xs)
	if n < 10 {
		return 1
	}
	var mean float64
	for _, x := range xs {
		mean += x
	}
	mean /= float64(n)
	d := make([]float64, n)
	var c0 float64
	for i, x := range xs {
		d[i] = x - mean
		c0 += d[i] * d[i]
	}
	if c0 == 0 {
		return 1
	}
	rho := func(k int) float64 {
		var c float64
		for i := 0; i+k < n; i++ {
			c += d[i] * d[i+k]
		}
		return c / c0
	}
	f := -1.0
	for m := 0; 2*m+1 < n/4; m++ {
		g := 1.0
		if m > 0 {
			g = rho(2 * m)
		}
		g += rho(2*m + 1)
		if g <= 0 {
			break
		}
		f += 2 * g
	}
	return min(max(f, 1), 40)
}
