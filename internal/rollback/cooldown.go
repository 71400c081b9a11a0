package rollback

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

// Cooldown: after an automatic rollback of a service and environment, the
// next automatic one within rollback.cooldown is left to a person (README
// "Notifications, holds and verification"). The last automatic rollback of
// each is kept in RequestsBucket under a key of its own, so that every
// replica, and the next start, sees it.

// lastRollback is the last automatic rollback of a service and
// environment, or the one executing: an automatic request claims the
// cooldown as it starts (Executing, CompletedAt its start), keeping the
// completed one it replaced in Previous, which is put back if it does
// not complete.
type lastRollback struct {
	RequestID   string        `json:"request_id"`
	Service     string        `json:"service"`
	Environment string        `json:"environment"`
	CompletedAt time.Time     `json:"completed_at"`
	Executing   bool          `json:"executing,omitempty"`
	Previous    *lastRollback `json:"previous,omitempty"`
}

func cooldownKey(environment, service string) string {
	sum := sha256.Sum256([]byte(environment + "\x00" + service))
	return "cooldown." + hex.EncodeToString(sum[:16])
}

// automatic says whether a request came from no person: a failed
// validation or an alert. Manual requests are never cooled down.
func automatic(req events.RollbackRequest) bool {
	return req.Source == events.SourceValidation || req.Source == events.SourceAlert
}

// cools says whether the service's cooldown applies to req at all.
func (e *Executor) cools(req events.RollbackRequest, p *policy.Policy) bool {
	return automatic(req) && p.Rollback.Cooldown > 0 && e.requests != nil
}

// readLast reads the service's last automatic rollback: nil and revision 0
// when there is none.
func (e *Executor) readLast(ctx context.Context, req events.RollbackRequest) (*lastRollback, uint64, error) {
	entry, err := e.requests.Get(ctx, cooldownKey(req.Environment, req.Service))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, 0, nil
	case err != nil:
		return nil, 0, fmt.Errorf("reading the last automatic rollback of %s in %s: %w", req.Service, req.Environment, err)
	}
	var last lastRollback
	if err := json.Unmarshal(entry.Value(), &last); err != nil {
		return nil, 0, fmt.Errorf("last automatic rollback of %s in %s: %w", req.Service, req.Environment, err)
	}
	return &last, entry.Revision(), nil
}

// earlierThan is the rollback that puts req's service in cooldown now,
// judged from last: another request's, completed or executing, within
// the cooldown.
func earlierThan(last *lastRollback, req events.RollbackRequest, p *policy.Policy, now time.Time) *rollbackreq.Earlier {
	if last == nil || last.RequestID == req.ID {
		return nil
	}
	ends := last.CompletedAt.Add(time.Duration(p.Rollback.Cooldown))
	if !now.Before(ends) {
		return nil
	}
	return &rollbackreq.Earlier{RequestID: last.RequestID, CompletedAt: last.CompletedAt, CooldownEnds: ends}
}

// cooldownOf returns the automatic rollback that puts req's service in
// cooldown now, nil when there is none (or req is no automatic request,
// or p sets no cooldown).
func (e *Executor) cooldownOf(ctx context.Context, req events.RollbackRequest, p *policy.Policy, now time.Time) (*rollbackreq.Earlier, error) {
	if !e.cools(req, p) {
		return nil, nil
	}
	last, _, err := e.readLast(ctx, req)
	if err != nil {
		return nil, err
	}
	return earlierThan(last, req, p, now), nil
}

// claimCooldown is cooldownOf for a request about to execute: when no
// automatic rollback cools its service down, it writes req as the one
// executing, with a compare-and-set on the revision it judged, so that of
// two automatic requests of one service executing at once on two
// replicas one executes and the other finds the service in cooldown.
func (e *Executor) claimCooldown(ctx context.Context, req events.RollbackRequest, p *policy.Policy, now time.Time) (*rollbackreq.Earlier, error) {
	if !e.cools(req, p) {
		return nil, nil
	}
	key := cooldownKey(req.Environment, req.Service)
	for range 5 {
		last, rev, err := e.readLast(ctx, req)
		if err != nil {
			return nil, err
		}
		if earlier := earlierThan(last, req, p, now); earlier != nil {
			return earlier, nil
		}
		if last != nil && last.RequestID == req.ID {
			return nil, nil // claimed before: this request, delivered again
		}
		claim := lastRollback{RequestID: req.ID, Service: req.Service, Environment: req.Environment, CompletedAt: now.UTC(), Executing: true}
		if last != nil && !last.Executing {
			claim.Previous = last
		}
		b, err := json.Marshal(claim)
		if err != nil {
			return nil, err
		}
		if rev == 0 {
			_, err = e.requests.Create(ctx, key, b)
		} else {
			_, err = e.requests.Update(ctx, key, b, rev)
		}
		if err == nil {
			return nil, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("claiming the cooldown of %s in %s: %w", req.Service, req.Environment, err)
		}
		// Another replica wrote it first: judge what it wrote.
	}
	return nil, fmt.Errorf("the cooldown of %s in %s kept moving", req.Service, req.Environment)
}

// endCooldownClaim settles req's claim once it is handled: a completed
// rollback starts the service's cooldown from its completion; any other
// result gives the claim up, putting back the rollback it replaced, so
// that a rollback that failed half-way does not keep the next automatic
// one from finishing it.
func (e *Executor) endCooldownClaim(ctx context.Context, req events.RollbackRequest, completed bool, at time.Time) {
	if !automatic(req) || e.requests == nil {
		return
	}
	key := cooldownKey(req.Environment, req.Service)
	err := func() error {
		for range 5 {
			last, rev, err := e.readLast(ctx, req)
			if err != nil {
				return err
			}
			if !completed && (last == nil || last.RequestID != req.ID || !last.Executing) {
				return nil // not ours to give up
			}
			var b []byte
			switch {
			case completed:
				b, err = json.Marshal(lastRollback{RequestID: req.ID, Service: req.Service, Environment: req.Environment, CompletedAt: at.UTC()})
			case last.Previous != nil:
				b, err = json.Marshal(last.Previous)
			default:
				err = e.requests.Delete(ctx, key, jetstream.LastRevision(rev))
				var apiErr *jetstream.APIError
				if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
					continue // moved since it was read: judge it again
				}
				return err
			}
			if err != nil {
				return err
			}
			if rev == 0 {
				_, err = e.requests.Create(ctx, key, b)
			} else {
				_, err = e.requests.Update(ctx, key, b, rev)
			}
			if err == nil || !errors.Is(err, jetstream.ErrKeyExists) {
				return err
			}
		}
		return fmt.Errorf("the cooldown entry kept moving")
	}()
	if err != nil {
		e.logger.Warn("automatic rollback not settled for the cooldown", "request", req.ID, "completed", completed, "err", err)
	}
}
