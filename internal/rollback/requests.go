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

	"github.com/rollback-watcher/watcher/internal/bus"
)

// RequestsBucket records, per rollback request id, how far its execution
// got. A request delivered again (its executor died mid-way, or it was
// published again) is executed at most once: a finished one is not touched
// again, and an unfinished one resumes after the steps already done, its
// switches being no-ops on hosts already switched (Resolve's version check
// and the ROLLED_BACK marker) and its data steps not run twice.
const RequestsBucket = "WATCHER_ROLLBACK_REQUESTS"

// Steps of a request's execution, as recorded in RequestsBucket.
const (
	stepStarted    = "started"
	stepDataBefore = "data_before_code"
	stepSwitched   = "switched"
	stepDataAfter  = "data_after_code"
	stepDone       = "done"
)

// requestProgress is a request's entry in RequestsBucket.
type requestProgress struct {
	Steps   []string  `json:"steps"`
	Result  string    `json:"result,omitempty"`
	Replica string    `json:"replica,omitempty"`
	Updated time.Time `json:"updated"`
}

func (p *requestProgress) has(step string) bool {
	if p == nil {
		return false
	}
	for _, s := range p.Steps {
		if s == step {
			return true
		}
	}
	return false
}

// tracker records one request's progress; a nil tracker (Execute called
// directly, without JetStream) records nothing.
type tracker struct {
	kv      jetstream.KeyValue
	key     string
	replica string
	prog    requestProgress
}

func requestKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16])
}

// openRequests creates RequestsBucket.
func (e *Executor) openRequests(ctx context.Context) error {
	kv, err := bus.EnsureKeyValue(ctx, e.JS, jetstream.KeyValueConfig{
		Bucket:      RequestsBucket,
		Description: "rollback requests and how far their execution got (rollback watcher)",
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
	t := &tracker{kv: e.requests, key: requestKey(id), replica: e.Replica}
	entry, err := e.requests.Get(ctx, t.key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return nil, fmt.Errorf("reading the progress of rollback request %s: %w", id, err)
	default:
		if err := json.Unmarshal(entry.Value(), &t.prog); err != nil {
			return nil, fmt.Errorf("progress of rollback request %s: %w", id, err)
		}
	}
	return t, nil
}

func (t *tracker) has(step string) bool { return t != nil && t.prog.has(step) }

// mark records step as done.
func (t *tracker) mark(ctx context.Context, step, result string) error {
	if t == nil || t.has(step) {
		return nil
	}
	t.prog.Steps = append(t.prog.Steps, step)
	t.prog.Replica, t.prog.Updated = t.replica, time.Now().UTC()
	if result != "" {
		t.prog.Result = result
	}
	b, err := json.Marshal(t.prog)
	if err != nil {
		return err
	}
	if _, err := t.kv.Put(ctx, t.key, b); err != nil {
		return fmt.Errorf("recording step %s of the rollback request: %w", step, err)
	}
	return nil
}
