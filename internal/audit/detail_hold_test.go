package audit

import (
	"context"
	"reflect"
	"testing"
	"time"
)

// The hold details read back, after the stream, as they were written, and
// each only from its own kinds.
func TestHoldDetailsReadBack(t *testing.T) {
	at := time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC)
	held := RollbackHeldDetail{RequestID: "rb-1", Source: "validation", Reason: "errors", Why: "cooldown", Hold: "0s",
		HeldAt: at, ExecuteAt: at.Add(30 * time.Minute), Ask: true, AskDefault: "keep",
		Cancel: "watcher cancel --request=rb-1 --reason=TEXT", Approve: "watcher approve --request=rb-1 --reason=TEXT",
		Earlier: &EarlierRollback{RequestID: "rb-0", CompletedAt: at.Add(-time.Minute), CooldownEnds: at.Add(29 * time.Minute)}}
	decided := RollbackDecisionDetail{RequestID: "rb-1", DecisionID: "01JDEC", Action: "cancel", By: "alice", Via: "cli",
		Reason: "false alarm", Why: "hold", HeldAt: at, ExecuteAt: at.Add(2 * time.Minute)}
	var m Memory
	for _, r := range []struct {
		kind string
		v    any
	}{{RollbackHeld, held}, {RollbackCancelled, decided}, {RollbackApproved, decided}} {
		rec := Record{Kind: r.kind}
		if err := rec.SetDetail(r.v); err != nil {
			t.Fatal(err)
		}
		if err := m.Record(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	all := m.All()
	if got, ok := all[0].RollbackHeld(); !ok || !reflect.DeepEqual(got, held) {
		t.Errorf("rollback.held read back as %+v (%v)", got, ok)
	}
	for _, r := range all[1:] {
		if got, ok := r.RollbackDecision(); !ok || !reflect.DeepEqual(got, decided) {
			t.Errorf("%s read back as %+v (%v)", r.Kind, got, ok)
		}
	}
	if _, ok := all[0].RollbackDecision(); ok {
		t.Error("rollback.held read as a decision")
	}
	if _, ok := all[1].RollbackHeld(); ok {
		t.Error("rollback.cancelled read as rollback.held")
	}
}
