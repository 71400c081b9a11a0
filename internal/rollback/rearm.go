package rollback

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

// A held request waits in the consumer, sent back with a delay until its
// execute_at. A NATS server that dies with the watcher (the embedded one,
// SIGKILLed) may not have written that delay to disk: restarted, it sends
// the request back only an AckWait after its last delivery, late. So every
// held request is also noted under "held.<key>" in RequestsBucket while it
// is held, and a starting executor sends each again: the copy waits for
// the same execute_at, and whichever message comes then executes it, the
// other finding it executing or done.

func heldKey(id string) string { return "held." + requestKey(id) }

// indexHold notes request id as held, before its hold is stored.
func (e *Executor) indexHold(ctx context.Context, id string) error {
	_, err := e.requests.PutString(ctx, heldKey(id), id)
	return err
}

// unindexHold forgets request id as held. Best effort: a note left behind
// costs one copy of the request at the next start, which finds it done.
func (e *Executor) unindexHold(ctx context.Context, id string) {
	if err := e.requests.Delete(ctx, heldKey(id)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		e.logger.Debug("held request not forgotten", "request", id, "err", err)
	}
}

// rearm sends every request still held (or approved, not yet executing)
// again.
func (e *Executor) rearm(ctx context.Context) {
	lister, err := e.requests.ListKeysFiltered(ctx, "held.>")
	if err != nil {
		e.logger.Warn("held rollback requests not re-armed; each comes back at its execute_at or, after a crash of the NATS server, up to an AckWait later", "err", err)
		return
	}
	defer func() { _ = lister.Stop() }()
	nonce := "rearm." + strconv.FormatInt(time.Now().UnixNano(), 36)
	for key := range lister.Keys() {
		entry, err := e.requests.Get(ctx, key)
		if err != nil {
			continue
		}
		id := string(entry.Value())
		tr, err := e.track(ctx, id)
		if err != nil {
			e.logger.Warn("held rollback request not re-armed", "request", id, "err", err)
			continue
		}
		h := tr.hold()
		if h == nil || tr.has(stepDone) || (h.State != rollbackreq.HoldHeld && h.State != rollbackreq.HoldApproved) {
			e.unindexHold(ctx, id)
			continue
		}
		if err := rollbackreq.Resend(ctx, e.JS, h.Request, nonce); err != nil {
			e.logger.Warn("held rollback request not re-armed", "request", id, "err", err)
			continue
		}
		e.logger.Info("held rollback request re-armed", "request", id, "state", h.State, "execute_at", h.ExecuteAt)
	}
}
