package watch

import (
	"fmt"
	"strings"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// What a run does next is worked out here, and only here: nextMove is a
// pure function of what the run knows (runSnapshot), its policy and the
// time. The watcher's step (decide.go) asks it and carries the move out:
// querying, recording, publishing and storing stay there, so every rule of
// the verdict can be tested by a table without NATS or Prometheus.

// moveKind is what a run does next.
type moveKind int

const (
	// moveWait: nothing to do before at; the scheduler hands the run back
	// then.
	moveWait moveKind = iota
	// moveMeasure: measure every check at at, the queries taking at most
	// budget.
	moveMeasure
	// moveDecide: the run is decided; verdict, record, reason and detail
	// say how and why.
	moveDecide
	// moveDone: the run was decided already; there is nothing left to
	// judge.
	moveDone
)

func (k moveKind) String() string {
	switch k {
	case moveWait:
		return "wait"
	case moveMeasure:
		return "measure"
	case moveDecide:
		return "decide"
	case moveDone:
		return "done"
	}
	return fmt.Sprintf("moveKind(%d)", int(k))
}

// move is nextMove's answer.
type move struct {
	kind moveKind
	at   time.Time // wait: until when; measure: the evaluation time

	// measure: how long the queries may take (budget), and the query
	// timeout it was cut from, which names a query that outlasted it.
	budget, timeout time.Duration

	// decide
	verdict  string // Verdict*
	record   string // audit kind of the verdict record
	reason   string // the verdict's reason, with the numbers that decided
	rollback bool   // the verdict asks for a rollback
	ask      bool   // the rollback waits for a person's answer (on_marginal: ask)
	// checks are the policy's checks (by index) that decided a failed or
	// inconclusive run; the verdict record details them.
	checks []int
	// detail is what else the verdict record carries: skipped
	// measurements, on_inconclusive, the deploy that superseded the run.
	detail audit.VerdictDetail
	// outcome is a verification's (audit.Verify*).
	outcome string
}

// runSnapshot is what nextMove needs to know of a run.
type runSnapshot struct {
	Start   time.Time // when the window opened
	Since   time.Time // when this process took the run up
	DueThen time.Time // the next measurement when it was taken up
	Next    time.Time // the next measurement due

	// QueryTimeout is prometheus.timeout (zero: the interval).
	QueryTimeout time.Duration

	Verdict      string         // VerdictPending until decided
	SupersededBy *events.Deploy // the newer deploy that stopped the run

	// Checks are the tallies of the policy's checks, in the policy's order.
	Checks []checkProgress

	// Measured says this step has taken its measurement (the one before
	// Next). The run then goes back to the scheduler unless its checks
	// decide it: other runs due at the same time get their turn, and a
	// newer deploy superseding it is seen, before its next move by the
	// clock.
	Measured bool
	// Cut says that measurement's queries were cut by the run's catch-up
	// deadline: it and the rest of the window are not taken.
	Cut bool
}

// checkProgress is a check's measurements so far.
type checkProgress struct {
	Tally   policy.Tally
	Last    string // why the last measurement came out as it did
	Outcome string // the last measurement's outcome, "" before one
	Judged  string // the outcome of the last pass or fail, "" before one
	// Value and Threshold are the last measurement's.
	Value     *float64
	Threshold string
}

// nextMove says what the run in s, validated against p, does at now:
//
//   - decided already: nothing (moveDone);
//   - superseded by a newer deploy: decide superseded;
//   - a check (not dry-run) past its failure_limit: decide failed, and
//     roll back at once, not at the window's end;
//   - its last measurement cut by the run's deadline: decide at once, the
//     rest of the window skipped (closeMove);
//   - a check past its inconclusive_limit when on_inconclusive is
//     rollback, or past its consecutive_error_limit: decide inconclusive
//     at once (measuring on would hammer a Prometheus that is down, and a
//     pass after the streak would reset the count it is judged by); past
//     an inconclusive limit with on_inconclusive keep, the run measures on,
//     since a failure later in the window still fails it;
//   - just measured: wait for the next measurement, or for the window's
//     end when that was the last;
//   - the window closed, or out of time to catch up (catchUp): decide
//     (closeMove);
//   - otherwise measure at the next measurement's time, or wait for it.
func nextMove(s runSnapshot, p *policy.Policy, now time.Time) move {
	if s.Verdict != "" && s.Verdict != VerdictPending {
		return move{kind: moveDone}
	}
	if by := s.SupersededBy; by != nil {
		return move{kind: moveDecide, verdict: VerdictSuperseded, record: audit.RunSuperseded,
			reason: fmt.Sprintf("superseded by deploy %s of version %s: its own run validates what is deployed now", by.ID, by.Version),
			detail: audit.VerdictDetail{SupersededBy: &audit.SupersededBy{DeployID: by.ID, Version: by.Version}}}
	}
	_, interval, end := window(p, s.Start)
	timeout := queryTimeout(s.QueryTimeout, interval)
	deadline, missed := catchUpDeadline(end, s.Since, s.DueThen, interval, timeout)
	// why says why measurements are skipped, should the run run out of
	// time: a resumed run whose deadline its catch-up set had missed
	// measurements while its watcher was down.
	why := fmt.Sprintf("Prometheus answered too slowly to catch up within one query timeout (%s) of the window's end", timeout)
	if deadline.After(end.Add(timeout)) {
		why = fmt.Sprintf("the watcher was down until %s, and Prometheus answered too slowly to catch up the %d measurements it missed within %s (the query timeout, %s, per missed measurement, at most %s)",
			s.Since.UTC().Format(time.RFC3339Nano), missed, deadline.Sub(s.Since).Round(time.Millisecond), timeout, maxCatchUp)
	}

	var failed, blind []int
	for i, c := range p.Checks {
		if c.DryRun {
			continue // measured and recorded, never deciding
		}
		switch c.State(s.Checks[i].Tally) {
		case policy.CheckFailed:
			failed = append(failed, i)
		case policy.CheckInconclusive:
			blind = append(blind, i)
		}
	}
	if p.Score != nil {
		// A scored run fails at once on a critical check, or when its
		// score falls below marginal; other failures wait for the score
		// at the window's end.
		sc := scoreOf(s, p)
		if mv, ok := sc.failNow(s, p); ok {
			return mv
		}
		failed = nil
	}
	switch {
	case len(failed) > 0:
		return move{kind: moveDecide, verdict: VerdictFailed, record: audit.RunFailed,
			reason: failReason(s, p, failed), rollback: true, checks: failed}
	case s.Cut:
		from := s.Next.Add(-interval)
		return closeMove(s, p, skipped{n: int(end.Sub(from)/interval) + 1, from: from, why: why})
	case len(blind) > 0 && (p.OnInconclusive == policy.OnInconclusiveRollback || pastErrorLimit(s, p, blind)):
		return inconclusiveMove(p, blindReason(s, p, blind), blind, audit.VerdictDetail{})
	case s.Measured && s.Next.After(end):
		// Wait for the window to close: a last measurement may come
		// before it.
		return move{kind: moveWait, at: end}
	case s.Measured:
		return move{kind: moveWait, at: s.Next}
	}

	return measureOrClose(s, now, end, deadline, interval, timeout, func(sk skipped) move {
		sk.why = why
		return closeMove(s, p, sk)
	})
}

// measureOrClose is the move of a run (or a verification) whose next
// measurement, at s.Next, has not been taken: wait for it, take it with
// the time left, or, past the window or out of time to catch up, close
// with what could not be measured.
func measureOrClose(s runSnapshot, now, end, deadline time.Time, interval, timeout time.Duration, close func(skipped) move) move {
	budget, skip := catchUp(now, s.Next, end, deadline, interval, timeout)
	switch {
	case s.Next.After(end) && now.Before(end):
		return move{kind: moveWait, at: end}
	case s.Next.After(end) || skip > 0:
		return close(skipped{n: skip, from: s.Next})
	case now.Before(s.Next):
		return move{kind: moveWait, at: s.Next}
	}
	return move{kind: moveMeasure, at: s.Next, budget: budget, timeout: timeout}
}

// skipped is what a run decided out of time could not measure.
type skipped struct {
	n    int       // measurements not taken
	from time.Time // the first of them
	why  string    // why they could not be taken
}

// closeMove decides a run whose window has closed without a failure, or
// that is out of time with sk.n measurements not taken. A check that never
// got a usable value, or went past an inconclusive or error limit, makes
// the run inconclusive: no data is never silently healthy. Dry-run checks
// are measured and recorded, and never decide.
func closeMove(s runSnapshot, p *policy.Policy, sk skipped) move {
	var blind []int
	for i, c := range p.Checks {
		if !c.DryRun && c.EndState(s.Checks[i].Tally) != policy.CheckOK {
			blind = append(blind, i)
		}
	}
	var what string
	detail := audit.VerdictDetail{SkippedMeasurements: sk.n}
	if sk.n > 0 {
		what = fmt.Sprintf("%d measurements from %s skipped: %s", sk.n, sk.from.UTC().Format(time.RFC3339Nano), sk.why)
	}
	if p.Score != nil && sk.n == 0 {
		// Inconclusive checks are left out of a score; only a run with
		// no check judged at all is inconclusive.
		if sc := scoreOf(s, p); sc.judged > 0 {
			return sc.closeMove(s, p)
		}
	}
	if len(blind) > 0 {
		reason := blindReason(s, p, blind)
		if sk.n > 0 {
			reason += "; " + what
		}
		return inconclusiveMove(p, reason, blind, detail)
	}
	var parts []string
	for i, c := range p.Checks {
		t := s.Checks[i].Tally
		part := fmt.Sprintf("%s pass %d fail %d", c.Name, t.Pass, t.Fail)
		if n := t.Inconclusive + t.Error; n > 0 {
			part += fmt.Sprintf(" inconclusive %d error %d", t.Inconclusive, t.Error)
		}
		if c.DryRun {
			part += " (dry-run)"
		}
		parts = append(parts, part)
	}
	counts := strings.Join(parts, ", ")
	if sk.n == 0 {
		return move{kind: moveDecide, verdict: VerdictPassed, record: audit.RunPassed, reason: "window closed healthy: " + counts}
	}
	// What was measured was healthy, but the rest of the window was not
	// seen: a deploy that went bad while its watcher was down (or its
	// Prometheus too slow) must not pass on the data from before. The run
	// is inconclusive, and on_inconclusive applies.
	for i, c := range p.Checks {
		if !c.DryRun {
			blind = append(blind, i)
		}
	}
	return inconclusiveMove(p, "not passed: "+what+"; what was measured is within the checks' limits: "+counts, blind, detail)
}

// inconclusiveMove decides a run inconclusive; the policy's on_inconclusive
// says whether that rolls back (keep, the default, does not: doubt alone is
// no reason to undo a deploy unless the policy says so). detail is what
// the verdict record carries besides.
func inconclusiveMove(p *policy.Policy, reason string, blind []int, detail audit.VerdictDetail) move {
	mv := move{kind: moveDecide, verdict: VerdictInconclusive, record: audit.RunInconclusive, checks: blind, detail: detail}
	if p.OnInconclusive == policy.OnInconclusiveRollback {
		mv.reason, mv.rollback = reason+"; on_inconclusive: rollback", true
		return mv
	}
	mv.reason = reason + "; on_inconclusive: keep, nothing rolled back"
	mv.detail.OnInconclusive = policy.OnInconclusiveKeep
	return mv
}

// failReason names the checks that decided a failed run, with their numbers.
func failReason(s runSnapshot, p *policy.Policy, failed []int) string {
	var parts []string
	for _, i := range failed {
		c, cp := p.Checks[i], s.Checks[i]
		part := fmt.Sprintf("check %s failed", c.Name)
		if cp.Last != "" {
			part += ": " + cp.Last
		}
		part += fmt.Sprintf(" (failure %d of limit %d)", cp.Tally.Fail, c.FailureLimit)
		parts = append(parts, part)
	}
	return strings.Join(parts, "; ")
}

// blindReason says why checks are inconclusive, with the counts that decided.
func blindReason(s runSnapshot, p *policy.Policy, blind []int) string {
	var parts []string
	for _, i := range blind {
		c, t := p.Checks[i], s.Checks[i].Tally
		var why string
		switch {
		case c.ConsecutiveErrorLimit != nil && t.ConsecutiveErrors > *c.ConsecutiveErrorLimit:
			why = fmt.Sprintf("%d query errors in a row, limit %d", t.ConsecutiveErrors, *c.ConsecutiveErrorLimit)
		case c.InconclusiveLimit != nil && t.Inconclusive > *c.InconclusiveLimit:
			why = fmt.Sprintf("inconclusive %d of limit %d", t.Inconclusive, *c.InconclusiveLimit)
		default:
			why = fmt.Sprintf("no usable measurement (inconclusive %d, error %d)", t.Inconclusive, t.Error)
		}
		if last := s.Checks[i].Last; last != "" {
			why += "; last: " + last
		}
		parts = append(parts, fmt.Sprintf("check %s is inconclusive: %s", c.Name, why))
	}
	return strings.Join(parts, "; ")
}

// pastErrorLimit reports whether one of the checks has had more query
// errors in a row than its consecutive_error_limit tolerates.
func pastErrorLimit(s runSnapshot, p *policy.Policy, checks []int) bool {
	for _, i := range checks {
		if l := p.Checks[i].ConsecutiveErrorLimit; l != nil && s.Checks[i].Tally.ConsecutiveErrors > *l {
			return true
		}
	}
	return false
}
