package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestDeployEventsOverHTTP runs `watcher run` with `ingest:` in its
// --config.file: an event POSTed with a bearer token, and GitHub's
// documented deployment_status example signed with the webhook secret,
// are stored on DEPLOYS and start their runs through the watcher's own
// consumer, as events from NATS do; a wrong token gets 401 and an
// event.rejected record, never a run. The watcher serves TLS and has
// basic_auth_users in --web.config.file (its certificate named relative to
// the file): the senders need neither, the status page and /metrics still
// ask for basic auth.
func TestDeployEventsOverHTTP(t *testing.T) {
	dir := t.TempDir()
	pki := testutil.NewPKI(t)
	certFile, keyFile := pki.Server(t, "watcher")
	for name, from := range map[string]string{"tls/server.pem": certFile, "tls/server-key.pem": keyFile} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, "tls"), 0o700); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name), string(b))
	}
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webConfig := filepath.Join(dir, "web.yml")
	writeFile(t, webConfig, "tls_server_config:\n  cert_file: tls/server.pem\n  key_file: tls/server-key.pem\n"+
		"basic_auth_users:\n  prometheus: "+string(hash)+"\n")
	ca, err := os.ReadFile(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	t.Cleanup(client.CloseIdleConnections)
	const token, secret = "ci-token-5f2b8c0e9d7a4b1c8e6f3a2d", "github-secret-9e8d7c6b5a4f3e2d1c0b"
	writeFile(t, filepath.Join(dir, "ci-token"), token+"\n")
	writeFile(t, filepath.Join(dir, "github-secret"), secret+"\n")
	writeFile(t, filepath.Join(dir, "rules.yml"), `policies:
  - name: shop
    match: {service: "shop-*", environment: production}
    window: 1s
    interval: 500ms
    checks:
      - {name: orders, query: 'shop_orders{service="{{ .Service }}"}', min: 1}
    rollback: {mode: publish}
`)
	cfg := filepath.Join(dir, "watcher.yml")
	writeFile(t, cfg, `rule_files: [rules.yml]
ingest:
  tokens:
    - name: ci
      token_file: ci-token
      services: ["shop-*"]
      environments: [production]
  github:
    secret_file: github-secret
    services: ["*"]
    environments: [production]
`)
	w := startWatcher(t, "--config.file="+cfg, "--prometheus.url=http://127.0.0.1:1", "--web.config.file="+webConfig)
	base := "https://" + w.web

	post := func(path string, body []byte, headers map[string]string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, base+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	get := func(path string, user string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if user != "" {
			req.SetBasicAuth(user, "s3cret")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, path := range []string{"/", "/metrics"} {
		if code, _ := get(path, ""); code != http.StatusUnauthorized {
			t.Errorf("GET %s without basic auth: %d, want 401", path, code)
		}
		if code, _ := get(path, "prometheus"); code != http.StatusOK {
			t.Errorf("GET %s as prometheus: %d, want 200", path, code)
		}
	}

	event := []byte(`{"id": "d-http-1", "service": "shop-api", "environment": "production", "version": "2026.11.25-1"}`)
	if code, body := post("/api/v1/events", event, map[string]string{"Authorization": "Bearer " + token, "Content-Type": "application/json"}); code != http.StatusAccepted ||
		!strings.Contains(body, `"id":"d-http-1"`) {
		t.Fatalf("POST /api/v1/events: %d %s", code, body)
	}
	example, err := os.ReadFile("../../internal/web/testdata/github/deployment_status.json")
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(example)
	if code, body := post("/api/v1/hooks/github", example, map[string]string{"Content-Type": "application/json", "X-GitHub-Event": "deployment_status",
		"X-Hub-Signature-256": "sha256=" + hex.EncodeToString(mac.Sum(nil))}); code != http.StatusAccepted {
		t.Fatalf("POST /api/v1/hooks/github: %d %s", code, body)
	}
	if code, body := post("/api/v1/events", []byte(`{"id": "d-http-2", "service": "shop-api", "environment": "production", "version": "2"}`),
		map[string]string{"Authorization": "Bearer wrong-" + token}); code != http.StatusUnauthorized {
		t.Fatalf("a wrong token: %d %s", code, body)
	}

	var recs []audit.Record
	testutil.Eventually(t, 20*time.Second, "run.started for d-http-1 and run.skipped for the GitHub deployment", func() bool {
		recs = history(t, w.nats)
		return hasKind(byDeploy(recs, "d-http-1"), audit.RunStarted) && hasKind(byDeploy(recs, "github-deployment-145988746"), audit.RunSkipped)
	})
	started := byKind(byDeploy(recs, "d-http-1"), audit.RunStarted)[0]
	if started.Policy != "shop" || started.Detail["format"] != "json" {
		t.Errorf("run.started %+v", started)
	}
	skipped := byKind(byDeploy(recs, "github-deployment-145988746"), audit.RunSkipped)[0]
	if skipped.Service != "Hello-World" || skipped.Environment != "production" || skipped.Version != "f95f852bd8fca8fcc58a9a2d6c842781e32a215e" {
		t.Errorf("run.skipped %+v", skipped)
	}
	var rejected []audit.Record
	for _, r := range byKind(recs, audit.EventRejected) {
		if d, ok := r.EventRejected(); ok && d.HTTP != nil && d.HTTP.Status == http.StatusUnauthorized {
			rejected = append(rejected, r)
		}
	}
	if len(rejected) != 1 || len(byDeploy(recs, "d-http-2")) != 0 {
		t.Errorf("the wrong token: %d event.rejected records with status 401, and %d records of d-http-2", len(rejected), len(byDeploy(recs, "d-http-2")))
	}
	_, metrics := get("/metrics", "prometheus")
	for _, want := range []string{
		`watcher_ingest_requests_total{endpoint="events",result="accepted"} 1`,
		`watcher_ingest_requests_total{endpoint="github",result="accepted"} 1`,
		`watcher_ingest_requests_total{endpoint="events",result="unauthorized"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if log := w.stderr.String(); strings.Contains(log, token) || strings.Contains(log, secret) {
		t.Error("a secret is in the log")
	}
	if !strings.Contains(w.stderr.String(), `ingest="token ci, github"`) {
		t.Errorf("the start-up line does not name the senders:\n%s", grepLines(w.stderr.String(), "watcher running"))
	}
}

// TestIngestConfigErrors: `watcher run` refuses an `ingest:` it cannot
// honour before starting anything, in one line that names the sender and
// the file, never a secret; `watcher check` reports the file's mistakes
// as file:line.
func TestIngestConfigErrors(t *testing.T) {
	testSecretConfigErrors(t, "ingest", []secretConfigCase{
		{"missing token file", "  tokens:\n    - {name: ci, token_file: nowhere, services: [shop], environments: [production]}\n",
			"ingest.tokens ci: token_file: open %DIR%/nowhere: no such file or directory"},
		{"short secret", "  github: {secret_file: short, services: [shop], environments: [production]}\n",
			"ingest.github: secret_file: %DIR%/short holds 7 characters, fewer than 16"},
	}, "  gitlab:\n    token_file: t\n    services: [shop]\n", ":3: ingest.gitlab: environments is required")
}

// secretConfigCase is a section of --config.file naming a secret file
// that `watcher run` must refuse, and what it must say (%DIR%: the
// directory of the file).
type secretConfigCase struct{ name, body, want string }

// testSecretConfigErrors runs `watcher run` on each case of section
// (ingest:, decisions:): it must stop before starting anything, in one
// line saying want and never the short secret; then `watcher check` on
// the section bad must report checkWant after the file's name.
func testSecretConfigErrors(t *testing.T, section string, cases []secretConfigCase, bad, checkWant string) {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "rules.yml"), "policies: []\n")
	writeFile(t, filepath.Join(dir, "short"), "hunter2\n")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(dir, "watcher.yml")
			writeFile(t, cfg, "rule_files: [rules.yml]\n"+section+":\n"+tc.body)
			code, _, errOut := cliWithin(t, 20*time.Second, "run", "--config.file="+cfg, "--storage.path="+t.TempDir(),
				"--nats.listen="+testutil.FreeAddr(t), "--web.listen-address="+testutil.FreeAddr(t))
			want := strings.ReplaceAll(tc.want, "%DIR%", dir)
			if code == 0 || !strings.Contains(errOut, want) || strings.Contains(errOut, "hunter2") {
				t.Errorf("exit %d, stderr %q; want it to say %q", code, errOut, want)
			}
			assertOneLine(t, errOut)
		})
	}
	cfg := filepath.Join(dir, "bad.yml")
	writeFile(t, cfg, "rule_files: [rules.yml]\n"+section+":\n"+bad)
	code, _, errOut := cli(t, "check", "--config.file="+cfg)
	if want := cfg + checkWant; code == 0 || !strings.Contains(errOut, want) {
		t.Errorf("check: exit %d, stderr %q; want %q", code, errOut, want)
	}
}
