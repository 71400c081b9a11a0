package watch

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestQueryTimeout(t *testing.T) {
	for _, tc := range []struct{ configured, interval, want time.Duration }{
		{10 * time.Second, time.Second, time.Second},
		{10 * time.Second, 30 * time.Second, 10 * time.Second},
		{0, 5 * time.Second, 5 * time.Second},
		{time.Second, time.Second, time.Second},
	} {
		if got := queryTimeout(tc.configured, tc.interval); got != tc.want {
			t.Errorf("queryTimeout(%s, %s) = %s, want %s", tc.configured, tc.interval, got, tc.want)
		}
	}
}

// TestCatchUp: the decision of a step, as a table. The window is 10s from
// t0 with an interval and a timeout of 1s: a run is out of time at t0+11s,
// or one timeout after it was taken up when that was later.
func TestCatchUp(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	end := at(10)
	for _, tc := range []struct {
		name       string
		now, next  time.Time
		since      time.Time
		wantBudget time.Duration
		wantSkip   int
	}{
		{"on time", at(3), at(3), t0, time.Second, 0},
		{"behind, in the window", at(6.5), at(3), t0, time.Second, 0},
		{"the last timeout shortens the budget", at(10.4), at(9), t0, 600 * time.Millisecond, 0},
		{"out of time: the rest is skipped", at(11), at(8), t0, 0, 3},
		{"out of time with nothing left", at(12), at(11), t0, 0, 0},
		{"resumed after the window: one timeout to catch up", at(30), at(4), at(29.5), 500 * time.Millisecond, 0},
		{"resumed after the window, out of time", at(30.5), at(6), at(29.5), 0, 5},
		{"resumed in the window", at(5), at(2), at(5), time.Second, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			budget, skip := catchUp(tc.now, tc.next, end, tc.since, time.Second, time.Second)
			if budget != tc.wantBudget || skip != tc.wantSkip {
				t.Errorf("catchUp = budget %s, skip %d; want %s, %d", budget, skip, tc.wantBudget, tc.wantSkip)
			}
		})
	}
}

// TestSharedQuerierDeadlines: a shared request ends at its first asker's
// deadline (a slow Prometheus gets no request nobody waits for), and an
// asker with more time asks again instead of taking that timeout as its
// own.
func TestSharedQuerierDeadlines(t *testing.T) {
	cq := &countingQuerier{pause: 300 * time.Millisecond}
	s := newSharedQuerier(cq)
	ts := time.Unix(1_800_000_000, 0)
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	long, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	errs := make(chan error, 2)
	go func() { _, err := s.Query(short, "q", ts); errs <- err }()
	time.Sleep(10 * time.Millisecond) // the short asker makes the request
	vec, err := s.Query(long, "q", ts)
	if err != nil || len(vec) != 1 {
		t.Errorf("asker with 10s: %v, %v; want the answer", vec, err)
	}
	if err := <-errs; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("asker with 50ms: err %v, want its deadline", err)
	}
	if n := cq.n.Load(); n != 2 {
		t.Errorf("%d requests, want 2: the first cut at 50ms, the second for the asker with more time", n)
	}
}
