package watch

import (
	"context"
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
	checks  []*checkState
	data    policy.TemplateData
	mu      sync.Mutex
	verdict string
	reason  string
	ended   time.Time

	cancel       context.CancelFunc // stops the run's loop
	supersededBy *events.Deploy     // set when a newer deploy stopped it
}

type checkState struct {
	check    *policy.Check
	query    string
	tally    policy.Tally
	baseline []policy.Series
	last     *MeasurementStatus
}

func newRun(id string, d events.Deploy, p *policy.Policy, start time.Time) (*Run, error) {
	r := &Run{ID: id, Deploy: d, Policy: p, Start: start, verdict: VerdictPending}
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

// schedule lists when measurements happen: initial_delay after the start,
// then every interval, until the window closes.
func (r *Run) schedule() (first time.Time, interval time.Duration, end time.Time) {
	return r.Start.Add(time.Duration(r.Policy.InitialDelay)),
		time.Duration(r.Policy.Interval),
		r.Start.Add(time.Duration(r.Policy.Window))
}

// Querier runs an instant query; *metrics.Client is one.
type Querier interface {
	Query(ctx context.Context, query string, ts time.Time) (model.Vector, error)
}

// measure takes one measurement of every check at ts, records each in the
// audit, and returns the checks that went past their failure limit.
func (w *Watcher) measure(ctx context.Context, r *Run, ts time.Time) ([]*checkState, error) {
	var failed []*checkState
	var recErr error
	for _, cs := range r.checks {
		c := cs.check
		if c.Baseline != nil && cs.baseline == nil {
			cs.baseline = w.baseline(ctx, r, cs, ts)
		}
		vec, qerr := w.Querier.Query(ctx, cs.query, ts)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		series := toSeries(vec)
		values := make([]float64, len(vec))
		for i, s := range vec {
			values[i] = float64(s.Value)
		}
		j := c.Judge(series, cs.baseline, qerr)
		r.mu.Lock()
		cs.tally.Add(j.Outcome)
		tally := cs.tally
		cs.last = &MeasurementStatus{
			Check: c.Name, Time: ts, Value: jsonFloat(j.Value), Outcome: string(j.Outcome),
			Threshold: j.Threshold, Reason: j.Reason,
		}
		r.mu.Unlock()
		w.metrics.measurements.WithLabelValues(string(j.Outcome)).Inc()
		detail := map[string]any{
			"check":         c.Name,
			"query":         cs.query,
			"eval_time":     ts.UTC(),
			"value":         jsonFloat(j.Value),
			"values":        jsonFloats(values),
			"threshold":     j.Threshold,
			"outcome":       string(j.Outcome),
			"reason":        j.Reason,
			"failure_limit": c.FailureLimit,
			"counts":        map[string]int{"pass": tally.Pass, "fail": tally.Fail, "inconclusive": tally.Inconclusive, "error": tally.Error},
		}
		if c.Baseline != nil {
			detail["baseline"] = jsonFloat(j.Baseline)
			detail["ratio"] = jsonFloat(j.Ratio)
		}
		// A record that cannot be written must not hide a failure: the
		// verdict still counts it (fail safe, not fail open).
		if err := w.record(ctx, r, audit.Measurement, c.Describe(j, tally), detail); err != nil && recErr == nil {
			recErr = err
		}
		if c.Failed(tally) {
			failed = append(failed, cs)
		}
	}
	return failed, recErr
}

// baseline evaluates a check's query before the deploy. A failure leaves it
// unset, so the next measurement tries again and this one is inconclusive.
func (w *Watcher) baseline(ctx context.Context, r *Run, cs *checkState, now time.Time) []policy.Series {
	at := r.deployTime()
	if cs.check.Baseline.Kind != policy.BaselinePreDeploy {
		at = now.Add(-time.Duration(cs.check.Baseline.Offset))
	}
	vec, err := w.Querier.Query(ctx, cs.query, at)
	if err != nil || len(vec) == 0 {
		w.logger.Debug("baseline unavailable", "run", r.ID, "check", cs.check.Name, "series", len(vec), "err", err)
		return nil
	}
	return toSeries(vec)
}

// toSeries turns a query's result into what policy.Check.Judge takes.
func toSeries(vec model.Vector) []policy.Series {
	out := make([]policy.Series, len(vec))
	for i, s := range vec {
		out[i] = policy.Series{Labels: s.Metric.String(), Value: float64(s.Value)}
	}
	return out
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

// endVerdict decides a run whose window closed without a failure: a check
// that never got a usable value (pass or fail) makes the run inconclusive,
// because no data is never silently healthy.
func endVerdict(r *Run) (string, string) {
	var blind []string
	for _, cs := range r.checks {
		if cs.tally.Pass+cs.tally.Fail == 0 {
			blind = append(blind, fmt.Sprintf("%s (inconclusive %d, error %d)", cs.check.Name, cs.tally.Inconclusive, cs.tally.Error))
		}
	}
	if len(blind) > 0 {
		return VerdictInconclusive, "no usable measurement for " + strings.Join(blind, ", ")
	}
	var parts []string
	for _, cs := range r.checks {
		parts = append(parts, fmt.Sprintf("%s pass %d fail %d", cs.check.Name, cs.tally.Pass, cs.tally.Fail))
	}
	return VerdictPassed, "window closed healthy: " + strings.Join(parts, ", ")
}
