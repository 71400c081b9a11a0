// Command backtest times `watcher backtest`'s engine on a real Prometheus
// (figures in BENCHMARKS.md): it backfills days of history for a few
// services with promtool, writes deploys spread over them (one in ten
// bad), and replays them all with five checks each (three thresholds, one
// comparison with the half hour before the deploy, one query shared by
// every deploy), printing the wall time, the queries asked and the
// requests that reached Prometheus, and the summary.
//
//	go run ./bench/backtest [-deploys 1000] [-services 10] [-days 10]
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/rollback-watcher/watcher/internal/backtest"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/promclient"
)

const rules = `policies:
  - name: bench
    match: {service: "svc-*", environment: production}
    window: 30m
    interval: 1m
    checks:
      - {name: errors, query: 'bench_errors_ratio{service="{{ .Service }}"}', max: 0.05, failure_limit: 1}
      - {name: latency, query: 'bench_latency_seconds{service="{{ .Service }}"}', max: 1}
      - {name: orders, query: 'bench_orders{service="{{ .Service }}"}', min: 10}
      - name: latency-vs-before
        query: 'bench_latency_seconds{service="{{ .Service }}"}'
        compare: {with: pre_deploy, direction: increase, margin: 0.2}
      - {name: fleet-errors, query: 'max(bench_errors_ratio)', max: 0.5}
    rollback: {mode: publish}
`

func main() {
	nDeploys := flag.Int("deploys", 1000, "deploys to replay")
	services := flag.Int("services", 10, "services they are spread over")
	days := flag.Int("days", 10, "days of history (Prometheus keeps 15 by default)")
	workers := flag.Int("workers", backtest.DefaultWorkers, "replays at once")
	flag.Parse()
	if err := run(*nDeploys, *services, *days, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "bench/backtest:", err)
		os.Exit(1)
	}
}

func run(nDeploys, services, days, workers int) error {
	dir, err := os.MkdirTemp("", "bench-backtest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	now := time.Now().Truncate(time.Minute)
	span := time.Duration(days) * 24 * time.Hour
	// Deploys every span/n, the last more than a window ago; each service
	// in turn, one in ten bad: errors at 0.2 from 2 minutes in for 40.
	step := (span - 2*time.Hour) / time.Duration(nDeploys)
	var deploys []backtest.Deploy
	bad := map[string][]time.Time{}
	for i := range nDeploys {
		svc := fmt.Sprintf("svc-%d", i%services)
		at := now.Add(-span + time.Hour + time.Duration(i)*step).Truncate(time.Minute)
		expect := backtest.Good
		if i%10 == 3 {
			expect = backtest.Bad
			bad[svc] = append(bad[svc], at)
		}
		deploys = append(deploys, backtest.Deploy{
			Event:  events.Deploy{ID: fmt.Sprintf("d-%d", i), Service: svc, Environment: "production", Version: fmt.Sprintf("v%d", i), Time: at, Format: events.FormatJSON},
			Start:  at,
			Expect: expect, ExpectFrom: backtest.FromFile,
		})
	}

	t0 := time.Now()
	om := filepath.Join(dir, "history.om")
	samples, err := writeHistory(om, now, span, services, bad)
	if err != nil {
		return err
	}
	promtool, prom, err := binaries()
	if err != nil {
		return err
	}
	if out, err := exec.Command(promtool, "tsdb", "create-blocks-from", "openmetrics", om, filepath.Join(dir, "data")).CombinedOutput(); err != nil {
		return fmt.Errorf("promtool: %v: %s", err, out)
	}
	backfill := time.Since(t0)
	url, stop, err := startPrometheus(prom, dir)
	if err != nil {
		return err
	}
	defer stop()

	ruleFile := filepath.Join(dir, "rules.yml")
	if err := os.WriteFile(ruleFile, []byte(rules), 0o600); err != nil {
		return err
	}
	set, err := policy.Load(ruleFile)
	if err != nil {
		return err
	}
	client, err := promclient.New(promclient.Options{URL: url})
	if err != nil {
		return err
	}
	start := time.Now()
	results, stats, err := backtest.Run(context.Background(), backtest.Options{Policies: set, Querier: client, Timeout: client.Timeout(), Now: time.Now(), Workers: workers}, deploys)
	if err != nil {
		return err
	}
	took := time.Since(start)
	s := backtest.Summarize(results)
	verdicts := map[string]int{}
	for _, r := range results {
		verdicts[r.Verdict]++
	}
	fmt.Printf("history: %d services, %d days, %d samples; written and backfilled in %s\n", services, days, samples, backfill.Round(time.Second))
	fmt.Printf("backtest: %d deploys x %d checks, %d replays at once, GOMAXPROCS %d: %s (%.1f deploys/s)\n",
		len(deploys), len(set.Policies[0].Checks), workers, runtime.GOMAXPROCS(0), took.Round(time.Second), float64(len(deploys))/took.Seconds())
	fmt.Printf("queries: %d asked, %d requests to Prometheus (%.0f%% shared)\n", stats.Asked, stats.Requests, 100*(1-float64(stats.Requests)/float64(stats.Asked)))
	fmt.Printf("verdicts: %v\n", verdicts)
	fmt.Printf("summary: false rollbacks %d, misses %d, precision %s, recall %s, median time to detection %s\n",
		s.FalseRollbacks, s.Misses, f(s.Precision), f(s.Recall), d(s.MedianDetection))
	return nil
}

func f(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.3g", *v)
}

func d(v *time.Duration) string {
	if v == nil {
		return "-"
	}
	return v.String()
}

// writeHistory writes every service's errors, latency and orders every
// 30 s over span, with the bad deploys' errors, as OpenMetrics.
func writeHistory(name string, now time.Time, span time.Duration, services int, bad map[string][]time.Time) (int, error) {
	fh, err := os.Create(name)
	if err != nil {
		return 0, err
	}
	defer fh.Close()
	var b strings.Builder
	n := 0
	flush := func() error {
		_, err := fh.WriteString(b.String())
		b.Reset()
		return err
	}
	from := now.Add(-span)
	for _, metric := range []string{"bench_errors_ratio", "bench_latency_seconds", "bench_orders"} {
		fmt.Fprintf(&b, "# TYPE %s gauge\n", metric)
		for i := range services {
			svc := fmt.Sprintf("svc-%d", i)
			for ts := from; ts.Before(now); ts = ts.Add(30 * time.Second) {
				noise := 0.01 * float64((ts.Unix()/30*7+int64(i))%11)
				var v float64
				switch metric {
				case "bench_errors_ratio":
					v = 0.01
					for _, at := range bad[svc] {
						if !ts.Before(at.Add(2*time.Minute)) && ts.Before(at.Add(42*time.Minute)) {
							v = 0.2
						}
					}
				case "bench_latency_seconds":
					v = 0.2 * (1 + noise)
				case "bench_orders":
					v = 100 * (1 + noise)
				}
				fmt.Fprintf(&b, "%s{service=%q} %g %d\n", metric, svc, v, ts.Unix())
				n++
			}
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	b.WriteString("# EOF\n")
	return n, flush()
}

func binaries() (promtool, prom string, err error) {
	prom = os.Getenv("PROMETHEUS_BIN")
	if prom == "" {
		if prom, err = exec.LookPath("prometheus"); err != nil {
			return "", "", fmt.Errorf("prometheus not found: run scripts/deps.sh (Debian package prometheus) or set PROMETHEUS_BIN")
		}
	}
	return filepath.Join(filepath.Dir(prom), "promtool"), prom, nil
}

func startPrometheus(bin, dir string) (string, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := l.Addr().String()
	l.Close()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte("global: {scrape_interval: 1m}\n"), 0o600); err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr, "--log.level=error")
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	url := "http://" + addr
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		resp, err := http.Get(url + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return url, stop, nil
			}
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("prometheus not ready within 60s")
		}
	}
}
