package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestSecuredEmbeddedServer: `watcher run` with users and TLS on its
// embedded server (the README's production setup). The deploy tool's user
// publishes its own service's deploys with `watcher publish` and nothing
// else; the operator's user requests rollbacks and reads the history;
// anonymous and plain-text clients are refused; no secret reaches the log.
func TestSecuredEmbeddedServer(t *testing.T) {
	dir := t.TempDir()
	pki := testutil.NewPKI(t)
	cert, key := pki.Server(t, "watcher")
	const ciPass, opsPass = "ci-shop-pw-9f3a71", "ops-pw-27c1e0"
	writeFile(t, filepath.Join(dir, "ci-shop.pass"), ciPass+"\n")
	writeFile(t, filepath.Join(dir, "ops.pass"), opsPass+"\n")
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, `policies:
  - name: shop
    match: {service: shop, environment: prod}
    window: 2s
    interval: 1s
    checks:
      - name: orders
        query: orders_per_minute
        min: 1
    rollback: {mode: publish}
`)
	runCfg := filepath.Join(dir, "watcher.yml")
	writeFile(t, runCfg, fmt.Sprintf(`nats:
  server:
    tls: {cert_file: %s, key_file: %s}
    users:
      - user: ci-shop
        password_file: ci-shop.pass
        publish: [deploys.prod.shop]
        subscribe: ["_INBOX.>"]
      - user: ops
        password_file: ops.pass
        publish:
          - "rollbacks.>"
          - "$JS.API.STREAM.INFO.DEPLOYS"
          - "$JS.API.STREAM.MSG.GET.DEPLOYS"
          - "$JS.API.CONSUMER.CREATE.AUDIT.>"
          - "$JS.API.CONSUMER.INFO.AUDIT.>"
          - "$JS.API.CONSUMER.MSG.NEXT.AUDIT.>"
          - "$JS.API.CONSUMER.DELETE.AUDIT.>"
          - "$JS.API.STREAM.INFO.KV_WATCHER_ROLLBACK_REQUESTS"
          - "$JS.API.DIRECT.GET.KV_WATCHER_ROLLBACK_REQUESTS.>"
        subscribe: ["_INBOX.>"]
`, cert, key))
	client := func(name, body string) string {
		p := filepath.Join(dir, name+".yml")
		writeFile(t, p, fmt.Sprintf("nats:\n  tls_config: {ca_file: %s}\n%s", pki.CAFile, body))
		return "--config.file=" + p
	}
	ci := client("ci", "  user: ci-shop\n  password_file: ci-shop.pass\n")
	ops := client("ops", "  user: ops\n  password_file: ops.pass\n")
	anon := client("anon", "")

	w := startWatcher(t, "--config.file="+runCfg, "--rules="+rules, "--prometheus.url=http://"+testutil.FreeAddr(t))
	url := "--nats.url=tls://" + w.nats

	// The deploy tool publishes its deploy, acknowledged.
	code, id, errOut := cli(t, "publish", url, ci, "--service=shop", "--environment=prod", "--version=v2")
	if code != 0 {
		t.Fatalf("ci-shop: watcher publish deploys.prod.shop: exit %d: %s", code, errOut)
	}
	id = strings.TrimSpace(id)
	// ... and nothing else: refused at once as a permission violation,
	// not after a timeout that blames the disk.
	for _, args := range [][]string{
		{"publish", url, ci, "--service=other", "--environment=prod", "--version=v2"},
		{"rollback", url, ci, "--service=shop", "--environment=prod", "--reason=not mine to ask"},
	} {
		code, _, errOut := cli(t, args...)
		if code == 0 || !strings.Contains(errOut, "Permissions Violation") || !strings.Contains(errOut, "nats.server.users") {
			t.Errorf("ci-shop: watcher %s %s: exit %d, stderr %q; want a permission violation that says where to grant it", args[0], args[3], code, errOut)
		}
		assertOneLine(t, errOut)
		t.Logf("watcher %s as ci-shop: %s", args[0], strings.TrimSpace(errOut))
	}
	// Without credentials, or without TLS, nobody gets in.
	code, _, errOut = cli(t, "rollback", url, anon, "--service=shop", "--environment=prod", "--reason=anonymous")
	if code == 0 || !strings.Contains(errOut, "Authorization Violation") {
		t.Errorf("anonymous watcher rollback: exit %d, stderr %q; want an authorization error", code, errOut)
	}
	code, _, errOut = cli(t, "publish", "--nats.url=nats://"+w.nats, "--service=shop", "--environment=prod", "--version=v3")
	if code == 0 || !strings.Contains(errOut, "tls_config") {
		t.Errorf("plain-text watcher publish: exit %d, stderr %q; want a TLS error", code, errOut)
	}

	// The operator may look a held request up (the README's grants for
	// `watcher cancel`); this one is unknown. The deploy tool may not.
	code, _, errOut = cli(t, "cancel", url, ops, "--request=rb-unknown", "--reason=checking")
	if code != 1 || !strings.Contains(errOut, "unknown rollback request rb-unknown") {
		t.Errorf("ops: watcher cancel of an unknown request: exit %d, stderr %q; want 1, unknown", code, errOut)
	}
	code, _, errOut = cli(t, "cancel", url, ci, "--request=rb-unknown", "--reason=checking")
	if code == 0 || !strings.Contains(errOut, "Permissions Violation") {
		t.Errorf("ci-shop: watcher cancel: exit %d, stderr %q; want a permission violation", code, errOut)
	}
	assertOneLine(t, errOut)

	// The operator requests a rollback and reads the trail.
	if code, _, errOut := cli(t, "rollback", url, ops, "--service=shop", "--environment=prod", "--reason=ops says so"); code != 0 {
		t.Errorf("ops: watcher rollback: exit %d: %s", code, errOut)
	}
	var recs []audit.Record
	testutil.Eventually(t, 20*time.Second, "the deploy's run in the history", func() bool {
		recs = historyURL(t, "tls://"+w.nats, ops, "--service=shop")
		return hasKind(recs, audit.RunStarted) && hasKind(recs, audit.RollbackRequested)
	})
	for _, r := range recs {
		if r.Service != "shop" {
			t.Errorf("a record for %s: only shop was allowed to deploy", r.Service)
		}
		if r.Kind == audit.RunStarted && r.DeployID != id {
			t.Errorf("run.started for event %s, want %s", r.DeployID, id)
		}
	}
	if log := w.stderr.String(); strings.Contains(log, ciPass) || strings.Contains(log, opsPass) {
		t.Error("a password is in the watcher's log")
	}
}

// nats.server secures the embedded server only: with --nats.url it would
// be silently ignored, leaving the external server as open as it was.
func TestServerSectionWithExternalNATSIsAUsageError(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "watcher.yml")
	writeFile(t, cfg, "nats:\n  server:\n    users:\n      - {user: ci, password_file: ci.pass, publish: [deploys.prod.shop]}\n")
	code, _, errOut := cli(t, "run", "--config.file="+cfg, "--nats.url=nats://"+testutil.FreeAddr(t), "--web.listen-address="+testutil.FreeAddr(t))
	if code != 2 || !strings.Contains(errOut, "nats.server secures the embedded server") {
		t.Errorf("exit %d, stderr %q; want 2 and why", code, errOut)
	}
	assertOneLine(t, errOut)
}
