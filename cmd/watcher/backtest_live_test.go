package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/promclient"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// liveBacktestRules judge every service by an error ratio threshold and a
// latency comparison with the 5s before the deploy. Measurements fall on
// whole seconds.
const liveBacktestRules = `policies:
  - name: live
    match: {service: "*", environment: production}
    window: 8s
    interval: 1s
    initial_delay: 0s
    checks:
      - {name: errors, query: 'bl_error_ratio{service="{{ .Service }}"}', max: 0.05, failure_limit: 1}
      - name: latency-vs-before
        query: 'bl_latency_seconds{service="{{ .Service }}"}'
        compare: {with: pre_deploy, lookback: 5s, step: 500ms, direction: increase, margin: 0.2, min_samples: 5}
    rollback: {mode: publish}
`

// blChange is how long after each whole second the exporter's values
// change. A measurement at a whole second asks Prometheus at once: a
// scrape stamped a few milliseconds before it may not be committed yet,
// and the live run judges without it where a backtest, later, sees it.
// Prometheus scrapes every 500ms, so the first scrape with a new value
// comes at most blChange+500ms after the second, and at least 400ms before
// the next measurement: a scrape the live run may miss has the same value
// as the one before it.
const blChange = 100 * time.Millisecond

// liveBacktestDeploys: two good deploys and two bad ones, each of its own
// service. All go out together, 300ms into the test's deploy second.
var liveBacktestDeploys = []struct {
	id, service string
	errors      bool // the error ratio goes to 0.2 two seconds later
	slow        bool // latency 2.5 times what it was from the deploy second on, as the new release went live before its event
}{
	{id: "bl-good-1", service: "bl-cart"},
	{id: "bl-errors", service: "bl-shop", errors: true},
	{id: "bl-slow", service: "bl-search", slow: true},
	{id: "bl-good-2", service: "bl-pay"},
}

// playLiveBacktest sets every service's values once a second, blChange
// after it, until the test ends: healthy values with some noise, and what
// the bad deploys do once the deploy second is set. It returns a function
// that sets the deploy second and one that says how late the latest
// change came.
func playLiveBacktest(t *testing.T, exp *testutil.Exporter) (setDeploy func(time.Time), lateness func() time.Duration) {
	t.Helper()
	var mu sync.Mutex
	var deploy time.Time
	var worst time.Duration
	set := func(sec time.Time) {
		mu.Lock()
		d := deploy
		mu.Unlock()
		k := sec.Unix()
		for i, dep := range liveBacktestDeploys {
			seed := int64(i * 5)
			errs := 0.01 + 0.001*float64((k*3+seed)%5)
			lat := 0.1 * (1 + 0.02*float64((k*7+seed)%11-5))
			if dep.errors && !d.IsZero() && !sec.Before(d.Add(2*time.Second)) {
				errs = 0.2
			}
			if dep.slow && !d.IsZero() && !sec.Before(d) {
				lat *= 2.5
			}
			exp.Set("bl_error_ratio", map[string]string{"service": dep.service}, errs)
			exp.Set("bl_latency_seconds", map[string]string{"service": dep.service}, lat)
		}
	}
	set(time.Now().Truncate(time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for {
			sec := time.Now().Truncate(time.Second).Add(time.Second)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(sec.Add(blChange))):
			}
			late := time.Since(sec.Add(blChange))
			set(sec)
			mu.Lock()
			worst = max(worst, late)
			mu.Unlock()
		}
	}()
	return func(d time.Time) {
			mu.Lock()
			deploy = d
			mu.Unlock()
		}, func() time.Duration {
			mu.Lock()
			defer mu.Unlock()
			return worst
		}
}

// TestBacktestFromAuditMatchesLive is the audit path of `watcher backtest`
// end to end: the watcher validates good and bad deploys live on a real
// Prometheus, then a backtest of --from/--to reads them from the watcher's
// audit and replays them over the same data. Every deploy the watcher saw
// is there, expecting what the watcher did with it (the output says so),
// and gets the live verdict again, decided by the same check with the same
// measurement at the same time after the deploy: no false rollback, no
// miss.
func TestBacktestFromAuditMatchesLive(t *testing.T) {
	from := time.Now().Add(-time.Second).UTC().Truncate(time.Second)
	exp := testutil.NewExporter(t)
	setDeploy, lateness := playLiveBacktest(t, exp)
	prom := testutil.StartPrometheus(t, exp.URL)
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, liveBacktestRules)
	w := startWatcher(t, "--rules="+rules, "--prometheus.url="+prom.URL)
	natsURL := "--nats.url=nats://" + w.nats

	// 6s of history in Prometheus for the comparison's 5s before the
	// deploy; the deploys go out between two changes of the values.
	deploy := time.Now().Add(6 * time.Second).Truncate(time.Second)
	setDeploy(deploy)
	time.Sleep(time.Until(deploy.Add(blChange + 200*time.Millisecond)))
	for _, d := range liveBacktestDeploys {
		if code, _, errOut := cli(t, "publish", natsURL, "--id="+d.id, "--service="+d.service, "--environment=production",
			"--version=2.0", "--previous-version=1.9"); code != 0 {
			t.Fatalf("publish %s: exit %d: %s", d.id, code, errOut)
		}
	}
	if late := time.Since(deploy); late > 2*time.Second {
		t.Fatalf("the deploys went out %s after %s, after the errors began", late, deploy.Format("15:04:05"))
	}

	// What the watcher did with each deploy.
	type live struct {
		started, verdict audit.Record
		rolledBack       bool
		deciding         string // the deciding check's measurement
		decidedAfter     time.Duration
	}
	lives := map[string]*live{}
	testutil.Eventually(t, 40*time.Second, "every deploy's verdict and a rollback of each failed one", func() bool {
		recs := history(t, w.nats, "--environment=production")
		lives = map[string]*live{}
		byRun := map[string]*live{}
		var meas []audit.Record
		for _, r := range recs {
			if r.Kind == audit.RunStarted {
				l := &live{started: r}
				lives[r.DeployID], byRun[r.RunID] = l, l
			}
		}
		for _, r := range recs {
			l := byRun[r.RunID]
			if l == nil {
				continue
			}
			switch r.Kind {
			case audit.RunPassed, audit.RunFailed, audit.RunInconclusive, audit.RunMarginal:
				l.verdict = r
			case audit.RollbackRequested:
				l.rolledBack = true
			case audit.Measurement:
				meas = append(meas, r)
			}
		}
		for _, d := range liveBacktestDeploys {
			l := lives[d.id]
			if l == nil || l.verdict.Kind == "" || (l.verdict.Kind == audit.RunFailed && !l.rolledBack) {
				return false
			}
		}
		// The decision: a failure at the run's last measurement (the
		// failing one), any other verdict at the window's end; the
		// deciding measurement is the deciding check's last one at or
		// before it.
		decided := map[*live]time.Time{}
		for _, l := range byRun {
			sd, _ := l.started.RunStarted()
			if l.verdict.Kind != audit.RunFailed {
				decided[l] = sd.WindowEnd
			}
		}
		for _, r := range meas {
			l := byRun[r.RunID]
			if md, _ := r.Measurement(); l.verdict.Kind == audit.RunFailed && md.EvalTime.After(decided[l]) {
				decided[l] = md.EvalTime
			}
		}
		for _, r := range meas {
			l := byRun[r.RunID]
			md, _ := r.Measurement()
			vd, _ := l.verdict.Verdict()
			if len(vd.Checks) > 0 && md.Check == vd.Checks[0].Check && !md.EvalTime.After(decided[l]) {
				l.deciding = r.Message
			}
		}
		for l, at := range decided {
			sd, _ := l.started.RunStarted()
			l.decidedAfter = at.Sub(sd.DeployTime)
		}
		return true
	})
	var lastEnd time.Time
	for _, d := range liveBacktestDeploys {
		l := lives[d.id]
		sd, _ := l.started.RunStarted()
		if sd.WindowEnd.After(lastEnd) {
			lastEnd = sd.WindowEnd
		}
		want := audit.RunPassed
		if d.errors || d.slow {
			want = audit.RunFailed
		}
		t.Logf("%s live: %s after %s: %s", d.id, l.verdict.Kind, l.decidedAfter, l.verdict.Message)
		if l.verdict.Kind != want {
			t.Errorf("%s: live verdict %s, want %s: the scenario does not test what it means to", d.id, l.verdict.Kind, want)
		}
	}
	// Over about 300ms late, a change's first scrape can come just before
	// a measurement, which the live run may have judged without it.
	t.Logf("the exporter's values changed at most %s after second+%s", lateness(), blChange)

	// A backtest asks about the past only: wait until Prometheus has
	// scraped past the last window's end, and so committed every scrape
	// before it.
	q, err := promclient.New(promclient.Options{URL: prom.URL})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "Prometheus to have scraped past the windows", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		v, err := q.Query(ctx, `timestamp(up{job="test"})`, time.Now())
		return err == nil && len(v) == 1 && time.UnixMilli(int64(math.Round(float64(v[0].Value)*1000))).After(lastEnd)
	})

	to := time.Now().Add(time.Minute).UTC().Format(time.RFC3339)
	args := []string{"backtest", "--rules=" + rules, "--prometheus.url=" + prom.URL, natsURL, "--from=" + from.Format(time.RFC3339), "--to=" + to}
	code, out, errOut := cli(t, append(args, "--json")...)
	if code != 0 {
		t.Fatalf("backtest --json: exit %d: %s\n%s", code, errOut, out)
	}
	if !strings.Contains(errOut, "expectations are what the watcher did") {
		t.Errorf("backtest --json does not say where its expectations come from: stderr %q", errOut)
	}
	type jsonDeploy struct {
		DeployID            string   `json:"deploy_id"`
		Verdict             string   `json:"verdict"`
		Check               *string  `json:"check"`
		DecidedAfterSeconds *float64 `json:"decided_after_seconds"`
		Summary             bool     `json:"summary"`
		Deploys             int      `json:"deploys"`
		FalseRollbacks      int      `json:"false_rollbacks"`
		Misses              int      `json:"misses"`
		Precision           *float64 `json:"precision"`
		Recall              *float64 `json:"recall"`
	}
	got := map[string]jsonDeploy{}
	var sum *jsonDeploy
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var j jsonDeploy
		if err := json.Unmarshal([]byte(line), &j); err != nil {
			t.Fatalf("not JSON: %s", line)
		}
		if j.Summary {
			sum = &j
			continue
		}
		got[j.DeployID] = j
	}
	if len(got) != len(liveBacktestDeploys) {
		t.Errorf("%d deploys replayed, want the %d the watcher saw:\n%s", len(got), len(liveBacktestDeploys), out)
	}
	for _, d := range liveBacktestDeploys {
		l, j := lives[d.id], got[d.id]
		vd, _ := l.verdict.Verdict()
		liveCheck := ""
		if len(vd.Checks) > 0 {
			liveCheck = vd.Checks[0].Check
		}
		check := ""
		if j.Check != nil {
			check = *j.Check
		}
		liveVerdict := strings.TrimPrefix(l.verdict.Kind, "run.")
		if j.Verdict != liveVerdict || check != liveCheck {
			t.Errorf("%s: backtest %s by %q, live %s by %q", d.id, j.Verdict, check, liveVerdict, liveCheck)
		}
		if j.DecidedAfterSeconds == nil || math.Abs(*j.DecidedAfterSeconds-l.decidedAfter.Seconds()) > 0.001 {
			t.Errorf("%s: backtest decided after %v s, live after %s", d.id, j.DecidedAfterSeconds, l.decidedAfter)
		}
	}
	if sum == nil {
		t.Fatalf("no summary object:\n%s", out)
	}
	if sum.Deploys != len(liveBacktestDeploys) || sum.FalseRollbacks != 0 || sum.Misses != 0 ||
		sum.Precision == nil || *sum.Precision != 1 || sum.Recall == nil || *sum.Recall != 1 {
		t.Errorf("summary %+v, want %d deploys, no false rollback, no miss, precision and recall 1", *sum, len(liveBacktestDeploys))
	}

	// The table: each deploy expects what the watcher did, and the
	// deciding measurement is the live run's, numbers and all.
	code, out, errOut = cli(t, args...)
	if code != 0 {
		t.Fatalf("backtest: exit %d: %s\n%s", code, errOut, out)
	}
	t.Logf("backtest output:\n%s", out)
	words := strings.Join(strings.Fields(out), " ")
	for _, d := range liveBacktestDeploys {
		l := lives[d.id]
		expect := "good (passed)"
		if l.verdict.Kind == audit.RunFailed {
			expect = "bad (rolled back)"
		}
		row := fmt.Sprintf("%s production 2.0 ", d.service)
		i := strings.Index(words, row)
		if i < 0 {
			t.Errorf("no row for %s", d.id)
			continue
		}
		rest := words[i:]
		if j := strings.Index(rest[len(row):], " production 2.0 "); j >= 0 {
			rest = rest[:len(row)+j]
		}
		if !strings.Contains(rest, " "+expect+" ") || !strings.Contains(rest, strings.Join(strings.Fields(l.deciding), " ")) {
			t.Errorf("%s: row %q; want it to expect %q and show the live deciding measurement %q", d.id, rest, expect, l.deciding)
		}
	}
	for _, want := range []string{
		"4 deploys, 4 judged against an expectation:",
		"expectations are what the watcher did",
		"false rollbacks 0", "misses 0", "precision 1 (2 of 2 rollbacks were of bad deploys)", "recall 1 (2 of 2 bad deploys caught)",
	} {
		if !strings.Contains(words, want) {
			t.Errorf("the table lacks %q", want)
		}
	}
}
