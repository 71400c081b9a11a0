package watch

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// TestNextVerifyMove: what a rollback's verification does next, as a table
// over the pure decision. The rollback completed at t0; the policy verifies
// within 5s, every 1s (1s query timeout, no initial_delay): measurements
// from t0 to t0+5s, out of time at t0+6s.
func TestNextVerifyMove(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	full := &policy.Policy{Name: "p", Window: model.Duration(time.Minute), Interval: model.Duration(time.Second),
		Checks:   []*policy.Check{{Name: "errors"}, {Name: "latency"}, {Name: "orders"}},
		Rollback: policy.Rollback{Verify: &policy.Verify{Within: model.Duration(5 * time.Second)}}}
	p, err := verifyPolicy(full, []string{"errors", "latency"})
	if err != nil {
		t.Fatal(err)
	}
	f := func(v float64) *float64 { return &v }
	pass := func(v float64) checkProgress {
		return checkProgress{Tally: policy.Tally{Pass: 1}, Last: "ok", Outcome: "pass", Judged: "pass", Value: f(v), Threshold: "max 0.05"}
	}
	fail := func(v float64, reason string) checkProgress {
		return checkProgress{Tally: policy.Tally{Fail: 1}, Last: reason, Outcome: "fail", Judged: "fail", Value: f(v), Threshold: "max 0.05"}
	}
	noData := checkProgress{Tally: policy.Tally{Inconclusive: 3}, Last: "no data", Outcome: "inconclusive"}
	snap := func(next time.Time, checks ...checkProgress) runSnapshot {
		return runSnapshot{Start: t0, Since: t0, DueThen: t0, Next: next, QueryTimeout: time.Second, Verdict: VerdictPending, Checks: checks}
	}
	measured := func(s runSnapshot) runSnapshot { s.Measured = true; return s }
	failedThenNoData := fail(0.3, "no data")
	failedThenNoData.Outcome = "inconclusive"

	for _, tc := range []struct {
		name      string
		s         runSnapshot
		now       time.Time
		kind      moveKind
		at        time.Time
		record    string
		outcome   string
		reasonHas []string
	}{
		{name: "the first measurement is due at the completion", s: snap(t0, checkProgress{}, checkProgress{}), now: t0,
			kind: moveMeasure, at: t0},
		{name: "before the next: wait", s: snap(at(2), fail(0.3, "0.3 > max 0.05"), pass(0.01)), now: at(1.2),
			kind: moveWait, at: at(2)},
		{name: "one check still failing: measure on", s: measured(snap(at(2), fail(0.3, "0.3 > max 0.05"), pass(0.01))), now: at(1.1),
			kind: moveWait, at: at(2)},
		{name: "every check passes at one measurement: verified", s: measured(snap(at(3), pass(0.01), pass(0.2))), now: at(2.1),
			kind: moveDecide, record: audit.RollbackVerified, outcome: audit.VerifyRecovered,
			reasonHas: []string{"the rollback helped: 2s after it", "check errors passes: 0.01 (max 0.05)", "check latency passes: 0.2"}},
		{name: "passing at different measurements is no recovery", s: measured(snap(at(3), pass(0.01), noData)), now: at(2.1),
			kind: moveWait, at: at(3)},
		{name: "a cut measurement never verifies", s: func() runSnapshot { s := measured(snap(at(6), pass(0.01), pass(0.2))); s.Cut = true; return s }(),
			now: at(5.9), kind: moveDecide, record: audit.RollbackUnhelpful, outcome: audit.VerifyUnverified,
			reasonHas: []string{"could not be verified", "1 measurements from"}},
		{name: "the last measurement taken: wait for within's end", s: measured(snap(at(6), fail(0.3, "0.3 > max 0.05"), pass(0.01))), now: at(5.1),
			kind: moveWait, at: at(5)},
		{name: "within's end, a check still fails: unhelpful", s: snap(at(6), fail(0.3, "0.3 > max 0.05"), pass(0.01)), now: at(5.2),
			kind: moveDecide, record: audit.RollbackUnhelpful, outcome: audit.VerifyNotRecovered,
			reasonHas: []string{"the rollback did not help: 5s after it, check errors still fails: 0.3 > max 0.05; check latency passes: 0.01 (max 0.05); the problem is elsewhere"}},
		{name: "the failing check is named first", s: snap(at(6), pass(0.01), fail(0.3, "0.3 > max 0.05")), now: at(5.2),
			kind: moveDecide, record: audit.RollbackUnhelpful, outcome: audit.VerifyNotRecovered,
			reasonHas: []string{"5s after it, check latency still fails: 0.3 > max 0.05; check errors passes"}},
		{name: "failed, then no data: still not recovered", s: snap(at(6), failedThenNoData, pass(0.01)), now: at(5.2),
			kind: moveDecide, record: audit.RollbackUnhelpful, outcome: audit.VerifyNotRecovered,
			reasonHas: []string{"check errors failed, then: no data"}},
		{name: "no data all along: could not be verified", s: snap(at(6), noData, noData), now: at(5.2),
			kind: moveDecide, record: audit.RollbackUnhelpful, outcome: audit.VerifyUnverified,
			reasonHas: []string{"the rollback could not be verified: in the 5s after it", "check errors had no usable measurement (inconclusive 3, error 0): no data"}},
		{name: "one recovered, the other never seen: could not be verified", s: snap(at(6), pass(0.01), noData), now: at(5.2),
			kind: moveDecide, record: audit.RollbackUnhelpful, outcome: audit.VerifyUnverified,
			reasonHas: []string{"check errors passes: 0.01", "check latency had no usable measurement"}},
		{name: "resumed after within: the missed measurements caught up", s: func() runSnapshot {
			s := snap(at(2), pass(0.01), fail(0.3, "0.3 > max 0.05"))
			s.Since, s.DueThen = at(20), at(2)
			return s
		}(), now: at(20), kind: moveMeasure, at: at(2)},
		{name: "out of time: the rest skipped, unhelpful", s: snap(at(4), fail(0.3, "0.3 > max 0.05"), pass(0.01)), now: at(6.5),
			kind: moveDecide, record: audit.RollbackUnhelpful, outcome: audit.VerifyNotRecovered,
			reasonHas: []string{"did not help", "2 measurements from"}},
		{name: "a deploy after the rollback supersedes it", s: func() runSnapshot {
			s := snap(at(2), pass(0.01), fail(0.3, "x"))
			s.SupersededBy = &events.Deploy{ID: "d-3", Version: "v3"}
			return s
		}(), now: at(1.5), kind: moveDecide, record: audit.RunSuperseded,
			reasonHas: []string{"verification of the rollback stopped: deploy d-3 of version v3 came after it"}},
		{name: "decided: nothing", s: func() runSnapshot { s := snap(at(2)); s.Verdict = verdictVerified; return s }(), now: at(3),
			kind: moveDone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mv := nextVerifyMove(tc.s, p, tc.now)
			if mv.kind != tc.kind || !mv.at.Equal(tc.at) || mv.record != tc.record || mv.outcome != tc.outcome {
				t.Fatalf("move %s at %s, record %q, outcome %q (%s); want %s at %s, %q, %q",
					mv.kind, mv.at.Sub(t0), mv.record, mv.outcome, mv.reason, tc.kind, tc.at.Sub(t0), tc.record, tc.outcome)
			}
			if mv.rollback {
				t.Error("a verification asks for a rollback")
			}
			for _, s := range tc.reasonHas {
				if !strings.Contains(mv.reason, s) {
					t.Errorf("reason %q does not say %q", mv.reason, s)
				}
			}
		})
	}
}

// TestVerifyPolicy: a verification measures the checks that failed its run
// and nothing else, for rollback.verify.within, after initial_delay (at most
// within), without the run's score.
func TestVerifyPolicy(t *testing.T) {
	full := &policy.Policy{Name: "p", Window: model.Duration(10 * time.Minute), Interval: model.Duration(30 * time.Second),
		InitialDelay: model.Duration(time.Minute), Score: &policy.Score{Pass: 80, Marginal: 50},
		Checks:   []*policy.Check{{Name: "errors"}, {Name: "latency"}, {Name: "orders"}},
		Rollback: policy.Rollback{Verify: &policy.Verify{Within: model.Duration(5 * time.Minute)}}}
	p, err := verifyPolicy(full, []string{"orders", "errors"})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Checks) != 2 || p.Checks[0] != full.Checks[2] || p.Checks[1] != full.Checks[0] {
		t.Errorf("checks %v, want orders and errors", p.Checks)
	}
	if p.Window != model.Duration(5*time.Minute) || p.InitialDelay != model.Duration(time.Minute) || p.Score != nil || p.Interval != full.Interval {
		t.Errorf("window %s, initial_delay %s, score %v, interval %s", p.Window, p.InitialDelay, p.Score, p.Interval)
	}
	if full.Window != model.Duration(10*time.Minute) || len(full.Checks) != 3 || full.Score == nil {
		t.Error("the run's policy was changed")
	}
	full.Rollback.Verify.Within = model.Duration(30 * time.Second)
	if p, _ := verifyPolicy(full, []string{"orders"}); p.InitialDelay != model.Duration(30*time.Second) {
		t.Errorf("initial_delay %s with within 30s, want 30s", p.InitialDelay)
	}
	for _, checks := range [][]string{{"gone"}, nil} {
		if _, err := verifyPolicy(full, checks); err == nil {
			t.Errorf("checks %v: no error", checks)
		}
	}
	full.Rollback.Verify = nil
	if _, err := verifyPolicy(full, []string{"orders"}); err == nil {
		t.Error("a policy without rollback.verify: no error")
	}
}
