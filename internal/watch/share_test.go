package watch

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/common/model"
)

// countingQuerier answers after a pause and counts the requests it gets.
type countingQuerier struct {
	n     atomic.Int64
	pause time.Duration
	fail  atomic.Bool
}

func (c *countingQuerier) Query(ctx context.Context, _ string, _ time.Time) (model.Vector, error) {
	c.n.Add(1)
	select {
	case <-time.After(c.pause):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if c.fail.Load() {
		return nil, errors.New("scripted failure")
	}
	return vec(1), nil
}

func (c *countingQuerier) QueryRange(ctx context.Context, q string, start, end time.Time, step time.Duration) (model.Matrix, error) {
	v, err := c.Query(ctx, q, end)
	if err != nil {
		return nil, err
	}
	var m model.Matrix
	for _, s := range v {
		m = append(m, &model.SampleStream{Metric: s.Metric, Values: []model.SamplePair{{Timestamp: model.TimeFromUnixNano(start.UnixNano()), Value: s.Value}}})
	}
	return m, nil
}

func TestSharedQuerier(t *testing.T) {
	cq := &countingQuerier{pause: 50 * time.Millisecond}
	s := newSharedQuerier(cq)
	ts := time.Unix(1_800_000_000, 0)
	ask := func(ctx context.Context, q string, at time.Time) error {
		vec, err := s.Query(ctx, q, at)
		if err == nil && len(vec) != 1 {
			t.Errorf("answer %v", vec)
		}
		return err
	}

	// 1,000 runs asking 10 distinct queries at one time: 10 requests.
	var wg sync.WaitGroup
	for i := range 1000 {
		wg.Go(func() {
			if err := ask(t.Context(), string(rune('a'+i%10)), ts); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := cq.n.Load(); n != 10 {
		t.Errorf("%d requests for 10 distinct queries, want 10", n)
	}
	// A late asker gets the kept answer; another time is another request.
	_ = ask(t.Context(), "a", ts)
	_ = ask(t.Context(), "a", ts.Add(time.Second))
	if n := cq.n.Load(); n != 11 {
		t.Errorf("%d requests, want 11", n)
	}

	// An asker that stops waiting does not cancel the request for the
	// others.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- ask(ctx, "b", ts.Add(2*time.Second)) }()
	time.Sleep(10 * time.Millisecond)
	other := make(chan error, 1)
	go func() { other <- ask(t.Context(), "b", ts.Add(2*time.Second)) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled asker: %v", err)
	}
	if err := <-other; err != nil {
		t.Errorf("the other asker got %v", err)
	}

	// Errors are not kept: the next asker tries again.
	cq.fail.Store(true)
	at := ts.Add(3 * time.Second)
	if err := ask(t.Context(), "c", at); err == nil {
		t.Fatal("want the scripted failure")
	}
	cq.fail.Store(false)
	if err := ask(t.Context(), "c", at); err != nil {
		t.Errorf("asked again after a failure: %v", err)
	}
}

func TestAlignUp(t *testing.T) {
	base := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		in   time.Time
		d    time.Duration
		want time.Time
	}{
		{base, 30 * time.Second, base},
		{base.Add(time.Millisecond), 30 * time.Second, base.Add(30 * time.Second)},
		{base.Add(29 * time.Second), 30 * time.Second, base.Add(30 * time.Second)},
		{base.Add(7 * time.Millisecond), 0, base.Add(7 * time.Millisecond)},
	} {
		if got := alignUp(tc.in, tc.d); !got.Equal(tc.want) {
			t.Errorf("alignUp(%s, %s) = %s, want %s", tc.in, tc.d, got, tc.want)
		}
	}
}

// TestSharedRangeQueries: range queries over the same span and step share
// one request; another span or step is another request, and an instant
// query at the span's end is not mistaken for the range.
func TestSharedRangeQueries(t *testing.T) {
	cq := &countingQuerier{pause: 20 * time.Millisecond}
	s := newSharedQuerier(cq)
	end := time.Unix(1_800_000_000, 0)
	start := end.Add(-30 * time.Second)
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			m, err := s.QueryRange(t.Context(), "q", start, end, 15*time.Second)
			if err != nil || len(m) != 1 {
				t.Errorf("range answer %v, %v", m, err)
			}
		})
	}
	wg.Wait()
	if n := cq.n.Load(); n != 1 {
		t.Errorf("%d requests for one range, want 1", n)
	}
	_, _ = s.QueryRange(t.Context(), "q", start, end, 5*time.Second)
	_, _ = s.QueryRange(t.Context(), "q", start.Add(-time.Second), end, 15*time.Second)
	if v, err := s.Query(t.Context(), "q", end); err != nil || len(v) != 1 {
		t.Errorf("instant answer %v, %v", v, err)
	}
	if n := cq.n.Load(); n != 4 {
		t.Errorf("%d requests, want 4 (one range, another step, another start, an instant query)", n)
	}
}
