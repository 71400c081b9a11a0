package rollback

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// sample is one series: a counter's value, or a histogram's count and sum.
type sample struct {
	value float64
	count uint64
	sum   float64
}

// series finds the series of name in reg whose labels include labels
// (name, value pairs); nil when there is none.
func series(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) *sample {
	t.Helper()
	m := testutil.Series(t, reg, name, labels...)
	if m == nil {
		return nil
	}
	return &sample{value: m.GetCounter().GetValue(), count: m.GetHistogram().GetSampleCount(), sum: m.GetHistogram().GetSampleSum()}
}

// failingAudit refuses every record, as an AUDIT stream that is down would.
type failingAudit struct{}

func (failingAudit) Record(context.Context, audit.Record) error {
	return errors.New("audit stream unavailable")
}

// A completed rollback is counted under its service and environment and
// observed from its request's time (the decision) to all hosts switched; a
// failed or skipped one is counted and not observed; one that will be
// tried again (nothing done) is not counted yet.
func TestExecuteMetricsByService(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx := ctxFor(t)
	h := deployed(t)
	e, rec, reg := newExecutor(t, n, loadRules(t, policyYAML("shop", "shop", h)))

	const waited = 90 * time.Second
	req := request("rb-done")
	req.Time = time.Now().Add(-waited)
	if res := e.Execute(ctx, req); res.Status != ResultCompleted {
		t.Fatalf("result %s, %v; audit: %+v", res.Status, res.Err, rec.all())
	}
	elapsed := time.Since(req.Time)

	nopolicy := request("rb-nopolicy")
	nopolicy.Service = "cart"
	if res := e.Execute(ctx, nopolicy); res.Status != ResultFailed || res.Retry {
		t.Fatalf("cart without a policy: result %s (retry %v), want a final failure", res.Status, res.Retry)
	}

	retry := &Executor{JS: n.JS, Policies: loadRules(t, policyYAML("shop", "shop", h)), Audit: failingAudit{}}
	retryReg := prometheus.NewRegistry()
	retry.Register(retryReg)
	if res := retry.Execute(ctx, request("rb-retry")); !res.Retry {
		t.Fatalf("with the audit down: result %s, %v, want one to retry", res.Status, res.Err)
	}
	if m := series(t, retryReg, "watcher_rollbacks_by_service_total"); m != nil {
		t.Errorf("a request to be tried again counted: %+v", m)
	}

	for _, c := range []struct {
		labels []string
		want   float64
	}{
		{[]string{"service", "shop", "environment", "production", "result", ResultCompleted}, 1},
		{[]string{"service", "cart", "environment", "production", "result", ResultFailed}, 1},
	} {
		m := series(t, reg, "watcher_rollbacks_by_service_total", c.labels...)
		if m == nil || m.value != c.want {
			t.Errorf("watcher_rollbacks_by_service_total%v = %+v, want %v", c.labels, m, c.want)
		}
	}
	if m := series(t, reg, "watcher_rollbacks_by_service_total", "service", "shop", "result", ResultFailed); m != nil {
		t.Errorf("shop counted as failed: %v", m)
	}

	m := series(t, reg, "watcher_restore_seconds", "service", "shop", "environment", "production")
	if m == nil || m.count != 1 {
		t.Fatalf("watcher_restore_seconds{shop,production} = %+v, want one sample", m)
	}
	if got := m.sum; got < waited.Seconds() || got > elapsed.Seconds() {
		t.Errorf("watcher_restore_seconds observed %.3fs, want between %s (since the request's time) and %.3fs", got, waited, elapsed.Seconds())
	}
	if m := series(t, reg, "watcher_restore_seconds", "service", "cart"); m != nil {
		t.Errorf("a failed rollback observed as restored: %v", m)
	}
}

// A dry run is counted as skipped and restores nothing.
func TestExecuteMetricsSkipped(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx := ctxFor(t)
	h := deployed(t)
	rec := &recorder{}
	e := &Executor{JS: n.JS, Policies: loadRules(t, policyYAML("shop", "shop", h)), Audit: rec, DryRun: true}
	reg := prometheus.NewRegistry()
	e.Register(reg)
	if res := e.Execute(ctx, request("rb-dry")); res.Status != ResultSkipped {
		t.Fatalf("dry run: result %s, %v", res.Status, res.Err)
	}
	m := series(t, reg, "watcher_rollbacks_by_service_total", "service", "shop", "environment", "production", "result", ResultSkipped)
	if m == nil || m.value != 1 {
		t.Errorf("watcher_rollbacks_by_service_total{shop,production,skipped} = %+v, want 1", m)
	}
	if m := series(t, reg, "watcher_restore_seconds"); m != nil {
		t.Errorf("a dry run observed as restored: %v", m)
	}
}
