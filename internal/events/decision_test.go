package events

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

const decisionBase = `{"id":"01JDX9","action":"cancel","request_id":"rb-01JDX7","service":"shop",
 "environment":"production","reason":"the dip is the payment provider, not us","by":"alice","via":"cli",
 "time":"2026-11-25T18:11:00Z"}`

func TestDecodeRollbackDecision(t *testing.T) {
	d, err := DecodeRollbackDecision("rollbacks.production.shop", []byte(decisionBase))
	if err != nil {
		t.Fatal(err)
	}
	want := RollbackDecision{ID: "01JDX9", Action: ActionCancel, RequestID: "rb-01JDX7", Service: "shop", Environment: "production",
		Reason: "the dip is the payment provider, not us", By: "alice", Via: ViaCLI, Time: time.Date(2026, 11, 25, 18, 11, 0, 0, time.UTC)}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("got  %+v\nwant %+v", d, want)
	}
	if !IsRollbackDecision([]byte(decisionBase)) || IsRollbackDecision([]byte(rollbackBase)) || IsRollbackDecision([]byte(`["action"]`)) {
		t.Error("IsRollbackDecision does not tell a decision (an action member) from a request")
	}

	bad := []struct {
		name    string
		subject string
		data    []byte
		field   string
	}{
		{"size", "", []byte(`{"id":"` + strings.Repeat("x", MaxDecisionSize) + `"}`), "size"},
		{"not JSON", "", []byte(`{"action":`), "json"},
		{"unknown field", "", edit(t, decisionBase, set("source", "manual")), "source"},
		{"duplicate action", "", []byte(`{"action":"approve","action":"cancel"}`), "action"},
		{"missing action", "", edit(t, decisionBase, del("action")), "action"},
		{"unknown action", "", edit(t, decisionBase, set("action", "execute")), "action"},
		{"action not a string", "", edit(t, decisionBase, set("action", true)), "action"},
		{"missing id", "", edit(t, decisionBase, del("id")), "id"},
		{"request id wildcard", "", edit(t, decisionBase, set("request_id", "rb-*")), "request_id"},
		{"request id path", "", edit(t, decisionBase, set("request_id", "../../x")), "request_id"},
		{"request id long", "", edit(t, decisionBase, set("request_id", strings.Repeat("a", 201))), "request_id"},
		{"missing reason", "", edit(t, decisionBase, del("reason")), "reason"},
		{"long reason", "", edit(t, decisionBase, set("reason", strings.Repeat("x", MaxReasonLen+1))), "reason"},
		{"reason escape", "", edit(t, decisionBase, set("reason", "ok\x1b[2J")), "reason"},
		{"missing by", "", edit(t, decisionBase, del("by")), "by"},
		{"by newline", "", edit(t, decisionBase, set("by", "alice\nrollback.approved")), "by"},
		{"by long", "", edit(t, decisionBase, set("by", strings.Repeat("b", MaxByLen+1))), "by"},
		{"via deadline", "", edit(t, decisionBase, set("via", "deadline")), "via"},
		{"missing via", "", edit(t, decisionBase, del("via")), "via"},
		{"bad time", "", edit(t, decisionBase, set("time", "now")), "time"},
		{"other service subject", "rollbacks.production.billing", []byte(decisionBase), "subject"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			subject := tt.subject
			if subject == "" {
				subject = "rollbacks.production.shop"
			}
			_, err := DecodeRollbackDecision(subject, tt.data)
			var rej *RejectError
			if !errors.As(err, &rej) {
				t.Fatalf("got %v, want a *RejectError on %q", err, tt.field)
			}
			if rej.Field != tt.field {
				t.Errorf("rejected field %q (%v), want %q", rej.Field, err, tt.field)
			}
		})
	}
}

func TestRollbackRequestAsk(t *testing.T) {
	r, err := DecodeRollbackRequest("rollbacks.production.shop", edit(t, rollbackBase, set("ask", true)))
	if err != nil || !r.Ask {
		t.Fatalf("ask: true decoded as %+v, %v", r, err)
	}
	b, err := EncodeRollbackRequest(r)
	if err != nil || !strings.Contains(string(b), `"ask":true`) {
		t.Fatalf("encoded as %s, %v", b, err)
	}
	_, err = DecodeRollbackRequest("rollbacks.production.shop", edit(t, rollbackBase, set("ask", "yes")))
	var rej *RejectError
	if !errors.As(err, &rej) || rej.Field != "ask" {
		t.Errorf(`ask: "yes" gave %v, want a rejection of ask`, err)
	}
}

// FuzzDecodeRollbackDecision: what is accepted obeys the rules (checked
// here independently of Validate), on its own subject, and reads back the
// same after encoding; what is refused names a field.
func FuzzDecodeRollbackDecision(f *testing.F) {
	f.Add("rollbacks.production.shop", []byte(decisionBase))
	f.Add("rollbacks.production.shop", []byte(`{"id":"1","action":"approve","request_id":"rb-1","service":"shop","environment":"production","reason":"ok","by":"b","via":"http"}`))
	f.Add("rollbacks.production.shop", []byte(`{"action":"cancel","request_id":"rb-1\u0000","by":"\u202e"}`))
	f.Add("rollbacks.production.billing", []byte(decisionBase))
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		d, err := DecodeRollbackDecision(subject, data)
		d2, err2 := DecodeRollbackDecision(subject, data)
		sameResult(t, d, err, d2, err2)
		if !checkError(t, err) {
			if !reflect.DeepEqual(d, RollbackDecision{}) {
				t.Fatalf("error %v with a non-zero decision %+v", err, d)
			}
			return
		}
		if !IsRollbackDecision(data) {
			t.Fatalf("accepted %q, which IsRollbackDecision does not call a decision", data)
		}
		if subject != Subject(RollbacksPrefix, d.Environment, d.Service) {
			t.Fatalf("accepted %+v on subject %q", d, subject)
		}
		if !IDPattern.MatchString(d.ID) || !IDPattern.MatchString(d.RequestID) {
			t.Fatalf("accepted ids %q, %q", d.ID, d.RequestID)
		}
		checkDeployName(t, "service", d.Service)
		checkDeployName(t, "environment", d.Environment)
		if d.Action != ActionCancel && d.Action != ActionApprove {
			t.Fatalf("accepted action %q", d.Action)
		}
		if d.Via != ViaCLI && d.Via != ViaHTTP && d.Via != ViaLink {
			t.Fatalf("accepted via %q", d.Via)
		}
		if d.By == "" || len([]rune(d.By)) > MaxByLen || !allPrintable(d.By) {
			t.Fatalf("accepted by %q", d.By)
		}
		if d.Reason == "" || len([]rune(d.Reason)) > MaxReasonLen ||
			!allPrintable(strings.NewReplacer("\n", "", "\t", "").Replace(d.Reason)) {
			t.Fatalf("accepted reason %q", d.Reason)
		}
		b, err := EncodeRollbackDecision(d)
		if err != nil {
			t.Fatalf("EncodeRollbackDecision(%+v): %v", d, err)
		}
		again, err := DecodeRollbackDecision(subject, b)
		sameResult(t, d, nil, again, err)
		if _, err := DecodeRollbackRequest(subject, data); err == nil {
			t.Fatalf("%q decodes as both a decision and a request", data)
		}
	})
}
