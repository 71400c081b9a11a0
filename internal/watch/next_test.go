package watch

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// TestNextMove: what a run does next, as a table over the pure decision
// (no NATS, no Prometheus). The window is 10s from t0 with a 1s interval,
// a 1s query timeout and a 2s initial_delay: measurements from t0+2s to
// t0+10s, out of time at t0+11s.
func TestNextMove(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	limit := func(n int) *int { return &n }
	errorsCheck := func() *policy.Check { return &policy.Check{Name: "errors", FailureLimit: 1} }
	pol := func(onInconclusive string, checks ...*policy.Check) *policy.Policy {
		return &policy.Policy{Name: "p", Window: model.Duration(10 * time.Second), Interval: model.Duration(time.Second),
			InitialDelay: model.Duration(2 * time.Second), OnInconclusive: onInconclusive, Checks: checks}
	}
	keep := pol(policy.OnInconclusiveKeep, errorsCheck())
	rollback := pol(policy.OnInconclusiveRollback, errorsCheck())
	blindLimits := func(onInconclusive string) *policy.Policy {
		c := errorsCheck()
		c.InconclusiveLimit, c.ConsecutiveErrorLimit = limit(2), limit(3)
		return pol(onInconclusive, c)
	}
	withDryRun := func() *policy.Policy {
		dry := &policy.Check{Name: "latency", DryRun: true}
		return pol(policy.OnInconclusiveRollback, errorsCheck(), dry)
	}
	twoChecks := func(onInconclusive string) *policy.Policy {
		return pol(onInconclusive, errorsCheck(), &policy.Check{Name: "latency"})
	}
	// snap is a run taken up at its start, its next measurement next.
	snap := func(next time.Time, tallies ...policy.Tally) runSnapshot {
		s := runSnapshot{Start: t0, Since: t0, DueThen: at(2), Next: next, QueryTimeout: time.Second, Verdict: VerdictPending}
		for _, tl := range tallies {
			s.Checks = append(s.Checks, checkProgress{Tally: tl})
		}
		return s
	}
	measured := func(s runSnapshot) runSnapshot { s.Measured = true; return s }
	last := func(s runSnapshot, reason string) runSnapshot { s.Checks[0].Last = reason; return s }
	healthy := policy.Tally{Pass: 9}

	for _, tc := range []struct {
		name string
		p    *policy.Policy
		s    runSnapshot
		now  time.Time

		kind       moveKind
		at         time.Time
		budget     time.Duration
		verdict    string
		record     string
		rollback   bool
		checks     []int
		detail     audit.VerdictDetail
		reasonHas  []string
		reasonNot  []string
		reasonFull string
	}{
		// The clock.
		{name: "before initial_delay: wait for the first measurement", p: keep, s: snap(at(2), policy.Tally{}), now: at(0.5),
			kind: moveWait, at: at(2)},
		{name: "due: measure at its time", p: keep, s: snap(at(2), policy.Tally{}), now: at(2),
			kind: moveMeasure, at: at(2), budget: time.Second},
		{name: "behind in the window: the missed measurement at its own time", p: keep, s: snap(at(3), policy.Tally{Pass: 1}), now: at(6.5),
			kind: moveMeasure, at: at(3), budget: time.Second},
		{name: "the last timeout shortens the budget", p: keep, s: snap(at(9), policy.Tally{Pass: 7}), now: at(10.4),
			kind: moveMeasure, at: at(9), budget: 600 * time.Millisecond},
		{name: "measured, within the limits: wait for the next", p: keep, s: measured(snap(at(5), policy.Tally{Pass: 2, Fail: 1})), now: at(4.1),
			kind: moveWait, at: at(5)},
		{name: "measured while behind: back to the scheduler, not measured again at once", p: keep, s: measured(snap(at(4), policy.Tally{Pass: 2})), now: at(7),
			kind: moveWait, at: at(4)},
		{name: "measured the last: wait for the window's end", p: keep, s: measured(snap(at(11), healthy)), now: at(10),
			kind: moveWait, at: at(10)},
		{name: "waiting for the window's end before it", p: keep, s: snap(at(11), healthy), now: at(9.5),
			kind: moveWait, at: at(10)},

		// The checks.
		{name: "failed past failure_limit: decide failed and roll back at once", p: keep,
			s: last(measured(snap(at(5), policy.Tally{Pass: 1, Fail: 2})), "errors = 0.2 > max 0.1"), now: at(4.1),
			kind: moveDecide, verdict: VerdictFailed, record: audit.RunFailed, rollback: true, checks: []int{0},
			reasonFull: "check errors failed: errors = 0.2 > max 0.1 (failure 2 of limit 1)"},
		{name: "a failure outranks the checks' doubt and the clock", p: blindLimits(policy.OnInconclusiveKeep),
			s: measured(snap(at(11), policy.Tally{Fail: 2, Error: 5, ConsecutiveErrors: 5})), now: at(12),
			kind: moveDecide, verdict: VerdictFailed, record: audit.RunFailed, rollback: true, checks: []int{0},
			reasonHas: []string{"check errors failed (failure 2 of limit 1)"}},
		{name: "past inconclusive_limit, on_inconclusive keep: measure on", p: blindLimits(policy.OnInconclusiveKeep),
			s: measured(snap(at(6), policy.Tally{Pass: 1, Inconclusive: 3})), now: at(5.1),
			kind: moveWait, at: at(6)},
		{name: "past inconclusive_limit, on_inconclusive rollback: decide and roll back at once", p: blindLimits(policy.OnInconclusiveRollback),
			s: last(measured(snap(at(6), policy.Tally{Pass: 1, Inconclusive: 3})), "errors: no data"), now: at(5.1),
			kind: moveDecide, verdict: VerdictInconclusive, record: audit.RunInconclusive, rollback: true, checks: []int{0},
			reasonFull: "check errors is inconclusive: inconclusive 3 of limit 2; last: errors: no data; on_inconclusive: rollback"},
		{name: "past consecutive_error_limit, on_inconclusive keep: decide at once, keep", p: blindLimits(policy.OnInconclusiveKeep),
			s: measured(snap(at(7), policy.Tally{Pass: 1, Error: 4, ConsecutiveErrors: 4})), now: at(6.1),
			kind: moveDecide, verdict: VerdictInconclusive, record: audit.RunInconclusive, checks: []int{0},
			detail:     audit.VerdictDetail{OnInconclusive: policy.OnInconclusiveKeep},
			reasonFull: "check errors is inconclusive: 4 query errors in a row, limit 3; on_inconclusive: keep, nothing rolled back"},
		{name: "six query errors but three in a row, within consecutive_error_limit: measure on", p: blindLimits(policy.OnInconclusiveKeep),
			s: measured(snap(at(7), policy.Tally{Pass: 1, Error: 6, ConsecutiveErrors: 3})), now: at(6.1),
			kind: moveWait, at: at(7)},
		{name: "consecutive_error_limit names the streak before inconclusive_limit", p: blindLimits(policy.OnInconclusiveRollback),
			s: measured(snap(at(7), policy.Tally{Inconclusive: 3, Error: 4, ConsecutiveErrors: 4})), now: at(6.1),
			kind: moveDecide, verdict: VerdictInconclusive, record: audit.RunInconclusive, rollback: true, checks: []int{0},
			reasonHas: []string{"4 query errors in a row, limit 3"}, reasonNot: []string{"inconclusive 3 of limit 2"}},
		{name: "a dry-run check past its limits never decides", p: withDryRun(),
			s: measured(snap(at(5), policy.Tally{Pass: 3}, policy.Tally{Fail: 3, Inconclusive: 9})), now: at(4.1),
			kind: moveWait, at: at(5)},

		// The window's end.
		{name: "window closed healthy: passed", p: keep, s: snap(at(11), healthy), now: at(10),
			kind: moveDecide, verdict: VerdictPassed, record: audit.RunPassed,
			reasonFull: "window closed healthy: errors pass 9 fail 0"},
		{name: "window closed with inconclusive measurements under no limit: passed, with the counts", p: keep,
			s: snap(at(11), policy.Tally{Pass: 7, Inconclusive: 1, Error: 1}), now: at(10.2),
			kind: moveDecide, verdict: VerdictPassed, record: audit.RunPassed,
			reasonFull: "window closed healthy: errors pass 7 fail 0 inconclusive 1 error 1"},
		{name: "window closed, a check never measured validly: inconclusive, keep", p: twoChecks(policy.OnInconclusiveKeep),
			s: snap(at(11), healthy, policy.Tally{Inconclusive: 9}), now: at(10),
			kind: moveDecide, verdict: VerdictInconclusive, record: audit.RunInconclusive, checks: []int{1},
			detail:     audit.VerdictDetail{OnInconclusive: policy.OnInconclusiveKeep},
			reasonFull: "check latency is inconclusive: no usable measurement (inconclusive 9, error 0); on_inconclusive: keep, nothing rolled back"},
		{name: "window closed, a check never measured validly, on_inconclusive rollback", p: twoChecks(policy.OnInconclusiveRollback),
			s: snap(at(11), healthy, policy.Tally{Error: 9}), now: at(10),
			kind: moveDecide, verdict: VerdictInconclusive, record: audit.RunInconclusive, rollback: true, checks: []int{1},
			reasonHas: []string{"no usable measurement (inconclusive 0, error 9)", "on_inconclusive: rollback"}},
		{name: "window closed, a dry-run check never measured: passed", p: withDryRun(),
			s: snap(at(11), healthy, policy.Tally{Inconclusive: 9}), now: at(10),
			kind: moveDecide, verdict: VerdictPassed, record: audit.RunPassed,
			reasonFull: "window closed healthy: errors pass 9 fail 0, latency pass 0 fail 0 inconclusive 9 error 0 (dry-run)"},

		// Out of time.
		{name: "catch-up out of time: the rest skipped, inconclusive", p: keep, s: snap(at(8), policy.Tally{Pass: 6}), now: at(11),
			kind: moveDecide, verdict: VerdictInconclusive, record: audit.RunInconclusive, checks: []int{0},
			detail: audit.VerdictDetail{OnInconclusive: policy.OnInconclusiveKeep, SkippedMeasurements: 3},
			reasonHas: []string{"not passed: 3 measurements from " + at(8).UTC().Format(time.RFC3339Nano) + " skipped: Prometheus answered too slowly",
				"what was measured is within the checks' limits: errors pass 6 fail 0", "on_inconclusive: keep"}},
		{name: "catch-up out of time, on_inconclusive rollback", p: rollback, s: snap(at(8), policy.Tally{Pass: 6}), now: at(11),
			kind: moveDecide, verdict: VerdictInconclusive, record: audit.RunInconclusive, rollback: true, checks: []int{0},
			detail:    audit.VerdictDetail{SkippedMeasurements: 3},
			reasonHas: []string{"not passed: 3 measurements", "on_inconclusive: rollback"}},
		{name: "a sliver of budget: skipped, not queried", p: keep, s: snap(at(10), policy.Tally{Pass: 8}), now: at(10.95),
			kind: moveDecide, verdict: VerdictInconclusive, record: audit.RunInconclusive, checks: []int{0},
			detail:    audit.VerdictDetail{OnInconclusive: policy.OnInconclusiveKeep, SkippedMeasurements: 1},
			reasonHas: []string{"not passed: 1 measurements from"}},
		{name: "out of time with nothing left to measure: passed", p: keep, s: snap(at(11), healthy), now: at(12),
			kind: moveDecide, verdict: VerdictPassed, record: audit.RunPassed,
			reasonFull: "window closed healthy: errors pass 9 fail 0"},
		{name: "out of time and blind: the skipped measurements follow the checks' reason", p: twoChecks(policy.OnInconclusiveKeep),
			s: snap(at(9), policy.Tally{Pass: 6}, policy.Tally{Error: 6}), now: at(11),
			kind: moveDecide, verdict: VerdictInconclusive, record: audit.RunInconclusive, checks: []int{1},
			detail: audit.VerdictDetail{OnInconclusive: policy.OnInconclusiveKeep, SkippedMeasurements: 2},
			reasonFull: "check latency is inconclusive: no usable measurement (inconclusive 0, error 6); 2 measurements from " +
				at(9).UTC().Format(time.RFC3339Nano) + " skipped: Prometheus answered too slowly to catch up within one query timeout (1s) of the window's end; on_inconclusive: keep, nothing rolled back"},
		{name: "cut by the deadline: that measurement and the rest skipped", p: keep,
			s: func() runSnapshot { s := measured(snap(at(10), policy.Tally{Pass: 7})); s.Cut = true; return s }(), now: at(10.99),
			kind: moveDecide, verdict: VerdictInconclusive, record: audit.RunInconclusive, checks: []int{0},
			detail:    audit.VerdictDetail{OnInconclusive: policy.OnInconclusiveKeep, SkippedMeasurements: 2},
			reasonHas: []string{"not passed: 2 measurements from " + at(9).UTC().Format(time.RFC3339Nano) + " skipped"}},
		{name: "resumed after the window: catch up the missed measurements", p: keep,
			s: func() runSnapshot {
				s := snap(at(4), policy.Tally{Pass: 2})
				s.Since, s.DueThen = at(29.5), at(4)
				return s
			}(), now: at(30),
			kind: moveMeasure, at: at(4), budget: time.Second},
		{name: "resumed after the window, out of time: the watcher was down", p: keep,
			s: func() runSnapshot {
				s := snap(at(8), policy.Tally{Pass: 6})
				s.Since, s.DueThen = at(29.5), at(4)
				return s
			}(), now: at(36.5),
			kind: moveDecide, verdict: VerdictInconclusive, record: audit.RunInconclusive, checks: []int{0},
			detail:    audit.VerdictDetail{OnInconclusive: policy.OnInconclusiveKeep, SkippedMeasurements: 3},
			reasonHas: []string{"3 measurements from " + at(8).UTC().Format(time.RFC3339Nano) + " skipped: the watcher was down until " + at(29.5).UTC().Format(time.RFC3339Nano)}},

		// Ended from outside, or already.
		{name: "superseded: decide superseded, no rollback", p: rollback,
			s: func() runSnapshot {
				s := snap(at(5), policy.Tally{Fail: 5})
				s.SupersededBy = &events.Deploy{ID: "d2", Version: "v3"}
				return s
			}(), now: at(5),
			kind: moveDecide, verdict: VerdictSuperseded, record: audit.RunSuperseded,
			detail:     audit.VerdictDetail{SupersededBy: &audit.SupersededBy{DeployID: "d2", Version: "v3"}},
			reasonFull: "superseded by deploy d2 of version v3: its own run validates what is deployed now"},
		{name: "decided: nothing left to judge", p: keep,
			s: func() runSnapshot { s := snap(at(11), policy.Tally{Fail: 2}); s.Verdict = VerdictFailed; return s }(), now: at(12),
			kind: moveDone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := nextMove(tc.s, tc.p, tc.now)
			if got.kind != tc.kind {
				t.Fatalf("move %s (%+v), want %s", got.kind, got, tc.kind)
			}
			if !got.at.Equal(tc.at) || got.budget != tc.budget {
				t.Errorf("at t0+%s budget %s, want t0+%s budget %s", got.at.Sub(t0), got.budget, tc.at.Sub(t0), tc.budget)
			}
			if got.kind == moveMeasure && got.timeout != time.Second {
				t.Errorf("timeout %s, want the 1s query timeout", got.timeout)
			}
			if got.verdict != tc.verdict || got.record != tc.record || got.rollback != tc.rollback {
				t.Errorf("verdict %q record %q rollback %v, want %q %q %v", got.verdict, got.record, got.rollback, tc.verdict, tc.record, tc.rollback)
			}
			if !reflect.DeepEqual(got.checks, tc.checks) {
				t.Errorf("deciding checks %v, want %v", got.checks, tc.checks)
			}
			if !reflect.DeepEqual(got.detail, tc.detail) {
				t.Errorf("detail %v, want %v", got.detail, tc.detail)
			}
			if tc.reasonFull != "" && got.reason != tc.reasonFull {
				t.Errorf("reason\n  %q\nwant\n  %q", got.reason, tc.reasonFull)
			}
			for _, s := range tc.reasonHas {
				if !strings.Contains(got.reason, s) {
					t.Errorf("reason %q does not say %q", got.reason, s)
				}
			}
			for _, s := range tc.reasonNot {
				if strings.Contains(got.reason, s) {
					t.Errorf("reason %q says %q", got.reason, s)
				}
			}
		})
	}
}

// TestNextMoveScored: a scored policy (README "Scores") fails at once on a
// critical check or below marginal, leaves inconclusive and dry-run checks
// out, and at the window's end passes, ends marginal (on_marginal) or fails
// by its score.
func TestNextMoveScored(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	check := func(name string, weight float64, critical bool) *policy.Check {
		return &policy.Check{Name: name, Weight: weight, Critical: critical}
	}
	// errors (3, critical), latency (2), orders (2), apdex (1): 8 in all.
	pol := func(onMarginal string) *policy.Policy {
		return &policy.Policy{Name: "p", Window: model.Duration(10 * time.Second), Interval: model.Duration(time.Second),
			InitialDelay: model.Duration(2 * time.Second), OnInconclusive: policy.OnInconclusiveKeep,
			Score: &policy.Score{Pass: 80, Marginal: 50}, OnMarginal: onMarginal,
			Checks: []*policy.Check{check("errors", 3, true), check("latency", 2, false), check("orders", 2, false), check("apdex", 1, false)}}
	}
	keep, rollback, ask := pol(policy.OnMarginalKeep), pol(policy.OnMarginalRollback), pol(policy.OnMarginalAsk)
	ok, failed, blind, none := policy.Tally{Pass: 9}, policy.Tally{Pass: 5, Fail: 1}, policy.Tally{Inconclusive: 9}, policy.Tally{}
	snap := func(next time.Time, measured bool, tallies ...policy.Tally) runSnapshot {
		s := runSnapshot{Start: t0, Since: t0, DueThen: at(2), Next: next, QueryTimeout: time.Second, Verdict: VerdictPending, Measured: measured}
		for _, tl := range tallies {
			s.Checks = append(s.Checks, checkProgress{Tally: tl})
		}
		return s
	}
	for _, tc := range []struct {
		name     string
		p        *policy.Policy
		s        runSnapshot
		now      time.Time
		kind     moveKind
		verdict  string
		record   string
		rollback bool
		ask      bool
		checks   []int
		score    float64 // of the verdict's detail; -1: none
		reason   []string
	}{
		{name: "a non-critical failure above marginal: measure on", p: keep,
			s: snap(at(5), true, ok, failed, ok, ok), now: at(4.1), kind: moveWait, score: -1},
		{name: "a critical failure fails at once whatever the score", p: keep,
			s: snap(at(5), true, failed, ok, ok, ok), now: at(4.1), kind: moveDecide,
			verdict: VerdictFailed, record: audit.RunFailed, rollback: true, checks: []int{0}, score: 62.5,
			reason: []string{"check errors failed", "a critical check fails the run whatever the score (score 62.5 (weight 5 of 8 not failed)"}},
		{name: "below marginal fails at once", p: keep,
			s: snap(at(5), true, ok, failed, failed, failed), now: at(4.1), kind: moveDecide,
			verdict: VerdictFailed, record: audit.RunFailed, rollback: true, checks: []int{1, 2, 3}, score: 37.5,
			reason: []string{"score 37.5 below marginal 50: check latency failed"}},
		{name: "at marginal exactly: measure on", p: keep,
			s: snap(at(5), true, ok, failed, failed, ok), now: at(4.1), kind: moveWait, score: -1},
		{name: "at the end, >= pass: passed", p: keep,
			s: snap(at(11), false, ok, ok, ok, failed), now: at(10), kind: moveDecide,
			verdict: VerdictPassed, record: audit.RunPassed, score: 87.5,
			reason: []string{"window closed with score 87.5 >= pass 80", "check apdex failed"}},
		{name: "at the end, marginal, on_marginal keep", p: keep,
			s: snap(at(11), false, ok, failed, ok, ok), now: at(10), kind: moveDecide,
			verdict: VerdictMarginal, record: audit.RunMarginal, checks: []int{1}, score: 75,
			reason: []string{"window closed marginal, score 75 below pass 80 and >= marginal 50", "on_marginal: keep, nothing rolled back"}},
		{name: "at the end, marginal, on_marginal rollback", p: rollback,
			s: snap(at(11), false, ok, failed, ok, ok), now: at(10), kind: moveDecide,
			verdict: VerdictMarginal, record: audit.RunMarginal, rollback: true, checks: []int{1}, score: 75,
			reason: []string{"on_marginal: rollback"}},
		{name: "at the end, marginal, on_marginal ask: a rollback that asks", p: ask,
			s: snap(at(11), false, ok, failed, ok, ok), now: at(10), kind: moveDecide,
			verdict: VerdictMarginal, record: audit.RunMarginal, rollback: true, ask: true, checks: []int{1}, score: 75,
			reason: []string{"on_marginal: ask, the rollback waits for `watcher approve`"}},
		{name: "below marginal under on_marginal ask: a rollback that does not ask", p: ask,
			s: snap(at(5), true, ok, failed, failed, failed), now: at(4.1), kind: moveDecide,
			verdict: VerdictFailed, record: audit.RunFailed, rollback: true, checks: []int{1, 2, 3}, score: 37.5,
			reason: []string{"score 37.5 below marginal 50"}},
		{name: "inconclusive and unmeasured checks are left out", p: keep,
			s: snap(at(11), false, ok, blind, none, failed), now: at(10), kind: moveDecide,
			verdict: VerdictPassed, record: audit.RunPassed, score: 75, rollback: false,
			reason: []string{"window closed with score 75 >= pass 75", "left out: latency unjudged, orders unjudged"}},
		{name: "no check judged: inconclusive", p: keep,
			s: snap(at(11), false, blind, blind, none, none), now: at(10), kind: moveDecide,
			verdict: VerdictInconclusive, record: audit.RunInconclusive, checks: []int{0, 1, 2, 3}, score: -1,
			reason: []string{"check errors is inconclusive"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Weight 3 of 4 judged is 75: that case passes at pass 75.
			p := tc.p
			if strings.HasPrefix(tc.name, "inconclusive and unmeasured") {
				cp := *p
				cp.Score = &policy.Score{Pass: 75, Marginal: 50}
				p = &cp
			}
			got := nextMove(tc.s, p, tc.now)
			if got.kind != tc.kind || got.verdict != tc.verdict || got.record != tc.record || got.rollback != tc.rollback || got.ask != tc.ask {
				t.Fatalf("move %s verdict %q record %q rollback %v ask %v (%s), want %s %q %q %v %v",
					got.kind, got.verdict, got.record, got.rollback, got.ask, got.reason, tc.kind, tc.verdict, tc.record, tc.rollback, tc.ask)
			}
			if !reflect.DeepEqual(got.checks, tc.checks) {
				t.Errorf("deciding checks %v, want %v", got.checks, tc.checks)
			}
			switch sc := got.detail.Score; {
			case tc.score < 0 && sc != nil:
				t.Errorf("detail has a score %+v, want none", sc)
			case tc.score >= 0 && (sc == nil || sc.Score != tc.score):
				t.Errorf("detail score %+v, want %v", sc, tc.score)
			}
			for _, s := range tc.reason {
				if !strings.Contains(got.reason, s) {
					t.Errorf("reason %q does not say %q", got.reason, s)
				}
			}
		})
	}
}
