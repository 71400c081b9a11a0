package watch

import (
	"context"
	"sync"
	"time"
)

// The step data of a comparison's resolved query is the same for every run
// that measures it: the runs of one service deployed a minute apart read
// the same range of the same series. A stepStore holds it once, on the
// grid of the comparison's step, and a run's sides are views into it: a
// run keeps no samples of its own, so 10,000 runs cost their number of
// distinct queries in samples, not their number (README "Comparisons").
// Views are never written through: a store only appends past the end of
// what it holds, and any other change (steps put before the first, old
// steps let go) builds new slices, so a judge reading a view while the
// store grows reads what it was given.

// stepKey names the data a store holds: the rendered queries, the grid's
// step, the shift of a moved-back side ({offset: D}, {weeks: N}: the data
// at t - shift is held at t), how several series reduce to one, and for
// canary the label and version that split the series into two lanes.
type stepKey struct {
	query, errors, total string
	step, shift          time.Duration
	aggregate            string
	label, version       string
}

// lane is one side of a store's data: the values (errors, for counts) of
// its steps in time order, step i's at v[off[i]:off[i+1]], and the
// requests of a count comparison beside them.
type lane struct {
	off      []int32
	v, total []float64
}

// laneCanary and laneOthers are a canary store's lanes; a store that does
// not split has laneCanary only.
const (
	laneCanary = 0
	laneOthers = 1
)

// stepStore is one key's steps: base is the grid index (Unix time / step)
// of the first step held, n how many follow without a gap.
type stepStore struct {
	key    stepKey
	counts bool
	split  bool

	// fetching lets one look at a time fetch what the store lacks; the
	// others wait for it, and then usually find what they need.
	fetching chan struct{}

	mu    sync.Mutex
	base  int64
	n     int
	lanes [2]lane
	// keep is how far back from its newest step the store must hold: the
	// longest window and lookback of the runs reading it. Zero keeps all.
	keep time.Duration
	// used is the latest look time that read the store; stores unused for
	// longer than keep are let go.
	used time.Time
}

func newStepStore(key stepKey, counts bool) *stepStore {
	return &stepStore{key: key, counts: counts, split: key.label != "", fetching: make(chan struct{}, 1)}
}

// index is t's step on the store's grid.
func (s *stepStore) index(t time.Time) int64 {
	return gridFloor(t, s.key.step).UnixNano() / int64(s.key.step)
}

// stepTime is the time of grid step i.
func (s *stepStore) stepTime(i int64) time.Time { return time.Unix(0, i*int64(s.key.step)).UTC() }

// missing is what the store lacks of steps from..to: a range before what
// it holds and one after it (either may be empty: lo > hi).
func (s *stepStore) missing(from, to int64) (bLo, bHi, aLo, aHi int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == 0 {
		return 1, 0, from, to
	}
	last := s.base + int64(s.n) - 1
	bLo, bHi, aLo, aHi = from, min(to, s.base-1), max(from, last+1), to
	return bLo, bHi, aLo, aHi
}

// ensure makes the store hold the steps from..to, fetching what it lacks
// through fetch (which returns the steps' data in time order, canary
// lane first).
func (s *stepStore) ensure(ctx context.Context, from, to time.Time, fetch func(from, to time.Time) (in, out []datum, err error)) error {
	fi, ti := s.index(from), s.index(to)
	if fi > ti {
		return nil
	}
	if bLo, bHi, aLo, aHi := s.missing(fi, ti); bLo > bHi && aLo > aHi {
		return nil
	}
	select {
	case s.fetching <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.fetching }()
	bLo, bHi, aLo, aHi := s.missing(fi, ti)
	if bLo <= bHi {
		in, out, err := fetch(s.stepTime(bLo), s.stepTime(bHi))
		if err != nil {
			return err
		}
		s.prepend(bLo, bHi, in, out)
	}
	if aLo <= aHi {
		in, out, err := fetch(s.stepTime(aLo), s.stepTime(aHi))
		if err != nil {
			return err
		}
		s.append(aLo, aHi, in, out)
	}
	return nil
}

// laid lays data out on steps lo..hi of the grid: the lane of those steps
// alone.
func (s *stepStore) laid(lo, hi int64, data []datum) lane {
	l := lane{off: make([]int32, 0, hi-lo+2), v: make([]float64, 0, len(data))}
	if s.counts {
		l.total = make([]float64, 0, len(data))
	}
	j := 0
	for i := lo; i <= hi; i++ {
		l.off = append(l.off, int32(len(l.v)))
		for ; j < len(data); j++ {
			k := data[j].t.Time().UnixNano() / int64(s.key.step)
			if k < i {
				continue // off the grid: not a step of this store
			}
			if k > i {
				break
			}
			l.v = append(l.v, data[j].v)
			if s.counts {
				l.total = append(l.total, data[j].total)
			}
		}
	}
	l.off = append(l.off, int32(len(l.v)))
	return l
}

// append adds steps lo..hi (lo the step after the last held, or the
// first of an empty store) and lets go of steps older than keep.
func (s *stepStore) append(lo, hi int64, in, out []datum) {
	add := [2]lane{s.laid(lo, hi, in)}
	if s.split {
		add[laneOthers] = s.laid(lo, hi, out)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == 0 {
		s.base, s.n, s.lanes = lo, int(hi-lo+1), add
		return
	}
	if lo != s.base+int64(s.n) {
		return // another look got there first
	}
	for k := range s.lanes {
		if k == laneOthers && !s.split {
			break
		}
		l, a := &s.lanes[k], add[k]
		end := l.off[len(l.off)-1]
		for _, o := range a.off[1:] {
			l.off = append(l.off, end+o)
		}
		l.v = append(l.v, a.v...)
		if s.counts {
			l.total = append(l.total, a.total...)
		}
	}
	s.n += int(hi - lo + 1)
	s.trim()
}

// prepend adds steps lo..hi before the first held (hi = base - 1).
func (s *stepStore) prepend(lo, hi int64, in, out []datum) {
	add := [2]lane{s.laid(lo, hi, in)}
	if s.split {
		add[laneOthers] = s.laid(lo, hi, out)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == 0 || hi != s.base-1 {
		if s.n == 0 {
			s.base, s.n, s.lanes = lo, int(hi-lo+1), add
		}
		return
	}
	for k := range s.lanes {
		if k == laneOthers && !s.split {
			break
		}
		l, a := &s.lanes[k], add[k]
		shift := a.off[len(a.off)-1]
		off := make([]int32, 0, len(a.off)+len(l.off)-1)
		off = append(off, a.off[:len(a.off)-1]...)
		for _, o := range l.off {
			off = append(off, o+shift)
		}
		l.off = off
		l.v = append(a.v[:len(a.v):len(a.v)], l.v...)
		if s.counts {
			l.total = append(a.total[:len(a.total):len(a.total)], l.total...)
		}
	}
	s.base, s.n = lo, s.n+int(hi-lo+1)
}

// trim lets go of the steps older than keep before the newest, once they
// are more than half of what the store holds: copying the rest then costs
// no more than the appends that made them.
func (s *stepStore) trim() {
	if s.keep <= 0 {
		return
	}
	drop := int64(s.n) - int64(s.keep/s.key.step) - 2
	if drop <= 0 || drop < int64(s.n)/2 {
		return
	}
	for k := range s.lanes {
		if k == laneOthers && !s.split {
			break
		}
		l := &s.lanes[k]
		first := l.off[drop]
		off := make([]int32, 0, len(l.off)-int(drop))
		for _, o := range l.off[drop:] {
			off = append(off, o-first)
		}
		l.off = off
		l.v = append([]float64(nil), l.v[first:]...)
		if s.counts {
			l.total = append([]float64(nil), l.total[first:]...)
		}
	}
	s.base += drop
	s.n -= int(drop)
}

// view is lane k's data of steps from..to that the store holds: values
// and (for counts) requests, as slices the caller must not write.
func (s *stepStore) view(k int, from, to time.Time) (v, total []float64) {
	fi, ti := s.index(from), s.index(to)
	s.mu.Lock()
	defer s.mu.Unlock()
	fi, ti = max(fi, s.base), min(ti, s.base+int64(s.n)-1)
	if fi > ti || s.n == 0 {
		return nil, nil
	}
	l := &s.lanes[k]
	a, b := l.off[fi-s.base], l.off[ti-s.base+1]
	v = l.v[a:b:b]
	if s.counts {
		total = l.total[a:b:b]
	}
	return v, total
}

// eachStep calls fn with lane k's values of each step from..to the store
// holds, in time order.
func (s *stepStore) eachStep(k int, from, to time.Time, fn func(step int64, vs []float64)) {
	fi, ti := s.index(from), s.index(to)
	s.mu.Lock()
	fi, ti = max(fi, s.base), min(ti, s.base+int64(s.n)-1)
	l := s.lanes[k]
	base := s.base
	s.mu.Unlock()
	for i := fi; i <= ti; i++ {
		a, b := l.off[i-base], l.off[i-base+1]
		fn(i, l.v[a:b:b])
	}
}

// stepStores is the watcher's stores, by key. A nil *stepStores gives
// every look stores of its own (a replay, a preview: one run, no one to
// share with).
type stepStores struct {
	mu     sync.Mutex
	stores map[stepKey]*stepStore
	swept  time.Time
}

func newStepStores() *stepStores { return &stepStores{stores: map[stepKey]*stepStore{}} }

// get returns the store of key, for a run that needs keep of it and looks
// at ts. Stores no look has read for longer than their keep are let go
// once a minute of look time: the runs that read them have ended.
func (ss *stepStores) get(key stepKey, counts bool, keep time.Duration, ts time.Time) *stepStore {
	if ss == nil {
		s := newStepStore(key, counts)
		s.used = ts
		return s
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ts.Sub(ss.swept) > time.Minute {
		for k, s := range ss.stores {
			s.mu.Lock()
			idle := ts.Sub(s.used) > s.keep+time.Minute
			s.mu.Unlock()
			if idle {
				delete(ss.stores, k)
			}
		}
		ss.swept = ts
	}
	s := ss.stores[key]
	if s == nil {
		s = newStepStore(key, counts)
		ss.stores[key] = s
	}
	s.mu.Lock()
	s.keep = max(s.keep, keep)
	if ts.After(s.used) {
		s.used = ts
	}
	s.mu.Unlock()
	return s
}
