package web

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// The secrets of the tests' `ingest:`. Each test checks that none reaches
// a log line or an audit record.
const (
	ciToken      = "ci-0123456789abcdef0123456789abcdef"
	otherToken   = "other-0123456789abcdef0123456789ab"
	githubSecret = "gh-secret-0123456789abcdef01234567"
	gitlabToken  = "gl-token-0123456789abcdef012345678"
)

var testSecrets = []string{ciToken, otherToken, githubSecret, gitlabToken}

// ingestEnv is a Server with an Ingest over a real embedded NATS, on a
// loopback HTTP server.
type ingestEnv struct {
	nats *testutil.NATS
	url  string
	reg  *prometheus.Registry
	logs *syncWriter
	buf  *bytes.Buffer
}

// startIngest serves the endpoints with `ingest:` allowing token "ci"
// shop-* in production, "other" billing anywhere, the GitHub example's
// repository in production and the GitLab example's project in staging.
func startIngest(t *testing.T) *ingestEnv {
	t.Helper()
	creds, err := NewIngestCredentials(IngestSenders{
		Tokens: []ScopedSecret{
			{Name: "ci", Secret: ciToken, Services: []string{"shop-*"}, Environments: []string{"production"}},
			{Name: "other", Secret: otherToken, Services: []string{"billing"}, Environments: []string{"*"}},
		},
		GitHub: &ScopedSecret{Name: "github", Secret: githubSecret, Services: []string{"Hello-World"}, Environments: []string{"production"}},
		GitLab: &ScopedSecret{Name: "gitlab", Secret: gitlabToken, Services: []string{"test-deployment-webhooks"}, Environments: []string{"staging"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return startIngestWith(t, creds)
}

func startIngestWith(t *testing.T, creds *IngestCredentials) *ingestEnv {
	t.Helper()
	n := testutil.StartNATS(t)
	e := &ingestEnv{nats: n, reg: prometheus.NewRegistry(), buf: &bytes.Buffer{}}
	e.logs = &syncWriter{w: e.buf, mu: &sync.Mutex{}}
	logger := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	in := &Ingest{JS: n.JS, Audit: &audit.Publisher{JS: n.JS}, Credentials: creds, Logger: logger, PublishTimeout: 2 * time.Second}
	in.Register(e.reg)
	srv := httptest.NewServer((&Server{Gatherer: e.reg, Reload: func() error { return nil }, Ingest: in, Logger: logger}).Handler())
	t.Cleanup(srv.Close)
	e.url = srv.URL
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", e.log())
		}
	})
	return e
}

func (e *ingestEnv) log() string {
	e.logs.mu.Lock()
	defer e.logs.mu.Unlock()
	return e.buf.String()
}

// count is watcher_ingest_requests_total{endpoint, result}.
func (e *ingestEnv) count(t *testing.T, endpoint, result string) float64 {
	t.Helper()
	m := testutil.Series(t, e.reg, "watcher_ingest_requests_total", "endpoint", endpoint, "result", result)
	if m == nil {
		t.Fatalf("no watcher_ingest_requests_total{endpoint=%q,result=%q}", endpoint, result)
	}
	return m.GetCounter().GetValue()
}

// stored is every message on DEPLOYS.
func (e *ingestEnv) stored(t *testing.T) []jetstream.RawStreamMsg {
	t.Helper()
	s, err := e.nats.JS.Stream(t.Context(), bus.DeploysStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, *m)
	}
	return out
}

// rejected is every event.rejected record.
func (e *ingestEnv) rejected(t *testing.T) []audit.Record {
	t.Helper()
	recs, err := audit.Read(t.Context(), e.nats.JS, audit.Filter{Kinds: []string{audit.EventRejected}})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// noSecrets fails the test when a secret is in the log or the audit.
func (e *ingestEnv) noSecrets(t *testing.T) {
	t.Helper()
	recs, err := audit.Read(t.Context(), e.nats.JS, audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	all, _ := json.Marshal(recs)
	for _, s := range testSecrets {
		if strings.Contains(e.log(), s) || strings.Contains(string(all), s) {
			t.Errorf("a secret (%.6s...) is in the log or the audit", s)
		}
	}
}

type response struct {
	status int
	header http.Header
	body   string
}

func send(t *testing.T, url string, body []byte, headers map[string]string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return response{resp.StatusCode, resp.Header, b.String()}
}

func bearer(token string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + token, "Content-Type": "application/json"}
}

func deploy(id, service, env string) events.Deploy {
	return events.Deploy{ID: id, Service: service, Environment: env, Version: "2026.11.25-1", PreviousVersion: "2026.11.24-3",
		Hosts: []string{"web1.example.com:22"}, Time: time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC), Labels: map[string]string{"team": "payments"}}
}

func native(t *testing.T, d events.Deploy) []byte {
	t.Helper()
	b, err := events.EncodeNative(d)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// cloudEvent is d as a CloudEvent carrying a CDEvents service.deployed.
func cloudEvent(t *testing.T, d events.Deploy) cloudevents.Event {
	t.Helper()
	b, err := events.EncodeCDEvent(d, "/ci/pipeline")
	if err != nil {
		t.Fatal(err)
	}
	ev := cloudevents.NewEvent()
	if err := ev.UnmarshalJSON(b); err != nil {
		t.Fatal(err)
	}
	return ev
}

// sendCloudEvent sends ev with the CloudEvents SDK's HTTP client, in
// structured or binary mode, and returns the HTTP status.
func sendCloudEvent(t *testing.T, url, token string, ev cloudevents.Event, structured bool) int {
	t.Helper()
	p, err := cloudevents.NewHTTP(cloudevents.WithTarget(url), cloudevents.WithHeader("Authorization", "Bearer "+token))
	if err != nil {
		t.Fatal(err)
	}
	c, err := cloudevents.NewClient(p)
	if err != nil {
		t.Fatal(err)
	}
	ctx := cloudevents.WithEncodingBinary(t.Context())
	if structured {
		ctx = cloudevents.WithEncodingStructured(t.Context())
	}
	var res *cehttp.Result
	if r := c.Send(ctx, ev); !cloudevents.ResultAs(r, &res) {
		t.Fatalf("sending the CloudEvent: %v", r)
	}
	return res.StatusCode
}

// TestIngestEvents: every format that NATS producers may send is taken
// over HTTP, stored on deploys.<environment>.<service> under its id with
// what the watcher's consumer decodes it by, and answered 202 with the id.
func TestIngestEvents(t *testing.T) {
	e := startIngest(t)
	url := e.url + "/api/v1/events"
	tests := []struct {
		name   string
		deploy events.Deploy
		send   func(d events.Deploy) int
		format string
	}{
		{"native JSON", deploy("d-native", "shop-api", "production"), func(d events.Deploy) int {
			r := send(t, url, native(t, d), bearer(ciToken))
			var reply ingestReply
			if err := json.Unmarshal([]byte(r.body), &reply); err != nil || reply.ID != d.ID || reply.Status != "accepted" ||
				reply.Subject != "deploys.production.shop-api" || reply.StreamSeq == 0 || reply.Duplicate {
				t.Errorf("reply %q (%v), want the id, subject and sequence", r.body, err)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			return r.status
		}, events.FormatJSON},
		{"CloudEvent, structured mode (SDK)", deploy("d-structured", "shop-web", "production"), func(d events.Deploy) int {
			return sendCloudEvent(t, url, ciToken, cloudEvent(t, d), true)
		}, events.FormatCloudEventStructured},
		{"CloudEvent, binary mode (SDK)", deploy("d-binary", "shop-web", "production"), func(d events.Deploy) int {
			return sendCloudEvent(t, url, ciToken, cloudEvent(t, d), false)
		}, events.FormatCloudEventBinary},
		{"bare CDEvent", deploy("d-cdevent", "billing", "staging"), func(d events.Deploy) int {
			ev := cloudEvent(t, d)
			return send(t, url, ev.Data(), bearer(otherToken)).status
		}, events.FormatCDEvent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := len(e.stored(t))
			if status := tc.send(tc.deploy); status != http.StatusAccepted {
				t.Fatalf("status %d, want 202", status)
			}
			msgs := e.stored(t)
			if len(msgs) != n+1 {
				t.Fatalf("%d messages on DEPLOYS, want %d", len(msgs), n+1)
			}
			m := msgs[n]
			if want := events.Subject(events.DeploysPrefix, tc.deploy.Environment, tc.deploy.Service); m.Subject != want {
				t.Errorf("stored on %s, want %s", m.Subject, want)
			}
			if got := m.Header.Get(jetstream.MsgIDHeader); got != tc.deploy.ID {
				t.Errorf("Nats-Msg-Id %q, want the event id %q (as watcher publish sets it)", got, tc.deploy.ID)
			}
			if m.Header.Get("Authorization") != "" {
				t.Error("the Authorization header was stored")
			}
			// The consumer decodes the stored message to the same deploy.
			got, err := events.DecodeDeploy(m.Subject, m.Header, m.Data)
			if err != nil {
				t.Fatalf("the stored message does not decode: %v", err)
			}
			if got.ID != tc.deploy.ID || got.Version != tc.deploy.Version || got.PreviousVersion != tc.deploy.PreviousVersion ||
				len(got.Hosts) != 1 || got.Labels["team"] != "payments" || got.Format != tc.format {
				t.Errorf("stored %+v, want %+v in format %s", got, tc.deploy, tc.format)
			}
		})
	}
	if n := e.count(t, ingestEvents, resultAccepted); n != 4 {
		t.Errorf("accepted = %v, want 4", n)
	}
	e.noSecrets(t)
}

// TestIngestOneStreamOneDedup: an event sent over HTTP and then, with the
// same id, by a NATS producer (as `watcher publish` publishes it) is
// stored once; an HTTP retry is answered 202 and stored once too.
func TestIngestOneStreamOneDedup(t *testing.T) {
	e := startIngest(t)
	d := deploy("d-both-ways", "shop-api", "production")
	if r := send(t, e.url+"/api/v1/events", native(t, d), bearer(ciToken)); r.status != http.StatusAccepted {
		t.Fatalf("status %d %q", r.status, r.body)
	}
	b, err := events.EncodeCDEvent(d, "rollback-watcher/cli")
	if err != nil {
		t.Fatal(err)
	}
	msg := &nats.Msg{Subject: "deploys.production.shop-api", Data: b, Header: nats.Header{"Content-Type": []string{events.ContentTypeCloudEvents}}}
	ack, err := e.nats.JS.PublishMsg(t.Context(), msg, jetstream.WithMsgID(d.ID))
	if err != nil {
		t.Fatal(err)
	}
	if !ack.Duplicate {
		t.Error("the NATS publish of the same id was stored again")
	}
	r := send(t, e.url+"/api/v1/events", native(t, d), bearer(ciToken))
	var reply ingestReply
	_ = json.Unmarshal([]byte(r.body), &reply)
	if r.status != http.StatusAccepted || !reply.Duplicate || reply.ID != d.ID {
		t.Errorf("HTTP retry: status %d %q, want 202 saying duplicate", r.status, r.body)
	}
	if n := len(e.stored(t)); n != 1 {
		t.Errorf("%d messages on DEPLOYS, want 1", n)
	}
	if n := e.count(t, ingestEvents, resultDuplicate); n != 1 {
		t.Errorf("duplicate = %v, want 1", n)
	}
}

// TestIngestRefusals: whatever is refused is answered with a status and a
// message that says what to do, recorded as event.rejected naming who and
// why (never the token), counted, and never stored.
func TestIngestRefusals(t *testing.T) {
	e := startIngest(t)
	url := e.url + "/api/v1/events"
	good := native(t, deploy("d-1", "shop-api", "production"))
	rolledBack, err := events.EncodeRolledBack(events.RolledBack{ID: "rb-1", Service: "shop-api", Environment: "production",
		Version: "v1", Reason: "bad"}, "/other-tool")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		body    []byte
		headers map[string]string
		status  int
		say     string
		result  string
		field   string
		sender  string
		service string
	}{
		{"no token", good, map[string]string{"Content-Type": "application/json"}, 401,
			`no Authorization header: send "Authorization: Bearer <token>"`, resultUnauthorized, "authorization", "", ""},
		{"wrong token", good, bearer("not-" + ciToken), 401, "the bearer token is not one of ingest.tokens", resultUnauthorized, "authorization", "", ""},
		{"basic auth", good, map[string]string{"Authorization": "Basic Y2k6Y2k="}, 401, `uses scheme "Basic"`, resultUnauthorized, "authorization", "", ""},
		{"service out of scope", native(t, deploy("d-2", "billing", "production")), bearer(ciToken), 403,
			`token ci may not deploy service billing in environment production: its scope in ingest: is services ["shop-*"], environments ["production"]`,
			resultForbidden, "scope", "ci", "billing"},
		{"environment out of scope", native(t, deploy("d-3", "shop-api", "staging")), bearer(ciToken), 403,
			"token ci may not deploy service shop-api in environment staging", resultForbidden, "scope", "ci", "shop-api"},
		{"invalid event", []byte(`{"id": "d-4", "service": "shop api", "environment": "production", "version": "1"}`), bearer(ciToken), 400,
			`deploy event rejected: field "service": value "shop api" does not match`, resultRejected, "service", "ci", ""},
		{"unknown field", []byte(`{"id": "d-5", "service": "shop", "environment": "production", "version": "1", "hots": []}`), bearer(ciToken), 400,
			`deploy event rejected: field "hots"`, resultRejected, "hots", "ci", ""},
		{"not a deploy", rolledBack, map[string]string{"Authorization": "Bearer " + ciToken, "Content-Type": events.ContentTypeCloudEvents}, 400,
			"is not a deploy and starts no run: send service.deployed or service.upgraded events here", resultRejected, "type", "ci", ""},
		{"too large", bytes.Repeat([]byte(" "), events.MaxEventSize+1), bearer(ciToken), 413,
			"the body is over the limit of 1048576 bytes", resultTooLarge, "size", "ci", ""},
		{"cross-site page", good, map[string]string{"Authorization": "Bearer " + ciToken, "Sec-Fetch-Site": "cross-site"}, 403,
			"cross-origin request refused", resultForbidden, "request", "", ""},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := e.count(t, ingestEvents, tc.result)
			r := send(t, url, tc.body, tc.headers)
			if r.status != tc.status || !strings.Contains(r.body, tc.say) {
				t.Errorf("status %d %q, want %d saying %q", r.status, r.body, tc.status, tc.say)
			}
			if tc.status == 401 && r.header.Get("WWW-Authenticate") != `Bearer realm="rollback-watcher"` {
				t.Errorf("WWW-Authenticate %q, want Bearer", r.header.Get("WWW-Authenticate"))
			}
			if n := e.count(t, ingestEvents, tc.result); n != before+1 {
				t.Errorf("%s = %v, want %v", tc.result, n, before+1)
			}
			recs := e.rejected(t)
			if len(recs) != i+1 {
				t.Fatalf("%d event.rejected records, want %d", len(recs), i+1)
			}
			rec := recs[i]
			d, ok := rec.EventRejected()
			if !ok || d.HTTP == nil || d.Field != tc.field || d.HTTP.Endpoint != "/api/v1/events" || d.HTTP.Status != tc.status ||
				d.HTTP.Sender != tc.sender || !strings.HasPrefix(d.HTTP.Remote, "127.0.0.1:") || d.HTTP.UserAgent == "" {
				t.Errorf("detail %+v (http %+v), want field %q, status %d, sender %q", d, d.HTTP, tc.field, tc.status, tc.sender)
			}
			if rec.Service != tc.service || !strings.Contains(rec.Message, tc.say) {
				t.Errorf("record %s/%s %q, want service %q saying %q", rec.Service, rec.Environment, rec.Message, tc.service, tc.say)
			}
		})
	}
	if n := len(e.stored(t)); n != 0 {
		t.Errorf("%d refused events stored on DEPLOYS", n)
	}
	e.noSecrets(t)
}

// TestIngestRefusalsDoNotFloodTheAudit: a broken script retrying with a
// wrong token gets 401 every time, but past RefusalAuditBudget a minute
// from its address the refusals are only counted.
func TestIngestRefusalsDoNotFloodTheAudit(t *testing.T) {
	e := startIngest(t)
	for range 40 {
		if r := send(t, e.url+"/api/v1/events", []byte("{}"), bearer("wrong-token-0123456789")); r.status != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", r.status)
		}
	}
	if n := len(e.rejected(t)); n != RefusalAuditBudget {
		t.Errorf("%d event.rejected records, want %d", n, RefusalAuditBudget)
	}
	if n := e.count(t, ingestEvents, resultUnauthorized); n != 40 {
		t.Errorf("unauthorized = %v, want 40", n)
	}
	if !strings.Contains(e.log(), "the rest are counted, not logged or audited") {
		t.Error("the log does not say that the rest are only counted")
	}
}

// TestIngestUnavailable: when JetStream cannot store the event (a full
// stream, JetStream stopped), the sender is answered 503 with
// Retry-After, so that it keeps the event and sends it again; nothing is
// lost and the retry is stored once.
func TestIngestUnavailable(t *testing.T) {
	e := startIngest(t)
	url := e.url + "/api/v1/events"
	ctx := t.Context()

	// A stream the operator limited to one message, refusing new ones.
	s, err := e.nats.JS.Stream(ctx, bus.DeploysStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxMsgs, cfg.Discard = 1, jetstream.DiscardNew
	if _, err := e.nats.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if r := send(t, url, native(t, deploy("d-first", "shop-api", "production")), bearer(ciToken)); r.status != http.StatusAccepted {
		t.Fatalf("first event: %d %q", r.status, r.body)
	}
	r := send(t, url, native(t, deploy("d-full", "shop-api", "production")), bearer(ciToken))
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != fmt.Sprint(RetryAfterSeconds) ||
		!strings.Contains(r.body, "deploy event d-full not stored") || !strings.Contains(r.body, "send it again") {
		t.Errorf("full stream: %d (Retry-After %q) %q, want 503 with Retry-After", r.status, r.header.Get("Retry-After"), r.body)
	}
	cfg.MaxMsgs = -1
	if _, err := e.nats.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}

	// JetStream stopped (as after a storage failure), the server up.
	if err := e.nats.Server.ShutdownJetStream(); err != nil {
		t.Fatal(err)
	}
	r = send(t, url, native(t, deploy("d-down", "shop-api", "production")), bearer(ciToken))
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != fmt.Sprint(RetryAfterSeconds) {
		t.Errorf("JetStream down: %d (Retry-After %q) %q, want 503 with Retry-After", r.status, r.header.Get("Retry-After"), r.body)
	}
	if n := e.count(t, ingestEvents, resultUnavailable); n != 2 {
		t.Errorf("unavailable = %v, want 2", n)
	}
	if !strings.Contains(e.log(), "deploy event not stored; the sender is told to send it again") {
		t.Error("the failure is not logged")
	}
}

// TestIngestDisabled: without `ingest:` (or without the part an endpoint
// needs) the endpoints answer 404 saying how to enable them.
func TestIngestDisabled(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ingest *Ingest
	}{
		{"no Ingest", nil},
		{"no credentials", &Ingest{Credentials: &IngestCredentials{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer((&Server{Gatherer: prometheus.NewRegistry(), Reload: func() error { return nil }, Ingest: tc.ingest}).Handler())
			t.Cleanup(srv.Close)
			for path, part := range map[string]string{"/api/v1/events": "tokens", "/api/v1/hooks/github": "github", "/api/v1/hooks/gitlab": "gitlab"} {
				r := send(t, srv.URL+path, []byte("{}"), bearer(ciToken))
				if want := "add " + part + " to ingest: in its --config.file"; r.status != http.StatusNotFound || !strings.Contains(r.body, want) {
					t.Errorf("%s: %d %q, want 404 saying %q", path, r.status, r.body, want)
				}
			}
		})
	}
}

// TestIngestCredentials: senders may not share a secret, a token is
// found whatever the case of its scheme, scopes match globs, and String
// shows no secret.
func TestIngestCredentials(t *testing.T) {
	all := []string{"*"}
	creds, err := NewIngestCredentials(IngestSenders{
		Tokens: []ScopedSecret{{Name: "a", Secret: ciToken, Services: []string{"shop-*", "billing"}, Environments: []string{"production", "qa-*"}}},
		GitLab: &ScopedSecret{Name: "gitlab", Secret: gitlabToken, Services: all, Environments: all},
	})
	if err != nil {
		t.Fatal(err)
	}
	tok, why := creds.bearer("bearer  " + ciToken)
	if tok == nil || tok.name != "a" {
		t.Fatalf("the token is not found (scheme in lower case, extra space): %s", why)
	}
	for _, tc := range []struct {
		service, env string
		want         bool
	}{
		{"shop-api", "production", true},
		{"billing", "qa-3", true},     // second pattern of each list
		{"shop", "production", false}, // "shop-*" needs the dash
		{"shop-api", "staging", false},
		{"payments", "production", false},
	} {
		if got := tok.scope.allows(tc.service, tc.env); got != tc.want {
			t.Errorf("allows(%s, %s) = %v, want %v", tc.service, tc.env, got, tc.want)
		}
	}
	if s := fmt.Sprint(creds) + " / " + creds.LogValue().String(); s != "token a, gitlab / token a, gitlab" {
		t.Errorf("String / LogValue %q", s)
	}
	_, err = NewIngestCredentials(IngestSenders{Tokens: []ScopedSecret{{Name: "a", Secret: ciToken}, {Name: "b", Secret: ciToken}}})
	if err == nil || !strings.Contains(err.Error(), "ingest.tokens b holds the same token as a") || strings.Contains(err.Error(), ciToken) {
		t.Errorf("shared token: %v", err)
	}
	_, err = NewIngestCredentials(IngestSenders{GitHub: &ScopedSecret{Name: "github"}})
	if err == nil || !strings.Contains(err.Error(), "ingest.github: the secret is empty") {
		t.Errorf("empty secret: %v", err)
	}
}
