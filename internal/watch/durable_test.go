package watch

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// replica starts one more Watcher on h's NATS, with its own name, querier
// and lease, as a second process would be; it stops at the end of the test
// or when the returned cancel is called (a crash, for the store: nothing is
// decided or cleaned up on the way out).
func (h *harness) replica(name string, lease time.Duration, s script) (*Watcher, *recorder, context.CancelFunc) {
	h.t.Helper()
	rec := &recorder{t: h.t, pub: &audit.Publisher{JS: h.js}}
	w := &Watcher{
		JS: h.js, Policies: h.set.Load, Querier: &fakeQuerier{script: s, counts: map[string]int{}}, Audit: rec,
		Replica: name, Lease: lease,
		Logger: slog.New(slog.NewTextHandler(h.t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("replica", name),
	}
	w.Register(prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	if err := w.Start(ctx); err != nil {
		h.t.Fatalf("Start %s: %v", name, err)
	}
	h.t.Cleanup(func() { cancel(); w.Wait() })
	return w, rec, cancel
}

// streamRecords reads the audit stream of a run: what was stored, after
// JetStream dropped repeats by message id.
func streamRecords(t *testing.T, h *harness, runID string) []audit.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	recs, err := audit.Read(ctx, h.js, audit.Filter{RunID: runID})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestRunResumesAfterCrash: the process measuring a run dies mid-window; a
// second one takes the run over once the first one's lease lapses, goes on
// from the measurement that was due (missed ones caught up at their own
// times, none repeated, the window not restarted) and decides it once.
func TestRunResumesAfterCrash(t *testing.T) {
	t.Parallel()
	rules := "policies:\n" + policyYAML("shop-orders", shopMatch, "window: 3s\ninterval: 250ms", `
- name: orders
  query: sum(rate(orders_total{service="{{ .Service }}"}[1m]))
  min: 50`)
	h := newHarness(t, rules, always(0)) // never used: the replicas measure
	h.stop()
	lease := 600 * time.Millisecond
	_, rec1, crash := h.replica("a", lease, always(100))

	h.publish(deployEvent("d-resume", "shop", "production", "v2"))
	var id string
	testutil.Eventually(t, 10*time.Second, "3 measurements by replica a", func() bool {
		ms := rec1.ofDeploy("d-resume", audit.Measurement)
		if len(ms) > 0 {
			id = ms[0].RunID
		}
		return len(ms) >= 3
	})
	crash()
	crashed := time.Now()

	_, rec2, _ := h.replica("b", lease, always(100))
	var resumed []audit.Record
	testutil.Eventually(t, 15*time.Second, "the run decided by replica b", func() bool {
		resumed = rec2.ofDeploy("d-resume", RunResumed)
		return len(rec2.ofDeploy("d-resume", verdictKinds...)) > 0
	})
	if len(resumed) != 1 {
		t.Fatalf("%d run.resumed records by b, want 1", len(resumed))
	}
	if took := resumed[0].Time.Sub(crashed); took > 3*lease+time.Second {
		t.Errorf("taken over %s after the crash, want within about the lease (%s)", took, lease)
	}

	recs := streamRecords(t, h, id)
	var startedRecs, verdicts []string
	var evals []time.Time
	var first, end time.Time
	for _, r := range recs {
		switch r.Kind {
		case audit.RunStarted:
			startedRecs = append(startedRecs, r.Message)
			first, end = streamTime(t, r, "first_measurement"), streamTime(t, r, "window_end")
		case audit.RunPassed, audit.RunFailed, audit.RunInconclusive, audit.RunSuperseded:
			verdicts = append(verdicts, r.Kind)
		case audit.Measurement:
			ts, err := time.Parse(time.RFC3339Nano, r.Detail["eval_time"].(string))
			if err != nil {
				t.Fatal(err)
			}
			evals = append(evals, ts)
		}
	}
	if len(startedRecs) != 1 || !slices.Equal(verdicts, []string{audit.RunPassed}) {
		t.Fatalf("run.started %d, verdicts %v; want 1 and [run.passed]", len(startedRecs), verdicts)
	}
	// Every 250ms from the first measurement to the window's end, each
	// once, on the schedule that started with the deploy.
	want := int(end.Sub(first)/(250*time.Millisecond)) + 1
	if len(evals) != want {
		t.Errorf("%d measurements in the audit stream, want %d (from %s to %s every 250ms): %v", len(evals), want, first, end, evals)
	}
	slices.SortFunc(evals, func(a, b time.Time) int { return a.Compare(b) })
	for i, ts := range evals {
		if w := first.Add(time.Duration(i) * 250 * time.Millisecond); !ts.Equal(w) {
			t.Errorf("measurement %d at %s, want %s: one repeated or skipped", i, ts, w)
		}
	}
	// Nothing is left in the store once the run is decided.
	if _, _, err := (&Watcher{runs: mustKV(t, h, RunsBucket)}).load(context.Background(), id); err == nil {
		t.Error("the decided run is still in " + RunsBucket)
	}
}

func mustKV(t *testing.T, h *harness, bucket string) jetstream.KeyValue {
	t.Helper()
	kv, err := h.js.KeyValue(context.Background(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// streamTime is a time in a record read back from the audit stream, where
// it is JSON text.
func streamTime(t *testing.T, r audit.Record, key string) time.Time {
	t.Helper()
	s, _ := r.Detail[key].(string)
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("%s record: detail.%s = %v: %v", r.Kind, key, r.Detail[key], err)
	}
	return ts
}

// resumeAfterWindow starts a run on replica a, kills a after a few
// measurements, and starts it again (the same name: it takes its runs back
// at once) only once the run's window has closed, with the Prometheus
// answers of s. It returns the restarted replica's records and the run id.
func resumeAfterWindow(t *testing.T, deployID, timing string, s script) (*harness, *recorder, string) {
	t.Helper()
	rules := "policies:\n" + policyYAML("late", shopMatch, timing, `
- name: orders
  query: sum(rate(orders_total{service="{{ .Service }}"}[1m]))
  min: 50`)
	h := newHarness(t, rules, always(0)) // never used: the replicas measure
	h.stop()
	lease := 600 * time.Millisecond
	_, rec1, crash := h.replica("a", lease, always(100))
	h.publish(deployEvent(deployID, "shop", "production", "v2"))
	var id string
	var end time.Time
	testutil.Eventually(t, 10*time.Second, "3 measurements by replica a", func() bool {
		if st := rec1.ofDeploy(deployID, audit.RunStarted); len(st) > 0 {
			end = st[0].Detail["window_end"].(time.Time)
		}
		ms := rec1.ofDeploy(deployID, audit.Measurement)
		if len(ms) > 0 {
			id = ms[0].RunID
		}
		return len(ms) >= 3 && !end.IsZero()
	})
	crash()
	time.Sleep(time.Until(end) + 200*time.Millisecond)
	_, rec2, _ := h.replica("a", lease, s)
	testutil.Eventually(t, 30*time.Second, "the resumed run decided", func() bool {
		return len(rec2.ofDeploy(deployID, verdictKinds...)) > 0
	})
	return h, rec2, id
}

// TestResumedAfterWindowCatchesUp: a watcher killed mid-window and started
// again after it catches up every measurement it missed, from a healthy
// Prometheus, and the run passes on all of them. It had one query timeout
// (10ms here) to catch up about 200 measurements: most were skipped, and the
// run passed on the three taken before the crash.
func TestResumedAfterWindowCatchesUp(t *testing.T) {
	t.Parallel()
	h, _, id := resumeAfterWindow(t, "d-late", "window: 2s\ninterval: 10ms", always(100))
	var first, end time.Time
	var evals []time.Time
	var verdicts []audit.Record
	for _, r := range streamRecords(t, h, id) {
		switch r.Kind {
		case audit.RunStarted:
			first, end = streamTime(t, r, "first_measurement"), streamTime(t, r, "window_end")
		case audit.RunPassed, audit.RunFailed, audit.RunInconclusive, audit.RunSuperseded:
			verdicts = append(verdicts, r)
		case audit.Measurement:
			evals = append(evals, streamTime(t, r, "eval_time"))
		}
	}
	if len(verdicts) != 1 || verdicts[0].Kind != audit.RunPassed {
		t.Fatalf("verdicts %v, want one run.passed", verdicts)
	}
	if n, ok := verdicts[0].Detail["skipped_measurements"]; ok {
		t.Errorf("run.passed with skipped_measurements %v: %s", n, verdicts[0].Message)
	}
	if want := int(end.Sub(first)/(10*time.Millisecond)) + 1; len(evals) != want {
		t.Errorf("%d measurements in the audit stream, want %d (from %s to %s every 10ms): missed ones not caught up", len(evals), want, first, end)
	}
}

// TestResumedAfterWindowSlowPrometheus: a run resumed after its window
// whose Prometheus no longer answers cannot catch up: its budget ends,
// what it could not measure is skipped, and it is inconclusive, not
// passed on the measurements from before the crash. No measurement is an
// error for a query cut by the catch-up deadline rather than the query
// timeout.
func TestResumedAfterWindowSlowPrometheus(t *testing.T) {
	t.Parallel()
	hang := func(ctx context.Context, _ string, _ int, _ time.Time) (model.Vector, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	_, rec, _ := resumeAfterWindow(t, "d-hang", "window: 2s\ninterval: 200ms", hang)
	v := rec.ofDeploy("d-hang", verdictKinds...)[0]
	t.Logf("%s: %s (%v)", v.Kind, v.Message, v.Detail)
	if v.Kind != audit.RunInconclusive {
		t.Errorf("verdict %s, want run.inconclusive: measurements were skipped", v.Kind)
	}
	if n, _ := v.Detail["skipped_measurements"].(int); n < 1 {
		t.Errorf("detail.skipped_measurements = %v, want at least 1", v.Detail["skipped_measurements"])
	}
	wantContains(t, v.Kind, v.Message, "skipped: the watcher was down", "on_inconclusive: keep")
	for _, m := range rec.ofDeploy("d-hang", audit.Measurement) {
		if reason := fmt.Sprint(m.Detail["reason"]); !strings.Contains(reason, "no answer within 200ms,") {
			t.Errorf("measurement %q: want an error naming the full query timeout (200ms); a query cut by the catch-up deadline is skipped", reason)
		}
	}
}
