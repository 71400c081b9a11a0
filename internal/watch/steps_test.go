package watch

import (
	"context"
	"errors"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"
)

// gridData is one datum per step from..to (step s), valued by f.
func gridData(from, to time.Time, s time.Duration, f func(time.Time) float64) []datum {
	var out []datum
	for t := from; !t.After(to); t = t.Add(s) {
		out = append(out, datum{t: model.TimeFromUnixNano(t.UnixNano()), v: f(t), total: 10 * f(t)})
	}
	return out
}

// TestStepStore: a store fetches only what it lacks, before and after what
// it holds; views are the steps asked for; a view taken before the store
// grew, was put in front of, or let go of old steps still reads what it
// was given.
func TestStepStore(t *testing.T) {
	step := time.Second
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	val := func(t time.Time) float64 { return float64(t.Sub(t0) / step) }
	s := newStepStore(stepKey{errors: "e", total: "t", step: step}, true)
	var fetched [][2]time.Time
	fetch := func(from, to time.Time) ([]datum, []datum, error) {
		fetched = append(fetched, [2]time.Time{from, to})
		var data []datum
		for _, d := range gridData(from, to, step, val) {
			if val(d.t.Time()) != 7 { // a step without data
				data = append(data, d)
			}
		}
		return data, nil, nil
	}
	ctx := context.Background()
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * step) }
	if err := s.ensure(ctx, at(5), at(10), fetch); err != nil {
		t.Fatal(err)
	}
	v, total := s.view(laneCanary, at(5), at(10))
	if !slices.Equal(v, []float64{5, 6, 8, 9, 10}) || !slices.Equal(total, []float64{50, 60, 80, 90, 100}) {
		t.Fatalf("view 5..10 = %v %v", v, total)
	}
	held := v
	if err := s.ensure(ctx, at(2), at(12), fetch); err != nil {
		t.Fatal(err)
	}
	want := [][2]time.Time{{at(5), at(10)}, {at(2), at(4)}, {at(11), at(12)}}
	if !slices.Equal(fetched, want) {
		t.Fatalf("fetched %v, want %v", fetched, want)
	}
	if err := s.ensure(ctx, at(3), at(12), fetch); err != nil || len(fetched) != 3 {
		t.Fatalf("held steps fetched again: %v, %v", fetched, err)
	}
	if v, _ := s.view(laneCanary, at(2), at(12)); !slices.Equal(v, []float64{2, 3, 4, 5, 6, 8, 9, 10, 11, 12}) {
		t.Fatalf("view 2..12 = %v", v)
	}
	if v, _ := s.view(laneCanary, at(0), at(3)); !slices.Equal(v, []float64{2, 3}) {
		t.Fatalf("view 0..3 = %v: want what the store holds of it", v)
	}

	// Keep 4 steps: growing to step 40 lets go of the old ones.
	s.keep = 4 * step
	if err := s.ensure(ctx, at(13), at(40), fetch); err != nil {
		t.Fatal(err)
	}
	if s.base != s.index(at(35)) || s.n != 6 {
		t.Errorf("store holds %d steps from +%ds, want 6 from +35s (keep 4 and 2 more)", s.n, s.base-s.index(t0))
	}
	if v, _ := s.view(laneCanary, at(35), at(40)); !slices.Equal(v, []float64{35, 36, 37, 38, 39, 40}) {
		t.Errorf("view 35..40 after trimming = %v", v)
	}
	if !slices.Equal(held, []float64{5, 6, 8, 9, 10}) || cap(held) != len(held) {
		t.Errorf("a view taken before changed: %v (cap %d)", held, cap(held))
	}

	// A failed fetch leaves the store as it was.
	boom := errors.New("boom")
	n := s.n
	if err := s.ensure(ctx, at(41), at(45), func(time.Time, time.Time) ([]datum, []datum, error) { return nil, nil, boom }); !errors.Is(err, boom) || s.n != n {
		t.Errorf("failed fetch: err %v, %d steps (was %d)", err, s.n, n)
	}
}

// TestStepStoreCanary: a canary store splits one fetch into two lanes.
func TestStepStoreCanary(t *testing.T) {
	step := time.Second
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	s := newStepStore(stepKey{query: "q", step: step, label: "version", version: "v2"}, false)
	err := s.ensure(context.Background(), t0, t0.Add(2*step), func(from, to time.Time) ([]datum, []datum, error) {
		in := gridData(from, to, step, func(time.Time) float64 { return 1 })
		var out []datum
		for _, d := range gridData(from, to, step, func(time.Time) float64 { return 2 }) {
			out = append(out, d, d) // two other hosts
		}
		return in, out, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := s.view(laneCanary, t0, t0.Add(2*step))
	o, _ := s.view(laneOthers, t0, t0.Add(step))
	if !slices.Equal(c, []float64{1, 1, 1}) || !slices.Equal(o, []float64{2, 2, 2, 2}) {
		t.Errorf("canary %v, others %v", c, o)
	}
}

// TestStepStoresShared: runs asking for the same key get the same store;
// a store no look read for longer than its keep is let go.
func TestStepStoresShared(t *testing.T) {
	ss := newStepStores()
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	k := stepKey{query: "q", step: time.Second}
	a := ss.get(k, false, time.Minute, t0)
	if b := ss.get(k, false, 2*time.Minute, t0.Add(time.Second)); b != a || a.keep != 2*time.Minute {
		t.Fatalf("same key, another store (or keep %s)", a.keep)
	}
	other := ss.get(stepKey{query: "q", step: 2 * time.Second}, false, time.Minute, t0)
	if other == a {
		t.Fatal("another step, the same store")
	}
	ss.get(stepKey{query: "r", step: time.Second}, false, time.Minute, t0.Add(10*time.Minute))
	if c := ss.get(k, false, time.Minute, t0.Add(10*time.Minute)); c == a || len(ss.stores) != 2 {
		t.Errorf("an idle store was kept: %d stores", len(ss.stores))
	}
	var none *stepStores
	if first, second := none.get(k, false, 0, t0), none.get(k, false, 0, t0); first == second {
		t.Error("without a registry, two looks share a store")
	}
}

func TestStepMedians(t *testing.T) {
	step := time.Second
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	store := func(vs ...float64) *stepStore {
		s := newStepStore(stepKey{query: "q", step: step}, false)
		_ = s.ensure(context.Background(), t0, t0.Add(time.Duration(len(vs)-1)*step), func(from, to time.Time) ([]datum, []datum, error) {
			var out []datum
			for i, v := range vs {
				out = append(out, datum{t: model.TimeFromUnixNano(t0.Add(time.Duration(i) * step).UnixNano()), v: v})
			}
			return out, nil, nil
		})
		return s
	}
	got := stepMedians([]*stepStore{store(100, 101, 102), store(20, 21, math.NaN()), store(98, 99, 100, 7)}, t0, t0.Add(10*step))
	want := []float64{98, 99, 101, 7}
	if !slices.Equal(got, want) {
		t.Errorf("stepMedians = %v, want %v", got, want)
	}
}

// TestStepStoreConcurrent: looks of many runs reading and growing one
// store at once (run with -race) each see whole steps, in order, and the
// store fetches each step once. (With keep set, a run far behind the
// others would fetch again the old steps the store let go.)
func TestStepStoreConcurrent(t *testing.T) {
	step := time.Second
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	val := func(t time.Time) float64 { return float64(t.Sub(t0) / step) }
	s := newStepStore(stepKey{query: "q", step: step}, false)
	var mu sync.Mutex
	fetched := map[int64]int{}
	fetch := func(from, to time.Time) ([]datum, []datum, error) {
		mu.Lock()
		for i := s.index(from); i <= s.index(to); i++ {
			fetched[i]++
		}
		mu.Unlock()
		return gridData(from, to, step, val), nil, nil
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for k := range 60 {
				end := t0.Add(time.Duration(k+g%3) * step)
				from := end.Add(-5 * step)
				if err := s.ensure(context.Background(), from, end, fetch); err != nil {
					t.Error(err)
					return
				}
				v, _ := s.view(laneCanary, from, end)
				for i := 1; i < len(v); i++ {
					if v[i] != v[i-1]+1 {
						t.Errorf("view %s..%s = %v: not the steps in order", from, end, v)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	for i, n := range fetched {
		if n > 1 {
			t.Errorf("step +%ds fetched %d times", i-s.index(t0), n)
		}
	}
}
