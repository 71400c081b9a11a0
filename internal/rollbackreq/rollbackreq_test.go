package rollbackreq

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

var (
	at     = time.Date(2025, 3, 1, 12, 30, 0, 0, time.FixedZone("CET", 3600))
	deploy = events.Deploy{
		ID: "d-shop-v2", Service: "shop", Environment: "production", Version: "v2", PreviousVersion: "v1",
		Hosts: []string{"web1:22", "web2:22"}, Labels: map[string]string{"team": "payments"},
	}
)

// TestFromRun: a failed run's request names the run, the deploy and its
// sequence, with an id derived from the run (a second conclusion of the
// same run must ask for the same rollback).
func TestFromRun(t *testing.T) {
	r := FromRun("01JRUN", deploy, 7, "shop-errors", "error ratio 0.07 > max 0.05", at)
	want := events.RollbackRequest{
		ID: "rb-01JRUN", Service: "shop", Environment: "production", Version: "v2", ToVersion: "v1",
		Hosts: []string{"web1:22", "web2:22"}, Labels: map[string]string{"team": "payments"},
		Reason: "error ratio 0.07 > max 0.05", Source: events.SourceValidation, RunID: "01JRUN",
		DeployID: "d-shop-v2", DeploySeq: 7, Policy: "shop-errors", Time: at.UTC(),
	}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("got  %+v\nwant %+v", r, want)
	}
	if err := Validate(r); err != nil {
		t.Errorf("a run's request is invalid: %v", err)
	}
}

// TestFromAlert: an alert's request id depends on the alert and the deploy
// only, so Alertmanager's repeats ask for one rollback; the id is the one
// the watcher has always sent (a changed id would roll back again after an
// upgrade).
func TestFromAlert(t *testing.T) {
	ref := events.AlertRef{Name: "ShopErrorsHigh", Fingerprint: "4f2a9c0d1e", StartsAt: at.UTC(),
		Labels: map[string]string{"alertname": "ShopErrorsHigh", "service": "shop", "environment": "production"}}
	r := FromAlert(ref, deploy, 9, "shop-errors", at)
	want := events.RollbackRequest{
		ID: "alert-7e49b46be5924eadbccfb5fb", Service: "shop", Environment: "production", Version: "v2", ToVersion: "v1",
		Hosts: []string{"web1:22", "web2:22"}, Labels: map[string]string{"team": "payments"},
		Reason: "alert ShopErrorsHigh firing since 2025-03-01T11:30:00Z", Source: events.SourceAlert,
		DeployID: "d-shop-v2", DeploySeq: 9, Policy: "shop-errors", Time: at.UTC(), Alert: &ref,
	}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("got  %+v\nwant %+v", r, want)
	}
	if err := Validate(r); err != nil {
		t.Errorf("an alert's request is invalid: %v", err)
	}
	if again := FromAlert(ref, deploy, 9, "shop-errors", at.Add(time.Hour)); again.ID != r.ID {
		t.Errorf("a repeat of the alert asks anew: %s, then %s", r.ID, again.ID)
	}
	next := deploy
	next.ID = "d-shop-v3"
	if other := FromAlert(ref, next, 10, "shop-errors", at); other.ID == r.ID {
		t.Errorf("the same alert about another deploy reuses id %s", r.ID)
	}
}

// TestManual: each `watcher rollback` is a new request; Pin fills in the
// deploy found but keeps a --to-version given.
func TestManual(t *testing.T) {
	a := Manual("shop", "production", "", "", "ops says so", at)
	b := Manual("shop", "production", "", "", "ops says so", at)
	if a.ID == b.ID || !events.IDPattern.MatchString(a.ID) {
		t.Errorf("manual ids %q and %q: want two fresh ids", a.ID, b.ID)
	}
	if a.Source != events.SourceManual || a.Time != at.UTC() || a.Version != "" || a.DeployID != "" {
		t.Errorf("manual request %+v", a)
	}
	if err := Validate(a); err != nil {
		t.Errorf("a manual request without a version is invalid: %v", err)
	}
	Pin(&a, deploy, 3)
	if a.Version != "v2" || a.ToVersion != "v1" || a.DeployID != "d-shop-v2" || a.DeploySeq != 3 ||
		!slices.Equal(a.Hosts, deploy.Hosts) || a.Labels["team"] != "payments" {
		t.Errorf("pinned to %+v", a)
	}
	c := Manual("shop", "production", "", "v0", "ops says so", at)
	Pin(&c, deploy, 3)
	if c.ToVersion != "v0" {
		t.Errorf("--to-version v0 pinned as %q", c.ToVersion)
	}
}

// TestValidate: what the executor would reject is refused before it is
// sent, naming the field.
func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		req   func() events.RollbackRequest
		field string
	}{
		{"path to_version", func() events.RollbackRequest { return Manual("shop", "production", "", "../x", "r", at) }, "to_version"},
		{"hostile service", func() events.RollbackRequest { return Manual("shop;rm -rf /", "production", "", "", "r", at) }, "service"},
		{"no reason", func() events.RollbackRequest { return Manual("shop", "production", "", "", "", at) }, "reason"},
		{"escape in reason", func() events.RollbackRequest { return Manual("shop", "production", "", "", "\x1b[31mred", at) }, "reason"},
		{"option host", func() events.RollbackRequest {
			d := deploy
			d.Hosts = []string{"-oProxyCommand=x"}
			return FromRun("01JRUN", d, 1, "p", "r", at)
		}, "hosts[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rej *events.RejectError
			if err := Validate(tc.req()); !errors.As(err, &rej) || rej.Field != tc.field {
				t.Errorf("Validate: %v, want a rejection of field %q", err, tc.field)
			}
		})
	}
}

// TestPublish: a request goes to rollbacks.<environment>.<service> as the
// JSON it always was, with its id as Nats-Msg-Id, so that publishing it
// again within the duplicate window adds nothing; an invalid one is not
// sent at all.
func TestPublish(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r := FromRun("01JRUN", deploy, 7, "shop-errors", "error ratio 0.07 > max 0.05", at)
	for range 2 {
		if err := Publish(ctx, n.JS, r); err != nil {
			t.Fatal(err)
		}
	}
	bad := Manual("shop", "production", "", "../x", "r", at)
	var rej *events.RejectError
	if err := Publish(ctx, n.JS, bad); !errors.As(err, &rej) || rej.Field != "to_version" {
		t.Errorf("publishing an invalid request: %v, want a rejection of to_version", err)
	}

	s, err := n.JS.Stream(ctx, bus.RollbacksStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("%d messages on %s, want 1 (the second publish is a duplicate, the invalid one is not sent)", info.State.Msgs, bus.RollbacksStream)
	}
	m, err := s.GetMsg(ctx, info.State.FirstSeq)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "rollbacks.production.shop" || m.Subject != Subject(r) {
		t.Errorf("published on %s, want rollbacks.production.shop", m.Subject)
	}
	if got := m.Header.Get(nats.MsgIdHdr); got != r.ID {
		t.Errorf("Nats-Msg-Id %q, want %q", got, r.ID)
	}
	if wire, _ := json.Marshal(r); string(m.Data) != string(wire) {
		t.Errorf("on the wire:\n%s\nwant\n%s", m.Data, wire)
	}
	got, rejected := Decode(m.Subject, m.Data)
	if rejected != nil {
		t.Fatalf("the executor rejects what was published: %v", rejected.Err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Errorf("decoded  %+v\npublished %+v", got, r)
	}
}

// flaky fails its first publishes, as JetStream does while a stream's
// leader is being elected.
type flaky struct {
	fails int
	calls []string
}

func (f *flaky) Publish(_ context.Context, subject string, _ []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	f.calls = append(f.calls, subject)
	if len(f.calls) <= f.fails {
		return nil, jetstream.ErrNoStreamResponse
	}
	return &jetstream.PubAck{}, nil
}

// TestPublishRetries: a publish that fails is tried again, up to five
// times, and the last error is returned with the request and subject.
func TestPublishRetries(t *testing.T) {
	r := FromRun("01JRUN", deploy, 7, "shop-errors", "r", at)
	f := &flaky{fails: 2}
	if err := Publish(t.Context(), f, r); err != nil || len(f.calls) != 3 {
		t.Errorf("after 2 failures: %v in %d calls, want success on the 3rd", err, len(f.calls))
	}
	f = &flaky{fails: 100}
	err := Publish(t.Context(), f, r)
	if !errors.Is(err, jetstream.ErrNoStreamResponse) || !strings.Contains(err.Error(), "rb-01JRUN") ||
		!strings.Contains(err.Error(), "rollbacks.production.shop") || len(f.calls) != 5 {
		t.Errorf("always failing: %v in %d calls, want the last error naming the request and subject after 5", err, len(f.calls))
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	f = &flaky{fails: 100}
	if err := Publish(ctx, f, r); !errors.Is(err, context.Canceled) || len(f.calls) != 1 {
		t.Errorf("cancelled: %v in %d calls, want context.Canceled after 1", err, len(f.calls))
	}
}

// TestDecode: what arrives on ROLLBACKS is a request only if it is valid
// and on its own subject; a rejection names the field and the names the
// subject gives, for the audit.
func TestDecode(t *testing.T) {
	r := FromRun("01JRUN", deploy, 7, "shop-errors", "r", at)
	wire, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if got, rej := Decode("rollbacks.production.shop", wire); rej != nil || !reflect.DeepEqual(got, r) {
		t.Errorf("valid request: %+v, %+v", got, rej)
	}
	for _, tc := range []struct {
		name, subject, data string
		want                Rejection
	}{
		{"another service's subject", "rollbacks.production.billing", string(wire),
			Rejection{Subject: "rollbacks.production.billing", Environment: "production", Service: "billing", Field: "subject"}},
		{"not JSON", "rollbacks.staging.shop", "{", Rejection{Subject: "rollbacks.staging.shop", Environment: "staging", Service: "shop", Field: "json"}},
		{"unknown field", "rollbacks.production.shop", `{"id": "x", "command": "rm -rf /"}`,
			Rejection{Subject: "rollbacks.production.shop", Environment: "production", Service: "shop", Field: "command"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, rej := Decode(tc.subject, []byte(tc.data))
			if rej == nil {
				t.Fatalf("accepted as %+v", got)
			}
			if rej.Err == nil {
				t.Error("rejection without its error")
			}
			rej.Err = nil
			if *rej != tc.want {
				t.Errorf("rejection %+v, want %+v", *rej, tc.want)
			}
		})
	}
}

// TestDecodeMessage: a message on ROLLBACKS is a decision when it has an
// action, judged by the decision's rules (a rejection says so), else a
// request.
func TestDecodeMessage(t *testing.T) {
	r := FromRun("01JRUN", deploy, 7, "shop-errors", "r", at)
	wire, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if m, rej := DecodeMessage("rollbacks.production.shop", wire); rej != nil || m.Decision != nil || !reflect.DeepEqual(*m.Request, r) {
		t.Errorf("request: %+v, %+v", m, rej)
	}
	d := events.RollbackDecision{ID: "01JDEC", Action: events.ActionCancel, RequestID: r.ID, Service: "shop", Environment: "production",
		Reason: "false alarm", By: "alice", Via: events.ViaCLI, Time: at.UTC()}
	wire, err = events.EncodeRollbackDecision(d)
	if err != nil {
		t.Fatal(err)
	}
	if m, rej := DecodeMessage("rollbacks.production.shop", wire); rej != nil || m.Request != nil || !reflect.DeepEqual(*m.Decision, d) {
		t.Errorf("decision: %+v, %+v", m, rej)
	}
	m, rej := DecodeMessage("rollbacks.production.shop", []byte(`{"action": "cancel", "request_id": "rb-1", "source": "manual"}`))
	if rej == nil || !rej.Decision || rej.Field != "source" {
		t.Errorf("a decision with a request's field: %+v, %+v; want a decision rejected on source", m, rej)
	}
	m, rej = DecodeMessage("rollbacks.production.shop", []byte(`{"id": "x", "reason": "r"}`))
	if rej == nil || rej.Decision {
		t.Errorf("a bad request: %+v, %+v; want a request rejected", m, rej)
	}
}
