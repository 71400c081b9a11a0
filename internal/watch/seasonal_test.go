package watch

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	promclient "github.com/rollback-watcher/watcher/internal/promclient"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestSeasonalBaseline compares with the same moment a week earlier
// (`baseline: {offset: 7d}`) on a real Prometheus whose last week is
// backfilled with promtool: 100 orders a minute then. A deploy now at 40
// (0.4 of last week) fails; one at 90 (0.9) passes.
func TestSeasonalBaseline(t *testing.T) {
	t.Parallel()
	now := time.Now()
	var om strings.Builder
	om.WriteString("# TYPE seasonal_orders gauge\n")
	for _, svc := range []string{"seasonal-bad", "seasonal-good"} {
		// Around the moment a week ago, every 15 s: the baseline query at
		// now-7d (and at each later measurement, minus 7d) finds a sample
		// within Prometheus's 5 minute lookback.
		for ts := now.Add(-7*24*time.Hour - 10*time.Minute); ts.Before(now.Add(-7*24*time.Hour + 10*time.Minute)); ts = ts.Add(15 * time.Second) {
			fmt.Fprintf(&om, "seasonal_orders{service=%q} 100 %d\n", svc, ts.Unix())
		}
	}
	om.WriteString("# EOF\n")
	exp := testutil.NewExporter(t)
	exp.Set("seasonal_orders", map[string]string{"service": "seasonal-bad"}, 40)
	exp.Set("seasonal_orders", map[string]string{"service": "seasonal-good"}, 90)
	prom := testutil.StartPrometheusWithHistory(t, om.String(), exp.URL)
	q, err := promclient.New(promclient.Options{URL: prom.URL})
	if err != nil {
		t.Fatal(err)
	}
	rules := "policies:\n" + policyYAML("seasonal", "{service: \"seasonal-*\"}", "window: 2s\ninterval: 500ms", `
- name: orders-vs-last-week
  query: sum(seasonal_orders{service="{{ .Service }}"})
  baseline: {offset: 7d}
  min_ratio: 0.7
  max_ratio: 3
  failure_limit: 1`)
	h := newPromHarness(t, rules, q)
	h.publish(deployEvent("d-bad", "seasonal-bad", "production", "2"))
	h.publish(deployEvent("d-good", "seasonal-good", "production", "2"))

	failed := h.waitFor("d-bad", verdictKinds...)
	if failed.Kind != audit.RunFailed || !strings.Contains(failed.Message, "0.4 x baseline 100 < min_ratio 0.7 (failure 2 of limit 1)") {
		t.Errorf("bad deploy: %s %q, want run.failed at 0.4 x baseline 100", failed.Kind, failed.Message)
	}
	passed := h.waitFor("d-good", verdictKinds...)
	if passed.Kind != audit.RunPassed {
		t.Errorf("good deploy: %s %q, want run.passed", passed.Kind, passed.Message)
	}
	for _, m := range h.rec.ofDeploy("d-good", audit.Measurement) {
		bt, et := detailTime(t, m, "baseline_time"), detailTime(t, m, "eval_time")
		if et.Sub(bt) != 7*24*time.Hour {
			t.Errorf("baseline_time %s for a measurement at %s, want 7 days earlier", bt, et)
		}
		if b, r := num(m, "baseline"), num(m, "ratio"); b != 100 || !near(r, 0.9) {
			t.Errorf("measurement baseline %v ratio %v, want 100 and 0.9", b, r)
		}
	}
}
