package main

import (
	"crypto/hmac"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/notify"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// posted is what a loopback receiver got, by X-Watcher-Kind.
type posted struct {
	mu     sync.Mutex
	bodies map[string][]string
	badSig int
}

func (p *posted) get(kind string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.bodies[kind]...)
}

func receiverOn(t *testing.T, secret string) (*posted, string) {
	t.Helper()
	p := &posted{bodies: map[string][]string{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		p.mu.Lock()
		defer p.mu.Unlock()
		if secret != "" && !hmac.Equal([]byte(r.Header.Get(notify.SignatureHeader)), []byte(notify.Sign([]byte(secret), b))) {
			p.badSig++
		}
		p.bodies[r.Header.Get(notify.KindHeader)] = append(p.bodies[r.Header.Get(notify.KindHeader)], string(b))
	}))
	t.Cleanup(srv.Close)
	return p, srv.URL
}

// `watcher run` with notify: in its config file tells a webhook and Slack
// about a bad deploy and its rollback, end to end: real Prometheus, real
// links, the embedded NATS, loopback receivers.
func TestRunNotifiesFailedDeployAndRollback(t *testing.T) {
	exp := testutil.NewExporter(t)
	exp.Set("shop_orders_per_minute", map[string]string{"service": "shop"}, 120)
	prom := testutil.StartPrometheus(t, exp.URL)

	dir := t.TempDir()
	link := release(t, filepath.Join(dir, "shop"), "2026.11.24-3", "2026.11.25-1")
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, fmt.Sprintf(`policies:
  - name: orders
    match: {service: shop, environment: production}
    window: 8s
    interval: 500ms
    initial_delay: 0s
    checks:
      - name: orders-per-minute
        query: shop_orders_per_minute{service="{{ .Service }}"}
        min: 50
        failure_limit: 1
    rollback:
      link: %s/{{ .Service }}/current
`, dir))
	hook, hookURL := receiverOn(t, "hook-secret")
	slack, slackURL := receiverOn(t, "")
	writeFile(t, filepath.Join(dir, "hook-url"), hookURL+"/watcher")
	writeFile(t, filepath.Join(dir, "hook-secret"), "hook-secret\n")
	writeFile(t, filepath.Join(dir, "slack-url"), slackURL+"/services/T0/B0/SLACKTOKEN")
	cfg := filepath.Join(dir, "watcher.yml")
	writeFile(t, cfg, `notify:
  - name: oncall
    kind: slack
    url_file: slack-url
    match: {service: "sho*", environment: production}
    on: [run.failed, rollback.completed, rollback.failed]
  - name: audit-sink
    kind: webhook
    url_file: hook-url
    secret_file: hook-secret
    on: [run.failed, rollback.completed]
`)
	w := startWatcher(t, "--config.file="+cfg, "--rules="+rules, "--prometheus.url="+prom.URL,
		"--web.external-url=https://watcher.example.com/")

	exp.Set("shop_orders_per_minute", map[string]string{"service": "shop"}, 12)
	if code, _, errOut := cli(t, "publish", "--nats.url=nats://"+w.nats, "--service=shop", "--environment=production",
		"--version=2026.11.25-1"); code != 0 {
		t.Fatalf("publish: exit %d: %s", code, errOut)
	}
	testutil.Eventually(t, 40*time.Second, "both receivers told of run.failed and rollback.completed", func() bool {
		return len(hook.get(audit.RunFailed)) == 1 && len(hook.get(audit.RollbackCompleted)) == 1 &&
			len(slack.get(audit.RunFailed)) == 1 && len(slack.get(audit.RollbackCompleted)) == 1
	})
	if readlink(t, link) != "2026.11.24-3" {
		t.Errorf("link on %s, want the previous release", readlink(t, link))
	}
	hook.mu.Lock()
	if hook.badSig != 0 {
		t.Errorf("%d webhook requests with a bad signature", hook.badSig)
	}
	hook.mu.Unlock()
	var rec audit.Record
	if err := json.Unmarshal([]byte(hook.get(audit.RollbackCompleted)[0]), &rec); err != nil || rec.Service != "shop" {
		t.Fatalf("webhook body is not the record (%v): %s", err, hook.get(audit.RollbackCompleted)[0])
	}
	if d, ok := rec.RollbackResult(); !ok || d.To != "2026.11.24-3" || len(d.Hosts) != 1 {
		t.Errorf("webhook rollback.completed detail %+v", rec.Detail)
	}
	failed := slack.get(audit.RunFailed)[0]
	for _, want := range []string{"orders-per-minute", "12", "min 50", "https://watcher.example.com/#run-" + rec.RunID} {
		if !strings.Contains(failed, want) {
			t.Errorf("Slack run.failed lacks %q:\n%s", want, failed)
		}
	}
	if done := slack.get(audit.RollbackCompleted)[0]; !strings.Contains(done, "2026.11.25-1 → 2026.11.24-3") {
		t.Errorf("Slack rollback.completed lacks the host's switch:\n%s", done)
	}
	testutil.Eventually(t, 5*time.Second, "sent counted", func() bool {
		return metricValue(t, w, `watcher_notifications_total{result="sent",target="oncall"}`) == 2 &&
			metricValue(t, w, `watcher_notifications_total{result="sent",target="audit-sink"}`) == 2
	})
	if strings.Contains(w.stderr.String(), "SLACKTOKEN") {
		t.Error("the log shows the Slack URL")
	}
}

// A config whose secret file is missing stops `watcher run` before it
// starts, naming the target and the file.
func TestRunRefusesAMissingNotifySecret(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "url"), "https://hooks.example.com/x")
	cfg := filepath.Join(dir, "watcher.yml")
	writeFile(t, cfg, "notify:\n  - {name: sink, kind: webhook, url_file: url, secret_file: absent, on: [run.failed]}\n")
	code, _, errOut := cli(t, "run", "--config.file="+cfg, "--nats.listen="+testutil.FreeAddr(t), "--storage.path="+t.TempDir(),
		"--web.listen-address="+testutil.FreeAddr(t), "--rules="+filepath.Join(dir, "none-*.yml"))
	if code == 0 || !strings.Contains(errOut, "notify sink: secret_file") || !strings.Contains(errOut, filepath.Join(dir, "absent")) {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}
