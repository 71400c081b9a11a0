package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDrillLocal rehearses deploy, rollback, redeploy on the watcher's own
// filesystem, data step included, and checks the report and the layout.
func TestDrillLocal(t *testing.T) {
	dir := t.TempDir()
	link := release(t, dir, "2026.11.24-3", "2026.11.25-1")
	// The drill deploys a third release.
	next := filepath.Join(dir, "releases", "2026.11.26-1")
	if err := os.MkdirAll(next, 0o755); err != nil {
		t.Fatal(err)
	}
	dataLog := filepath.Join(dir, "data.log")
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, fmt.Sprintf(`policies:
  - name: shop
    match: {service: shop, environment: test}
    checks:
      - {name: up, query: up, min: 1}
    rollback:
      link: %s
      data:
        command: ["sh", "-c", "echo down to $0 >> %s", "{{ .PreviousVersion }}"]
        order: before_code
`, link, dataLog))

	code, out, errOut := cli(t, "drill", "--rules="+rules, "--service=shop", "--environment=test", "--release="+next)
	if code != 0 {
		t.Fatalf("drill: exit %d: %s\n%s", code, errOut, out)
	}
	for _, want := range []string{"activate        local  ok", "rollback        local  ok", "2026.11.26-1 -> 2026.11.25-1",
		"data ", "activate again  local  ok", "drill of shop in test passed"} {
		if !strings.Contains(out, want) {
			t.Errorf("drill report lacks %q:\n%s", want, out)
		}
	}
	if got := readlink(t, link); got != "2026.11.26-1" {
		t.Errorf("after the drill the link is on %s, want the drilled release", got)
	}
	if _, err := os.Stat(filepath.Join(next, "ROLLED_BACK")); err == nil {
		t.Error("the drilled release still carries ROLLED_BACK after it was activated again")
	}
	if b, _ := os.ReadFile(dataLog); strings.TrimSpace(string(b)) != "down to 2026.11.25-1" {
		t.Errorf("data step log = %q, want the rollback to 2026.11.25-1", b)
	}
}

// TestDrillFails shows a broken rollback path: the data step fails, so the
// drill exits non-zero and says which step.
func TestDrillFails(t *testing.T) {
	dir := t.TempDir()
	link := release(t, dir, "1", "2")
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, fmt.Sprintf(`policies:
  - name: shop
    match: {service: shop}
    checks:
      - {name: up, query: up, min: 1}
    rollback:
      link: %s
      data: {command: ["false"], order: before_code}
`, link))
	code, out, errOut := cli(t, "drill", "--rules="+rules, "--service=shop", "--environment=test", "--release="+filepath.Join(dir, "releases", "2"))
	if code != 1 || !strings.Contains(out, "FAIL") || !strings.Contains(errOut, "FAILED") {
		t.Errorf("drill with a failing data step: exit %d\nstdout:\n%s\nstderr: %s", code, out, errOut)
	}
	if got := readlink(t, link); got != "2" {
		t.Errorf("a failed data step before the code switch moved the link to %s", got)
	}
}
