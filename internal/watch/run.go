package watch

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"time"
	"unique"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// Verdicts of a run.
const (
	VerdictPending      = "pending"
	VerdictPassed       = "passed"
	VerdictFailed       = "failed"
	VerdictInconclusive = "inconclusive"
	VerdictMarginal     = "marginal" // a scored run between score.marginal and score.pass
	VerdictSuperseded   = "superseded"
)

// Run is the validation of one deploy against one policy. The policy pointer
// is the snapshot taken when the run started: a reload changes new runs only.
type Run struct {
	ID      string
	Deploy  events.Deploy
	Policy  *policy.Policy
	Start   time.Time // when the window opened (the event's arrival)
	since   time.Time // when this process took the run up: Start, or its resumption
	dueThen time.Time // the next measurement's time when it was taken up (catchUpDeadline)
	checks  []*checkState
	data    policy.TemplateData
	mu      sync.Mutex
	verdict string
	reason  string
	ended   time.Time

	// interned keeps the run's rendered queries shared with every other
	// run that renders the same text (intern).
	interned []unique.Handle[string]

	cancel       context.CancelFunc // stops the run's loop
	supersededBy *events.Deploy     // set when a newer deploy stopped it
	warmed       []string           // hosts whose connections the run keeps open

	// Scheduling (schedule.go), guarded by the scheduler's mutex.
	at   time.Time // when the next step is due
	slot int       // index in the queue; -1 when not queued

	ctx context.Context // ends when the run is superseded or the watcher stops

	// Durable state (store.go), guarded by mu.
	seq     uint64    // DEPLOYS stream sequence of the event
	owner   string    // replica measuring the run
	rev     uint64    // revision of the run's key this process last wrote
	next    time.Time // when the next measurement is due
	kind    string    // audit kind of the verdict
	detail  map[string]any
	request *events.RollbackRequest // the rollback a decided run asks for
	// verifyChecks name the checks that decided a run which asked for a
	// rollback: what rollback.verify measures again once it completed.
	verifyChecks []string

	// verify is set on a run that verifies a rollback instead of
	// validating a deploy (verify.go); it never changes.
	verify *verifyState
}

type checkState struct {
	check    *policy.Check
	query    string
	tally    policy.Tally
	baseline []policy.Series
	last     *MeasurementStatus
	// judged is the outcome of the last measurement that passed or
	// failed, "" before one did: a verification that ends without
	// recovering says whether a check still fails or could not be seen.
	judged string
	cmp    *compareState // for a check that compares
}

func newRun(id string, d events.Deploy, p *policy.Policy, start time.Time) (*Run, error) {
	r := &Run{ID: id, Deploy: d, Policy: p, Start: start, since: start, verdict: VerdictPending, slot: -1}
	r.next, _, _ = r.schedule()
	r.dueThen = r.next
	r.data = policy.TemplateData{
		Service:         d.Service,
		Environment:     d.Environment,
		Version:         d.Version,
		PreviousVersion: d.PreviousVersion,
		Labels:          d.Labels,
	}
	for _, c := range p.Checks {
		cs := &checkState{check: c}
		var err error
		if c.Query != "" {
			if cs.query, err = c.RenderQuery(r.data); err != nil {
				return nil, fmt.Errorf("check %q: %w", c.Name, err)
			}
			cs.query = r.intern(cs.query)
		}
		if c.Compare != nil {
			if cs.cmp, err = newCompareState(c, r.data); err != nil {
				return nil, fmt.Errorf("check %q: %w", c.Name, err)
			}
			cs.cmp.query, cs.cmp.errors, cs.cmp.total = r.intern(cs.cmp.query), r.intern(cs.cmp.errors), r.intern(cs.cmp.total)
			if cs.query == "" {
				cs.query = cs.cmp.errors // what the records name as the check's query
			}
		}
		r.checks = append(r.checks, cs)
	}
	return r, nil
}

// intern returns s as the text every run holding it shares: the runs of
// one service render the same queries, and 10,000 runs would otherwise
// keep 10,000 copies. The run keeps the handle, which keeps the shared
// copy from being let go while it runs.
func (r *Run) intern(s string) string {
	if s == "" {
		return s
	}
	h := unique.Make(s)
	r.interned = append(r.interned, h)
	return h.Value()
}

// deployTime is when the deploy happened, for pre_deploy baselines: the
// event's time when it is plausible, else its arrival. A verification
// keeps its run's: it measures against the same baselines.
func (r *Run) deployTime() time.Time {
	if r.verify != nil {
		return r.verify.DeployTime
	}
	if t := r.Deploy.Time; !t.IsZero() && !t.After(r.Start) {
		return t
	}
	return r.Start
}

// schedule lists when measurements happen: from initial_delay after the
// start, on the interval's grid (alignUp: runs share their queries), then
// every interval, until the window closes.
func (r *Run) schedule() (first time.Time, interval time.Duration, end time.Time) {
	return window(r.Policy, r.Start)
}

// window is schedule for a run of p that started at start.
func window(p *policy.Policy, start time.Time) (first time.Time, interval time.Duration, end time.Time) {
	interval = time.Duration(p.Interval)
	end = start.Add(time.Duration(p.Window))
	first = alignUp(start.Add(time.Duration(p.InitialDelay)), interval)
	if first.After(end) {
		// A delay as long as the window still gets its one measurement,
		// at the window's end.
		first = start.Add(time.Duration(p.InitialDelay))
	}
	return first, interval, end
}

// snapshot is what nextMove needs to know of r; timeout is
// prometheus.timeout.
func (r *Run) snapshot(timeout time.Duration) runSnapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := runSnapshot{
		Start: r.Start, Since: r.since, DueThen: r.dueThen, Next: r.next, QueryTimeout: timeout,
		Verdict: r.verdict, SupersededBy: r.supersededBy,
		Checks: make([]checkProgress, len(r.checks)),
	}
	for i, cs := range r.checks {
		s.Checks[i].Tally = cs.tally
		s.Checks[i].Judged = cs.judged
		if cs.last != nil {
			s.Checks[i].Last = cs.last.Reason
			s.Checks[i].Outcome = cs.last.Outcome
			s.Checks[i].Value, s.Checks[i].Threshold = cs.last.Value, cs.last.Threshold
		}
	}
	return s
}

// Querier runs instant and range queries; *promclient.Client is one.
type Querier interface {
	Query(ctx context.Context, query string, ts time.Time) (model.Vector, error)
	QueryRange(ctx context.Context, query string, start, end time.Time, step time.Duration) (model.Matrix, error)
}

// taken is one check's measurement at a time: its judgement and what its
// record needs, not yet counted in the check's tally.
type taken struct {
	j      policy.Judgement
	cr     *policy.Comparison // of a check that compares
	vec    model.Vector       // the instant query's answer
	baseAt time.Time          // when the baseline was evaluated, for a check with one
	sides  policy.Sides       // what a comparison judged
	// cut: a query was cut short by a budget below the timeout; the
	// measurement is not taken (neither counted nor recorded).
	cut bool
	// noBaseline says why the baseline could not be had, if so.
	noBaseline error
}

// take measures every check of r at ts and judges each measurement: the
// measurement that `watcher run` records and `watcher backtest` replays.
// Queries go to q, all within budget; comparisons keep their data in steps
// (nil: stores of their own) (the query timeout, or less when the
// run is near its deadline): one slow check must not leave the others no
// time, nor make the step take a timeout per check. A query cut short by a
// budget below the timeout did not fail, the run ran out of time: that
// check's measurement is marked cut.
func (r *Run) take(ctx context.Context, q Querier, steps *stepStores, ts time.Time, budget, timeout time.Duration) ([]taken, error) {
	type answer struct {
		taken
		err, cmpErr error
	}
	answers := make([]answer, len(r.checks))
	qctx, cancel := context.WithTimeout(ctx, budget)
	var wg sync.WaitGroup
	for i, cs := range r.checks {
		wg.Go(func() {
			a, c := &answers[i], cs.check
			if c.Baseline != nil {
				a.baseAt = cs.baselineTime(r, ts)
				// A pre-deploy baseline is one moment, fetched once it has
				// data; an offset baseline moves with the measurement.
				if c.Baseline.Kind != policy.BaselinePreDeploy || cs.baseline == nil {
					cs.baseline, a.noBaseline = fetchBaseline(qctx, q, cs.query, a.baseAt)
				}
			}
			// A comparison's own queries replace the instant one unless
			// the check has thresholds too.
			if cs.cmp == nil || c.HasThresholds() {
				a.vec, a.err = q.Query(qctx, cs.query, ts)
			}
			if cs.cmp != nil {
				at := lookAt{policy: r.Policy, check: c, start: r.Start, deploy: r.deployTime(), after: r.afterFrom(), version: r.Deploy.Version}
				a.sides, a.cmpErr = cs.cmp.look(qctx, q, steps, at, ts)
			}
			for _, err := range []*error{&a.err, &a.cmpErr} {
				if errors.Is(*err, context.DeadlineExceeded) && ctx.Err() == nil {
					if budget < timeout {
						a.cut = true
					} else {
						*err = fmt.Errorf("no answer within %s, the query timeout (prometheus.timeout, at most the policy's interval)", timeout.Round(time.Millisecond))
					}
				}
			}
		})
	}
	wg.Wait()
	cancel()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	out := make([]taken, len(r.checks))
	for i, cs := range r.checks {
		a, c := &answers[i], cs.check
		switch {
		case a.cut:
		case cs.cmp == nil:
			a.j = c.Judge(policy.SeriesOf(a.vec), cs.baseline, a.err)
		case c.HasThresholds():
			var jc policy.Judgement
			jc, a.cr = judgeCompare(c, a.sides, a.cmpErr)
			a.j = policy.Combine(c.Judge(policy.SeriesOf(a.vec), cs.baseline, a.err), jc)
		default:
			a.j, a.cr = judgeCompare(c, a.sides, a.cmpErr)
		}
		out[i] = a.taken
	}
	return out, nil
}

// judgeSlots bounds how many comparisons are judged at once to the
// cores: judging is arithmetic, and its working memory (ranks, the
// pairwise differences' candidates: tens of KB at a window's end) is
// held only while it runs. Hundreds of runs measuring at once would
// otherwise each hold theirs while sharing the same cores.
var judgeSlots = make(chan struct{}, runtime.GOMAXPROCS(0))

// judgeCompare is c.JudgeCompare in one of judgeSlots.
func judgeCompare(c *policy.Check, in policy.Sides, err error) (policy.Judgement, *policy.Comparison) {
	judgeSlots <- struct{}{}
	defer func() { <-judgeSlots }()
	return c.JudgeCompare(in, err)
}

// count counts check i's measurement m at ts in its tally and returns the
// record it makes: message and detail.
func (r *Run) count(i int, m taken, ts time.Time) (string, audit.MeasurementDetail) {
	cs := r.checks[i]
	c, j := cs.check, m.j
	r.mu.Lock()
	cs.tally.Add(j.Outcome)
	tally := cs.tally
	if j.Outcome == policy.Pass || j.Outcome == policy.Fail {
		cs.judged = string(j.Outcome)
	}
	cs.last = &MeasurementStatus{
		Check: c.Name, Time: ts, Value: jsonFloat(j.Value), Outcome: string(j.Outcome),
		Threshold: j.Threshold, Reason: j.Reason, DryRun: c.DryRun,
	}
	r.mu.Unlock()
	md := measurementDetail(cs, j, tally, m.vec, ts, m.baseAt)
	md.Comparison = comparisonDetail(cs, m.cr, m.sides)
	if v := r.verify; v != nil {
		md.Verification = &audit.VerificationRef{RequestID: v.RequestID, RolledBackAt: r.Start.UTC()}
		return v.describe(c, j), md
	}
	if md.Comparison != nil && j.Outcome == policy.Pass && m.cr.Look < m.cr.Looks {
		// The chart's samples ride on the looks people read: a
		// failure, a doubt, the last look. A passing look on the way
		// keeps its numbers and leaves them out: 10,000 runs write a
		// record every interval.
		md.Comparison.After.Samples, md.Comparison.Before.Samples = nil, nil
	}
	return c.Describe(j, tally), md
}

// measure takes one measurement of every check at ts (take), counts it in
// the check's tally and records it in the audit; nextMove judges the
// tallies. cut says a measurement was cut by the run's deadline.
func (w *Watcher) measure(ctx context.Context, r *Run, ts time.Time, budget, timeout time.Duration) (cut bool, err error) {
	ms, err := r.take(ctx, w.querier, w.steps, ts, budget, timeout)
	if err != nil {
		return false, err
	}
	for i, m := range ms {
		c := r.checks[i].check
		if m.noBaseline != nil {
			w.logger.Debug("baseline unavailable", "run", r.ID, "check", c.Name, "at", m.baseAt, "err", m.noBaseline)
		}
		if m.cut {
			w.logger.Debug("measurement skipped: the run's catch-up deadline cut its query", "run", r.ID, "check", c.Name, "eval_time", ts, "budget", budget)
			cut = true
			continue
		}
		msg, md := r.count(i, m, ts)
		w.metrics.measurements.WithLabelValues(string(m.j.Outcome)).Inc()
		// A record that cannot be written must not hide a failure: the
		// verdict still counts it (fail safe, not fail open).
		msgID := fmt.Sprintf("%s.m%d.%d", r.ID, i, ts.UnixMilli())
		if rerr := w.recordID(ctx, r, msgID, audit.Measurement, msg, md.Map()); rerr != nil && err == nil {
			err = rerr
		}
	}
	return cut, err
}

// measurementDetail is what a measurement record carries: enough numbers to
// explain the verdict without re-running the query. baseAt is when the
// baseline was evaluated, for a check that has one.
func measurementDetail(cs *checkState, j policy.Judgement, t policy.Tally, vec model.Vector, ts, baseAt time.Time) audit.MeasurementDetail {
	c := cs.check
	values := make([]float64, len(vec))
	for i, s := range vec {
		values[i] = float64(s.Value)
	}
	d := audit.MeasurementDetail{
		Check: c.Name, Query: cs.query, EvalTime: ts.UTC(),
		Value: jsonFloat(j.Value), Values: jsonFloats(values),
		Threshold:  j.Threshold,
		Thresholds: audit.Thresholds{Min: c.Min, Max: c.Max, MinRatio: c.MinRatio, MaxRatio: c.MaxRatio},
		Outcome:    string(j.Outcome), Reason: j.Reason,
		Limits: limitsOf(c), Counts: countsOf(t),
		State: string(c.State(t)), FailureLimit: c.FailureLimit,
		DryRun: c.DryRun, Aggregate: c.Aggregate,
	}
	if c.Baseline != nil {
		d.Baseline, d.Ratio = audit.Some(jsonFloat(j.Baseline)), audit.Some(jsonFloat(j.Ratio))
		d.BaselineTime = baseAt.UTC()
	}
	if c.Each {
		d.Series = make([]audit.SeriesDetail, len(j.Series))
		for i, sj := range j.Series {
			s := audit.SeriesDetail{Labels: sj.Labels, Value: jsonFloat(sj.Value), Outcome: string(sj.Outcome), Reason: sj.Reason}
			if c.Baseline != nil {
				s.Baseline, s.Ratio = audit.Some(jsonFloat(sj.Baseline)), audit.Some(jsonFloat(sj.Ratio))
			}
			d.Series[i] = s
		}
	}
	return d
}

// baselineTime is when a check's baseline is evaluated for a measurement at
// ts: the deploy's time, or ts minus the offset.
func (cs *checkState) baselineTime(r *Run, ts time.Time) time.Time {
	if cs.check.Baseline.Kind == policy.BaselinePreDeploy {
		return r.deployTime()
	}
	return ts.Add(-time.Duration(cs.check.Baseline.Offset))
}

// fetchBaseline evaluates a check's query at the baseline time. A failure
// (or no data) leaves it unset: this measurement is inconclusive ("no
// baseline") and a pre-deploy baseline is tried again at the next one.
func fetchBaseline(ctx context.Context, q Querier, query string, at time.Time) ([]policy.Series, error) {
	vec, err := q.Query(ctx, query, at)
	if err != nil {
		return nil, err
	}
	if len(vec) == 0 {
		return nil, errors.New("no data")
	}
	return policy.SeriesOf(vec), nil
}

// jsonFloat turns NaN and Inf, which JSON cannot carry, into null.
func jsonFloat(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

func jsonFloats(vs []float64) []*float64 {
	out := make([]*float64, len(vs))
	for i, v := range vs {
		out[i] = jsonFloat(v)
	}
	return out
}
