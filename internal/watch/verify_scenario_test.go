package watch

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/rollback"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// Did the rollback help? (README) Scenarios on a real Prometheus with the
// real executor: a deploy of v2 fails its checks, the executor rolls the
// service's link back to v1 in a directory of the test, and the exporter
// serves the service's metric by where that link points, as a service
// would. The rollback's verification then measures the failed checks again.

// verifySite is a service's releases on this machine: v1, then v2 deployed
// over it (current -> releases/v2).
type verifySite struct{ dir, link string }

func newVerifySite(t *testing.T) verifySite {
	t.Helper()
	s := verifySite{dir: t.TempDir()}
	s.link = filepath.Join(s.dir, "current")
	for _, v := range []string{"v1", "v2"} {
		if err := os.MkdirAll(filepath.Join(s.dir, "releases", v), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(s.dir, "releases", "v2", "previousVersion"), []byte("v1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("releases/v2", s.link); err != nil {
		t.Fatal(err)
	}
	return s
}

// rolledBack reports whether the link is on v1 again.
func (s verifySite) rolledBack() bool {
	l, err := os.Readlink(s.link)
	return err == nil && filepath.Base(l) == "v1"
}

// verifyPolicyYAML fails a deploy whose scn_value goes above 10, or away
// from its pre-deploy value by more than a factor of 2 either way, and
// verifies the rollback within within.
func verifyPolicyYAML(svc string, site verifySite, within time.Duration) string {
	return fmt.Sprintf(`policies:
  - name: %[1]s
    match: {service: %[1]s, environment: production}
    window: 8s
    interval: 1s
    checks:
      - name: errors
        query: scn_value{service="{{ .Service }}"}
        max: 10
      - name: errors-vs-before
        query: scn_value{service="{{ .Service }}"}
        baseline: pre_deploy
        min_ratio: 0.5
        max_ratio: 2
    rollback:
      link: %[2]s
      releases_dir: %[3]s
      verify: {within: %[4]s}
`, svc, site.link, filepath.Join(site.dir, "releases"), within)
}

// startExecutor runs the real executor on h's NATS, recording into h's
// recorder, until the end of the test.
func startExecutor(t *testing.T, h *harness) {
	t.Helper()
	e := &rollback.Executor{JS: h.js, Policies: h.set.Load, Audit: h.rec, AnnounceSource: "/rollback-watcher/test",
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})).With("component", "executor")}
	e.Register(prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.Start(ctx); err != nil {
		t.Fatalf("starting the executor: %v", err)
	}
	t.Cleanup(func() { cancel(); e.Wait() })
}

// verifyScenario is one deploy and what its service does after the
// rollback.
type verifyScenario struct {
	name   string
	within time.Duration
	// after is scn_value once the link is back on v1, since it went back.
	after func(since time.Duration) float64
	// restart stops the watcher after this many measurements of the
	// verification (of its check errors) and starts another in its place
	// (0: none).
	restart int
	want    string // rollback.verified or rollback.unhelpful
	outcome string
}

func (sc verifyScenario) run(t *testing.T, b *backend) {
	site := newVerifySite(t)
	h := newPromHarness(t, verifyPolicyYAML(sc.name, site, sc.within), b.q)
	startExecutor(t, h)

	deploy := b.midScrape(time.Now().Add(lead))
	var mu sync.Mutex
	var back time.Time // when the player first saw the link on v1
	b.play(t, sc.name, deploy, func(el time.Duration) []point {
		switch {
		case el < 0:
			return value(5) // v1, before the deploy
		case !site.rolledBack():
			return value(50) // v2: ten times the errors
		}
		mu.Lock()
		defer mu.Unlock()
		if back.IsZero() {
			back = time.Now()
		}
		return value(sc.after(time.Since(back)))
	}, 0)
	time.Sleep(time.Until(deploy))
	id := "d-" + sc.name
	h.publish(deployEvent(id, sc.name, "production", "v2", "previous_version", "v1"))

	failed := h.waitFor(id, audit.RunFailed)
	completed := h.waitFor(id, audit.RollbackCompleted)
	if !site.rolledBack() {
		t.Fatalf("rollback.completed (%s) and the link is not on v1", completed.Message)
	}
	runRec := h.waitFor(id, audit.RunStarted)
	rec := h.rec
	if sc.restart > 0 {
		testutil.Eventually(t, 15*time.Second, fmt.Sprintf("%d measurements of the verification", sc.restart), func() bool {
			n := 0
			for _, m := range verifications(h.rec.ofDeploy(id, audit.Measurement)) {
				if m.Detail["check"] == "errors" {
					n++
				}
			}
			return n >= sc.restart
		})
		h.stop()
		// Another process: it takes the stored verification over at
		// start, the first one having left.
		rec = &recorder{t: t, pub: &audit.Publisher{JS: h.js}}
		w := &Watcher{JS: h.js, Policies: h.set.Load, Querier: b.q, Audit: rec, Replica: "second",
			Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})).With("replica", "second")}
		w.Register(prometheus.NewRegistry())
		ctx, cancel := context.WithCancel(context.Background())
		if err := w.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); w.Wait() })
	}
	var verdict audit.Record
	testutil.Eventually(t, sc.within+15*time.Second, "the verification's verdict", func() bool {
		vs := rec.ofDeploy(id, audit.RollbackVerified, audit.RollbackUnhelpful)
		if len(vs) > 0 {
			verdict = vs[0]
		}
		return len(vs) > 0
	})

	// The whole story, as the stream holds it (repeats dropped by message
	// id): `watcher history --run` reads this.
	story := streamRecords(t, h, runRec.RunID)
	var ms []audit.Record
	var verdicts []string
	for _, r := range story {
		t.Logf("%s %-18s %s", r.Time.Format("15:04:05.000"), r.Kind, r.Message)
		switch {
		case r.Kind == audit.RollbackVerified || r.Kind == audit.RollbackUnhelpful:
			verdicts = append(verdicts, r.Kind)
		case r.Kind == audit.Measurement && r.Detail["verification"] != nil:
			ms = append(ms, r)
		}
	}
	if verdict.Kind != sc.want || !slices.Equal(verdicts, []string{sc.want}) {
		t.Fatalf("verification verdicts %v (%s), want one %s", verdicts, verdict.Message, sc.want)
	}
	d, ok := verdict.Verification()
	if !ok {
		t.Fatalf("%s detail does not read: %#v", verdict.Kind, verdict.Detail)
	}
	if sc.restart == 0 {
		result := map[string]string{audit.RollbackVerified: "verified", audit.RollbackUnhelpful: "unhelpful"}[sc.want]
		m := h.series("watcher_rollback_verifications_total", "service", verdict.Service, "environment", "production", "result", result)
		if m == nil || m.GetCounter().GetValue() != 1 {
			t.Errorf("watcher_rollback_verifications_total{result=%q} = %v, want 1", result, m)
		}
	}
	reqID := failed.Detail["request_id"]
	if d.Outcome != sc.outcome || d.RequestID != reqID || verdict.RequestID != reqID || verdict.RunID != failed.RunID ||
		d.From != "v2" || d.To != "v1" || d.WithinSeconds != sc.within.Seconds() {
		t.Errorf("detail %+v, record run %s request %s; want outcome %s, run %s, request %v, v2 -> v1 within %s",
			d, verdict.RunID, verdict.RequestID, sc.outcome, failed.RunID, reqID, sc.within)
	}
	if len(d.Checks) != 2 || d.Checks[0].Check != "errors" || d.Checks[1].Check != "errors-vs-before" {
		t.Fatalf("detail.checks %+v, want errors and errors-vs-before", d.Checks)
	}

	// Every measurement of the verification: after the rollback, in the
	// stream once each, against the run's pre-deploy baseline.
	if len(ms) == 0 {
		t.Fatal("no measurement of the verification in the stream")
	}
	seen := map[string]bool{}
	for _, m := range ms {
		md, _ := m.Measurement()
		k := md.Check + " " + md.EvalTime.String()
		if seen[k] {
			t.Errorf("measurement %s twice in the stream", k)
		}
		seen[k] = true
		if md.Verification == nil || md.Verification.RequestID != reqID || m.RequestID != reqID || m.RunID != failed.RunID {
			t.Errorf("measurement %q: verification %+v, request %s, run %s", m.Message, md.Verification, m.RequestID, m.RunID)
			continue
		}
		if md.EvalTime.Before(md.Verification.RolledBackAt) || !md.Verification.RolledBackAt.Equal(d.RolledBackAt) {
			t.Errorf("measurement at %s, the rollback completed at %s (verdict says %s)", md.EvalTime, md.Verification.RolledBackAt, d.RolledBackAt)
		}
		if !strings.HasPrefix(m.Message, fmt.Sprintf("after rollback %s: %s ", reqID, md.Check)) || strings.Contains(m.Message, "limit") {
			t.Errorf("measurement message %q", m.Message)
		}
		if md.Check == "errors-vs-before" {
			if md.Baseline.Value == nil || *md.Baseline.Value != 5 {
				t.Errorf("%q: baseline %v, want the pre-deploy 5", m.Message, md.Baseline.Value)
			}
			if want := detailTime(t, runRec, "deploy_time"); !md.BaselineTime.Equal(want.UTC()) {
				t.Errorf("%q: baseline at %s, want the deploy's time %s", m.Message, md.BaselineTime, want)
			}
		}
	}
	last := ms[len(ms)-1]
	switch sc.want {
	case audit.RollbackVerified:
		wantContains(t, verdict.Kind, verdict.Message, "the rollback helped", "check errors passes: 5 (max 10)",
			"check errors-vs-before passes: 5 (min_ratio 0.5, max_ratio 2)")
		for _, c := range d.Checks {
			if c.Outcome != "pass" || c.Value == nil || *c.Value != 5 {
				t.Errorf("check %+v, want a pass at 5", c)
			}
		}
		lm, _ := last.Measurement()
		if lm.Outcome != "pass" {
			t.Errorf("the last measurement %q did not pass", last.Message)
		}
	case audit.RollbackUnhelpful:
		wantContains(t, verdict.Kind, verdict.Message, "the rollback did not help", "check errors still fails: 50 > max 10",
			"check errors-vs-before still fails: 10 x baseline 5 > max_ratio 2", "the problem is elsewhere")
		for _, c := range d.Checks {
			if c.Outcome != "fail" || c.Value == nil || *c.Value != 50 || c.Threshold == "" || c.Reason == "" || c.Counts.Fail == 0 {
				t.Errorf("check %+v, want a failure at 50 with its threshold and reason", c)
			}
		}
		if lm, _ := last.Measurement(); lm.EvalTime.Before(d.RolledBackAt.Add(sc.within - 1500*time.Millisecond)) {
			t.Errorf("the last measurement at %s, within ends at %s: not measured to the end", lm.EvalTime, d.RolledBackAt.Add(sc.within))
		}
	}
	if sc.restart > 0 {
		var resumed []audit.Record
		for _, r := range story {
			if r.Kind == audit.RunResumed {
				resumed = append(resumed, r)
			}
		}
		if len(resumed) != 1 || !strings.Contains(resumed[0].Message, "verification of rollback "+fmt.Sprint(reqID)+" resumed by replica second") {
			t.Errorf("run.resumed records %v, want one for the verification", messages(resumed))
		}
		if n := len(verifications(rec.ofDeploy(id, audit.Measurement))); n == 0 {
			t.Error("the second watcher took no measurement of the verification")
		}
	}
}

// verifications are the measurements of a verification among ms.
func verifications(ms []audit.Record) []audit.Record {
	var out []audit.Record
	for _, m := range ms {
		if m.Detail["verification"] != nil {
			out = append(out, m)
		}
	}
	return out
}

// TestVerifyRollback: (a) a service that recovers once rolled back gets
// rollback.verified; (b) one that stays bad gets rollback.unhelpful, loud,
// with each check's last value, threshold and reason, after measuring the
// whole of within; (c) a verification whose watcher stops mid-way is
// resumed by the next one and decided once.
func TestVerifyRollback(t *testing.T) {
	t.Parallel()
	b := startBackend(t)
	var wg sync.WaitGroup
	for _, sc := range []verifyScenario{
		{name: "verify-recovers", within: 6 * time.Second, after: func(time.Duration) float64 { return 5 },
			want: audit.RollbackVerified, outcome: audit.VerifyRecovered},
		{name: "verify-stays-bad", within: 4 * time.Second, after: func(time.Duration) float64 { return 50 },
			want: audit.RollbackUnhelpful, outcome: audit.VerifyNotRecovered},
		{name: "verify-restart", within: 8 * time.Second, restart: 2, after: func(since time.Duration) float64 {
			if since < 4*time.Second {
				return 50 // the rollback's processes take a while to be healthy
			}
			return 5
		}, want: audit.RollbackVerified, outcome: audit.VerifyRecovered},
	} {
		wg.Go(func() { t.Run(sc.name, func(t *testing.T) { sc.run(t, b) }) })
	}
	wg.Wait()
}
