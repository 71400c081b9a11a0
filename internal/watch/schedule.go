package watch

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// scheduler runs the runs' steps when they are due, on a fixed pool of
// workers, instead of a goroutine and a timer per run: 10,000 runs in their
// windows cost their state, not 10,000 stacks. The pool also bounds how
// many measurements are in flight at once.
type scheduler struct {
	mu    sync.Mutex
	queue runQueue
	wake  chan struct{} // the earliest due time may have moved
	due   chan *Run
}

// schedWorkers is how many steps run at once. Runs measuring at one grid
// time mostly wait on the same shared query (sharedQuerier), so a worker is
// cheap; the bound keeps a burst of 10,000 due runs from opening 10,000
// requests to NATS at once.
const schedWorkers = 128

func newScheduler() *scheduler {
	return &scheduler{wake: make(chan struct{}, 1), due: make(chan *Run)}
}

// runQueue is a min-heap of runs by their next step's time.
type runQueue []*Run

func (q runQueue) Len() int           { return len(q) }
func (q runQueue) Less(i, j int) bool { return q[i].at.Before(q[j].at) }
func (q runQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i]; q[i].slot, q[j].slot = i, j }
func (q *runQueue) Push(x any)        { r := x.(*Run); r.slot = len(*q); *q = append(*q, r) }
func (q *runQueue) Pop() any {
	old := *q
	r := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	r.slot = -1
	return r
}

// add queues r's next step at at.
func (s *scheduler) add(r *Run, at time.Time) {
	s.mu.Lock()
	r.at = at
	if r.slot >= 0 {
		heap.Fix(&s.queue, r.slot)
	} else {
		heap.Push(&s.queue, r)
	}
	first := s.queue[0] == r
	s.mu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// remove takes r off the queue; false means it was not queued (a worker
// has it, or it is done).
func (s *scheduler) remove(r *Run) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.slot < 0 {
		return false
	}
	heap.Remove(&s.queue, r.slot)
	return true
}

// run hands due runs to step, on schedWorkers goroutines, until ctx ends.
func (s *scheduler) run(ctx context.Context, wg *sync.WaitGroup, step func(*Run)) {
	for range schedWorkers {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case r := <-s.due:
					step(r)
				}
			}
		})
	}
	wg.Go(func() {
		timer := time.NewTimer(time.Hour)
		defer timer.Stop()
		for {
			s.mu.Lock()
			var next *Run
			if len(s.queue) > 0 {
				next = s.queue[0]
			}
			wait := time.Hour
			if next != nil {
				wait = time.Until(next.at)
			}
			if next != nil && wait <= 0 {
				heap.Pop(&s.queue)
				s.mu.Unlock()
				select {
				case s.due <- next:
					continue
				case <-ctx.Done():
					return
				}
			}
			s.mu.Unlock()
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
			case <-timer.C:
			}
		}
	})
}

// queryTimeout is how long one measurement's queries may take: the
// configured prometheus.timeout, but never more than the interval. A
// longer wait makes every measurement late for the next one, and a run
// catching up evaluation by evaluation decides far past its window.
func queryTimeout(configured, interval time.Duration) time.Duration {
	if configured <= 0 || configured > interval {
		return interval
	}
	return configured
}

// maxCatchUp bounds the time a resumed run has to catch up what it missed
// while no watcher measured it: a healthy Prometheus answers a missed
// measurement in milliseconds, so this only stops a slow one from holding
// a late verdict for hours.
const maxCatchUp = 10 * time.Minute

// catchUpDeadline is when a run taken up at since, with the measurement
// due at due as its next, is out of time: one query timeout after its
// window's end, or, when it was taken up with measurements already due
// (it was resumed after its watcher was down), one query timeout per
// measurement it missed from since (at most maxCatchUp), if that is later.
// missed is that count. A run resumed after its window so catches up
// everything from a Prometheus that answers, where one timeout for all of
// it skipped most of its window; a slow one cannot hold it forever.
func catchUpDeadline(end, since, due time.Time, interval, timeout time.Duration) (deadline time.Time, missed int) {
	deadline = end.Add(timeout)
	last := since
	if last.After(end) {
		last = end
	}
	if due.After(last) {
		return deadline, 0
	}
	missed = int(last.Sub(due)/interval) + 1
	budget := maxCatchUp
	if time.Duration(missed) < maxCatchUp/timeout {
		budget = time.Duration(missed) * timeout
	}
	if d := since.Add(budget); d.After(deadline) {
		deadline = d
	}
	return deadline, missed
}

// minStepBudget is the least time worth giving a measurement's queries
// (a quarter of the query timeout, at most 100ms): a query given a sliver
// is only cut, and the measurement is skipped instead.
func minStepBudget(timeout time.Duration) time.Duration {
	return min(timeout/4, 100*time.Millisecond)
}

// catchUp decides a run's step at now, for the measurement due at next:
// how long its queries may take (budget), or, when the run is out of time
// (past deadline, from catchUpDeadline, or too close to it for a query),
// how many measurements it skips (skip > 0) to be decided at once. A
// measurement never runs past the deadline, so the verdict comes no later
// than it.
func catchUp(now, next, end, deadline time.Time, interval, timeout time.Duration) (budget time.Duration, skip int) {
	left := deadline.Sub(now)
	if left < minStepBudget(timeout) {
		if !next.After(end) {
			skip = int(end.Sub(next)/interval) + 1
		}
		return 0, skip
	}
	return min(timeout, left), 0
}
