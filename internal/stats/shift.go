package stats

import (
	"fmt"
	"math"
	"slices"

	"gonum.org/v1/gonum/stat/distuv"
)

// Direction is the bad direction of a metric: the way a worse deploy moves
// it.
type Direction int

const (
	Increase Direction = iota + 1
	Decrease
	Either
)

func (d Direction) String() string {
	switch d {
	case Increase:
		return "increase"
	case Decrease:
		return "decrease"
	case Either:
		return "either"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

func valid(d Direction) Direction {
	if d < Increase || d > Either {
		return Increase
	}
	return d
}

// ParseDirection reads a policy's direction: increase, decrease or either.
func ParseDirection(s string) (Direction, error) {
	for _, d := range []Direction{Increase, Decrease, Either} {
		if s == d.String() {
			return d, nil
		}
	}
	return 0, fmt.Errorf("direction %q: want increase, decrease or either", s)
}

// MarshalText records a direction by its name.
func (d Direction) MarshalText() ([]byte, error) {
	if d < Increase || d > Either {
		return nil, fmt.Errorf("no direction %d", int(d))
	}
	return []byte(d.String()), nil
}

// UnmarshalText reads a direction recorded by MarshalText.
func (d *Direction) UnmarshalText(b []byte) error {
	v, err := ParseDirection(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// ShiftTest names the test in every ShiftResult.
const ShiftTest = "mann-whitney+median"

// ShiftResult is a sample comparison, with what an audit record needs to
// explain it. Shift, Low and High are after minus before, in the metric's
// unit.
type ShiftResult struct {
	Test      string
	Direction Direction
	// NAfter and NBefore count the values used; Dropped* the NaN and ±Inf
	// values left out.
	NAfter, NBefore             int
	DroppedAfter, DroppedBefore int
	MedianAfter, MedianBefore   float64
	Shift                       float64 // Hodges-Lehmann estimate
	Low, High                   float64 // interval of the shift
	Level                       float64 // the interval's coverage
	Margin                      float64 // absolute: a shift up to it is the null hypothesis
	P                           float64 // min(1, 2 min(PMannWhitney, PMedian)), doubled again for Either
	PMannWhitney, PMedian       float64 // of the direction that came out worse
	Exact                       bool    // exact permutation p-values were used
	Autocorrelation             float64 // lag-1, of the before sample's ranks
	VarianceFactor              float64 // (1+rho)/(1-rho)
	Worse                       bool    // P <= alpha: worse by more than Margin
	Note                        string  // why a side could not be judged, if so
}

// Shift tests whether the after sample sits worse than the before sample
// by more than margin x |median(before)| in the bad direction dir, at level
// alpha. Both samples are in time order (autocorrelation is estimated from
// the before sample's order). See the package documentation for the test.
// A dir that is none of the three is taken as Increase, and recorded so.
func Shift(after, before []float64, dir Direction, margin, alpha float64) ShiftResult {
	dir = valid(dir)
	a, da := clean(after)
	b, db := clean(before)
	res := ShiftResult{
		Test: ShiftTest, Direction: dir,
		NAfter: len(a), NBefore: len(b), DroppedAfter: da, DroppedBefore: db,
		MedianAfter: median(a), MedianBefore: median(b),
		P: 1, PMannWhitney: 1, PMedian: 1, VarianceFactor: 1,
	}
	res.Margin = absMargin(b, res.MedianBefore, margin)
	switch {
	case len(a) == 0 && len(b) == 0:
		res.Note = "no samples on either side"
		return res
	case len(a) == 0:
		res.Note = "no samples after the deploy"
		return res
	case len(b) == 0:
		res.Note = "no samples before the deploy"
		return res
	}
	res.Autocorrelation = lag1(b)
	res.VarianceFactor = varianceFactor(b)

	switch dir {
	case Decrease:
		up := oneSided(negate(a), negate(b), res.Margin, alpha, res.VarianceFactor)
		res.setFrom(up.flip(), 1)
	case Either:
		up := oneSided(a, b, res.Margin, alpha/2, res.VarianceFactor)
		down := oneSided(negate(a), negate(b), res.Margin, alpha/2, res.VarianceFactor).flip()
		worst := up
		if down.p < up.p {
			worst = down
		}
		res.setFrom(worst, 2)
		// The interval is two-sided at alpha: each bound at alpha/2.
		res.Low, res.High = up.low, down.high
	default:
		res.setFrom(oneSided(a, b, res.Margin, alpha, res.VarianceFactor), 1)
	}
	res.Level = 1 - 2*alpha
	if dir == Either {
		res.Level = 1 - alpha
	}
	// A level of 0 (a look past the plan) fails nothing, even where P
	// underflows to 0.
	res.Worse = alpha > 0 && res.P <= alpha
	return res
}

// absMargin turns the relative margin into the metric's unit.
func absMargin(before []float64, med, margin float64) float64 {
	if med != 0 {
		return margin * math.Abs(med)
	}
	var sum float64
	for _, x := range before {
		sum += math.Abs(x)
	}
	if len(before) == 0 {
		return 0
	}
	return margin * sum / float64(len(before))
}

func negate(xs []float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = -x
	}
	return out
}

// side is one one-sided test: is y larger than x + delta?
type side struct {
	pMW, pMed, p float64
	exact        bool
	shift        float64
	low, high    float64
}

// flip turns a test run on negated samples back into after-minus-before
// terms.
func (s side) flip() side {
	s.shift, s.low, s.high = -s.shift, -s.high, -s.low
	return s
}

func (r *ShiftResult) setFrom(s side, tails float64) {
	r.PMannWhitney, r.PMedian, r.Exact = s.pMW, s.pMed, s.exact
	r.P = min(1, tails*s.p)
	r.Shift, r.Low, r.High = s.shift, s.low, s.high
}

// oneSided tests H0: y <= x + delta (stochastically) against y larger, with
// the rank and median tests on y - delta against x, and estimates the
// shift y - x with its lower bound at alpha (the upper bound at alpha too,
// for a two-sided interval of 1 - 2 alpha).
func oneSided(y, x []float64, delta, alpha, factor float64) side {
	m, n := len(y), len(x)
	N := m + n
	pooled := make([]float64, 0, N)
	for _, v := range y {
		pooled = append(pooled, v-delta)
	}
	pooled = append(pooled, x...)
	exact := N <= exactLimit

	var s side
	s.exact = exact && factor == 1
	s.pMW = mannWhitneyUpper(pooled, m, factor, exact)
	s.pMed = medianUpper(pooled, m, factor)
	s.p = min(1, 2*min(s.pMW, s.pMed))
	s.shift, s.low, s.high = hodgesLehmann(y, x, alpha, factor)
	return s
}

// mannWhitneyUpper is the one-sided p-value for the first m values of
// pooled ranking higher than the rest.
func mannWhitneyUpper(pooled []float64, m int, factor float64, exact bool) float64 {
	N := len(pooled)
	n := N - m
	r2, ties := midranks(pooled)
	sum2 := 0
	for _, r := range r2[:m] {
		sum2 += r
	}
	u := float64(sum2)/2 - float64(m*(m+1))/2
	mn := float64(m * n)
	v := mn / 12 * (float64(N+1) - ties/float64(N*(N-1)))
	if v <= 0 {
		// Every value is equal: no evidence of anything.
		return 1
	}
	pNormal := upperNormal((u - mn/2 - 0.5) / math.Sqrt(v*factor))
	if !exact {
		return pNormal
	}
	pExact := exactRankSumUpper(r2, m, sum2)
	if factor == 1 {
		return pExact
	}
	return max(pExact, pNormal)
}

// medianUpper is Mood's median test, one-sided: are more of the first m
// values above the pooled median than chance would put there?
func medianUpper(pooled []float64, m int, factor float64) float64 {
	N := len(pooled)
	med := median(pooled)
	above, K := 0, 0
	for i, v := range pooled {
		if v > med {
			K++
			if i < m {
				above++
			}
		}
	}
	if K == 0 || K == N {
		return 1
	}
	pExact := hyperUpper(above, m, K, N)
	if factor == 1 {
		return pExact
	}
	fm, fK, fN := float64(m), float64(K), float64(N)
	mean := fm * fK / fN
	v := fm * (fN - fm) * fK * (fN - fK) / (fN * fN * (fN - 1))
	pNormal := upperNormal((float64(above) - mean - 0.5) / math.Sqrt(v*factor))
	return max(pExact, pNormal)
}

// hodgesLehmann is the median of the pairwise differences y_i - x_j and
// the interval from inverting the large-sample rank test: the k-th
// smallest and largest differences, k = floor(mn/2 - z sd), each bound one
// sided at alpha, clamped to the range of the differences.
func hodgesLehmann(y, x []float64, alpha, factor float64) (est, low, high float64) {
	m, n := len(y), len(x)
	d := newDiffs(y, x)
	mn := m * n
	est = d.nth(mn / 2)
	if mn%2 == 0 {
		est = (est + d.nth(mn/2-1)) / 2
	}
	N := m + n
	ties := tieTerm(d.y, d.x)
	fmn := float64(mn)
	v := fmn / 12 * (float64(N+1) - ties/float64(N*(N-1))) * factor
	k := 0 // at level 0, every difference is in the interval
	if alpha > 0 {
		z := distuv.UnitNormal.Quantile(1 - min(alpha, 0.5))
		k = int(math.Floor(fmn/2 - z*math.Sqrt(max(v, 0))))
		k = min(max(k, 0), (mn-1)/2)
	}
	return est, d.nth(k), d.nth(mn - 1 - k)
}

// tieTerm is midranks' sum(t^3 - t) over the groups of t equal values of
// the two sorted samples pooled, by merging them.
func tieTerm(a, b []float64) float64 {
	var ties float64
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		var v float64
		switch {
		case j >= len(b) || (i < len(a) && a[i] <= b[j]):
			v = a[i]
		default:
			v = b[j]
		}
		t := 0
		for i < len(a) && a[i] == v {
			i++
			t++
		}
		for j < len(b) && b[j] == v {
			j++
			t++
		}
		ft := float64(t)
		ties += ft*ft*ft - ft
	}
	return ties
}

// diffs is the m x n pairwise differences y_i - x_j without building them:
// with both samples sorted, row i (y_i minus x from its largest down) grows
// along the row and down the columns, so the differences below a value
// are counted row by row in O(m + n). A k-th smallest is then found by
// narrowing each row's candidate columns around random pivots (Monahan's
// selection for the Hodges-Lehmann estimator): O((m + n) log mn) expected,
// where selecting among all m x n costs the whole matrix, a look at 120
// after against 360 before samples a millisecond and 400 KB.
type diffs struct {
	y, x []float64 // sorted ascending
	rnd  uint64
}

func newDiffs(y, x []float64) *diffs {
	d := &diffs{y: slices.Clone(y), x: slices.Clone(x), rnd: 0x9e3779b97f4a7c15}
	slices.Sort(d.y)
	slices.Sort(d.x)
	return d
}

// at is row i, column j: y_i minus the j-th largest x.
func (d *diffs) at(i, j int) float64 { return d.y[i] - d.x[len(d.x)-1-j] }

// below counts, per row, the columns whose difference is < v (or <= v
// with orEqual) into cnt, and returns their sum. The count falls (or
// stays) from row to row.
func (d *diffs) below(v float64, orEqual bool, cnt []int) int {
	n, total, j := len(d.x), 0, len(d.x)
	for i := range d.y {
		for j > 0 {
			a := d.at(i, j-1)
			if a < v || (orEqual && a == v) {
				break
			}
			j--
		}
		cnt[i] = min(j, n)
		total += cnt[i]
	}
	return total
}

// next is a xorshift step: pivots need no more than a cheap spread.
func (d *diffs) next() uint64 {
	d.rnd ^= d.rnd << 13
	d.rnd ^= d.rnd >> 7
	d.rnd ^= d.rnd << 17
	return d.rnd
}

// nth returns the k-th smallest difference (0-based).
func (d *diffs) nth(k int) float64 {
	m, n := len(d.y), len(d.x)
	lo, hi := make([]int, m), make([]int, m) // candidate columns of row i: [lo, hi)
	for i := range hi {
		hi[i] = n
	}
	lt, le := make([]int, m), make([]int, m)
	for {
		left := 0
		for i := range lo {
			left += hi[i] - lo[i]
		}
		if left <= 4*(m+n) {
			// Few enough to select among directly.
			below, cand := 0, make([]float64, 0, left)
			for i := range lo {
				below += lo[i]
				for j := lo[i]; j < hi[i]; j++ {
					cand = append(cand, d.at(i, j))
				}
			}
			return nth(cand, k-below)
		}
		r := int(d.next() % uint64(left))
		var pivot float64
		for i := range lo {
			if w := hi[i] - lo[i]; r < w {
				pivot = d.at(i, lo[i]+r)
				break
			} else {
				r -= w
			}
		}
		nlt := d.below(pivot, false, lt)
		nle := d.below(pivot, true, le)
		switch {
		case k < nlt:
			for i := range hi {
				hi[i] = min(hi[i], lt[i])
			}
		case k < nle:
			return pivot
		default:
			for i := range lo {
				lo[i] = max(lo[i], le[i])
			}
		}
	}
}

// Trend reports, as a ShiftResult, whether the before sample (in time
// order) was already moving the bad way at its end: its last 1/32, 1/16,
// 1/8 and 1/4 (at least 4 values each), each against its first half by the
// same test at alpha/4 (an incident a minute old fills the shortest; an
// older one or a slow drift shows in the longer ones), the most telling of
// them reported with its P multiplied by 4. Worse means an incident or drift
// began before the deploy, which then cannot be blamed for it. Fewer than
// 16 values are not judged (Note says so).
func Trend(before []float64, dir Direction, margin, alpha float64) ShiftResult {
	dir = valid(dir)
	b, dropped := clean(before)
	if len(b) < 16 {
		return ShiftResult{Test: ShiftTest, Direction: dir, NBefore: len(b), DroppedBefore: dropped,
			MedianBefore: median(b), P: 1, PMannWhitney: 1, PMedian: 1, VarianceFactor: 1,
			Note: fmt.Sprintf("%d samples before the deploy: too few to see a trend", len(b))}
	}
	const tails = 4
	early := b[:len(b)/2]
	var res ShiftResult
	for i, part := range []int{32, 16, 8, 4} {
		n := max(4, (len(b)+part-1)/part)
		r := Shift(b[len(b)-n:], early, dir, margin, alpha/tails)
		if i == 0 || r.P < res.P {
			res = r
		}
	}
	res.P = min(1, tails*res.P)
	res.Worse = alpha > 0 && res.P <= alpha
	res.DroppedBefore = dropped
	return res
}

// nth returns the k-th smallest value (0-based) of d, reordering d
// (Hoare's selection: a sort of the m x n pairwise differences would cost
// most of a look).
func nth(d []float64, k int) float64 {
	lo, hi := 0, len(d)-1
	for lo < hi {
		mid := lo + (hi-lo)/2
		// Median of three as the pivot.
		a, b, c := d[lo], d[mid], d[hi]
		pivot := max(min(a, b), min(max(a, b), c))
		i, j := lo, hi
		for i <= j {
			for d[i] < pivot {
				i++
			}
			for d[j] > pivot {
				j--
			}
			if i <= j {
				d[i], d[j] = d[j], d[i]
				i++
				j--
			}
		}
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return d[k]
		}
	}
	return d[k]
}
