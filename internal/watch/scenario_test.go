package watch

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// latencyBound is how long after a bad deploy's trace goes past its limit
// the run may fail. The breach waits at most one scrape interval to be in
// a sample and at most one interval for the next measurement to see it;
// every scenario tolerates at most one failed measurement (failure_limit
// <= 1), so the measurement that fails the check comes at most one more
// interval later: 2 intervals + a scrape interval. The slack covers the
// exporter's 50ms tick, timers, the query and the audit writes under -race
// on 2 cores. It catches a missing or late verdict, not jitter.
const latencyBound = 2*scnInterval + scrapeInterval + 500*time.Millisecond

// outageAt is when the second Prometheus is stopped, after the deploy:
// between the measurements at 1.5s and 2s.
const outageAt = 1750 * time.Millisecond

// Deploy kinds of a scenario.
const (
	good   = "good"    // a healthy deploy: it must never be rolled back
	bad    = "bad"     // it must fail within latencyBound of its breach
	noData = "no data" // its metrics never exist: the policy's on_inconclusive decides
)

// scenario is a deploy, the metrics it produces over time, its policy, and
// the verdict it must get.
type scenario struct {
	name           string // also the service label, so scenarios share one Prometheus
	deploy         string // good, bad or noData
	onInconclusive string
	checks         string // YAML; queries use {{ .Service }}
	trace          trace
	breachAt       time.Duration // bad: when trace goes past the limit, after the deploy
	// late publishes the event this long after the deploy, with the event's
	// time set to the deploy's: the baseline is then in the past.
	late     time.Duration
	want     string // the verdict record's kind
	rollback bool   // whether a rollback request must go out
	check    func(t *testing.T, o *outcome)
}

var (
	webs = []string{"web1", "web2", "web3", "web4"}
	apis = []string{"api-1", "api-2", "api-3"}
)

func scenarios() []scenario {
	return []scenario{
		{
			name: "steady", deploy: good, want: audit.RunPassed,
			checks: `
- name: orders
  query: scn_value{service="{{ .Service }}"}
  min: 50
- name: orders-vs-before
  query: scn_value{service="{{ .Service }}"}
  baseline: pre_deploy
  min_ratio: 0.8`,
			trace: func(time.Duration) []point { return value(100) },
			check: func(t *testing.T, o *outcome) {
				wantCounts(t, o.last(t, "orders"), "pass", o.n, "fail", 0)
				for _, m := range o.of("orders-vs-before") {
					wantNumbers(t, m, "value", 100.0, "baseline", 100.0, "ratio", 1.0)
				}
				wantContains(t, "run.passed", o.verdict.Message,
					fmt.Sprintf("orders pass %d fail 0, orders-vs-before pass %d fail 0", o.n, o.n))
			},
		},
		{
			// 300ms at 20 around one scrape: exactly one sample, so one
			// failed measurement, which failure_limit: 1 tolerates.
			name: "short-dip", deploy: good, want: audit.RunPassed,
			checks: `
- name: orders
  query: scn_value{service="{{ .Service }}"}
  min: 50
  failure_limit: 1`,
			trace: func(el time.Duration) []point {
				if aroundScrape(el, 1750*time.Millisecond) {
					return value(20)
				}
				return value(100)
			},
			check: func(t *testing.T, o *outcome) {
				wantCounts(t, o.last(t, "orders"), "pass", o.n-1, "fail", 1)
				for _, m := range o.of("orders") {
					if m.Detail["outcome"] == "fail" {
						wantNumbers(t, m, "value", 20.0)
						if want := "orders = 20 < min 50 (failure 1 of limit 1)"; m.Message != want {
							t.Errorf("the dip's measurement says %q, want %q", m.Message, want)
						}
					}
				}
			},
		},
		{
			// The service's metrics appear 2s after the deploy.
			name: "no-data-first", deploy: good, want: audit.RunPassed,
			checks: `
- name: orders
  query: scn_value{service="{{ .Service }}"}
  min: 50
  no_data: inconclusive`,
			trace: func(el time.Duration) []point {
				if el < 2*time.Second {
					return nil
				}
				return value(100)
			},
			check: func(t *testing.T, o *outcome) {
				ms := o.of("orders")
				if ms[0].Detail["outcome"] != "inconclusive" || ms[0].Detail["reason"] != "no data" {
					t.Errorf("first measurement %q, want inconclusive: no data", ms[0].Message)
				}
				c := counts(t, ms[len(ms)-1])
				if c["inconclusive"] < 3 || c["pass"] < 3 || c["inconclusive"]+c["pass"] != o.n || c["fail"]+c["error"] != 0 {
					t.Errorf("counts %v: want about 5 inconclusive (no data for 2s), then passes, %d in all", c, o.n)
				}
				wantContains(t, "run.passed", o.verdict.Message, fmt.Sprintf("inconclusive %d error 0", c["inconclusive"]))
			},
		},
		{
			// 100 until the deploy, 85 after: 0.85 of the baseline, above
			// min_ratio 0.8. The event arrives 1s late, with its time.
			name: "within-min-ratio", deploy: good, want: audit.RunPassed, late: time.Second,
			checks: `
- name: orders-vs-before
  query: scn_value{service="{{ .Service }}"}
  baseline: pre_deploy
  min_ratio: 0.8`,
			trace: func(el time.Duration) []point {
				if el < 0 {
					return value(100)
				}
				return value(85)
			},
			check: func(t *testing.T, o *outcome) {
				ms := o.of("orders-vs-before")
				for _, m := range ms {
					wantNumbers(t, m, "value", 85.0, "baseline", 100.0, "ratio", 0.85)
					if bt := detailTime(t, m, "baseline_time"); !bt.Equal(o.deploy) {
						t.Errorf("baseline evaluated at %s, want the event's time %s", bt, o.deploy.UTC())
					}
				}
				if want := "orders-vs-before = 85 ok (0.85 x baseline 100; min_ratio 0.8)"; ms[0].Message != want {
					t.Errorf("measurement says %q, want %q", ms[0].Message, want)
				}
			},
		},
		{
			// 100 -> 30 just after a scrape: the slowest case for the
			// breach to reach a sample.
			name: "sharp-drop", deploy: bad, want: audit.RunFailed, rollback: true, breachAt: 2300 * time.Millisecond,
			checks: `
- name: orders-vs-before
  query: scn_value{service="{{ .Service }}"}
  baseline: pre_deploy
  min_ratio: 0.8
  failure_limit: 1`,
			trace: func(el time.Duration) []point {
				if el < 2300*time.Millisecond {
					return value(100)
				}
				return value(30)
			},
			check: func(t *testing.T, o *outcome) {
				d := o.deciding(t)
				wantNumbers(t, d, "value", 30.0, "baseline", 100.0, "ratio", 0.3)
				wantCounts(t, d, "fail", 2)
				if want := "orders-vs-before = 30: 0.3 x baseline 100 < min_ratio 0.8 (failure 2 of limit 1)"; d.Message != want {
					t.Errorf("deciding measurement says %q, want %q", d.Message, want)
				}
				wantContains(t, "run.failed", o.verdict.Message, "check orders-vs-before failed: 0.3 x baseline 100 < min_ratio 0.8 (failure 2 of limit 1)")
			},
		},
		{
			// From 0.5s, 10 a second down from 100: 0.8 of the baseline at
			// 2.5s, mid-window.
			name: "slow-leak", deploy: bad, want: audit.RunFailed, rollback: true, breachAt: 2500 * time.Millisecond,
			checks: `
- name: orders-vs-before
  query: scn_value{service="{{ .Service }}"}
  baseline: pre_deploy
  min_ratio: 0.8
  failure_limit: 1`,
			trace: func(el time.Duration) []point {
				if el < 500*time.Millisecond {
					return value(100)
				}
				return value(100 - 10*(el-500*time.Millisecond).Seconds())
			},
			check: func(t *testing.T, o *outcome) {
				var fails []audit.Record
				for _, m := range o.of("orders-vs-before") {
					ratio := num(m, "ratio")
					if m.Detail["outcome"] == "fail" {
						fails = append(fails, m)
						if !(ratio < 0.8) {
							t.Errorf("failed measurement %q has ratio %v, not below 0.8", m.Message, ratio)
						}
					} else if !(ratio >= 0.8) {
						t.Errorf("measurement %q passed with ratio %v", m.Message, ratio)
					}
					wantNumbers(t, m, "baseline", 100.0)
				}
				// The first failure sees the leak just past the line: a
				// sample at most a scrape interval (5 units) after it.
				if len(fails) != 2 || num(fails[0], "value") < 70 || num(fails[1], "value") >= num(fails[0], "value") {
					t.Errorf("failed measurements %v: want two, the first of them a value in [70, 80), then lower", messages(fails))
				}
				wantCounts(t, o.deciding(t), "fail", 2)
			},
		},
		{
			// web3's error ratio jumps to 0.2; the others stay about 0.01.
			name: "spike-one-instance", deploy: bad, want: audit.RunFailed, rollback: true, breachAt: 2 * time.Second,
			checks: `
- name: error-ratio-each-instance
  query: scn_error_ratio{service="{{ .Service }}"}
  each: true
  max: 0.05`,
			trace: func(el time.Duration) []point {
				web3 := 0.009
				if el >= 2*time.Second {
					web3 = 0.2
				}
				return instances("scn_error_ratio", webs, 0.01, 0.012, web3, 0.011)
			},
			check: func(t *testing.T, o *outcome) {
				d := o.deciding(t)
				wantNumbers(t, d, "value", 0.2)
				series, _ := d.Detail["series"].([]map[string]any)
				if len(series) != 4 {
					t.Fatalf("detail.series = %#v, want 4 series", d.Detail["series"])
				}
				var failing []string
				for _, s := range series {
					if s["outcome"] == "fail" {
						failing = append(failing, fmt.Sprint(s["labels"]))
					}
				}
				if len(failing) != 1 || !strings.Contains(failing[0], `instance="web3"`) {
					t.Errorf("failing series %v, want only web3's", failing)
				}
				wantContains(t, "deciding measurement", d.Message, `instance="web3"`, "0.2 > max 0.05 (1 of 4 series failed)", "(failure 1 of limit 0)")
				wantContains(t, "run.failed", o.verdict.Message, `instance="web3"`)
			},
		},
		{
			// Orders jitter within 100 ± 25 (min 70); one 300ms dip to 40.
			name: "noisy-orders", deploy: good, want: audit.RunPassed,
			checks: `
- name: orders
  query: scn_value{service="{{ .Service }}"}
  min: 70
  failure_limit: 1`,
			trace: func(el time.Duration) []point {
				if aroundScrape(el, 2250*time.Millisecond) {
					return value(40)
				}
				return value(100 + 25*noise(1, el))
			},
			check: func(t *testing.T, o *outcome) {
				wantCounts(t, o.last(t, "orders"), "fail", 1, "pass", o.n-1)
				wantJitter(t, o.of("orders"), "value")
			},
		},
		{
			// Four instances' error ratios jitter within 0.02 ± 0.02 (max
			// 0.05); web2 and later web4 spike once each: 2 failures, within
			// failure_limit: 2.
			name: "noisy-errors", deploy: good, want: audit.RunPassed,
			checks: `
- name: error-ratio-each-instance
  query: scn_error_ratio{service="{{ .Service }}"}
  each: true
  max: 0.05
  failure_limit: 2`,
			trace: func(el time.Duration) []point {
				vs := make([]float64, len(webs))
				for i := range webs {
					vs[i] = 0.02 + 0.02*noise(uint64(10+i), el)
				}
				if aroundScrape(el, 1250*time.Millisecond) {
					vs[1] = 0.3
				}
				if aroundScrape(el, 3250*time.Millisecond) {
					vs[3] = 0.12
				}
				return instances("scn_error_ratio", webs, vs...)
			},
			check: func(t *testing.T, o *outcome) {
				wantCounts(t, o.last(t, "error-ratio-each-instance"), "fail", 2, "pass", o.n-2)
				var spiked []string
				for _, m := range o.of("error-ratio-each-instance") {
					if m.Detail["outcome"] == "fail" {
						spiked = append(spiked, m.Message)
					}
				}
				if len(spiked) != 2 || !strings.Contains(spiked[0], `instance="web2"`) || !strings.Contains(spiked[1], `instance="web4"`) {
					t.Errorf("failed measurements %q, want web2's spike, then web4's", spiked)
				}
			},
		},
		{
			// 100 ± 10 before and after the deploy: the ratio stays above
			// 90/110 = 0.82; one 300ms dip to 50.
			name: "noisy-vs-before", deploy: good, want: audit.RunPassed,
			checks: `
- name: orders-vs-before
  query: scn_value{service="{{ .Service }}"}
  baseline: pre_deploy
  min_ratio: 0.8
  failure_limit: 1`,
			trace: func(el time.Duration) []point {
				if aroundScrape(el, 2750*time.Millisecond) {
					return value(50)
				}
				return value(100 + 10*noise(3, el))
			},
			check: func(t *testing.T, o *outcome) {
				ms := o.of("orders-vs-before")
				wantCounts(t, ms[len(ms)-1], "fail", 1, "pass", o.n-1)
				wantJitter(t, ms, "ratio")
				base := num(ms[0], "baseline")
				for _, m := range ms {
					if b := num(m, "baseline"); b != base || b < 90 || b > 110 {
						t.Errorf("measurement %q: baseline %v, want the same value in [90, 110] throughout", m.Message, b)
					}
				}
			},
		},
		{
			// p99 latency per instance, reduced with max: api-2 goes to 0.9.
			name: "aggregate-max", deploy: bad, want: audit.RunFailed, rollback: true, breachAt: 2100 * time.Millisecond,
			checks: `
- name: latency-p99
  query: scn_latency{service="{{ .Service }}"}
  aggregate: max
  max: 0.5`,
			trace: func(el time.Duration) []point {
				api2 := 0.25
				if el >= 2100*time.Millisecond {
					api2 = 0.9
				}
				return instances("scn_latency", apis, 0.2, api2, 0.3)
			},
			check: func(t *testing.T, o *outcome) {
				ms := o.of("latency-p99")
				wantNumbers(t, ms[0], "value", 0.3) // the max before the breach
				d := o.deciding(t)
				wantNumbers(t, d, "value", 0.9)
				if d.Detail["aggregate"] != "max" {
					t.Errorf("detail.aggregate = %v, want max", d.Detail["aggregate"])
				}
				var vs []float64
				for _, p := range d.Detail["values"].([]*float64) {
					vs = append(vs, *p)
				}
				slices.Sort(vs)
				if fmt.Sprint(vs) != "[0.2 0.3 0.9]" {
					t.Errorf("detail.values = %v, want the three series' 0.2, 0.3, 0.9", vs)
				}
				if want := "latency-p99 = 0.9 > max 0.5 (failure 1 of limit 0)"; d.Message != want {
					t.Errorf("deciding measurement says %q, want %q", d.Message, want)
				}
			},
		},
		{
			// A shadow check on latency fails every time; the real check is
			// fine. Dry-run measurements are recorded and never decide.
			name: "dry-run-breach", deploy: good, want: audit.RunPassed,
			checks: `
- name: orders
  query: scn_value{service="{{ .Service }}"}
  min: 50
- name: latency-shadow
  query: scn_latency{service="{{ .Service }}"}
  aggregate: max
  max: 0.5
  dry_run: true`,
			trace: func(time.Duration) []point {
				return append(value(100), instances("scn_latency", apis, 0.7, 0.9, 0.6)...)
			},
			check: func(t *testing.T, o *outcome) {
				ms := o.of("latency-shadow")
				for i, m := range ms {
					if m.Detail["outcome"] != "fail" || m.Detail["dry_run"] != true {
						t.Errorf("dry-run measurement %q: outcome %v dry_run %v, want fail, true", m.Message, m.Detail["outcome"], m.Detail["dry_run"])
					}
					if want := fmt.Sprintf("[dry-run] latency-shadow = 0.9 > max 0.5 (failure %d of limit 0)", i+1); m.Message != want {
						t.Errorf("dry-run measurement says %q, want %q", m.Message, want)
					}
				}
				wantCounts(t, o.last(t, "orders"), "pass", o.n)
				wantContains(t, "run.passed", o.verdict.Message, fmt.Sprintf("latency-shadow pass 0 fail %d (dry-run)", o.n))
			},
		},
		{
			// No data at all, no limits: inconclusive when the window
			// closes, and on_inconclusive: rollback rolls back.
			name: "no-data-rollback", deploy: noData, want: audit.RunInconclusive, rollback: true,
			onInconclusive: "rollback",
			checks: `
- name: orders
  query: scn_value{service="{{ .Service }}"}
  min: 50`,
			trace: func(time.Duration) []point { return nil },
			check: func(t *testing.T, o *outcome) {
				wantCounts(t, o.last(t, "orders"), "inconclusive", o.n, "pass", 0)
				wantContains(t, "run.inconclusive", o.verdict.Message,
					fmt.Sprintf("check orders is inconclusive: no usable measurement (inconclusive %d, error 0); last: no data; on_inconclusive: rollback", o.n))
			},
		},
		{
			// No data, inconclusive_limit: 2: rolled back at the third
			// measurement, not at the window's end.
			name: "no-data-limit-rollback", deploy: noData, want: audit.RunInconclusive, rollback: true,
			onInconclusive: "rollback",
			checks: `
- name: orders
  query: scn_value{service="{{ .Service }}"}
  min: 50
  inconclusive_limit: 2`,
			trace: func(time.Duration) []point { return nil },
			check: func(t *testing.T, o *outcome) {
				if len(o.meas) != 3 {
					t.Errorf("%d measurements, want 3 (the third goes past inconclusive_limit 2)", len(o.meas))
				}
				wantContains(t, "run.inconclusive", o.verdict.Message, "inconclusive 3 of limit 2", "on_inconclusive: rollback")
			},
		},
	}
}

// outageScenarios run against a Prometheus that is stopped outageAt after
// their deploy. The deploys are healthy: an outage of the metrics is no
// reason to roll back unless the policy says so.
func outageScenarios() []scenario {
	steady := func(time.Duration) []point { return value(100) }
	// outage checks the counts: passes until the outage, then errors, to
	// the window's end or, with an error limit, to the error past it.
	outage := func(t *testing.T, o *outcome, limit int) (pass, errs int) {
		t.Helper()
		last := o.last(t, "orders")
		c := counts(t, last)
		want := o.n
		if limit >= 0 {
			want = c["pass"] + limit + 1
		}
		if c["pass"] < 2 || c["error"] < 3 || c["pass"]+c["error"] != want || len(o.of("orders")) != want {
			t.Errorf("counts %v of %d measurements: want passes until the outage, then errors, %d in all", c, len(o.of("orders")), want)
		}
		wantContains(t, "last measurement", last.Message, "orders: query failed: ")
		return c["pass"], c["error"]
	}
	return []scenario{
		{
			// More than 2 query errors in a row: inconclusive at once;
			// keep rolls nothing back.
			name: "prometheus-down-keep", deploy: good, want: audit.RunInconclusive,
			onInconclusive: "keep",
			checks: `
- name: orders
  query: scn_value{service="{{ .Service }}"}
  min: 50
  consecutive_error_limit: 2`,
			trace: steady,
			check: func(t *testing.T, o *outcome) {
				_, errs := outage(t, o, 2)
				var third audit.Record
				for _, m := range o.of("orders") {
					if counts(t, m)["consecutive_errors"] == 3 {
						third = m
					}
				}
				if third.Detail["state"] != "inconclusive" {
					t.Errorf("third error in a row %q: state %v, want inconclusive", third.Message, third.Detail["state"])
				}
				wantContains(t, "third error", third.Message, "(error 3 in a row, limit 2)")
				wantContains(t, "run.inconclusive", o.verdict.Message,
					fmt.Sprintf("check orders is inconclusive: %d query errors in a row, limit 2", errs),
					"on_inconclusive: keep, nothing rolled back")
			},
		},
		{
			// No error limit, and passes before the outage: passed.
			name: "prometheus-down-no-limit", deploy: good, want: audit.RunPassed,
			checks: `
- name: orders
  query: scn_value{service="{{ .Service }}"}
  min: 50`,
			trace: steady,
			check: func(t *testing.T, o *outcome) {
				pass, errs := outage(t, o, -1)
				wantContains(t, "run.passed", o.verdict.Message, fmt.Sprintf("orders pass %d fail 0 inconclusive 0 error %d", pass, errs))
			},
		},
	}
}

// wantJitter checks that a noisy trace did jitter: the passing
// measurements' key took several values.
func wantJitter(t *testing.T, ms []audit.Record, key string) {
	t.Helper()
	seen := map[float64]bool{}
	for _, m := range ms {
		if m.Detail["outcome"] == "pass" {
			seen[num(m, key)] = true
		}
	}
	if len(seen) < 3 {
		t.Errorf("passing measurements' %s took %d values: the trace is not noisy", key, len(seen))
	}
}

func messages(rs []audit.Record) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Message
	}
	return out
}

// row is a scenario's line in the summary.
type row struct {
	name, deploy, want, got string
	requests                int
	verdictAfter            time.Duration // since the event was published
	latency                 time.Duration // bad deploys: run.failed minus the breach
	caught                  bool          // bad deploys: failed within latencyBound
}

// test runs the scenario against b: deploy is when the deploy happens, or
// zero for the next moment that suits (see midScrape).
func (sc *scenario) test(t *testing.T, b *backend, deploy time.Time, report func(row)) {
	r := row{name: sc.name, deploy: sc.deploy, want: sc.want, got: "(none)"}
	defer func() { report(r) }()

	timing := fmt.Sprintf("window: %s\ninterval: %s", model.Duration(scnWindow), model.Duration(scnInterval))
	if sc.onInconclusive != "" {
		timing += "\non_inconclusive: " + sc.onInconclusive
	}
	rules := "policies:\n" + policyYAML(sc.name, fmt.Sprintf("{service: %s, environment: production}", sc.name), timing, sc.checks)

	// The trace plays from at least lead before the deploy, so that
	// Prometheus has its values from before it. A deploy time given by the
	// caller is shared with other scenarios: start playing at once, before
	// the harness.
	var p *player
	if !deploy.IsZero() {
		if ahead := time.Until(deploy); ahead < lead {
			t.Fatalf("the deploy at %s is only %s away, want at least %s", deploy, ahead, lead)
		}
		p = b.play(t, sc.name, deploy, sc.trace, sc.breachAt)
	}
	h := newPromHarness(t, rules, b.q)
	if deploy.IsZero() {
		deploy = b.midScrape(time.Now().Add(lead))
		p = b.play(t, sc.name, deploy, sc.trace, sc.breachAt)
	}
	if late := time.Since(deploy.Add(sc.late)); late > 0 {
		t.Fatalf("the harness was ready %s after the deploy was due", late)
	}
	time.Sleep(time.Until(deploy.Add(sc.late)))
	id := "d-" + sc.name
	ev := deployEvent(id, sc.name, "production", "v2", "previous_version", "v1")
	if sc.late > 0 {
		ev["time"] = deploy.UTC().Format(time.RFC3339Nano)
	}
	published := time.Now()
	h.publish(ev)

	started := h.waitFor(id, audit.RunStarted)
	o := &outcome{deploy: deploy}
	o.n = int(detailTime(t, started, "window_end").Sub(detailTime(t, started, "first_measurement"))/scnInterval) + 1
	o.verdict = h.waitFor(id, verdictKinds...)
	r.got = o.verdict.Kind
	r.verdictAfter = o.verdict.Time.Sub(published)
	o.meas = h.rec.ofDeploy(id, audit.Measurement)
	o.breach = p.breached()
	p.stop()
	if sc.rollback {
		testutil.Eventually(t, 10*time.Second, "a rollback request", func() bool { return len(h.rollbacks()) > 0 })
	}
	h.stop() // nothing more can be published once Wait returns
	msgs := h.rollbacks()
	r.requests = len(msgs)
	t.Logf("%s after the event (which arrived %s after the deploy's time): %s: %s",
		r.verdictAfter.Round(time.Millisecond), published.Sub(deploy).Round(time.Millisecond), o.verdict.Kind, o.verdict.Message)
	for _, m := range o.meas {
		t.Logf("  +%5dms %s", detailTime(t, m, "eval_time").Sub(deploy).Milliseconds(), m.Message)
	}

	if o.verdict.Kind != sc.want {
		t.Errorf("verdict %s (%s), want %s", o.verdict.Kind, o.verdict.Message, sc.want)
	}
	reqID, requested := o.verdict.Detail["request_id"]
	if want := map[bool]int{false: 0, true: 1}[sc.rollback]; len(msgs) != want || requested != sc.rollback {
		t.Errorf("%d rollback requests on ROLLBACKS, detail.request_id %v: want %d", len(msgs), reqID, want)
	}
	for _, m := range msgs {
		req, err := events.DecodeRollbackRequest(m.Subject, m.Data)
		if err != nil {
			t.Fatalf("the executor would reject the request: %v\n%s", err, m.Data)
		}
		if req.ID != reqID || req.RunID != started.RunID || req.DeployID != id || req.ToVersion != "v1" {
			t.Errorf("request %+v: want id %v, run %s, deploy %s, to v1", req, reqID, started.RunID, id)
		}
	}

	if o.verdict.Kind == audit.RunPassed {
		for _, m := range o.meas {
			if n := len(o.of(fmt.Sprint(m.Detail["check"]))); n != o.n {
				t.Errorf("check %s: %d measurements, want %d", m.Detail["check"], n, o.n)
				break
			}
		}
	}
	if sc.deploy == bad {
		if o.breach.IsZero() {
			t.Fatalf("the trace never went past its limit")
		}
		r.latency = o.verdict.Time.Sub(o.breach)
		r.caught = o.verdict.Kind == audit.RunFailed && r.latency > 0 && r.latency <= latencyBound
		t.Logf("latency: run.failed %s after the breach (bound %s)", r.latency.Round(time.Millisecond), latencyBound)
		if r.latency <= 0 || r.latency > latencyBound {
			t.Errorf("run ended %s after the exporter served the breach, want within (0, %s]", r.latency, latencyBound)
		}
		for _, m := range o.meas {
			if m.Detail["outcome"] == "fail" && detailTime(t, m, "eval_time").Before(o.breach) {
				t.Errorf("measurement %q failed before the breach", m.Message)
			}
		}
		d := o.deciding(t)
		limit, _ := d.Detail["failure_limit"].(int)
		if d.Detail["outcome"] != "fail" || d.Detail["state"] != "failed" {
			t.Errorf("deciding measurement %q: outcome %v state %v, want fail, failed", d.Message, d.Detail["outcome"], d.Detail["state"])
		}
		wantCounts(t, d, "fail", limit+1)
	}
	if sc.check != nil {
		sc.check(t, o)
	}
}

// The roadmap's verdict scenarios against a real Prometheus: the exporter's
// values follow a script over time, a real Watcher validates each deploy,
// and every verdict, its time and its numbers are checked. The goal the
// summary states: no good deploy rolled back, and every bad deploy caught
// within 2 intervals (plus a scrape interval) of its breach.
func TestScenarios(t *testing.T) {
	t.Parallel()
	table, outages := scenarios(), outageScenarios()
	var (
		mu   sync.Mutex
		rows []row
	)
	report := func(r row) {
		mu.Lock()
		defer mu.Unlock()
		rows = append(rows, r)
	}

	// The scenarios run all at once, each in its own subtest started from
	// a goroutine: t.Parallel would run at most -parallel of them at a time,
	// which defaults to GOMAXPROCS (2 on the 2-core machines this runs on),
	// and they spend their time waiting for their windows. The two
	// Prometheus servers start at the same time too.
	var wg sync.WaitGroup
	wg.Go(func() {
		t.Run("shared-prometheus", func(t *testing.T) {
			b := startBackend(t)
			var wg sync.WaitGroup
			for _, sc := range table {
				wg.Go(func() {
					t.Run(sc.name, func(t *testing.T) { sc.test(t, b, time.Time{}, report) })
				})
			}
			wg.Wait()
		})
	})
	// A second Prometheus of their own, stopped mid-window.
	wg.Go(func() {
		t.Run("prometheus-stopped", func(t *testing.T) {
			b := startBackend(t)
			deploy := b.midScrape(time.Now().Add(lead + time.Second))
			stop := time.AfterFunc(time.Until(deploy.Add(outageAt)), b.prom.Stop)
			defer stop.Stop()
			var wg sync.WaitGroup
			for _, sc := range outages {
				wg.Go(func() {
					t.Run(sc.name, func(t *testing.T) { sc.test(t, b, deploy, report) })
				})
			}
			wg.Wait()
		})
	})
	wg.Wait()

	order := map[string]int{}
	for i, sc := range append(table, outages...) {
		order[sc.name] = i
	}
	slices.SortFunc(rows, func(a, b row) int { return order[a.name] - order[b.name] })
	var out strings.Builder
	tw := tabwriter.NewWriter(&out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tdeploy\texpected\tgot\trollback requests\tverdict after the event\tlatency from the breach")
	var goods, falseRollbacks, bads, caught int
	for _, r := range rows {
		latency := "-"
		switch r.deploy {
		case good:
			goods++
			if r.requests > 0 || r.got == audit.RunFailed {
				falseRollbacks++
			}
		case bad:
			bads++
			latency = r.latency.Round(time.Millisecond).String()
			if r.caught {
				caught++
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.name, r.deploy, r.want, r.got, r.requests,
			r.verdictAfter.Round(time.Millisecond), latency)
	}
	tw.Flush()
	headline := fmt.Sprintf("false rollbacks on good deploys: %d of %d; bad deploys caught within 2 intervals of the breach: %d of %d (bound %s = 2 x interval %s + scrape interval %s + slack)",
		falseRollbacks, goods, caught, bads, latencyBound, scnInterval, scrapeInterval)
	t.Logf("scenario summary:\n%s%s", out.String(), headline)
	if falseRollbacks > 0 || caught < bads || len(rows) != len(order) {
		t.Errorf("%s; %d of %d scenarios reported", headline, len(rows), len(order))
	}
}
