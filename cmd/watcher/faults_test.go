package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
	"github.com/rollback-watcher/watcher/internal/watch"
)

// Fault tests: the watcher as a process of its own, against faults of what
// it depends on. Prometheus going down mid-window is covered by the
// scenario tests in internal/watch (prometheus-down-*).

// TestNATSRestartedMidRun: the external nats-server is stopped while two
// runs are in their windows, stays down for 3s (less than the JetStream
// client's 5s request timeout), and comes back on the same port with the
// same store. The watcher reconnects by itself, /-/ready says 503 while
// NATS is away and 200 once it is back, each run goes on and is decided
// exactly once, and the deploy that went bad during the outage is rolled
// back once.
func TestNATSRestartedMidRun(t *testing.T) {
	testNATSOutage(t, 3*time.Second, 8*time.Second)
}

// TestNATSRestartedMidRunLongOutage is TestNATSRestartedMidRun with NATS
// down for 11s: longer than twice the 5s the JetStream client waits for an
// ack, so that both a run's audit record and the save of its state after it
// time out in the watcher, whichever of the two the outage catches first.
// nats.go keeps what timed out in its reconnect buffer and sends it once
// connected again, so the server applies those writes late.
func TestNATSRestartedMidRunLongOutage(t *testing.T) {
	testNATSOutage(t, 11*time.Second, 16*time.Second)
}

func testNATSOutage(t *testing.T, down, window time.Duration) {
	const interval = 500 * time.Millisecond
	n := testutil.StartRestartableNATS(t)
	exp := testutil.NewExporter(t)
	exp.Set("shop_orders_per_minute", map[string]string{"service": "shop"}, 120)
	exp.Set("shop_orders_per_minute", map[string]string{"service": "cart"}, 120)
	prom := testutil.StartPrometheus(t, exp.URL)

	dir := t.TempDir()
	shopLink := release(t, filepath.Join(dir, "shop"), "v1", "v2")
	cartLink := release(t, filepath.Join(dir, "cart"), "v1", "v2")
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, fmt.Sprintf(`policies:
  - name: orders
    match: {service: "*", environment: production}
    window: %s
    interval: %s
    checks:
      - name: orders-per-minute
        query: shop_orders_per_minute{service="{{ .Service }}"}
        min: 50
    rollback:
      link: %s/{{ .Service }}/current
`, window, interval, dir))
	w := startProc(t, "--nats.url="+n.URL, "--rules="+rules, "--prometheus.url="+prom.URL, "--runs.replica=w1")
	ready := "http://" + w.web + "/-/ready"

	for _, svc := range []string{"shop", "cart"} {
		if code, _, errOut := cli(t, "publish", "--nats.url="+n.URL, "--service="+svc, "--environment=production",
			"--version=v2", "--previous-version=v1", "--id=deploy-"+svc); code != 0 {
			t.Fatalf("publish %s: %s", svc, errOut)
		}
	}
	ctx := context.Background()
	read := func(svc string) []audit.Record {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		recs, err := audit.Read(rctx, n.JS, audit.Filter{Service: svc, Environment: "production"})
		if err != nil {
			t.Logf("reading the audit of %s: %v", svc, err)
			return nil
		}
		return recs
	}
	testutil.Eventually(t, 20*time.Second, "3 measurements of each run", func() bool {
		return countKind(read("shop"), audit.Measurement) >= 3 && countKind(read("cart"), audit.Measurement) >= 3
	})

	// The outage. Orders collapse for shop while NATS is away: its run
	// must catch that once it can go on.
	n.Stop()
	stopped := time.Now()
	exp.Set("shop_orders_per_minute", map[string]string{"service": "shop"}, 12)
	var notReady string
	testutil.Eventually(t, down-500*time.Millisecond, "/-/ready to say 503 while NATS is down", func() bool {
		code, body := httpGetStatus(ready)
		if code == http.StatusServiceUnavailable {
			notReady = body
			return true
		}
		return false
	})
	t.Logf("/-/ready while NATS is down: 503 %q", strings.TrimSpace(notReady))
	if !strings.Contains(notReady, "NATS") {
		t.Errorf("/-/ready during the outage says %q: want it to name NATS", notReady)
	}
	if code, _ := httpGetStatus("http://" + w.web + "/-/healthy"); code != 200 {
		t.Errorf("/-/healthy during the outage: %d, want 200 (the process is fine; it waits for NATS)", code)
	}
	time.Sleep(time.Until(stopped.Add(down)))
	n.Start()
	restarted := time.Now()
	n.WaitConnected(10 * time.Second)
	testutil.Eventually(t, 10*time.Second, "/-/ready 200 again after NATS came back", func() bool {
		code, _ := httpGetStatus(ready)
		return code == 200
	})
	t.Logf("NATS down %s; /-/ready 200 again %s after the restart", restarted.Sub(stopped).Round(time.Millisecond),
		time.Since(restarted).Round(time.Millisecond))

	var shop, cart []audit.Record
	// Not Eventually: a run that is never decided is the failure to
	// report, with what the store and the log say about it.
	if !waitUntil(time.Until(stopped.Add(window+10*time.Second)), func() bool {
		shop, cart = read("shop"), read("cart")
		return verdicts(shop) > 0 && verdicts(cart) > 0
	}) {
		t.Errorf("runs not decided %s after their window closed: shop %d verdicts, cart %d; %s holds %v",
			10*time.Second, verdicts(shop), verdicts(cart), watch.RunsBucket, storedRuns(t, n.JS))
	}
	if !waitUntil(10*time.Second, func() bool { return readlink(t, shopLink) == "v1" }) {
		t.Errorf("shop not rolled back: link on %s, want v1", readlink(t, shopLink))
	}
	time.Sleep(2 * time.Second) // anything doubled shows up by now
	shop, cart = read("shop"), read("cart")

	if got := readlink(t, cartLink); got != "v2" {
		t.Errorf("cart link on %s, want v2 (a healthy deploy)", got)
	}
	for svc, recs := range map[string][]audit.Record{"shop": shop, "cart": cart} {
		if got := countKind(recs, audit.RunStarted); got != 1 {
			t.Errorf("%s: %d run.started, want 1", svc, got)
		}
		if got := verdicts(recs); got != 1 {
			t.Errorf("%s: %d verdicts, want 1: %v", svc, got, kinds(recs))
		}
		if got := countKind(recs, watch.RunResumed); got != 0 {
			t.Logf("%s: %d run.resumed (the process never stopped)", svc, got)
		}
		// Measurements: one per interval from the deploy, none twice,
		// none missing, including those due while NATS was down.
		evals := evalTimes(t, recs)
		for i := 1; i < len(evals); i++ {
			if d := evals[i].Sub(evals[i-1]); d != interval {
				t.Errorf("%s: measurements at %s and %s, %s apart: want one every %s, none twice, none missing", svc,
					evals[i-1].Format("15:04:05.000"), evals[i].Format("15:04:05.000"), d, interval)
			}
		}
		// A record's time is when the watcher wrote it: during the
		// outage (nats.go buffered it), or after, when the run caught up.
		var during, writtenDuring int
		for _, r := range recs {
			if r.Kind != audit.Measurement {
				continue
			}
			if ev := detailTime(t, r); ev.After(stopped) && ev.Before(restarted) {
				during++
				if r.Time.Before(restarted) {
					writtenDuring++
				}
			}
		}
		t.Logf("%s: %d measurements in the audit; %d of them due while NATS was down, %d written during the outage, %d after it",
			svc, len(evals), during, writtenDuring, during-writtenDuring)
	}
	if got := countKind(cart, audit.RunPassed); got != 1 {
		t.Errorf("cart: %d run.passed, want 1: %v", got, kinds(cart))
	}
	// The schedule is the run's own (run.started says it): every interval
	// from the first measurement until the window ends.
	for _, r := range cart {
		if r.Kind != audit.RunStarted {
			continue
		}
		first, err1 := time.Parse(time.RFC3339Nano, fmt.Sprint(r.Detail["first_measurement"]))
		end, err2 := time.Parse(time.RFC3339Nano, fmt.Sprint(r.Detail["window_end"]))
		if err1 != nil || err2 != nil {
			t.Fatalf("run.started detail %v: %v %v", r.Detail, err1, err2)
		}
		evals := evalTimes(t, cart)
		if want := int(end.Sub(first)/interval) + 1; len(evals) != want || !evals[0].Equal(first) {
			t.Errorf("cart: %d measurements from %v, want %d from %s (every %s until %s)", len(evals),
				evals, want, first.Format("15:04:05.000"), interval, end.Format("15:04:05.000"))
		}
	}
	if got := countKind(shop, audit.RunFailed); got != 1 {
		t.Errorf("shop: %d run.failed, want 1: %v", got, kinds(shop))
	}
	for _, k := range []string{audit.RollbackRequested, audit.RollbackHost, audit.RollbackCompleted} {
		if got := countKind(shop, k); got != 1 {
			t.Errorf("shop: %d %s, want 1", got, k)
		}
	}
	// Decided runs leave nothing in the run store: a leftover would be
	// concluded again by the next process to start.
	if keys := storedRuns(t, n.JS); len(keys) > 0 {
		t.Errorf("%s still holds %d runs after both were decided: %v", watch.RunsBucket, len(keys), keys)
	}
	var runs struct {
		Data struct {
			Active []watch.RunStatus `json:"active"`
			Recent []watch.RunStatus `json:"recent"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(httpGet(t, "http://"+w.web+"/api/v1/runs")), &runs); err != nil {
		t.Fatal(err)
	}
	if len(runs.Data.Active) != 0 || len(runs.Data.Recent) != 2 {
		t.Errorf("/api/v1/runs: %d active, %d recent, want 0 and 2", len(runs.Data.Active), len(runs.Data.Recent))
	}
	for _, line := range strings.Split(w.log.String(), "\n") {
		for _, s := range []string{"not recorded", "not saved", "not stored", "taken over", "heartbeat", "not published", "not marked", "not handled"} {
			if strings.Contains(line, s) {
				t.Logf("watcher log: %s", line)
				break
			}
		}
	}
}

// waitUntil polls cond until it holds (true) or d passes (false).
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// httpGetStatus is a GET's status and body; 0 when the server did not
// answer.
func httpGetStatus(url string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// storedRuns lists the runs in the run store, with their owner and
// verdict.
func storedRuns(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, watch.RunsBucket)
	if err != nil {
		t.Fatalf("opening %s: %v", watch.RunsBucket, err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatalf("listing %s: %v", watch.RunsBucket, err)
	}
	var out []string
	for k := range keys.Keys() {
		var st struct{ Owner, Verdict string }
		if e, err := kv.Get(ctx, k); err == nil {
			_ = json.Unmarshal(e.Value(), &st)
		}
		out = append(out, fmt.Sprintf("%s (owner %s, verdict %q)", k, st.Owner, st.Verdict))
	}
	return out
}

func countKind(recs []audit.Record, kind string) int {
	c := 0
	for _, r := range recs {
		if r.Kind == kind {
			c++
		}
	}
	return c
}

// verdicts counts the records that decide a run.
func verdicts(recs []audit.Record) int {
	return countKind(recs, audit.RunPassed) + countKind(recs, audit.RunFailed) + countKind(recs, audit.RunInconclusive) +
		countKind(recs, audit.RunSuperseded)
}

// detailTime is a measurement's eval_time.
func detailTime(t *testing.T, r audit.Record) time.Time {
	t.Helper()
	s, _ := r.Detail["eval_time"].(string)
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("measurement %q: eval_time %v: %v", r.Message, r.Detail["eval_time"], err)
	}
	return ts
}

// evalTimes are the measurements' eval_times, sorted.
func evalTimes(t *testing.T, recs []audit.Record) []time.Time {
	t.Helper()
	var out []time.Time
	for _, r := range recs {
		if r.Kind == audit.Measurement {
			out = append(out, detailTime(t, r))
		}
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// TestStorageFull: `watcher run` with its embedded NATS stores JetStream on
// a 4 MiB tmpfs, which a filler file then fills up. Deploy events published
// then cannot be stored: `watcher publish` must exit non-zero with one clear
// line, the watcher must not crash and must say in its log that its storage
// is full and what to do. Once the filler is deleted, the deploy tool's
// retry (same event ids) must be accepted and each deploy validated (one
// run.started, one verdict). The watcher is then restarted on the same
// storage, which must reopen cleanly: every deploy event stored once, every
// audit record whole JSON, no run left in the run store.
func TestStorageFull(t *testing.T) {
	store := filepath.Join(t.TempDir(), "jetstream-on-tmpfs")
	if err := os.Mkdir(store, 0o750); err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, store, "4m")

	exp := testutil.NewExporter(t)
	for _, svc := range []string{"shop", "cart"} {
		exp.Set("shop_orders_per_minute", map[string]string{"service": svc}, 120)
	}
	prom := testutil.StartPrometheus(t, exp.URL)
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, `policies:
  - name: orders
    match: {service: "*", environment: production}
    window: 2s
    interval: 500ms
    checks:
      - name: orders-per-minute
        query: shop_orders_per_minute{service="{{ .Service }}"}
        min: 50
    rollback:
      mode: publish
`)
	addr := testutil.FreeAddr(t)
	url := "nats://" + addr
	args := []string{"--nats.listen=" + addr, "--storage.path=" + store, "--rules=" + rules, "--prometheus.url=" + prom.URL}
	w := startProc(t, args...)

	filler := filepath.Join(store, "filler")
	fillUp(t, filler)

	// The deploys, published by a deploy tool while the disk is full.
	publish := func(svc string) (int, string) {
		code, _, errOut := cli(t, "publish", "--nats.url="+url, "--service="+svc, "--environment=production",
			"--version=v2", "--previous-version=v1", "--id=deploy-"+svc)
		return code, errOut
	}
	svcs := []string{"shop", "cart"}
	pending := map[string]bool{} // not accepted yet: the deploy tool retries them
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, svc := range svcs {
		wg.Go(func() {
			code, errOut := publish(svc)
			t.Logf("publish %s while the disk is full: exit %d: %q", svc, code, errOut)
			if code == 0 {
				return // stored after all (the stream's last page had room): it must be processed
			}
			mu.Lock()
			pending[svc] = true
			mu.Unlock()
			checkOneLine(t, "watcher publish", errOut)
			if !containsAny(strings.ToLower(errOut), "storage", "space", "full") {
				t.Errorf("publish %s on a full disk says %q: want one line that points at the storage (the watcher is running; its disk is full)", svc, strings.TrimSpace(errOut))
			}
		})
	}
	wg.Wait()

	if code, _ := httpGetStatus("http://" + w.web + "/-/healthy"); code != 200 {
		t.Fatalf("the watcher does not answer /-/healthy on a full disk (%d): crashed?", code)
	}
	code, body := httpGetStatus("http://" + w.web + "/-/ready")
	t.Logf("/-/ready while the disk is full: %d %q", code, strings.TrimSpace(body))
	log := w.log.String()
	if !strings.Contains(log, "no space left on device") {
		t.Errorf("the watcher's log never says the disk is full (no %q)", "no space left on device")
	}
	// What to do: a line of the watcher's own (nats-server's are about
	// block files) naming the storage path and saying to free it or
	// restart.
	var said bool
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "component=nats-server") && strings.Contains(line, store) &&
			containsAny(strings.ToLower(line), "free", "restart") {
			said = true
		}
	}
	if !said {
		t.Errorf("the watcher's log has no line of its own saying that --storage.path=%s is full and what to do (free space, restart); nats-server's own lines:\n%s",
			store, grepLines(log, "no space left"))
	}

	// Space comes back. The deploy tool retries what was refused.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	for _, svc := range svcs {
		if !pending[svc] {
			continue
		}
		wg.Go(func() {
			// An attempt that gets no answer takes publish's own 10s.
			deadline := time.Now().Add(30 * time.Second)
			for {
				code, errOut := publish(svc)
				if code == 0 {
					mu.Lock()
					delete(pending, svc)
					mu.Unlock()
					return
				}
				if time.Now().After(deadline) {
					t.Errorf("publish %s still fails %s after the filler was deleted: %q: the embedded JetStream does not recover from a full disk until the watcher restarts",
						svc, time.Since(freed).Round(time.Second), strings.TrimSpace(errOut))
					return
				}
				time.Sleep(500 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	js := natsClient(t, url)
	if !waitUntil(10*time.Second, func() bool { return allStarted(t, js, svcs, pending) }) {
		t.Errorf("the deploys accepted after the filler was deleted were not all validated without a restart")
	}

	// Restart on the same storage: it must reopen cleanly, and what was
	// still refused is accepted now.
	stopProc(t, w)
	startProc(t, args...)
	for _, svc := range svcs {
		if pending[svc] {
			if code, errOut := publish(svc); code != 0 {
				t.Fatalf("publish %s after the watcher restarted: %s", svc, errOut)
			}
		}
	}
	js = natsClient(t, url)
	testutil.Eventually(t, 15*time.Second, "every deploy validated and decided", func() bool {
		recs, err := audit.Read(context.Background(), js, audit.Filter{Environment: "production"})
		if err != nil {
			return false
		}
		for _, svc := range svcs {
			if verdicts(ofService(recs, svc)) == 0 {
				return false
			}
		}
		return true
	})
	time.Sleep(time.Second) // anything doubled shows up by now
	recs, err := audit.Read(context.Background(), js, audit.Filter{Environment: "production"})
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range svcs {
		rs := ofService(recs, svc)
		if got := countKind(rs, audit.RunStarted); got != 1 {
			t.Errorf("%s: %d run.started, want 1: %v", svc, got, kinds(rs))
		}
		if got := countKind(rs, audit.RunPassed); got != 1 || verdicts(rs) != 1 {
			t.Errorf("%s: %d run.passed of %d verdicts, want 1 of 1: %v", svc, got, verdicts(rs), kinds(rs))
		}
	}
	// Nothing half-written: each deploy event stored once, every audit
	// record whole, no run left behind.
	ids := map[string]int{}
	for _, m := range rawMessages(t, js, "DEPLOYS") {
		ids[m.Headers().Get("Nats-Msg-Id")]++
	}
	if len(ids) != len(svcs) || ids["deploy-shop"] != 1 || ids["deploy-cart"] != 1 {
		t.Errorf("DEPLOYS holds event ids %v: want deploy-shop and deploy-cart once each", ids)
	}
	for _, m := range rawMessages(t, js, "AUDIT") {
		if !json.Valid(m.Data()) {
			t.Errorf("audit record on %s is not whole JSON: %q", m.Subject(), m.Data())
		}
	}
	if keys := storedRuns(t, js); len(keys) > 0 {
		t.Errorf("%s still holds runs after every deploy was decided: %v", watch.RunsBucket, keys)
	}
}

// TestStorageLimitReached is the second, milder case of a full store, and
// is not a full disk: the NATS server's own JetStream storage limit
// (max_store, 1 MiB here) is used up by another stream, while the disk has
// room. The server then refuses what does not fit with an answer, so
// `watcher publish` must exit non-zero at once with one clear line, and
// once the other stream is deleted, the same deploy is accepted and
// validated without restarting anything.
func TestStorageLimitReached(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(),
		JetStreamMaxStore: 1 << 20, NoSigs: true}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	url := srv.ClientURL()
	js := natsClient(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, `policies:
  - name: orders
    match: {service: "*", environment: production}
    window: 1s
    interval: 500ms
    checks:
      - name: orders
        query: vector(100)
        min: 50
    rollback:
      mode: publish
`)
	// No Prometheus: the run's measurements are errors, and it is
	// decided all the same (inconclusive); only its start matters here.
	startProc(t, "--nats.url="+url, "--rules="+rules, "--prometheus.url=http://"+testutil.FreeAddr(t))

	filler, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "FILLER", Subjects: []string{"filler.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	var full error
	for i := 0; i < 64 && full == nil; i++ {
		_, full = js.Publish(ctx, "filler.x", chunk)
	}
	if full == nil {
		t.Fatalf("1 MiB max_store took 4 MiB without complaint")
	}
	t.Logf("the filler stopped at: %v", full)

	start := time.Now()
	code, _, errOut := cli(t, "publish", "--nats.url="+url, "--service=shop", "--environment=production", "--version=v2", "--id=deploy-limit")
	t.Logf("publish at the limit: exit %d after %s: %q", code, time.Since(start).Round(time.Millisecond), errOut)
	if code == 0 {
		t.Fatalf("publish succeeded with JetStream's storage used up")
	}
	checkOneLine(t, "watcher publish", errOut)
	if !containsAny(strings.ToLower(errOut), "storage", "resources", "space", "full") {
		t.Errorf("publish at the storage limit says %q: want it to say storage is used up", strings.TrimSpace(errOut))
	}

	if err := js.DeleteStream(ctx, filler.CachedInfo().Config.Name); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := cli(t, "publish", "--nats.url="+url, "--service=shop", "--environment=production", "--version=v2", "--id=deploy-limit"); code != 0 {
		t.Fatalf("publish after the filler stream was deleted: exit %d: %s", code, errOut)
	}
	testutil.Eventually(t, 15*time.Second, "the deploy validated and decided", func() bool {
		recs, err := audit.Read(ctx, js, audit.Filter{Service: "shop", Environment: "production"})
		return err == nil && countKind(recs, audit.RunStarted) == 1 && verdicts(recs) == 1
	})
}

// mountTmpfs mounts a tmpfs of size on dir until the test ends. Outside CI
// a machine that cannot mount (not root) skips the test, saying why; in CI
// that fails it.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0750", "tmpfs", dir).CombinedOutput(); err != nil {
		msg := fmt.Sprintf("mounting a %s tmpfs on %s (needs root or CAP_SYS_ADMIN): %v: %s", size, dir, err, bytes.TrimSpace(out))
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	// Registered after the mount and before the watcher: it runs after
	// the watcher's cleanup has stopped it, and before t.TempDir's.
	t.Cleanup(func() {
		for range 50 {
			if exec.Command("umount", dir).Run() == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// fillUp writes name until its filesystem has no space left.
func fillUp(t *testing.T, name string) {
	t.Helper()
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", name, err)
			}
			break
		}
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(name), &st); err != nil {
		t.Fatal(err)
	}
	if st.Bavail != 0 {
		t.Fatalf("%s: %d blocks still free after filling", filepath.Dir(name), st.Bavail)
	}
}

// checkOneLine checks a command's stderr: one line, the command's prefix,
// no Go panic or stack trace.
func checkOneLine(t *testing.T, prefix, stderr string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], prefix+": ") {
		t.Errorf("stderr %q: want one line starting %q", stderr, prefix+": ")
	}
	if containsAny(stderr, "panic", "goroutine ", "internal error") {
		t.Errorf("stderr %q: a panic or stack trace", stderr)
	}
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func grepLines(s, sub string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

func ofService(recs []audit.Record, svc string) []audit.Record {
	var out []audit.Record
	for _, r := range recs {
		if r.Service == svc {
			out = append(out, r)
		}
	}
	return out
}

// allStarted reports whether every service not in pending has its
// run.started.
func allStarted(t *testing.T, js jetstream.JetStream, svcs []string, pending map[string]bool) bool {
	t.Helper()
	recs, err := audit.Read(context.Background(), js, audit.Filter{Environment: "production"})
	if err != nil {
		return false
	}
	for _, svc := range svcs {
		if !pending[svc] && countKind(ofService(recs, svc), audit.RunStarted) == 0 {
			return false
		}
	}
	return true
}

// natsClient connects to url for the test's own reads, until the test
// ends.
func natsClient(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// rawMessages reads every message of a stream as stored.
func rawMessages(t *testing.T, js jetstream.JetStream, stream string) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		t.Fatalf("reading %s: %v", stream, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatalf("reading %s: %v", stream, err)
	}
	var out []jetstream.Msg
	for pending := int(info.NumPending); pending > 0; {
		batch, err := cons.Fetch(pending, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatalf("reading %s: %v", stream, err)
		}
		got := 0
		for m := range batch.Messages() {
			out = append(out, m)
			got++
		}
		if got == 0 {
			t.Fatalf("reading %s: %d messages pending, none delivered (%v)", stream, pending, batch.Error())
		}
		pending -= got
	}
	return out
}

// stopProc stops a `watcher run` process with SIGTERM and waits until it
// has exited; its cleanup then finds it gone.
func stopProc(t *testing.T, p *proc) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "the watcher to exit on SIGTERM", func() bool {
		return p.cmd.Process.Signal(syscall.Signal(0)) != nil
	})
}
