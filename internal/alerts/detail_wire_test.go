package alerts

import (
	"reflect"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
)

// alert.received puts on the wire what the maps the receiver built before
// its detail was typed put there (the old maps below), and reads back.
func TestAlertReceivedDetailWire(t *testing.T) {
	ref := events.AlertRef{Name: "ShopErrorsHigh", Fingerprint: "abc", StartsAt: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC),
		GeneratorURL: "http://prom/graph", Labels: map[string]string{"alertname": "ShopErrorsHigh", ServiceLabel: "shop"}}
	for _, tc := range []struct {
		name  string
		typed audit.AlertReceivedDetail
		old   map[string]any
	}{
		{"refused", audit.AlertReceivedDetail{Outcome: "refused: not JSON"}, map[string]any{"outcome": "refused: not JSON"}},
		{"rollback requested past skipped messages",
			audit.AlertReceivedDetail{ReceivedAlert: &audit.ReceivedAlert{Alert: ref, Status: "firing", GroupKey: "{}:{}", Receiver: "watcher"},
				Outcome: "rolls back deploy d1", SkippedMessages: 5, RequestID: "rb-1"},
			map[string]any{"alert": ref, "status": "firing", "group_key": "{}:{}", "receiver": "watcher", "outcome": "rolls back deploy d1",
				"skipped_messages": 5, "request_id": "rb-1"}},
		{"ignored, empty fields", audit.AlertReceivedDetail{ReceivedAlert: &audit.ReceivedAlert{Alert: events.AlertRef{}}, Outcome: "ignored: no name"},
			map[string]any{"alert": events.AlertRef{}, "status": "", "group_key": "", "receiver": "", "outcome": "ignored: no name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := audit.Record{Kind: audit.AlertReceived}
			if err := r.SetDetail(tc.typed); err != nil {
				t.Fatal(err)
			}
			want, err := audit.Wire(tc.old)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := audit.Wire(r.Detail); !reflect.DeepEqual(got, want) {
				t.Errorf("detail on the wire changed:\n got %v\nwant %v", got, want)
			}
			back, ok := audit.Record{Kind: audit.AlertReceived, Detail: want}.AlertReceived()
			if !ok || !reflect.DeepEqual(back, tc.typed) {
				t.Errorf("read back %+v (%v), want %+v", back, ok, tc.typed)
			}
		})
	}
}
