package web

import (
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
)

func heldRec(t *testing.T, kind, id string, at time.Time, detail any) audit.Record {
	t.Helper()
	r := audit.Record{Time: at, Kind: kind, RequestID: id, Service: "shop", Environment: "production", Version: "v2", Policy: "orders",
		Message: kind}
	if err := r.SetDetail(detail); err != nil {
		t.Fatal(err)
	}
	return r
}

// The status page shows a held rollback as held, with its countdown and
// the command that cancels it, but never the signed link of rollback.held:
// the page needs no credentials, and the link is one. A decision moves
// the card on.
func TestPageShowsHeldRollbacks(t *testing.T) {
	now := t0.Add(40 * time.Second)
	held := func(id, why string, ask bool) audit.Record {
		return heldRec(t, audit.RollbackHeld, id, t0, audit.RollbackHeldDetail{RequestID: id, Source: "validation", Reason: "orders dropped",
			Why: why, Hold: "2m", HeldAt: t0, ExecuteAt: t0.Add(2 * time.Minute), Ask: ask, AskDefault: "keep",
			Cancel: "watcher cancel --request=" + id + " --reason=TEXT", Approve: "watcher approve --request=" + id + " --reason=TEXT",
			CancelURL: "https://w.example.com/rollbacks/" + id + "/cancel?expires=1&sig=SECRET", ApproveURL: "https://w.example.com/rollbacks/" + id + "/approve?sig=SECRET"})
	}
	decided := func(kind, id, by, via string, at time.Time) audit.Record {
		return heldRec(t, kind, id, at, audit.RollbackDecisionDetail{RequestID: id, By: by, Via: via, Reason: "checked", Why: "hold"})
	}
	requested := heldRec(t, audit.RollbackRequested, "rb-approved", t0.Add(11*time.Second), audit.RollbackRequestedDetail{Source: "validation", Reason: "orders dropped", Executed: true})
	recs := []audit.Record{
		held("rb-held", "hold", false), held("rb-ask", "ask", true),
		held("rb-cancelled", "hold", false), decided(audit.RollbackCancelled, "rb-cancelled", "bob", "link", t0.Add(10*time.Second)),
		held("rb-approved", "hold", false), decided(audit.RollbackApproved, "rb-approved", "alice", "http", t0.Add(10*time.Second)), requested,
	}
	gs := rollbacksOf(recs, now)
	byID := map[string]rollbackGroup{}
	for _, g := range gs {
		byID[g.RequestID] = g
	}
	for id, want := range map[string]struct{ status, note string }{
		"rb-held": {"held", ""}, "rb-ask": {"held", ""}, "rb-cancelled": {"cancelled", "cancelled by bob (link): checked"},
		"rb-approved": {"rolling back", "approved by alice (http): checked"},
	} {
		g := byID[id]
		if g.Status != want.status || g.Note != want.note || (g.Held != nil) != (want.status == "held") {
			t.Errorf("%s: status %q note %q held %+v; want %q %q", id, g.Status, g.Note, g.Held, want.status, want.note)
		}
	}
	if h := byID["rb-held"].Held; h == nil || h.In != "in 1m20s" || h.Approve != "" || !strings.HasPrefix(h.Why, "rollback.hold 2m") {
		t.Errorf("held view %+v", h)
	}
	if h := byID["rb-ask"].Held; h == nil || h.What != "waits for an answer until" || h.Approve != "watcher approve --request=rb-ask --reason=TEXT" {
		t.Errorf("ask view %+v", h)
	}

	src := fixture("shop", "r", "", nil)
	src.recs = append(src.recs, recs...)
	resp, body := get(t, src, now)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for _, want := range []string{"held rollbacks", `<span class="badge warn">held</span>`, "executes at <b>22:23:33 UTC</b> <span class=\"sub\">(in 1m20s)</span>",
		"<code>watcher cancel --request=rb-held --reason=TEXT</code>", "approve: <code>watcher approve --request=rb-ask --reason=TEXT</code>",
		"cancelled by bob (link): checked"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "SECRET") || strings.Contains(body, "/rollbacks/rb-held/cancel") {
		t.Errorf("the page shows a signed link")
	}
}
