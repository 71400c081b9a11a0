package watch

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/stats"
)

// A comparison's samples come from range queries at its step, on a grid
// of multiples of the step since the Unix epoch, kept in stepStores shared
// by the runs that measure the same resolved query: a look fetches only
// the steps no run fetched yet, so every run measuring the same query at
// the same time asks Prometheus for the same range at most once, and a
// run's sides are views of the stores, not samples of its own. A run
// resumed by another process finds the stores of that process, or fills
// them at its first look.

// week is the shift of a {weeks: N} comparison's before spans.
const week = 7 * 24 * time.Hour

// datum is one step of a comparison's data: a sample, or a step's errors
// (v) and requests (total).
type datum struct {
	t        model.Time // the step's time; for a span moved back, the after step it stands for
	v, total float64
}

// compareState is what a run keeps of one check's comparison: its
// rendered queries. Its data is in the stores.
type compareState struct {
	query, errors, total string // rendered, .Range the step
	// own holds the stores of a look without shared ones (a replay, a
	// preview), by source, from one look to the next.
	own []*stepStore
}

func newCompareState(c *policy.Check, data policy.TemplateData) (*compareState, error) {
	st := &compareState{}
	cmp := c.Compare
	data.Range = model.Duration(cmp.Step).String()
	var err error
	if cmp.Counts() {
		if st.errors, err = c.RenderErrors(data); err != nil {
			return nil, err
		}
		if st.total, err = c.RenderTotal(data); err != nil {
			return nil, err
		}
	} else if st.query, err = c.RenderQuery(data); err != nil {
		return nil, err
	}
	return st, nil
}

// gridFloor is the last step of the grid at or before t.
func gridFloor(t time.Time, step time.Duration) time.Time {
	ns := t.UnixNano()
	m := ns % int64(step)
	if m < 0 {
		m += int64(step)
	}
	return time.Unix(0, ns-m).UTC()
}

// gridCeil is the first step of the grid at or after t.
func gridCeil(t time.Time, step time.Duration) time.Time {
	f := gridFloor(t, step)
	if f.Before(t) {
		return f.Add(step)
	}
	return f
}

// afterStart is the first step of a comparison's after side: from the
// deploy plus initial_delay, and after the deploy: a sample evaluated at
// the deploy's own time is the last one before it, and a count's step
// (the errors of the span before it) must not reach back before it.
func afterStart(c *policy.Check, p *policy.Policy, deploy time.Time) time.Time {
	step := time.Duration(c.Compare.Step)
	from := deploy.Add(time.Duration(p.InitialDelay))
	if c.Compare.Counts() && from.Before(deploy.Add(step)) {
		from = deploy.Add(step)
	}
	first := gridCeil(from, step)
	if !first.After(deploy) {
		first = first.Add(step)
	}
	return first
}

// compareLooks numbers the look at ts among the looks of the window that
// can be judged: those whose after side has at least need steps (a sample
// comparison's min_samples, a count comparison's stats.MinSteps). look is
// 0 for a time that is not one of them, which then may pass and never fail
// (stats.LookAlpha).
func compareLooks(p *policy.Policy, start, after time.Time, step time.Duration, need int, ts time.Time) (look, looks int) {
	first, interval, end := window(p, start)
	for t := first; !t.After(end); t = t.Add(interval) {
		if n := stepsBetween(after, gridFloor(t, step), step); n >= need {
			looks++
			if t.Equal(ts) {
				look = looks
			}
		}
		if interval <= 0 {
			break
		}
	}
	return look, looks
}

// stepsBetween counts the grid steps from..to, both included.
func stepsBetween(from, to time.Time, step time.Duration) int {
	if to.Before(from) {
		return 0
	}
	return int(to.Sub(from)/step) + 1
}

// lookAt is what a look at a comparison needs to know of its run.
type lookAt struct {
	policy  *policy.Policy
	check   *policy.Check
	start   time.Time // the run's start, which its looks' times follow
	deploy  time.Time // when the deploy happened
	version string    // the deploy's version, for canary
	// after, when set, is where the after side starts instead of the
	// deploy: a rollback's completion, for its verification.
	after time.Time
}

// shifts are the sources of a comparison's data other than its after
// side's: how far back each before side reads ({offset: D}, {weeks: N}).
func shifts(cmp *policy.Compare) []time.Duration {
	switch cmp.With.Kind {
	case policy.WithOffset:
		return []time.Duration{time.Duration(cmp.With.Offset)}
	case policy.WithWeeks:
		out := make([]time.Duration, cmp.With.Weeks)
		for k := range out {
			out[k] = time.Duration(k+1) * week
		}
		return out
	}
	return nil
}

// stores returns the comparison's stores for a look at ts: the after
// side's (for canary, both sides'), then one per shift.
func (st *compareState) stores(reg *stepStores, at lookAt, ts time.Time) []*stepStore {
	c, p := at.check, at.policy
	cmp := c.Compare
	key := stepKey{query: st.query, errors: st.errors, total: st.total, step: time.Duration(cmp.Step), aggregate: c.Aggregate}
	if cmp.With.Kind == policy.WithCanary {
		key.label, key.version = cmp.CanaryLabel, at.version
	}
	keep := time.Duration(p.InitialDelay) + time.Duration(p.Window) + 2*key.step
	if cmp.With.Kind == policy.WithPreDeploy {
		keep += time.Duration(cmp.Lookback)
	}
	if reg == nil && st.own != nil {
		return st.own
	}
	sh := shifts(cmp)
	out := make([]*stepStore, 0, 1+len(sh))
	out = append(out, reg.get(key, cmp.Counts(), keep, ts))
	for _, d := range sh {
		k := key
		k.shift = d
		out = append(out, reg.get(k, cmp.Counts(), keep, ts))
	}
	if reg == nil {
		st.own = out
	}
	return out
}

// look gathers what a look at ts sees of the comparison, fetching what no
// look has fetched yet from q into the stores of reg (nil: the state's
// own). A failed query fails the look; what was fetched before it stays,
// and the rest is fetched again at the next look.
func (st *compareState) look(ctx context.Context, q Querier, reg *stepStores, at lookAt, ts time.Time) (policy.Sides, error) {
	c, p, deploy := at.check, at.policy, at.deploy
	cmp := c.Compare
	step := time.Duration(cmp.Step)
	sideFrom := deploy
	if !at.after.IsZero() {
		sideFrom = at.after
	}
	first := afterStart(c, p, sideFrom)
	end := gridFloor(ts, step)
	stores := st.stores(reg, at, ts)
	split := cmp.With.Kind == policy.WithCanary

	// The pre_deploy span is read from the after side's store: the same
	// series, the steps before the deploy.
	from := first
	var bFrom, bTo time.Time
	if cmp.With.Kind == policy.WithPreDeploy {
		bFrom, bTo = gridCeil(deploy.Add(-time.Duration(cmp.Lookback)), step), gridFloor(deploy, step)
		from = bFrom
	}
	if !from.After(end) {
		if err := stores[0].ensure(ctx, from, end, func(f, t time.Time) ([]datum, []datum, error) {
			if split {
				return st.fetchCanary(ctx, q, at, f, t, step)
			}
			a, err := st.fetchSide(ctx, q, at, f, t, step)
			return a, nil, err
		}); err != nil {
			return policy.Sides{}, err
		}
	}
	for i, s := range stores[1:] {
		d := s.key.shift
		if first.After(end) {
			break
		}
		if err := s.ensure(ctx, first, end, func(f, t time.Time) ([]datum, []datum, error) {
			b, err := st.fetchSide(ctx, q, at, f.Add(-d), t.Add(-d), step)
			for j := range b {
				b[j].t += model.Time(d.Milliseconds())
			}
			return b, nil, err
		}); err != nil {
			return policy.Sides{}, fmt.Errorf("%s: %w", withSource(cmp, i), err)
		}
	}

	in := st.sides(stores, cmp, first, end, bFrom, bTo)
	need := cmp.MinSamples
	if cmp.Counts() {
		need = stats.MinSteps
	}
	in.Look, in.Looks = compareLooks(p, at.start, first, step, need, ts)
	return in, nil
}

// withSource names shift i of a comparison, for a query's error.
func withSource(cmp *policy.Compare, i int) string {
	if cmp.With.Kind == policy.WithWeeks {
		return fmt.Sprintf("%d week(s) before", i+1)
	}
	return withText(cmp.With)
}

// sides is the look's data as the judge takes it: views of the stores,
// the before spans pooled in order (or, for 3 weeks or more of samples,
// step by step). after..end are the after side's steps, bFrom..bTo the
// pre_deploy span's.
func (st *compareState) sides(stores []*stepStore, cmp *policy.Compare, after, end, bFrom, bTo time.Time) policy.Sides {
	var in policy.Sides
	var a, aTotal, b, bTotal []float64
	a, aTotal = stores[0].view(laneCanary, after, end)
	switch {
	case cmp.With.Kind == policy.WithPreDeploy:
		b, bTotal = stores[0].view(laneCanary, bFrom, bTo)
	case cmp.With.Kind == policy.WithCanary:
		b, bTotal = stores[0].view(laneOthers, after, end)
	case len(stores) == 2:
		b, bTotal = stores[1].view(laneCanary, after, end)
	case len(stores) >= 4 && !cmp.Counts():
		b = stepMedians(stores[1:], after, end)
	default:
		for _, s := range stores[1:] {
			v, t := s.view(laneCanary, after, end)
			b, bTotal = append(b, v...), append(bTotal, t...)
		}
	}
	if cmp.Counts() {
		in.ErrorsAfter, in.TotalAfter, in.ErrorsBefore, in.TotalBefore = a, aTotal, b, bTotal
	} else {
		in.After, in.Before = a, b
	}
	return in
}

// stepMedians pools the spans of a {weeks: N} comparison (N >= 3) step by
// step: each step's value is the median of that step's value in the N
// weeks. One odd week (a holiday, an incident a week ago) then moves no
// step, where pooling the weeks' samples would put a third of the before
// side at the holiday's level.
func stepMedians(stores []*stepStore, from, to time.Time) []float64 {
	byStep := map[int64][]float64{}
	for _, s := range stores {
		s.eachStep(laneCanary, from, to, func(i int64, vs []float64) {
			for _, v := range vs {
				if !math.IsNaN(v) && !math.IsInf(v, 0) {
					byStep[i] = append(byStep[i], v)
				}
			}
		})
	}
	steps := make([]int64, 0, len(byStep))
	for i := range byStep {
		steps = append(steps, i)
	}
	slices.Sort(steps)
	out := make([]float64, len(steps))
	for i, k := range steps {
		vs := byStep[k]
		slices.Sort(vs)
		if n := len(vs); n%2 == 1 {
			out[i] = vs[n/2]
		} else {
			out[i] = (vs[n/2-1] + vs[n/2]) / 2
		}
	}
	return out
}

// fetchSide fetches the steps from..to of the check's comparison data,
// one datum per step.
func (st *compareState) fetchSide(ctx context.Context, q Querier, at lookAt, from, to time.Time, step time.Duration) ([]datum, error) {
	a, b, err := st.fetch(ctx, q, at, from, to, step, false)
	return append(a, b...), err
}

// fetchCanary fetches the steps from..to split into the canary's series
// (label canary_label equal to the deploy's version) and the others'.
func (st *compareState) fetchCanary(ctx context.Context, q Querier, at lookAt, from, to time.Time, step time.Duration) (canary, others []datum, err error) {
	return st.fetch(ctx, q, at, from, to, step, true)
}

func (st *compareState) fetch(ctx context.Context, q Querier, at lookAt, from, to time.Time, step time.Duration, split bool) (in, out []datum, err error) {
	c := at.check
	var isCanary func(model.Metric) bool
	if split {
		label, version := model.LabelName(c.Compare.CanaryLabel), model.LabelValue(at.version)
		isCanary = func(m model.Metric) bool { return m[label] == version }
	}
	if st.query != "" {
		m, err := q.QueryRange(ctx, st.query, from, to, step)
		if err != nil {
			return nil, nil, err
		}
		return samplePoints(m, c.Aggregate, isCanary)
	}
	em, err := q.QueryRange(ctx, st.errors, from, to, step)
	if err != nil {
		return nil, nil, fmt.Errorf("compare.errors: %w", err)
	}
	tm, err := q.QueryRange(ctx, st.total, from, to, step)
	if err != nil {
		return nil, nil, fmt.Errorf("compare.total: %w", err)
	}
	in, out = countPoints(em, tm, isCanary)
	return in, out, nil
}

// samplePoints turns a range query's series into samples in time order.
// Several series are reduced per step by aggregate; without it, a canary
// comparison pools its sides' series (every series a sample at each
// step), any other takes one series only: several are an error, as for an
// instant query. isCanary, when set, splits the series into the canary's
// (in) and the others' (out).
func samplePoints(m model.Matrix, aggregate string, isCanary func(model.Metric) bool) (in, out []datum, err error) {
	if isCanary == nil && aggregate == "" && len(m) > 1 {
		return nil, nil, fmt.Errorf("query returned %d series; set aggregate (min, max, avg, sum) or compare with canary", len(m))
	}
	var mi, mo model.Matrix
	for _, s := range m {
		if isCanary != nil && isCanary(s.Metric) {
			mi = append(mi, s)
		} else {
			mo = append(mo, s)
		}
	}
	return reduceSteps(mi, aggregate), reduceSteps(mo, aggregate), nil
}

// reduceSteps lays out the series' values step by step: at each step
// reduced to one by how, or, without how, all of them.
func reduceSteps(m model.Matrix, how string) []datum {
	byTime := map[model.Time][]float64{}
	for _, s := range m {
		for _, v := range s.Values {
			byTime[v.Timestamp] = append(byTime[v.Timestamp], float64(v.Value))
		}
	}
	times := make([]model.Time, 0, len(byTime))
	for t := range byTime {
		times = append(times, t)
	}
	slices.Sort(times)
	var out []datum
	for _, t := range times {
		vs := byTime[t]
		if how != "" {
			out = append(out, datum{t: t, v: policy.AggregateValues(how, vs)})
			continue
		}
		for _, v := range vs {
			out = append(out, datum{t: t, v: v})
		}
	}
	return out
}

// countPoints pairs errors and requests step by step, each summed over
// its series (a step where either query has nothing is left out: no step
// counts errors without their requests).
func countPoints(errs, totals model.Matrix, isCanary func(model.Metric) bool) (in, out []datum) {
	type key struct {
		t      model.Time
		canary bool
	}
	sum := func(m model.Matrix) map[key]float64 {
		sums := map[key]float64{}
		for _, s := range m {
			k := key{canary: isCanary != nil && isCanary(s.Metric)}
			for _, v := range s.Values {
				k.t = v.Timestamp
				sums[k] += float64(v.Value)
			}
		}
		return sums
	}
	es, ts := sum(errs), sum(totals)
	keys := make([]key, 0, len(ts))
	for k := range ts {
		if _, ok := es[k]; ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b key) int { return int(a.t - b.t) })
	for _, k := range keys {
		p := datum{t: k.t, v: es[k], total: ts[k]}
		if k.canary {
			in = append(in, p)
		} else {
			out = append(out, p)
		}
	}
	return in, out
}

// comparisonDetail is what a measurement record says of a comparison.
func comparisonDetail(cs *checkState, cr *policy.Comparison, in policy.Sides) *audit.ComparisonDetail {
	if cr == nil {
		return nil
	}
	c := cs.check
	cmp := c.Compare
	d := &audit.ComparisonDetail{
		With: withText(cmp.With), Kind: "samples", Direction: cmp.Direction,
		ErrorsQuery: cs.cmp.errors, TotalQuery: cs.cmp.total,
		Confidence: cmp.Confidence, Look: cr.Look, Looks: cr.Looks, Alpha: cr.Alpha,
		NotJudged: cr.NotJudged,
	}
	if cmp.Margin != nil {
		d.Margin = *cmp.Margin
	}
	judged := cr.NotJudged == ""
	if s := cr.Samples; s != nil {
		d.Test, d.Worse, d.Level = s.Test, s.Worse, s.Level
		d.After = audit.SideDetail{N: s.NAfter, Median: jsonFloat(s.MedianAfter), Samples: chartSamples(in.After)}
		d.Before = audit.SideDetail{N: s.NBefore, Median: jsonFloat(s.MedianBefore), Samples: chartSamples(in.Before)}
		d.MarginValue = audit.Some(jsonFloat(s.Margin))
		if judged {
			d.P = jsonFloat(s.P)
			d.Shift, d.ShiftLow, d.ShiftHigh = audit.Some(jsonFloat(s.Shift)), audit.Some(jsonFloat(s.Low)), audit.Some(jsonFloat(s.High))
		}
	}
	if n := cr.Counts; n != nil {
		d.Kind, d.Test, d.Worse, d.Level = "counts", n.Test, n.Worse, n.Level
		side := func(e, t int64, rate, disp float64, steps int) audit.SideDetail {
			sd := audit.SideDetail{N: steps, Errors: &e, Total: &t, Dispersion: disp}
			if t > 0 {
				sd.Rate = jsonFloat(rate)
			}
			return sd
		}
		d.After = side(n.ErrorsAfter, n.TotalAfter, n.RateAfter, n.DispersionAfter, len(in.TotalAfter))
		d.Before = side(n.ErrorsBefore, n.TotalBefore, n.RateBefore, n.DispersionBefore, len(in.TotalBefore))
		if judged {
			d.P = jsonFloat(n.P)
			d.Ratio, d.RatioLow, d.RatioHigh = audit.Some(jsonFloat(n.Ratio)), audit.Some(jsonFloat(n.Low)), audit.Some(jsonFloat(n.High))
		}
	}
	if t := cr.Trend; t != nil {
		d.Trend = &audit.TrendDetail{Early: jsonFloat(t.MedianBefore), Late: jsonFloat(t.MedianAfter), P: t.P, Worse: t.Worse}
	}
	if t := cr.CountTrend; t != nil {
		d.Trend = &audit.TrendDetail{Early: jsonFloat(t.RateBefore), Late: jsonFloat(t.RateAfter), P: t.P, Worse: t.Worse}
	}
	return d
}

// withText names what a comparison compares with, for records.
func withText(w policy.CompareWith) string {
	switch w.Kind {
	case policy.WithOffset:
		return "offset " + w.Offset.String()
	case policy.WithWeeks:
		return fmt.Sprintf("weeks %d", w.Weeks)
	}
	return w.Kind
}

// chartSamples picks at most audit.ChartSamples values, evenly in time
// order, for a chart of the two sides.
func chartSamples(vs []float64) []*float64 {
	if len(vs) == 0 {
		return nil
	}
	n := min(len(vs), audit.ChartSamples)
	out := make([]*float64, n)
	for i := range n {
		out[i] = jsonFloat(vs[int(math.Round(float64(i)*float64(len(vs)-1)/float64(max(n-1, 1))))])
	}
	return out
}

// Preview is a comparison replayed over past data, look by look, as a run
// would have judged it.
type Preview struct {
	At        time.Time // the deciding look: the first that failed, else the last
	Looks     int       // looks taken, up to and including At
	Judgement policy.Judgement
	Detail    *audit.ComparisonDetail
}

// PreviewComparison replays check c of p (which must compare) for a
// deploy of version that happened at deployed, as a run that started then
// would have looked at it: every look of the window up to until (or the
// window's end), each evaluated at its own time, stopping at the first
// that fails or errs. It is what `watcher check --prometheus.url` shows.
func PreviewComparison(ctx context.Context, q Querier, p *policy.Policy, c *policy.Check, data policy.TemplateData, deployed, until time.Time) (Preview, error) {
	if c.Compare == nil {
		return Preview{}, fmt.Errorf("check %q does not compare", c.Name)
	}
	st, err := newCompareState(c, data)
	if err != nil {
		return Preview{}, err
	}
	at := lookAt{policy: p, check: c, start: deployed, deploy: deployed, version: data.Version}
	first, interval, end := window(p, deployed)
	var pv Preview
	for ts := first; !ts.After(end) && !ts.After(until); ts = ts.Add(interval) {
		in, err := st.look(ctx, q, nil, at, ts)
		j, cr := c.JudgeCompare(in, err)
		pv = Preview{At: ts, Looks: pv.Looks + 1, Judgement: j, Detail: comparisonDetail(&checkState{check: c, cmp: st}, cr, in)}
		if j.Outcome == policy.Fail || j.Outcome == policy.Error || interval <= 0 {
			break
		}
	}
	if pv.Looks == 0 {
		return pv, fmt.Errorf("no look of the window (first at %s) is before %s", first.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339))
	}
	return pv, nil
}
