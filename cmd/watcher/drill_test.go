package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/rollback-watcher/watcher/internal/testutil"
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

// TestDrillOverSSH rehearses on two hosts of a real sshd (two loopback
// addresses of one server), each with its own link, through SFTP; then
// `activate --host` deploys over SSH the same way.
func TestDrillOverSSH(t *testing.T) {
	sshd := testutil.StartSSHD(t, "127.0.0.2", "127.0.0.3")
	dir := t.TempDir()
	for _, v := range []string{"1", "2", "3"} {
		if err := os.MkdirAll(filepath.Join(dir, "releases", v), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(dir, "releases", "2", "previousVersion"), filepath.Join(dir, "releases", "1")+"\n")
	for _, h := range []string{"127.0.0.2", "127.0.0.3"} {
		if err := os.MkdirAll(filepath.Join(dir, h), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("../releases/2", filepath.Join(dir, h, "current")); err != nil {
			t.Fatal(err)
		}
	}
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, fmt.Sprintf(`policies:
  - name: shop
    match: {service: shop, environment: test}
    checks:
      - {name: up, query: up, min: 1}
    rollback:
      link: %s/{{ .Host }}/current
      releases_dir: %s/releases
      hosts: [%s, %s]
      ssh: {user: %s, identity_file: %s, known_hosts: %s}
`, dir, dir, sshd.Addrs[0], sshd.Addrs[1], sshd.User, sshd.IdentityFile, sshd.KnownHosts))
	release3 := filepath.Join(dir, "releases", "3")
	code, out, errOut := cli(t, "drill", "--rules="+rules, "--service=shop", "--environment=test", "--release="+release3)
	if code != 0 {
		t.Fatalf("drill over SSH: exit %d: %s\n%s\nsshd log:\n%s", code, errOut, out, sshd.Log())
	}
	t.Logf("drill report:\n%s", out)
	for _, h := range sshd.Addrs {
		for _, step := range []string{"activate", "rollback", "activate again"} {
			if !regexp.MustCompile(`(?m)^` + step + `\s+` + regexp.QuoteMeta(h) + `\s+ok`).MatchString(out) {
				t.Errorf("drill report lacks %q ok for %s:\n%s", step, h, out)
			}
		}
	}
	for _, h := range []string{"127.0.0.2", "127.0.0.3"} {
		if got := readlink(t, filepath.Join(dir, h, "current")); got != "3" {
			t.Errorf("%s: link on %s after the drill, want 3", h, got)
		}
	}

	// activate --host: release 2 again on both hosts, over SSH.
	code, out, errOut = cli(t, "activate", "--link="+filepath.Join(dir, "127.0.0.2", "current"), "--release="+filepath.Join(dir, "releases", "2"),
		"--host="+sshd.Addrs[0], "--ssh.user="+sshd.User, "--ssh.identity-file="+sshd.IdentityFile, "--ssh.known-hosts="+sshd.KnownHosts)
	if code != 0 || !strings.Contains(out, sshd.Addrs[0]+": ") {
		t.Fatalf("activate --host: exit %d: %s\n%s", code, errOut, out)
	}
	if got := readlink(t, filepath.Join(dir, "127.0.0.2", "current")); got != "2" {
		t.Errorf("activate --host left the link on %s, want 2", got)
	}
	// An unknown host key is refused, and nothing is switched.
	empty := filepath.Join(dir, "empty_known_hosts")
	writeFile(t, empty, "")
	code, _, errOut = cli(t, "activate", "--link="+filepath.Join(dir, "127.0.0.2", "current"), "--release="+release3,
		"--host="+sshd.Addrs[0], "--ssh.user="+sshd.User, "--ssh.identity-file="+sshd.IdentityFile, "--ssh.known-hosts="+empty)
	if code == 0 || !strings.Contains(errOut, "known_hosts") {
		t.Errorf("activate with an unknown host key: exit %d, stderr %q", code, errOut)
	}
	if got := readlink(t, filepath.Join(dir, "127.0.0.2", "current")); got != "2" {
		t.Errorf("a refused host key still switched the link to %s", got)
	}
}
