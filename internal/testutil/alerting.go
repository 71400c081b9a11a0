package testutil

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// StartPrometheusAlerting is StartPrometheus evaluating the alerting rules
// in rules (a Prometheus rule file) every 500ms and sending what fires to
// the Alertmanager at alertmanager (host:port).
func StartPrometheusAlerting(t testing.TB, rules, alertmanager string, targets ...string) *Prometheus {
	t.Helper()
	dir := t.TempDir()
	rulesFile := filepath.Join(dir, "rules.yml")
	if err := os.WriteFile(rulesFile, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	extra := fmt.Sprintf(`rule_files: [%q]
alerting:
  alertmanagers:
    - static_configs:
        - targets: [%q]
`, rulesFile, alertmanager)
	return startPrometheus(t, dir, targets, extra)
}

// Alertmanager is a real Alertmanager (Debian package
// prometheus-alertmanager) run by a test.
type Alertmanager struct {
	Addr string // host:port
}

// StartAlertmanager runs Alertmanager with config (its YAML), clustering
// off, data in t.TempDir(), and waits until it is ready.
func StartAlertmanager(t testing.TB, config string) *Alertmanager {
	t.Helper()
	bin, err := exec.LookPath("prometheus-alertmanager")
	if err != nil {
		if bin, err = exec.LookPath("alertmanager"); err != nil {
			t.Fatalf("alertmanager not found: run scripts/deps.sh (Debian package prometheus-alertmanager)")
		}
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := FreeAddr(t)
	logf, err := os.Create(filepath.Join(dir, "alertmanager.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--cluster.listen-address=")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting alertmanager: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("alertmanager log:\n%s", b)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("alertmanager not ready after 30s; its log:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return &Alertmanager{Addr: addr}
}
