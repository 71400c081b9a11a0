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

// Taking rollback requests off ROLLBACKS, once each.

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
		AckWait:       e.AckWait,
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
	return nil
}

// Wait blocks until the consumer and every rollback in progress stopped.
func (e *Executor) Wait() { e.wg.Wait() }

func (e *Executor) handle(ctx context.Context, msg jetstream.Msg) {
	req, rej := rollbackreq.Decode(msg.Subject(), msg.Data())
	if rej != nil {
		if aerr := e.Audit.Record(ctx, audit.Record{
			Kind: audit.EventRejected, Service: rej.Service, Environment: rej.Environment,
			Message: "rollback request rejected: " + rej.Err.Error(),
			Detail:  audit.EventRejectedDetail{Subject: rej.Subject, Field: rej.Field}.Map(),
		}); aerr != nil {
			e.logger.Error("rejection not recorded; will retry", "err", aerr)
			_ = msg.NakWithDelay(2 * time.Second)
			return
		}
		_ = msg.Ack()
		return
	}
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
	res := e.executeTracked(ctx, req, tr)
	close(stop)
	if res.Err != nil && ctx.Err() != nil {
		// Shutting down mid-way: leave the request for the next start.
		return
	}
	if res.Retry {
		e.logger.Error("rollback request not handled; will retry", "request", req.ID, "err", res.Err)
		_ = msg.NakWithDelay(2 * time.Second)
		return
	}
	if err := tr.mark(ctx, stepDone, res.Status); err != nil {
		e.logger.Warn("rollback request not marked done; a redelivery will find every host rolled back", "request", req.ID, "err", err)
	}
	_ = msg.Ack()
}
