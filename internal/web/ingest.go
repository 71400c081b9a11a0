package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
)

// Deploy events over HTTP (README "Send deploy events from your tool"),
// for tools that cannot publish on NATS. An event is decoded and
// validated by the same code as on NATS, stored on DEPLOYS under the
// Nats-Msg-Id that `watcher publish` uses (its id), and only then answered
// 202: the watcher's DEPLOYS consumer starts its run like any other, and
// an event sent over both HTTP and NATS is stored once. A request that is
// refused gets an event.rejected record, rate-limited per address like
// every refusal (see refuse).

// The endpoints, as watcher_ingest_requests_total names them.
const (
	ingestEvents = "events"
	ingestGitHub = "github"
	ingestGitLab = "gitlab"
)

// Results of watcher_ingest_requests_total.
const (
	resultAccepted     = "accepted"     // stored on DEPLOYS (202)
	resultDuplicate    = "duplicate"    // its id was stored already (202)
	resultIgnored      = "ignored"      // a webhook delivery that is no deploy (200)
	resultRejected     = "rejected"     // not a valid deploy event (400)
	resultUnauthorized = "unauthorized" // no or a wrong token or signature (401)
	resultForbidden    = "forbidden"    // out of the sender's scope, or cross-origin (403)
	resultTooLarge     = "too_large"    // over events.MaxEventSize (413)
	resultUnavailable  = "unavailable"  // JetStream did not store it (503)
	resultDisabled     = "disabled"     // the endpoint is not configured (404)
)

var ingestResults = []string{resultAccepted, resultDuplicate, resultIgnored, resultRejected, resultUnauthorized,
	resultForbidden, resultTooLarge, resultUnavailable, resultDisabled}

// DefaultPublishTimeout bounds storing one event on DEPLOYS.
const DefaultPublishTimeout = 5 * time.Second

// RetryAfterSeconds is what a 503 asks the sender to wait before sending
// the event again.
const RetryAfterSeconds = 5

// IngestAuditor records refused requests; *audit.Publisher is one.
type IngestAuditor interface {
	Record(ctx context.Context, r audit.Record) error
}

// Ingest takes deploy events over HTTP.
type Ingest struct {
	// JS stores events on DEPLOYS.
	JS          jetstream.Publisher
	Audit       IngestAuditor
	Credentials *IngestCredentials
	Logger      *slog.Logger
	// PublishTimeout bounds storing one event; DefaultPublishTimeout
	// when zero.
	PublishTimeout time.Duration

	once     sync.Once
	requests *prometheus.CounterVec
}

// Register adds watcher_ingest_requests_total{endpoint,result} to reg.
func (in *Ingest) Register(reg prometheus.Registerer) {
	in.init()
	reg.MustRegister(in.requests)
}

func (in *Ingest) init() {
	in.once.Do(func() {
		in.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watcher_ingest_requests_total",
			Help: "Requests to the HTTP deploy event endpoints (events, github, gitlab), by result: accepted, duplicate, ignored, rejected, unauthorized, forbidden, too_large, unavailable, disabled.",
		}, []string{"endpoint", "result"})
		for _, e := range []string{ingestEvents, ingestGitHub, ingestGitLab} {
			for _, r := range ingestResults {
				in.requests.WithLabelValues(e, r)
			}
		}
	})
}

func (in *Ingest) count(endpoint, result string) {
	if in == nil {
		return
	}
	in.init()
	in.requests.WithLabelValues(endpoint, result).Inc()
}

func (in *Ingest) publishTimeout() time.Duration {
	if in.PublishTimeout > 0 {
		return in.PublishTimeout
	}
	return DefaultPublishTimeout
}

// disabled says how to enable endpoint when it has no credentials, ""
// when it has.
func (in *Ingest) disabled(endpoint string) string {
	var c *IngestCredentials
	if in != nil {
		c = in.Credentials
	}
	const how = "deploy events over HTTP are not enabled on this watcher: add %s to ingest: in its --config.file " +
		"(README \"Send deploy events from your tool\")"
	switch {
	case endpoint == ingestEvents && (c == nil || len(c.tokens) == 0):
		return fmt.Sprintf(how, "tokens")
	case endpoint == ingestGitHub && (c == nil || c.github == nil):
		return fmt.Sprintf(how, "github")
	case endpoint == ingestGitLab && (c == nil || c.gitlab == nil):
		return fmt.Sprintf(how, "gitlab")
	}
	return ""
}

// ingestRoutes adds the endpoints to mux, behind guard like every POST.
// An endpoint without credentials answers 404 saying how to enable it:
// there is nothing there to authenticate against.
func (s *Server) ingestRoutes(mux *http.ServeMux, guard func(http.HandlerFunc, refusal) http.HandlerFunc) {
	for path, ep := range map[string]struct {
		name  string
		serve func(*ingestCall)
	}{
		"/api/v1/events":       {ingestEvents, (*ingestCall).events},
		"/api/v1/hooks/github": {ingestGitHub, (*ingestCall).github},
		"/api/v1/hooks/gitlab": {ingestGitLab, (*ingestCall).gitlab},
	} {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
			c := &ingestCall{s: s, in: s.Ingest, w: w, r: r, endpoint: ep.name}
			if how := c.in.disabled(ep.name); how != "" {
				c.in.count(ep.name, resultDisabled)
				http.Error(w, how, http.StatusNotFound)
				return
			}
			guard(func(http.ResponseWriter, *http.Request) { ep.serve(c) },
				c.refusal(resultForbidden, rejection{status: http.StatusForbidden, field: "request"}))(w, r)
		})
	}
}

// ingestCall is one request to an ingest endpoint.
type ingestCall struct {
	s        *Server
	in       *Ingest
	w        http.ResponseWriter
	r        *http.Request
	endpoint string
	// sender is who the request authenticated as: a token's name,
	// "github" or "gitlab".
	sender string
}

// rejection is what the event.rejected record of a refused request says
// besides why.
type rejection struct {
	status int
	// field names what was wrong: a field of the event, or
	// "authorization", "scope", "size", "request".
	field                          string
	service, environment, deployID string
	decode                         *audit.DecodeRejection
}

// events serves POST /api/v1/events: a CloudEvent (structured or binary
// mode) carrying a CDEvent, a bare CDEvent, or native JSON, with a bearer
// token.
func (c *ingestCall) events() {
	t, why := c.in.Credentials.bearer(c.r.Header.Get("Authorization"))
	if t == nil {
		c.w.Header().Set("WWW-Authenticate", `Bearer realm="rollback-watcher"`)
		c.refuse(resultUnauthorized, rejection{status: http.StatusUnauthorized, field: "authorization"}, why)
		return
	}
	c.sender = t.name
	body, ok := c.readBody()
	if !ok {
		return
	}
	hdr := eventHeader(c.r.Header)
	d, err := events.DecodeDeployPayload(hdr, body)
	if err != nil {
		c.rejectEvent(err, len(body), "")
		return
	}
	if !t.scope.allows(d.Service, d.Environment) {
		c.outOfScope(d, "token "+t.name, t.scope)
		return
	}
	c.store(d, hdr, body)
}

// eventHeader is what of the request's headers an event is decoded and
// stored with: Content-Type and the ce-* headers of a binary-mode
// CloudEvent, whose values the HTTP binding percent-encodes (NATS headers
// carry them as they are). Nothing else reaches the stream: not the
// Authorization header, nor one that claims to be the watcher's own
// announcement.
func eventHeader(h http.Header) nats.Header {
	out := nats.Header{}
	for k, vs := range h {
		switch {
		case strings.EqualFold(k, "Content-Type"):
			out[k] = vs
		case len(k) > 3 && strings.EqualFold(k[:3], "ce-"):
			for _, v := range vs {
				if u, err := url.PathUnescape(v); err == nil {
					v = u
				}
				out[k] = append(out[k], v)
			}
		}
	}
	return out
}

// readBody reads at most events.MaxEventSize bytes; a larger body is
// refused with 413.
func (c *ingestCall) readBody() ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(c.w, c.r.Body, events.MaxEventSize))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		c.refuse(resultTooLarge, rejection{status: http.StatusRequestEntityTooLarge, field: "size"},
			fmt.Sprintf("the body is over the limit of %d bytes for a deploy event", events.MaxEventSize))
		return nil, false
	case err != nil:
		// The client went away or sent a broken body: nobody to tell.
		c.in.count(c.endpoint, resultRejected)
		http.Error(c.w, "reading the body: "+err.Error(), http.StatusBadRequest)
		return nil, false
	}
	return body, true
}

// rejectEvent refuses an event the decoder (or an adapter's mapping)
// rejected, with its message.
func (c *ingestCall) rejectEvent(err error, size int, deployID string) {
	rej := rejection{status: http.StatusBadRequest, deployID: deployID}
	why := "deploy event rejected: " + err.Error()
	var bad *events.RejectError
	var notDeploy *events.NotDeployError
	switch {
	case errors.As(err, &bad):
		rej.field = bad.Field
		rej.decode = &audit.DecodeRejection{Reason: bad.Reason, Size: size}
	case errors.As(err, &notDeploy):
		rej.field = "type"
		why += ": send service.deployed or service.upgraded events here"
	}
	c.refuse(resultRejected, rej, why)
}

// outOfScope refuses a valid event that the sender may not send.
func (c *ingestCall) outOfScope(d events.Deploy, who string, s scope) {
	c.refuse(resultForbidden, rejection{status: http.StatusForbidden, field: "scope",
		service: d.Service, environment: d.Environment, deployID: d.ID},
		fmt.Sprintf("%s may not deploy service %s in environment %s: its scope in ingest: is services %q, environments %q",
			who, d.Service, d.Environment, s.services, s.environments))
}

// refuse answers with rej.status and why, through Server.refuse: logged
// and recorded within the per-address budget, counted always.
func (c *ingestCall) refuse(result string, rej rejection, why string) {
	c.s.refuse(c.w, c.r, rej.status, c.refusal(result, rej), why)
}

func (c *ingestCall) refusal(result string, rej rejection) refusal {
	return refusal{
		record: func(ctx context.Context, why string) {
			c.in.count(c.endpoint, result)
			c.record(ctx, rej, why)
		},
		count: func(context.Context, string) { c.in.count(c.endpoint, result) },
	}
}

// record writes the event.rejected record of a refused request. It never
// holds a token or a signature: why and the request's address, user
// agent and authenticated sender say who and why.
func (c *ingestCall) record(ctx context.Context, rej rejection, why string) {
	if c.in.Audit == nil {
		return
	}
	var subject string
	if rej.service != "" && rej.environment != "" {
		subject = events.Subject(events.DeploysPrefix, rej.environment, rej.service)
	}
	ua := c.r.UserAgent()
	if len(ua) > 200 {
		ua = ua[:200]
	}
	rec := audit.Record{
		Kind: audit.EventRejected, DeployID: rej.deployID, Service: rej.service, Environment: rej.environment,
		Message: fmt.Sprintf("deploy event refused on POST %s (%d %s): %s", c.r.URL.Path, rej.status, http.StatusText(rej.status), why),
		Detail: audit.EventRejectedDetail{Subject: subject, Field: rej.field, DecodeRejection: rej.decode,
			HTTP: &audit.IngestRequest{Endpoint: c.r.URL.Path, Remote: c.r.RemoteAddr, UserAgent: ua, Sender: c.sender, Status: rej.status},
		}.Map(),
	}
	// The record outlives a client that hangs up.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.in.publishTimeout())
	defer cancel()
	if err := c.in.Audit.Record(ctx, rec); err != nil && c.in.Logger != nil {
		c.in.Logger.Error("recording a refused deploy event request", "path", c.r.URL.Path, "remote", c.r.RemoteAddr, "err", err)
	}
}

// ingestReply is the JSON body of a 202 or 200 answer.
type ingestReply struct {
	Status    string `json:"status"` // accepted, ignored
	ID        string `json:"id,omitempty"`
	Subject   string `json:"subject,omitempty"`
	StreamSeq uint64 `json:"stream_seq,omitempty"`
	// Duplicate says that the id was stored already (a retry, or the same
	// event from NATS): it starts no second run.
	Duplicate bool   `json:"duplicate,omitempty"`
	Reason    string `json:"reason,omitempty"`
}

func (c *ingestCall) reply(status int, r ingestReply) {
	c.w.Header().Set("Content-Type", "application/json")
	c.w.WriteHeader(status)
	_ = json.NewEncoder(c.w).Encode(r)
}

// ignore answers 200 to a webhook delivery that is no deploy to validate
// (a ping, a deployment still running, another event type): the provider
// shows the reason in its delivery log. It is counted and logged, not
// recorded: providers send several such deliveries for every deploy.
func (c *ingestCall) ignore(reason string) {
	c.in.count(c.endpoint, resultIgnored)
	if c.in.Logger != nil {
		c.in.Logger.Debug("webhook delivery ignored", "path", c.r.URL.Path, "reason", reason)
	}
	c.reply(http.StatusOK, ingestReply{Status: "ignored", Reason: reason})
}

// store publishes the event on DEPLOYS under its id and answers 202 once
// JetStream has stored it, or 503 with Retry-After when it has not: the
// sender keeps the event and sends it again, and the id makes the retry
// harmless.
func (c *ingestCall) store(d events.Deploy, hdr nats.Header, body []byte) {
	subject := events.Subject(events.DeploysPrefix, d.Environment, d.Service)
	ctx, cancel := context.WithTimeout(c.r.Context(), c.in.publishTimeout())
	defer cancel()
	ack, err := c.in.JS.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: hdr, Data: body}, jetstream.WithMsgID(d.ID))
	if errors.Is(err, nats.ErrMaxPayload) {
		c.refuse(resultTooLarge, rejection{status: http.StatusRequestEntityTooLarge, field: "size",
			service: d.Service, environment: d.Environment, deployID: d.ID},
			fmt.Sprintf("the event (%d bytes with its headers) is larger than the NATS server's max_payload", len(body)))
		return
	}
	if err != nil {
		c.in.count(c.endpoint, resultUnavailable)
		if c.in.Logger != nil {
			c.in.Logger.Error("deploy event not stored; the sender is told to send it again", "path", c.r.URL.Path,
				"sender", c.sender, "deploy", d.ID, "subject", subject, "err", err)
		}
		c.w.Header().Set("Retry-After", fmt.Sprint(RetryAfterSeconds))
		http.Error(c.w, fmt.Sprintf("deploy event %s not stored: JetStream did not take it (%v). Nothing was kept: send it again in %d seconds; "+
			"the same id is stored once", d.ID, err, RetryAfterSeconds), http.StatusServiceUnavailable)
		return
	}
	result := resultAccepted
	if ack.Duplicate {
		result = resultDuplicate
	}
	c.in.count(c.endpoint, result)
	if c.in.Logger != nil {
		c.in.Logger.Info("deploy event taken over HTTP", "path", c.r.URL.Path, "sender", c.sender, "deploy", d.ID,
			"subject", subject, "stream_seq", ack.Sequence, "duplicate", ack.Duplicate)
	}
	c.reply(http.StatusAccepted, ingestReply{Status: "accepted", ID: d.ID, Subject: subject, StreamSeq: ack.Sequence, Duplicate: ack.Duplicate})
}
