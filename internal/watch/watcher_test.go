package watch

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

const shopMatch = "{service: shop, environment: production}"

// runID is the run a deploy started, from its run.started record.
func runID(h *harness, deployID string) string {
	h.t.Helper()
	return h.waitFor(deployID, audit.RunStarted).RunID
}

// A check past its failure_limit fails the run at its measurement, long
// before the window closes, and the failure becomes exactly one rollback
// request that the executor would accept.
func TestFailingCheckFailsRunAndRequestsRollback(t *testing.T) {
	t.Parallel()
	rules := "policies:\n" + policyYAML("shop-errors", shopMatch, `
window: 3s
interval: 100ms`, `
- name: orders
  query: sum(rate(orders_total{service="{{ .Service }}"}[1m]))
  min: 50
- name: payment-errors
  query: sum(rate(payment_errors_total{service="{{ .Service }}"}[1m]))
  max: 0.05
  failure_limit: 1`)
	h := newHarness(t, rules, byQuery(map[string]script{
		"orders_total":         always(100),
		"payment_errors_total": always(0.5),
	}))

	h.publish(deployEvent("d-fail", "shop", "production", "2026.11.25-1",
		"previous_version", "2026.11.24-3",
		"hosts", []string{"web1.example.com:22", "web2.example.com"},
		"labels", map[string]string{"team": "payments"}))

	started := h.waitFor("d-fail", audit.RunStarted)
	id := started.RunID
	windowEnd := detailTime(t, started, "window_end")
	failed := h.waitFor("d-fail", verdictKinds...)
	if failed.Kind != audit.RunFailed {
		t.Fatalf("verdict %s (%s), want %s", failed.Kind, failed.Message, audit.RunFailed)
	}
	if !failed.Time.Before(windowEnd) {
		t.Errorf("run.failed recorded at %s, not before the window end %s: a failure must end the run at once", failed.Time, windowEnd)
	}

	// The two failing measurements of payment-errors (failure_limit 1), and
	// the passing ones of orders, come before the verdict.
	var errMeas, orderMeas []audit.Record
	for _, rec := range h.rec.ofDeploy("d-fail") {
		if rec.Kind != audit.Measurement {
			continue
		}
		if !rec.Time.Before(failed.Time) && !rec.Time.Equal(failed.Time) {
			t.Errorf("measurement %q recorded after the verdict", rec.Message)
		}
		switch rec.Detail["check"] {
		case "payment-errors":
			errMeas = append(errMeas, rec)
		case "orders":
			orderMeas = append(orderMeas, rec)
		}
	}
	if len(errMeas) != 2 {
		t.Fatalf("%d payment-errors measurements, want 2 (failure_limit 1 fails the check at the second failure)", len(errMeas))
	}
	for i, m := range errMeas {
		if m.Detail["outcome"] != "fail" || counts(t, m)["fail"] != i+1 {
			t.Errorf("measurement %d: outcome %v counts %v, want fail with %d failures", i, m.Detail["outcome"], m.Detail["counts"], i+1)
		}
		if want := fmt.Sprintf("payment-errors = 0.5 > max 0.05 (failure %d of limit 1)", i+1); m.Message != want {
			t.Errorf("measurement message %q, want %q", m.Message, want)
		}
	}
	if len(orderMeas) != 2 {
		t.Errorf("%d orders measurements, want 2 (measured with payment-errors)", len(orderMeas))
	}

	for _, want := range []string{"payment-errors", "0.5 > max 0.05", "failure 2 of limit 1", "rb-" + id} {
		if !strings.Contains(failed.Message, want) {
			t.Errorf("run.failed message %q does not say %q", failed.Message, want)
		}
	}
	if strings.Contains(failed.Message, "check orders") {
		t.Errorf("run.failed message %q names the passing check", failed.Message)
	}
	if failed.RunID != id || failed.Policy != "shop-errors" || failed.Version != "2026.11.25-1" {
		t.Errorf("run.failed record %+v: wrong run, policy or version", failed)
	}
	if failed.Detail["request_id"] != "rb-"+id {
		t.Errorf("run.failed detail.request_id = %v, want rb-%s", failed.Detail["request_id"], id)
	}
	checks, _ := failed.Detail["checks"].([]map[string]any)
	if len(checks) != 1 || checks[0]["check"] != "payment-errors" || checks[0]["failures"] != 2 || checks[0]["failure_limit"] != 1 {
		t.Errorf("run.failed detail.checks = %#v, want payment-errors with 2 failures of limit 1", failed.Detail["checks"])
	}

	// Exactly one request on rollbacks.production.shop, valid for the
	// executor's decoder, with what it needs to roll back.
	var msgs []*jetstream.RawStreamMsg
	testutil.Eventually(t, 10*time.Second, "a rollback request", func() bool {
		msgs = h.rollbacks()
		return len(msgs) > 0
	})
	h.stop() // nothing more can be published once Wait returns
	msgs = h.rollbacks()
	if len(msgs) != 1 {
		t.Fatalf("%d rollback requests, want exactly 1", len(msgs))
	}
	m := msgs[0]
	if m.Subject != "rollbacks.production.shop" {
		t.Errorf("request on %s, want rollbacks.production.shop", m.Subject)
	}
	if got := m.Header.Get(nats.MsgIdHdr); got != "rb-"+id {
		t.Errorf("Nats-Msg-Id %q, want rb-%s (so a resend is dropped)", got, id)
	}
	req, err := events.DecodeRollbackRequest(m.Subject, m.Data)
	if err != nil {
		t.Fatalf("the executor would reject the request: %v\n%s", err, m.Data)
	}
	if req.ID != "rb-"+id || req.RunID != id || req.DeployID != "d-fail" {
		t.Errorf("request ids %q/%q/%q, want rb-%s/%s/d-fail", req.ID, req.RunID, req.DeployID, id, id)
	}
	if req.Service != "shop" || req.Environment != "production" || req.Version != "2026.11.25-1" || req.ToVersion != "2026.11.24-3" {
		t.Errorf("request %+v: want shop/production from 2026.11.25-1 to 2026.11.24-3", req)
	}
	if strings.Join(req.Hosts, ",") != "web1.example.com:22,web2.example.com" || req.Labels["team"] != "payments" || len(req.Labels) != 1 {
		t.Errorf("request hosts %v labels %v, want the event's", req.Hosts, req.Labels)
	}
	if req.Policy != "shop-errors" || req.Source != events.SourceValidation {
		t.Errorf("request policy %q source %q, want shop-errors/validation", req.Policy, req.Source)
	}
	if n := len([]rune(req.Reason)); n == 0 || n > events.MaxReasonLen || !strings.Contains(req.Reason, "payment-errors") {
		t.Errorf("request reason %q (%d runes): want one naming payment-errors, at most %d runes", req.Reason, n, events.MaxReasonLen)
	}

	// The run is over: no record about it after the verdict.
	last := h.rec.ofDeploy("d-fail")
	if final := last[len(last)-1]; final.Kind != audit.RunFailed {
		t.Errorf("last record of the run is %s %q, want run.failed", final.Kind, final.Message)
	}
	if v := h.mustMetric("watcher_runs_total", "verdict", "failed"); v != 1 {
		t.Errorf("watcher_runs_total{verdict=failed} = %v, want 1", v)
	}
}

// Many checks failing at once make a long reason; the request still carries
// at most MaxReasonLen runes, so the executor accepts it.
func TestRollbackReasonIsClamped(t *testing.T) {
	t.Parallel()
	var checks []string
	for i := range 12 {
		checks = append(checks, fmt.Sprintf(`- name: check-%02d-%s
  query: sum(up{service="{{ .Service }}"})
  min: 1`, i, strings.Repeat("x", 100)))
	}
	rules := "policies:\n" + policyYAML("shop-many", shopMatch, "window: 2s\ninterval: 200ms", strings.Join(checks, "\n"))
	h := newHarness(t, rules, always(0))
	h.publish(deployEvent("d-many", "shop", "production", "2", "previous_version", "1"))
	failed := h.waitFor("d-many", verdictKinds...)
	if failed.Kind != audit.RunFailed {
		t.Fatalf("verdict %s, want run.failed", failed.Kind)
	}
	if n := len(h.rec.ofDeploy("d-many", audit.Measurement)); n != 12 {
		t.Errorf("%d measurements, want 12 (one each, failure_limit 0)", n)
	}
	var msgs []*jetstream.RawStreamMsg
	testutil.Eventually(t, 10*time.Second, "a rollback request", func() bool {
		msgs = h.rollbacks()
		return len(msgs) == 1
	})
	req, err := events.DecodeRollbackRequest(msgs[0].Subject, msgs[0].Data)
	if err != nil {
		t.Fatalf("the executor would reject the request: %v", err)
	}
	if n := len([]rune(req.Reason)); n != events.MaxReasonLen {
		t.Errorf("reason has %d runes, want it clamped to %d", n, events.MaxReasonLen)
	}
	if !strings.HasPrefix(req.Reason, "check check-00-") {
		t.Errorf("reason %.80q... does not start with the first failed check", req.Reason)
	}
}

// A healthy run is decided only when its window closes, after the number
// of measurements its schedule allows.
func TestHealthyRunPassesWhenWindowCloses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name                    string
		window, interval, delay time.Duration
	}{
		{"no initial delay, window not a multiple of interval", time.Second, 300 * time.Millisecond, 0},
		{"window a multiple of interval", time.Second, 250 * time.Millisecond, 0},
		{"initial delay", 1500 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond},
		{"delay as long as the window", time.Second, 300 * time.Millisecond, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			timing := fmt.Sprintf("window: %dms\ninterval: %dms\ninitial_delay: %dms",
				tc.window.Milliseconds(), tc.interval.Milliseconds(), tc.delay.Milliseconds())
			rules := "policies:\n" + policyYAML("shop-orders", shopMatch, timing, `
- name: orders
  query: sum(rate(orders_total{service="{{ .Service }}"}[1m])) * 60
  min: 50`)
			h := newHarness(t, rules, always(120))
			published := time.Now()
			h.publish(deployEvent("d-ok", "shop", "production", "2026.11.25-1", "previous_version", "2026.11.24-3"))
			started := h.waitFor("d-ok", audit.RunStarted)
			windowEnd := detailTime(t, started, "window_end")
			first := detailTime(t, started, "first_measurement")
			// The first measurement is on the interval's grid (runs share
			// queries): up to one interval after start + initial_delay.
			if got, want := windowEnd.Sub(first), tc.window-tc.delay; got > want || got <= want-tc.interval && want > 0 {
				t.Errorf("run.started: first measurement %s, window end %s: %s apart, want %s less up to one interval (%s)", first, windowEnd, got, want, tc.interval)
			}

			passed := h.waitFor("d-ok", verdictKinds...)
			if passed.Kind != audit.RunPassed {
				t.Fatalf("verdict %s (%s), want run.passed", passed.Kind, passed.Message)
			}
			if passed.Time.Before(windowEnd) || passed.Time.Before(published.Add(tc.window)) {
				t.Errorf("run.passed at %s, before the window closed (%s; published %s + %s)", passed.Time, windowEnd, published, tc.window)
			}
			if !strings.Contains(passed.Message, "window closed healthy") || passed.Policy != "shop-orders" {
				t.Errorf("run.passed %q policy %q", passed.Message, passed.Policy)
			}

			meas := h.rec.ofDeploy("d-ok", audit.Measurement)
			want := expectedMeasurements(tc.window, tc.interval, tc.delay)
			if n := len(meas); n < want-1 || n > want+1 {
				t.Errorf("%d measurements, want %d (±1): window %s, interval %s, initial_delay %s", n, want, tc.window, tc.interval, tc.delay)
			}
			for i, m := range meas {
				if m.Detail["outcome"] != "pass" || counts(t, m)["pass"] != i+1 {
					t.Errorf("measurement %d: outcome %v counts %v", i, m.Detail["outcome"], m.Detail["counts"])
				}
				if et := detailTime(t, m, "eval_time"); et.Before(first.Add(-time.Millisecond)) || et.After(windowEnd.Add(time.Second)) {
					t.Errorf("measurement %d evaluated at %s, outside [first %s, window end %s]", i, et, first, windowEnd)
				}
				if m.Time.After(passed.Time) {
					t.Errorf("measurement %d recorded after the verdict", i)
				}
			}
			if want := fmt.Sprintf("orders pass %d fail 0", len(meas)); !strings.Contains(passed.Message, want) {
				t.Errorf("run.passed %q does not say %q", passed.Message, want)
			}
			h.stop()
			if msgs := h.rollbacks(); len(msgs) != 0 {
				t.Errorf("%d rollback requests for a healthy run", len(msgs))
			}
		})
	}
}

// No data, NaN, several series and query errors are outcomes of their own:
// never a pass unless the policy says so, and an inconclusive run rolls
// nothing back.
func TestNoDataAndErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		noData   string
		script   script
		verdict  string
		outcomes []string // of the first measurements
		message  string   // in the verdict
		rollback bool
	}{
		{name: "no data", script: steps(empty), verdict: audit.RunInconclusive,
			outcomes: []string{"inconclusive", "inconclusive"}, message: "check orders is inconclusive: no usable measurement (inconclusive"},
		{name: "query errors only", script: steps(fails("connection refused")), verdict: audit.RunInconclusive,
			outcomes: []string{"error", "error"}, message: "(inconclusive 0, error"},
		{name: "NaN only", script: always(math.NaN()), verdict: audit.RunInconclusive,
			outcomes: []string{"inconclusive"}, message: "no usable measurement"},
		{name: "several series", script: always(70, 80), verdict: audit.RunInconclusive,
			outcomes: []string{"error"}, message: "no usable measurement"},
		{name: "errors then data", script: steps(fails("timeout"), empty, val(75)), verdict: audit.RunPassed,
			outcomes: []string{"error", "inconclusive", "pass"}, message: "orders pass"},
		{name: "no_data fail", noData: "fail", script: steps(empty), verdict: audit.RunFailed,
			outcomes: []string{"fail"}, message: "check orders failed: no data (failure 1 of limit 0)", rollback: true},
		{name: "no_data pass", noData: "pass", script: steps(empty), verdict: audit.RunPassed,
			outcomes: []string{"pass", "pass"}, message: "window closed healthy"},
		{name: "no_data fail, errors are not no data", noData: "fail", script: steps(fails("bad gateway")), verdict: audit.RunInconclusive,
			outcomes: []string{"error"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			check := `
- name: orders
  query: sum(rate(orders_total{service="{{ .Service }}"}[1m])) * 60
  min: 50`
			if tc.noData != "" {
				check += "\n  no_data: " + tc.noData
			}
			rules := "policies:\n" + policyYAML("shop-orders", shopMatch, "window: 1s\ninterval: 200ms", check)
			h := newHarness(t, rules, tc.script)
			h.publish(deployEvent("d-1", "shop", "production", "2", "previous_version", "1"))
			verdict := h.waitFor("d-1", verdictKinds...)
			if verdict.Kind != tc.verdict {
				t.Fatalf("verdict %s (%s), want %s", verdict.Kind, verdict.Message, tc.verdict)
			}
			if !strings.Contains(verdict.Message, tc.message) {
				t.Errorf("verdict message %q does not say %q", verdict.Message, tc.message)
			}
			meas := h.rec.ofDeploy("d-1", audit.Measurement)
			if len(meas) < len(tc.outcomes) {
				t.Fatalf("%d measurements, want at least %d", len(meas), len(tc.outcomes))
			}
			for i, want := range tc.outcomes {
				if got := meas[i].Detail["outcome"]; got != want {
					t.Errorf("measurement %d: outcome %v (%s), want %s", i, got, meas[i].Message, want)
				}
			}
			h.stop()
			msgs := h.rollbacks()
			if tc.rollback && len(msgs) != 1 || !tc.rollback && len(msgs) != 0 {
				t.Errorf("%d rollback requests, want %v", len(msgs), tc.rollback)
			}
			if v := h.mustMetric("watcher_runs_total", "verdict", strings.TrimPrefix(tc.verdict, "run.")); v != 1 {
				t.Errorf("watcher_runs_total{verdict=%s} = %v, want 1", strings.TrimPrefix(tc.verdict, "run."), v)
			}
		})
	}
}

// A pre_deploy baseline is the check's query evaluated at the deploy's
// time, and min_ratio is judged against it.
func TestBaselinePreDeploy(t *testing.T) {
	t.Parallel()
	const query = `sum(rate(orders_total{service="shop"}[5m]))`
	rules := "policies:\n" + policyYAML("shop-vs-before", shopMatch, "window: 1s\ninterval: 200ms", `
- name: orders-vs-before
  query: sum(rate(orders_total{service="{{ .Service }}"}[5m]))
  baseline: pre_deploy
  min_ratio: 0.8`)
	deployTime := time.Now().Add(-90 * time.Second).Truncate(time.Millisecond).UTC()
	// atDeploy answers the baseline (a query at the deploy's time) with
	// before, and the measurements with after.
	atDeploy := func(before step, after float64) script {
		baselines := 0
		return func(_ context.Context, _ string, _ int, ts time.Time) (model.Vector, error) {
			if ts.Equal(deployTime) {
				baselines++ // the watcher asks one query at a time per run
				if baselines == 1 {
					return before.v, before.err
				}
				return vec(100), nil
			}
			return vec(after), nil
		}
	}
	for _, tc := range []struct {
		name      string
		script    script
		eventTime time.Time
		verdict   string
		first     map[string]any // detail of the first measurement
		baselines int            // queries at the deploy time
	}{
		{name: "below min_ratio", script: atDeploy(val(100), 50), eventTime: deployTime, verdict: audit.RunFailed,
			first:     map[string]any{"outcome": "fail", "baseline": 100.0, "ratio": 0.5, "threshold": "min_ratio 0.8", "reason": "0.5 x baseline 100 < min_ratio 0.8"},
			baselines: 1},
		{name: "above min_ratio", script: atDeploy(val(100), 90), eventTime: deployTime, verdict: audit.RunPassed,
			first:     map[string]any{"outcome": "pass", "baseline": 100.0, "ratio": 0.9, "value": 90.0},
			baselines: 1},
		{name: "baseline retried until it has data", script: atDeploy(empty, 90), eventTime: deployTime, verdict: audit.RunPassed,
			first:     map[string]any{"outcome": "inconclusive", "baseline": nil, "ratio": nil, "reason": "no baseline"},
			baselines: 2},
		{name: "baseline query error", script: atDeploy(fails("timeout"), 90), eventTime: deployTime, verdict: audit.RunPassed,
			first:     map[string]any{"outcome": "inconclusive", "reason": "no baseline"},
			baselines: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, rules, tc.script)
			h.publish(deployEvent("d-b", "shop", "production", "2", "time", tc.eventTime.Format(time.RFC3339Nano)))
			verdict := h.waitFor("d-b", verdictKinds...)
			if verdict.Kind != tc.verdict {
				t.Fatalf("verdict %s (%s), want %s", verdict.Kind, verdict.Message, tc.verdict)
			}
			calls := h.q.callsFor("orders_total")
			if len(calls) == 0 || !calls[0].TS.Equal(tc.eventTime) || calls[0].Query != query {
				t.Fatalf("first query %+v, want %s at the deploy time %s", calls, query, tc.eventTime)
			}
			n := 0
			for _, c := range calls {
				if c.TS.Equal(tc.eventTime) {
					n++
				}
			}
			if n != tc.baselines {
				t.Errorf("%d baseline queries at the deploy time, want %d", n, tc.baselines)
			}
			first := h.rec.ofDeploy("d-b", audit.Measurement)[0]
			for k, want := range tc.first {
				got := first.Detail[k]
				if p, ok := got.(*float64); ok {
					if p == nil {
						got = nil
					} else {
						got = *p
					}
				}
				if got != want {
					t.Errorf("first measurement detail.%s = %v, want %v (%s)", k, got, want, first.Message)
				}
			}
		})
	}

	// An event time in the future is not plausible: the baseline is taken
	// at the event's arrival instead.
	t.Run("event time in the future", func(t *testing.T) {
		t.Parallel()
		future := time.Now().Add(time.Hour).Truncate(time.Second).UTC()
		h := newHarness(t, rules, steps(val(100), val(90)))
		published := time.Now()
		h.publish(deployEvent("d-f", "shop", "production", "2", "time", future.Format(time.RFC3339)))
		if v := h.waitFor("d-f", verdictKinds...); v.Kind != audit.RunPassed {
			t.Fatalf("verdict %s (%s), want run.passed", v.Kind, v.Message)
		}
		calls := h.q.callsFor("orders_total")
		if len(calls) < 2 {
			t.Fatalf("%d queries, want a baseline and a measurement", len(calls))
		}
		if b := calls[0].TS; b.Equal(future) || b.Before(published.Add(-time.Second)) || b.After(calls[1].TS) {
			t.Errorf("baseline evaluated at %s: want the arrival (after %s, not after the first measurement %s), not the event's future time", b, published, calls[1].TS)
		}
	})
}

// A measurement record carries the rendered query, the evaluation time,
// the value(s), the threshold, the outcome and the running counts; NaN and
// Inf are null in its JSON. Read back from the real AUDIT stream.
func TestMeasurementRecords(t *testing.T) {
	t.Parallel()
	rules := "policies:\n" + policyYAML("shop-orders", shopMatch, "window: 1400ms\ninterval: 200ms", `
- name: orders-per-minute
  query: sum(rate(orders_total{service="{{ .Service }}"}[1m])) * 60
  min: 50`)
	h := newHarness(t, rules, steps(val(75), val(math.NaN()), val(1, 2), fails("boom"), val(math.Inf(1)), empty, val(80)))
	h.publish(deployEvent("d-m", "shop", "production", "2026.11.25-1"))
	id := runID(h, "d-m")
	if v := h.waitFor("d-m", verdictKinds...); v.Kind != audit.RunPassed {
		t.Fatalf("verdict %s (%s), want run.passed", v.Kind, v.Message)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	recs, err := audit.Read(ctx, h.js, audit.Filter{Service: "shop", Environment: "production", RunID: id})
	if err != nil {
		t.Fatal(err)
	}
	var meas []audit.Record
	for _, r := range recs {
		if r.Kind == audit.Measurement {
			meas = append(meas, r)
		}
	}
	if len(meas) < 7 {
		t.Fatalf("%d measurements in the audit stream, want at least 7", len(meas))
	}
	calls := h.q.callsFor("orders_total")
	f := func(v float64) any { return v }
	for i, tc := range []struct {
		value   any
		values  []any
		outcome string
		reason  string
		message string
		counts  map[string]any
	}{
		{f(75), []any{f(75)}, "pass", "ok", "orders-per-minute = 75 ok (min 50)", map[string]any{"pass": f(1), "fail": f(0), "inconclusive": f(0), "error": f(0)}},
		{nil, []any{nil}, "inconclusive", "value is NaN", "orders-per-minute: value is NaN (inconclusive 1)", map[string]any{"pass": f(1), "fail": f(0), "inconclusive": f(1), "error": f(0)}},
		{nil, []any{f(1), f(2)}, "error", "query returned 2 series", "", map[string]any{"pass": f(1), "fail": f(0), "inconclusive": f(1), "error": f(1)}},
		{nil, []any{}, "error", "query failed: boom", "orders-per-minute: query failed: boom (error 2)", map[string]any{"pass": f(1), "fail": f(0), "inconclusive": f(1), "error": f(2)}},
		{nil, []any{nil}, "inconclusive", "value is +Inf", "", map[string]any{"pass": f(1), "fail": f(0), "inconclusive": f(2), "error": f(2)}},
		{nil, []any{}, "inconclusive", "no data", "orders-per-minute: no data (inconclusive 3)", map[string]any{"pass": f(1), "fail": f(0), "inconclusive": f(3), "error": f(2)}},
		{f(80), []any{f(80)}, "pass", "ok", "", map[string]any{"pass": f(2), "fail": f(0), "inconclusive": f(3), "error": f(2)}},
	} {
		m := meas[i]
		d := m.Detail
		if m.RunID != id || m.DeployID != "d-m" || m.Service != "shop" || m.Environment != "production" ||
			m.Version != "2026.11.25-1" || m.Policy != "shop-orders" {
			t.Errorf("measurement %d: record header %+v", i, m)
		}
		if want := `sum(rate(orders_total{service="shop"}[1m])) * 60`; d["query"] != want {
			t.Errorf("measurement %d: query %v, want %s", i, d["query"], want)
		}
		if d["check"] != "orders-per-minute" || d["threshold"] != "min 50" || d["failure_limit"] != f(0) {
			t.Errorf("measurement %d: check %v threshold %v failure_limit %v", i, d["check"], d["threshold"], d["failure_limit"])
		}
		v, present := d["value"]
		if !present || !equalJSON(v, tc.value) {
			t.Errorf("measurement %d: value %#v (present %v), want %#v", i, v, present, tc.value)
		}
		if !equalJSON(d["values"], tc.values) {
			t.Errorf("measurement %d: values %#v, want %#v", i, d["values"], tc.values)
		}
		if d["outcome"] != tc.outcome || !strings.HasPrefix(fmt.Sprint(d["reason"]), tc.reason) {
			t.Errorf("measurement %d: outcome %v reason %q, want %s %q", i, d["outcome"], d["reason"], tc.outcome, tc.reason)
		}
		if tc.message != "" && m.Message != tc.message {
			t.Errorf("measurement %d: message %q, want %q", i, m.Message, tc.message)
		}
		gotCounts, _ := d["counts"].(map[string]any)
		if _, ok := gotCounts["consecutive_errors"]; !ok {
			t.Errorf("measurement %d: counts %v lack consecutive_errors", i, gotCounts)
		}
		delete(gotCounts, "consecutive_errors")
		if !equalJSON(gotCounts, tc.counts) {
			t.Errorf("measurement %d: counts %v, want %v", i, d["counts"], tc.counts)
		}
		et, err := time.Parse(time.RFC3339Nano, fmt.Sprint(d["eval_time"]))
		if err != nil {
			t.Errorf("measurement %d: eval_time %v: %v", i, d["eval_time"], err)
		} else if i < len(calls) && !et.Equal(calls[i].TS) {
			t.Errorf("measurement %d: eval_time %s, but the query was evaluated at %s", i, et, calls[i].TS)
		}
	}

	// /api/v1/runs shows the latest measurement; it must encode too.
	_, recent := h.w.Runs()
	if _, err := json.Marshal(recent); err != nil {
		t.Errorf("Runs() does not encode: %v", err)
	}
}

func equalJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}

// The same deploy id published twice (two stream messages, no Nats-Msg-Id)
// starts one run; the second is recorded as a duplicate of it.
func TestDuplicateEventIDStartsOneRun(t *testing.T) {
	t.Parallel()
	rules := "policies:\n" + policyYAML("shop-orders", shopMatch, "window: 1s\ninterval: 300ms", `
- name: orders
  query: sum(orders{service="{{ .Service }}"})
  min: 1`)
	h := newHarness(t, rules, always(10))
	ev := deployEvent("d-dup", "shop", "production", "2")
	seq1 := h.publish(ev)
	seq2 := h.publish(ev)
	if seq1 == seq2 {
		t.Fatalf("both publishes stored as seq %d: the stream deduplicated them, the watcher was not tested", seq1)
	}
	id := runID(h, "d-dup")
	skipped := h.waitFor("d-dup", audit.RunSkipped)
	if skipped.Detail["reason"] != "duplicate" || skipped.RunID != id || !strings.Contains(skipped.Message, id) {
		t.Errorf("run.skipped %+v: want reason duplicate naming run %s", skipped, id)
	}
	h.waitMetric(1, "watcher_deploy_events_total", "result", "duplicate")
	if v := h.mustMetric("watcher_deploy_events_total", "result", "started"); v != 1 {
		t.Errorf("watcher_deploy_events_total{result=started} = %v, want 1", v)
	}
	// Another id is another run.
	h.publish(deployEvent("d-other", "shop", "production", "3"))
	if other := runID(h, "d-other"); other == id {
		t.Errorf("a different deploy id got the same run %s", id)
	}
	h.waitFor("d-dup", verdictKinds...)
	h.waitFor("d-other", verdictKinds...)
	if n := len(h.rec.ofDeploy("d-dup", audit.RunStarted)); n != 1 {
		t.Errorf("%d run.started for d-dup, want 1", n)
	}
	if n := len(h.rec.ofDeploy("d-dup", verdictKinds...)); n != 1 {
		t.Errorf("%d verdicts for d-dup, want 1", n)
	}
}

// A redelivery of the very stream message that claimed the id (the watcher
// died, or its ack was lost) is not a duplicate: it is the same run. In the
// process that still runs it, it must not start a second loop under the
// same run id.
func TestRedeliveryIsNotDuplicate(t *testing.T) {
	t.Parallel()
	rules := "policies:\n" + policyYAML("shop-orders", shopMatch, "window: 1s\ninterval: 200ms", `
- name: orders
  query: sum(orders{service="{{ .Service }}"})
  min: 1`)
	h := newHarness(t, rules, always(10))
	data, _ := json.Marshal(deployEvent("d-re", "shop", "production", "2"))
	const subject = "deploys.production.shop"
	for i := range 2 {
		res, err := h.w.handleDeploy(h.ctx, subject, nil, data, 42)
		if err != nil || res != "started" {
			t.Fatalf("delivery %d of seq 42: %q, %v; want started", i+1, res, err)
		}
	}
	id := runID(h, "d-re")
	// Another message (another seq) with the same id is a duplicate.
	res, err := h.w.handleDeploy(h.ctx, subject, nil, data, 43)
	if err != nil || res != "duplicate" {
		t.Fatalf("seq 43 with the same id: %q, %v; want duplicate", res, err)
	}
	for _, r := range h.rec.ofDeploy("d-re") {
		if r.RunID != id {
			t.Errorf("%s record with run %s, want every record of d-re under run %s", r.Kind, r.RunID, id)
		}
	}
	if n := len(h.rec.ofDeploy("d-re", audit.RunStarted)); n != 1 {
		t.Errorf("%d run.started records, want 1: the run was already going", n)
	}
	if n := len(h.rec.ofDeploy("d-re", audit.RunSkipped)); n != 1 {
		t.Errorf("%d run.skipped records, want 1 (seq 43 only; the redelivery of seq 42 is no duplicate)", n)
	}
	h.waitFor("d-re", verdictKinds...)
	h.stop()
	if n := len(h.rec.ofDeploy("d-re", verdictKinds...)); n != 1 {
		t.Errorf("%d verdicts for run %s, want 1: the redelivery started a second loop", n, id)
	}
	if _, recent := h.w.Runs(); len(recent) != 1 {
		t.Errorf("%d recent runs, want 1", len(recent))
	}
	if v := h.mustMetric("watcher_runs_total", "verdict", "passed"); v != 1 {
		t.Errorf("watcher_runs_total{verdict=passed} = %v, want 1", v)
	}
}

// When the audit stream cannot take run.started, the message is not acked
// and JetStream redelivers it: the real consumer then starts the run, under
// the id it claimed, and does not call it a duplicate.
func TestAuditFailureRedelivers(t *testing.T) {
	t.Parallel()
	rules := "policies:\n" + policyYAML("shop-orders", shopMatch, "window: 1s\ninterval: 200ms", `
- name: orders
  query: sum(orders{service="{{ .Service }}"})
  min: 1`)
	h := newHarness(t, rules, always(10))
	h.rec.mu.Lock()
	h.rec.failures = 1
	h.rec.mu.Unlock()
	h.publish(deployEvent("d-nak", "shop", "production", "2"))
	id := runID(h, "d-nak")
	if v := h.waitFor("d-nak", verdictKinds...); v.Kind != audit.RunPassed {
		t.Fatalf("verdict %s, want run.passed", v.Kind)
	}
	if n := len(h.rec.ofDeploy("d-nak", audit.RunSkipped)); n != 0 {
		t.Errorf("the redelivery was recorded as skipped")
	}
	if n := len(h.rec.ofDeploy("d-nak", audit.RunStarted)); n != 1 {
		t.Errorf("%d run.started, want 1", n)
	}
	h.rec.mu.Lock()
	refused := append([]audit.Record(nil), h.rec.refused...)
	h.rec.mu.Unlock()
	if len(refused) != 1 || refused[0].Kind != audit.RunStarted || refused[0].RunID != id {
		t.Errorf("refused records %+v, want the first run.started, under run %s", refused, id)
	}
	h.waitMetric(1, "watcher_deploy_events_total", "result", "started")
}

// Events that start no run: no policy, hostile input, a rolledback CDEvent.
// Each gets its record, and the consumer goes on.
func TestEventsThatStartNoRun(t *testing.T) {
	t.Parallel()
	rules := "policies:\n" + policyYAML("shop-orders", shopMatch, "window: 1s\ninterval: 200ms", `
- name: orders
  query: sum(orders{service="{{ .Service }}"})
  min: 1`)
	h := newHarness(t, rules, always(10))

	// No policy matches.
	h.publish(deployEvent("d-billing", "billing", "production", "7"))
	skipped := h.waitFor("d-billing", audit.RunSkipped)
	if !strings.Contains(skipped.Message, "no policy matches service billing in environment production") || skipped.RunID != "" {
		t.Errorf("run.skipped %+v", skipped)
	}
	h.waitMetric(1, "watcher_deploy_events_total", "result", "skipped")

	// Hostile events.
	valid := func(edit func(map[string]any)) []byte {
		d := deployEvent("d-h", "shop", "production", "2")
		edit(d)
		b, _ := json.Marshal(d)
		return b
	}
	hostile := []struct {
		name    string
		subject string
		data    []byte
		field   string
	}{
		{"shell in service", "deploys.production.shop", valid(func(d map[string]any) { d["service"] = "shop;rm -rf /" }), "service"},
		{"traversal in version", "deploys.production.shop", valid(func(d map[string]any) { d["version"] = "../../etc" }), "version"},
		{"option in host", "deploys.production.shop", valid(func(d map[string]any) { d["hosts"] = []string{"-oProxyCommand=id"} }), "hosts[0]"},
		{"unknown field", "deploys.production.shop", valid(func(d map[string]any) { d["rollback"] = true }), "rollback"},
		{"not JSON", "deploys.production.shop", []byte(`{"id": "d-h",`), "json"},
		{"subject disagrees", "deploys.staging.shop", valid(func(map[string]any) {}), "subject"},
		{"subject with more tokens", "deploys.production.shop.x", valid(func(map[string]any) {}), "subject"},
		{"over 1 MiB", "deploys.production.shop", append(valid(func(map[string]any) {}), make([]byte, events.MaxEventSize)...), "size"},
	}
	seqs := map[uint64]string{}
	for _, hc := range hostile {
		seqs[h.publishRaw(hc.subject, nil, hc.data)] = hc.field
	}
	testutil.Eventually(t, 15*time.Second, "every hostile event rejected", func() bool {
		return len(h.rec.where(func(r audit.Record) bool { return r.Kind == audit.EventRejected })) >= len(hostile)
	})
	for _, r := range h.rec.where(func(r audit.Record) bool { return r.Kind == audit.EventRejected }) {
		seq, _ := r.Detail["stream_seq"].(uint64)
		want, ok := seqs[seq]
		if !ok {
			t.Errorf("event.rejected for unknown stream seq %v: %+v", r.Detail["stream_seq"], r)
			continue
		}
		delete(seqs, seq)
		if r.Detail["field"] != want {
			t.Errorf("event.rejected (seq %d) names field %v, want %s: %s", seq, r.Detail["field"], want, r.Message)
		}
		if r.RunID != "" || r.DeployID != "" {
			t.Errorf("a rejected event has run %q deploy %q", r.RunID, r.DeployID)
		}
	}
	if len(seqs) != 0 {
		t.Errorf("no event.rejected for %v", seqs)
	}
	h.waitMetric(float64(len(hostile)), "watcher_deploy_events_total", "result", "rejected")

	// A service.rolledback CDEvent, such as the executor publishes.
	rb, err := events.EncodeRolledBack(events.RolledBack{
		ID: "rolledback-1", Service: "shop", Environment: "production", Version: "1", FromVersion: "2",
		RequestID: "rb-x", Reason: "orders dropped",
	}, "/rollback-watcher/test")
	if err != nil {
		t.Fatal(err)
	}
	h.publishRaw("deploys.production.shop", nats.Header{"Content-Type": []string{events.ContentTypeCloudEvents}}, rb)
	var ignored audit.Record
	testutil.Eventually(t, 15*time.Second, "run.skipped for the rolledback event", func() bool {
		rs := h.rec.where(func(r audit.Record) bool { return r.Kind == audit.RunSkipped && r.Detail["type"] != nil })
		if len(rs) > 0 {
			ignored = rs[0]
		}
		return len(rs) > 0
	})
	if ignored.Detail["type"] != events.TypeServiceRolledBack || ignored.Detail["reason"] != "not a deploy event" || ignored.RunID != "" {
		t.Errorf("record for the rolledback event: %+v", ignored)
	}
	h.waitMetric(1, "watcher_deploy_events_total", "result", "ignored")

	// The consumer went on: a good event after all that starts a run.
	h.publish(deployEvent("d-good", "shop", "production", "3"))
	runID(h, "d-good")
	h.waitMetric(1, "watcher_deploy_events_total", "result", "started")
	if n := len(h.rec.where(func(r audit.Record) bool { return r.Kind == audit.RunStarted })); n != 1 {
		t.Errorf("%d run.started records, want 1 (only d-good starts a run)", n)
	}
	if calls := h.q.callsFor("billing"); len(calls) != 0 {
		t.Errorf("the unmatched deploy was queried: %v", calls)
	}
}

// A reload changes new runs only: a run keeps the policy it started with.
func TestReloadKeepsRunningPolicy(t *testing.T) {
	t.Parallel()
	v1 := "policies:\n" + policyYAML("shop-v1", shopMatch, "window: 2s\ninterval: 200ms", `
- name: latency-v1
  query: max(latency_v1_seconds{service="{{ .Service }}"})
  max: 1`)
	v2 := "policies:\n" + policyYAML("shop-v2", "{service: shop}", "window: 1s\ninterval: 200ms", `
- name: latency-v2
  query: max(latency_v2_seconds{service="{{ .Service }}"})
  max: 1`)
	h := newHarness(t, v1, always(0.5))
	h.publish(deployEvent("d-1", "shop", "production", "1"))
	h.waitMeasurements("d-1", 1)
	reloaded := time.Now()
	h.set.Store(loadRules(t, v2))
	h.w.Reloaded(h.ctx, h.set.Load())
	kept := h.waitFor("d-1", RunPolicyKept)
	if !strings.Contains(kept.Message, "shop-v2 matches instead") || kept.Policy != "shop-v1" {
		t.Errorf("reload note = %q under policy %q, want it to say shop-v2 matches and the run keeps shop-v1", kept.Message, kept.Policy)
	}
	// Another environment: a second production deploy would supersede d-1.
	h.publish(deployEvent("d-2", "shop", "staging", "2"))

	for _, id := range []string{"d-1", "d-2"} {
		if v := h.waitFor(id, verdictKinds...); v.Kind != audit.RunPassed {
			t.Fatalf("%s: verdict %s (%s), want run.passed", id, v.Kind, v.Message)
		}
	}
	afterReload := 0
	for _, r := range h.rec.ofDeploy("d-1") {
		if r.Policy != "shop-v1" {
			t.Errorf("d-1 %s record under policy %q, want shop-v1", r.Kind, r.Policy)
		}
		if r.Kind == audit.Measurement {
			if r.Detail["check"] != "latency-v1" {
				t.Errorf("d-1 measured check %v, want latency-v1", r.Detail["check"])
			}
			if r.Time.After(reloaded) {
				afterReload++
			}
		}
	}
	if afterReload == 0 {
		t.Error("d-1 took no measurement after the reload; the test proves nothing")
	}
	for _, r := range h.rec.ofDeploy("d-2") {
		if r.Policy != "shop-v2" {
			t.Errorf("d-2 %s record under policy %q, want shop-v2", r.Kind, r.Policy)
		}
		if r.Kind == audit.Measurement && r.Detail["check"] != "latency-v2" {
			t.Errorf("d-2 measured check %v, want latency-v2", r.Detail["check"])
		}
	}
	// The old run kept its own 2s window, the new one got 1s.
	for id, want := range map[string]time.Duration{"d-1": 2 * time.Second, "d-2": time.Second} {
		s := h.waitFor(id, audit.RunStarted)
		// The first measurement is on the interval's grid: up to one
		// interval (200ms) after the start.
		if got := detailTime(t, s, "window_end").Sub(detailTime(t, s, "first_measurement")); got > want || got <= want-200*time.Millisecond {
			t.Errorf("%s window %s, want %s less up to one interval", id, got, want)
		}
	}
	if calls := h.q.callsFor("latency_v2"); len(calls) == 0 || calls[0].TS.Before(reloaded) {
		t.Errorf("the v2 query was evaluated before the reload: %v", calls)
	}
}

// Runs() lists active runs (newest first) then recent ones (newest first),
// with their latest measurements; the metrics follow.
func TestRunsAndMetrics(t *testing.T) {
	t.Parallel()
	rules := "policies:\n" + policyYAML("all-production", "{service: \"*\", environment: production}", "window: 3s\ninterval: 200ms", `
- name: orders
  query: sum(orders{service="{{ .Service }}"})
  min: 50`)
	h := newHarness(t, rules, byQuery(map[string]script{
		`"alpha"`: always(100),
		`"beta"`:  always(120),
		`"gamma"`: always(10),
	}))
	for _, name := range []string{"watcher_runs_active", "watcher_runs_total", "watcher_deploy_events_total"} {
		if _, ok := h.metric(name); !ok {
			t.Errorf("%s not registered", name)
		}
	}
	if v := h.mustMetric("watcher_runs_active"); v != 0 {
		t.Errorf("watcher_runs_active = %v before any deploy", v)
	}

	h.publish(deployEvent("d-a", "alpha", "production", "1"))
	a := runID(h, "d-a")
	h.publish(deployEvent("d-b", "beta", "production", "1"))
	b := runID(h, "d-b")
	h.publish(deployEvent("d-c", "gamma", "production", "1"))
	c := runID(h, "d-c")
	if v := h.waitFor("d-c", verdictKinds...); v.Kind != audit.RunFailed {
		t.Fatalf("gamma verdict %s, want run.failed", v.Kind)
	}
	h.waitMeasurements("d-a", 1)
	h.waitMeasurements("d-b", 1)
	testutil.Eventually(t, 10*time.Second, "latest measurements of the active runs", func() bool {
		active, _ := h.w.Runs()
		return len(active) == 2 && len(active[0].Measurements) == 1 && len(active[1].Measurements) == 1
	})

	active, recent := h.w.Runs()
	if len(active) != 2 || active[0].ID != b || active[1].ID != a {
		t.Fatalf("active runs %v, want [%s %s] (newest first)", ids(active), b, a)
	}
	for i, want := range []float64{120, 100} {
		s := active[i]
		m := s.Measurements[0]
		if s.Verdict != VerdictPending || s.Ended != nil || s.Policy != "all-production" {
			t.Errorf("active run %s: verdict %q ended %v policy %q", s.ID, s.Verdict, s.Ended, s.Policy)
		}
		if m.Check != "orders" || m.Value == nil || *m.Value != want || m.Outcome != "pass" || m.Threshold != "min 50" || m.Time.IsZero() {
			t.Errorf("active run %s latest measurement %+v, want orders = %v pass", s.ID, m, want)
		}
		if !s.WindowEnd.Equal(s.Started.Add(3 * time.Second)) {
			t.Errorf("active run %s: window end %s, started %s", s.ID, s.WindowEnd, s.Started)
		}
	}
	if len(recent) != 1 || recent[0].ID != c || recent[0].Verdict != VerdictFailed || recent[0].Ended == nil ||
		!strings.Contains(recent[0].Reason, "orders") || recent[0].Service != "gamma" || recent[0].DeployID != "d-c" {
		t.Fatalf("recent runs %+v, want the failed gamma run %s", recent, c)
	}
	if len(recent[0].Measurements) != 1 || *recent[0].Measurements[0].Value != 10 || recent[0].Measurements[0].Outcome != "fail" {
		t.Errorf("failed run's latest measurement %+v", recent[0].Measurements)
	}
	if _, err := json.Marshal(map[string]any{"active": active, "recent": recent}); err != nil {
		t.Errorf("runs do not encode: %v", err)
	}

	if v := h.mustMetric("watcher_runs_active"); v != 2 {
		t.Errorf("watcher_runs_active = %v, want 2", v)
	}
	for verdict, want := range map[string]float64{"failed": 1, "passed": 0, "inconclusive": 0} {
		if v := h.mustMetric("watcher_runs_total", "verdict", verdict); v != want {
			t.Errorf("watcher_runs_total{verdict=%s} = %v, want %v", verdict, v, want)
		}
	}
	h.waitMetric(3, "watcher_deploy_events_total", "result", "started")

	// When the windows close, everything is recent.
	h.waitMetric(0, "watcher_runs_active")
	h.waitMetric(2, "watcher_runs_total", "verdict", "passed")
	active, recent = h.w.Runs()
	if len(active) != 0 || len(recent) != 3 || recent[2].ID != c {
		t.Errorf("after the windows: active %v recent %v, want none and three with %s oldest", ids(active), ids(recent), c)
	}
	for _, r := range recent[:2] {
		if r.Verdict != VerdictPassed || r.Ended == nil || r.Ended.Before(r.WindowEnd) {
			t.Errorf("run %s: verdict %s ended %v window end %s", r.ID, r.Verdict, r.Ended, r.WindowEnd)
		}
	}
}

func ids(rs []RunStatus) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

// Cancelling the context stops runs promptly, wherever they are waiting (a
// hung query, a timer), and Wait returns; no verdict is invented.
func TestCancelStopsRuns(t *testing.T) {
	t.Parallel()
	rules := "policies:\n" +
		policyYAML("hung", "{service: hung, environment: production}", "window: 3s\ninterval: 100ms", `
- name: orders
  query: sum(orders{service="{{ .Service }}"})
  min: 1`) + "\n" +
		policyYAML("delayed", "{service: delayed, environment: production}", "window: 3s\ninterval: 100ms\ninitial_delay: 3s", `
- name: orders
  query: sum(orders{service="{{ .Service }}"})
  min: 1`)
	h := newHarness(t, rules, func(ctx context.Context, q string, n int, _ time.Time) (model.Vector, error) {
		if n < 2 {
			return vec(10), nil
		}
		<-ctx.Done() // a Prometheus that stops answering
		return nil, ctx.Err()
	})
	h.publish(deployEvent("d-hung", "hung", "production", "1"))
	h.publish(deployEvent("d-delayed", "delayed", "production", "1"))
	h.waitMeasurements("d-hung", 2)
	runID(h, "d-delayed")
	testutil.Eventually(t, 10*time.Second, "the third query to hang", func() bool {
		return len(h.q.callsFor(`"hung"`)) >= 3
	})
	if active, _ := h.w.Runs(); len(active) != 2 {
		t.Fatalf("%d active runs, want 2", len(active))
	}

	h.stop() // fails the test if Wait hangs

	for _, id := range []string{"d-hung", "d-delayed"} {
		if vs := h.rec.ofDeploy(id, verdictKinds...); len(vs) != 0 {
			t.Errorf("%s got a verdict on shutdown: %+v", id, vs)
		}
	}
	if n := len(h.q.callsFor(`"delayed"`)); n != 0 {
		t.Errorf("the delayed run was measured %d times", n)
	}
	for _, verdict := range []string{"passed", "failed", "inconclusive"} {
		if v := h.mustMetric("watcher_runs_total", "verdict", verdict); v != 0 {
			t.Errorf("watcher_runs_total{verdict=%s} = %v after a shutdown", verdict, v)
		}
	}
	if msgs := h.rollbacks(); len(msgs) != 0 {
		t.Errorf("%d rollback requests after a shutdown", len(msgs))
	}
}

// A newer deploy of the same service and environment supersedes the older
// run: what the older run validates is no longer deployed. Another
// environment's run is left alone.
func TestNewerDeploySupersedesOlderRun(t *testing.T) {
	t.Parallel()
	rules := "policies:\n" + policyYAML("shop-orders", `{service: shop}`, "window: 3s\ninterval: 200ms", `
- name: orders
  query: sum(orders{service="{{ .Service }}"})
  min: 1`)
	h := newHarness(t, rules, always(10))
	h.publish(deployEvent("d-old", "shop", "production", "1"))
	h.publish(deployEvent("d-staging", "shop", "staging", "1"))
	old := runID(h, "d-old")
	h.waitMeasurements("d-old", 1)
	h.publish(deployEvent("d-new", "shop", "production", "2"))

	sup := h.waitFor("d-old", audit.RunSuperseded)
	if sup.RunID != old || !strings.Contains(sup.Message, "d-new") {
		t.Errorf("run.superseded = %+v, want run %s naming deploy d-new", sup, old)
	}
	if by, _ := sup.Detail["superseded_by"].(map[string]any); by["deploy_id"] != "d-new" || by["version"] != "2" {
		t.Errorf("superseded_by = %v", sup.Detail["superseded_by"])
	}
	h.waitFor("d-new", audit.RunPassed)
	h.waitFor("d-staging", audit.RunPassed)
	if n := len(h.rec.ofDeploy("d-old", verdictKinds...)); n != 1 {
		t.Errorf("%d verdicts for the superseded run, want 1", n)
	}
	// Nothing is measured for the old run after it was superseded.
	last := h.rec.ofDeploy("d-old", audit.Measurement)
	for _, m := range last {
		if m.Time.After(sup.Time) {
			t.Errorf("measurement %s after run.superseded %s", m.Time, sup.Time)
		}
	}
	h.waitMetric(1, "watcher_runs_total", "verdict", "superseded")
}

func TestReloadNotesOnlyChangedPolicies(t *testing.T) {
	t.Parallel()
	mk := func(max string) string {
		return "policies:\n" + policyYAML("shop-orders", shopMatch, "window: 2s\ninterval: 200ms", `
- name: latency
  query: max(latency_seconds{service="{{ .Service }}"})
  max: `+max)
	}
	h := newHarness(t, mk("1"), always(0.5))
	h.publish(deployEvent("d-1", "shop", "production", "1"))
	h.waitMeasurements("d-1", 1)
	// The same policy, reloaded from a new file: no note.
	h.w.Reloaded(h.ctx, loadRules(t, mk("1")))
	// A changed threshold: a note.
	h.w.Reloaded(h.ctx, loadRules(t, mk("2")))
	note := h.waitFor("d-1", RunPolicyKept)
	if !strings.Contains(note.Message, "policy shop-orders changed on reload") {
		t.Errorf("note = %q", note.Message)
	}
	h.waitFor("d-1", audit.RunPassed)
	if n := len(h.rec.ofDeploy("d-1", RunPolicyKept)); n != 1 {
		t.Errorf("%d reload notes, want 1 (an unchanged policy is no change)", n)
	}
}

// fakeWarmer records which hosts runs hold open.
type fakeWarmer struct {
	mu    sync.Mutex
	held  map[string]int
	warms int
}

func (f *fakeWarmer) Warm(_ context.Context, hosts []string, _ policy.SSH) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.warms++
	for _, h := range hosts {
		f.held[h]++
	}
}

func (f *fakeWarmer) Cool(hosts []string, _ policy.SSH) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range hosts {
		f.held[h]--
	}
}

func (f *fakeWarmer) holds(h string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held[h]
}

// A run keeps its deploy's hosts warm during its window and lets them go
// when it passes; a failed run keeps them for its rollback.
func TestRunsKeepHostsWarm(t *testing.T) {
	t.Parallel()
	rules := strings.Replace("policies:\n"+policyYAML("shop-orders", `{service: "*"}`, "window: 1s\ninterval: 200ms", `
- name: orders
  query: sum(orders{service="{{ .Service }}"})
  min: 5`), "mode: publish", "link: /srv/{{ .Service }}/current", 1)
	h := newHarness(t, rules, byQuery(map[string]script{
		`orders{service="good"}`: always(10),
		`orders{service="bad"}`:  always(1),
	}))
	fw := &fakeWarmer{held: map[string]int{}}
	h.w.Warmer = fw
	h.publish(deployEvent("d-good", "good", "production", "2", "hosts", []string{"web1:22", "web2"}))
	h.publish(deployEvent("d-bad", "bad", "production", "2", "hosts", []string{"db1"}))
	h.waitMeasurements("d-good", 1)
	if fw.holds("web1:22") != 1 || fw.holds("web2") != 1 {
		t.Errorf("during the window web1:22 held %d, web2 %d; want 1 each", fw.holds("web1:22"), fw.holds("web2"))
	}
	h.waitFor("d-good", audit.RunPassed)
	h.waitFor("d-bad", audit.RunFailed)
	testutil.Eventually(t, 5*time.Second, "passed run released its hosts", func() bool { return fw.holds("web1:22") == 0 && fw.holds("web2") == 0 })
	if fw.holds("db1") != 1 {
		t.Errorf("the failed run released db1 (held %d) before its rollback could use it", fw.holds("db1"))
	}
}
