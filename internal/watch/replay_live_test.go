package watch

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	promclient "github.com/rollback-watcher/watcher/internal/promclient"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// Timing of TestReplayMatchesLive. Measurements fall on the grid of
// rlInterval since the epoch; so do the comparisons' steps.
const (
	rlWindow   = 16 * time.Second
	rlInterval = 2 * time.Second
	// rlLead is how long the exporter plays before the deploys: the
	// longest lookback (11s of 1s steps, each an increase over the step
	// before it) plus a scrape or two.
	rlLead = 13 * time.Second
	// rlLate is how late the event of the deploy that says its own time
	// arrives: past the next measurement time, so that a replay started
	// at the deploy's time instead of the event's arrival would take one
	// measurement more.
	rlLate = 1700 * time.Millisecond
	// rlIngest is the least time between the last scrape before a
	// measurement and the measurement, in this test (see
	// startReplayBackend).
	rlIngest = 150 * time.Millisecond
)

// replayLiveRules are the policies of TestReplayMatchesLive: one per
// service, all with the same window and interval.
func replayLiveRules() string {
	timing := fmt.Sprintf("window: %s\ninterval: %s", rlWindow, rlInterval)
	samples := func(name string) string {
		return fmt.Sprintf(`
- name: %s
  query: rl_latency{service="{{ .Service }}"}
  compare:
    with: pre_deploy
    lookback: 5s
    step: 500ms
    direction: increase
    margin: 0.2
    min_samples: 5`, name)
	}
	counts := func(name string) string {
		return fmt.Sprintf(`
- name: %s
  compare:
    with: pre_deploy
    errors: sum(increase(rl_errors_total{service="{{ .Service }}"}[{{ .Range }}]))
    total: sum(increase(rl_requests_total{service="{{ .Service }}"}[{{ .Range }}]))
    lookback: 11s
    step: 1s
    margin: 0.5
    min_total: 100`, name)
	}
	threshold := `
- name: error-ratio
  query: rl_error_ratio{service="{{ .Service }}"}
  max: 0.05
  failure_limit: 1
- name: orders
  query: rl_orders{service="{{ .Service }}"}
  min: 50`
	policy := func(svc, checks string) string {
		return policyYAML(svc, fmt.Sprintf("{service: %s, environment: production}", svc), timing, checks)
	}
	return "policies:\n" +
		policy("rl-good", threshold+samples("latency-vs-before")+counts("payment-errors")) +
		policy("rl-threshold", threshold) +
		policy("rl-latency", samples("latency-vs-before")) +
		policy("rl-errors", counts("payment-errors"))
}

// counter is a counter at el since the deploy that grows by perSecond
// before the deploy and by perSecondAfter from it, from 30s before the
// deploy.
func counter(el time.Duration, perSecond, perSecondAfter float64) float64 {
	const origin = 30 * time.Second
	if el < 0 {
		return perSecond * (el + origin).Seconds()
	}
	return perSecond*origin.Seconds() + perSecondAfter*el.Seconds()
}

// replayLiveDeploys are the deploys of TestReplayMatchesLive: the traces
// their services play and the verdict their live runs must get.
func replayLiveDeploys() []struct {
	svc   string
	want  string
	late  bool // the event says the deploy's time and arrives rlLate after it
	trace trace
} {
	// A healthy service: error ratio about 1%, 100 orders, latency 0.1s
	// with 10% of noise, 100 requests a second with 1% errors.
	healthy := func(seed uint64, el time.Duration) []point {
		return []point{
			{metric: "rl_error_ratio", v: 0.01 + 0.005*noise(seed, el)},
			{metric: "rl_orders", v: 100 + 10*noise(seed+1, el)},
			{metric: "rl_latency", v: 0.1 * (1 + 0.1*noise(seed+2, el))},
			{metric: "rl_requests_total", v: counter(el, 100, 100)},
			{metric: "rl_errors_total", v: counter(el, 1, 1)},
		}
	}
	return []struct {
		svc   string
		want  string
		late  bool
		trace trace
	}{
		{svc: "rl-good", want: audit.RunPassed, trace: func(el time.Duration) []point { return healthy(1, el) }},
		{
			// The error ratio goes to 0.2 5s after the deploy: the second
			// measurement that sees it fails the run.
			svc: "rl-threshold", want: audit.RunFailed,
			trace: func(el time.Duration) []point {
				ps := healthy(10, el)
				if el >= 5*time.Second {
					ps[0].v = 0.2
				}
				return ps
			},
		},
		{
			// Latency 2.5 times what it was from the deploy on.
			svc: "rl-latency", want: audit.RunFailed, late: true,
			trace: func(el time.Duration) []point {
				ps := healthy(20, el)
				if el >= 0 {
					ps[2].v *= 2.5
				}
				return ps
			},
		},
		{
			// 1% errors before the deploy, 8% after it.
			svc: "rl-errors", want: audit.RunFailed,
			trace: func(el time.Duration) []point {
				ps := healthy(30, el)
				ps[4].v = counter(el, 1, 8)
				return ps
			},
		},
	}
}

// rlTargets is how many exporters the test's Prometheus scrapes, each at
// its own phase, for startReplayBackend to choose from.
const rlTargets = 8

// startReplayBackend starts a Prometheus scraping rlTargets exporters and
// returns the backend of the one whose scrapes come longest (and at least
// rlIngest) before each measurement time.
//
// A live measurement at ts asks Prometheus at ts, as soon as ts comes: a
// scrape stamped a few milliseconds before ts may not be in its database
// yet (a scrape is stamped when it starts and committed once the exporter
// has answered), and the live run judges without it while a replay,
// later, sees it. That difference is real; this test compares the code
// paths, so it keeps the scrapes of the exporter it plays on clear of the
// measurement times. Prometheus scrapes each target at a phase of its
// own, fixed by the target's address; the phase can drift by 100ms or so
// in Prometheus's first half minute, later scrapes coming later, which
// the longest gap leaves room for.
func startReplayBackend(t *testing.T) *backend {
	t.Helper()
	exps := make(map[string]*testutil.Exporter, rlTargets)
	var urls []string
	for range rlTargets {
		e := testutil.NewExporter(t)
		exps[e.URL] = e
		urls = append(urls, e.URL)
	}
	prom := testutil.StartPrometheus(t, urls...)
	q, err := promclient.New(promclient.Options{URL: prom.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vec, err := q.Query(ctx, `timestamp(up{job="test"})`, time.Now())
	if err != nil || len(vec) != rlTargets {
		t.Fatalf("reading the scrape phases: %v (%v)", err, vec)
	}
	var best *backend
	var bestGap time.Duration
	var gaps []string
	for _, s := range vec {
		scrape := time.UnixMilli(int64(math.Round(float64(s.Value) * 1000)))
		// Measurement times are multiples of rlInterval, and so of the
		// scrape interval: every one comes gap after a scrape.
		gap := time.Duration(-scrape.UnixNano()) % scrapeInterval
		if gap < 0 {
			gap += scrapeInterval
		}
		gaps = append(gaps, gap.String())
		// The next scrape must not be stamped at the measurement time
		// either (timestamps are whole milliseconds).
		if gap > bestGap && gap <= scrapeInterval-20*time.Millisecond {
			best = &backend{exp: exps[string(s.Metric["instance"])], prom: prom, q: q, scrape: scrape}
			bestGap = gap
		}
	}
	if best == nil || bestGap < rlIngest {
		t.Fatalf("no exporter is scraped at least %s before the measurement times: %v", rlIngest, gaps)
	}
	t.Logf("the exporter played on is scraped %s before each measurement time (of %v)", bestGap, gaps)
	return best
}

// liveRun is what a deploy's live run left in the audit.
type liveRun struct {
	started, verdict audit.Record
	meas             []audit.Record
}

// TestReplayMatchesLive is issue 13's "honest time": deploys run live
// through a Watcher on a real Prometheus, then, once their windows have
// closed and Prometheus has scraped past them, each is replayed with
// Replay from what its run.started record says, and the replay must be
// the live run again: the same verdict and deciding check, measurements
// at the same times with the same outcomes, messages and details (every
// value, sample count and p), and the decision at the measurement the
// live run decided at.
func TestReplayMatchesLive(t *testing.T) {
	t.Parallel()
	b := startReplayBackend(t)
	deploys := replayLiveDeploys()

	// The deploys come a quarter of an interval after a measurement
	// time, all at once (the late one's event rlLate later).
	deploy := time.Now().Add(rlLead).Truncate(rlInterval).Add(rlInterval + rlInterval/4)
	for _, d := range deploys {
		b.play(t, d.svc, deploy, d.trace, 0)
	}
	h := newPromHarness(t, replayLiveRules(), b.q)
	if late := time.Since(deploy); late > 0 {
		t.Fatalf("the harness was ready %s after the deploys were due", late)
	}
	time.Sleep(time.Until(deploy))
	for _, d := range deploys {
		if !d.late {
			h.publish(deployEvent("d-"+d.svc, d.svc, "production", "v2", "previous_version", "v1"))
		}
	}
	time.Sleep(time.Until(deploy.Add(rlLate)))
	for _, d := range deploys {
		if d.late {
			h.publish(deployEvent("d-"+d.svc, d.svc, "production", "v2", "previous_version", "v1",
				"time", deploy.UTC().Format(time.RFC3339Nano)))
		}
	}

	live := map[string]*liveRun{}
	testutil.Eventually(t, rlWindow+20*time.Second, "every live run decided", func() bool {
		for _, d := range deploys {
			if len(h.rec.ofDeploy("d-"+d.svc, verdictKinds...)) == 0 {
				return false
			}
		}
		return true
	})
	h.stop()
	var last time.Time // the latest window's end
	for _, d := range deploys {
		id := "d-" + d.svc
		lr := &liveRun{
			started: h.rec.ofDeploy(id, audit.RunStarted)[0],
			verdict: h.rec.ofDeploy(id, verdictKinds...)[0],
			meas:    h.rec.ofDeploy(id, audit.Measurement),
		}
		live[d.svc] = lr
		if end := detailTime(t, lr.started, "window_end"); end.After(last) {
			last = end
		}
		t.Logf("%s live: %s: %s", d.svc, lr.verdict.Kind, lr.verdict.Message)
		if lr.verdict.Kind != d.want {
			t.Errorf("%s: live verdict %s, want %s: the scenario does not test what it means to", d.svc, lr.verdict.Kind, d.want)
		}
	}

	// Replay asks Prometheus about the past only: wait until a scrape
	// stamped after the last window's end is in, and so every one before
	// it.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	testutil.Eventually(t, 10*time.Second, "Prometheus to have scraped past the windows", func() bool {
		v, err := b.q.Query(ctx, fmt.Sprintf(`timestamp(up{job="test",instance=%q})`, b.exp.URL), time.Now())
		return err == nil && len(v) == 1 && time.UnixMilli(int64(math.Round(float64(v[0].Value)*1000))).After(last)
	})

	// How long before each live measurement the last scrape was stamped,
	// as Prometheus has it now: the test chose the exporter for its gap,
	// but the phase of its scrapes can drift.
	gaps := map[time.Time]time.Duration{}
	minGap := scrapeInterval
	for _, lr := range live {
		for _, m := range lr.meas {
			ts := detailTime(t, m, "eval_time")
			if _, ok := gaps[ts]; ok {
				continue
			}
			v, err := b.q.Query(ctx, fmt.Sprintf(`timestamp(up{job="test",instance=%q})`, b.exp.URL), ts)
			if err != nil || len(v) != 1 {
				t.Fatalf("the last scrape before %s: %v (%v)", ts, err, v)
			}
			gaps[ts] = ts.Sub(time.UnixMilli(int64(math.Round(float64(v[0].Value) * 1000))))
			minGap = min(minGap, gaps[ts])
		}
	}
	t.Logf("the last scrape before a measurement came at least %s before it", minGap)

	for _, d := range deploys {
		t.Run(d.svc, func(t *testing.T) {
			lr := live[d.svc]
			p := h.set.Load().Match(d.svc, "production")
			if p == nil {
				t.Fatalf("no policy for %s", d.svc)
			}
			// A live run's window opens when its event arrives (Run.Start);
			// run.started says when it closes.
			start := detailTime(t, lr.started, "window_end").Add(-time.Duration(p.Window))
			rec := lr.started
			dep := events.Deploy{
				ID: rec.DeployID, Service: rec.Service, Environment: rec.Environment, Version: rec.Version,
				PreviousVersion: fmt.Sprint(rec.Detail["previous_version"]),
				Time:            detailTime(t, rec, "deploy_time"),
			}
			if d.late && dep.Time.Equal(start) {
				t.Errorf("the late deploy's run started at its deploy time %s: the test means them to differ", start)
			}
			got, err := Replay(ctx, b.q, p, dep, start, 0, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			compareReplay(t, lr, got, gaps)
		})
	}
}

// compareReplay checks that a replay r decided as the live run lr did,
// measurement by measurement. gaps are how long before each measurement
// time the last scrape was stamped: a measurement that differs soon after
// a scrape may be one the live run took before that scrape was in.
func compareReplay(t *testing.T, lr *liveRun, r Replayed, gaps map[time.Time]time.Duration) {
	t.Helper()
	if r.Record != lr.verdict.Kind || !strings.HasPrefix(lr.verdict.Message, r.Reason) {
		t.Errorf("verdict:\n  live   %s: %s\n  replay %s: %s", lr.verdict.Kind, lr.verdict.Message, r.Record, r.Reason)
	}
	var liveCheck string
	if checks, _ := lr.verdict.Detail["checks"].([]map[string]any); len(checks) > 0 {
		liveCheck = fmt.Sprint(checks[0]["check"])
	}
	if r.Check != liveCheck {
		t.Errorf("deciding check: live %q, replay %q", liveCheck, r.Check)
	}
	if _, requested := lr.verdict.Detail["request_id"]; requested != r.Rollback {
		t.Errorf("rollback: live requested one %v, replay %v", requested, r.Rollback)
	}

	live := slices.Clone(lr.meas)
	slices.SortStableFunc(live, func(a, b audit.Record) int {
		return detailTime(t, a, "eval_time").Compare(detailTime(t, b, "eval_time"))
	})
	if len(live) != len(r.Measurements) {
		t.Errorf("%d measurements live, %d replayed", len(live), len(r.Measurements))
	}
	for i := range min(len(live), len(r.Measurements)) {
		l, m := live[i], r.Measurements[i]
		lt := detailTime(t, l, "eval_time")
		if lt.Equal(m.Time) && l.Detail["check"] == m.Check && l.Message == m.Message && sameDetail(t, l, m.Detail) {
			continue
		}
		t.Errorf("measurement %d differs (the last scrape before it was stamped %s before it):\n  live   %s %s %s: %s\n  replay %s %s %s: %s\n%s", i,
			gaps[lt], lt.Format("15:04:05.000"), l.Detail["check"], l.Detail["outcome"], l.Message,
			m.Time.Format("15:04:05.000"), m.Check, m.Outcome, m.Message, detailDiff(t, l, m.Detail))
	}
	if t.Failed() || len(r.Measurements) == 0 {
		return
	}

	// The decision: a failure at the measurement that failed the run,
	// any other verdict at the window's end, after the last measurement.
	lastLive := live[len(live)-1]
	lastAt := detailTime(t, lastLive, "eval_time")
	switch {
	case r.Verdict == VerdictFailed && !r.Decided.Equal(lastAt):
		t.Errorf("replay decided at %s, the live run's last measurement was at %s", r.Decided, lastAt)
	case r.Verdict != VerdictFailed && r.Decided.Before(lastAt):
		t.Errorf("replay decided at %s, before the live run's last measurement at %s", r.Decided, lastAt)
	case lr.verdict.Time.Before(r.Decided):
		t.Errorf("the live run decided at %s, before the replay's decision time %s", lr.verdict.Time, r.Decided)
	}
	if r.Check == "" {
		t.Logf("%s, %d measurements the same live and replayed, decided at %s", r.Verdict, len(live), r.Decided.Format("15:04:05.000"))
		return
	}
	// The deciding measurement's numbers, side by side.
	var deciding ReplayedMeasurement
	for _, m := range r.Measurements {
		if m.Check == r.Check {
			deciding = m
		}
	}
	desc := fmt.Sprintf("value %s", fmtFloat(deciding.Detail.Value))
	if c := deciding.Detail.Comparison; c != nil {
		desc += fmt.Sprintf(", %s: after n %d, before n %d, p %s (alpha %.3g, look %d of %d)", c.Kind, c.After.N, c.Before.N, fmtFloat(c.P), c.Alpha, c.Look, c.Looks)
		if c.Kind == "counts" {
			desc += fmt.Sprintf(", errors %d of %d after, %d of %d before", *c.After.Errors, *c.After.Total, *c.Before.Errors, *c.Before.Total)
		}
	}
	t.Logf("%s by %s at %s, %d measurements the same live and replayed; the deciding one: %s: %s",
		r.Verdict, r.Check, r.Decided.Format("15:04:05.000"), len(live), desc, deciding.Message)
}

func fmtFloat(p *float64) string {
	if p == nil {
		return "null"
	}
	return fmt.Sprintf("%.4g", *p)
}

// detailJSON is a measurement's detail as the AUDIT stream carries it.
func detailJSON(t *testing.T, d map[string]any) map[string]any {
	t.Helper()
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// sameDetail reports whether a live measurement's detail is the replayed
// one's, every field of it.
func sameDetail(t *testing.T, l audit.Record, d audit.MeasurementDetail) bool {
	t.Helper()
	a, _ := json.Marshal(detailJSON(t, l.Detail))
	b, _ := json.Marshal(detailJSON(t, d.Map()))
	return string(a) == string(b)
}

// detailDiff lists the fields of a measurement's detail that differ
// between the live run and the replay.
func detailDiff(t *testing.T, l audit.Record, d audit.MeasurementDetail) string {
	t.Helper()
	a, b := detailJSON(t, l.Detail), detailJSON(t, d.Map())
	var out strings.Builder
	var walk func(path string, x, y any)
	walk = func(path string, x, y any) {
		xm, xok := x.(map[string]any)
		ym, yok := y.(map[string]any)
		if xok && yok {
			var keys []string
			for k := range xm {
				keys = append(keys, k)
			}
			for k := range ym {
				if _, ok := xm[k]; !ok {
					keys = append(keys, k)
				}
			}
			slices.Sort(keys)
			for _, k := range keys {
				walk(path+"."+k, xm[k], ym[k])
			}
			return
		}
		xb, _ := json.Marshal(x)
		yb, _ := json.Marshal(y)
		if string(xb) != string(yb) {
			fmt.Fprintf(&out, "    detail%s: live %s, replay %s\n", path, xb, yb)
		}
	}
	walk("", a, b)
	return out.String()
}
