package watch

import (
	"context"
	"errors"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

// step takes r's next step on a scheduler worker: it asks nextMove what r
// does now and carries it out. A measurement is followed by a second
// question, whether the checks decided the run; if not, the run is stored
// and goes back to the scheduler.
//
// Measurements happen at their scheduled times and are evaluated there: a
// run resumed late (after a crash, by another replica) catches up on the
// ones it missed, from Prometheus's history, instead of restarting its
// window or skipping them.
func (w *Watcher) step(r *Run) {
	ctx := r.ctx
	// stopped ends r's step when a newer deploy superseded it (decided
	// here), or the watcher is stopping (left stored for whoever resumes
	// it).
	stopped := func() bool {
		if ctx.Err() == nil {
			return false
		}
		if w.ctx.Err() == nil {
			w.superseded(w.ctx, r)
		}
		r.cancel()
		return true
	}
	if stopped() {
		return
	}
	mv := r.nextMove(r.snapshot(w.QueryTimeout), time.Now())
	if mv.kind == moveMeasure {
		cut, err := w.measure(ctx, r, mv.at, mv.budget, mv.timeout)
		if stopped() {
			return
		}
		if err != nil {
			w.logger.Error("measurement not recorded", "run", r.ID, "err", err)
		}
		_, interval, _ := r.schedule()
		r.mu.Lock()
		r.next = mv.at.Add(interval)
		r.mu.Unlock()
		s := r.snapshot(w.QueryTimeout)
		s.Measured, s.Cut = true, cut
		mv = r.nextMove(s, time.Now())
		if mv.kind == moveWait {
			if err := w.save(ctx, r); errors.Is(err, errRunLost) {
				w.lost(r)
				r.cancel()
				return
			} else if err != nil {
				w.logger.Warn("run state not saved; a restart would repeat this measurement", "run", r.ID, "err", err)
			}
		}
	}
	switch mv.kind {
	case moveWait:
		w.sched.add(r, mv.at)
	case moveDecide:
		w.settle(ctx, r, mv)
		r.cancel()
	default:
		// moveDone: decided already, by whatever ended it first. (After a
		// measurement nextMove waits or decides: measuring again goes
		// through the scheduler.)
		r.cancel()
	}
}

// superseded ends a run stopped by a newer deploy, naming that deploy.
func (w *Watcher) superseded(ctx context.Context, r *Run) {
	s := r.snapshot(w.QueryTimeout)
	if s.SupersededBy == nil {
		return
	}
	w.settle(ctx, r, r.nextMove(s, time.Now()))
}

// nextMove is what r does next: a run's (nextMove) or a verification's
// (nextVerifyMove).
func (r *Run) nextMove(s runSnapshot, now time.Time) move {
	if r.verify != nil {
		return nextVerifyMove(s, r.Policy, now)
	}
	return nextMove(s, r.Policy, now)
}

// settle carries out a decision of nextMove: it records the verdict, with
// the details of the checks that decided it, and requests the rollback the
// verdict asks for.
func (w *Watcher) settle(ctx context.Context, r *Run, mv move) {
	if mv.kind != moveDecide {
		return
	}
	if r.verify != nil && mv.outcome != "" {
		w.settleVerify(ctx, r, mv)
		return
	}
	checks := make([]*checkState, len(mv.checks))
	for i, c := range mv.checks {
		checks[i] = r.checks[c]
	}
	detail := mv.detail
	if mv.verdict == VerdictInconclusive || mv.verdict == VerdictFailed || mv.verdict == VerdictMarginal {
		detail.Checks = checkDetails(checks)
	}
	if mv.rollback {
		w.requestRollback(ctx, r, mv.verdict, mv.record, events.ClampReason(mv.reason), detail, mv.ask)
		return
	}
	w.decide(ctx, r, decision{verdict: mv.verdict, kind: mv.record, reason: mv.reason, detail: detail.Map()})
}

// checkDetails details the checks that decided a verdict.
func checkDetails(css []*checkState) []audit.CheckDetail {
	out := make([]audit.CheckDetail, 0, len(css))
	for _, cs := range css {
		c := audit.CheckDetail{Check: cs.check.Name, Query: cs.query, Limits: limitsOf(cs.check), Counts: countsOf(cs.tally)}
		if cs.last != nil {
			c.LastMeasurement = &audit.LastMeasurement{Reason: cs.last.Reason, Value: cs.last.Value}
		}
		out = append(out, c)
	}
	return out
}

// limitsOf is what the audit says of a check's limits.
func limitsOf(c *policy.Check) audit.Limits {
	return audit.Limits{FailureLimit: c.FailureLimit, InconclusiveLimit: c.InconclusiveLimit, ConsecutiveErrorLimit: c.ConsecutiveErrorLimit}
}

// countsOf is what the audit says of a check's tally.
func countsOf(t policy.Tally) audit.Counts {
	return audit.Counts{Pass: t.Pass, Fail: t.Fail, Inconclusive: t.Inconclusive, Error: t.Error, ConsecutiveErrors: t.ConsecutiveErrors}
}

// decision is a verdict as decide stores it.
type decision struct {
	verdict, kind, reason string
	detail                map[string]any
	request               *events.RollbackRequest // the rollback it asks for
	// verify names the checks a rollback's verification measures again.
	verify []string
}

// decide stores r's verdict (and the rollback it asks for, if any), then
// concludes it. The verdict is stored first so that a process dying
// half-way leaves a decided run, which whoever resumes it concludes
// instead of judging again. It reports whether this call decided r.
func (w *Watcher) decide(ctx context.Context, r *Run, d decision) bool {
	r.mu.Lock()
	if r.verdict != VerdictPending {
		r.mu.Unlock()
		return false
	}
	r.verdict, r.reason, r.kind, r.detail, r.request, r.ended = d.verdict, d.reason, d.kind, d.detail, d.request, time.Now().UTC()
	r.verifyChecks = d.verify
	r.mu.Unlock()
	switch err := w.save(ctx, r); {
	case errors.Is(err, errRunLost):
		w.lost(r)
		return false
	case err != nil:
		// Deciding matters more than storing the decision: a rollback
		// must not wait for NATS to come back. A replica that resumes
		// the stored run later decides it again, from the same
		// measurements, and the message ids keep the records single.
		w.logger.Warn("verdict not stored before concluding", "run", r.ID, "err", err)
	}
	w.conclude(ctx, r)
	return true
}

// conclude records a decided run's verdict, publishes its rollback
// request, and removes its stored state. Each step is idempotent (message
// ids), so a resumed run concludes again without doubling anything.
func (w *Watcher) conclude(ctx context.Context, r *Run) {
	r.mu.Lock()
	verdict, kind, reason, detail, req, ended := r.verdict, r.kind, r.reason, r.detail, r.request, r.ended
	r.mu.Unlock()
	if err := w.recordID(ctx, r, r.ID+".verdict", kind, reason, detail); err != nil {
		w.logger.Error("verdict not recorded", "run", r.ID, "verdict", verdict, "err", err)
	}
	if r.verify != nil {
		w.concludeVerify(ctx, r, verdict, reason)
		return
	}
	if req != nil {
		// What to verify is stored before the request goes out: the
		// rollback may complete before this returns.
		w.awaitRollback(ctx, r, *req)
		if err := rollbackreq.Publish(ctx, w.JS, *req); err != nil {
			w.logger.Error("rollback request not published", "run", r.ID, "err", err)
		}
	}
	if err := w.claimDone(ctx, r); err != nil {
		// Keep the stored state: a redelivered event must find the run.
		w.logger.Warn("deploy id not marked decided; keeping the run's state", "run", r.ID, "err", err)
	} else {
		w.drop(ctx, r)
	}
	w.metrics.ended(r, verdict, ended)
	w.logger.Info("run ended", "run", r.ID, "service", r.Deploy.Service, "environment", r.Deploy.Environment,
		"version", r.Deploy.Version, "verdict", verdict, "reason", reason)
	w.mu.Lock()
	w.removeActiveLocked(r)
	w.recent = append(w.recent, r)
	if len(w.recent) > w.Recent {
		w.recent = w.recent[len(w.recent)-w.Recent:]
	}
	w.mu.Unlock()
	w.cool(r, req != nil)
}

// lost forgets a run another replica took over: it is theirs to measure
// and decide.
func (w *Watcher) lost(r *Run) {
	w.logger.Warn("run taken over by another replica; stopping here", "run", r.ID)
	w.mu.Lock()
	w.removeActiveLocked(r)
	w.mu.Unlock()
	w.cool(r, false)
}
