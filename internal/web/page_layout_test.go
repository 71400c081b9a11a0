package web

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// The longest values the page shows (a commit SHA as the version, long
// service and host names, an error, labels, both banners) still fit a
// phone: the page does not scroll sideways and every run's verdict is on
// screen (README "HTTP"). On a laptop such a runs table scrolls in its own
// box. TestPageInBrowser lays out a real watcher's page at both widths.
func TestPageLayoutLongValues(t *testing.T) {
	src := fixture("checkout-payments-gateway-eu-west-1-canary", "check orders-per-minute failed: "+strings.Repeat("12 < min 50; ", 8),
		"http://prometheus.internal.example.com:9090/graph?g0.expr="+strings.Repeat("rate(http_requests_total[5m])", 3),
		map[string]any{"severity": "page", "runbook": "https://runbooks.example.com/" + strings.Repeat("payments/", 8)})
	src.recent[0].Version = "9f1c2e7b4a6d8c0e1f3a5b7c9d2e4f6a8b0c1d3e"
	src.active[0].Environment = "production-eu-west-1"
	for i := range src.recs {
		if h, ok := src.recs[i].Detail["host"]; ok && h != nil {
			src.recs[i].Detail["host"] = "web-frontend-0042.payments.eu-west-1.internal.example.com:22"
		}
	}
	src.health = Health{
		Prometheus: &PrometheusDown{URL: "https://prometheus.monitoring.svc.cluster.local:9090", Since: t0,
			Err: `Post "https://prometheus.monitoring.svc.cluster.local:9090/api/v1/query": dial tcp 10.0.0.1:9090: connect: connection refused`},
		Storage: []bus.Limit{{Scope: "stream", Stream: "AUDIT", Setting: "max_bytes", Used: 1 << 30, Max: 1 << 30, Full: true}},
	}
	srv := httptest.NewServer((&Server{Gatherer: prometheus.NewRegistry(), Runs: src.Runs, Page: src}).Handler())
	defer srv.Close()
	ctx := testutil.Browser(t)
	for _, width := range []int64{testutil.PhoneNarrow, testutil.PhoneWide} {
		l, shot := testutil.LayoutAt(t, ctx, srv.URL+"/", width, 1500)
		if len(l.Runs) != 2 || len(l.Banners) != 2 {
			t.Errorf("at %dpx: %d runs and %d banners laid out, want 2 and 2", width, len(l.Runs), len(l.Banners))
		}
		for _, p := range l.Problems() {
			t.Errorf("at %dpx: %s", width, p)
		}
		t.Logf("at %dpx: page %dpx wide; screenshot %s", width, l.ScrollWidth, testutil.KeepScreenshot(t, fmt.Sprintf("long-%d.png", width), shot))
	}
}
