package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
	"github.com/rollback-watcher/watcher/internal/watch"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// watcherBinary builds the watcher once per test binary: the kill tests
// need a process of its own to SIGKILL.
func watcherBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "watcher-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "watcher")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is `watcher run` as a process of its own.
type proc struct {
	cmd    *exec.Cmd
	log    *syncBuffer
	web    string
	exited chan struct{}
}

func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	p := launchProc(t, args...)
	p.waitReady(t)
	return p
}

// launchProc starts `watcher run` without waiting for it to be ready, so
// that several can start at the same instant.
func launchProc(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{log: &syncBuffer{}, web: testutil.FreeAddr(t), exited: make(chan struct{})}
	p.cmd = exec.Command(watcherBinary(t), append([]string{"run", "--web.listen-address=" + p.web, "--log.level=debug"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			t.Errorf("watcher did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("watcher %v log:\n%s", p.cmd.Args, p.log.String())
		}
	})
	return p
}

// waitReady waits for /-/ready to answer 200, and fails if the watcher
// exits first.
func (p *proc) waitReady(t *testing.T) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, "watcher ready", func() bool {
		if p.hasExited() {
			t.Fatalf("watcher exited: %s", p.log.String())
		}
		return httpStatus("http://"+p.web+"/-/ready") == 200
	})
}

func (p *proc) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

func (p *proc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// TestKilledMidWindowResumes: the watcher is SIGKILLed with two runs in
// their windows and started again. Each run goes on where it was: its
// measurements keep their schedule (the ones missed while it was down are
// taken at their own times, none twice), it is decided once, and the bad
// deploy (orders collapse while the watcher is down) is rolled back once.
func TestKilledMidWindowResumes(t *testing.T) {
	n := testutil.StartNATS(t)
	exp := testutil.NewExporter(t)
	exp.Set("shop_orders_per_minute", map[string]string{"service": "shop"}, 120)
	exp.Set("shop_orders_per_minute", map[string]string{"service": "cart"}, 120)
	prom := testutil.StartPrometheus(t, exp.URL)

	dir := t.TempDir()
	shopLink := release(t, filepath.Join(dir, "shop"), "v1", "v2")
	release(t, filepath.Join(dir, "cart"), "v1", "v2")
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, fmt.Sprintf(`policies:
  - name: orders
    match: {service: "*", environment: production}
    window: 8s
    interval: 500ms
    checks:
      - name: orders-per-minute
        query: shop_orders_per_minute{service="{{ .Service }}"}
        min: 50
    rollback:
      link: %s/{{ .Service }}/current
`, dir))
	args := []string{"--nats.url=" + n.URL, "--rules=" + rules, "--prometheus.url=" + prom.URL, "--runs.replica=w1", "--runs.lease=1s"}
	first := startProc(t, args...)

	for _, svc := range []string{"shop", "cart"} {
		if code, _, errOut := cli(t, "publish", "--nats.url="+n.URL, "--service="+svc, "--environment=production", "--version=v2", "--id=deploy-"+svc); code != 0 {
			t.Fatalf("publish %s: %s", svc, errOut)
		}
	}
	ctx := context.Background()
	measured := func(svc string) int {
		recs, err := audit.Read(ctx, n.JS, audit.Filter{Service: svc, Environment: "production"})
		if err != nil {
			t.Fatal(err)
		}
		c := 0
		for _, r := range recs {
			if r.Kind == audit.Measurement {
				c++
			}
		}
		return c
	}
	testutil.Eventually(t, 20*time.Second, "3 measurements of each run", func() bool {
		return measured("shop") >= 3 && measured("cart") >= 3
	})
	first.kill(t)
	killed := time.Now()
	exp.Set("shop_orders_per_minute", map[string]string{"service": "shop"}, 12)
	time.Sleep(2 * time.Second) // down for 4 intervals

	startProc(t, args...)
	testutil.Eventually(t, 30*time.Second, "shop rolled back", func() bool { return readlink(t, shopLink) == "v1" })
	var cart []audit.Record
	testutil.Eventually(t, 30*time.Second, "cart's run decided", func() bool {
		var err error
		cart, err = audit.Read(ctx, n.JS, audit.Filter{Service: "cart", Environment: "production"})
		return err == nil && hasKind(cart, audit.RunPassed)
	})
	shop, err := audit.Read(ctx, n.JS, audit.Filter{Service: "shop", Environment: "production"})
	if err != nil {
		t.Fatal(err)
	}
	count := func(recs []audit.Record, kind string) int {
		c := 0
		for _, r := range recs {
			if r.Kind == kind {
				c++
			}
		}
		return c
	}
	for svc, recs := range map[string][]audit.Record{"shop": shop, "cart": cart} {
		if got := count(recs, audit.RunStarted); got != 1 {
			t.Errorf("%s: %d run.started, want 1", svc, got)
		}
		if got := count(recs, watch.RunResumed); got != 1 {
			t.Errorf("%s: %d run.resumed, want 1", svc, got)
		}
		var evals []time.Time
		for _, r := range recs {
			if r.Kind == audit.Measurement {
				ts, err := time.Parse(time.RFC3339Nano, r.Detail["eval_time"].(string))
				if err != nil {
					t.Fatal(err)
				}
				evals = append(evals, ts)
			}
		}
		slices.SortFunc(evals, func(a, b time.Time) int { return a.Compare(b) })
		for i := 1; i < len(evals); i++ {
			if d := evals[i].Sub(evals[i-1]); d != 500*time.Millisecond {
				t.Errorf("%s: measurements at %s and %s, %s apart: want one interval (500ms), none twice, none skipped", svc,
					evals[i-1].Format("15:04:05.000"), evals[i].Format("15:04:05.000"), d)
			}
		}
		var during int
		for _, e := range evals {
			if e.After(killed) && e.Before(killed.Add(2*time.Second)) {
				during++
			}
		}
		// cart's missed measurements are all caught up; shop's stop at
		// the first that fails.
		if want := map[string]int{"cart": 3, "shop": 1}[svc]; during < want {
			t.Errorf("%s: %d measurements evaluated at times the watcher was down, want the missed ones caught up (>= %d)", svc, during, want)
		}
	}
	for _, r := range cart {
		if r.Kind != audit.RunStarted {
			continue
		}
		first, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(r.Detail["first_measurement"]))
		end, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(r.Detail["window_end"]))
		if got, want := count(cart, audit.Measurement), int(end.Sub(first)/(500*time.Millisecond))+1; got != want || want < 16 {
			t.Errorf("cart: %d measurements, want %d (every 500ms from %s to the window's end %s: the window did not restart)", got, want, first, end)
		}
	}
	if got := count(cart, audit.RunPassed) + count(cart, audit.RunFailed); got != 1 {
		t.Errorf("cart: %d verdicts", got)
	}
	if got, want := count(shop, audit.RunFailed), 1; got != want {
		t.Errorf("shop: %d run.failed, want %d", got, want)
	}
	if got := count(shop, audit.RollbackCompleted); got != 1 {
		t.Errorf("shop: %d rollback.completed, want 1", got)
	}
}

func httpStatus(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestKilledMidRollbackFinishesOnce: the watcher is SIGKILLed in the middle
// of a rollback (the link switched, the before_code data step done, the
// after command still running). Started again, it gets the request back
// and finishes it: no second switch, no second data step, one
// rollback.completed.
func TestKilledMidRollbackFinishesOnce(t *testing.T) {
	n := testutil.StartNATS(t)
	exp := testutil.NewExporter(t)
	exp.Set("shop_orders_per_minute", map[string]string{"service": "shop"}, 3)
	prom := testutil.StartPrometheus(t, exp.URL)

	dir := t.TempDir()
	link := release(t, filepath.Join(dir, "shop"), "v1", "v2")
	dataRuns := filepath.Join(dir, "data-runs")
	gate := filepath.Join(dir, "after-may-finish")
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, fmt.Sprintf(`policies:
  - name: orders
    match: {service: shop, environment: production}
    window: 8s
    interval: 500ms
    checks:
      - name: orders-per-minute
        query: shop_orders_per_minute{service="{{ .Service }}"}
        min: 50
    rollback:
      link: %s/{{ .Service }}/current
      after: ["sh", "-c", "while [ ! -e %s ]; do sleep 0.05; done"]
      data:
        command: ["sh", "-c", "echo ran >> %s"]
        run_on: local
        order: before_code
        timeout: 30s
`, dir, gate, dataRuns))
	args := []string{"--nats.url=" + n.URL, "--rules=" + rules, "--prometheus.url=" + prom.URL, "--runs.replica=w1", "--runs.lease=1s"}
	first := startProc(t, args...)
	if code, _, errOut := cli(t, "publish", "--nats.url="+n.URL, "--service=shop", "--environment=production", "--version=v2", "--id=deploy-shop"); code != 0 {
		t.Fatalf("publish: %s", errOut)
	}
	testutil.Eventually(t, 20*time.Second, "the link switched and the after command running", func() bool {
		b, _ := os.ReadFile(dataRuns)
		return readlink(t, link) == "v1" && string(b) == "ran\n"
	})
	time.Sleep(200 * time.Millisecond)
	first.kill(t)
	if err := os.WriteFile(gate, nil, 0o600); err != nil { // the after command's orphan may finish now
		t.Fatal(err)
	}

	startProc(t, args...)
	ctx := context.Background()
	var recs []audit.Record
	testutil.Eventually(t, 30*time.Second, "rollback.completed after the restart", func() bool {
		var err error
		recs, err = audit.Read(ctx, n.JS, audit.Filter{Service: "shop", Environment: "production"})
		return err == nil && hasKind(recs, audit.RollbackCompleted)
	})
	time.Sleep(time.Second) // a second completion would show by now
	recs, _ = audit.Read(ctx, n.JS, audit.Filter{Service: "shop", Environment: "production"})
	count := map[string]int{}
	for _, r := range recs {
		count[r.Kind]++
		if r.Kind == audit.RollbackHost {
			if sw, _ := r.Detail["switched"].(bool); sw {
				t.Errorf("rollback.host after the restart says the host was switched again: %q", r.Message)
			}
		}
	}
	for kind, want := range map[string]int{audit.RunFailed: 1, audit.RollbackRequested: 1, audit.RollbackHost: 1, audit.RollbackCompleted: 1} {
		if count[kind] != want {
			t.Errorf("%d %s records, want %d: %v", count[kind], kind, want, kinds(recs))
		}
	}
	if b, _ := os.ReadFile(dataRuns); string(b) != "ran\n" {
		t.Errorf("data step ran %q, want once", b)
	}
	if got := readlink(t, link); got != "v1" {
		t.Errorf("link on %s, want v1", got)
	}
}
