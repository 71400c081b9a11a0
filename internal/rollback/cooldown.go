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

// lastRollback is the last automatic rollback of a service and environment.
type lastRollback struct {
	RequestID   string    `json:"request_id"`
	Service     string    `json:"service"`
	Environment string    `json:"environment"`
	CompletedAt time.Time `json:"completed_at"`
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

// cooldownOf returns the automatic rollback that puts req's service in
// cooldown now, nil when there is none (or req is no automatic request,
// or p sets no cooldown).
func (e *Executor) cooldownOf(ctx context.Context, req events.RollbackRequest, p *policy.Policy, now time.Time) (*rollbackreq.Earlier, error) {
	cooldown := time.Duration(p.Rollback.Cooldown)
	if !automatic(req) || cooldown <= 0 || e.requests == nil {
		return nil, nil
	}
	entry, err := e.requests.Get(ctx, cooldownKey(req.Environment, req.Service))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("reading the last automatic rollback of %s in %s: %w", req.Service, req.Environment, err)
	}
	var last lastRollback
	if err := json.Unmarshal(entry.Value(), &last); err != nil {
		return nil, fmt.Errorf("last automatic rollback of %s in %s: %w", req.Service, req.Environment, err)
	}
	ends := last.CompletedAt.Add(cooldown)
	if last.RequestID == req.ID || !now.Before(ends) {
		return nil, nil
	}
	return &rollbackreq.Earlier{RequestID: last.RequestID, CompletedAt: last.CompletedAt, CooldownEnds: ends}, nil
}

// claimCooldown is cooldownOf for a request about to execute: when no
// automatic rollback cools its service down, it writes req as the last
// one, with a compare-and-set on the key's revision, so that of two
// automatic requests of one service executing at once on two replicas
// one executes and the other finds the service in cooldown. The cooldown
// then counts from the start of the rollback (noteRollback moves it to
// its completion).
func (e *Executor) claimCooldown(ctx context.Context, req events.RollbackRequest, p *policy.Policy, now time.Time) (*rollbackreq.Earlier, error) {
	cooldown := time.Duration(p.Rollback.Cooldown)
	if !automatic(req) || cooldown <= 0 || e.requests == nil {
		return nil, nil
	}
	key := cooldownKey(req.Environment, req.Service)
	b, err := json.Marshal(lastRollback{RequestID: req.ID, Service: req.Service, Environment: req.Environment, CompletedAt: now.UTC()})
	if err != nil {
		return nil, err
	}
	for range 5 {
		earlier, err := e.cooldownOf(ctx, req, p, now)
		if err != nil || earlier != nil {
			return earlier, err
		}
		entry, err := e.requests.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = e.requests.Create(ctx, key, b)
		case err != nil:
			return nil, fmt.Errorf("reading the last automatic rollback of %s in %s: %w", req.Service, req.Environment, err)
		default:
			var last lastRollback
			if json.Unmarshal(entry.Value(), &last) == nil && last.RequestID == req.ID {
				return nil, nil // claimed before: this request, delivered again
			}
			_, err = e.requests.Update(ctx, key, b, entry.Revision())
		}
		if err == nil {
			return nil, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("claiming the cooldown of %s in %s: %w", req.Service, req.Environment, err)
		}
		// Another replica wrote it first: read what it wrote.
	}
	return nil, fmt.Errorf("the cooldown of %s in %s kept moving", req.Service, req.Environment)
}

// noteRollback records a completed automatic rollback, which starts its
// service's cooldown.
func (e *Executor) noteRollback(ctx context.Context, req events.RollbackRequest, at time.Time) {
	if !automatic(req) || e.requests == nil {
		return
	}
	b, err := json.Marshal(lastRollback{RequestID: req.ID, Service: req.Service, Environment: req.Environment, CompletedAt: at.UTC()})
	if err == nil {
		_, err = e.requests.Put(ctx, cooldownKey(req.Environment, req.Service), b)
	}
	if err != nil {
		e.logger.Warn("automatic rollback not noted for the cooldown; the next automatic rollback of the service will not be held", "request", req.ID, "err", err)
	}
}
