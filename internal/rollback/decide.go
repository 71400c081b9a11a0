package rollback

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

// decide applies a person's decision on a held request (`watcher cancel`,
// `watcher approve`, or the HTTP endpoints), which arrived on the
// request's own subject: a decision that comes too late, names no held
// request, or names one of another service is refused with an
// event.rejected record. An approval sends the request again, so that it
// executes now rather than at its execute_at.
func (e *Executor) decide(ctx context.Context, msg jetstream.Msg, d events.RollbackDecision) {
	retry := func(err error) {
		e.logger.Error("rollback decision not applied; will retry", "request", d.RequestID, "decision", d.ID, "err", err)
		_ = msg.NakWithDelay(2 * time.Second)
	}
	tr, err := e.track(ctx, d.RequestID)
	if err != nil {
		retry(err)
		return
	}
	for range 3 {
		if why := refusal(tr, d); why != "" {
			if err := e.refuse(ctx, msg.Subject(), d, why); err != nil {
				retry(err)
				return
			}
			_ = msg.Ack()
			return
		}
		h := tr.hold()
		if h.Decision == nil || h.Decision.ID != d.ID {
			state, result := rollbackreq.HoldCancelled, holdCancelled
			if d.Action == events.ActionApprove {
				state, result = rollbackreq.HoldApproved, holdApproved
			}
			decision := d
			err := e.moveHold(ctx, tr, rollbackreq.HoldHeld, func(h *rollbackreq.Hold) {
				h.State, h.Decision, h.Recorded = state, &decision, false
			})
			if errors.Is(err, errMoved) {
				continue // judged again, as it now stands
			}
			if err != nil {
				retry(err)
				return
			}
			e.holds.WithLabelValues(result).Inc()
		}
		// Applied, now or by an earlier delivery of this message: finish.
		if err := e.recordDecision(ctx, tr); err != nil {
			retry(err)
			return
		}
		if d.Action == events.ActionApprove {
			if err := rollbackreq.Resend(ctx, e.JS, tr.hold().Request, "approved"); err != nil {
				// The request still executes at its execute_at, which
				// finds it approved.
				e.logger.Warn("approved rollback request not sent again; it executes at its execute_at", "request", d.RequestID, "err", err)
			}
		}
		_ = msg.Ack()
		return
	}
	retry(fmt.Errorf("the hold of rollback request %s kept moving", d.RequestID))
}

// refusal says why decision d cannot apply to the request tr tracks, ""
// when it can (or did: a decision delivered again).
func refusal(tr *tracker, d events.RollbackDecision) string {
	h := tr.hold()
	switch {
	case h == nil && tr.has(stepDone):
		return fmt.Sprintf("it was not held, and executed already (%s)", tr.prog.Result)
	case h == nil && len(tr.prog.Steps) > 0:
		return "it was not held, and is executing"
	case h == nil:
		return "no such request is held (an unknown id, or one not taken up yet)"
	case h.Request.Service != d.Service || h.Request.Environment != d.Environment:
		// Said without naming them: the sender may publish only here.
		return fmt.Sprintf("it is not a request of %s in %s, whose subject this decision came on", d.Service, d.Environment)
	case h.Decision != nil && h.Decision.ID == d.ID:
		return ""
	case h.State != rollbackreq.HoldHeld:
		return "it was " + h.Describe()
	}
	return ""
}

// refuse records a decision that cannot apply.
func (e *Executor) refuse(ctx context.Context, subject string, d events.RollbackDecision, why string) error {
	rec := audit.Record{
		Kind: audit.EventRejected, RequestID: d.RequestID, Service: d.Service, Environment: d.Environment,
		Message: fmt.Sprintf("%s of rollback request %s by %s (%s) refused: %s", d.Action, d.RequestID, d.By, d.Via, why),
		Detail:  audit.EventRejectedDetail{Subject: subject, Field: "request_id"}.Map(),
		MsgID:   d.ID + ".refused",
	}
	if err := e.Audit.Record(ctx, rec); err != nil {
		return err
	}
	e.holds.WithLabelValues(holdRefused).Inc()
	e.logger.Warn("rollback decision refused", "request", d.RequestID, "action", d.Action, "by", d.By, "why", why)
	return nil
}
