package bus

import (
	"context"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// ConsumeBounded consumes cons until ctx ends, each message handled on a
// goroutine of its own, at most workers at once: a slow message (a fleet
// rollback, a receiver that hangs) holds one slot, not the consumer. wg
// counts the handlers and the consumer's shutdown, so that waiting on it
// returns only once no callback can run any more. what names the work in
// errors ("rollback requests").
func ConsumeBounded(ctx context.Context, cons jetstream.Consumer, workers int, wg *sync.WaitGroup, what string, handle func(context.Context, jetstream.Msg)) error {
	sem := make(chan struct{}, max(workers, 1))
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			handle(ctx, msg)
		}()
	})
	if err != nil {
		return fmt.Errorf("consuming %s: %w", what, err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		cc.Stop()
		// Callbacks may still run until the subscription is closed;
		// holding the wait group until then keeps its waiters from
		// returning under them.
		<-cc.Closed()
	}()
	return nil
}
