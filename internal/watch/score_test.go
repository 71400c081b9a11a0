package watch

import (
	"strings"
	"testing"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
)

// TestScoredRunEndsMarginal: a scored run whose non-critical check fails
// ends marginal at the window's end, recorded as run.marginal with its
// score; on_marginal says whether that rolls back, and whether the
// rollback asks a person first.
func TestScoredRunEndsMarginal(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		onMarginal string
		rollbacks  int
	}{{"keep", 0}, {"rollback", 1}, {"ask", 1}} {
		t.Run(c.onMarginal, func(t *testing.T) {
			t.Parallel()
			rules := "policies:\n" + policyYAML("shop-scored", shopMatch, `
window: 2s
interval: 200ms
score: {pass: 80, marginal: 50}
on_marginal: `+c.onMarginal, `
- name: orders
  query: orders_total
  min: 50
  weight: 3
- name: latency
  query: latency_seconds
  max: 0.5
  weight: 1`)
			if c.onMarginal == "ask" {
				rules += "      hold: 1m\n" // an ask waits for an answer this long
			}
			h := newHarness(t, rules, byQuery(map[string]script{"orders_total": always(100), "latency_seconds": always(0.9)}))
			h.publish(deployEvent("d-score", "shop", "production", "v2"))
			v := h.waitFor("d-score", append(verdictKinds, audit.RunMarginal)...)
			if v.Kind != audit.RunMarginal {
				t.Fatalf("verdict %s: %s; want %s", v.Kind, v.Message, audit.RunMarginal)
			}
			if !strings.Contains(v.Message, "score 75 below pass 80") || !strings.Contains(v.Message, "on_marginal: "+c.onMarginal) {
				t.Errorf("verdict message %q", v.Message)
			}
			d, ok := v.Verdict()
			if !ok || d.Score == nil || d.Score.Score != 75 || len(d.Score.Checks) != 2 || len(d.Checks) != 1 || d.Checks[0].Check != "latency" {
				t.Errorf("verdict detail %+v (score %+v)", d, d.Score)
			}
			reqs := h.rollbacks()
			if n := len(reqs); n != c.rollbacks {
				t.Errorf("%d rollback requests, want %d", n, c.rollbacks)
			}
			for _, m := range reqs {
				r, err := events.DecodeRollbackRequest(m.Subject, m.Data)
				if err != nil || r.Ask != (c.onMarginal == "ask") {
					t.Errorf("rollback request %s (%v): ask %v, want %v", m.Data, err, r.Ask, c.onMarginal == "ask")
				}
			}
			if got := h.mustMetric("watcher_runs_total", "verdict", "marginal"); got != 1 {
				t.Errorf("watcher_runs_total{verdict=marginal} = %v, want 1", got)
			}
		})
	}
}
