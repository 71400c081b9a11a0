package rollbackreq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/events"
)

// Errors of Decide, for callers that answer differently (exit codes, HTTP
// statuses); each comes wrapped in a message that says what to do.
var (
	// ErrUnknownRequest: no request of that id was ever held.
	ErrUnknownRequest = errors.New("unknown rollback request")
	// ErrNotHeld: the request executed without a hold.
	ErrNotHeld = errors.New("rollback request not held")
	// ErrDecided: the hold ended before this decision: cancelled,
	// approved, or executed.
	ErrDecided = errors.New("rollback request no longer held")
	// ErrNoAnswer: the decision was sent, and no watcher applied it in
	// time.
	ErrNoAnswer = errors.New("decision not applied")
)

// Decider is the part of jetstream.JetStream that Decide uses.
type Decider interface {
	Publisher
	KeyValuer
}

// Decide cancels or approves a held rollback request: it finds the request
// in RequestsBucket, sends d on the request's subject (so that NATS subject
// permissions decide who may), and waits until the executor applied it,
// polling the request's entry until ctx ends. d needs Action, RequestID,
// Reason, By and Via; Decide fills in the rest. It returns the hold as the
// executor left it.
//
// The check before sending saves a person a message that would be refused;
// the executor checks again when it applies d, and records a refusal.
func Decide(ctx context.Context, js Decider, d events.RollbackDecision) (*Hold, error) {
	d.ID, d.Time = events.NewID(), time.Now().UTC()
	// Service and environment come from the request; placeholders let the
	// rest be checked before anything is read.
	d.Service, d.Environment = "x", "x"
	if err := d.Validate(); err != nil {
		return nil, err
	}
	kv, h, err := lookup(ctx, js, d.RequestID)
	if err != nil {
		return h, err
	}
	d.Service, d.Environment = h.Request.Service, h.Request.Environment
	b, err := events.EncodeRollbackDecision(d)
	if err != nil {
		return nil, err
	}
	subj := events.Subject(events.RollbacksPrefix, d.Environment, d.Service)
	if _, err := js.Publish(ctx, subj, b, jetstream.WithMsgID(d.ID)); err != nil {
		return nil, fmt.Errorf("publishing the %s of %s on %s: %w", d.Action, d.RequestID, subj, err)
	}
	for {
		prog, err := read(ctx, kv, d.RequestID)
		if err != nil && ctx.Err() == nil {
			return nil, err
		}
		if err == nil && prog.Hold != nil {
			h := prog.Hold
			switch {
			case h.Decision != nil && h.Decision.ID == d.ID:
				return h, nil
			case h.State != HoldHeld:
				return h, fmt.Errorf("%w: %s was %s before this %s arrived", ErrDecided, d.RequestID, h.Describe(), d.Action)
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: the %s of %s was sent on %s, but no watcher applied it in time: is a watcher running? One that starts later applies it if the request is still held then",
				ErrNoAnswer, d.Action, d.RequestID, subj)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// KeyValuer is the part of jetstream.JetStream that Lookup uses.
type KeyValuer interface {
	KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error)
}

// Lookup is the hold of request id while it is held, as Decide reads it
// before sending a decision: a page that offers to decide shows what it
// decides. It fails with ErrUnknownRequest or ErrNotHeld, or with
// ErrDecided and the hold as it ended.
func Lookup(ctx context.Context, js KeyValuer, id string) (*Hold, error) {
	_, h, err := lookup(ctx, js, id)
	return h, err
}

func lookup(ctx context.Context, js KeyValuer, id string) (jetstream.KeyValue, *Hold, error) {
	kv, err := js.KeyValue(ctx, RequestsBucket)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, nil, fmt.Errorf("%w %s: no rollback was ever held here (no %s bucket: is this the watcher's NATS?)", ErrUnknownRequest, id, RequestsBucket)
		}
		return nil, nil, fmt.Errorf("reading rollback request %s: %w", id, err)
	}
	prog, err := read(ctx, kv, id)
	if err != nil {
		return nil, nil, err
	}
	h := prog.Hold
	switch {
	case h == nil && len(prog.Steps) > 0:
		return nil, nil, fmt.Errorf("%w: %s was not held; it executed at once (result: %s)", ErrNotHeld, id, orUnknown(prog.Result))
	case h == nil:
		return nil, nil, fmt.Errorf("%w %s: no such request has been held (check the id: `watcher history --kind=rollback.held` lists them)", ErrUnknownRequest, id)
	case h.State != HoldHeld:
		return nil, h, fmt.Errorf("%w: %s was %s", ErrDecided, id, h.Describe())
	}
	return kv, h, nil
}

// read is request id's entry in RequestsBucket; an unknown id has none.
func read(ctx context.Context, kv jetstream.KeyValue, id string) (Progress, error) {
	var p Progress
	entry, err := kv.Get(ctx, Key(id))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return p, nil
	case err != nil:
		return p, fmt.Errorf("reading rollback request %s in %s: %w", id, RequestsBucket, err)
	}
	if err := json.Unmarshal(entry.Value(), &p); err != nil {
		return p, fmt.Errorf("rollback request %s in %s: %w", id, RequestsBucket, err)
	}
	return p, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "not finished yet"
	}
	return s
}
