package watch

import (
	"math"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
)

// histogram reads the sample count and sum of one series of a histogram in
// h's registry.
func (h *harness) histogram(name string, labels ...string) (count uint64, sum float64, ok bool) {
	h.t.Helper()
	if m := h.series(name, labels...); m != nil && m.Histogram != nil {
		return m.Histogram.GetSampleCount(), m.Histogram.GetSampleSum(), true
	}
	return 0, math.NaN(), false
}

// One failed run and one passed run, each of its own service, plus events
// that start nothing: the per-service counters count the runs (the
// denominator of change-failure rate) and their verdicts, and the decision
// histogram measures from the deploy's own time, not from when the event
// arrived.
func TestOwnMetricsNameServiceAndEnvironment(t *testing.T) {
	t.Parallel()
	rules := "policies:\n" + policyYAML("shop-errors", shopMatch, `
window: 3s
interval: 100ms`, `
- name: payment-errors
  query: sum(rate(payment_errors_total{service="{{ .Service }}"}[1m]))
  max: 0.05
  failure_limit: 1`) + policyYAML("cart-orders", "{service: cart, environment: staging}", `
window: 1s
interval: 200ms`, `
- name: orders
  query: sum(rate(orders_total{service="{{ .Service }}"}[1m]))
  min: 50`)
	h := newHarness(t, rules, byQuery(map[string]script{
		"payment_errors_total": always(0.5),
		"orders_total":         always(100),
	}))

	const late = 2 * time.Minute
	deployed := time.Now().Add(-late)
	h.publish(deployEvent("d-fail", "shop", "production", "2", "time", deployed.UTC().Format(time.RFC3339Nano)))
	if rec := h.waitFor("d-fail", verdictKinds...); rec.Kind != audit.RunFailed {
		t.Fatalf("shop: verdict %s (%s), want run.failed", rec.Kind, rec.Message)
	}
	decided := time.Now()
	h.publish(deployEvent("d-ok", "cart", "staging", "7"))
	if rec := h.waitFor("d-ok", verdictKinds...); rec.Kind != audit.RunPassed {
		t.Fatalf("cart: verdict %s (%s), want run.passed", rec.Kind, rec.Message)
	}
	// Neither a duplicate event nor one without a policy starts a run.
	h.publish(deployEvent("d-ok", "cart", "staging", "7"))
	h.publish(deployEvent("d-none", "search", "production", "1"))
	h.waitMetric(1, "watcher_deploy_events_total", "result", "duplicate")
	h.waitMetric(1, "watcher_deploy_events_total", "result", "skipped")
	h.stop()

	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"watcher_deploys_total", []string{"service", "shop", "environment", "production"}, 1},
		{"watcher_deploys_total", []string{"service", "cart", "environment", "staging"}, 1},
		{"watcher_verdicts_total", []string{"service", "shop", "environment", "production", "verdict", "failed"}, 1},
		{"watcher_verdicts_total", []string{"service", "cart", "environment", "staging", "verdict", "passed"}, 1},
	} {
		if got := h.mustMetric(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"watcher_deploys_total", []string{"service", "search"}},
		{"watcher_verdicts_total", []string{"service", "shop", "verdict", "passed"}},
		{"watcher_verdicts_total", []string{"service", "cart", "verdict", "failed"}},
	} {
		if v, ok := h.metric(c.name, c.labels...); ok {
			t.Errorf("%s%v = %v, want no such series", c.name, c.labels, v)
		}
	}

	n, sum, ok := h.histogram("watcher_decision_seconds", "verdict", "failed")
	if !ok || n != 1 {
		t.Fatalf("watcher_decision_seconds{verdict=failed}: %d samples (present %v), want 1", n, ok)
	}
	if max := decided.Sub(deployed).Seconds(); sum < late.Seconds() || sum > max {
		t.Errorf("watcher_decision_seconds{verdict=failed} observed %.3fs, want between %s (the deploy's time) and %.3fs", sum, late, max)
	}
	if n, _, _ := h.histogram("watcher_decision_seconds", "verdict", "passed"); n != 1 {
		t.Errorf("watcher_decision_seconds{verdict=passed}: %d samples, want 1", n)
	}
	if n, _, ok := h.histogram("watcher_decision_seconds", "verdict", "inconclusive"); !ok || n != 0 {
		t.Errorf("watcher_decision_seconds{verdict=inconclusive}: %d samples (present %v), want an empty series", n, ok)
	}
}
