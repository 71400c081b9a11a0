package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestAlertRollsBackThroughAlertmanager runs the real chain: Prometheus
// evaluates an alerting rule on the shop's error ratio, Alertmanager
// routes the alert to the watcher's webhook (behind basic auth from
// --web.config.file), and the watcher rolls the last deploy back, the
// alert named in the audit.
func TestAlertRollsBackThroughAlertmanager(t *testing.T) {
	exp := testutil.NewExporter(t)
	lbls := map[string]string{"service": "shop", "environment": "production"}
	exp.Set("shop_orders_per_minute", lbls, 120)
	exp.Set("shop_error_ratio", lbls, 0.01)

	dir := t.TempDir()
	link := release(t, filepath.Join(dir, "shop"), "v1", "v2")
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webConfig := filepath.Join(dir, "web.yml")
	writeFile(t, webConfig, fmt.Sprintf("basic_auth_users:\n  alertmanager: %s\n", hash))
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, fmt.Sprintf(`policies:
  - name: shop
    match: {service: shop, environment: production}
    window: 1s
    interval: 500ms
    checks:
      - name: orders
        query: shop_orders_per_minute{service="{{ .Service }}"}
        min: 50
    rollback:
      link: %s/{{ .Service }}/current
    alerts:
      matchers: ['alertname="ShopErrorsHigh"', 'severity="page"']
      within: 1h
`, dir))

	w := startWatcher(t, "--rules="+rules, "--web.config.file="+webConfig, "--prometheus.url=http://127.0.0.1:1")
	am := testutil.StartAlertmanager(t, fmt.Sprintf(`route:
  receiver: watcher
  group_by: [alertname, service, environment]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1m
receivers:
  - name: watcher
    webhook_configs:
      - url: http://%s/api/v1/alerts
        send_resolved: true
        http_config:
          basic_auth: {username: alertmanager, password: s3cret}
`, w.web))
	testutil.StartPrometheusAlerting(t, `groups:
  - name: shop
    rules:
      - alert: ShopErrorsHigh
        expr: shop_error_ratio > 0.05
        labels: {severity: page}
        annotations: {summary: "shop error ratio {{ $value }}"}
`, am.Addr, exp.URL)

	// The endpoint is protected.
	resp, err := http.Post("http://"+w.web+"/api/v1/alerts", "application/json", strings.NewReader(`{"version":"4","alerts":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST /api/v1/alerts without credentials: %d, want 401", resp.StatusCode)
	}

	if code, _, errOut := cli(t, "publish", "--nats.url=nats://"+w.nats, "--service=shop", "--environment=production",
		"--version=v2", "--previous-version=v1", "--id=deploy-shop-v2"); code != 0 {
		t.Fatalf("publish: %s", errOut)
	}
	// The validation window passes (the watcher cannot even reach a
	// Prometheus here: inconclusive, kept); the errors come later.
	time.Sleep(1500 * time.Millisecond)
	if got := readlink(t, link); got != "v2" {
		t.Fatalf("link on %s before any alert", got)
	}
	exp.Set("shop_error_ratio", lbls, 0.3)

	testutil.Eventually(t, 60*time.Second, "the alert to roll shop back", func() bool { return readlink(t, link) == "v1" })
	var recs []audit.Record
	testutil.Eventually(t, 20*time.Second, "rollback.completed in the audit", func() bool {
		recs = history(t, w.nats, "--service=shop", "--environment=production")
		return hasKind(recs, audit.RollbackCompleted)
	})
	assertOrder(t, kinds(recs), []string{audit.AlertReceived, audit.RollbackRequested, audit.RollbackHost, audit.RollbackCompleted})
	var received, requested audit.Record
	for _, r := range recs {
		switch {
		case r.Kind == audit.AlertReceived && r.RequestID != "" && received.Kind == "":
			received = r
		case r.Kind == audit.RollbackRequested:
			requested = r
		}
	}
	if received.Kind == "" || received.DeployID != "deploy-shop-v2" {
		t.Fatalf("no alert.received that requested the rollback: %+v", recs)
	}
	alert, _ := requested.Detail["alert"].(map[string]any)
	if requested.RequestID != received.RequestID || alert["name"] != "ShopErrorsHigh" || alert["fingerprint"] == "" ||
		alert["starts_at"] == "" || !strings.Contains(fmt.Sprint(alert["generator_url"]), "shop_error_ratio") ||
		requested.Detail["source"] != "alert" {
		t.Errorf("rollback.requested %q does not name the alert: request %s (alert.received says %s), detail %v",
			requested.Message, requested.RequestID, received.RequestID, requested.Detail)
	}
	if labels, _ := alert["labels"].(map[string]any); labels["severity"] != "page" || labels["service"] != "shop" {
		t.Errorf("alert labels %v", alert["labels"])
	}
	// Alertmanager repeats and resolves: no second rollback.
	exp.Set("shop_error_ratio", lbls, 0.01)
	testutil.Eventually(t, 30*time.Second, "the resolved alert recorded", func() bool {
		recs = history(t, w.nats, "--service=shop", "--environment=production")
		for _, r := range recs {
			if r.Kind == audit.AlertReceived && r.Detail["status"] == "resolved" {
				return true
			}
		}
		return false
	})
	n := 0
	for _, r := range recs {
		if r.Kind == audit.RollbackRequested {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d rollback.requested, want 1", n)
	}
}
