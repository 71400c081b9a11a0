package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestHelpPrintedOnce: every way of asking for help prints the usage once,
// on stdout, and exits 0.
func TestHelpPrintedOnce(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"run", "--help"}, {"help", "publish"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, out, errOut := cli(t, args...)
			if code != 0 || errOut != "" {
				t.Errorf("exit %d, stderr %q", code, errOut)
			}
			if n := strings.Count(out, "usage: watcher"); n != 1 {
				t.Errorf("usage printed %d times, want once (%d bytes on stdout)", n, len(out))
			}
		})
	}
}

// TestNoCommand: `watcher` alone is a usage error: exit 2, one line that
// says a command is missing and shows the usage, nothing on stdout.
func TestNoCommand(t *testing.T) {
	for _, args := range [][]string{nil, {"--log.level=debug"}} {
		t.Run(fmt.Sprint(args), func(t *testing.T) {
			code, out, errOut := cli(t, args...)
			if code != 2 {
				t.Errorf("exit %d, want 2 (usage); stdout:\n%s", code, out)
			}
			assertOneLine(t, errOut)
			for _, want := range []string{"no command", "usage: watcher", "run", "--help"} {
				if !strings.Contains(errOut, want) {
					t.Errorf("stderr does not say %q: %s", want, errOut)
				}
			}
			if out != "" {
				t.Errorf("stdout = %q, want nothing", out)
			}
		})
	}
}

// TestVersionFlag: `watcher --version` prints the build like `watcher
// version`, while the commands' own --version flags keep their meaning.
func TestVersionFlag(t *testing.T) {
	_, want, _ := cli(t, "version")
	for _, args := range [][]string{{"--version"}, {"--log.level=debug", "--version"}} {
		code, out, errOut := cli(t, args...)
		if code != 0 || out != want || errOut != "" {
			t.Errorf("watcher %s: exit %d, stderr %q, stdout %q; want exit 0 and %q", strings.Join(args, " "), code, errOut, out, want)
		}
	}

	// publish --version is the deployed version: with it the command gets
	// as far as connecting (to a closed port), without it the flag is
	// missing.
	closed := "--nats.url=nats://" + testutil.FreeAddr(t)
	code, out, errOut := cliWithin(t, 20*time.Second, "publish", closed, "--service=shop", "--environment=production", "--version=2026.11.25-1")
	if code != 1 || !strings.Contains(errOut, "cannot connect") || out != "" {
		t.Errorf("publish --version=V: exit %d, stdout %q, stderr %q; want 1, cannot connect", code, out, errOut)
	}
	code, _, errOut = cli(t, "publish", closed, "--service=shop", "--environment=production", "--version")
	if code != 2 || !strings.Contains(errOut, "--version") {
		t.Errorf("publish --version without a value: exit %d, stderr %q; want 2 naming --version", code, errOut)
	}
	assertOneLine(t, errOut)

	// check --version is the version the templates see.
	rules := filepath.Join(t.TempDir(), "r.yml")
	writeFile(t, rules, `policies:
  - name: v
    match: {service: shop, environment: production}
    window: 1m
    checks:
      - name: v
        query: 'label_replace(vector(1), "v", "{{ .Version }}", "", "")'
        min: 1
    rollback: {link: /srv/shop/current}
`)
	prom := testutil.FreeAddr(t)
	queries := fakePrometheus(t, prom)
	code, out, errOut = cli(t, "check", "--version=9.9.9-templated", "--prometheus.url=http://"+prom, rules)
	if code != 0 || !strings.Contains(queries(), "9.9.9-templated") {
		t.Errorf("check --version=V: exit %d, queries %q; want 0 and the version in the query; stdout:\n%s\nstderr:\n%s", code, queries(), out, errOut)
	}
}

// TestStorageLocked: a second watcher on the same --storage.path is
// refused with one line naming the path and the first one's pid; the
// first keeps running, and once it stops the path is free again.
func TestStorageLocked(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "r.yml")
	writeFile(t, rules, "policies: []\n")
	storage := filepath.Join(t.TempDir(), "data")
	first := startRun(t, testutil.FreeAddr(t), "--rules="+rules, "--storage.path="+storage, "--nats.listen="+testutil.FreeAddr(t))

	code, _, errOut := cliWithin(t, 30*time.Second, "run", "--rules="+rules, "--storage.path="+storage,
		"--nats.listen="+testutil.FreeAddr(t), "--web.listen-address="+testutil.FreeAddr(t))
	if code != 1 {
		t.Errorf("second watcher on %s: exit %d, want 1; stderr:\n%s", storage, code, errOut)
	}
	assertOneLine(t, errOut)
	for _, want := range []string{storage, "pid " + strconv.Itoa(os.Getpid()), "--storage.path"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr does not name %q: %s", want, errOut)
		}
	}
	if c, _ := httpGetStatus("http://" + first.web + "/-/ready"); c != 200 {
		t.Errorf("the first watcher is not ready any more after the second was refused: %d", c)
	}

	first.cancel()
	select {
	case code := <-first.done:
		first.done <- code // for its cleanup
	case <-time.After(20 * time.Second):
		t.Fatal("first watcher did not stop")
	}
	startRun(t, testutil.FreeAddr(t), "--rules="+rules, "--storage.path="+storage, "--nats.listen="+testutil.FreeAddr(t))
}

// fakePrometheus answers every query with 1, on addr. It returns the
// queries it got so far.
func fakePrometheus(t *testing.T, addr string) (queries func() string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	got := &syncBuffer{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(got, r.FormValue("query"))
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[%d,"1"]}]}}`, time.Now().Unix())
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return got.String
}

// TestPrometheusUnreachable: a watcher whose Prometheus does not answer
// says so in its log, on /-/ready (still 200: see the README), on the
// status page and in watcher_prometheus_up, and notices when it answers.
func TestPrometheusUnreachable(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "r.yml")
	writeFile(t, rules, "policies: []\n")
	promAddr := testutil.FreeAddr(t) // nothing listens there yet
	promURL := "http://" + promAddr
	w := startRun(t, testutil.FreeAddr(t), "--rules="+rules, "--storage.path="+t.TempDir(),
		"--nats.listen="+testutil.FreeAddr(t), "--prometheus.url="+promURL)

	testutil.Eventually(t, 20*time.Second, "a log line saying Prometheus is unreachable", func() bool {
		for _, l := range strings.Split(w.stderr.String(), "\n") {
			if strings.Contains(l, "level=WARN") && strings.Contains(l, "Prometheus") && strings.Contains(l, "unreachable") &&
				strings.Contains(l, promURL) {
				return true
			}
		}
		return false
	})
	code, body := httpGetStatus("http://" + w.web + "/-/ready")
	if code != 200 || !strings.Contains(body, "Prometheus "+promURL+" unreachable since") {
		t.Errorf("/-/ready with Prometheus down: %d %q; want 200 naming Prometheus as unreachable", code, body)
	}
	if _, page := httpGetStatus("http://" + w.web + "/"); !strings.Contains(page, "Prometheus "+promURL+" unreachable since") {
		t.Errorf("status page does not say Prometheus is unreachable (%d bytes)", len(page))
	}
	if v := metricValue(t, w, "watcher_prometheus_up"); v != 0 {
		t.Errorf("watcher_prometheus_up = %v with Prometheus down, want 0", v)
	}

	fakePrometheus(t, promAddr)
	testutil.Eventually(t, 30*time.Second, "/-/ready to stop naming Prometheus once it answers", func() bool {
		code, body := httpGetStatus("http://" + w.web + "/-/ready")
		return code == 200 && !strings.Contains(body, "Prometheus")
	})
	if v := metricValue(t, w, "watcher_prometheus_up"); v != 1 {
		t.Errorf("watcher_prometheus_up = %v with Prometheus up, want 1", v)
	}
	if _, page := httpGetStatus("http://" + w.web + "/"); strings.Contains(page, "unreachable") {
		t.Errorf("status page still says unreachable once Prometheus answers")
	}
	if !strings.Contains(w.stderr.String(), "Prometheus reachable") {
		t.Errorf("no log line says Prometheus is reachable again:\n%s", w.stderr.String())
	}
}

// TestSecretsRedacted: passwords and tokens in --nats.url and
// --prometheus.url (or the config file) appear in no output: not in the
// log, not in errors (servers on closed ports, so that the error paths run),
// not on the HTTP endpoints, not in --help.
func TestSecretsRedacted(t *testing.T) {
	const pw = "Hunter2Secret"
	const token = "S3cretTok3n"
	closedNATS := testutil.FreeAddr(t)
	closedProm := testutil.FreeAddr(t)
	rules := filepath.Join(t.TempDir(), "r.yml")
	writeFile(t, rules, `policies:
  - name: v
    match: {service: shop, environment: production}
    window: 2s
    interval: 200ms
    initial_delay: 0s
    checks:
      - name: v
        query: vector(1)
        min: 1
    rollback: {link: /srv/shop/current, mode: publish}
`)
	config := filepath.Join(t.TempDir(), "watcher.yml")
	writeFile(t, config, fmt.Sprintf("prometheus:\n  url: http://ops:%s@%s\n", pw, closedProm))
	check := func(t *testing.T, what string, outputs ...string) {
		t.Helper()
		for _, o := range outputs {
			for _, s := range []string{pw, token} {
				if strings.Contains(o, s) {
					t.Errorf("%s prints the secret %q:\n%s", what, s, o)
				}
			}
		}
	}

	for _, args := range [][]string{
		{"run", "--nats.url=nats://ops:" + pw + "@" + closedNATS, "--rules=" + rules, "--web.listen-address=" + testutil.FreeAddr(t)},
		{"run", "--nats.url=nats://" + token + "@" + closedNATS + ",nats://ops:" + pw + "@" + testutil.FreeAddr(t), "--rules=" + rules,
			"--web.listen-address=" + testutil.FreeAddr(t)},
		{"run", "--nats.url=nats://ops:" + pw + "%zz@" + closedNATS, "--rules=" + rules, "--web.listen-address=" + testutil.FreeAddr(t)},
		{"run", "--prometheus.url=ftp://ops:" + pw + "@" + closedProm, "--rules=" + rules, "--storage.path=" + t.TempDir(),
			"--nats.listen=" + testutil.FreeAddr(t), "--web.listen-address=" + testutil.FreeAddr(t)},
		{"run", "--prometheus.url=http://ops:" + pw + "%zz@" + closedProm, "--rules=" + rules, "--storage.path=" + t.TempDir(),
			"--nats.listen=" + testutil.FreeAddr(t), "--web.listen-address=" + testutil.FreeAddr(t)},
		{"publish", "--nats.url=nats://ops:" + pw + "@" + closedNATS, "--service=shop", "--environment=production", "--version=1"},
		{"history", "--nats.url=nats://" + token + "@" + closedNATS},
		{"check", "--prometheus.url=http://ops:" + pw + "@" + closedProm, rules},
		{"check", "--config.file=" + config, "--prometheus.url=http://ops:" + pw + "@" + closedProm, rules},
		{"run", "--nats.url=nats://ops:" + pw + "@" + closedNATS, "--prometheus.url=http://ops:" + pw + "@" + closedProm, "--help"},
	} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			code, out, errOut := cliWithin(t, 30*time.Second, args...)
			t.Logf("exit %d; stderr:\n%s", code, errOut)
			check(t, "watcher "+strings.Join(args, " "), out, errOut)
		})
	}

	// A running watcher: Prometheus with a password, on a closed port, from
	// the flag and from the config file.
	for _, args := range [][]string{
		{"--prometheus.url=http://ops:" + pw + "@" + closedProm},
		{"--config.file=" + config},
	} {
		t.Run("running "+args[0], func(t *testing.T) {
			natsAddr := testutil.FreeAddr(t)
			w := startRun(t, testutil.FreeAddr(t), append([]string{"--rules=" + rules, "--storage.path=" + t.TempDir(),
				"--nats.listen=" + natsAddr}, args...)...)
			testutil.Eventually(t, 20*time.Second, "the watcher running log line", func() bool {
				return strings.Contains(w.stderr.String(), "watcher running")
			})
			// A run whose queries fail: their errors go to the audit,
			// the API and the page.
			if code, _, errOut := cli(t, "publish", "--nats.url=nats://"+natsAddr, "--service=shop", "--environment=production",
				"--version=2026.11.25-1"); code != 0 {
				t.Fatalf("publish: exit %d: %s", code, errOut)
			}
			var recs string
			testutil.Eventually(t, 30*time.Second, "the run's verdict", func() bool {
				_, recs, _ = cli(t, "history", "--nats.url=nats://"+natsAddr, "--json")
				return strings.Contains(recs, `"run.inconclusive"`) || strings.Contains(recs, `"run.failed"`)
			})
			if !strings.Contains(recs, "connection refused") {
				t.Errorf("the audit does not record the query errors:\n%s", recs)
			}
			check(t, "watcher history", recs)
			// The URL is still named, with the password hidden.
			if !strings.Contains(w.stderr.String(), "http://ops:xxxxx@"+closedProm) {
				t.Errorf("the log does not name Prometheus as http://ops:xxxxx@%s:\n%s", closedProm, w.stderr.String())
			}
			var bodies []string
			for _, p := range []string{"/-/ready", "/", "/api/v1/runs", "/metrics"} {
				_, b := httpGetStatus("http://" + w.web + p)
				bodies = append(bodies, b)
			}
			check(t, "the HTTP endpoints", bodies...)
			w.cancel()
			<-w.done
			w.done <- 0
			check(t, "the log", w.stderr.String())
		})
	}
}

func TestRedactURLs(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"http://127.0.0.1:9090", "http://127.0.0.1:9090"},
		{"https://ops:pw@prom:9090/sub", "https://ops:xxxxx@prom:9090/sub"},
		{"http://ops@prom:9090", "http://ops@prom:9090"}, // a user name alone is no secret
		{"nats://s3cret-token@n1:4222", "nats://xxxxx@n1:4222"},
		{"tls://u:p@n1:4222,nats://tok@n2:4222,nats://n3:4222", "tls://u:xxxxx@n1:4222,nats://xxxxx@n2:4222,nats://n3:4222"},
		{"tok@n1:4222", "xxxxx@n1:4222"},
		{"nats://u:p@ss@n1:4222", "nats://u:xxxxx@n1:4222"},
		{"nats://u:p%zz@n1:4222", "nats://u:xxxxx@n1:4222"}, // does not parse, hidden all the same
		{"", ""},
		// An "@" after the host (in the path, query or fragment) is not
		// the end of the user info.
		{"http://u:pw@host/?m=a@b", "http://u:xxxxx@host/?m=a@b"},
		{"http://prom:9090/?m=a@b", "http://prom:9090/?m=a@b"},
		{"nats://tok@n1:4222/x@y", "nats://xxxxx@n1:4222/x@y"},
		{"http://u:p@ss@host#f@g", "http://u:xxxxx@host#f@g"},
	} {
		if got := redactURLs(tc.in); got != tc.want {
			t.Errorf("redactURLs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
