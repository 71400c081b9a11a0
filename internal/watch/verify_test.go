package watch

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// Verifications driven by the announcement the executor publishes when a
// rollback completes, published here (the scenarios in
// verify_scenario_test.go run the executor itself).

// verifyRules is one policy for shop with the checks given and
// rollback.verify within within.
func verifyRules(timing, checks, within string) string {
	return fmt.Sprintf(`policies:
  - name: shop-verify
    match: %s
%s
    checks:
%s
    rollback:
      link: /srv/shop/current
      verify: {within: %s}
`, shopMatch, indent(timing, 4), indent(checks, 6), within)
}

// announce publishes what the executor publishes once request reqID
// rolled shop back to v1 at at.
func (h *harness) announce(reqID string, at time.Time) {
	h.t.Helper()
	b, err := events.EncodeRolledBack(events.RolledBack{ID: "rolledback-" + reqID, Service: "shop", Environment: "production",
		Version: "v1", FromVersion: "v2", RequestID: reqID, Reason: "test", Time: at}, "/rollback-watcher/test")
	if err != nil {
		h.t.Fatal(err)
	}
	h.publishRaw(events.Subject(events.DeploysPrefix, "production", "shop"), nats.Header{
		"Content-Type": []string{events.ContentTypeCloudEvents}, events.HeaderAnnouncement: []string{"service.rolledback"},
	}, b)
}

// TestVerifyComparison: a comparison measured again after the rollback
// compares the span from the rollback's completion with the same pre_deploy
// span as the run (before the deploy, not before the rollback). The
// latency doubles from the deploy until the rollback and is back after it:
// an after side that started at the deploy would hold the doubled samples
// and never pass.
func TestVerifyComparison(t *testing.T) {
	t.Parallel()
	deployAt := time.Now()
	var back atomic.Pointer[time.Time]
	h := newHarness(t, verifyRules("window: 5s\ninterval: 300ms", `
- name: latency-vs-before
  query: latency_seconds{service="{{ .Service }}"}
  compare: {with: pre_deploy, lookback: 10s, step: 100ms, direction: increase, margin: 0.2, min_samples: 5}`, "3s"),
		func(_ context.Context, _ string, _ int, ts time.Time) (model.Vector, error) {
			r := rand.New(rand.NewPCG(uint64(ts.UnixMilli()), 1))
			v := 1.0
			if !ts.Before(deployAt) {
				v = 2
			}
			if b := back.Load(); b != nil && !ts.Before(*b) {
				v = 1
			}
			return vec(v * (1 + 0.1*(r.Float64()-0.5))), nil
		})
	h.publish(deployEvent("d-vcmp", "shop", "production", "v2", "time", deployAt.UTC().Format(time.RFC3339Nano)))
	failed := h.waitFor("d-vcmp", audit.RunFailed)
	reqID := fmt.Sprint(failed.Detail["request_id"])
	completed := time.Now()
	back.Store(&completed)
	h.announce(reqID, completed)

	v := h.waitFor("d-vcmp", audit.RollbackVerified, audit.RollbackUnhelpful)
	if v.Kind != audit.RollbackVerified {
		t.Fatalf("%s: %s; want rollback.verified", v.Kind, v.Message)
	}
	ms := verifications(h.rec.ofDeploy("d-vcmp", audit.Measurement))
	if len(ms) == 0 {
		t.Fatal("no measurement of the verification")
	}
	for _, m := range ms {
		d := m.Detail["comparison"].(*audit.ComparisonDetail)
		t.Logf("%s: after %d samples, median %v; before %d, median %v", m.Message, d.After.N, *d.After.Median, d.Before.N, *d.Before.Median)
		if d.Before.N < 90 || *d.Before.Median > 1.1 {
			t.Errorf("%q: before side %d samples, median %v: want the 10s before the deploy at 1", m.Message, d.Before.N, *d.Before.Median)
		}
	}
	// The before side is the run's span (the verification's fetch of it is
	// served by the run's, which sharedQuerier keeps), not the lookback
	// before the rollback; every after span of the verification starts
	// after the rollback.
	beforeFrom := gridCeil(deployAt.Add(-10*time.Second), 100*time.Millisecond)
	beforeRollback := gridCeil(completed.Add(-10*time.Second), 100*time.Millisecond)
	var befores, afters int
	for _, c := range h.q.callsFor("latency_seconds") {
		switch {
		case c.Start.Equal(beforeFrom):
			befores++
		case c.Start.Equal(beforeRollback):
			t.Errorf("range %s..%s: the lookback before the rollback, not before the deploy", c.Start, c.TS)
		case c.Start.After(completed):
			afters++
		case c.TS.After(completed):
			t.Errorf("range %s..%s: it reaches back before the rollback at %s", c.Start, c.TS, completed)
		}
	}
	if befores == 0 || afters == 0 {
		t.Errorf("%d fetches of the pre-deploy span, %d after the rollback; want both", befores, afters)
	}
}

// TestVerifyNothingToVerify: an announcement of a rollback that no run
// with rollback.verify asked for (a manual one, or one whose policy does not
// verify) starts nothing and records nothing; a rollback that never
// completes leaves what to verify in VerifyBucket, where it expires.
func TestVerifyNothingToVerify(t *testing.T) {
	t.Parallel()
	rules := "policies:\n" + policyYAML("shop-orders", shopMatch, "window: 3s\ninterval: 200ms", `
- name: orders
  query: orders
  min: 50`) + strings.Replace(verifyRules("window: 3s\ninterval: 200ms", `
- name: orders
  query: orders
  min: 50`, "2s"), "policies:\n", "", 1)
	rules = strings.Replace(rules, "name: shop-verify\n    match: "+shopMatch, "name: shop-verify\n    match: {service: shop, environment: staging}", 1)
	h := newHarness(t, rules, always(10))

	// Failed under a policy that does not verify: announced, nothing more.
	// (A verification is stored before its announcement is acked.)
	h.publish(deployEvent("d-plain", "shop", "production", "v2"))
	failed := h.waitFor("d-plain", audit.RunFailed)
	h.announce(fmt.Sprint(failed.Detail["request_id"]), time.Now())
	h.announce("manual-01", time.Now())
	h.waitMetric(2, "watcher_deploy_events_total", "result", "ignored")
	if _, err := mustKV(t, h, RunsBucket).Get(context.Background(), verifyID(failed.RunID)); err != jetstream.ErrKeyNotFound {
		t.Errorf("a verification of run %s is stored (%v)", failed.RunID, err)
	}

	// Failed under one that verifies, never rolled back.
	h.publish(deployEvent("d-staging", "shop", "staging", "v2"))
	failed = h.waitFor("d-staging", audit.RunFailed)
	var stored []byte
	testutil.Eventually(t, 10*time.Second, "what to verify of the staging rollback", func() bool {
		e, err := mustKV(t, h, VerifyBucket).Get(context.Background(), verifyKey(fmt.Sprint(failed.Detail["request_id"])))
		if err == nil {
			stored = e.Value()
		}
		return err == nil
	})
	if !strings.Contains(string(stored), `"checks":["orders"]`) {
		t.Errorf("stored %s, want the check orders to verify", stored)
	}
	if _, err := mustKV(t, h, VerifyBucket).Get(context.Background(), verifyKey("manual-01")); err == nil {
		t.Error("a manual rollback has something to verify")
	}
	for _, r := range h.rec.where(func(r audit.Record) bool { return true }) {
		if r.Kind == audit.RollbackVerified || r.Kind == audit.RollbackUnhelpful || r.RequestID != "" || r.Detail["verification"] != nil {
			t.Errorf("%s record %q: nothing was to be verified", r.Kind, r.Message)
		}
	}
}

// TestVerifySuperseded: a deploy after the rollback ends its verification
// (what it would measure is that deploy, which its own run validates);
// the announcement delivered again afterwards starts nothing.
func TestVerifySuperseded(t *testing.T) {
	t.Parallel()
	h := newHarness(t, verifyRules("window: 30s\ninterval: 200ms", `
- name: orders
  query: orders
  min: 50`, "30s"), func(_ context.Context, _ string, n int, _ time.Time) (model.Vector, error) {
		if n == 0 {
			return vec(10), nil // the deploy's first measurement fails it
		}
		return vec(20), nil // and the rollback does not help
	})
	h.publish(deployEvent("d-v2", "shop", "production", "v2"))
	failed := h.waitFor("d-v2", audit.RunFailed)
	reqID := fmt.Sprint(failed.Detail["request_id"])
	h.announce(reqID, time.Now())
	testutil.Eventually(t, 10*time.Second, "2 measurements of the verification", func() bool {
		return len(verifications(h.rec.ofDeploy("d-v2", audit.Measurement))) >= 2
	})
	if v := h.mustMetric("watcher_runs_active"); v != 0 {
		t.Errorf("watcher_runs_active %v while only a verification is active, want 0: a verification is no validation run", v)
	}
	h.publish(deployEvent("d-v3", "shop", "production", "v3"))
	end := h.waitFor("d-v2", audit.RunSuperseded)
	if end.RunID != failed.RunID || end.RequestID != reqID {
		t.Errorf("run.superseded of run %s request %s, want %s %s", end.RunID, end.RequestID, failed.RunID, reqID)
	}
	wantContains(t, end.Kind, end.Message, "verification of the rollback stopped: deploy d-v3 of version v3 came after it")
	if vs := h.rec.ofDeploy("d-v2", audit.RollbackVerified, audit.RollbackUnhelpful); len(vs) > 0 {
		t.Errorf("%s after the verification was superseded: %s", vs[0].Kind, vs[0].Message)
	}
	// Nothing is left to verify: the same announcement again is passed
	// over, and starts nothing.
	testutil.Eventually(t, 10*time.Second, "the verification's state removed", func() bool {
		_, err := mustKV(t, h, VerifyBucket).Get(context.Background(), verifyKey(reqID))
		_, rerr := mustKV(t, h, RunsBucket).Get(context.Background(), verifyID(failed.RunID))
		return err == jetstream.ErrKeyNotFound && rerr == jetstream.ErrKeyNotFound
	})
	n := len(h.rec.ofDeploy("d-v2"))
	h.announce(reqID, time.Now())
	h.waitMetric(2, "watcher_deploy_events_total", "result", "ignored")
	if _, err := mustKV(t, h, RunsBucket).Get(context.Background(), verifyID(failed.RunID)); err != jetstream.ErrKeyNotFound {
		t.Errorf("the announcement again stored a verification (%v)", err)
	}
	if got := h.rec.ofDeploy("d-v2"); len(got) != n {
		t.Errorf("the announcement again made %d records: %s", len(got)-n, messages(got[n:]))
	}
}
