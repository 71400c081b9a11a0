package backtest

import (
	"container/list"
	"context"
	"sync"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/watch"
)

// sharing makes replays that ask the same query at the same time (or over
// the same range) share one request, as the live watcher's runs do: runs
// measure on a grid of multiples of their interval, so deploys of one
// service close together, or checks whose queries do not depend on the
// deploy, ask the same things. Past answers do not change, so they are kept
// (the newest keep of them) for replays that come to them later.
type sharing struct {
	q    watch.Querier
	keep int

	mu       sync.Mutex
	calls    map[shareKey]*list.Element // of *shareCall
	lru      list.List                  // answered calls, most recent first
	requests int
	asked    int
}

type shareKey struct {
	query      string
	start, end int64 // Unix milliseconds, Prometheus's precision
	step       time.Duration
}

type shareCall struct {
	key  shareKey
	done chan struct{}
	vec  model.Vector
	mat  model.Matrix
	err  error
}

func newSharing(q watch.Querier, keep int) *sharing {
	return &sharing{q: q, keep: keep, calls: map[shareKey]*list.Element{}}
}

func (s *sharing) Query(ctx context.Context, query string, ts time.Time) (model.Vector, error) {
	c, err := s.do(ctx, shareKey{query: query, start: ts.UnixMilli(), end: ts.UnixMilli()}, func(ctx context.Context, c *shareCall) {
		c.vec, c.err = s.q.Query(ctx, query, ts)
	})
	if err != nil {
		return nil, err
	}
	return c.vec, c.err
}

func (s *sharing) QueryRange(ctx context.Context, query string, start, end time.Time, step time.Duration) (model.Matrix, error) {
	c, err := s.do(ctx, shareKey{query: query, start: start.UnixMilli(), end: end.UnixMilli(), step: step}, func(ctx context.Context, c *shareCall) {
		c.mat, c.err = s.q.QueryRange(ctx, query, start, end, step)
	})
	if err != nil {
		return nil, err
	}
	return c.mat, c.err
}

// do returns the call for k, asking Prometheus only when no replay has
// asked it yet. A failed answer is not kept: the next asker asks again.
func (s *sharing) do(ctx context.Context, k shareKey, ask func(context.Context, *shareCall)) (*shareCall, error) {
	s.mu.Lock()
	s.asked++
	if el, ok := s.calls[k]; ok {
		c := el.Value.(*shareCall)
		s.lru.MoveToFront(el) // a no-op while it is in flight
		s.mu.Unlock()
		select {
		case <-c.done:
			return c, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c := &shareCall{key: k, done: make(chan struct{})}
	// In flight, the call is in the map but not yet in the list: nothing
	// evicts it before it is answered.
	s.calls[k] = &list.Element{Value: c}
	s.requests++
	s.mu.Unlock()

	ask(ctx, c)
	close(c.done)

	s.mu.Lock()
	defer s.mu.Unlock()
	if c.err != nil {
		delete(s.calls, k)
		return c, nil
	}
	s.calls[k] = s.lru.PushFront(c)
	for s.lru.Len() > s.keep {
		old := s.lru.Remove(s.lru.Back()).(*shareCall)
		delete(s.calls, old.key)
	}
	return c, nil
}

// stats are how many queries the replays asked and how many requests
// went to Prometheus for them.
func (s *sharing) stats() (asked, requests int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asked, s.requests
}
