package watch

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/common/model"
)

// sharedQuerier makes runs that ask the same query at the same evaluation
// time (or over the same range) share one request to Prometheus. Measurements are scheduled on a
// grid (alignUp), so that with 10,000 runs of a few policies the watcher
// sends one request per distinct resolved query per interval, not one per
// run. Comparisons fetch the steps their stores lack (steps.go), on the
// grid of their step, so two stores of one query (a canary comparison's
// and another's) asking the same range at once share it the same way. The answer is kept for a while after it
// arrives, for the runs whose timers fired late. Callers must not modify
// the vector or matrix they get.
type sharedQuerier struct {
	q       Querier
	base    context.Context // the watcher's; nil before Start
	observe func(time.Duration, error)

	mu      sync.Mutex
	calls   map[queryKey]*sharedCall
	inserts int
}

// queryKey names a request. Times are Unix milliseconds, the precision
// Prometheus evaluates at; an instant query has start = end and no step.
type queryKey struct {
	query      string
	start, end int64
	step       time.Duration
}

type sharedCall struct {
	done     chan struct{}
	vec      model.Vector
	mat      model.Matrix
	err      error
	at       time.Time // when the answer came
	deadline time.Time // the first asker's, which bounds the request; zero: none
}

// cutShort reports whether c failed only because it ran into a deadline
// earlier than ctx's: an asker with more time to wait asks again rather
// than take another run's timeout for its own.
func (c *sharedCall) cutShort(ctx context.Context) bool {
	if c.deadline.IsZero() || ctx.Err() != nil || !errors.Is(c.err, context.DeadlineExceeded) {
		return false
	}
	mine, ok := ctx.Deadline()
	return !ok || mine.After(c.deadline)
}

// keepAnswers is how long an answer serves late askers; a measurement at a
// given evaluation time is asked within moments of it, or, when a run
// catches up after a takeover, from the same process soon after.
const keepAnswers = 30 * time.Second

func newSharedQuerier(q Querier) *sharedQuerier {
	return &sharedQuerier{q: q, calls: map[queryKey]*sharedCall{}}
}

func (s *sharedQuerier) Query(ctx context.Context, query string, ts time.Time) (model.Vector, error) {
	c, err := s.share(ctx, queryKey{query: query, start: ts.UnixMilli(), end: ts.UnixMilli()}, func(ctx context.Context, c *sharedCall) {
		c.vec, c.err = s.q.Query(ctx, query, ts)
	})
	if err != nil {
		return nil, err
	}
	return c.vec, c.err
}

func (s *sharedQuerier) QueryRange(ctx context.Context, query string, start, end time.Time, step time.Duration) (model.Matrix, error) {
	k := queryKey{query: query, start: start.UnixMilli(), end: end.UnixMilli(), step: step}
	c, err := s.share(ctx, k, func(ctx context.Context, c *sharedCall) {
		c.mat, c.err = s.q.QueryRange(ctx, query, start, end, step)
	})
	if err != nil {
		return nil, err
	}
	return c.mat, c.err
}

// share waits for the call k, starting it with fetch when no other asker
// has. The error is ctx's when the asker stopped waiting; the call's own
// error is in the call.
func (s *sharedQuerier) share(ctx context.Context, k queryKey, fetch func(context.Context, *sharedCall)) (*sharedCall, error) {
	for {
		s.mu.Lock()
		c, ok := s.calls[k]
		if !ok {
			c = &sharedCall{done: make(chan struct{})}
			c.deadline, _ = ctx.Deadline()
			s.calls[k] = c
			s.inserts++
			if s.inserts%1024 == 0 {
				s.sweepLocked(time.Now())
			}
			// The request runs on its own, under the watcher's context
			// rather than the asker's: one run stopping (superseded) must
			// not fail the answer for the others waiting on it, nor wait
			// for it. It keeps the asker's deadline (the query timeout),
			// so that a slow Prometheus is not sent more requests than
			// the runs wait for.
			base := s.base
			if base == nil {
				base = context.WithoutCancel(ctx)
			}
			go s.ask(base, k, c, fetch)
		}
		s.mu.Unlock()
		select {
		case <-c.done:
			if c.cutShort(ctx) {
				continue // a failed call is not kept: this makes a new one
			}
			return c, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (s *sharedQuerier) ask(ctx context.Context, k queryKey, c *sharedCall, fetch func(context.Context, *sharedCall)) {
	if !c.deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, c.deadline)
		defer cancel()
	}
	start := time.Now()
	var res sharedCall
	fetch(ctx, &res)
	if s.observe != nil {
		s.observe(time.Since(start), res.err)
	}
	s.mu.Lock()
	c.vec, c.mat, c.err, c.at = res.vec, res.mat, res.err, time.Now()
	if res.err != nil || (len(res.vec) == 0 && len(res.mat) == 0) {
		// Not kept: a later asker tries again (a pre-deploy baseline is
		// asked again until it has data).
		delete(s.calls, k)
	}
	s.mu.Unlock()
	close(c.done)
}

func (s *sharedQuerier) sweepLocked(now time.Time) {
	for k, c := range s.calls {
		select {
		case <-c.done:
			if now.Sub(c.at) > keepAnswers {
				delete(s.calls, k)
			}
		default:
		}
	}
}

// alignUp is the first point of the grid of step d (counted from the Unix
// epoch) at or after t. Runs started at different moments then measure at
// the same evaluation times, and share their queries.
func alignUp(t time.Time, d time.Duration) time.Time {
	if d <= 0 {
		return t
	}
	a := t.Truncate(d)
	if a.Before(t) {
		a = a.Add(d)
	}
	return a
}
