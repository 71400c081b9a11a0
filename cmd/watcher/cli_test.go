package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/testutil"
)

// assertOneLine checks the README's promise for a failing command: one
// clear line on stderr, never a panic or a stack trace.
func assertOneLine(t *testing.T, stderr string) {
	t.Helper()
	if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
		t.Errorf("stderr is not exactly one line:\n%s", stderr)
	}
	for _, bad := range []string{"panic", "goroutine", "internal error"} {
		if strings.Contains(stderr, bad) {
			t.Errorf("stderr contains %q:\n%s", bad, stderr)
		}
	}
}

// cliWithin runs cli but fails the test instead of hanging when a command
// does not return: the deadline only catches hangs.
func cliWithin(t *testing.T, d time.Duration, args ...string) (int, string, string) {
	t.Helper()
	type result struct {
		code        int
		out, errOut string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errOut := cli(t, args...)
		done <- result{code, out, errOut}
	}()
	select {
	case r := <-done:
		return r.code, r.out, r.errOut
	case <-time.After(d):
		t.Fatalf("watcher %s did not return within %s", strings.Join(args, " "), d)
		return 0, "", ""
	}
}

// TestBadCommandLines: every bad command line exits 2 with one line on
// stderr that says what is wrong. Nothing here reaches a server: the
// --nats.url given is closed, so a command that wrongly got as far as
// connecting fails the test with exit 1 instead of publishing.
func TestBadCommandLines(t *testing.T) {
	closed := "--nats.url=nats://" + testutil.FreeAddr(t)
	for _, tc := range []struct {
		name string
		args []string
		want string // in the stderr line
	}{
		{"run bad nats.listen", []string{"run", "--nats.listen=nope", "--storage.path=" + t.TempDir(),
			"--web.listen-address=127.0.0.1:0"}, "--nats.listen"},
		{"run bad log level", []string{"run", "--log.level=loud"}, "loud"},
		{"run relative external url", []string{"run", "--web.external-url=watcher.example.com", "--storage.path=" + t.TempDir(),
			"--web.listen-address=127.0.0.1:0"}, "--web.external-url"},
		{"publish without service", []string{"publish", closed, "--environment=production", "--version=1.0"}, "--service"},
		{"publish hostile service", []string{"publish", closed, "--service=shop;rm -rf /", "--environment=production",
			"--version=1.0"}, `field "service"`},
		{"publish path version", []string{"publish", closed, "--service=shop", "--environment=production",
			"--version=../../etc"}, `field "version"`},
		{"publish option host", []string{"publish", closed, "--service=shop", "--environment=production",
			"--version=1.0", "--host=-oProxyCommand=x"}, `field "hosts[0]"`},
		{"publish bad format", []string{"publish", closed, "--service=shop", "--environment=production",
			"--version=1.0", "--format=xml"}, "xml"},
		{"rollback without reason", []string{"rollback", closed, "--service=shop", "--environment=production"}, "--reason"},
		{"rollback path to-version", []string{"rollback", closed, "--service=shop", "--environment=production",
			"--to-version=../x", "--reason=r"}, `field "to_version"`},
		{"cancel without reason", []string{"cancel", closed, "--request=rb-1"}, "--reason"},
		{"cancel wildcard request", []string{"cancel", closed, "--request=rb-*", "--reason=r"}, `--request="rb-*" is not a request id`},
		{"approve control characters", []string{"approve", closed, "--request=rb-1", "--reason=ok\x1b[2J"}, "--reason contains control characters"},
		{"history limit not a number", []string{"history", closed, "--limit=abc"}, "limit"},
		{"activate without release", []string{"activate", "--link=/tmp/x"}, "--release"},
		{"unknown command", []string{"frobnicate"}, "frobnicate"},
		{"unknown flag", []string{"history", closed, "--frobnicate"}, "--frobnicate"},
		{"unknown global flag", []string{"--frobnicate", "version"}, "--frobnicate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := cliWithin(t, 30*time.Second, tc.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2 (usage); stderr:\n%s", code, errOut)
			}
			assertOneLine(t, errOut)
			if !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr does not name %q: %s", tc.want, errOut)
			}
		})
	}
}

// TestUnreachableServer: the client commands say quickly, in one line, that
// they cannot reach NATS.
func TestUnreachableServer(t *testing.T) {
	url := "--nats.url=nats://" + testutil.FreeAddr(t) // nothing listens there
	for _, args := range [][]string{
		{"publish", url, "--service=shop", "--environment=production", "--version=2026.11.25-1"},
		{"history", url},
		{"rollback", url, "--service=shop", "--environment=production", "--reason=test"},
		{"cancel", url, "--request=rb-1", "--reason=test"},
		{"approve", url, "--request=rb-1", "--reason=test"},
	} {
		t.Run(args[0], func(t *testing.T) {
			code, out, errOut := cliWithin(t, 20*time.Second, args...)
			if code != 1 {
				t.Errorf("exit %d, want 1; stderr:\n%s", code, errOut)
			}
			assertOneLine(t, errOut)
			if !strings.Contains(errOut, "cannot connect") {
				t.Errorf("stderr does not say it cannot connect: %s", errOut)
			}
			if out != "" {
				t.Errorf("stdout = %q, want nothing (no id for an event that was not sent)", out)
			}
		})
	}
}

// badRules has two problems, on lines 4 and 5, and nothing else wrong.
const badRules = `policies:
  - name: bad
    match: {service: shop, environment: production}
    window: 10 minutes
    colour: blue
    checks:
      - name: up
        query: up
        min: 1
    rollback:
      link: /srv/shop/current
`

func TestCheck(t *testing.T) {
	t.Run("shipped rules are valid", func(t *testing.T) {
		files, err := filepath.Glob("../../rules/*.yml")
		if err != nil || len(files) == 0 {
			t.Fatalf("no rules in ../../rules: %v", err)
		}
		code, out, errOut := cli(t, "check", "../../rules/*.yml")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		m := regexp.MustCompile(`^(\d+) policies in (\d+) files are valid`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("output does not name the counts: %q", out)
		}
		if n, _ := strconv.Atoi(m[2]); n != len(files) {
			t.Errorf("output names %d files, want %d: %q", n, len(files), out)
		}
		if n, _ := strconv.Atoi(m[1]); n < len(files) {
			t.Errorf("output names %d policies in %d files: %q", n, len(files), out)
		}
	})

	t.Run("every problem as file:line: message", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.yml")
		writeFile(t, bad, badRules)
		code, out, errOut := cli(t, "check", bad)
		if code != 1 {
			t.Fatalf("exit %d, want 1; stderr:\n%s", code, errOut)
		}
		if out != "" {
			t.Errorf("stdout = %q, want nothing", out)
		}
		lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
		want := []string{bad + `:4: window: invalid duration "10 minutes"`, bad + `:5: unknown key "colour"`}
		if len(lines) != len(want) {
			t.Fatalf("got %d lines, want %d (one per problem):\n%s", len(lines), len(want), errOut)
		}
		for i, w := range want {
			if !strings.HasPrefix(lines[i], w) {
				t.Errorf("line %d = %q, want it to start with %q", i+1, lines[i], w)
			}
		}
	})

	t.Run("a timeout longer than an interval is a warning", func(t *testing.T) {
		dir := t.TempDir()
		rules := filepath.Join(dir, "rules.yml")
		writeFile(t, rules, `policies:
  - name: fast
    match: {service: shop}
    interval: 2s
    checks:
      - {name: up, query: up, min: 1}
    rollback: {mode: publish}
  - name: slow
    match: {service: cart}
    interval: 30s
    checks:
      - {name: up, query: up, min: 1}
    rollback: {mode: publish}
`)
		cfg := filepath.Join(dir, "watcher.yml")
		writeFile(t, cfg, "rule_files: [rules.yml]\nprometheus:\n  timeout: 10s\n")
		code, out, errOut := cli(t, "check", "--config.file="+cfg)
		if code != 0 || !strings.HasPrefix(out, "2 policies in 1 files are valid") {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and both valid", code, out, errOut)
		}
		want := rules + ":2: warning: policy fast: its queries get 2s (its interval), not prometheus.timeout 10s; a slower answer is an error measurement\n"
		if errOut != want {
			t.Errorf("stderr = %q, want %q", errOut, want)
		}
	})

	t.Run("comparisons and scores are shown as read", func(t *testing.T) {
		rules := filepath.Join(t.TempDir(), "rules.yml")
		writeFile(t, rules, `policies:
  - name: plain
    match: {service: shop}
    checks:
      - {name: up, query: up, min: 1}
    rollback: {mode: publish}
  - name: scored
    match: {service: cart}
    score: {pass: 80, marginal: 50}
    checks:
      - {name: up, query: up, min: 1}
      - name: errors
        critical: true
        weight: 3
        compare:
          with: {offset: 1d}
          errors: sum(increase(errors_total[{{ .Range }}]))
          total: sum(increase(requests_total[{{ .Range }}]))
          margin: 0.5
    rollback: {mode: publish}
  - name: canary
    match: {service: cart, environment: canary}
    checks:
      - name: latency
        query: sum by (version) (rate(latency_sum[1m]))
        compare: {with: canary, direction: either, margin: 0.1}
    rollback: {mode: publish}
`)
		code, out, errOut := cli(t, "check", rules)
		if code != 0 || errOut != "" {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
		want := "3 policies in 1 files are valid: " + rules + "\n" +
			"scored (" + rules + ":7): score: pass >= 80, marginal >= 50, on_marginal keep\n" +
			"  up (weight 1): min 1\n" +
			"  errors (weight 3, critical): compare error rate with offset 1d: increase > 50% at 95%; min_total 100\n" +
			"canary (" + rules + ":21): any failed check fails the run\n" +
			"  latency: compare canary (label version) with the others: increase or decrease > 10% at 95%; step 15s, min_samples 10\n"
		if out != want {
			t.Errorf("stdout:\n%s\nwant:\n%s", out, want)
		}
	})

	t.Run("on_marginal ask needs a hold to wait for an answer", func(t *testing.T) {
		rules := filepath.Join(t.TempDir(), "rules.yml")
		writeFile(t, rules, `policies:
  - name: scored
    score: {pass: 80, marginal: 50}
    on_marginal: ask
    checks:
      - {name: up, query: up, min: 1}
    rollback: {mode: publish}
`)
		code, _, errOut := cli(t, "check", rules)
		if want := rules + ":4: on_marginal: ask waits for `watcher approve` until rollback.hold ends: set rollback.hold (such as 15m)\n"; code != 1 || errOut != want {
			t.Errorf("exit %d, stderr %q; want 1 and %q", code, errOut, want)
		}
	})

	t.Run("missing config file is a usage error", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "nope.yml")
		code, _, errOut := cli(t, "check", "--config.file="+missing)
		if code != 2 {
			t.Errorf("exit %d, want 2; stderr:\n%s", code, errOut)
		}
		assertOneLine(t, errOut)
		if !strings.Contains(errOut, missing) {
			t.Errorf("stderr does not name %s: %s", missing, errOut)
		}
	})
}

func TestVersionAndHelp(t *testing.T) {
	code, out, errOut := cli(t, "version")
	if code != 0 || !strings.Contains(out, "watcher") || errOut != "" {
		t.Errorf("version: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, errOut = cli(t, "--help")
	if code != 0 || !strings.Contains(out, "Commands:") || errOut != "" {
		t.Errorf("--help: exit %d, stderr %q, stdout:\n%s", code, errOut, out)
	}

	// Credentials go in --config.file, never in flags: no flag is named
	// for one, and no default carries one (a URL with user:password@).
	flagRE := regexp.MustCompile(`--(?:\[no-\])?([a-z][a-z0-9.-]*)(?:=("[^"]*"|\S+))?`)
	secretName := regexp.MustCompile(`(?i)pass|secret|token|credential|nkey|key$`)
	for _, cmd := range []string{"run", "publish", "rollback", "history", "check", "activate", "cancel", "approve"} {
		code, out, errOut := cli(t, cmd, "--help")
		if code != 0 || errOut != "" {
			t.Errorf("%s --help: exit %d, stderr %q", cmd, code, errOut)
			continue
		}
		if !strings.Contains(out, "usage: watcher "+cmd) {
			t.Errorf("%s --help does not show its usage:\n%s", cmd, out)
		}
		for _, m := range flagRE.FindAllStringSubmatch(out, -1) {
			name, def := m[1], strings.Trim(m[2], `"`)
			if secretName.MatchString(name) {
				t.Errorf("%s has a flag for a secret: --%s", cmd, name)
			}
			if strings.Contains(def, "@") || secretName.MatchString(def) {
				t.Errorf("%s --%s has a secret-looking default %q", cmd, name, def)
			}
		}
	}
}

// TestRunWithInvalidRules: `watcher run` refuses to start on invalid
// policies, names each problem, and still prints one line.
func TestRunWithInvalidRules(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yml")
	writeFile(t, bad, badRules)
	code, _, errOut := cliWithin(t, 30*time.Second, "run", "--rules="+bad, "--nats.listen=127.0.0.1:0",
		"--storage.path="+dir, "--web.listen-address=127.0.0.1:0")
	if code != 1 {
		t.Errorf("exit %d, want 1; stderr:\n%s", code, errOut)
	}
	assertOneLine(t, errOut)
	for _, want := range []string{bad + ":4: window: invalid duration", bad + `:5: unknown key "colour"`} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr does not name %q: %s", want, errOut)
		}
	}

	code, _, errOut = cliWithin(t, 30*time.Second, "run", "--rules="+filepath.Join(dir, "none-*.yml"),
		"--nats.listen=127.0.0.1:0", "--storage.path="+dir, "--web.listen-address=127.0.0.1:0")
	if code != 1 || !strings.Contains(errOut, "matches no files") {
		t.Errorf("run with a glob that matches nothing: exit %d, stderr:\n%s", code, errOut)
	}
	assertOneLine(t, errOut)
}

func TestActivate(t *testing.T) {
	dir := t.TempDir()
	link := release(t, dir, "2026.11.24-3", "2026.11.25-1")
	next := filepath.Join(dir, "releases", "2026.11.26-1")
	if err := os.MkdirAll(next, 0o755); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := cli(t, "activate", "--link="+link, "--release="+next)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if got := readlink(t, link); got != "2026.11.26-1" {
		t.Errorf("link on %s, want 2026.11.26-1", got)
	}
	if !strings.Contains(out, "2026.11.25-1") {
		t.Errorf("output does not name the previous release: %q", out)
	}
	b, err := os.ReadFile(filepath.Join(next, "previousVersion"))
	if err != nil {
		t.Fatalf("previousVersion not written: %v", err)
	}
	if got := filepath.Base(strings.TrimSpace(string(b))); got != "2026.11.25-1" {
		t.Errorf("previousVersion = %q, want the release that was current (2026.11.25-1)", b)
	}

	// Activating the current release again changes nothing.
	if code, _, errOut := cli(t, "activate", "--link="+link, "--release="+next); code != 0 {
		t.Errorf("activate again: exit %d: %s", code, errOut)
	}
	if b2, _ := os.ReadFile(filepath.Join(next, "previousVersion")); string(b2) != string(b) {
		t.Errorf("activating the current release rewrote previousVersion: %q -> %q", b, b2)
	}

	for _, args := range [][]string{
		{"--link=current", "--release=" + next},
		{"--link=" + link, "--release=releases/2026.11.24-3"},
	} {
		code, _, errOut := cli(t, append([]string{"activate"}, args...)...)
		if code != 2 {
			t.Errorf("activate %v: exit %d, want 2; stderr:\n%s", args, code, errOut)
		}
		assertOneLine(t, errOut)
	}

	code, _, errOut = cli(t, "activate", "--link="+link, "--release="+filepath.Join(dir, "releases", "missing"))
	if code != 1 {
		t.Errorf("activate a missing release: exit %d, want 1; stderr:\n%s", code, errOut)
	}
	assertOneLine(t, errOut)
	if got := readlink(t, link); got != "2026.11.26-1" {
		t.Errorf("a failed activate moved the link to %s", got)
	}
}
