package watch

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

func TestGrid(t *testing.T) {
	step := 15 * time.Second
	at := time.Date(2026, 12, 4, 10, 0, 7, 0, time.UTC)
	if got, want := gridFloor(at, step), time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("gridFloor(%s) = %s, want %s", at, got, want)
	}
	if got, want := gridCeil(at, step), time.Date(2026, 12, 4, 10, 0, 15, 0, time.UTC); !got.Equal(want) {
		t.Errorf("gridCeil(%s) = %s, want %s", at, got, want)
	}
	on := time.Date(2026, 12, 4, 10, 0, 15, 0, time.UTC)
	if !gridFloor(on, step).Equal(on) || !gridCeil(on, step).Equal(on) {
		t.Errorf("a time on the grid moved: floor %s, ceil %s", gridFloor(on, step), gridCeil(on, step))
	}
	before := time.Unix(-7, 0)
	if got := gridFloor(before, step); !got.Equal(time.Unix(-15, 0)) {
		t.Errorf("gridFloor(%s) = %s, want 15s before the epoch", before, got)
	}
}

// TestCompareLooks: looks are numbered among those whose after side has
// enough samples, and a time off the plan is look 0.
func TestCompareLooks(t *testing.T) {
	p := &policy.Policy{Window: model.Duration(10 * time.Minute), Interval: model.Duration(time.Minute), InitialDelay: model.Duration(time.Minute)}
	start := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	after := start.Add(time.Minute)
	step := 15 * time.Second
	// Looks at 10:01..10:10; the after side has 1, 5, 9, ... samples: 10
	// samples from 10:03 (at 10:03:15 exactly 10, but looks are on the
	// minute: 10:03 has 9, 10:04 has 13).
	cases := []struct {
		ts          time.Time
		look, looks int
	}{
		{start.Add(4 * time.Minute), 1, 7},
		{start.Add(10 * time.Minute), 7, 7},
		{start.Add(3 * time.Minute), 0, 7},
		{start.Add(4*time.Minute + time.Second), 0, 7},
	}
	for _, c := range cases {
		look, looks := compareLooks(p, start, after, step, 10, c.ts)
		if look != c.look || looks != c.looks {
			t.Errorf("look at %s = %d of %d, want %d of %d", c.ts.Format("15:04:05"), look, looks, c.look, c.looks)
		}
	}
}

// comparePolicy is one policy with one check; deployAt is when scripts
// switch from the before to the after data.
func comparePolicy(check string) string {
	return "policies:\n" + policyYAML("shop-compare", shopMatch, `
window: 3s
interval: 300ms`, check)
}

// shifting answers noise around before until deployAt, and around after
// from then on.
func shifting(deployAt time.Time, before, after float64) script {
	return func(_ context.Context, _ string, _ int, ts time.Time) (model.Vector, error) {
		r := rand.New(rand.NewPCG(uint64(ts.UnixMilli()), 1))
		v := before
		if !ts.Before(deployAt) {
			v = after
		}
		return vec(v * (1 + 0.1*(r.Float64()-0.5))), nil
	}
}

func TestComparePreDeploy(t *testing.T) {
	t.Parallel()
	check := `
- name: latency-vs-before
  query: latency_seconds{service="{{ .Service }}"}
  compare:
    with: pre_deploy
    lookback: 10s
    step: 100ms
    direction: increase
    margin: 0.2
    min_samples: 5`
	for _, c := range []struct {
		name   string
		after  float64
		kind   string
		reason string
	}{
		{"shift", 2, audit.RunFailed, "worse by more than 20%"},
		{"noise", 1, audit.RunPassed, "window closed healthy"},
		{"under the margin", 1.1, audit.RunPassed, "window closed healthy"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			deployAt := time.Now()
			h := newHarness(t, comparePolicy(check), shifting(deployAt, 1, c.after))
			h.publish(deployEvent("d-cmp", "shop", "production", "v2", "time", deployAt.UTC().Format(time.RFC3339Nano)))
			v := h.waitFor("d-cmp", verdictKinds...)
			if v.Kind != c.kind || !strings.Contains(v.Message, c.reason) {
				t.Fatalf("verdict %s: %s; want %s with %q", v.Kind, v.Message, c.kind, c.reason)
			}
			ms := h.rec.ofDeploy("d-cmp", audit.Measurement)
			if len(ms) == 0 {
				t.Fatal("no measurements")
			}
			last := ms[len(ms)-1]
			d, ok := last.Detail["comparison"].(*audit.ComparisonDetail)
			if !ok {
				t.Fatalf("measurement %q has no comparison detail: %#v", last.Message, last.Detail)
			}
			if d.Kind != "samples" || d.With != "pre_deploy" || d.Before.N < 90 || d.After.N < 5 || d.Looks == 0 || d.Test == "" {
				t.Errorf("comparison detail %+v", d)
			}
			if c.kind == audit.RunFailed && (!d.Worse || d.P == nil || *d.P > d.Alpha) {
				t.Errorf("failing measurement: worse %v, p %v, alpha %v", d.Worse, d.P, d.Alpha)
			}
			// The after side is fetched look by look: no step twice.
			calls := h.q.callsFor("latency_seconds")
			var afterCalls []queryCall
			for _, q := range calls {
				if q.Start.IsZero() {
					t.Errorf("instant query %q at %s: a comparison alone needs none", q.Query, q.TS)
				}
				if !q.Start.Before(deployAt) {
					afterCalls = append(afterCalls, q)
				}
			}
			for i := 1; i < len(afterCalls); i++ {
				if !afterCalls[i].Start.After(afterCalls[i-1].TS) {
					t.Errorf("range %s..%s overlaps the one before, ..%s", afterCalls[i].Start, afterCalls[i].TS, afterCalls[i-1].TS)
				}
			}
		})
	}
}

// TestCompareCounts: new errors where there were none fail the check; the
// same error rate before and after passes.
func TestCompareCounts(t *testing.T) {
	t.Parallel()
	check := `
- name: payment-errors
  compare:
    with: pre_deploy
    errors: sum(increase(errors_total{service="{{ .Service }}"}[{{ .Range }}]))
    total: sum(increase(requests_total{service="{{ .Service }}"}[{{ .Range }}]))
    lookback: 10s
    step: 100ms
    margin: 0.5
    min_total: 200`
	for _, c := range []struct {
		name                string
		errBefore, errAfter float64
		kind                string
	}{
		{"new errors", 0, 3, audit.RunFailed},
		{"steady errors", 1, 1, audit.RunPassed},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			deployAt := time.Now()
			h := newHarness(t, comparePolicy(check), byQuery(map[string]script{
				"errors_total":   shifting(deployAt, c.errBefore, c.errAfter),
				"requests_total": always(100),
			}))
			h.publish(deployEvent("d-cnt", "shop", "production", "v2", "time", deployAt.UTC().Format(time.RFC3339Nano)))
			v := h.waitFor("d-cnt", verdictKinds...)
			if v.Kind != c.kind {
				t.Fatalf("verdict %s: %s; want %s", v.Kind, v.Message, c.kind)
			}
			ms := h.rec.ofDeploy("d-cnt", audit.Measurement)
			d, ok := ms[len(ms)-1].Detail["comparison"].(*audit.ComparisonDetail)
			if !ok || d.Kind != "counts" || d.After.Total == nil || *d.After.Total == 0 || d.ErrorsQuery == "" || !strings.Contains(d.ErrorsQuery, "[100ms]") {
				t.Fatalf("comparison detail %+v", d)
			}
		})
	}
}

// TestComparisonResumesAfterCrash: a replica that takes over a comparing
// run mid-window has none of its samples: it fetches the whole after span
// (and the before side) at its first look, and judges the run on all of
// it.
func TestComparisonResumesAfterCrash(t *testing.T) {
	t.Parallel()
	rules := comparePolicy(`
- name: latency-vs-before
  query: latency_seconds{service="{{ .Service }}"}
  compare:
    with: pre_deploy
    lookback: 10s
    step: 100ms
    direction: increase
    margin: 0.2
    min_samples: 15`)
	h := newHarness(t, rules, always(0)) // never used: the replicas measure
	h.stop()
	deployAt := time.Now()
	// Twice as slow from the deploy on; replica a crashes before it has
	// the 15 samples (1.5s) a judgement needs.
	s := shifting(deployAt, 1, 2)
	lease := 600 * time.Millisecond
	_, rec1, crash := h.replica("a", lease, s)
	h.publish(deployEvent("d-cmp-resume", "shop", "production", "v2", "time", deployAt.UTC().Format(time.RFC3339Nano)))
	testutil.Eventually(t, 10*time.Second, "2 measurements by replica a", func() bool {
		return len(rec1.ofDeploy("d-cmp-resume", audit.Measurement)) >= 2
	})
	crash()

	wb, rec2, _ := h.replica("b", lease, s)
	var v []audit.Record
	testutil.Eventually(t, 15*time.Second, "the run decided by replica b", func() bool {
		v = rec2.ofDeploy("d-cmp-resume", verdictKinds...)
		return len(v) > 0
	})
	if v[0].Kind != audit.RunFailed {
		for _, r := range append(rec1.ofDeploy("d-cmp-resume"), rec2.ofDeploy("d-cmp-resume")...) {
			t.Log(r.Kind, r.Message)
		}
		t.Fatalf("verdict %s: %s; want %s", v[0].Kind, v[0].Message, audit.RunFailed)
	}
	calls := wb.Querier.(*fakeQuerier).callsFor("latency_seconds")
	// Ranges that reach past the deploy (the first also holds the
	// pre_deploy span: one request for the steps the stores lack).
	var after []queryCall
	for _, c := range calls {
		if c.TS.After(deployAt) {
			after = append(after, c)
		}
	}
	if len(after) == 0 || after[0].Start.After(deployAt.Add(100*time.Millisecond)) {
		t.Fatalf("replica b's first after-side range %v: want it to start at the deploy, its samples gone with replica a", after)
	}
	for _, r := range rec1.ofDeploy("d-cmp-resume", audit.Measurement) {
		if r.Detail["outcome"] != "inconclusive" {
			t.Fatalf("replica a judged before it crashed: %s", r.Message)
		}
	}
	ms := rec2.ofDeploy("d-cmp-resume", audit.Measurement)
	d, ok := ms[0].Detail["comparison"].(*audit.ComparisonDetail)
	eval := ms[0].Detail["eval_time"].(time.Time)
	if since := int(eval.Sub(deployAt) / (100 * time.Millisecond)); !ok || d.Before.N < 90 || d.After.N < since-1 {
		t.Errorf("replica b's first comparison at %s after the deploy has %d samples after and %d before: want every step since the deploy (%d) and the whole lookback",
			eval.Sub(deployAt), d.After.N, d.Before.N, since)
	}
}

// TestCompareWeeksHoliday: three weeks back, one of them a holiday with a
// fifth of the orders. The weeks are pooled step by step by their median,
// so the holiday moves nothing: an ordinary day passes, and a deploy that
// drops orders to the holiday's level fails.
func TestCompareWeeksHoliday(t *testing.T) {
	t.Parallel()
	check := `
- name: orders-vs-weeks
  query: orders_per_second{service="{{ .Service }}"}
  compare:
    with: {weeks: 3}
    step: 100ms
    direction: decrease
    margin: 0.2
    min_samples: 5`
	for _, c := range []struct {
		name  string
		after float64
		kind  string
	}{{"ordinary day", 100, audit.RunPassed}, {"orders drop", 20, audit.RunFailed}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			deployAt := time.Now()
			holiday := deployAt.Add(-week) // the week before: a holiday
			h := newHarness(t, comparePolicy(check), func(_ context.Context, _ string, _ int, ts time.Time) (model.Vector, error) {
				r := rand.New(rand.NewPCG(uint64(ts.UnixMilli()), 3))
				v := 100.0
				switch {
				case !ts.Before(deployAt):
					v = c.after
				case ts.After(holiday.Add(-time.Hour)) && ts.Before(holiday.Add(time.Hour)):
					v = 20
				}
				return vec(v * (1 + 0.1*(r.Float64()-0.5))), nil
			})
			h.publish(deployEvent("d-weeks", "shop", "production", "v2", "time", deployAt.UTC().Format(time.RFC3339Nano)))
			v := h.waitFor("d-weeks", verdictKinds...)
			if v.Kind != c.kind {
				t.Fatalf("verdict %s: %s; want %s", v.Kind, v.Message, c.kind)
			}
			ms := h.rec.ofDeploy("d-weeks", audit.Measurement)
			d, ok := ms[len(ms)-1].Detail["comparison"].(*audit.ComparisonDetail)
			if !ok || d.With != "weeks 3" || d.Before.Median == nil || *d.Before.Median < 90 {
				t.Fatalf("comparison %+v: want the before median near 100, the holiday outvoted", d)
			}
		})
	}
}

// TestAfterStart: the after side begins after the deploy, at initial_delay
// on the step grid; a count's first step does not reach back before it.
func TestAfterStart(t *testing.T) {
	m := 0.2
	samples := &policy.Check{Compare: &policy.Compare{Step: model.Duration(15 * time.Second), Margin: &m}}
	counts := &policy.Check{Compare: &policy.Compare{Step: model.Duration(30 * time.Second), Margin: &m, Errors: "e", Total: "t"}}
	noDelay := &policy.Policy{}
	delay := &policy.Policy{InitialDelay: model.Duration(time.Minute)}
	onGrid := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	off := onGrid.Add(7 * time.Second)
	for _, c := range []struct {
		name   string
		c      *policy.Check
		p      *policy.Policy
		deploy time.Time
		want   time.Time
	}{
		{"samples, deploy on the grid: the next step, not the deploy's own", samples, noDelay, onGrid, onGrid.Add(15 * time.Second)},
		{"samples, deploy off the grid", samples, noDelay, off, onGrid.Add(15 * time.Second)},
		{"samples, initial_delay", samples, delay, off, onGrid.Add(75 * time.Second)},
		{"counts: a whole step after the deploy", counts, noDelay, off, onGrid.Add(60 * time.Second)},
		{"counts, deploy on the grid", counts, noDelay, onGrid, onGrid.Add(30 * time.Second)},
	} {
		if got := afterStart(c.c, c.p, c.deploy); !got.Equal(c.want) {
			t.Errorf("%s: after side from +%s, want +%s", c.name, got.Sub(onGrid), c.want.Sub(onGrid))
		}
	}
}
