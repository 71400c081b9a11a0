package rollback

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

// RequestsBucket records, per rollback request id, how far its execution
// got (rollbackreq.Progress), and the hold of a held request. A request
// delivered again (its executor died mid-way, or it was published again)
// is executed at most once: a finished one is not touched again, and an
// unfinished one resumes after the steps already done, its switches being
// no-ops on hosts already switched (Resolve's version check and the
// ROLLED_BACK marker) and its data steps not run twice.
const RequestsBucket = rollbackreq.RequestsBucket

// Steps of a request's execution, as recorded in RequestsBucket.
const (
	stepDataBefore = "data_before_code"
	stepSwitched   = "switched"
	stepDataAfter  = "data_after_code"
	stepDone       = "done"
)

// tracker records one request's progress; a nil tracker (Execute called
// directly, without JetStream) records nothing.
type tracker struct {
	kv      jetstream.KeyValue
	id, key string
	replica string
	prog    rollbackreq.Progress
	// rev is the revision prog was read at (0: no entry yet), for
	// compare-and-set.
	rev uint64
}

func requestKey(id string) string { return rollbackreq.Key(id) }

// openRequests creates RequestsBucket.
func (e *Executor) openRequests(ctx context.Context) error {
	kv, err := bus.EnsureKeyValue(ctx, e.JS, jetstream.KeyValueConfig{
		Bucket:      RequestsBucket,
		Description: "rollback requests: how far their execution got, and their holds (rollback watcher)",
		TTL:         30 * 24 * time.Hour,
		Storage:     jetstream.FileStorage,
		Replicas:    max(e.Replicas, 1),
	})
	if err != nil {
		return err
	}
	e.requests = kv
	return nil
}

// track reads what was done of request id before; the tracker then
// records each step.
func (e *Executor) track(ctx context.Context, id string) (*tracker, error) {
	if e.requests == nil {
		return nil, nil
	}
	t := &tracker{kv: e.requests, id: id, key: requestKey(id), replica: e.Replica}
	return t, t.load(ctx)
}

// load reads the request's newest entry.
func (t *tracker) load(ctx context.Context) error {
	t.prog, t.rev = rollbackreq.Progress{}, 0
	entry, err := t.kv.Get(ctx, t.key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("reading the progress of rollback request %s: %w", t.id, err)
	}
	if err := json.Unmarshal(entry.Value(), &t.prog); err != nil {
		return fmt.Errorf("progress of rollback request %s: %w", t.id, err)
	}
	t.rev = entry.Revision()
	return nil
}

func (t *tracker) has(step string) bool { return t != nil && t.prog.Has(step) }

// hold is the request's hold, nil when it was not held.
func (t *tracker) hold() *rollbackreq.Hold {
	if t == nil {
		return nil
	}
	return t.prog.Hold
}

// mark records step as done.
func (t *tracker) mark(ctx context.Context, step, result string) error {
	if t == nil || t.has(step) {
		return nil
	}
	err := t.update(ctx, func(p *rollbackreq.Progress) error {
		if !p.Has(step) {
			p.Steps = append(p.Steps, step)
		}
		if result != "" {
			p.Result = result
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("recording step %s of the rollback request: %w", step, err)
	}
	return nil
}

// update applies change to a copy of the newest entry and stores it with
// compare-and-set on the revision it was read at. When another writer
// (a replica, a decision on a held request) got there first, it reads the
// entry again and applies change to that: change sees every write, and
// may refuse by returning an error, which update returns.
func (t *tracker) update(ctx context.Context, change func(p *rollbackreq.Progress) error) error {
	for attempt := 0; attempt < 10; attempt++ {
		var next rollbackreq.Progress
		b, err := json.Marshal(t.prog)
		if err == nil {
			err = json.Unmarshal(b, &next) // a deep copy: a refused change leaves prog alone
		}
		if err != nil {
			return err
		}
		if err := change(&next); err != nil {
			return err
		}
		next.Replica, next.Updated = t.replica, time.Now().UTC()
		if b, err = json.Marshal(next); err != nil {
			return err
		}
		var rev uint64
		if t.rev == 0 {
			rev, err = t.kv.Create(ctx, t.key, b)
		} else {
			rev, err = t.kv.Update(ctx, t.key, b, t.rev)
		}
		if err == nil {
			t.prog, t.rev = next, rev
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("writing rollback request %s to %s: %w", t.id, RequestsBucket, err)
		}
		if err := t.load(ctx); err != nil {
			return err
		}
	}
	return fmt.Errorf("writing rollback request %s to %s: its entry kept changing under this write", t.id, RequestsBucket)
}
