package watch

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// What a verification does next (README "Did the rollback help?"), as a
// pure function like nextMove: its policy p is its run's, reduced to the
// checks that decided the run, with window rollback.verify.within from the
// rollback's completion (verifyPolicy).

// Verdicts of a verification.
const (
	verdictVerified  = "verified"
	verdictUnhelpful = "unhelpful"
)

// nextVerifyMove says what the verification in s does at now:
//
//   - decided already: nothing;
//   - superseded by a deploy after the rollback: decide superseded (what
//     it would measure is that deploy, which its own run validates);
//   - just measured, and every check passed at that measurement: decide
//     verified (recovered);
//   - its last measurement cut by its deadline, or within's end reached
//     (or out of time to catch up): decide unhelpful (verifyClose);
//   - otherwise measure at the next measurement's time, or wait for it.
//
// One measurement at which every check passes is recovery: the checks
// are those that failed the run (more failures than their failure_limit),
// and they pass together, judged as the run judged them and against the
// same baselines. failure_limit and the other limits do not apply: no
// count of failures decides, only whether they recover within the time.
func nextVerifyMove(s runSnapshot, p *policy.Policy, now time.Time) move {
	if s.Verdict != "" && s.Verdict != VerdictPending {
		return move{kind: moveDone}
	}
	if by := s.SupersededBy; by != nil {
		return move{kind: moveDecide, verdict: VerdictSuperseded, record: audit.RunSuperseded,
			reason: fmt.Sprintf("verification of the rollback stopped: deploy %s of version %s came after it, and its own run validates what is deployed now", by.ID, by.Version),
			detail: audit.VerdictDetail{SupersededBy: &audit.SupersededBy{DeployID: by.ID, Version: by.Version}}}
	}
	_, interval, end := window(p, s.Start)
	timeout := queryTimeout(s.QueryTimeout, interval)
	deadline, _ := catchUpDeadline(end, s.Since, s.DueThen, interval, timeout)
	why := fmt.Sprintf("Prometheus answered too slowly to catch up within %s (the query timeout, %s, per measurement missed while no watcher measured)",
		deadline.Sub(s.Since).Round(time.Millisecond), timeout)

	switch {
	case s.Measured && !s.Cut && recovered(s):
		return move{kind: moveDecide, verdict: verdictVerified, record: audit.RollbackVerified, outcome: audit.VerifyRecovered,
			reason: fmt.Sprintf("the rollback helped: %s after it, every check that failed the run passes: %s",
				s.Next.Add(-interval).Sub(s.Start).Round(time.Millisecond), checksText(s, p, nil))}
	case s.Cut:
		from := s.Next.Add(-interval)
		return verifyClose(s, p, skipped{n: int(end.Sub(from)/interval) + 1, from: from, why: why})
	case s.Measured && s.Next.After(end):
		return move{kind: moveWait, at: end}
	case s.Measured:
		return move{kind: moveWait, at: s.Next}
	}
	return measureOrClose(s, now, end, deadline, interval, timeout, func(sk skipped) move {
		sk.why = why
		return verifyClose(s, p, sk)
	})
}

// recovered reports whether every check's last measurement passed.
func recovered(s runSnapshot) bool {
	for _, c := range s.Checks {
		if c.Outcome != string(policy.Pass) {
			return false
		}
	}
	return len(s.Checks) > 0
}

// verifyClose decides a verification that did not see its checks recover
// within its time: rollback.unhelpful, loudly. A check whose last pass or
// fail was a fail still fails: the rollback did not help, and the problem
// is elsewhere. Without one, some check was never seen passing with the
// others (no data, errors): nobody knows that the rollback helped, which
// is no reason to be quiet either.
func verifyClose(s runSnapshot, p *policy.Policy, sk skipped) move {
	var failing []int
	for i := range p.Checks {
		if s.Checks[i].Judged == string(policy.Fail) {
			failing = append(failing, i)
		}
	}
	within := model.Duration(p.Window)
	mv := move{kind: moveDecide, verdict: verdictUnhelpful, record: audit.RollbackUnhelpful,
		detail: audit.VerdictDetail{SkippedMeasurements: sk.n}}
	if len(failing) > 0 {
		mv.outcome = audit.VerifyNotRecovered
		mv.reason = fmt.Sprintf("the rollback did not help: %s after it, %s; the problem is elsewhere", within, checksText(s, p, failing))
	} else {
		mv.outcome = audit.VerifyUnverified
		mv.reason = fmt.Sprintf("the rollback could not be verified: in the %s after it no measurement found every check that failed the run passing: %s; look at the service", within, checksText(s, p, nil))
	}
	if sk.n > 0 {
		mv.reason += fmt.Sprintf("; %d measurements from %s skipped: %s", sk.n, sk.from.UTC().Format(time.RFC3339Nano), sk.why)
	}
	return mv
}

// checksText says where each check stands, those in first listed first
// (all of them in policy order when first is nil, else first then the
// others).
func checksText(s runSnapshot, p *policy.Policy, first []int) string {
	order := append([]int(nil), first...)
	for i := range p.Checks {
		listed := false
		for _, j := range first {
			listed = listed || i == j
		}
		if !listed {
			order = append(order, i)
		}
	}
	parts := make([]string, len(order))
	for k, i := range order {
		parts[k] = checkText(p.Checks[i].Name, s.Checks[i])
	}
	return strings.Join(parts, "; ")
}

// checkText is one check in a verification's verdict: its last
// measurement, and what that says of it.
func checkText(name string, cp checkProgress) string {
	last := cp.Last
	if cp.Value != nil && cp.Outcome == string(policy.Pass) {
		last = strconv.FormatFloat(*cp.Value, 'g', 6, 64)
		if cp.Threshold != "" {
			last += " (" + cp.Threshold + ")"
		}
	}
	t := cp.Tally
	switch {
	case cp.Outcome == "":
		return fmt.Sprintf("check %s was not measured", name)
	case cp.Outcome == string(policy.Fail):
		return fmt.Sprintf("check %s still fails: %s", name, last)
	case cp.Outcome == string(policy.Pass):
		return fmt.Sprintf("check %s passes: %s", name, last)
	case cp.Judged == string(policy.Fail):
		return fmt.Sprintf("check %s failed, then: %s", name, last)
	case cp.Judged == string(policy.Pass):
		return fmt.Sprintf("check %s passed, then: %s", name, last)
	}
	return fmt.Sprintf("check %s had no usable measurement (inconclusive %d, error %d): %s", name, t.Inconclusive, t.Error, last)
}
