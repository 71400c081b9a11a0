package watch

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
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
// or, taken up (since) with measurements already due (due, the next one
// then), a timeout per missed measurement after since when that is later.
func TestCatchUp(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	end := at(10)
	for _, tc := range []struct {
		name       string
		now, next  time.Time
		since, due time.Time
		wantBudget time.Duration
		wantSkip   int
	}{
		{"on time", at(3), at(3), t0, at(1), time.Second, 0},
		{"behind, in the window", at(6.5), at(3), t0, at(1), time.Second, 0},
		{"the last timeout shortens the budget", at(10.4), at(9), t0, at(1), 600 * time.Millisecond, 0},
		{"out of time: the rest is skipped", at(11), at(8), t0, at(1), 0, 3},
		{"out of time with nothing left", at(12), at(11), t0, at(1), 0, 0},
		// A sliver of budget is no time for a query: it would only be
		// cut and recorded as an error. The step is skipped instead.
		{"a sliver of budget: skipped, not queried", at(10.95), at(10), t0, at(1), 0, 1},
		{"a quarter of the timeout is still asked", at(10.85), at(10), t0, at(1), 150 * time.Millisecond, 0},
		// Resumed at 29.5s with the measurements from 4s to 10s missed
		// (7): 7s from then to catch up, not one timeout for all.
		{"resumed after the window: a timeout per missed measurement", at(30), at(4), at(29.5), at(4), time.Second, 0},
		{"resumed after the window, still catching up", at(35), at(9), at(29.5), at(4), time.Second, 0},
		{"resumed after the window, the last timeout", at(36), at(10), at(29.5), at(4), 500 * time.Millisecond, 0},
		{"resumed after the window, out of time", at(36.5), at(8), at(29.5), at(4), 0, 3},
		{"resumed after the window with nothing left", at(30), at(11), at(29.5), at(11), 0, 0},
		{"resumed in the window", at(5), at(2), at(5), at(2), time.Second, 0},
		// 4 missed at 9.5s: caught up by 13.5s, past the window's end.
		{"resumed late in the window", at(12), at(8), at(9.5), at(6), time.Second, 0},
		{"resumed late in the window, out of time", at(13.5), at(9), at(9.5), at(6), 0, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			deadline, _ := catchUpDeadline(end, tc.since, tc.due, time.Second, time.Second)
			budget, skip := catchUp(tc.now, tc.next, end, deadline, time.Second, time.Second)
			if budget != tc.wantBudget || skip != tc.wantSkip {
				t.Errorf("catchUp = budget %s, skip %d; want %s, %d (deadline %s)", budget, skip, tc.wantBudget, tc.wantSkip, deadline.Sub(t0))
			}
		})
	}
}

// TestCatchUpDeadlineCap: a run resumed after a long window with a short
// interval gets a timeout per missed measurement, but at most maxCatchUp:
// a slow Prometheus cannot hold its verdict for hours.
func TestCatchUpDeadlineCap(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	end := t0.Add(24 * time.Hour)
	since := end.Add(time.Hour)
	for _, tc := range []struct {
		name              string
		due               time.Time
		interval, timeout time.Duration
		wantMissed        int
		wantAfterSince    time.Duration
	}{
		{"a day at 1m, 10s each: capped", t0.Add(time.Minute), time.Minute, 10 * time.Second, 1440, maxCatchUp},
		{"a day at 1s: capped, no overflow", t0.Add(time.Second), time.Second, time.Second, 86400, maxCatchUp},
		{"the last 30s at 1s", end.Add(-30 * time.Second), time.Second, time.Second, 31, 31 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			deadline, missed := catchUpDeadline(end, since, tc.due, tc.interval, tc.timeout)
			if missed != tc.wantMissed || deadline.Sub(since) != tc.wantAfterSince {
				t.Errorf("catchUpDeadline = %s after since, %d missed; want %s, %d", deadline.Sub(since), missed, tc.wantAfterSince, tc.wantMissed)
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

// TestCloseVerdictSkipped: a run decided with measurements skipped cannot
// pass on the data it had before: it is inconclusive, and says how many
// were skipped and why. It passed before, on the measurements taken
// before a crash.
func TestCloseVerdictSkipped(t *testing.T) {
	set := loadRules(t, "policies:\n"+policyYAML("p", shopMatch, "window: 10s\ninterval: 1s", `
- name: orders
  query: orders
  min: 50`))
	from := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		name        string
		tally       policy.Tally
		skip        int
		wantVerdict string
		wantReason  []string
	}{
		{"healthy, nothing skipped", policy.Tally{Pass: 3}, 0, VerdictPassed, []string{"window closed healthy: orders pass 3 fail 0"}},
		{"healthy until skipped", policy.Tally{Pass: 3}, 5, VerdictInconclusive,
			[]string{"5 measurements from 2027-01-15T08:00:00Z skipped: the watcher was down", "orders pass 3 fail 0"}},
		{"blind and skipped", policy.Tally{Error: 2}, 2, VerdictInconclusive,
			[]string{"check orders is inconclusive", "2 measurements from 2027-01-15T08:00:00Z skipped"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := set.Match("shop", "production")
			r, err := newRun("r1", events.Deploy{ID: "d1", Service: "shop", Environment: "production", Version: "v2"}, p, from.Add(-10*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			r.checks[0].tally = tc.tally
			mv := closeMove(r.snapshot(0), p, skipped{n: tc.skip, from: from, why: "the watcher was down"})
			verdict, reason, detail := mv.verdict, mv.reason, mv.detail
			if verdict != tc.wantVerdict {
				t.Errorf("verdict %s (%s), want %s", verdict, reason, tc.wantVerdict)
			}
			for _, w := range tc.wantReason {
				if !strings.Contains(reason, w) {
					t.Errorf("reason %q does not say %q", reason, w)
				}
			}
			if got := detail.SkippedMeasurements; got != tc.skip {
				t.Errorf("detail.skipped_measurements = %v, want %d", got, tc.skip)
			}
		})
	}
}
