// Command runs measures the watcher at scale on real parts: a nats-server
// with JetStream on disk in a process of its own (built from the version in
// go.mod), the real Prometheus binary scraping an exporter served here, and
// the watcher's run and ingest code in this process:
//
//   - 10,000 concurrent validation runs: memory per run, Prometheus
//     requests per evaluation time against the number of distinct resolved
//     queries, and how late measurements are recorded (lag);
//   - with -compare, the same with comparison checks (README "Comparisons"):
//     runs deployed over a few minutes, range and instant requests per
//     interval, heap per run as the samples accumulate, lag (compare.go);
//   - deploy events ingested durably (run stored, run.started in the audit,
//     event acked) per second, against the raw JetStream publish rate
//     measured in the same run (-events 0 leaves it out).
//
// `make bench-runs`, `make bench-runs-compare`; figures in BENCHMARKS.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/promclient"
	"github.com/rollback-watcher/watcher/internal/watch"
)

func main() {
	runs := flag.Int("runs", 10000, "concurrent validation runs")
	teams := flag.Int("queries", 100, "distinct resolved queries among the runs (one per team label)")
	interval := flag.Duration("interval", 10*time.Second, "measurement interval of the runs")
	intervals := flag.Int("intervals", 3, "intervals to measure once every run is active")
	events := flag.Int("events", 20000, "deploy events for the ingest rate")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run here")
	var cmp compareFlags
	flag.BoolVar(&cmp.on, "compare", false, "runs of a policy with comparison checks (pre_deploy, canary, counts) instead of one threshold check")
	flag.DurationVar(&cmp.spread, "spread", 2*time.Minute, "with -compare: deploys spread evenly over this span")
	flag.DurationVar(&cmp.step, "step", 5*time.Second, "with -compare: compare.step of the comparisons")
	flag.DurationVar(&cmp.lookback, "lookback", 2*time.Minute, "with -compare: compare.lookback of the pre_deploy comparisons")
	flag.DurationVar(&cmp.window, "window", 10*time.Minute, "with -compare: the policy's window")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench/runs:", err)
			os.Exit(1)
		}
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if err := run(*runs, *teams, *interval, *intervals, *events, cmp); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench/runs:", err)
		os.Exit(1)
	}
}

func run(runs, teams int, interval time.Duration, intervals, events int, cmp compareFlags) error {
	dir, err := os.MkdirTemp("", "bench-runs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Printf("watcher scale benchmark, %s\nmachine: %d CPUs, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), runtime.Version())

	if err := buildNATSServer(dir); err != nil {
		return err
	}
	var extra []prometheus.Collector
	if cmp.on {
		extra = append(extra, newServiceMetrics(teams))
	}
	promURL, stopProm, err := startPrometheus(dir, teams, extra...)
	if err != nil {
		return err
	}
	promReady := time.Now()
	defer stopProm()
	if cmp.on && runs > 0 {
		if err := compareRuns(dir, promURL, promReady, runs, teams, interval, intervals, cmp); err != nil {
			return err
		}
	} else if runs > 0 {
		if err := concurrentRuns(dir, promURL, runs, teams, interval, intervals); err != nil {
			return err
		}
	}
	if events <= 0 {
		return nil
	}
	return ingest(dir, events)
}

// ---- 10,000 concurrent runs ----

// counting counts the requests that reach Prometheus, by evaluation time.
type counting struct {
	q    watch.Querier
	mu   sync.Mutex
	byTS map[int64]int
}

func (c *counting) Query(ctx context.Context, q string, ts time.Time) (model.Vector, error) {
	c.mu.Lock()
	c.byTS[ts.UnixMilli()]++
	c.mu.Unlock()
	return c.q.Query(ctx, q, ts)
}

func (c *counting) QueryRange(ctx context.Context, q string, start, end time.Time, step time.Duration) (model.Matrix, error) {
	c.mu.Lock()
	c.byTS[end.UnixMilli()]++
	c.mu.Unlock()
	return c.q.QueryRange(ctx, q, start, end, step)
}

// lagging records measurements' lag: recorded minus evaluation time.
type lagging struct {
	a    watch.Auditor
	mu   sync.Mutex
	lags []time.Duration
	n    atomic.Int64
}

func (l *lagging) Record(ctx context.Context, r audit.Record) error {
	err := l.a.Record(ctx, r)
	if r.Kind == audit.Measurement {
		now := time.Now()
		if d, ok := r.Measurement(); ok {
			l.mu.Lock()
			l.lags = append(l.lags, now.Sub(d.EvalTime))
			l.mu.Unlock()
		}
		l.n.Add(1)
	}
	return err
}

func concurrentRuns(dir, promURL string, runs, teams int, interval time.Duration, intervals int) error {
	rules := filepath.Join(dir, "runs.yml")
	if err := os.WriteFile(rules, fmt.Appendf(nil, `policies:
  - name: orders
    match: {service: "svc-*", environment: production}
    window: 1h
    interval: %s
    checks:
      - name: orders
        query: 'bench_orders{team="{{ .Labels.team }}"}'
        min: 50
    rollback:
      link: /srv/{{ .Service }}/current
      mode: publish
`, model.Duration(interval)), 0o600); err != nil {
		return err
	}
	q := &counting{byTS: map[int64]int{}}
	aud := &lagging{}
	env, err := startWatcher(dir, promURL, rules, func(p watch.Querier) watch.Querier { q.q = p; return q },
		func(a watch.Auditor) watch.Auditor { aud.a = a; return aud })
	if err != nil {
		return err
	}
	defer env.stop()
	w, js := env.w, env.js

	before := memInUse()
	start := time.Now()
	for i := range runs {
		svc := fmt.Sprintf("svc-%05d", i)
		b, _ := json.Marshal(map[string]any{"id": "d-" + svc, "service": svc, "environment": "production", "version": "v2",
			"labels": map[string]string{"team": fmt.Sprintf("t%03d", i%teams)}})
		if _, err := js.PublishAsync("deploys.production."+svc, b); err != nil {
			return err
		}
	}
	<-js.PublishAsyncComplete()
	if err := waitFor(2*time.Minute, func() bool { active, _ := w.Runs(); return len(active) == runs }); err != nil {
		return fmt.Errorf("%d runs active: %w", len(activeRuns(w)), err)
	}
	allActive := time.Since(start)
	// Every run measured at least once, then a few intervals.
	if err := waitFor(2*interval+time.Minute, func() bool { return aud.n.Load() >= int64(runs) }); err != nil {
		return fmt.Errorf("%d measurements: %w", aud.n.Load(), err)
	}
	q.mu.Lock()
	clear(q.byTS)
	q.mu.Unlock()
	aud.mu.Lock()
	aud.lags = aud.lags[:0]
	aud.mu.Unlock()
	time.Sleep(time.Duration(intervals) * interval)
	// Measured between two evaluation times, when no measurement is in
	// flight: what the runs hold while they wait.
	if wait := time.Until(time.Now().Truncate(interval).Add(interval * 6 / 10)); wait > 0 {
		time.Sleep(wait)
	} else {
		time.Sleep(wait + interval)
	}
	after := memInUse()
	if p := os.Getenv("BENCH_HEAP"); p != "" {
		if f, err := os.Create(p); err == nil {
			_ = pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}

	q.mu.Lock()
	var perTS []int
	for _, n := range q.byTS {
		perTS = append(perTS, n)
	}
	q.mu.Unlock()
	slices.Sort(perTS)
	aud.mu.Lock()
	lags := slices.Clone(aud.lags)
	aud.mu.Unlock()
	slices.Sort(lags)
	pct := func(p float64) time.Duration {
		if len(lags) == 0 {
			return 0
		}
		return lags[min(len(lags)-1, int(p*float64(len(lags))))].Round(time.Millisecond)
	}
	fmt.Printf("concurrent runs: %d runs of one policy, %d distinct resolved queries (team label), interval %s, window 1h\n", runs, teams, interval)
	fmt.Printf("  all %d runs active %s after the first event\n", runs, allActive.Round(time.Millisecond))
	fmt.Printf("  watcher memory in use (heap + stacks; NATS runs apart) %.1f MiB -> %.1f MiB: %.0f bytes per run (goal < 10 KiB = 10240)\n",
		float64(before)/(1<<20), float64(after)/(1<<20), float64(after-before)/float64(runs))
	fmt.Printf("  goroutines: %d\n", runtime.NumGoroutine())
	fmt.Printf("  Prometheus requests per evaluation time over %d intervals: %v (distinct resolved queries: %d)\n", intervals, perTS, teams)
	fmt.Printf("  measurements recorded: %d; lag (recorded - evaluation time): p50 %s, p99 %s, max %s\n\n",
		len(lags), pct(0.5), pct(0.99), pct(1))
	return nil
}

// watcherEnv is a watcher on a nats-server of its own.
type watcherEnv struct {
	w    *watch.Watcher
	js   jetstream.JetStream
	stop func()
}

// startWatcher starts a watcher of the policies in rules, asking
// Prometheus at promURL through wrapQ and recording through wrapA.
func startWatcher(dir, promURL, rules string, wrapQ func(watch.Querier) watch.Querier, wrapA func(watch.Auditor) watch.Auditor) (*watcherEnv, error) {
	set, err := policy.Load(rules)
	if err != nil {
		return nil, err
	}
	prom, err := promclient.New(promclient.Options{URL: promURL})
	if err != nil {
		return nil, err
	}
	_, js, stopNATS, err := startNATS(filepath.Join(dir, "nats-runs"))
	if err != nil {
		return nil, err
	}
	w := &watch.Watcher{JS: js, Policies: func() *policy.Set { return set }, Querier: wrapQ(prom), Audit: wrapA(&audit.Publisher{JS: js}),
		Logger: slog.New(slog.DiscardHandler)}
	w.Register(prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	if err := w.Start(ctx); err != nil {
		cancel()
		stopNATS()
		return nil, err
	}
	return &watcherEnv{w: w, js: js, stop: func() { cancel(); w.Wait(); stopNATS() }}, nil
}

func activeRuns(w *watch.Watcher) []watch.RunStatus { a, _ := w.Runs(); return a }

// memInUse is heap and stack memory in use after two collections.
func memInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// ---- ingest ----

func ingest(dir string, n int) error {
	_, js, stop, err := startNATS(filepath.Join(dir, "nats-ingest"))
	if err != nil {
		return err
	}
	defer stop()
	ctx := context.Background()
	event := func(i int, prefix string) (string, []byte) {
		svc := fmt.Sprintf("%s-%06d", prefix, i)
		b, _ := json.Marshal(map[string]any{"id": prefix + "-d-" + svc, "service": svc, "environment": "production", "version": "v2"})
		return "deploys.production." + svc, b
	}

	// Raw: the same events into the same stream, each publish waiting for
	// its ack (what a deploy tool gets), then pipelined.
	syncN := n / 4
	t0 := time.Now()
	for i := range syncN {
		subj, b := event(i, "raw")
		if _, err := js.Publish(ctx, subj, b); err != nil {
			return err
		}
	}
	rawSync := float64(syncN) / time.Since(t0).Seconds()
	t0 = time.Now()
	for i := range n {
		subj, b := event(i, "rawasync")
		if _, err := js.PublishAsync(subj, b); err != nil {
			return err
		}
	}
	<-js.PublishAsyncComplete()
	rawAsync := float64(n) / time.Since(t0).Seconds()

	rules := filepath.Join(dir, "ingest.yml")
	if err := os.WriteFile(rules, []byte(`policies:
  - name: later
    match: {service: "in-*", environment: production}
    window: 2h
    interval: 1h
    initial_delay: 1h
    checks: [{name: up, query: up, min: 1}]
    rollback:
      link: /srv/{{ .Service }}/current
      mode: publish
`), 0o600); err != nil {
		return err
	}
	set, err := policy.Load(rules)
	if err != nil {
		return err
	}
	w := &watch.Watcher{JS: js, Policies: func() *policy.Set { return set }, Querier: noQueries{}, Audit: &audit.Publisher{JS: js},
		Logger: slog.New(slog.DiscardHandler)}
	w.Register(prometheus.NewRegistry())
	wctx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); w.Wait() }()
	if err := w.Start(wctx); err != nil {
		return err
	}
	cons, err := js.Consumer(ctx, bus.DeploysStream, "watcher")
	if err != nil {
		return err
	}
	t0 = time.Now()
	for i := range n {
		subj, b := event(i, "in")
		if _, err := js.PublishAsync(subj, b); err != nil {
			return err
		}
	}
	<-js.PublishAsyncComplete()
	published := time.Since(t0)
	if p := os.Getenv("BENCH_GOROUTINES"); p != "" {
		time.Sleep(500 * time.Millisecond)
		if f, err := os.Create(p); err == nil {
			_ = pprof.Lookup("goroutine").WriteTo(f, 1)
			f.Close()
		}
	}
	if err := waitFor(5*time.Minute, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.AckFloor.Consumer >= uint64(n) && info.NumAckPending == 0
	}); err != nil {
		return fmt.Errorf("ingest: %w", err)
	}
	took := time.Since(t0)
	rate := float64(n) / took.Seconds()
	kv, err := js.KeyValue(ctx, watch.RunsBucket)
	if err != nil {
		return err
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("ingest: %d deploy events, each stored as a run (KV), recorded (run.started) and acked\n", n)
	fmt.Printf("  raw JetStream publish, one publisher waiting for each ack: %.0f events/s\n", rawSync)
	fmt.Printf("  raw JetStream publish, pipelined (PublishAsync): %.0f events/s\n", rawAsync)
	fmt.Printf("  watcher: all %d acked %s after the first publish (published in %s): %.0f events/s (goal >= 5000)\n",
		n, took.Round(time.Millisecond), published.Round(time.Millisecond), rate)
	fmt.Printf("  runs stored in %s: %d\n", watch.RunsBucket, st.Values())
	fmt.Printf("  watcher / raw with acks: %.2f; watcher / raw pipelined: %.2f (goal >= 0.5 of the raw rate)\n", rate/rawSync, rate/rawAsync)
	return nil
}

type noQueries struct{}

func (noQueries) Query(context.Context, string, time.Time) (model.Vector, error) { return nil, nil }
func (noQueries) QueryRange(context.Context, string, time.Time, time.Time, time.Duration) (model.Matrix, error) {
	return nil, nil
}

// ---- parts ----

// natsServerBin is nats-server built from the version in go.mod, so that
// the server runs in a process of its own, as with `watcher run
// --nats.url`: the memory measured here is then the watcher's alone.
var natsServerBin string

func buildNATSServer(dir string) error {
	natsServerBin = filepath.Join(dir, "nats-server")
	out, err := exec.Command("go", "build", "-o", natsServerBin, "github.com/nats-io/nats-server/v2").CombinedOutput()
	if err != nil {
		return fmt.Errorf("building nats-server: %v\n%s", err, out)
	}
	return nil
}

func startNATS(dir string) (*exec.Cmd, jetstream.JetStream, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, nil, err
	}
	addr := ln.Addr().(*net.TCPAddr)
	ln.Close()
	srv := exec.Command(natsServerBin, "-a", "127.0.0.1", "-p", fmt.Sprint(addr.Port), "-js", "-sd", dir)
	if err := srv.Start(); err != nil {
		return nil, nil, nil, err
	}
	kill := func() { _ = srv.Process.Kill(); _ = srv.Wait() }
	url := fmt.Sprintf("nats://127.0.0.1:%d", addr.Port)
	var nc *nats.Conn
	if err := waitFor(15*time.Second, func() bool { nc, err = nats.Connect(url); return err == nil }); err != nil {
		kill()
		return nil, nil, nil, fmt.Errorf("nats-server on %s: %w", url, err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, js, 1); err != nil {
		return nil, nil, nil, err
	}
	return srv, js, func() { nc.Close(); kill() }, nil
}

// startPrometheus serves bench_orders{team} for teams (and extra) and
// starts the real Prometheus scraping it every second.
func startPrometheus(dir string, teams int, extra ...prometheus.Collector) (string, func(), error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(extra...)
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bench_orders", Help: "orders per minute"}, []string{"team"})
	reg.MustRegister(g)
	for i := range teams {
		g.WithLabelValues(fmt.Sprintf("t%03d", i)).Set(100)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	go func() { _ = http.Serve(ln, promhttp.HandlerFor(reg, promhttp.HandlerOpts{})) }()
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	promAddr := pl.Addr().String()
	pl.Close()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: bench\n    static_configs: [{targets: [%q]}]\n", ln.Addr().String()), 0o600); err != nil {
		return "", nil, err
	}
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		return "", nil, fmt.Errorf("prometheus not found: run scripts/deps.sh (Debian package prometheus)")
	}
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"), "--web.listen-address="+promAddr, "--log.level=error")
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); ln.Close() }
	url := "http://" + promAddr
	if err := waitFor(30*time.Second, func() bool {
		resp, err := http.Get(url + "/api/v1/query?query=bench_orders")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var body struct {
			Data struct {
				Result []any `json:"result"`
			} `json:"data"`
		}
		return json.NewDecoder(resp.Body).Decode(&body) == nil && len(body.Data.Result) == teams
	}); err != nil {
		stop()
		return "", nil, fmt.Errorf("prometheus: %w", err)
	}
	return url, stop, nil
}

func waitFor(d time.Duration, ok func() bool) error {
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not done within %s", d)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}
