package alerts

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/deploys"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

type recorder struct{ audit.Memory }

func (r *recorder) last(t *testing.T) audit.Record {
	t.Helper()
	recs := r.All()
	if len(recs) == 0 {
		t.Fatal("no audit record")
	}
	return recs[len(recs)-1]
}

const rules = `policies:
  - name: shop
    match: {service: shop, environment: production}
    checks: [{name: up, query: up, min: 1}]
    rollback: {link: /srv/shop/current}
    alerts:
      matchers: ['alertname="ShopErrorsHigh"', 'severity=~"critical|page"']
      within: 1h
  - name: cart
    match: {service: cart}
    checks: [{name: up, query: up, min: 1}]
    rollback: {link: /srv/cart/current}
`

func webhook(status string, labels map[string]string, fingerprint string, startsAt time.Time) string {
	m := Message{Version: "4", GroupKey: `{}:{alertname="ShopErrorsHigh"}`, Status: status, Receiver: "watcher",
		Alerts: []Alert{{Status: status, Labels: labels, StartsAt: startsAt, GeneratorURL: "http://prometheus:9090/graph?g0.expr=shop_errors",
			Fingerprint: fingerprint}}}
	b, _ := json.Marshal(m)
	return string(b)
}

// newReceiver is a Receiver on an embedded NATS with the test rules, its
// audit in a recorder and its clock stopped at now.
func newReceiver(t *testing.T) (*testutil.NATS, *Receiver, *recorder, time.Time) {
	t.Helper()
	n := testutil.StartNATS(t)
	file := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(file, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := policy.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	now := time.Now()
	rc := &Receiver{JS: n.JS, Policies: func() *policy.Set { return set }, Audit: rec, Now: func() time.Time { return now }}
	return n, rc, rec, now
}

func TestReceiver(t *testing.T) {
	n, rc, rec, now := newReceiver(t)
	ctx := t.Context()
	deploy := func(svc, version, prev string) {
		t.Helper()
		b, _ := json.Marshal(map[string]any{"id": "d-" + svc + "-" + version, "service": svc, "environment": "production",
			"version": version, "previous_version": prev})
		if _, err := n.JS.Publish(ctx, "deploys.production."+svc, b); err != nil {
			t.Fatal(err)
		}
	}
	requests := func() []events.RollbackRequest {
		t.Helper()
		s, err := n.JS.Stream(ctx, bus.RollbacksStream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []events.RollbackRequest
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := s.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			r, err := events.DecodeRollbackRequest(m.Subject, m.Data)
			if err != nil {
				t.Fatalf("the executor would reject the request: %v", err)
			}
			out = append(out, r)
		}
		return out
	}
	shop := map[string]string{"alertname": "ShopErrorsHigh", "severity": "critical", "service": "shop", "environment": "production"}
	starts := now.Add(-time.Minute).UTC().Truncate(time.Second)

	// No deploy yet.
	if err := rc.Handle(ctx, strings.NewReader(webhook("firing", shop, "a1b2c3d4e5f60718", starts))); err != nil {
		t.Fatal(err)
	}
	if got := rec.last(t).Message; !strings.Contains(got, "no deploy of shop in production") {
		t.Errorf("alert before any deploy: %q", got)
	}

	deploy("shop", "v2", "v1")
	for range 3 { // Alertmanager repeats a firing group
		if err := rc.Handle(ctx, strings.NewReader(webhook("firing", shop, "a1b2c3d4e5f60718", starts))); err != nil {
			t.Fatal(err)
		}
	}
	reqs := requests()
	if len(reqs) != 1 {
		t.Fatalf("%d rollback requests for one alert sent three times, want 1", len(reqs))
	}
	r := reqs[0]
	if r.Source != events.SourceAlert || r.Version != "v2" || r.ToVersion != "v1" || r.DeployID != "d-shop-v2" || r.Alert == nil ||
		r.Alert.Name != "ShopErrorsHigh" || r.Alert.Fingerprint != "a1b2c3d4e5f60718" || !r.Alert.StartsAt.Equal(starts) ||
		!strings.Contains(r.Alert.GeneratorURL, "shop_errors") || r.Alert.Labels["severity"] != "critical" {
		t.Errorf("request %+v, alert %+v", r, r.Alert)
	}
	got := rec.last(t)
	if got.Kind != audit.AlertReceived || got.RequestID != r.ID || got.DeployID != "d-shop-v2" || got.Policy != "shop" ||
		!strings.Contains(got.Message, "rollback requested") {
		t.Errorf("alert.received %+v", got)
	}

	for _, tc := range []struct {
		name   string
		body   string
		say    string
		status string
	}{
		{"resolved", webhook("resolved", shop, "a1b2c3d4e5f60718", starts), "resolved; nothing to do", "resolved"},
		{"matchers do not match", webhook("firing", map[string]string{"alertname": "ShopErrorsHigh", "severity": "warning", "service": "shop", "environment": "production"}, "0a", starts),
			"alert matchers", "firing"},
		{"policy without alerts", webhook("firing", map[string]string{"alertname": "CartDown", "service": "cart", "environment": "production"}, "0b", starts),
			"policy cart has no alerts section", "firing"},
		{"no policy", webhook("firing", map[string]string{"alertname": "X", "service": "billing", "environment": "production"}, "0c", starts),
			"no policy matches service billing", "firing"},
		{"no service label", webhook("firing", map[string]string{"alertname": "NodeDown"}, "0d", starts),
			"no valid service and environment labels", "firing"},
		{"hostile service label", webhook("firing", map[string]string{"alertname": "X", "service": "../../etc", "environment": "production"}, "0e", starts),
			"no valid service and environment labels", "firing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := rc.Handle(ctx, strings.NewReader(tc.body)); err != nil {
				t.Fatal(err)
			}
			got := rec.last(t)
			if got.Kind != audit.AlertReceived || !strings.Contains(got.Message, tc.say) || got.Detail["status"] != tc.status {
				t.Errorf("record %s %q (status %v), want it to say %q", got.Kind, got.Message, got.Detail["status"], tc.say)
			}
		})
	}

	// Too long after the deploy.
	rc.Now = func() time.Time { return now.Add(2 * time.Hour) }
	if err := rc.Handle(ctx, strings.NewReader(webhook("firing", shop, "ffff", starts))); err != nil {
		t.Fatal(err)
	}
	if got := rec.last(t).Message; !strings.Contains(got, "longer than the policy's within 1h") {
		t.Errorf("late alert: %q", got)
	}
	rc.Now = func() time.Time { return now }

	// Once the watcher has announced the rollback, an alert finds nothing
	// to roll back.
	rolled, err := events.EncodeRolledBack(events.RolledBack{ID: "rb-x", Service: "shop", Environment: "production", Version: "v1", FromVersion: "v2", Reason: "x", Time: now}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.JS.Publish(ctx, "deploys.production.shop", rolled); err != nil {
		t.Fatal(err)
	}
	if err := rc.Handle(ctx, strings.NewReader(webhook("firing", shop, "abcdef", starts))); err != nil {
		t.Fatal(err)
	}
	if got := rec.last(t).Message; !strings.Contains(got, "rolled back already") {
		t.Errorf("alert after the rollback: %q", got)
	}
	if len(requests()) != 1 {
		t.Errorf("more rollback requests than the one alert that could roll back")
	}

	// Not a webhook at all.
	var bad *BadRequest
	for _, body := range []string{`{`, `{"version": "3", "alerts": []}`, strings.Repeat("x", MaxPayload+1)} {
		if err := rc.Handle(ctx, strings.NewReader(body)); !errors.As(err, &bad) {
			t.Errorf("body %.20q: %v, want a BadRequest", body, err)
		}
	}
}

// TestRefused: a webhook request refused before it was read (cross-origin,
// not JSON) leaves a trace where an operator looks for alerts: the audit
// and watcher_alerts_total.
func TestRefused(t *testing.T) {
	rec := &recorder{}
	reg := prometheus.NewRegistry()
	rc := &Receiver{Audit: rec}
	rc.Register(reg)
	rc.Refused(t.Context(), `cross-origin request refused (Origin "http://evil.example")`)
	got := rec.last(t)
	if got.Kind != audit.AlertReceived || !strings.Contains(got.Message, `refused: cross-origin request refused (Origin "http://evil.example")`) ||
		got.Detail["outcome"] == nil || got.RequestID != "" {
		t.Errorf("record %+v", got)
	}
	if n := testutil.ToFloat64(t, reg, "watcher_alerts_total", "result", "refused"); n != 1 {
		t.Errorf("watcher_alerts_total{result=refused} = %v, want 1", n)
	}
}

// TestAlertFindsNewestValidDeploy: anyone who may publish on
// deploys.<env>.<svc> could silence alert rollbacks of the service by
// publishing anything after a bad deploy, had the newest message to decide.
// The newest message that is a valid deploy decides; what was passed over
// is said in the record.
func TestAlertFindsNewestValidDeploy(t *testing.T) {
	n, rc, rec, now := newReceiver(t)
	ctx := t.Context()
	publish := func(subject string, data []byte) {
		t.Helper()
		if _, err := n.JS.Publish(ctx, subject, data); err != nil {
			t.Fatal(err)
		}
	}
	deploy := func(svc, version, prev string) []byte {
		b, _ := json.Marshal(map[string]any{"id": "d-" + svc + "-" + version, "service": svc, "environment": "production",
			"version": version, "previous_version": prev})
		return b
	}
	rolled, err := events.EncodeRolledBack(events.RolledBack{ID: "rb-x", Service: "shop", Environment: "production", Version: "v1",
		FromVersion: "v2", Reason: "x", Time: now}, "test")
	if err != nil {
		t.Fatal(err)
	}
	// A CDEvent of a type that is neither a deploy nor our rollback.
	removed := []byte(strings.ReplaceAll(string(rolled), "service.rolledback", "service.removed"))
	if _, err := events.DecodeDeploy("deploys.production.shop", nil, removed); err == nil {
		t.Fatal("the service.removed event decodes as a deploy; the test needs one that does not")
	}
	var lastRequest events.RollbackRequest
	fire := func(fingerprint string) audit.Record {
		t.Helper()
		shop := map[string]string{"alertname": "ShopErrorsHigh", "severity": "critical", "service": "shop", "environment": "production"}
		if err := rc.Handle(ctx, strings.NewReader(webhook("firing", shop, fingerprint, now.Add(-time.Minute).UTC().Truncate(time.Second)))); err != nil {
			t.Fatal(err)
		}
		got := rec.last(t)
		if got.RequestID != "" {
			s, err := n.JS.Stream(ctx, bus.RollbacksStream)
			if err != nil {
				t.Fatal(err)
			}
			m, err := s.GetLastMsgForSubject(ctx, "rollbacks.production.shop")
			if err != nil {
				t.Fatal(err)
			}
			if lastRequest, err = events.DecodeRollbackRequest(m.Subject, m.Data); err != nil {
				t.Fatal(err)
			}
		}
		return got
	}

	publish("deploys.production.shop", deploy("shop", "v1", "v0"))
	publish("deploys.production.shop", deploy("shop", "v2", "v1"))
	publish("deploys.production.shop", []byte("garbage"))
	publish("deploys.production.shop", []byte(`{"id": "d-shop-v3"}`))
	publish("deploys.production.shop", deploy("cart", "v9", "v8")) // valid, but not for this subject
	publish("deploys.production.shop", removed)
	for i := range 50 { // other services' deploys in between
		publish("deploys.production.cart", deploy("cart", fmt.Sprintf("v%d", i+10), "v8"))
	}
	publish("deploys.production.shop", []byte(`{"version": "x\"} or vector(1) #"}`))
	got := fire("f1")
	if got.RequestID == "" || got.DeployID != "d-shop-v2" || lastRequest.DeployID != "d-shop-v2" || lastRequest.Version != "v2" ||
		lastRequest.ToVersion != "v1" {
		t.Fatalf("after invalid messages: record %q (deploy %q), request %+v; want the rollback of d-shop-v2", got.Message, got.DeployID, lastRequest)
	}
	if skipped, _ := got.Detail["skipped_messages"].(float64); skipped != 5 || !strings.Contains(got.Message, "passing over 5 newer messages") {
		t.Errorf("record %q, detail %v: want it to say the 5 newer messages that are no deploy were passed over", got.Message, got.Detail)
	}

	// Our own service.rolledback is not a deploy either: behind invalid
	// messages it still says the last deploy was rolled back already.
	publish("deploys.production.shop", rolled)
	publish("deploys.production.shop", []byte("garbage"))
	if got := fire("f2"); got.RequestID != "" || !strings.Contains(got.Message, "rolled back already") {
		t.Errorf("after the rollback and garbage: %q, want rolled back already", got.Message)
	}

	// A valid deploy after it decides again.
	publish("deploys.production.shop", deploy("shop", "v3", "v1"))
	publish("deploys.production.shop", []byte("garbage"))
	if got := fire("f3"); got.DeployID != "d-shop-v3" || lastRequest.DeployID != "d-shop-v3" {
		t.Errorf("after a new deploy and garbage: %q (deploy %q), want the rollback of d-shop-v3", got.Message, got.DeployID)
	}

	// The walk is bounded: past deploys.DefaultLimit messages that are no
	// deploy, the alert is ignored and the record says why.
	for range deploys.DefaultLimit {
		publish("deploys.production.shop", []byte("garbage"))
	}
	if got := fire("f4"); got.RequestID != "" || !strings.Contains(got.Message, fmt.Sprintf("none of the last %d messages", deploys.DefaultLimit)) {
		t.Errorf("after %d invalid messages: %q, want it ignored saying none of them is a deploy", deploys.DefaultLimit, got.Message)
	}
}
