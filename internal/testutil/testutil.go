// Package testutil starts the real servers integration tests run against: an
// embedded NATS server with JetStream and a real Prometheus binary scraping
// an exporter whose values the test sets.
package testutil

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rollback-watcher/watcher/internal/bus"
)

// NATS is an embedded server with a client connection and the watcher's
// streams.
type NATS struct {
	Server *bus.Embedded
	Conn   *nats.Conn
	JS     jetstream.JetStream
	URL    string
}

// StartNATS runs an embedded nats-server with JetStream in t.TempDir().
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	srv, err := bus.StartEmbedded("127.0.0.1:0", t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	t.Cleanup(srv.Stop)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatalf("connecting to embedded NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	return &NATS{Server: srv, Conn: nc, JS: js, URL: srv.ClientURL()}
}

// Exporter serves gauges the test sets, for Prometheus to scrape.
type Exporter struct {
	URL    string // host:port
	reg    *prometheus.Registry
	mu     sync.Mutex
	gauges map[string]*prometheus.GaugeVec
}

// NewExporter starts an exporter on a free loopback port.
func NewExporter(t testing.TB) *Exporter {
	t.Helper()
	e := &Exporter{reg: prometheus.NewRegistry(), gauges: map[string]*prometheus.GaugeVec{}}
	srv := httptest.NewServer(promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	e.URL = strings.TrimPrefix(srv.URL, "http://")
	return e
}

// Set sets gauge name{labels} to v. Every use of one name must pass the same
// label names.
func (e *Exporter) Set(name string, labels map[string]string, v float64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	g, ok := e.gauges[name]
	if !ok {
		names := make([]string, 0, len(labels))
		for k := range labels {
			names = append(names, k)
		}
		g = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: name}, names)
		e.reg.MustRegister(g)
		e.gauges[name] = g
	}
	g.With(labels).Set(v)
}

// Delete removes one series, so that queries for it find no data.
func (e *Exporter) Delete(name string, labels map[string]string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if g, ok := e.gauges[name]; ok {
		g.Delete(labels)
	}
}

// Prometheus is a running prometheus binary.
type Prometheus struct {
	URL string

	cmd  *exec.Cmd
	logf *os.File
	once sync.Once
}

// Stop kills the Prometheus process and waits for it to exit, as an outage
// would: queries to URL fail from then on. It is safe to call more than
// once; the test's cleanup calls it too.
func (p *Prometheus) Stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		p.logf.Close()
	})
}

// PrometheusBinary finds the prometheus binary or fails the test saying what
// to install. It never skips: `make test` installs it (scripts/deps.sh).
func PrometheusBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("PROMETHEUS_BIN"); p != "" {
		return p
	}
	p, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("the prometheus binary is needed: install the Debian package (apt-get install prometheus, or run `make deps`), or set PROMETHEUS_BIN")
	}
	return p
}

// StartPrometheus runs a real Prometheus scraping targets every 500ms, with
// its data in t.TempDir(), and waits until it is ready and has scraped.
// It honors the exporter's labels, so that one exporter can stand for
// several instances (a series it sets with instance="web3" keeps that label
// instead of becoming exported_instance).
func StartPrometheus(t testing.TB, targets ...string) *Prometheus {
	t.Helper()
	return startPrometheus(t, t.TempDir(), targets, "")
}

// StartPrometheusWithHistory is StartPrometheus with history backfilled
// before it starts: samples in OpenMetrics text with timestamps (seconds),
// ending in "# EOF", written into its TSDB by `promtool tsdb
// create-blocks-from openmetrics`. Last week's traffic, for instance.
func StartPrometheusWithHistory(t testing.TB, openMetrics string, targets ...string) *Prometheus {
	t.Helper()
	dir := t.TempDir()
	in := filepath.Join(dir, "history.om")
	if err := os.WriteFile(in, []byte(openMetrics), 0o600); err != nil {
		t.Fatal(err)
	}
	promtool := filepath.Join(filepath.Dir(PrometheusBinary(t)), "promtool")
	out, err := exec.Command(promtool, "tsdb", "create-blocks-from", "openmetrics", in, filepath.Join(dir, "data")).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool tsdb create-blocks-from openmetrics: %v\n%s", err, out)
	}
	return startPrometheus(t, dir, targets, "")
}

// startPrometheus starts Prometheus with extra appended to its
// configuration (rule_files, alerting).
func startPrometheus(t testing.TB, dir string, targets []string, extra string) *Prometheus {
	t.Helper()
	bin := PrometheusBinary(t)
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = fmt.Sprintf("%q", tg)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 500ms
  scrape_timeout: 400ms
  evaluation_interval: 500ms
scrape_configs:
  - job_name: test
    honor_labels: true
    static_configs:
      - targets: [%s]
`, strings.Join(quoted, ", ")) + extra
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := FreeAddr(t)
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--config.file="+cfgFile,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		// Backfilled history of several weeks ({weeks: N} comparisons,
		// backtests) must outlive the default 15 days.
		"--storage.tsdb.retention.time=90d",
		"--web.listen-address="+addr,
		"--web.enable-lifecycle",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting prometheus: %v", err)
	}
	p := &Prometheus{URL: "http://" + addr, cmd: cmd, logf: logf}
	t.Cleanup(p.Stop)
	// Ready, and every target scraped once: tests then measure the
	// watcher, not Prometheus's start-up.
	want := `"value":[`
	q := p.URL + "/api/v1/query?query=" + url.QueryEscape(fmt.Sprintf("count(up == 1) >= %d", len(targets)))
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(q)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(b), want) {
				break
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("prometheus not ready, or targets %v not scraped, after 30s; its log:\n%s", targets, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return p
}

// FreeAddr finds a free loopback port. Prometheus binds it itself, so there
// is a small window in which another process could take it; tests accept
// that rather than parse Prometheus's log for the port.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Eventually polls cond until it holds or the deadline passes; the deadline
// only catches hangs.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
