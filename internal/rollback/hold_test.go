package rollback

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// replica is one executor consuming ROLLBACKS, as `watcher run` runs it.
type replica struct {
	e    *Executor
	reg  *prometheus.Registry
	stop func() // its death: the consumer stops, nothing is acked on the way out
}

func startReplica(t *testing.T, n *testutil.NATS, rules func() *policy.Set, name string) *replica {
	t.Helper()
	e := &Executor{JS: n.JS, Policies: rules, Audit: &audit.Publisher{JS: n.JS}, AnnounceSource: "test", Replica: name, AckWait: 2 * time.Second}
	reg := prometheus.NewRegistry()
	e.Register(reg)
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	r := &replica{e: e, reg: reg}
	stopped := false
	r.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			e.Wait()
		}
	}
	t.Cleanup(r.stop)
	return r
}

func (r *replica) holds(t *testing.T, result string) float64 {
	t.Helper()
	return testutil.ToFloat64(t, r.reg, "watcher_rollback_holds_total", "result", result)
}

// send publishes req on ROLLBACKS as its requester would.
func send(t *testing.T, n *testutil.NATS, req events.RollbackRequest) {
	t.Helper()
	if err := rollbackreq.Publish(t.Context(), n.JS, req); err != nil {
		t.Fatal(err)
	}
}

// waitKind waits for the first audit record of kind about request id.
func waitKind(t *testing.T, n *testutil.NATS, id, kind string, within time.Duration) audit.Record {
	t.Helper()
	var found audit.Record
	testutil.Eventually(t, within, kind+" of "+id, func() bool {
		for _, r := range auditOf(t, n) {
			if r.RequestID == id && r.Kind == kind {
				found = r
				return true
			}
		}
		return false
	})
	return found
}

// kindsOf is the kinds of the audit records about request id, in order.
func kindsOf(t *testing.T, n *testutil.NATS, id string) string {
	t.Helper()
	var out []string
	for _, r := range auditOf(t, n) {
		if r.RequestID == id {
			out = append(out, r.Kind)
		}
	}
	return strings.Join(out, " ")
}

// decide cancels or approves request id as `watcher cancel`/`approve` does.
func decide(t *testing.T, n *testutil.NATS, action, id, by string) (*rollbackreq.Hold, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	return rollbackreq.Decide(ctx, n.JS, events.RollbackDecision{Action: action, RequestID: id, Reason: "checked with " + by, By: by, Via: events.ViaCLI})
}

// holdOf reads request id's hold from RequestsBucket.
func holdOf(t *testing.T, n *testutil.NATS, id string) *rollbackreq.Hold {
	t.Helper()
	kv, err := n.JS.KeyValue(t.Context(), RequestsBucket)
	if err != nil {
		t.Fatal(err)
	}
	tr := &tracker{kv: kv, id: id, key: requestKey(id)}
	if err := tr.load(t.Context()); err != nil {
		t.Fatal(err)
	}
	return tr.hold()
}

// settled waits until ROLLBACKS' consumer has nothing pending: a held
// request that came back at its execute_at was acknowledged, not sent back
// again.
func settled(t *testing.T, n *testutil.NATS) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, "no rollback message pending", func() bool {
		c, err := n.JS.Consumer(t.Context(), "ROLLBACKS", "watcher-rollbacks")
		if err != nil {
			return false
		}
		info, err := c.Info(t.Context())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0 && info.NumRedelivered == 0
	})
}

// TestHoldExecutesAtExecuteAt: with rollback.hold, a request is announced
// (rollback.held, with its execute_at and the commands that decide it),
// left alone until then, and executed at execute_at.
func TestHoldExecutesAtExecuteAt(t *testing.T) {
	t.Parallel()
	n := testutil.StartNATS(t)
	h := deployed(t)
	r := startReplica(t, n, loadRules(t, policyYAML("shop", "shop", h, "hold: 2s", "cooldown: 0s")), "a")
	sent := time.Now()
	send(t, n, request("rb-hold"))

	held := waitKind(t, n, "rb-hold", audit.RollbackHeld, 5*time.Second)
	d, ok := held.RollbackHeld()
	if !ok || d.RequestID != "rb-hold" || d.Why != rollbackreq.WhyHold || d.Hold != "2s" || d.Ask ||
		d.Cancel != "watcher cancel --request=rb-hold --reason=TEXT" || d.Approve != "watcher approve --request=rb-hold --reason=TEXT" {
		t.Errorf("rollback.held detail %+v", d)
	}
	if at := d.ExecuteAt; at.Before(sent.Add(2*time.Second)) || at.After(time.Now().Add(2*time.Second)) {
		t.Errorf("execute_at %s, want 2s after the request arrived (%s)", at, sent)
	}
	if !strings.Contains(held.Message, "held for 2s: executes at "+d.ExecuteAt.Format(time.RFC3339)+" unless cancelled") || held.Policy != "shop" {
		t.Errorf("rollback.held message %q (policy %q)", held.Message, held.Policy)
	}
	if s := readlink(t, h.link); s != "releases/v2" {
		t.Fatalf("link -> %s while held, want releases/v2", s)
	}

	done := waitKind(t, n, "rb-hold", audit.RollbackCompleted, 10*time.Second)
	if done.Time.Before(d.ExecuteAt) {
		t.Errorf("completed at %s, before execute_at %s", done.Time, d.ExecuteAt)
	}
	if s := readlink(t, h.link); s != "releases/v1" {
		t.Errorf("link -> %s, want releases/v1", s)
	}
	if got := kindsOf(t, n, "rb-hold"); got != "rollback.held rollback.requested rollback.host rollback.completed" {
		t.Errorf("audit of the request: %s", got)
	}
	req := waitKind(t, n, "rb-hold", audit.RollbackRequested, time.Second)
	if !strings.Contains(req.Message, "held 2s, not cancelled") {
		t.Errorf("rollback.requested message %q does not say it was held", req.Message)
	}
	settled(t, n)
	if r.holds(t, holdHeld) != 1 || r.holds(t, holdExecuted) != 1 {
		t.Errorf("watcher_rollback_holds_total: held %v, executed %v; want 1, 1", r.holds(t, holdHeld), r.holds(t, holdExecuted))
	}
}

// TestHoldCancelled: a held request cancelled before its execute_at is
// never executed; rollback.cancelled says who cancelled it, how and why.
// Deciding on it again is refused, before sending (Decide) and by the
// executor, which records the refusal.
func TestHoldCancelled(t *testing.T) {
	t.Parallel()
	n := testutil.StartNATS(t)
	h := deployed(t)
	r := startReplica(t, n, loadRules(t, policyYAML("shop", "shop", h, "hold: 2s", "cooldown: 0s")), "a")
	send(t, n, request("rb-cancel"))
	held := waitKind(t, n, "rb-cancel", audit.RollbackHeld, 5*time.Second)

	hold, err := decide(t, n, events.ActionCancel, "rb-cancel", "alice")
	if err != nil {
		t.Fatal(err)
	}
	if hold.State != rollbackreq.HoldCancelled || hold.Decision.By != "alice" {
		t.Errorf("hold after the cancel: %+v", hold)
	}
	rec := waitKind(t, n, "rb-cancel", audit.RollbackCancelled, 5*time.Second)
	d, ok := rec.RollbackDecision()
	if !ok || d.By != "alice" || d.Via != events.ViaCLI || d.Reason != "checked with alice" || d.Action != events.ActionCancel || d.Why != rollbackreq.WhyHold {
		t.Errorf("rollback.cancelled detail %+v", d)
	}
	if want := "rollback of shop in production cancelled by alice (cli): checked with alice"; rec.Message != want {
		t.Errorf("rollback.cancelled message %q, want %q", rec.Message, want)
	}

	// Past its execute_at: the request came back, and was dropped.
	hd, _ := held.RollbackHeld()
	time.Sleep(time.Until(hd.ExecuteAt))
	settled(t, n)
	if s := readlink(t, h.link); s != "releases/v2" {
		t.Errorf("link -> %s after the cancel, want releases/v2", s)
	}

	if _, err := decide(t, n, events.ActionApprove, "rb-cancel", "bob"); !errors.Is(err, rollbackreq.ErrDecided) ||
		!strings.Contains(err.Error(), "cancelled by alice (cli)") {
		t.Errorf("approve after the cancel: %v, want ErrDecided naming alice's cancel", err)
	}
	if _, err := decide(t, n, events.ActionCancel, "rb-nope", "bob"); !errors.Is(err, rollbackreq.ErrUnknownRequest) {
		t.Errorf("cancel of an unknown request: %v, want ErrUnknownRequest", err)
	}
	// Sent anyway, past Decide's check: the executor refuses it too.
	publishDecision(t, n, "rollbacks.production.shop", `{"id":"d-late","action":"approve","request_id":"rb-cancel","service":"shop","environment":"production","reason":"go","by":"bob","via":"cli"}`)
	refused := waitRejected(t, n, "rb-cancel")
	if !strings.Contains(refused.Message, "approve of rollback request rb-cancel by bob (cli) refused: it was cancelled by alice (cli)") {
		t.Errorf("refusal %q", refused.Message)
	}
	if got := kindsOf(t, n, "rb-cancel"); got != "rollback.held rollback.cancelled event.rejected" {
		t.Errorf("audit of the request: %s", got)
	}
	if r.holds(t, holdCancelled) != 1 || r.holds(t, holdExecuted) != 0 || r.holds(t, holdRefused) != 1 {
		t.Errorf("watcher_rollback_holds_total: cancelled %v, executed %v, refused %v; want 1, 0, 1",
			r.holds(t, holdCancelled), r.holds(t, holdExecuted), r.holds(t, holdRefused))
	}
}

func publishDecision(t *testing.T, n *testutil.NATS, subject, payload string) {
	t.Helper()
	if _, err := n.JS.Publish(t.Context(), subject, []byte(payload)); err != nil {
		t.Fatal(err)
	}
}

// waitRejected waits for an event.rejected record about request id.
func waitRejected(t *testing.T, n *testutil.NATS, id string) audit.Record {
	t.Helper()
	return waitKind(t, n, id, audit.EventRejected, 5*time.Second)
}

// TestHoldSurvivesRestart: the executor dies in the middle of a hold and
// another starts on the same NATS. The countdown keeps its execute_at, the
// request executes once at that time, and rollback.held is recorded once.
func TestHoldSurvivesRestart(t *testing.T) {
	t.Parallel()
	n := testutil.StartNATS(t)
	h := deployed(t)
	rules := loadRules(t, policyYAML("shop", "shop", h, "hold: 3s", "cooldown: 0s"))
	a := startReplica(t, n, rules, "a")
	send(t, n, request("rb-restart"))
	waitKind(t, n, "rb-restart", audit.RollbackHeld, 5*time.Second)
	before := holdOf(t, n, "rb-restart")
	a.stop()

	startReplica(t, n, rules, "b")
	done := waitKind(t, n, "rb-restart", audit.RollbackCompleted, 10*time.Second)
	after := holdOf(t, n, "rb-restart")
	if !after.ExecuteAt.Equal(before.ExecuteAt) || after.State != rollbackreq.HoldExecuting {
		t.Errorf("hold after the restart %+v, want execute_at %s kept", after, before.ExecuteAt)
	}
	if done.Time.Before(before.ExecuteAt) {
		t.Errorf("executed at %s, before its execute_at %s", done.Time, before.ExecuteAt)
	}
	settled(t, n)
	if got := kindsOf(t, n, "rb-restart"); got != "rollback.held rollback.requested rollback.host rollback.completed" {
		t.Errorf("audit of the request: %s", got)
	}
}

// TestHoldTwoReplicas: two replicas share the consumer; the held request
// executes once, its after command runs once.
func TestHoldTwoReplicas(t *testing.T) {
	t.Parallel()
	n := testutil.StartNATS(t)
	h := deployed(t)
	runs := filepath.Join(t.TempDir(), "after-runs")
	rules := loadRules(t, policyYAML("shop", "shop", h, "hold: 1s", "cooldown: 0s",
		"after: "+yamlList("sh", "-c", `echo ran >> "$1"`, "sh", runs)))
	startReplica(t, n, rules, "a")
	startReplica(t, n, rules, "b")
	send(t, n, request("rb-two"))
	waitKind(t, n, "rb-two", audit.RollbackCompleted, 10*time.Second)
	settled(t, n)
	if got := kindsOf(t, n, "rb-two"); got != "rollback.held rollback.requested rollback.host rollback.completed" {
		t.Errorf("audit of the request: %s", got)
	}
	if got := readFile(t, runs); got != "ran\n" {
		t.Errorf("after command ran %d times, want once", strings.Count(got, "ran"))
	}
}

// TestAskApproved: under mode: ask, a request waits for an answer; an
// approval executes it at once, and the request coming back at its
// execute_at does nothing more.
func TestAskApproved(t *testing.T) {
	t.Parallel()
	n := testutil.StartNATS(t)
	h := deployed(t)
	r := startReplica(t, n, loadRules(t, policyYAML("shop", "shop", h, "mode: ask", "hold: 3s")), "a")
	manual := request("m-ask")
	manual.Source = events.SourceManual
	send(t, n, manual)
	held := waitKind(t, n, "m-ask", audit.RollbackHeld, 5*time.Second)
	d, _ := held.RollbackHeld()
	if d.Why != rollbackreq.WhyAsk || !d.Ask || d.AskDefault != policy.AskKeep || !strings.Contains(held.Message, "waits for an answer until") {
		t.Errorf("rollback.held %q %+v", held.Message, d)
	}

	if _, err := decide(t, n, events.ActionApprove, "m-ask", "carol"); err != nil {
		t.Fatal(err)
	}
	done := waitKind(t, n, "m-ask", audit.RollbackCompleted, 5*time.Second)
	if !done.Time.Before(d.ExecuteAt) {
		t.Errorf("approved request completed at %s, not before its execute_at %s", done.Time, d.ExecuteAt)
	}
	appr := waitKind(t, n, "m-ask", audit.RollbackApproved, time.Second)
	if dd, ok := appr.RollbackDecision(); !ok || dd.By != "carol" || dd.Via != events.ViaCLI || dd.Why != rollbackreq.WhyAsk {
		t.Errorf("rollback.approved detail %+v", dd)
	}
	time.Sleep(time.Until(d.ExecuteAt))
	settled(t, n)
	if got := kindsOf(t, n, "m-ask"); got != "rollback.held rollback.approved rollback.requested rollback.host rollback.completed" {
		t.Errorf("audit of the request: %s", got)
	}
	if _, err := decide(t, n, events.ActionCancel, "m-ask", "dave"); !errors.Is(err, rollbackreq.ErrDecided) {
		t.Errorf("cancel after the approval: %v, want ErrDecided", err)
	}
	if r.holds(t, holdApproved) != 1 || r.holds(t, holdExecuted) != 1 {
		t.Errorf("watcher_rollback_holds_total: approved %v, executed %v; want 1, 1", r.holds(t, holdApproved), r.holds(t, holdExecuted))
	}
}

// TestAskUnanswered: an ask nobody answers ends with its ask_default when
// the hold ends: keep records rollback.cancelled by the deadline and
// executes nothing; rollback records rollback.approved and executes. A
// request that asks itself (on_marginal: ask) asks under mode: execute.
func TestAskUnanswered(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		extra  []string
		ask    bool   // the request asks
		kind   string // the decision record
		result string // watcher_rollback_holds_total
		link   string
	}{
		{"ask_default keep", []string{"mode: ask", "hold: 1s"}, false, audit.RollbackCancelled, holdDeadlineKeep, "releases/v2"},
		{"ask_default rollback", []string{"mode: ask", "hold: 1s", "ask_default: rollback"}, false, audit.RollbackApproved, holdDeadlineRollback, "releases/v1"},
		{"on_marginal ask", []string{"hold: 1s", "cooldown: 0s"}, true, audit.RollbackCancelled, holdDeadlineKeep, "releases/v2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := testutil.StartNATS(t)
			h := deployed(t)
			r := startReplica(t, n, loadRules(t, policyYAML("shop", "shop", h, tc.extra...)), "a")
			req := request("rb-unanswered")
			req.Ask = tc.ask
			send(t, n, req)
			rec := waitKind(t, n, req.ID, tc.kind, 10*time.Second)
			d, ok := rec.RollbackDecision()
			if !ok || d.Via != events.ViaDeadline || d.By != "watcher" || !strings.Contains(d.Reason, "nobody answered by") {
				t.Errorf("%s detail %+v", tc.kind, d)
			}
			if tc.kind == audit.RollbackApproved {
				waitKind(t, n, req.ID, audit.RollbackCompleted, 5*time.Second)
			}
			settled(t, n)
			if s := readlink(t, h.link); s != tc.link {
				t.Errorf("link -> %s, want %s", s, tc.link)
			}
			if r.holds(t, tc.result) != 1 {
				t.Errorf("watcher_rollback_holds_total{result=%q} = %v, want 1", tc.result, r.holds(t, tc.result))
			}
		})
	}
}

// TestCooldown: after an automatic rollback, the next automatic one of the
// same service and environment is held for a person (why cooldown, naming
// the earlier rollback), while a manual one executes at once; approving
// the held one runs it.
func TestCooldown(t *testing.T) {
	t.Parallel()
	n := testutil.StartNATS(t)
	h := deployed(t)
	r := startReplica(t, n, loadRules(t, policyYAML("shop", "shop", h, "cooldown: 1h")), "a")
	send(t, n, request("rb-first"))
	first := waitKind(t, n, "rb-first", audit.RollbackCompleted, 5*time.Second)

	second := request("rb-second")
	second.Source, second.Alert = events.SourceAlert, &events.AlertRef{Name: "ShopDown", Fingerprint: "f00", StartsAt: t0}
	send(t, n, second)
	held := waitKind(t, n, "rb-second", audit.RollbackHeld, 5*time.Second)
	d, _ := held.RollbackHeld()
	if d.Why != rollbackreq.WhyCooldown || !d.Ask || d.AskDefault != policy.AskKeep || d.Earlier == nil || d.Earlier.RequestID != "rb-first" {
		t.Fatalf("rollback.held detail %+v", d)
	}
	if ends := d.Earlier.CooldownEnds; ends.Sub(d.Earlier.CompletedAt) != time.Hour || d.Earlier.CompletedAt.Sub(first.Time).Abs() > time.Second {
		t.Errorf("cooldown from %s to %s, want an hour from the first rollback (%s)", d.Earlier.CompletedAt, ends, first.Time)
	}
	if got := d.ExecuteAt.Sub(d.HeldAt); got != time.Hour {
		t.Errorf("a person has %s to approve, want the cooldown (1h)", got)
	}
	if !strings.Contains(held.Message, "not executed automatically") || !strings.Contains(held.Message, "request rb-first") {
		t.Errorf("rollback.held message %q", held.Message)
	}

	manual := request("m-manual")
	manual.Source = events.SourceManual
	send(t, n, manual)
	waitKind(t, n, "m-manual", audit.RollbackCompleted, 5*time.Second)
	if got := kindsOf(t, n, "m-manual"); strings.Contains(got, "held") {
		t.Errorf("manual request in the cooldown: %s, want it executed at once", got)
	}

	if _, err := decide(t, n, events.ActionApprove, "rb-second", "erin"); err != nil {
		t.Fatal(err)
	}
	waitKind(t, n, "rb-second", audit.RollbackCompleted, 5*time.Second)
	if got := kindsOf(t, n, "rb-second"); got != "rollback.held rollback.approved rollback.requested rollback.host rollback.completed" {
		t.Errorf("audit of the approved request: %s", got)
	}
	if r.holds(t, holdHeld) != 1 {
		t.Errorf("watcher_rollback_holds_total{result=held} = %v, want 1", r.holds(t, holdHeld))
	}
}

// TestCooldownOvertakesHold: two automatic requests of one service, both
// held. The first executes at its execute_at; the second, due just after,
// finds the service in cooldown and is held again, for a person.
func TestCooldownOvertakesHold(t *testing.T) {
	t.Parallel()
	n := testutil.StartNATS(t)
	h := deployed(t)
	r := startReplica(t, n, loadRules(t, policyYAML("shop", "shop", h, "hold: 1s", "cooldown: 1h")), "a")
	send(t, n, request("rb-a"))
	waitKind(t, n, "rb-a", audit.RollbackHeld, 5*time.Second)
	send(t, n, request("rb-b"))
	waitKind(t, n, "rb-a", audit.RollbackCompleted, 5*time.Second)
	var helds []audit.RollbackHeldDetail
	testutil.Eventually(t, 5*time.Second, "rb-b held twice", func() bool {
		helds = nil
		for _, rec := range auditOf(t, n) {
			if d, ok := rec.RollbackHeld(); ok && rec.RequestID == "rb-b" {
				helds = append(helds, d)
			}
		}
		return len(helds) == 2
	})
	if helds[0].Why != rollbackreq.WhyHold || helds[1].Why != rollbackreq.WhyCooldown || helds[1].Earlier == nil || helds[1].Earlier.RequestID != "rb-a" {
		t.Errorf("rb-b held as %+v, then %+v; want hold, then cooldown after rb-a", helds[0], helds[1])
	}
	if got := kindsOf(t, n, "rb-b"); got != "rollback.held rollback.held" {
		t.Errorf("audit of rb-b: %s", got)
	}
	if r.holds(t, holdHeld) != 3 || r.holds(t, holdExecuted) != 1 {
		t.Errorf("watcher_rollback_holds_total: held %v, executed %v; want 3, 1", r.holds(t, holdHeld), r.holds(t, holdExecuted))
	}
}

// TestCooldownClaimedOnce: automatic requests of one service about to
// execute at the same moment on two replicas: one claims the cooldown and
// executes, every other finds the service in cooldown, naming it. The
// same request claiming again (delivered twice) still may.
func TestCooldownClaimedOnce(t *testing.T) {
	t.Parallel()
	n := testutil.StartNATS(t)
	h := deployed(t)
	rules := loadRules(t, policyYAML("shop", "shop", h, "cooldown: 1h"))
	a, b := startReplica(t, n, rules, "a"), startReplica(t, n, rules, "b")
	p := rules().Policies[0]
	now := time.Now().UTC()
	earlier := make([]*rollbackreq.Earlier, 8)
	var wg sync.WaitGroup
	for i := range earlier {
		e := a.e
		if i%2 == 1 {
			e = b.e
		}
		wg.Go(func() {
			var err error
			if earlier[i], err = e.claimCooldown(t.Context(), request(fmt.Sprintf("rb-%d", i)), p, now); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	winner := -1
	for i, e := range earlier {
		if e == nil {
			if winner >= 0 {
				t.Fatalf("requests %d and %d both claimed the cooldown", winner, i)
			}
			winner = i
		}
	}
	if winner < 0 {
		t.Fatal("no request claimed the cooldown")
	}
	for i, e := range earlier {
		if i != winner && e.RequestID != fmt.Sprintf("rb-%d", winner) {
			t.Errorf("request %d: in the cooldown of %s, want rb-%d", i, e.RequestID, winner)
		}
	}
	if again, err := a.e.claimCooldown(t.Context(), request(fmt.Sprintf("rb-%d", winner)), p, now); err != nil || again != nil {
		t.Errorf("the winner claiming again: %+v, %v; want it may", again, err)
	}
}

// TestHostileDecisions: a decision is outside input like a request. Bad
// ones are rejected with a record naming the field; a well-formed one for
// a request of another service (on its own subject, which NATS lets its
// sender publish on) or for no held request is refused, and the hold is
// untouched.
func TestHostileDecisions(t *testing.T) {
	t.Parallel()
	n := testutil.StartNATS(t)
	h := deployed(t)
	startReplica(t, n, loadRules(t, policyYAML("shop", "shop", h, "hold: 1h")), "a")
	send(t, n, request("rb-target"))
	waitKind(t, n, "rb-target", audit.RollbackHeld, 5*time.Second)

	good := `"id":"d-1","request_id":"rb-target","service":"shop","environment":"production","reason":"r","by":"mallory","via":"cli"`
	for _, tc := range []struct {
		name, subject, payload, field string
	}{
		{"unknown action", "rollbacks.production.shop", `{"action":"execute",` + good + `}`, "action"},
		{"wildcard request id", "rollbacks.production.shop", `{"action":"cancel","id":"d-2","request_id":"rb-*","service":"shop","environment":"production","reason":"r","by":"m","via":"cli"}`, "request_id"},
		{"long reason", "rollbacks.production.shop", `{"action":"cancel","id":"d-3","request_id":"rb-target","service":"shop","environment":"production","reason":"` + strings.Repeat("x", events.MaxReasonLen+1) + `","by":"m","via":"cli"}`, "reason"},
		{"forged deadline", "rollbacks.production.shop", `{"action":"cancel","id":"d-4","request_id":"rb-target","service":"shop","environment":"production","reason":"r","by":"watcher","via":"deadline"}`, "via"},
		{"unknown field", "rollbacks.production.shop", `{"action":"cancel","force":true,` + good + `}`, "force"},
		{"subject of another service", "rollbacks.production.billing", `{"action":"cancel",` + good + `}`, "subject"},
	} {
		publishDecision(t, n, tc.subject, tc.payload)
		env, svc := events.SubjectNames(tc.subject)
		testutil.Eventually(t, 5*time.Second, tc.name+" rejected", func() bool {
			recs, err := audit.Read(t.Context(), n.JS, audit.Filter{Service: svc, Environment: env, Kinds: []string{audit.EventRejected}})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				if d, ok := r.EventRejected(); ok && d.Field == tc.field && strings.HasPrefix(r.Message, "rollback decision rejected: ") {
					return true
				}
			}
			return false
		})
	}
	// Well-formed, on billing's subject, for shop's request.
	publishDecision(t, n, "rollbacks.production.billing", `{"id":"d-5","action":"cancel","request_id":"rb-target","service":"billing","environment":"production","reason":"r","by":"mallory","via":"cli"}`)
	publishDecision(t, n, "rollbacks.production.shop", `{"id":"d-6","action":"cancel","request_id":"rb-ghost","service":"shop","environment":"production","reason":"r","by":"mallory","via":"cli"}`)
	testutil.Eventually(t, 5*time.Second, "both refused", func() bool {
		recs, err := audit.Read(t.Context(), n.JS, audit.Filter{Environment: "production", Kinds: []string{audit.EventRejected}})
		if err != nil {
			t.Fatal(err)
		}
		var other, ghost bool
		for _, r := range recs {
			other = other || r.Service == "billing" && strings.Contains(r.Message, "refused: it is not a request of billing in production")
			ghost = ghost || r.RequestID == "rb-ghost" && strings.Contains(r.Message, "refused: no such request is held")
		}
		return other && ghost
	})
	if hold := holdOf(t, n, "rb-target"); hold.State != rollbackreq.HoldHeld {
		t.Errorf("hold after the hostile decisions: %+v, want still held", hold)
	}
}

// TestDecideRefusesWhatItCannotDecide: Decide says before sending that a
// request was never held or executed without a hold, and says when no
// watcher applies what it sent.
func TestDecideRefusesWhatItCannotDecide(t *testing.T) {
	t.Parallel()
	n := testutil.StartNATS(t)
	h := deployed(t)
	r := startReplica(t, n, loadRules(t, policyYAML("shop", "shop", h, "cooldown: 0s")), "a")
	send(t, n, request("rb-direct"))
	waitKind(t, n, "rb-direct", audit.RollbackCompleted, 5*time.Second)
	settled(t, n)
	if _, err := decide(t, n, events.ActionCancel, "rb-direct", "frank"); !errors.Is(err, rollbackreq.ErrNotHeld) ||
		!strings.Contains(err.Error(), "executed at once (result: completed)") {
		t.Errorf("cancel of a request executed without a hold: %v, want ErrNotHeld", err)
	}

	// Held, then the executor stops: the decision is sent and waits.
	h2 := deployed(t)
	rules := loadRules(t, policyYAML("shop", "shop", h2, "hold: 1h", "cooldown: 0s"))
	r.stop()
	r = startReplica(t, n, rules, "b")
	send(t, n, request("rb-orphan"))
	waitKind(t, n, "rb-orphan", audit.RollbackHeld, 5*time.Second)
	r.stop()
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	_, err := rollbackreq.Decide(ctx, n.JS, events.RollbackDecision{Action: events.ActionCancel, RequestID: "rb-orphan", Reason: "r", By: "frank", Via: events.ViaCLI})
	if !errors.Is(err, rollbackreq.ErrNoAnswer) || !strings.Contains(err.Error(), "is a watcher running?") {
		t.Errorf("decision without a watcher: %v, want ErrNoAnswer", err)
	}
	// The next watcher applies it.
	startReplica(t, n, rules, "c")
	waitKind(t, n, "rb-orphan", audit.RollbackCancelled, 5*time.Second)
	if _, err := os.Stat(filepath.Join(h2.rel("v2"), MarkerFile)); err == nil {
		t.Error("the cancelled request rolled back")
	}
}

// TestHeldRecordCarriesLinks: with Links set (`watcher run` with
// --web.external-url), rollback.held carries the links it mints for the
// request, its execute_at and whether it asks.
func TestHeldRecordCarriesLinks(t *testing.T) {
	t.Parallel()
	n := testutil.StartNATS(t)
	h := deployed(t)
	var mu sync.Mutex
	var gotAt time.Time
	var gotAsk bool
	e := &Executor{JS: n.JS, Policies: loadRules(t, policyYAML("shop", "shop", h, "mode: ask", "hold: 1h")), Audit: &audit.Publisher{JS: n.JS},
		AnnounceSource: "test", Replica: "a", AckWait: 2 * time.Second,
		Links: func(id string, executeAt time.Time, ask bool) (string, string) {
			mu.Lock()
			defer mu.Unlock()
			gotAt, gotAsk = executeAt, ask
			return "https://w.example.com/rollbacks/" + id + "/cancel?sig=c", "https://w.example.com/rollbacks/" + id + "/approve?sig=a"
		}}
	e.Register(prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); e.Wait() })
	send(t, n, request("rb-links"))
	held := waitKind(t, n, "rb-links", audit.RollbackHeld, 5*time.Second)
	d, _ := held.RollbackHeld()
	if d.CancelURL != "https://w.example.com/rollbacks/rb-links/cancel?sig=c" || d.ApproveURL != "https://w.example.com/rollbacks/rb-links/approve?sig=a" {
		t.Errorf("rollback.held links: cancel %q, approve %q", d.CancelURL, d.ApproveURL)
	}
	mu.Lock()
	defer mu.Unlock()
	if !gotAt.Equal(d.ExecuteAt) || !gotAsk {
		t.Errorf("Links called with execute_at %s, ask %v; want %s, true", gotAt, gotAsk, d.ExecuteAt)
	}
	if strings.Contains(held.Message, "sig=") {
		t.Errorf("the message carries a link: %q", held.Message)
	}
}
