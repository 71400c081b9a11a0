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

// blameless is a deploy whose metrics look bad, or tell too little, for
// reasons that are not the deploy's: its run must be inconclusive and roll
// nothing back.
const blameless = "blameless"

// mixed is a deploy of a scored policy that is worse on one check and not
// on the others: its run ends marginal, kept (on_marginal: keep).
const mixed = "mixed"

// detectWithin is how many judged looks a bad deploy may take to fail: the
// shifts here are several times the margin, which the first judged look
// sees; the rest is slack for a loaded machine, where a step may miss a
// scrape.
const detectWithin = 3

// cmpScenario is a deploy, the series it produces over time, its
// comparison checks, and the verdict it must get.
type cmpScenario struct {
	name   string // also the service label: the scenarios share one Prometheus
	deploy string // good, bad or blameless
	checks string // YAML; queries use {{ .Service }}
	trace  func() ctrace
	want   string // the verdict record's kind
	alsoOK string // another verdict it may get, if any
	// history backfills the trace's first minutes into Prometheus, for a
	// lookback longer than cmpLead.
	history bool
	// policy is more of the policy's keys (a score), YAML.
	policy string
	check  func(t *testing.T, o *outcome)
}

// The checks the scenarios use: a latency against the 20s before the
// deploy, errors among requests against the same, and a latency of the
// canary's series (version="v2", the deploy's) against the other hosts'.
const (
	latencyVsBefore = `
- name: latency-vs-before
  query: scn_cmp_latency{service="{{ .Service }}"}
  compare:
    with: pre_deploy
    lookback: 20s
    step: 1s
    direction: increase
    margin: 0.2`
	errorsVsBefore = `
- name: errors-vs-before
  compare:
    with: pre_deploy
    lookback: 20s
    step: 1s
    errors: sum(increase(scn_cmp_errors_total{service="{{ .Service }}"}[{{ .Range }}]))
    total: sum(increase(scn_cmp_requests_total{service="{{ .Service }}"}[{{ .Range }}]))
    margin: 0.5
    min_total: 200`
	latencyCanary = `
- name: latency-canary
  query: scn_canary_latency{service="{{ .Service }}"}
  compare:
    with: canary
    step: 1s
    direction: increase
    margin: 0.2`
)

// latencyTrace is scn_cmp_latency: noisy around base(el).
func latencyTrace(seed uint64, base func(el time.Duration) float64) func() ctrace {
	return func() ctrace {
		return func(el time.Duration) []cpoint {
			return []cpoint{{metric: "scn_cmp_latency", v: noisy(seed, base(el), el)}}
		}
	}
}

// flat is before until the deploy, after from then on.
func flat(before, after float64) func(el time.Duration) float64 {
	return func(el time.Duration) float64 {
		if el < 0 {
			return before
		}
		return after
	}
}

// canaryTrace is scn_canary_latency of four hosts, web1 the canary
// (version v2, the deploy's), the others on v1: noisy around base(host,
// el).
func canaryTrace(seed uint64, base func(host int, el time.Duration) float64) func() ctrace {
	return func() ctrace {
		return func(el time.Duration) []cpoint {
			out := make([]cpoint, len(webs))
			for i, h := range webs {
				version := "v1"
				if i == 0 {
					version = "v2"
				}
				out[i] = cpoint{
					metric: "scn_canary_latency",
					labels: map[string]string{"instance": h, "version": version},
					v:      noisy(seed+uint64(i)*7, base(i, el), el),
				}
			}
			return out
		}
	}
}

func cmpScenarios() []cmpScenario {
	noisyGood := func(name string, seed uint64) cmpScenario {
		return cmpScenario{
			name: name, deploy: good, want: audit.RunPassed, checks: latencyVsBefore,
			trace: latencyTrace(seed, flat(0.25, 0.25)),
			check: func(t *testing.T, o *outcome) {
				for _, m := range o.of("latency-vs-before") {
					d := comparison(t, m)
					if d.Before.N < 19 || d.Before.Median == nil || *d.Before.Median < 0.2 || *d.Before.Median > 0.3 {
						t.Errorf("measurement %q: before side n %d median %v, want about 21 samples around 0.25", m.Message, d.Before.N, d.Before.Median)
					}
				}
			},
		}
	}
	return []cmpScenario{
		noisyGood("cmp-noisy-a", 1),
		noisyGood("cmp-noisy-b", 2),
		noisyGood("cmp-noisy-c", 3),
		{
			// 10% slower, half the margin: significant or not, it passes.
			name: "cmp-under-margin", deploy: good, want: audit.RunPassed, checks: latencyVsBefore,
			trace: latencyTrace(4, flat(0.25, 0.275)),
			check: func(t *testing.T, o *outcome) {
				last := o.last(t, "latency-vs-before")
				wantContains(t, "last measurement", last.Message, "not worse by more than 20%")
			},
		},
		{
			// 60% slower from the deploy on: three times the margin.
			name: "cmp-real-shift", deploy: bad, want: audit.RunFailed, checks: latencyVsBefore,
			trace: latencyTrace(5, flat(0.25, 0.4)),
			check: func(t *testing.T, o *outcome) {
				m := o.deciding(t)
				d := comparison(t, m)
				wantContains(t, "deciding measurement", m.Message, "worse by more than 20%", "(failure 1 of limit 0)")
				if d.ShiftLow.Value == nil || d.MarginValue.Value == nil || *d.ShiftLow.Value <= *d.MarginValue.Value {
					t.Errorf("deciding measurement %q: shift interval from %v, margin %v: want it above the margin", m.Message, d.ShiftLow.Value, d.MarginValue.Value)
				}
			},
		},
		{
			// 1% errors before and after.
			name: "cmp-steady-errors", deploy: good, want: audit.RunPassed, checks: errorsVsBefore,
			trace: func() ctrace { return traffic(20, 1000, flat(0.01, 0.01)) },
			check: func(t *testing.T, o *outcome) {
				last := comparison(t, o.last(t, "errors-vs-before"))
				if last.Kind != "counts" || last.Before.Errors == nil || *last.Before.Errors == 0 || last.After.Errors == nil || *last.After.Errors == 0 {
					t.Errorf("last comparison %+v: want counts with errors on both sides", last)
				}
			},
		},
		{
			// No error in the 20s before the deploy, then about 1.5 a
			// second among 1000 requests: 0.15%, a rank test of rates per
			// step would see mostly zeros on both sides.
			name: "cmp-sparse-new-errors", deploy: bad, want: audit.RunFailed, checks: errorsVsBefore,
			trace: func() ctrace { return traffic(21, 1000, flat(0, 0.0015)) },
			check: func(t *testing.T, o *outcome) {
				m := o.deciding(t)
				d := comparison(t, m)
				if d.Before.Errors == nil || *d.Before.Errors != 0 || d.After.Errors == nil || *d.After.Errors == 0 {
					t.Errorf("deciding comparison: errors before %v after %v, want 0 before and some after", d.Before.Errors, d.After.Errors)
				}
				wantContains(t, "deciding measurement", m.Message, "before: rate x∞", "worse by more than 50%")
			},
		},
		{
			// 1% errors before, 4% after.
			name: "cmp-error-rate-up", deploy: bad, want: audit.RunFailed, checks: errorsVsBefore,
			trace: func() ctrace { return traffic(22, 1000, flat(0.01, 0.04)) },
			check: func(t *testing.T, o *outcome) {
				wantContains(t, "deciding measurement", o.deciding(t).Message, "worse by more than 50%")
			},
		},
		{
			// 3 requests a second, and half of them errors after the
			// deploy: 60 requests in the window, below min_total 200.
			name: "cmp-low-traffic", deploy: blameless, want: audit.RunInconclusive, checks: errorsVsBefore,
			trace: func() ctrace {
				return traffic(23, 3, flat(0.01, 0.5))
			},
			check: func(t *testing.T, o *outcome) {
				for _, m := range o.of("errors-vs-before") {
					if m.Detail["outcome"] != "inconclusive" {
						t.Errorf("measurement %q: outcome %v, want inconclusive", m.Message, m.Detail["outcome"])
					}
					wantContains(t, "measurement", m.Message, "requests since the deploy, min_total 200")
				}
				wantContains(t, "run.inconclusive", o.verdict.Message, "no usable measurement", "on_inconclusive: keep")
			},
		},
		{
			// The latency climbs from 12s before the deploy, from twice its
			// level, and goes on climbing: an incident the deploy did not
			// start. The lookback is 4 minutes, most of it backfilled: the
			// guard compares the end of the lookback with its first half,
			// and a few seconds of incident in 20 samples are too few for
			// it to be sure of what the comparison with the after side is
			// sure of. A look at which the comparison does not see the
			// climb as worse passes, so the run may pass too; it must never
			// fail.
			name: "cmp-incident-before", deploy: blameless, want: audit.RunInconclusive, alsoOK: audit.RunPassed,
			history: true,
			checks:  strings.Replace(latencyVsBefore, "lookback: 20s", "lookback: 4m", 1),
			trace: latencyTrace(6, func(el time.Duration) float64 {
				if el < -12200*time.Millisecond {
					return 0.25
				}
				return 0.5 + 0.1*(el+12200*time.Millisecond).Seconds()
			}),
			check: func(t *testing.T, o *outcome) {
				blamed := 0
				for _, m := range o.of("latency-vs-before") {
					d := comparison(t, m)
					if d.NotJudged == "" && d.Worse {
						blamed++
						wantContains(t, "judged measurement", m.Message, "but the baseline was already moving increase before the deploy", "not blamed on the deploy")
						if d.Trend == nil || !d.Trend.Worse {
							t.Errorf("measurement %q: trend %+v, want worse", m.Message, d.Trend)
						}
					}
					if d.Before.N < 200 {
						t.Errorf("measurement %q: %d samples before, want about 240 (4 minutes, backfilled)", m.Message, d.Before.N)
					}
				}
				if blamed == 0 {
					t.Errorf("no measurement saw the incident as worse than the baseline: the scenario tests nothing")
				}
			},
		},
		{
			// The error rate climbs from 1% from 10s before the deploy, by
			// 1% a second. As for the latency, a look that does not see it
			// as worse passes.
			name: "cmp-errors-rising-before", deploy: blameless, want: audit.RunInconclusive, alsoOK: audit.RunPassed,
			checks: errorsVsBefore,
			trace: func() ctrace {
				return traffic(24, 1000, func(el time.Duration) float64 {
					return 0.01 + 0.01*max(0, (el+10*time.Second).Seconds())
				})
			},
			check: func(t *testing.T, o *outcome) {
				blamed := 0
				for _, m := range o.of("errors-vs-before") {
					if d := comparison(t, m); d.NotJudged == "" && d.Worse {
						blamed++
						wantContains(t, "judged measurement", m.Message, "but the error rate was already rising before the deploy", "not blamed on the deploy")
						if d.Trend == nil || !d.Trend.Worse {
							t.Errorf("measurement %q: trend %+v, want worse", m.Message, d.Trend)
						}
					}
				}
				if blamed == 0 {
					t.Errorf("no measurement saw the errors as worse than the baseline's: the scenario tests nothing")
				}
			},
		},
		{
			// Every host three times slower from 4s after the deploy: the
			// canary is no worse than the others.
			name: "cmp-incident-every-host", deploy: good, want: audit.RunPassed, checks: latencyCanary,
			trace: canaryTrace(30, func(_ int, el time.Duration) float64 {
				if el < 4*time.Second {
					return 0.1
				}
				return 0.3
			}),
			check: func(t *testing.T, o *outcome) {
				d := comparison(t, o.last(t, "latency-canary"))
				if d.With != "canary" || d.Before.N < 2*d.After.N {
					t.Errorf("comparison with %s, %d samples of the canary and %d of the others: want canary, three other hosts", d.With, d.After.N, d.Before.N)
				}
				if d.After.Median == nil || *d.After.Median < 0.25 {
					t.Errorf("canary median %v: the incident did not reach it", d.After.Median)
				}
			},
		},
		{
			// The canary twice as slow as the other hosts.
			name: "cmp-bad-canary", deploy: bad, want: audit.RunFailed, checks: latencyCanary,
			trace: canaryTrace(31, func(host int, el time.Duration) float64 {
				if host == 0 && el >= 0 {
					return 0.2
				}
				return 0.1
			}),
			check: func(t *testing.T, o *outcome) {
				wantContains(t, "deciding measurement", o.deciding(t).Message, "worse by more than 20%")
			},
		},
		{
			// 30% slower: within the loose check's margin (50%, weight 3),
			// past the strict one's (5%, weight 1). Score 75: marginal.
			name: "cmp-scored-marginal", deploy: mixed, want: audit.RunMarginal,
			checks: strings.Replace(latencyVsBefore, "margin: 0.2", "margin: 0.5", 1) + "\n  weight: 3" +
				strings.NewReplacer("name: latency-vs-before", "name: latency-strict", "margin: 0.2", "margin: 0.05").Replace(latencyVsBefore),
			policy: "score: {pass: 80, marginal: 50}\non_marginal: keep",
			trace:  latencyTrace(7, flat(0.25, 0.325)),
			check: func(t *testing.T, o *outcome) {
				wantContains(t, "run.marginal", o.verdict.Message, "window closed marginal, score 75 below pass 80", "check latency-strict failed", "on_marginal: keep")
				d, ok := o.verdict.Verdict()
				if !ok || d.Score == nil || d.Score.Score != 75 {
					t.Errorf("verdict detail score %+v, want 75", d.Score)
				}
			},
		},
	}
}

// cmpRow is a comparison scenario's line in the summary.
type cmpRow struct {
	name, deploy, want, got string
	asWanted                bool // got is want, or alsoOK
	requests                int
	look                    int // bad deploys: the judged look that failed
	measurements            int // bad deploys: measurements up to the failure
}

// test runs the scenario against b, its deploy at deploy; the trace has
// been playing since cmpLead before it.
func (sc *cmpScenario) test(t *testing.T, b *backend, deploy time.Time, report func(cmpRow)) {
	r := cmpRow{name: sc.name, deploy: sc.deploy, want: sc.want, got: "(none)"}
	if sc.alsoOK != "" {
		r.want += " or " + sc.alsoOK
	}
	defer func() { report(r) }()

	timing := fmt.Sprintf("window: %s\ninterval: %s", model.Duration(cmpWindow), model.Duration(cmpInterval))
	if sc.policy != "" {
		timing += "\n" + sc.policy
	}
	rules := "policies:\n" + policyYAML(sc.name, fmt.Sprintf("{service: %s, environment: production}", sc.name), timing, sc.checks)
	h := newPromHarness(t, rules, b.q)
	if late := time.Since(deploy); late > 0 {
		t.Fatalf("the harness was ready %s after the deploy was due", late)
	}
	time.Sleep(time.Until(deploy))
	id := "d-" + sc.name
	ev := deployEvent(id, sc.name, "production", "v2", "previous_version", "v1")
	ev["time"] = deploy.UTC().Format(time.RFC3339Nano)
	h.publish(ev)

	o := &outcome{deploy: deploy, verdict: waitVerdict(h, id, cmpWindow+15*time.Second)}
	r.got = o.verdict.Kind
	o.meas = h.rec.ofDeploy(id, audit.Measurement)
	if sc.deploy == bad {
		testutil.Eventually(t, 10*time.Second, "a rollback request", func() bool { return len(h.rollbacks()) > 0 })
	}
	h.stop()
	msgs := h.rollbacks()
	r.requests = len(msgs)
	t.Logf("%s: %s", o.verdict.Kind, o.verdict.Message)
	for _, m := range o.meas {
		t.Logf("  +%5dms %s", detailTime(t, m, "eval_time").Sub(deploy).Milliseconds(), m.Message)
	}

	r.asWanted = o.verdict.Kind == sc.want || (sc.alsoOK != "" && o.verdict.Kind == sc.alsoOK)
	if !r.asWanted {
		t.Errorf("verdict %s (%s), want %s", o.verdict.Kind, o.verdict.Message, sc.want)
	}
	if want := map[bool]int{false: 0, true: 1}[sc.deploy == bad]; len(msgs) != want {
		t.Errorf("%d rollback requests on ROLLBACKS, want %d", len(msgs), want)
	}
	for _, m := range msgs {
		req, err := events.DecodeRollbackRequest(m.Subject, m.Data)
		if err != nil {
			t.Fatalf("the executor would reject the request: %v\n%s", err, m.Data)
		}
		if req.DeployID != id || req.ToVersion != "v1" {
			t.Errorf("request %+v: want deploy %s, to v1", req, id)
		}
	}
	for _, m := range o.meas {
		d, ok := m.Detail["comparison"].(*audit.ComparisonDetail)
		if !ok {
			t.Errorf("measurement %q has no comparison detail", m.Message)
			continue
		}
		if d.NotJudged == "" && (d.Look < 1 || d.Look > d.Looks || d.P == nil) {
			t.Errorf("judged measurement %q: look %d of %d, p %v", m.Message, d.Look, d.Looks, d.P)
		}
		if (sc.deploy == good || sc.deploy == blameless) && m.Detail["outcome"] == "fail" {
			t.Errorf("measurement %q failed: the deploy is not to blame", m.Message)
		}
	}
	if sc.deploy == bad && o.verdict.Kind == audit.RunFailed {
		m := o.deciding(t)
		d := comparison(t, m)
		r.look = d.Look
		r.measurements = len(o.of(fmt.Sprint(m.Detail["check"])))
		if !d.Worse || d.P == nil || *d.P > d.Alpha || d.Look < 1 {
			t.Errorf("deciding measurement %q: worse %v, p %v, alpha %v, look %d", m.Message, d.Worse, d.P, d.Alpha, d.Look)
		}
		if d.Look > detectWithin {
			t.Errorf("failed at judged look %d of %d, want within %d", d.Look, d.Looks, detectWithin)
		}
	}
	if sc.check != nil {
		sc.check(t, o)
	}
}

// TestCompareScenarios: the comparison verdicts of issue 12 against a real
// Prometheus. The deploys share one Prometheus and one deploy time: their
// series play from cmpLead before it, a real Watcher judges each, and the
// summary states the goal: no good deploy rolled back, no blameless one
// either, every bad one caught within detectWithin judged looks, and a
// scored policy's mixed deploy kept as marginal.
func TestCompareScenarios(t *testing.T) {
	t.Parallel()
	table := cmpScenarios()
	var (
		mu   sync.Mutex
		rows []cmpRow
	)
	report := func(r cmpRow) {
		mu.Lock()
		defer mu.Unlock()
		rows = append(rows, r)
	}

	b, deploy, traces := startCmpBackend(t, table)
	for i, sc := range table {
		b.playSeries(t, sc.name, deploy, traces[i])
	}
	// All at once, not t.Parallel: they spend their time waiting for their
	// windows (see TestScenarios).
	var wg sync.WaitGroup
	for _, sc := range table {
		wg.Go(func() {
			t.Run(sc.name, func(t *testing.T) { sc.test(t, b, deploy, report) })
		})
	}
	wg.Wait()

	order := map[string]int{}
	for i, sc := range table {
		order[sc.name] = i
	}
	slices.SortFunc(rows, func(a, b cmpRow) int { return order[a.name] - order[b.name] })
	var out strings.Builder
	tw := tabwriter.NewWriter(&out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tdeploy\texpected\tgot\trollback requests\tfailed at judged look\tmeasurements to the failure")
	var goods, falseRollbacks, bads, caught, blamelesses, spared, mixeds, marginal int
	var looks []int
	for _, r := range rows {
		look, meas := "-", "-"
		switch r.deploy {
		case good:
			goods++
			if r.requests > 0 || r.got == audit.RunFailed {
				falseRollbacks++
			}
		case blameless:
			blamelesses++
			if r.requests == 0 && r.asWanted {
				spared++
			}
		case mixed:
			mixeds++
			if r.requests == 0 && r.asWanted {
				marginal++
			}
		case bad:
			bads++
			look, meas = fmt.Sprint(r.look), fmt.Sprint(r.measurements)
			if r.got == audit.RunFailed && r.requests == 1 && r.look >= 1 && r.look <= detectWithin {
				caught++
				looks = append(looks, r.look)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.name, r.deploy, r.want, r.got, r.requests, look, meas)
	}
	tw.Flush()
	headline := fmt.Sprintf("false rollbacks on good deploys: %d of %d; bad deploys caught within %d judged looks: %d of %d; median looks to detection: %d (judged looks, interval %s, step %s); blameless deploys kept, none failed: %d of %d; mixed deploys of a scored policy kept as marginal: %d of %d",
		falseRollbacks, goods, detectWithin, caught, bads, medianInt(looks), cmpInterval, cmpStep, spared, blamelesses, marginal, mixeds)
	t.Logf("comparison scenario summary:\n%s%s", out.String(), headline)
	if falseRollbacks > 0 || caught < bads || spared < blamelesses || marginal < mixeds || len(rows) != len(table) {
		t.Errorf("%s; %d of %d scenarios reported", headline, len(rows), len(table))
	}
}
