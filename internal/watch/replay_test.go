package watch

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/events"
)

// TestReplay: a past deploy replayed measurement by measurement, each at
// its own time, decides as a live run would: failed at the measurement
// that failed it, passed at the window's end; a window still open is not
// replayed.
func TestReplay(t *testing.T) {
	set := loadRules(t, comparePolicy(`
- name: errors
  query: errors_ratio{service="{{ .Service }}"}
  max: 0.05
  failure_limit: 1`))
	p := set.Policies[0]
	start := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	now := start.Add(time.Hour)
	d := events.Deploy{ID: "d-1", Service: "shop", Environment: "production", Version: "v2"}
	// Bad from 1s after the start: measurements at 1.2s and 1.5s fail.
	bad := func(_ context.Context, _ string, _ int, ts time.Time) (model.Vector, error) {
		if ts.Sub(start) >= time.Second {
			return vec(0.2), nil
		}
		return vec(0.01), nil
	}
	q := &fakeQuerier{script: bad, counts: map[string]int{}}
	got, err := Replay(context.Background(), q, p, d, start, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	if got.Verdict != VerdictFailed || !got.Rollback || got.Check != "errors" || !got.Decided.Equal(start.Add(1500*time.Millisecond)) {
		t.Errorf("replayed %s (rollback %v) by %q at +%s: %s; want failed by errors at +1.5s", got.Verdict, got.Rollback, got.Check, got.Decided.Sub(start), got.Reason)
	}
	if n := len(got.Measurements); n != 6 {
		t.Errorf("%d measurements, want 6 (0 to 1.5s every 300ms)", n)
	}
	for _, c := range q.calls {
		if c.TS.After(got.Decided) {
			t.Errorf("query at +%s, after the decision at +%s", c.TS.Sub(start), got.Decided.Sub(start))
		}
	}
	if m := got.Measurements[len(got.Measurements)-1]; m.Outcome != "fail" || !strings.Contains(m.Message, "0.2 > max 0.05 (failure 2 of limit 1)") {
		t.Errorf("last measurement %s: %s", m.Outcome, m.Message)
	}

	good := &fakeQuerier{script: always(0.01), counts: map[string]int{}}
	got, err = Replay(context.Background(), good, p, d, start, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	if got.Verdict != VerdictPassed || got.Rollback || got.Check != "" || !got.Decided.Equal(start.Add(3*time.Second)) {
		t.Errorf("replayed %s by %q at +%s: %s; want passed at the window's end (+3s)", got.Verdict, got.Check, got.Decided.Sub(start), got.Reason)
	}

	if _, err := Replay(context.Background(), good, p, d, now.Add(-time.Second), 0, now); !errors.Is(err, ErrWindowOpen) {
		t.Errorf("replay of a window still open: %v, want ErrWindowOpen", err)
	}
}
