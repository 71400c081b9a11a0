package notify

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/config"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// readable is every text of a Slack message, as a person reads it
// (before Slack unescapes &amp; &lt; &gt;).
func readable(t *testing.T, body []byte) string {
	t.Helper()
	var m slackMessage
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("not a Slack message: %v\n%s", err, body)
	}
	parts := []string{m.Text}
	for _, b := range m.Blocks {
		if b.Text != nil {
			parts = append(parts, b.Text.Text)
		}
		for _, f := range append(b.Fields, b.Elements...) {
			parts = append(parts, f.Text)
		}
	}
	return strings.Join(parts, "\n")
}

func rec(t *testing.T, kind, id string, detail any) audit.Record {
	t.Helper()
	r := audit.Record{Kind: kind, RequestID: id, Service: "shop", Environment: "production", Version: "2026.11.25-1", Policy: "shop-orders",
		Message: kind + " of " + id}
	if err := r.SetDetail(detail); err != nil {
		t.Fatal(err)
	}
	return r
}

// Slack says when a held rollback executes, why it is held, and how to
// stop it (the signed links as Slack links, and the command); who decided
// on it; and, check by check, whether the rollback helped, loudly when it
// did not.
func TestSlackHoldsDecisionsAndVerification(t *testing.T) {
	nt := testutil.StartNATS(t)
	rc := newReceiver(t, "")
	start(t, nt.JS, []*Target{target(t, "oncall", config.NotifySlack, rc.URL+"/services/T0/B0/XXXX", "", config.NotifyMatch{},
		audit.RollbackHeld, audit.RollbackCancelled, audit.RollbackApproved, audit.RollbackVerified, audit.RollbackUnhelpful)}, nil)

	at := time.Date(2026, 12, 4, 12, 52, 9, 0, time.UTC)
	cancelURL := "https://watcher.example.com/rollbacks/rb-1/cancel?expires=1796388729&sig=abc-_"
	six, sixty := 6.0, 69.3333
	publish(t, nt.JS,
		rec(t, audit.RollbackHeld, "rb-1", audit.RollbackHeldDetail{RequestID: "rb-1", Source: "validation", Reason: "orders-per-minute = 12 < min 50",
			Why: "hold", Hold: "2m", HeldAt: at.Add(-2 * time.Minute), ExecuteAt: at, Cancel: "watcher cancel --request=rb-1 --reason=TEXT",
			Approve: "watcher approve --request=rb-1 --reason=TEXT", CancelURL: cancelURL}),
		rec(t, audit.RollbackCancelled, "rb-1", audit.RollbackDecisionDetail{RequestID: "rb-1", Action: "cancel", By: "bob", Via: "link",
			Reason: "the dip is the provider", Why: "hold", HeldAt: at.Add(-2 * time.Minute), ExecuteAt: at}),
		rec(t, audit.RollbackHeld, "rb-2", audit.RollbackHeldDetail{RequestID: "rb-2", Source: "manual", Reason: "cart errors", Why: "cooldown",
			Hold: "0s", ExecuteAt: at, Ask: true, AskDefault: "keep", Cancel: "watcher cancel --request=rb-2 --reason=TEXT",
			Approve: "watcher approve --request=rb-2 --reason=TEXT",
			Earlier: &audit.EarlierRollback{RequestID: "rb-0", CompletedAt: at.Add(-time.Hour), CooldownEnds: at.Add(-30 * time.Minute)}}),
		rec(t, audit.RollbackApproved, "rb-2", audit.RollbackDecisionDetail{RequestID: "rb-2", Action: "approve", By: "chatops for alice",
			Via: "http", Reason: "go", Why: "cooldown", HeldAt: at, ExecuteAt: at}),
		rec(t, audit.RollbackVerified, "rb-3", audit.VerifyDetail{RequestID: "rb-3", Outcome: audit.VerifyRecovered, From: "2026.11.25-1", To: "2026.11.24-3",
			RolledBackAt: at, WithinSeconds: 300, Checks: []audit.VerifyCheck{{Check: "orders-vs-before", Value: &sixty, Threshold: "min_ratio 0.5",
				Outcome: "pass", Counts: audit.Counts{Pass: 1}}}}),
		rec(t, audit.RollbackUnhelpful, "rb-4", audit.VerifyDetail{RequestID: "rb-4", Outcome: audit.VerifyNotRecovered, From: "2026.11.26-1", To: "2026.11.24-3",
			RolledBackAt: at, WithinSeconds: 30, Checks: []audit.VerifyCheck{
				{Check: "orders-per-minute", Value: &six, Threshold: "min 50", Outcome: "fail", Reason: "6 < min 50", Counts: audit.Counts{Fail: 13}},
				{Check: "latency", Threshold: "max 0.5", Outcome: "inconclusive", Reason: "no data", Counts: audit.Counts{Inconclusive: 13}}}}),
	)
	idle(t, nt.JS, DefaultConsumer)

	got := map[string]string{}
	for _, r := range rc.requests() {
		var m struct {
			Text string `json:"text"`
		}
		_ = json.Unmarshal(r.body, &m)
		got[r.kind+" "+strings.Fields(m.Text[strings.LastIndex(m.Text, " of "):])[1]] = readable(t, r.body)
	}
	for key, wants := range map[string][]string{
		"rollback.held rb-1": {"Rollback held", "*Executes at 2026-12-04 12:52:09 UTC* unless cancelled (rollback.hold: 2m)",
			"Requested by validation: orders-per-minute = 12 &lt; min 50",
			"<https://watcher.example.com/rollbacks/rb-1/cancel?expires=1796388729&amp;sig=abc-_|:octagonal_sign: Cancel this rollback> (links valid until 2026-12-04 12:52:09 UTC)",
			"Or: `watcher cancel --request=rb-1 --reason=TEXT`"},
		"rollback.cancelled rb-1": {"Rollback cancelled", "Cancelled by *bob* (via link): the dip is the provider",
			"Held (hold) since 2026-12-04 12:50:09 UTC; it was to execute at 2026-12-04 12:52:09 UTC"},
		"rollback.held rb-2": {"*Not executed automatically*: in cooldown. Left to a person until *2026-12-04 12:52:09 UTC*, then kept (ask_default: keep)",
			"Earlier automatic rollback: request rb-0", "Or: `watcher approve --request=rb-2 --reason=TEXT` or `watcher cancel --request=rb-2 --reason=TEXT`"},
		"rollback.approved rb-2": {"Approved by *chatops for alice* (via http): go"},
		"rollback.verified rb-3": {"Rollback helped", "recovered within 5m0s of the rollback", "Rolled back 2026.11.25-1 → 2026.11.24-3",
			"• :white_check_mark: *orders-vs-before*: 69.3333 (threshold min_ratio 0.5): pass (1 measurement: 1 pass, 0 fail)"},
		"rollback.unhelpful rb-4": {"Rollback did NOT help", ":rotating_light: *The rollback did not help*: the checks that failed the run still fail 30s after it. *The problem is elsewhere*",
			"• :x: *orders-per-minute*: 6 (threshold min 50): fail: 6 &lt; min 50 (13 measurements: 0 pass, 13 fail)",
			"• :x: *latency*: no value (threshold max 0.5): inconclusive: no data"},
	} {
		text, ok := got[key]
		if !ok {
			t.Errorf("no %s message; got %v", key, len(got))
			continue
		}
		for _, w := range wants {
			if !strings.Contains(text, w) {
				t.Errorf("%s message lacks %q:\n%s", key, w, text)
			}
		}
	}
	if strings.Contains(got["rollback.held rb-1"], "Approve it now") {
		t.Errorf("a plain hold's message offers an approve link:\n%s", got["rollback.held rb-1"])
	}
}
