package watch

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

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

	cancel       context.CancelFunc // stops the run's loop
	supersededBy *events.Deploy     // set when a newer deploy stopped it
	warmed       []string           // hosts whose connections the run keeps open

	// Scheduling (schedule.go), guarded by the scheduler's mutex.
	at     time.Time // when the next step is due
	slot   int       // index in the queue
	queued bool
	ending bool // the next step closes the window

	ctx context.Context // ends when the run is superseded or the watcher stops

	// Durable state (store.go), guarded by mu.
	seq     uint64    // DEPLOYS stream sequence of the event
	owner   string    // replica measuring the run
	rev     uint64    // revision of the run's key this process last wrote
	next    time.Time // when the next measurement is due
	kind    string    // audit kind of the verdict
	detail  map[string]any
	request *events.RollbackRequest // the rollback a decided run asks for
}

type checkState struct {
	check    *policy.Check
	query    string
	tally    policy.Tally
	baseline []policy.Series
	last     *MeasurementStatus
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
		q, err := c.RenderQuery(r.data)
		if err != nil {
			return nil, fmt.Errorf("check %q: %w", c.Name, err)
		}
		r.checks = append(r.checks, &checkState{check: c, query: q})
	}
	return r, nil
}

// deployTime is when the deploy happened, for pre_deploy baselines: the
// event's time when it is plausible, else its arrival.
func (r *Run) deployTime() time.Time {
	if t := r.Deploy.Time; !t.IsZero() && !t.After(r.Start) {
		return t
	}
	return r.Start
}

// schedule lists when measurements happen: from initial_delay after the
// start, on the interval's grid (alignUp: runs share their queries), then
// every interval, until the window closes.
func (r *Run) schedule() (first time.Time, interval time.Duration, end time.Time) {
	interval = time.Duration(r.Policy.Interval)
	end = r.Start.Add(time.Duration(r.Policy.Window))
	first = alignUp(r.Start.Add(time.Duration(r.Policy.InitialDelay)), interval)
	if first.After(end) {
		// A delay as long as the window still gets its one measurement,
		// at the window's end.
		first = r.Start.Add(time.Duration(r.Policy.InitialDelay))
	}
	return first, interval, end
}

// Querier runs an instant query; *metrics.Client is one.
type Querier interface {
	Query(ctx context.Context, query string, ts time.Time) (model.Vector, error)
}

// measure takes one measurement of every check at ts and records each in
// the audit. It returns the checks (dry-run ones aside) that went past their
// failure limit, and those that went past an inconclusive or error limit.
//
// The checks' queries run at once, all within budget (the query timeout,
// or less when the run is near its deadline): one slow check must not
// leave the others no time, nor make the step take a timeout per check.
// A query cut short by a budget below the timeout did not fail, the run ran
// out of time: that check's measurement is not taken (neither recorded nor
// counted), and cut says so.
func (w *Watcher) measure(ctx context.Context, r *Run, ts time.Time, budget, timeout time.Duration) (failed, blind []*checkState, cut bool, err error) {
	type answer struct {
		vec    model.Vector
		err    error
		baseAt time.Time
		cut    bool
	}
	answers := make([]answer, len(r.checks))
	qctx, cancel := context.WithTimeout(ctx, budget)
	var wg sync.WaitGroup
	for i, cs := range r.checks {
		wg.Go(func() {
			a := &answers[i]
			if c := cs.check; c.Baseline != nil {
				a.baseAt = cs.baselineTime(r, ts)
				// A pre-deploy baseline is one moment, fetched once it has
				// data; an offset baseline moves with the measurement.
				if c.Baseline.Kind != policy.BaselinePreDeploy || cs.baseline == nil {
					cs.baseline = w.baseline(qctx, r, cs, a.baseAt)
				}
			}
			a.vec, a.err = w.querier.Query(qctx, cs.query, ts)
			if errors.Is(a.err, context.DeadlineExceeded) && ctx.Err() == nil {
				if budget < timeout {
					a.cut = true
				} else {
					a.err = fmt.Errorf("no answer within %s, the query timeout (prometheus.timeout, at most the policy's interval)", timeout.Round(time.Millisecond))
				}
			}
		})
	}
	wg.Wait()
	cancel()
	if ctx.Err() != nil {
		return nil, nil, false, ctx.Err()
	}
	for i, cs := range r.checks {
		c := cs.check
		if answers[i].cut {
			w.logger.Debug("measurement skipped: the run's catch-up deadline cut its query", "run", r.ID, "check", c.Name, "eval_time", ts, "budget", budget)
			cut = true
			continue
		}
		vec, qerr, baseAt := answers[i].vec, answers[i].err, answers[i].baseAt
		j := c.Judge(policy.SeriesOf(vec), cs.baseline, qerr)
		r.mu.Lock()
		cs.tally.Add(j.Outcome)
		tally := cs.tally
		cs.last = &MeasurementStatus{
			Check: c.Name, Time: ts, Value: jsonFloat(j.Value), Outcome: string(j.Outcome),
			Threshold: j.Threshold, Reason: j.Reason, DryRun: c.DryRun,
		}
		r.mu.Unlock()
		w.metrics.measurements.WithLabelValues(string(j.Outcome)).Inc()
		detail := measurementDetail(cs, j, tally, vec, ts)
		if c.Baseline != nil {
			detail["baseline_time"] = baseAt.UTC()
		}
		// A record that cannot be written must not hide a failure: the
		// verdict still counts it (fail safe, not fail open).
		msgID := fmt.Sprintf("%s.m%d.%d", r.ID, i, ts.UnixMilli())
		if rerr := w.recordID(ctx, r, msgID, audit.Measurement, c.Describe(j, tally), detail); rerr != nil && err == nil {
			err = rerr
		}
		if c.DryRun {
			continue
		}
		switch c.State(tally) {
		case policy.CheckFailed:
			failed = append(failed, cs)
		case policy.CheckInconclusive:
			blind = append(blind, cs)
		}
	}
	return failed, blind, cut, err
}

// measurementDetail is what a measurement record carries: enough numbers to
// explain the verdict without re-running the query.
func measurementDetail(cs *checkState, j policy.Judgement, t policy.Tally, vec model.Vector, ts time.Time) map[string]any {
	c := cs.check
	values := make([]float64, len(vec))
	for i, s := range vec {
		values[i] = float64(s.Value)
	}
	d := map[string]any{
		"check":     c.Name,
		"query":     cs.query,
		"eval_time": ts.UTC(),
		"value":     jsonFloat(j.Value),
		"values":    jsonFloats(values),
		"threshold": j.Threshold,
		"outcome":   string(j.Outcome),
		"reason":    j.Reason,
		"limits":    c.Limits(),
		"counts": map[string]int{"pass": t.Pass, "fail": t.Fail, "inconclusive": t.Inconclusive,
			"error": t.Error, "consecutive_errors": t.ConsecutiveErrors},
		"state":         string(c.State(t)),
		"failure_limit": c.FailureLimit,
	}
	if c.DryRun {
		d["dry_run"] = true
	}
	if c.Aggregate != "" {
		d["aggregate"] = c.Aggregate
	}
	if c.Baseline != nil {
		d["baseline"] = jsonFloat(j.Baseline)
		d["ratio"] = jsonFloat(j.Ratio)
	}
	if c.Each {
		series := make([]map[string]any, len(j.Series))
		for i, sj := range j.Series {
			series[i] = map[string]any{"labels": sj.Labels, "value": jsonFloat(sj.Value), "outcome": string(sj.Outcome), "reason": sj.Reason}
			if c.Baseline != nil {
				series[i]["baseline"] = jsonFloat(sj.Baseline)
				series[i]["ratio"] = jsonFloat(sj.Ratio)
			}
		}
		d["series"] = series
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

// baseline evaluates a check's query at the baseline time. A failure leaves
// it unset: this measurement is inconclusive ("no baseline") and a
// pre-deploy baseline is tried again at the next one.
func (w *Watcher) baseline(ctx context.Context, r *Run, cs *checkState, at time.Time) []policy.Series {
	vec, err := w.querier.Query(ctx, cs.query, at)
	if err != nil || len(vec) == 0 {
		w.logger.Debug("baseline unavailable", "run", r.ID, "check", cs.check.Name, "at", at, "series", len(vec), "err", err)
		return nil
	}
	return policy.SeriesOf(vec)
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

// failReason names the checks that decided a failed run, with their numbers.
func failReason(failed []*checkState) string {
	var parts []string
	for _, cs := range failed {
		s := fmt.Sprintf("check %s failed", cs.check.Name)
		if cs.last != nil && cs.last.Reason != "" {
			s += ": " + cs.last.Reason
		}
		s += fmt.Sprintf(" (failure %d of limit %d)", cs.tally.Fail, cs.check.FailureLimit)
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// blindReason says why checks are inconclusive, with the counts that decided.
func blindReason(blind []*checkState) string {
	var parts []string
	for _, cs := range blind {
		c, t := cs.check, cs.tally
		var why string
		switch {
		case c.ConsecutiveErrorLimit != nil && t.ConsecutiveErrors > *c.ConsecutiveErrorLimit:
			why = fmt.Sprintf("%d query errors in a row, limit %d", t.ConsecutiveErrors, *c.ConsecutiveErrorLimit)
		case c.InconclusiveLimit != nil && t.Inconclusive > *c.InconclusiveLimit:
			why = fmt.Sprintf("inconclusive %d of limit %d", t.Inconclusive, *c.InconclusiveLimit)
		default:
			why = fmt.Sprintf("no usable measurement (inconclusive %d, error %d)", t.Inconclusive, t.Error)
		}
		if cs.last != nil && cs.last.Reason != "" {
			why += "; last: " + cs.last.Reason
		}
		parts = append(parts, fmt.Sprintf("check %s is inconclusive: %s", c.Name, why))
	}
	return strings.Join(parts, "; ")
}

// pastErrorLimit reports whether one of the checks has had more query
// errors in a row than its consecutive_error_limit tolerates.
func pastErrorLimit(css []*checkState) bool {
	for _, cs := range css {
		if l := cs.check.ConsecutiveErrorLimit; l != nil && cs.tally.ConsecutiveErrors > *l {
			return true
		}
	}
	return false
}

// endVerdict decides a run whose window closed without a failure. A check
// that never got a usable value, or went past an inconclusive or error
// limit, makes the run inconclusive: no data is never silently healthy.
// Dry-run checks are measured and recorded, and never decide.
func endVerdict(r *Run) (verdict, reason string, blind []*checkState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, cs := range r.checks {
		if !cs.check.DryRun && cs.check.EndState(cs.tally) != policy.CheckOK {
			blind = append(blind, cs)
		}
	}
	if len(blind) > 0 {
		return VerdictInconclusive, blindReason(blind), blind
	}
	var parts []string
	for _, cs := range r.checks {
		p := fmt.Sprintf("%s pass %d fail %d", cs.check.Name, cs.tally.Pass, cs.tally.Fail)
		if n := cs.tally.Inconclusive + cs.tally.Error; n > 0 {
			p += fmt.Sprintf(" inconclusive %d error %d", cs.tally.Inconclusive, cs.tally.Error)
		}
		if cs.check.DryRun {
			p += " (dry-run)"
		}
		parts = append(parts, p)
	}
	return VerdictPassed, "window closed healthy: " + strings.Join(parts, ", "), nil
}

// skipped is what a run decided out of time could not measure.
type skipped struct {
	n    int       // measurements not taken
	from time.Time // the first of them
	why  string    // why they could not be taken
}

// closeVerdict decides a run whose window has closed, or that is out of
// time with s.n measurements not taken: endVerdict, and a reason and
// detail that say what was skipped.
func closeVerdict(r *Run, s skipped) (verdict, reason string, blind []*checkState, detail map[string]any) {
	verdict, reason, blind = endVerdict(r)
	if s.n == 0 {
		return verdict, reason, blind, nil
	}
	what := fmt.Sprintf("%d measurements from %s skipped: %s", s.n, s.from.UTC().Format(time.RFC3339Nano), s.why)
	detail = map[string]any{"skipped_measurements": s.n}
	if verdict != VerdictPassed {
		return verdict, reason + "; " + what, blind, detail
	}
	// What was measured was healthy, but the rest of the window was not
	// seen: a deploy that went bad while its watcher was down (or its
	// Prometheus too slow) must not pass on the data from before. The
	// run is inconclusive, and on_inconclusive applies.
	r.mu.Lock()
	for _, cs := range r.checks {
		if !cs.check.DryRun {
			blind = append(blind, cs)
		}
	}
	r.mu.Unlock()
	return VerdictInconclusive, "not passed: " + what + "; " + strings.Replace(reason, "window closed healthy: ", "what was measured is within the checks' limits: ", 1), blind, detail
}
