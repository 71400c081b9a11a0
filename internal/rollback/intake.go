package rollback

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

// Taking rollback requests, and decisions on held ones, off ROLLBACKS,
// once each.

// Start consumes ROLLBACKS in the background until ctx ends.
func (e *Executor) Start(ctx context.Context) error {
	e.init()
	if err := e.openRequests(ctx); err != nil {
		return err
	}
	cons, err := bus.EnsureConsumer(ctx, e.JS, bus.RollbacksStream, jetstream.ConsumerConfig{
		Durable:       e.Consumer,
		FilterSubject: events.RollbacksPrefix + ".>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		// A fleet rollback with a data step can take minutes; the handler
		// also marks progress so a slow one is not redelivered.
		AckWait: e.AckWait,
		// A held request stays pending (sent back with a delay until its
		// execute_at), so this also bounds how many can be held at once.
		// MaxDeliver is left unlimited: each return of a held request is
		// a delivery.
		MaxAckPending: 256,
		// A new consumer must not replay old requests from the stream.
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return err
	}
	if err := bus.ConsumeBounded(ctx, cons, e.Workers, &e.wg, bus.RollbacksStream, e.handle); err != nil {
		return err
	}
	e.rearm(ctx)
	return nil
}

// Wait blocks until the consumer and every rollback in progress stopped.
func (e *Executor) Wait() { e.wg.Wait() }

func (e *Executor) handle(ctx context.Context, msg jetstream.Msg) {
	m, rej := rollbackreq.DecodeMessage(msg.Subject(), msg.Data())
	if rej != nil {
		what := "rollback request"
		if rej.Decision {
			what = "rollback decision"
		}
		if aerr := e.Audit.Record(ctx, audit.Record{
			Kind: audit.EventRejected, Service: rej.Service, Environment: rej.Environment,
			Message: what + " rejected: " + rej.Err.Error(),
			Detail:  audit.EventRejectedDetail{Subject: rej.Subject, Field: rej.Field}.Map(),
		}); aerr != nil {
			e.logger.Error("rejection not recorded; will retry", "err", aerr)
			_ = msg.NakWithDelay(2 * time.Second)
			return
		}
		_ = msg.Ack()
		return
	}
	if m.Decision != nil {
		e.decide(ctx, msg, *m.Decision)
		return
	}
	req := *m.Request
	tr, err := e.track(ctx, req.ID)
	if err != nil {
		e.logger.Error("rollback request not handled; will retry", "request", req.ID, "err", err)
		_ = msg.NakWithDelay(2 * time.Second)
		return
	}
	if tr.has(stepDone) {
		// Executed already: delivered again (an ack lost in a crash) or
		// published again with the same id after the duplicate window.
		e.logger.Info("rollback request executed already; not again", "request", req.ID, "result", tr.prog.Result)
		_ = msg.Ack()
		return
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(e.AckWait / 4)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	lock := e.lockFor(req.Environment + "/" + req.Service)
	lock.Lock()
	defer lock.Unlock()
	var seq uint64
	if md, err := msg.Metadata(); err == nil {
		seq = md.Sequence.Stream
	}
	action, wait, err := e.gate(ctx, req, tr, seq)
	if tr.hold() != nil && (action == gateGo || action == gateDrop) {
		e.unindexHold(ctx, req.ID)
	}
	switch action {
	case gateRetry:
		e.logger.Error("rollback request not handled; will retry", "request", req.ID, "err", err)
		_ = msg.NakWithDelay(2 * time.Second)
		return
	case gateWait:
		// Back at its execute_at, to whichever replica consumes then.
		_ = msg.NakWithDelay(max(wait, 10*time.Millisecond))
		return
	case gateDrop:
		_ = msg.Ack()
		return
	}
	res := e.executeLocked(ctx, req, tr)
	if res.Err != nil && ctx.Err() != nil {
		// Shutting down mid-way: leave the request for the next start.
		return
	}
	if res.Retry {
		e.logger.Error("rollback request not handled; will retry", "request", req.ID, "err", res.Err)
		_ = msg.NakWithDelay(2 * time.Second)
		return
	}
	e.endCooldownClaim(ctx, req, res.Status == ResultCompleted, time.Now())
	if tr.hold() != nil {
		e.holds.WithLabelValues(holdExecuted).Inc()
	}
	if err := tr.mark(ctx, stepDone, res.Status); err != nil {
		e.logger.Warn("rollback request not marked done; a redelivery will find every host rolled back", "request", req.ID, "err", err)
	}
	_ = msg.Ack()
}
