package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// release builds <dir>/releases/{old,new}, current -> new (relative, as
// deploy tools usually write it), new/previousVersion naming old.
func release(t *testing.T, dir, old, cur string) (link string) {
	t.Helper()
	for _, v := range []string{old, cur} {
		if err := os.MkdirAll(filepath.Join(dir, "releases", v), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	prev := filepath.Join(dir, "releases", old)
	if err := os.WriteFile(filepath.Join(dir, "releases", cur, "previousVersion"), []byte(prev+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link = filepath.Join(dir, "current")
	if err := os.Symlink(filepath.Join("releases", cur), link); err != nil {
		t.Fatal(err)
	}
	return link
}

func readlink(t *testing.T, link string) string {
	t.Helper()
	s, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Base(s)
}

// watcherProc is `watcher run` inside the test process.
type watcherProc struct {
	web, nats string
	reload    chan struct{}
	cancel    context.CancelFunc
	done      chan int
	stderr    *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startWatcher(t *testing.T, args ...string) *watcherProc {
	t.Helper()
	nats := testutil.FreeAddr(t)
	w := startRun(t, testutil.FreeAddr(t), append([]string{"--nats.listen=" + nats, "--storage.path=" + t.TempDir(), "--log.level=debug"}, args...)...)
	w.nats = nats
	return w
}

// startRun starts `watcher run` in the test process with exactly args plus
// --web.listen-address=web, stops it at the end of the test, and waits
// until it is ready (or answers 401, behind --web.config.file's basic auth,
// or 400, behind its TLS).
func startRun(t *testing.T, web string, args ...string) *watcherProc {
	t.Helper()
	w := &watcherProc{web: web, done: make(chan int, 1), stderr: &syncBuffer{}, reload: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	all := append([]string{"run", "--web.listen-address=" + web}, args...)
	go func() { w.done <- run(ctx, all, io.Discard, w.stderr, w.reload) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-w.done:
		case <-time.After(20 * time.Second):
			t.Errorf("watcher did not stop; its log:\n%s", w.stderr.String())
		}
		if t.Failed() {
			t.Logf("watcher log:\n%s", w.stderr.String())
		}
	})
	testutil.Eventually(t, 30*time.Second, "watcher ready", func() bool {
		select {
		case code := <-w.done:
			w.done <- code
			t.Fatalf("watcher exited with %d:\n%s", code, w.stderr.String())
		default:
		}
		resp, err := http.Get("http://" + web + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		// 400: a TLS listener asked in plain HTTP, which is up too.
		return resp.StatusCode == 200 || resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusBadRequest
	})
	return w
}

// cli runs one watcher command and returns its exit code and output.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb, nil)
	return code, out.String(), errb.String()
}

func history(t *testing.T, natsAddr string, args ...string) []audit.Record {
	t.Helper()
	return historyURL(t, "nats://"+natsAddr, args...)
}

func kinds(recs []audit.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Kind
	}
	return out
}

func hasKind(recs []audit.Record, kind string) bool {
	for _, r := range recs {
		if r.Kind == kind {
			return true
		}
	}
	return false
}

// TestBadDeployRolledBackGoodOneUntouched is the core loop end to end on real
// parts: a real Prometheus scraping an exporter, the watcher with its
// embedded NATS, real release directories and links. A bad and a good deploy
// are validated side by side.
func TestBadDeployRolledBackGoodOneUntouched(t *testing.T) {
	exp := testutil.NewExporter(t)
	exp.Set("shop_orders_per_minute", map[string]string{"service": "shop"}, 120)
	exp.Set("shop_orders_per_minute", map[string]string{"service": "cart"}, 120)
	prom := testutil.StartPrometheus(t, exp.URL)

	dir := t.TempDir()
	shopLink := release(t, filepath.Join(dir, "shop"), "2026.11.24-3", "2026.11.25-1")
	cartLink := release(t, filepath.Join(dir, "cart"), "2026.11.24-1", "2026.11.25-2")
	afterMark := filepath.Join(dir, "after-ran")
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, fmt.Sprintf(`policies:
  - name: orders
    match: {service: "*", environment: production}
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
      after: ["touch", "%s-{{ .Service }}"]
`, dir, afterMark))

	w := startWatcher(t, "--rules="+rules, "--prometheus.url="+prom.URL)
	natsURL := "--nats.url=nats://" + w.nats

	// The bad deploy: orders collapse right after it.
	exp.Set("shop_orders_per_minute", map[string]string{"service": "shop"}, 12)
	code, shopID, errOut := cli(t, "publish", natsURL, "--service=shop", "--environment=production",
		"--version=2026.11.25-1", "--label=team=payments")
	if code != 0 {
		t.Fatalf("publish shop: exit %d: %s", code, errOut)
	}
	code, _, errOut = cli(t, "publish", natsURL, "--service=cart", "--environment=production",
		"--version=2026.11.25-2", "--format=json", "--id=cart-deploy-1")
	if code != 0 {
		t.Fatalf("publish cart: exit %d: %s", code, errOut)
	}
	shopID = strings.TrimSpace(shopID)

	testutil.Eventually(t, 30*time.Second, "shop link back on the previous release", func() bool {
		return readlink(t, shopLink) == "2026.11.24-3"
	})
	var shop []audit.Record
	testutil.Eventually(t, 20*time.Second, "rollback.completed in the audit", func() bool {
		shop = history(t, w.nats, "--service=shop", "--environment=production")
		return hasKind(shop, audit.RollbackCompleted)
	})
	if s, _ := os.Readlink(shopLink); filepath.IsAbs(s) {
		t.Errorf("link style changed: %s was relative, is now %s", shopLink, s)
	}
	var marker map[string]any
	b, err := os.ReadFile(filepath.Join(dir, "shop", "releases", "2026.11.25-1", "ROLLED_BACK"))
	if err != nil {
		t.Fatalf("ROLLED_BACK marker: %v", err)
	}
	if err := json.Unmarshal(b, &marker); err != nil || marker["reason"] == "" || marker["run_id"] == "" {
		t.Errorf("marker = %s (%v), want JSON with reason and run_id", b, err)
	}
	if _, err := os.Stat(afterMark + "-shop"); err != nil {
		t.Errorf("after command did not run: %v", err)
	}

	assertOrder(t, kinds(shop), []string{audit.RunStarted, audit.Measurement, audit.RunFailed,
		audit.RollbackRequested, audit.RollbackHost, audit.RollbackCompleted})
	for _, r := range shop {
		if r.Kind == audit.RunStarted && r.DeployID != shopID {
			t.Errorf("run.started deploy_id = %q, want %q", r.DeployID, shopID)
		}
		if r.Kind == audit.Measurement {
			d := r.Detail
			if d["query"] != `shop_orders_per_minute{service="shop"}` || d["outcome"] == nil || d["threshold"] != "min 50" {
				t.Errorf("measurement detail lacks resolved query, threshold or outcome: %v", d)
			}
		}
		if r.Kind == audit.RunFailed && !strings.Contains(r.Message, "orders-per-minute") {
			t.Errorf("run.failed does not name the check: %q", r.Message)
		}
	}

	// The rolled back release is announced as a CDEvent on the deploy subject.
	nc, err := nats.Connect("nats://" + w.nats)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	st, err := js.Stream(context.Background(), bus.DeploysStream)
	if err != nil {
		t.Fatal(err)
	}
	last, err := st.GetLastMsgForSubject(context.Background(), "deploys.production.shop")
	if err != nil {
		t.Fatal(err)
	}
	var ce struct {
		Type string `json:"type"`
		Data struct {
			Context struct {
				Type string `json:"type"`
			} `json:"context"`
		} `json:"data"`
	}
	if err := json.Unmarshal(last.Data, &ce); err != nil || !strings.HasPrefix(ce.Data.Context.Type, "dev.cdevents.service.rolledback.") {
		t.Errorf("last message on deploys.production.shop = %s, want a CloudEvent carrying a service.rolledback CDEvent", last.Data)
	}
	nc.Close()

	// The good deploy passes at the end of its window, untouched.
	var cart []audit.Record
	testutil.Eventually(t, 30*time.Second, "cart run.passed", func() bool {
		cart = history(t, w.nats, "--service=cart")
		return hasKind(cart, audit.RunPassed)
	})
	if readlink(t, cartLink) != "2026.11.25-2" {
		t.Errorf("good deploy was touched: cart link on %s", readlink(t, cartLink))
	}
	for _, k := range []string{audit.RunFailed, audit.RollbackRequested, audit.RollbackHost} {
		if hasKind(cart, k) {
			t.Errorf("good deploy has a %s record: %v", k, kinds(cart))
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "cart", "releases", "2026.11.25-2", "ROLLED_BACK")); err == nil {
		t.Error("good release marked ROLLED_BACK")
	}

	// The same event id again, from a tool that sets no Nats-Msg-Id (so
	// the stream keeps it), starts no second run.
	nc, err = nats.Connect("nats://" + w.nats)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ = jetstream.New(nc)
	if _, err := js.Publish(context.Background(), "deploys.production.cart",
		[]byte(`{"id":"cart-deploy-1","service":"cart","environment":"production","version":"2026.11.25-2"}`)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "duplicate recorded", func() bool {
		cart = history(t, w.nats, "--service=cart")
		return hasKind(cart, audit.RunSkipped)
	})
	started := 0
	for _, r := range cart {
		if r.Kind == audit.RunStarted {
			started++
		}
	}
	if started != 1 {
		t.Errorf("%d runs started for one event id, want 1: %v", started, kinds(cart))
	}

	metrics := httpGet(t, "http://"+w.web+"/metrics")
	for _, want := range []string{
		`watcher_rollbacks_total{result="completed"} 1`,
		`watcher_runs_total{verdict="failed"} 1`,
		`watcher_runs_total{verdict="passed"} 1`,
		`watcher_deploy_events_total{result="started"} 2`,
		`watcher_runs_active 0`,
		`watcher_policy_runs_total{policy="orders",verdict="failed"} 1`,
		`watcher_policy_runs_total{policy="orders",verdict="passed"} 1`,
		`watcher_rollback_duration_seconds_count{result="completed"} 1`,
		`watcher_query_duration_seconds_count{result="ok"}`,
		`watcher_alerts_total{result="requested"} 0`,
		`watcher_build_info{`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	var runs struct {
		Data struct {
			Recent []struct {
				Service, Verdict string
				Measurements     []any
			}
		}
	}
	if err := json.Unmarshal([]byte(httpGet(t, "http://"+w.web+"/api/v1/runs")), &runs); err != nil {
		t.Fatal(err)
	}
	if len(runs.Data.Recent) != 2 || len(runs.Data.Recent[0].Measurements) == 0 {
		t.Errorf("/api/v1/runs recent = %+v, want 2 runs with measurements", runs.Data.Recent)
	}

	// The readable table names what happened.
	code, table, _ := cli(t, "history", natsURL, "--service=shop")
	if code != 0 || !strings.Contains(table, "rollback.completed") || !strings.Contains(table, "KIND") {
		t.Errorf("history table:\n%s", table)
	}
	// One run's measurements, as a table of numbers.
	runID := shop[0].RunID
	code, table, _ = cli(t, "history", natsURL, "--run="+runID)
	for _, want := range []string{"run " + runID + ": shop 2026.11.25-1 in production, policy orders", "CHECK", "THRESHOLD",
		"orders-per-minute  12 ", "min 50", "fail", " fail 2 inconclusive 0", "run.failed", "rollback.completed"} {
		if code != 0 || !strings.Contains(table, want) {
			t.Errorf("history --run lacks %q:\n%s", want, table)
		}
	}
}

func assertOrder(t *testing.T, got, want []string) {
	t.Helper()
	i := 0
	for _, k := range got {
		if i < len(want) && k == want[i] {
			i++
		}
	}
	if i != len(want) {
		t.Errorf("audit kinds %v do not contain %v in order", got, want)
	}
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestExternalNATSAndReloadSignal runs the watcher against a NATS server it
// does not own (--nats.url: nothing embedded) and reloads its policies the
// way SIGHUP does (main turns the signal into the reload channel).
func TestExternalNATSAndReloadSignal(t *testing.T) {
	ext := testutil.StartNATS(t)
	exp := testutil.NewExporter(t)
	exp.Set("up_ratio", map[string]string{"service": "api"}, 1)
	prom := testutil.StartPrometheus(t, exp.URL)
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.yml")
	policyYAML := func(name, svc string) string {
		return fmt.Sprintf(`policies:
  - name: %s
    match: {service: %s}
    window: 1s
    interval: 500ms
    checks:
      - {name: up, query: 'up_ratio{service="api"}', min: 0.5}
    rollback: {mode: publish}
`, name, svc)
	}
	writeFile(t, rules, policyYAML("first", "web"))
	w := startWatcher(t, "--rules="+rules, "--prometheus.url="+prom.URL, "--nats.url="+ext.URL)

	// Nothing embedded: the --nats.listen port stays free.
	if ln, err := net.Listen("tcp", w.nats); err != nil {
		t.Errorf("--nats.url given, yet something listens on --nats.listen %s: %v", w.nats, err)
	} else {
		ln.Close()
	}
	for _, s := range []string{"DEPLOYS", "ROLLBACKS", "AUDIT"} {
		if _, err := ext.JS.Stream(context.Background(), s); err != nil {
			t.Errorf("stream %s on the external server: %v", s, err)
		}
	}

	writeFile(t, rules, policyYAML("second", "api"))
	w.reload <- struct{}{}
	extURL := "--nats.url=" + ext.URL
	testutil.Eventually(t, 20*time.Second, "deploy of api validated by the reloaded policy", func() bool {
		// Publish until the reload has taken effect: before it, api
		// matches no policy (run.skipped).
		recs := historyURL(t, ext.URL, "--service=api")
		for _, r := range recs {
			if r.Kind == audit.RunStarted && r.Policy == "second" {
				return true
			}
		}
		if code, _, errOut := cli(t, "publish", extURL, "--service=api", "--environment=prod", "--version=1.0."+fmt.Sprint(len(recs))); code != 0 {
			t.Fatalf("publish: %s", errOut)
		}
		time.Sleep(300 * time.Millisecond)
		return false
	})
}

func historyURL(t *testing.T, url string, args ...string) []audit.Record {
	t.Helper()
	code, out, errOut := cli(t, append([]string{"history", "--json", "--limit=0", "--nats.url=" + url}, args...)...)
	if code != 0 {
		t.Fatalf("history exited %d: %s", code, errOut)
	}
	var recs []audit.Record
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var r audit.Record
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("history --json: %v", err)
		}
		recs = append(recs, r)
	}
	return recs
}

// TestCheckAgainstPrometheus tries a policy on a real Prometheus before it
// is trusted: every check's query runs now and the table says what it
// would get.
func TestCheckAgainstPrometheus(t *testing.T) {
	exp := testutil.NewExporter(t)
	exp.Set("orders_per_minute", map[string]string{"service": "shop"}, 73)
	exp.Set("errors_ratio", map[string]string{"instance": "a"}, 0.01)
	exp.Set("errors_ratio", map[string]string{"instance": "b"}, 0.09)
	prom := testutil.StartPrometheus(t, exp.URL)
	rules := filepath.Join(t.TempDir(), "rules.yml")
	writeFile(t, rules, `policies:
  - name: shop
    match: {service: shop, environment: production}
    checks:
      - {name: orders, query: 'orders_per_minute{service="{{ .Service }}"}', min: 50}
      - {name: orders-vs-before, query: 'orders_per_minute{service="{{ .Service }}"}', baseline: pre_deploy, min_ratio: 0.8}
      - {name: errors-each, query: 'errors_ratio', each: true, max: 0.05}
      - {name: gone, query: 'nothing_here', min: 1}
    rollback: {link: /srv/shop/current}
  - name: shop-compare
    match: {service: shop, environment: staging}
    checks:
      - {name: orders-compare, query: 'orders_per_minute{service="{{ .Service }}"}', compare: {with: pre_deploy, direction: decrease, margin: 0.2}}
      - name: error-counts
        compare:
          with: pre_deploy
          errors: 'sum(count_over_time(errors_ratio[{{ .Range }}]))'
          total: 'sum(count_over_time(orders_per_minute[{{ .Range }}]))'
          margin: 0.5
    rollback: {mode: publish}
  - name: any
    match: {service: "*"}
    checks:
      - {name: up, query: 'up', aggregate: min, min: 1}
    rollback: {mode: publish}
`)
	code, out, errOut := cli(t, "check", "--prometheus.url="+prom.URL, rules)
	if code != 0 {
		t.Fatalf("check --prometheus.url: exit %d: %s\n%s", code, errOut, out)
	}
	for _, want := range []string{
		"shop (" + rules + ":2) for service shop in production:",
		"orders            73     -         -      min 50",
		"orders-vs-before  73     73        1      min_ratio 0.8  pass",
		`errors-each       0.09`, `instance="b"`, `0.09 > max 0.05 (1 of 2 series failed)`,
		"gone              -", "inconclusive", "no data",
		// This Prometheus has no data from an hour ago: the comparisons,
		// replayed from then, have nothing to judge.
		`comparisons as if version "trial" had been deployed at `,
		"orders-compare  -      -         -      compare with pre_deploy over 10m: decrease > 20% at 95%",
		"inconclusive  at +10m, the window's end: not judged yet: 0 samples since the deploy, min_samples 10",
		"error-counts    -      -         -      compare error rate with pre_deploy over 10m: increase > 50% at 95%",
		"inconclusive  at +10m, the window's end: not judged yet: 0 requests since the deploy, min_total 100",
		"its match is a glob; give --service and --environment",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = cli(t, "check", "--prometheus.url="+prom.URL, "--service=api", "--environment=prod", rules)
	if code != 0 || !strings.Contains(out, "any (") || !strings.Contains(out, "up") || !strings.Contains(out, "pass") {
		t.Errorf("check with --service: exit %d\n%s", code, out)
	}
	// A query Prometheus refuses is an error: exit 1.
	writeFile(t, rules, `policies:
  - name: bad
    match: {service: shop, environment: production}
    checks:
      - {name: many-to-many, query: 'errors_ratio * on() errors_ratio', min: 1}
    rollback: {mode: publish}
`)
	code, out, errOut = cli(t, "check", "--prometheus.url="+prom.URL, rules)
	if code != 1 || !strings.Contains(errOut, "could not be evaluated") {
		t.Errorf("check with a failing query: exit %d, stderr %q\n%s", code, errOut, out)
	}
}
