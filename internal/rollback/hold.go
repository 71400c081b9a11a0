package rollback

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

// Holds: a request whose policy sets rollback.hold, mode: ask, or that
// asks itself (on_marginal: ask), or an automatic one within the service's
// cooldown, is announced (rollback.held) and executed later, or never
// (README "Notifications, holds and verification"). Where a hold stands
// lives in RequestsBucket, so that the countdown survives the process:
// the request's message is sent back to the consumer (NakWithDelay) until
// its execute_at, to whichever replica takes it then, and each move of the
// hold is a compare-and-set there.

// Results of watcher_rollback_holds_total.
const (
	holdHeld             = "held"
	holdApproved         = "approved"
	holdCancelled        = "cancelled"
	holdDeadlineKeep     = "deadline_keep"
	holdDeadlineRollback = "deadline_rollback"
	holdExecuted         = "executed"
	holdRefused          = "refused"
)

// gateAction is what handle does with a request once its gate said.
type gateAction int

const (
	gateGo    gateAction = iota // execute it now
	gateWait                    // not yet: deliver it again after the wait
	gateDrop                    // nothing to do: cancelled, or another message executes it
	gateRetry                   // NATS failed us: try again shortly
)

// errMoved says that a hold was not where a change expected it: another
// writer (a decision, the deadline on another replica) moved it first.
var errMoved = errors.New("hold moved on")

// gate decides whether req, delivered as the message at stream sequence
// seq, executes now. It is called with the service's lock held, so that a
// cooldown is judged after any rollback of the service in progress here.
func (e *Executor) gate(ctx context.Context, req events.RollbackRequest, tr *tracker, seq uint64) (gateAction, time.Duration, error) {
	if tr == nil {
		return gateGo, 0, nil
	}
	if tr.hold() == nil {
		p := e.policyFor(req)
		if p == nil || e.DryRun || p.Rollback.Mode == policy.ModePublish {
			// Recorded as not executed, or failed, at once: nothing to hold.
			return gateGo, 0, nil
		}
		now := time.Now().UTC()
		h, err := e.newHold(ctx, req, p, now)
		if err == nil && h == nil {
			// Executing now: unless another replica's automatic
			// rollback of the service got there first.
			var earlier *rollbackreq.Earlier
			if earlier, err = e.claimCooldown(ctx, req, p, now); err == nil && earlier == nil {
				return gateGo, 0, nil
			}
			if earlier != nil {
				h = &rollbackreq.Hold{State: rollbackreq.HoldHeld, Wait: time.Duration(p.Rollback.Hold), Request: req, Round: 1}
				coolDown(h, earlier, p, now)
			}
		}
		if err != nil {
			return gateRetry, 0, err
		}
		if err := e.indexHold(ctx, req.ID); err != nil {
			return gateRetry, 0, err
		}
		err = tr.update(ctx, func(pr *rollbackreq.Progress) error {
			if pr.Hold != nil || pr.Has(stepDone) {
				return errMoved // another copy of the request got there first
			}
			pr.Hold = h
			return nil
		})
		switch {
		case err == nil:
			e.holds.WithLabelValues(holdHeld).Inc()
		case !errors.Is(err, errMoved):
			return gateRetry, 0, err
		case tr.has(stepDone):
			return gateDrop, 0, nil
		}
	}
	// Each pass moves the hold one step at most; a few passes take it
	// from due to executing (or cancelled).
	for range 6 {
		h := tr.hold()
		now := time.Now().UTC()
		switch h.State {
		case rollbackreq.HoldCancelled:
			if err := e.recordDecision(ctx, tr); err != nil {
				return gateRetry, 0, err
			}
			return gateDrop, 0, nil
		case rollbackreq.HoldExecuting:
			if h.Owner == seq {
				return gateGo, 0, nil // the executing message, delivered again after a crash
			}
			return gateDrop, 0, nil
		case rollbackreq.HoldApproved:
			if err := e.recordDecision(ctx, tr); err != nil {
				return gateRetry, 0, err
			}
			if err := e.moveHold(ctx, tr, rollbackreq.HoldApproved, func(h *rollbackreq.Hold) {
				h.State, h.Owner = rollbackreq.HoldExecuting, seq
			}); err != nil && !errors.Is(err, errMoved) {
				return gateRetry, 0, err
			}
		case rollbackreq.HoldHeld:
			if !h.Announced {
				if err := e.announce(ctx, tr); err != nil {
					return gateRetry, 0, err
				}
				continue
			}
			if now.Before(h.ExecuteAt) {
				return gateWait, h.ExecuteAt.Sub(now), nil
			}
			if err := e.due(ctx, tr, seq, now); err != nil && !errors.Is(err, errMoved) {
				return gateRetry, 0, err
			}
		default:
			return gateRetry, 0, fmt.Errorf("rollback request %s has a hold in an unknown state %q", req.ID, h.State)
		}
	}
	return gateRetry, 0, fmt.Errorf("the hold of rollback request %s kept moving", req.ID)
}

// newHold is how req is held under policy p, nil when it is not.
func (e *Executor) newHold(ctx context.Context, req events.RollbackRequest, p *policy.Policy, now time.Time) (*rollbackreq.Hold, error) {
	wait := time.Duration(p.Rollback.Hold)
	h := &rollbackreq.Hold{State: rollbackreq.HoldHeld, Since: now, Wait: wait, Request: req, Round: 1}
	earlier, err := e.cooldownOf(ctx, req, p, now)
	if err != nil {
		return nil, err
	}
	switch {
	case earlier != nil:
		coolDown(h, earlier, p, now)
	case p.Rollback.Mode == policy.ModeAsk || req.Ask:
		h.Why, h.Ask, h.AskDefault, h.ExecuteAt = rollbackreq.WhyAsk, true, p.Rollback.AskDefault, now.Add(wait)
		if h.AskDefault == "" {
			h.AskDefault = policy.AskKeep
		}
	case wait > 0:
		h.Why, h.ExecuteAt = rollbackreq.WhyHold, now.Add(wait)
	default:
		return nil, nil
	}
	return h, nil
}

// coolDown makes h a cooldown hold: left to a person, who has the cooldown
// (or the hold, when longer) to approve it, after which it is kept.
func coolDown(h *rollbackreq.Hold, earlier *rollbackreq.Earlier, p *policy.Policy, now time.Time) {
	h.Why, h.Ask, h.AskDefault, h.Earlier = rollbackreq.WhyCooldown, true, policy.AskKeep, earlier
	h.Since, h.ExecuteAt = now, now.Add(max(time.Duration(p.Rollback.Hold), time.Duration(p.Rollback.Cooldown)))
}

// due moves a hold whose execute_at has come: an automatic request that
// an automatic rollback of its service overtook meanwhile is cooled down;
// an unanswered ask gets its ask_default; any other executes.
func (e *Executor) due(ctx context.Context, tr *tracker, seq uint64, now time.Time) error {
	h, req := tr.hold(), tr.hold().Request
	rollsBack := !h.Ask || h.AskDefault == policy.AskRollback
	if rollsBack && h.Why != rollbackreq.WhyCooldown {
		if p := e.policyFor(req); p != nil {
			earlier, err := e.claimCooldown(ctx, req, p, now)
			if err != nil {
				return err
			}
			if earlier != nil {
				err := e.moveHold(ctx, tr, rollbackreq.HoldHeld, func(h *rollbackreq.Hold) {
					coolDown(h, earlier, p, now)
					h.Announced, h.Round = false, h.Round+1
				})
				if err == nil {
					e.holds.WithLabelValues(holdHeld).Inc()
				}
				return err
			}
		}
	}
	if !h.Ask {
		return e.moveHold(ctx, tr, rollbackreq.HoldHeld, func(h *rollbackreq.Hold) {
			h.State, h.Owner = rollbackreq.HoldExecuting, seq
		})
	}
	d := events.RollbackDecision{
		ID: req.ID + ".deadline", Action: events.ActionCancel, RequestID: req.ID, Service: req.Service, Environment: req.Environment,
		By: "watcher", Via: events.ViaDeadline, Time: now,
		Reason: fmt.Sprintf("nobody answered by %s; ask_default: %s", h.ExecuteAt.Format(time.RFC3339), h.AskDefault),
	}
	state, result := rollbackreq.HoldCancelled, holdDeadlineKeep
	if h.AskDefault == policy.AskRollback {
		d.Action, state, result = events.ActionApprove, rollbackreq.HoldApproved, holdDeadlineRollback
	}
	err := e.moveHold(ctx, tr, rollbackreq.HoldHeld, func(h *rollbackreq.Hold) {
		h.State, h.Decision, h.Recorded = state, &d, false
	})
	if err == nil {
		e.holds.WithLabelValues(result).Inc()
	}
	return err
}

// moveHold changes the request's hold with change when it is in state
// from, and returns errMoved when it is not (any more).
func (e *Executor) moveHold(ctx context.Context, tr *tracker, from string, change func(h *rollbackreq.Hold)) error {
	return tr.update(ctx, func(p *rollbackreq.Progress) error {
		if p.Hold == nil || p.Hold.State != from {
			return errMoved
		}
		change(p.Hold)
		return nil
	})
}

// announce records the hold's rollback.held, once per round: a crash
// between the record and its note in RequestsBucket records it again under
// the same message id, which the stream drops within its duplicate window.
func (e *Executor) announce(ctx context.Context, tr *tracker) error {
	h := tr.hold()
	req := h.Request
	rec := e.holdRecord(req, audit.RollbackHeld)
	rec.MsgID = req.ID + ".held"
	if h.Round > 1 {
		rec.MsgID = fmt.Sprintf("%s.held.%d", req.ID, h.Round)
	}
	cancel := fmt.Sprintf("watcher cancel --request=%s --reason=TEXT", req.ID)
	approve := fmt.Sprintf("watcher approve --request=%s --reason=TEXT", req.ID)
	at := h.ExecuteAt.Format(time.RFC3339)
	what := fmt.Sprintf("rollback of %s in %s (requested by %s: %s)", req.Service, req.Environment, req.Source, req.Reason)
	detail := audit.RollbackHeldDetail{
		RequestID: req.ID, Source: req.Source, Reason: req.Reason, Why: h.Why, Hold: model.Duration(h.Wait).String(),
		HeldAt: h.Since, ExecuteAt: h.ExecuteAt, Ask: h.Ask, AskDefault: h.AskDefault, Cancel: cancel, Approve: approve,
	}
	if e.Links != nil {
		detail.CancelURL, detail.ApproveURL = e.Links(req.ID, h.ExecuteAt, h.Ask)
	}
	switch h.Why {
	case rollbackreq.WhyCooldown:
		ea := h.Earlier
		detail.Earlier = &audit.EarlierRollback{RequestID: ea.RequestID, CompletedAt: ea.CompletedAt, CooldownEnds: ea.CooldownEnds}
		rec.Message = fmt.Sprintf("%s not executed automatically: %s in %s was rolled back automatically at %s (request %s) and is in cooldown until %s; left to a person: `%s` until %s, else it is kept",
			what, req.Service, req.Environment, ea.CompletedAt.Format(time.RFC3339), ea.RequestID, ea.CooldownEnds.Format(time.RFC3339), approve, at)
	case rollbackreq.WhyAsk:
		rec.Message = fmt.Sprintf("%s waits for an answer until %s, then ask_default: %s; `%s` or `%s`", what, at, h.AskDefault, approve, cancel)
	default:
		rec.Message = fmt.Sprintf("%s held for %s: executes at %s unless cancelled; `%s`", what, model.Duration(h.Wait), at, cancel)
	}
	if err := rec.SetDetail(detail); err != nil {
		return err
	}
	if err := e.Audit.Record(ctx, rec); err != nil {
		return err
	}
	e.logger.Info("rollback request held", "request", req.ID, "service", req.Service, "environment", req.Environment, "why", h.Why, "execute_at", at)
	err := e.moveHold(ctx, tr, rollbackreq.HoldHeld, func(h *rollbackreq.Hold) { h.Announced = true })
	if errors.Is(err, errMoved) {
		return nil
	}
	return err
}

// recordDecision records the decision that moved the hold on
// (rollback.approved or rollback.cancelled), unless it is recorded
// already. Both the decision's own message and the held request may get
// here after a crash; the message id keeps the record single.
func (e *Executor) recordDecision(ctx context.Context, tr *tracker) error {
	h := tr.hold()
	d := h.Decision
	if d == nil || h.Recorded {
		return nil
	}
	req := h.Request
	kind := audit.RollbackApproved
	if d.Action == events.ActionCancel {
		kind = audit.RollbackCancelled
	}
	rec := e.holdRecord(req, kind)
	rec.MsgID = req.ID + ".decision"
	what := fmt.Sprintf("rollback of %s in %s", req.Service, req.Environment)
	switch {
	case d.Via == events.ViaDeadline && kind == audit.RollbackCancelled:
		rec.Message = fmt.Sprintf("%s not executed: %s, so the deploy is kept", what, d.Reason)
	case d.Via == events.ViaDeadline:
		rec.Message = fmt.Sprintf("%s approved: %s; executing now", what, d.Reason)
	case kind == audit.RollbackCancelled:
		rec.Message = fmt.Sprintf("%s cancelled by %s (%s): %s", what, d.By, d.Via, d.Reason)
	default:
		rec.Message = fmt.Sprintf("%s approved by %s (%s): %s; executing now", what, d.By, d.Via, d.Reason)
	}
	err := rec.SetDetail(audit.RollbackDecisionDetail{
		RequestID: req.ID, DecisionID: d.ID, Action: d.Action, By: d.By, Via: d.Via, Reason: d.Reason,
		Why: h.Why, HeldAt: h.Since, ExecuteAt: h.ExecuteAt,
	})
	if err != nil {
		return err
	}
	if err := e.Audit.Record(ctx, rec); err != nil {
		return err
	}
	e.logger.Info("held rollback request decided", "request", req.ID, "action", d.Action, "by", d.By, "via", d.Via)
	err = tr.update(ctx, func(p *rollbackreq.Progress) error {
		if p.Hold == nil || p.Hold.Decision == nil || p.Hold.Decision.ID != d.ID {
			return errMoved
		}
		p.Hold.Recorded = true
		return nil
	})
	if errors.Is(err, errMoved) {
		return nil
	}
	return err
}

// holdRecord is a record of kind about held request req.
func (e *Executor) holdRecord(req events.RollbackRequest, kind string) audit.Record {
	rec := audit.Record{
		Kind: kind, RequestID: req.ID, RunID: req.RunID, DeployID: req.DeployID, Service: req.Service,
		Environment: req.Environment, Version: req.Version,
	}
	if p := e.policyFor(req); p != nil {
		rec.Policy = p.Name
	}
	return rec
}

// heldNote says, in the rollback.requested of a held request, what let it
// go ahead.
func heldNote(h *rollbackreq.Hold) string {
	if d := h.Decision; d != nil {
		if d.Via == events.ViaDeadline {
			return "approved when its hold ended: " + d.Reason
		}
		return fmt.Sprintf("approved by %s (%s): %s", d.By, d.Via, d.Reason)
	}
	return fmt.Sprintf("held %s, not cancelled", model.Duration(h.Wait))
}
