package watch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// Replayed is what a run of a past deploy would have decided, replayed
// over Prometheus's history by Replay.
type Replayed struct {
	Verdict string // VerdictPassed, VerdictFailed, VerdictInconclusive or VerdictMarginal
	Record  string // the verdict record's kind
	Reason  string
	// Rollback says the verdict would have requested a rollback.
	Rollback bool
	// Check is the check that decided a failed, inconclusive or marginal
	// run (the first, if several did); empty for a passed one.
	Check string
	// Decided is when the run would have been decided: a failure at the
	// measurement that failed it, any other verdict at the window's end.
	Decided time.Time
	// Measurements are the run's measurements in order, as the audit
	// would have recorded them.
	Measurements []ReplayedMeasurement
}

// ReplayedMeasurement is one measurement of a replayed run.
type ReplayedMeasurement struct {
	Check   string
	Time    time.Time
	Outcome string
	Message string
	Detail  audit.MeasurementDetail
}

// ErrWindowOpen is Replay's answer for a deploy whose window has not
// closed yet: its later measurements would ask Prometheus about the
// future.
var ErrWindowOpen = errors.New("the validation window has not closed yet")

// Replay runs the validation of deploy d against policy p as `watcher
// run` would have, had d arrived at start: the same schedule, the same
// measurements (Run.take) and the same decisions (nextMove), each
// measurement evaluated at its own time on q, so that nothing later than
// that time is seen. The clock is the measurements': every query answers
// in time, so nothing is skipped or cut. timeout is prometheus.timeout
// (0: the policy's interval). now is the present: a window that ends
// after it is not replayed (ErrWindowOpen).
func Replay(ctx context.Context, q Querier, p *policy.Policy, d events.Deploy, start time.Time, timeout time.Duration, now time.Time) (Replayed, error) {
	r, err := newRun("replay", d, p, start)
	if err != nil {
		return Replayed{}, err
	}
	first, interval, end := r.schedule()
	if end.After(now) {
		return Replayed{}, fmt.Errorf("deploy %s: %w (it closes at %s)", d.ID, ErrWindowOpen, end.UTC().Format(time.RFC3339))
	}
	var out Replayed
	clock := first
	for {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		mv := nextMove(r.snapshot(timeout), p, clock)
		if mv.kind == moveMeasure {
			ms, err := r.take(ctx, q, nil, mv.at, mv.timeout, mv.timeout)
			if err != nil {
				return out, err
			}
			for i, m := range ms {
				msg, md := r.count(i, m, mv.at)
				out.Measurements = append(out.Measurements, ReplayedMeasurement{
					Check: r.checks[i].check.Name, Time: mv.at, Outcome: string(m.j.Outcome), Message: msg, Detail: md})
			}
			r.next = mv.at.Add(interval)
			s := r.snapshot(timeout)
			s.Measured = true
			clock = mv.at
			mv = nextMove(s, p, clock)
		}
		switch mv.kind {
		case moveWait:
			clock = mv.at
		case moveDecide:
			out.Verdict, out.Record, out.Reason, out.Rollback, out.Decided = mv.verdict, mv.record, mv.reason, mv.rollback, clock
			if len(mv.checks) > 0 {
				out.Check = p.Checks[mv.checks[0]].Name
			}
			return out, nil
		default:
			return out, fmt.Errorf("replay of deploy %s: unexpected move %s", d.ID, mv.kind)
		}
	}
}
