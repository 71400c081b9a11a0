package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestPublishWait: `publish --wait` follows the deploy's run on real parts
// (the embedded NATS, a real Prometheus scraping an exporter, a real
// release link) and exits with its verdict, printing the measurements in
// the columns of `history --run` as they come.
func TestPublishWait(t *testing.T) {
	exp := testutil.NewExporter(t)
	for svc, v := range map[string]float64{"good": 120, "bad": 12, "slow": 120, "slow-too": 120, "scored-keep": 120, "scored-rollback": 120, "retried": 120, "twice": 120} {
		exp.Set("orders_per_minute", map[string]string{"service": svc}, v)
	}
	prom := testutil.StartPrometheus(t, exp.URL)

	dir := t.TempDir()
	badLink := release(t, filepath.Join(dir, "bad"), "v1", "v2")
	rules := filepath.Join(dir, "rules.yml")
	// Short windows: the runs take about two seconds each, side by side.
	// Scored: orders within [50, 100] is half the weight, so 120 makes the
	// score 50, marginal.
	var policies strings.Builder
	policies.WriteString("policies:\n")
	for _, svc := range []string{"good", "bad", "nodata", "retried", "twice"} {
		fmt.Fprintf(&policies, `  - name: orders-%[1]s
    match: {service: %[1]s}
    window: 2s
    interval: 500ms
    initial_delay: 0s
    checks:
      - {name: orders-per-minute, query: 'orders_per_minute{service="{{ .Service }}"}', min: 50, failure_limit: 0}
    rollback: {link: '%[2]s/{{ .Service }}/current'}
`, svc, dir)
	}
	fmt.Fprintf(&policies, `  - name: long
    match: {service: "slow*"}
    window: 1m
    interval: 500ms
    initial_delay: 0s
    checks:
      - {name: orders-per-minute, query: 'orders_per_minute{service="{{ .Service }}"}', min: 50}
    rollback: {link: '%[1]s/{{ .Service }}/current'}
  - name: scored-keep
    match: {service: scored-keep}
    window: 2s
    interval: 500ms
    initial_delay: 0s
    score: {pass: 80, marginal: 50}
    on_marginal: keep
    checks: &scored
      - {name: orders-min, query: 'orders_per_minute{service="{{ .Service }}"}', min: 50}
      - {name: orders-max, query: 'orders_per_minute{service="{{ .Service }}"}', max: 100}
    rollback: {link: '%[1]s/{{ .Service }}/current'}
  - name: scored-rollback
    match: {service: scored-rollback}
    window: 2s
    interval: 500ms
    initial_delay: 0s
    score: {pass: 80, marginal: 50}
    on_marginal: rollback
    checks: *scored
    rollback: {link: '%[1]s/{{ .Service }}/current', mode: publish}
`, dir)
	writeFile(t, rules, policies.String())
	w := startWatcher(t, "--rules="+rules, "--prometheus.url="+prom.URL)
	natsURL := "--nats.url=nats://" + w.nats

	// Every case at once: each deploy has a service of its own (a newer
	// deploy of a service supersedes the run of the older one), and
	// t.Parallel would run only GOMAXPROCS of them at a time.
	publish := func(service string, args ...string) waitResult {
		var out, errOut bytes.Buffer
		code := run(context.Background(), append([]string{"publish", natsURL, "--service=" + service, "--environment=production", "--version=v2"}, args...), &out, &errOut, nil)
		return waitResult{code, out.String(), errOut.String()}
	}
	js := natsClient(t, "nats://"+w.nats)
	// An event the stream keeps twice, the second outside its duplicate
	// window: here a first one without a Nats-Msg-Id.
	if _, err := js.Publish(context.Background(), "deploys.production.twice",
		[]byte(`{"id":"kept-twice","service":"twice","environment":"production","version":"v2"}`)); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func() waitResult{
		"good":            func() waitResult { return publish("good", "--wait") },
		"bad":             func() waitResult { return publish("bad", "--wait=30s") },
		"nodata":          func() waitResult { return publish("nodata", "--wait=30s") },
		"scored-keep":     func() waitResult { return publish("scored-keep", "--wait=30s") },
		"scored-rollback": func() waitResult { return publish("scored-rollback", "--wait=30s") },
		"unmatched":       func() waitResult { return publish("unmatched", "--wait=30s") },
		"slow":            func() waitResult { return publish("slow", "--wait=3s") },
		// A retried pipeline step: the DEPLOYS stream drops the second
		// event as a duplicate, and the wait reads the first one's run.
		"retried": func() waitResult {
			if r := publish("retried", "--id=retried", "--wait=30s"); r.code != 0 {
				return r
			}
			return publish("retried", "--id=retried", "--wait=30s")
		},
		// The watcher finds the run of the id over and writes nothing new:
		// the wait finds the first event on DEPLOYS and reads the run from
		// there.
		"twice": func() waitResult {
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
				recs, _ := audit.Read(context.Background(), js, audit.Filter{Service: "twice", Kinds: []string{audit.RunPassed}})
				if len(recs) > 0 {
					return publish("twice", "--id=kept-twice", "--wait=30s")
				}
			}
			return waitResult{-1, "", "the first event's run did not pass within 30s"}
		},
	}
	results := map[string]chan waitResult{}
	for name, f := range cases {
		ch := make(chan waitResult, 1)
		results[name] = ch
		go func() { ch <- f() }()
	}
	result := func(t *testing.T, name string) waitResult {
		t.Helper()
		select {
		case r := <-results[name]:
			return r
		case <-time.After(time.Minute):
			t.Fatalf("publish --wait for %s did not return within a minute", name)
			return waitResult{}
		}
	}

	for _, tc := range []struct {
		service string
		code    int
		verdict string // the last line of stdout
		rows    []string
	}{
		{"good", 0, "verdict: passed (exit 0): window closed healthy: orders-per-minute pass ", []string{"orders-per-minute 120 - - min 50 pass"}},
		{"bad", 1, "verdict: failed (exit 1): check orders-per-minute failed: ", []string{"orders-per-minute 12 - - min 50 fail pass 0 fail 1"}},
		{"nodata", 4, "verdict: inconclusive (exit 4): ", []string{"orders-per-minute - - - min 50 inconclusive"}},
		{"scored-keep", 0, "verdict: marginal, kept (exit 0): window closed marginal, score 50 ", []string{"orders-max 120 - - max 100 fail"}},
		{"scored-rollback", 1, "verdict: marginal, rollback requested (exit 1): window closed marginal, score 50 ", []string{"orders-min 120 - - min 50 pass"}},
		{"unmatched", 5, "verdict: not validated (exit 5): no policy matches service unmatched in environment production", nil},
	} {
		t.Run(tc.service, func(t *testing.T) {
			r := result(t, tc.service)
			if r.code != tc.code || r.errOut != "" {
				t.Fatalf("exit %d, want %d; %s", r.code, tc.code, r)
			}
			lines := strings.Split(strings.TrimSuffix(r.out, "\n"), "\n")
			id := lines[0]
			if last := lines[len(lines)-1]; !strings.HasPrefix(last, tc.verdict) {
				t.Errorf("last line %q, want it to start with %q", last, tc.verdict)
			}
			for _, want := range tc.rows {
				if !strings.Contains(normalized(r.out), want) {
					t.Errorf("no measurement row %q in:\n%s", want, r.out)
				}
			}
			if tc.rows == nil {
				return
			}
			// Every measurement of the run, the first ones too (taken as
			// soon as the watcher read the event), each as `history --run`
			// shows it.
			var runID string
			for _, rec := range history(t, w.nats, "--service="+tc.service) {
				if rec.DeployID == id {
					runID = rec.RunID
				}
			}
			recs := history(t, w.nats, "--run="+runID, "--kind=measurement")
			_, table, _ := cli(t, "history", natsURL, "--run="+runID)
			var rows []string
			for _, l := range lines {
				if strings.HasPrefix(l, "TIME ") || strings.Contains(l, " inconclusive ") && strings.Contains(l, " error ") && !strings.HasPrefix(l, "verdict") {
					rows = append(rows, l)
				}
			}
			if len(rows) != len(recs)+1 {
				t.Errorf("%d measurement rows and header, want %d measurements and a header:\n%s", len(rows), len(recs), r.out)
			}
			for _, row := range rows {
				if !strings.Contains(normalized(table), normalized(row)) {
					t.Errorf("row %q is not as `history --run` shows it:\n%s", row, table)
				}
			}
		})
	}
	t.Run("timeout", func(t *testing.T) {
		r := result(t, "slow")
		if r.code != 6 {
			t.Fatalf("exit %d, want 6; %s", r.code, r)
		}
		assertOneLine(t, r.errOut)
		for _, want := range []string{"no verdict for deploy ", "within --wait=3s", "of policy long", "window ending", " measurements, the last orders-per-minute 120 pass", "see watcher history --run="} {
			if !strings.Contains(r.errOut, want) {
				t.Errorf("stderr lacks %q: %s", want, r.errOut)
			}
		}
		if !strings.Contains(normalized(r.out), "orders-per-minute 120 - - min 50 pass") || strings.Contains(r.out, "verdict") {
			t.Errorf("stdout wants the measurements seen and no verdict:\n%s", r.out)
		}
	})
	t.Run("same id again", func(t *testing.T) {
		r := result(t, "retried")
		if r.code != 0 || !strings.Contains(r.errOut, "already published") || !strings.Contains(r.out, "verdict: passed (exit 0)") {
			t.Errorf("again: exit %d, want 0 with the first run's verdict; %s", r.code, r)
		}
	})
	t.Run("same id after the duplicate window", func(t *testing.T) {
		r := result(t, "twice")
		if r.code != 0 || r.errOut != "" || !strings.Contains(r.out, "verdict: passed (exit 0)") {
			t.Errorf("exit %d, want 0 with the first run's verdict; %s", r.code, r)
		}
	})
	t.Run("connection lost", func(t *testing.T) {
		out, errOut := &syncBuffer{}, &syncBuffer{}
		done := make(chan int, 1)
		go func() {
			done <- run(context.Background(), []string{"publish", natsURL, "--service=slow-too", "--environment=production", "--version=v2", "--wait=1m"}, out, errOut, nil)
		}()
		testutil.Eventually(t, 10*time.Second, "a measurement", func() bool { return strings.Contains(out.String(), "orders-per-minute") })
		w.cancel() // the watcher stops, and its embedded NATS server with it
		select {
		case code := <-done:
			if code != 3 || !strings.Contains(errOut.String(), "lost the connection to NATS before a verdict for deploy ") {
				t.Errorf("exit %d, want 3 saying the connection was lost; stderr %q", code, errOut.String())
			}
			assertOneLine(t, errOut.String())
		case <-time.After(30 * time.Second):
			t.Fatal("publish --wait went on waiting after the server went away")
		}
	})
	// The failed run rolled back for real.
	testutil.Eventually(t, 20*time.Second, "bad's link back on v1", func() bool { return readlink(t, badLink) == "v1" })
}

type waitResult struct {
	code        int
	out, errOut string
}

func (r waitResult) String() string {
	return fmt.Sprintf("stderr %q; stdout:\n%s", r.errOut, r.out)
}

// TestPublishWaitBadValues: a --wait that is no positive duration is a
// usage error, and one that cannot reach NATS says so in one line with
// the code of a wait that could not be done.
func TestPublishWaitBadValues(t *testing.T) {
	closed := "--nats.url=nats://" + testutil.FreeAddr(t)
	for _, tc := range []struct {
		wait []string
		code int
		want string
	}{
		{[]string{"--wait=0"}, 2, `--wait="0": want a duration above 0`},
		{[]string{"--wait=0s"}, 2, `--wait="0s": want a duration above 0`},
		{[]string{"--wait=-1m"}, 2, `--wait="-1m": want a duration above 0`},
		{[]string{"--wait=soon"}, 2, `--wait="soon": want a duration above 0 such as 10m`},
		{[]string{"--wait="}, 2, `--wait="": want a duration`},
		{[]string{"--wait", "10m"}, 2, "unexpected 10m"},
		{[]string{"--wait"}, 3, "no servers available for connection"},
	} {
		code, out, errOut := cliWithin(t, 30*time.Second, append([]string{"publish", closed, "--service=shop", "--environment=production", "--version=v1"}, tc.wait...)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) || out != "" {
			t.Errorf("%v: exit %d, stderr %q, stdout %q; want %d and %q", tc.wait, code, errOut, out, tc.code, tc.want)
		}
		assertOneLine(t, errOut)
	}
	var help bytes.Buffer
	run(context.Background(), []string{"publish", "--help"}, &help, &help, nil)
	if !strings.Contains(help.String(), "--wait=[DURATION]") || !strings.Contains(help.String(), "6 timed out") {
		t.Errorf("publish --help does not show --wait:\n%s", help.String())
	}
}

// TestWaiterVerdicts: which record ends a wait, with which exit code, for
// the verdicts no short run above produces.
func TestWaiterVerdicts(t *testing.T) {
	rec := func(kind, deploy string, detail any) audit.Record {
		r := audit.Record{Kind: kind, DeployID: deploy, RunID: "run1", Service: "shop", Environment: "production", Message: kind + " message"}
		if detail != nil {
			if err := r.SetDetail(detail); err != nil {
				t.Fatal(err)
			}
		}
		return r
	}
	started := rec(audit.RunStarted, "d1", audit.RunStartedDetail{WindowEnd: time.Now()})
	other := rec(audit.RunFailed, "d2", nil)
	held := rec(audit.RunMarginal, "d1", audit.VerdictDetail{RequestID: "req1", OnMarginal: "ask"})
	answer := func(kind, request string) audit.Record {
		r := rec(kind, "", nil)
		r.RequestID = request
		return r
	}
	for _, tc := range []struct {
		name string
		recs []audit.Record
		code int // -1: no verdict
		word string
	}{
		{"another deploy's verdict", []audit.Record{started, other}, -1, ""},
		{"superseded", []audit.Record{started, rec(audit.RunSuperseded, "d1", audit.VerdictDetail{SupersededBy: &audit.SupersededBy{DeployID: "d3"}})}, 4, "superseded"},
		{"inconclusive, kept", []audit.Record{started, rec(audit.RunInconclusive, "d1", audit.VerdictDetail{OnInconclusive: "keep"})}, 4, "inconclusive"},
		{"inconclusive, rolled back", []audit.Record{started, rec(audit.RunInconclusive, "d1", audit.VerdictDetail{RequestID: "req1"})}, 1, "inconclusive, rollback requested"},
		{"marginal, held", []audit.Record{started, held, answer(audit.RollbackHeld, "req1")}, -1, ""},
		{"marginal, held, cancelled", []audit.Record{started, held, answer(audit.RollbackCancelled, "req2"), answer(audit.RollbackCancelled, "req1")}, 0, "marginal, rollback cancelled"},
		{"marginal, held, approved", []audit.Record{started, held, answer(audit.RollbackApproved, "req1")}, 1, "marginal, rollback approved"},
		{"rejected by the decoder", []audit.Record{rec(audit.EventRejected, "", audit.EventRejectedDetail{DecodeRejection: &audit.DecodeRejection{StreamSeq: 7}})}, 2, "rejected"},
		{"another event rejected", []audit.Record{rec(audit.EventRejected, "", audit.EventRejectedDetail{DecodeRejection: &audit.DecodeRejection{StreamSeq: 6}})}, -1, ""},
		{"rejected by a template", []audit.Record{rec(audit.EventRejected, "d1", audit.EventRejectedDetail{Field: "policy template"})}, 2, "rejected"},
		{"a duplicate of a run going on", []audit.Record{rec(audit.RunSkipped, "d1", audit.RunSkippedDetail{Reason: "duplicate"}), rec(audit.RunPassed, "d1", nil)}, 0, "passed"},
	} {
		var out bytes.Buffer
		w := &waiter{deployID: "d1", deploySeq: 7, out: newStreamTable(&out)}
		code, word := -1, ""
		for _, r := range tc.recs {
			if v, done := w.see(r); done {
				code, word = v.code, v.word
				break
			}
		}
		if code != tc.code || word != tc.word {
			t.Errorf("%s: exit %d %q, want %d %q", tc.name, code, word, tc.code, tc.word)
		}
		if tc.name == "marginal, held" && !strings.Contains(w.seen(), "its rollback req1 held for `watcher approve` or `watcher cancel`") {
			t.Errorf("%s: seen %q does not say what it waits for", tc.name, w.seen())
		}
	}
}

// normalized is s with every run of spaces one space: rows of tables
// aligned differently compare equal.
func normalized(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		b.WriteString(strings.Join(strings.Fields(l), " "))
		b.WriteByte('\n')
	}
	return b.String()
}
