package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/links"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

// Held rollbacks decided over HTTP (README "HTTP"), doing what `watcher
// cancel` and `watcher approve` do (rollbackreq.Decide, so the executor
// applies and records the decision as it does theirs):
//
//   - POST /api/v1/rollbacks/{id}/cancel and /approve, JSON, for scripts
//     and chat bots. Only authenticated callers: the users of
//     --web.config.file's basic_auth_users, which the basic-auth
//     middleware checks before any handler runs (basicauth.go), or the
//     tokens of `decisions:` in --config.file, which it leaves to this
//     handler; with that section, each within its scope (see
//     decide_auth.go). Without anyone to authenticate the endpoints refuse
//     every request rather than let anyone who reaches the port stop a
//     rollback.
//   - GET and POST /rollbacks/{id}/cancel and /approve?expires=&sig=, the
//     signed links of rollback.held, for people: the link is the
//     credential (no basic auth is asked), for one request and action,
//     until the request's execute_at. GET only shows what the button
//     would do (chat unfurlers and mail scanners fetch links); the page's
//     form POSTs to the same link, which decides.
//
// Every request that decides nothing is recorded as event.rejected, within
// the same per-address budget as every refusal (see refuse).

// DefaultDecideTimeout bounds the wait for the executor to apply a
// decision, below the timeouts of the proxies in front of the watcher.
const DefaultDecideTimeout = 10 * time.Second

// maxDecisionBody bounds a decision's body: a reason and a name.
const maxDecisionBody = events.MaxDecisionSize

// Results of watcher_decision_requests_total.
const (
	decisionDecided    = "decided"     // the executor applied it (200)
	decisionRefused    = "refused"     // not authenticated, a bad link, a bad body, cross-origin (4xx)
	decisionUnknown    = "unknown"     // no such request was held (404)
	decisionNotHeld    = "not_held"    // decided, executed, or never held (409, 410)
	decisionNotApplied = "not_applied" // sent, not applied in time (504)
	decisionError      = "error"       // NATS or the web config could not be read (503)
)

// DecisionAuditor records requests that decided nothing; *audit.Publisher
// is one.
type DecisionAuditor interface {
	Record(ctx context.Context, r audit.Record) error
}

// Decisions decides held rollbacks over HTTP.
type Decisions struct {
	JS    rollbackreq.Decider
	Audit DecisionAuditor
	// Links checks the signed links; nil serves none (the watcher has no
	// --web.external-url, so it mints none).
	Links *links.Signer
	// WebConfigFile is --web.config.file as the user wrote it (not the
	// toolkit's derived copy). Its basic_auth_users, read at each request
	// as the basic-auth middleware reads them, say whether the API has
	// anyone to authenticate.
	WebConfigFile string
	// Credentials are the callers of `decisions:` in --config.file and
	// what each may decide on (see decide_auth.go); nil, without the
	// section, lets every basic-auth user decide on every service.
	Credentials *DecisionCredentials
	// Timeout bounds the wait for the executor; DefaultDecideTimeout when
	// zero.
	Timeout time.Duration
	Logger  *slog.Logger

	once     sync.Once
	requests *prometheus.CounterVec
}

func (d *Decisions) init() {
	d.once.Do(func() {
		d.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watcher_decision_requests_total",
			Help: "HTTP requests to cancel or approve a held rollback, by how they came (http: the API; link: a signed link) and result (decided, refused, unknown, not_held, not_applied, error).",
		}, []string{"via", "result"})
		for _, via := range []string{events.ViaHTTP, events.ViaLink} {
			for _, r := range []string{decisionDecided, decisionRefused, decisionUnknown, decisionNotHeld, decisionNotApplied, decisionError} {
				d.requests.WithLabelValues(via, r)
			}
		}
		if d.Logger == nil {
			d.Logger = slog.New(slog.DiscardHandler)
		}
	})
}

// Register adds watcher_decision_requests_total to reg.
func (d *Decisions) Register(reg prometheus.Registerer) {
	d.init()
	reg.MustRegister(d.requests)
}

func (d *Decisions) timeout() time.Duration {
	if d.Timeout > 0 {
		return d.Timeout
	}
	return DefaultDecideTimeout
}

// decisionRoutes adds the API and, with Links, the link routes. The POSTs
// go through guard, like every state-changing route.
func (s *Server) decisionRoutes(mux *http.ServeMux, guard func(http.HandlerFunc, refusal) http.HandlerFunc) {
	d := s.Decisions
	if d == nil {
		return
	}
	d.init()
	for _, action := range []string{events.ActionCancel, events.ActionApprove} {
		mux.HandleFunc("POST /api/v1/rollbacks/{id}/"+action, func(w http.ResponseWriter, r *http.Request) {
			call := decisionCall{r: r, action: action, via: events.ViaHTTP}
			guard(func(w http.ResponseWriter, r *http.Request) { s.apiDecide(w, r, &call) },
				d.refusal(&call, http.StatusForbidden, "origin"))(w, r)
		})
		if d.Links == nil {
			continue
		}
		mux.HandleFunc("GET /rollbacks/{id}/"+action, func(w http.ResponseWriter, r *http.Request) {
			s.linkPage(w, r, &decisionCall{r: r, action: action, via: events.ViaLink})
		})
		mux.HandleFunc("POST /rollbacks/{id}/"+action, func(w http.ResponseWriter, r *http.Request) {
			call := decisionCall{r: r, action: action, via: events.ViaLink}
			guard(func(w http.ResponseWriter, r *http.Request) { s.linkDecide(w, r, &call) },
				d.refusal(&call, http.StatusForbidden, "origin"))(w, r)
		})
	}
}

// decisionCall is one request to decide: what it asks, and what is known
// of it so far, for its audit record.
type decisionCall struct {
	r           *http.Request
	action, via string
	user        string
	hold        *rollbackreq.Hold
}

// requestID is the id the path names, when it is one.
func (c *decisionCall) requestID() string {
	id := c.r.PathValue("id")
	probe := events.RollbackDecision{ID: "x", Action: c.action, RequestID: id, Service: "x", Environment: "x", Reason: "x", By: "x", Via: c.via}
	if probe.Validate() != nil {
		return ""
	}
	return id
}

// refusal records a request that decided nothing as event.rejected
// (within refuse's budget) and counts it.
func (d *Decisions) refusal(c *decisionCall, status int, field string) refusal {
	result := decisionRefused
	switch status {
	case http.StatusNotFound:
		result = decisionUnknown
	case http.StatusConflict, http.StatusGone:
		result = decisionNotHeld
	case http.StatusServiceUnavailable, http.StatusInternalServerError:
		result = decisionError
	}
	return refusal{
		record: func(ctx context.Context, why string) {
			d.requests.WithLabelValues(c.via, result).Inc()
			d.record(ctx, c, status, field, why)
		},
		count: func(context.Context, string) { d.requests.WithLabelValues(c.via, result).Inc() },
	}
}

func (d *Decisions) record(ctx context.Context, c *decisionCall, status int, field, why string) {
	id := c.requestID()
	rec := audit.Record{Kind: audit.EventRejected, RequestID: id}
	if c.hold == nil && id != "" {
		// Recorded with the request's service and environment, where
		// `watcher history --service` finds it, when the id names one.
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c.hold, _ = rollbackreq.Lookup(lctx, d.JS, id)
		cancel()
	}
	if h := c.hold; h != nil {
		rec.Service, rec.Environment, rec.Version = h.Request.Service, h.Request.Environment, h.Request.Version
		rec.RunID, rec.DeployID = h.Request.RunID, h.Request.DeployID
	}
	what := "rollback request"
	if id != "" {
		what += " " + id
	}
	how := "HTTP API"
	if c.via == events.ViaLink {
		how = "signed link"
	}
	rec.Message = fmt.Sprintf("%s of %s refused (%s, %d): %s", c.action, what, how, status, events.ClampReason(why))
	err := rec.SetDetail(audit.EventRejectedDetail{Field: field, HTTPDecision: &audit.DecisionRequest{
		Action: c.action, RequestID: id, Via: c.via, Method: c.r.Method, Path: clipRunes(c.r.URL.Path, 256),
		Remote: c.r.RemoteAddr, UserAgent: clipRunes(c.r.UserAgent(), 256), User: c.user, Status: status,
	}})
	if err == nil {
		err = d.Audit.Record(ctx, rec)
	}
	if err != nil {
		d.Logger.Error("recording a refused decision request", "err", err)
	}
}

// apiDecide is POST /api/v1/rollbacks/{id}/{action}.
func (s *Server) apiDecide(w http.ResponseWriter, r *http.Request, c *decisionCall) {
	d := s.Decisions
	refuse := func(status int, field, why string) { s.refuse(w, r, status, d.refusal(c, status, field), why) }
	who := s.authenticate(w, r, c, refuse)
	if who == nil {
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		refuse(http.StatusUnsupportedMediaType, "content_type", fmt.Sprintf(
			`Content-Type must be application/json (a body such as {"reason": "..."}), got %.200q`, r.Header.Get("Content-Type")))
		return
	}
	var body struct {
		Reason string `json:"reason"`
		By     string `json:"by"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxDecisionBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		refuse(http.StatusBadRequest, "body", fmt.Sprintf(`the body must be one JSON object {"reason": "...", "by": "..."} of at most %d bytes: %v`, maxDecisionBody, err))
		return
	}
	if dec.More() {
		refuse(http.StatusBadRequest, "body", "the body must be one JSON object, with nothing after it")
		return
	}
	// by is who the caller says decides; the user or token it
	// authenticated as is kept in front of it.
	by := who.name
	if body.By != "" && body.By != who.name {
		by = who.name + " for " + body.By
	}
	dd := events.RollbackDecision{Action: c.action, RequestID: r.PathValue("id"), Reason: body.Reason, By: by, Via: events.ViaHTTP}
	if field, err := checkDecision(dd); err != nil {
		refuse(http.StatusBadRequest, field, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), d.timeout())
	defer cancel()
	if who.scope != nil {
		// The request says which service and environment the decision
		// is on; a caller out of scope learns no more of it than that.
		h, err := rollbackreq.Lookup(ctx, d.JS, dd.RequestID)
		c.hold = h
		if h == nil {
			s.apiFailed(w, r, c, err)
			return
		}
		if why := who.mayNot(h.Request.Service, h.Request.Environment); why != "" {
			refuse(http.StatusForbidden, "scope", why)
			return
		}
	}
	h, err := rollbackreq.Decide(ctx, d.JS, dd)
	if h != nil || c.hold == nil {
		c.hold = h
	}
	if err != nil {
		s.apiFailed(w, r, c, err)
		return
	}
	d.requests.WithLabelValues(c.via, decisionDecided).Inc()
	d.Logger.Info("held rollback decided over HTTP", "request", dd.RequestID, "action", c.action, "by", by)
	writeJSON(w, http.StatusOK, apiAnswer{Status: "success", Data: holdViewOf(h)})
}

// apiFailed answers an API request that Lookup or Decide failed, with the
// hold as it stands when there is one.
func (s *Server) apiFailed(w http.ResponseWriter, r *http.Request, c *decisionCall, err error) {
	status, field := decideStatus(err)
	s.decideFailed(r, c, status, field, err)
	var h *rollbackreq.Hold
	if status == http.StatusConflict {
		h = c.hold
	}
	writeJSON(w, status, apiAnswer{Status: "error", ErrorType: errorType(status), Error: err.Error(), Data: holdViewOf(h)})
}

// decideFailed records and counts a decision that Decide did not apply.
// One it sent and nobody applied in time is not refused: the executor
// records what it does with it when it comes to it.
func (s *Server) decideFailed(r *http.Request, c *decisionCall, status int, field string, err error) {
	d := s.Decisions
	if status == http.StatusGatewayTimeout {
		d.requests.WithLabelValues(c.via, decisionNotApplied).Inc()
		d.Logger.Warn("decision sent, not applied in time", "request", c.requestID(), "action", c.action, "via", c.via, "err", err)
		return
	}
	s.refuse(quietWriter{}, r, status, d.refusal(c, status, field), err.Error())
}

// checkDecision checks dd as the executor will, before anything is read;
// the service and environment come from the request.
func checkDecision(dd events.RollbackDecision) (field string, err error) {
	dd.ID, dd.Service, dd.Environment = "x", "x", "x"
	err = dd.Validate()
	var re *events.RejectError
	if errors.As(err, &re) {
		if re.Field == "request_id" {
			return re.Field, fmt.Errorf("%.80q is not a rollback request id: it %s", dd.RequestID, re.Reason)
		}
		return re.Field, fmt.Errorf("%s %s", re.Field, re.Reason)
	}
	return "", err
}

// decideStatus is the HTTP status and audit field of Decide's error.
func decideStatus(err error) (status int, field string) {
	switch {
	case err == nil:
		return http.StatusOK, ""
	case errors.Is(err, rollbackreq.ErrUnknownRequest):
		return http.StatusNotFound, "request_id"
	case errors.Is(err, rollbackreq.ErrNotHeld), errors.Is(err, rollbackreq.ErrDecided):
		return http.StatusConflict, "request_id"
	case errors.Is(err, rollbackreq.ErrNoAnswer):
		return http.StatusGatewayTimeout, "request_id"
	}
	var re *events.RejectError
	if errors.As(err, &re) {
		return http.StatusBadRequest, re.Field
	}
	return http.StatusServiceUnavailable, "nats"
}

func errorType(status int) string {
	switch status {
	case http.StatusNotFound:
		return "not_found"
	case http.StatusConflict:
		return "not_held"
	case http.StatusGatewayTimeout:
		return "timeout"
	case http.StatusBadRequest:
		return "bad_data"
	}
	return "unavailable"
}

// apiAnswer is the JSON answer of the API, shaped like /api/v1/runs'.
type apiAnswer struct {
	Status    string    `json:"status"`
	ErrorType string    `json:"errorType,omitempty"`
	Error     string    `json:"error,omitempty"`
	Data      *holdView `json:"data,omitempty"`
}

// holdView is a held request's hold, as the API answers it.
type holdView struct {
	RequestID   string        `json:"request_id"`
	Service     string        `json:"service"`
	Environment string        `json:"environment"`
	Version     string        `json:"version"`
	State       string        `json:"state"`
	Why         string        `json:"why"`
	Ask         bool          `json:"ask"`
	AskDefault  string        `json:"ask_default,omitempty"`
	HeldAt      time.Time     `json:"held_at"`
	ExecuteAt   time.Time     `json:"execute_at"`
	Decision    *decisionView `json:"decision,omitempty"`
	// Description says where it stands, as `watcher cancel` says it.
	Description string `json:"description"`
}

type decisionView struct {
	Action string    `json:"action"`
	By     string    `json:"by"`
	Via    string    `json:"via"`
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
}

func holdViewOf(h *rollbackreq.Hold) *holdView {
	if h == nil {
		return nil
	}
	v := &holdView{
		RequestID: h.Request.ID, Service: h.Request.Service, Environment: h.Request.Environment, Version: h.Request.Version,
		State: h.State, Why: h.Why, Ask: h.Ask, AskDefault: h.AskDefault, HeldAt: h.Since, ExecuteAt: h.ExecuteAt,
		Description: h.Describe(),
	}
	if dd := h.Decision; dd != nil {
		v.Decision = &decisionView{Action: dd.Action, By: dd.By, Via: dd.Via, Reason: dd.Reason, Time: dd.Time}
	}
	return v
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func apiPattern(action string) string { return "/api/v1/rollbacks/{id}/" + action }

// basicAuthUsers reads basic_auth_users from --web.config.file: user name
// -> bcrypt hash, parsed as the basic-auth middleware parses it
// (deriveWebConfig). The file is read at each request, as the middleware
// reads it, so that the two agree on who exists.
func basicAuthUsers(file string) (map[string]string, error) {
	if file == "" {
		return nil, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading --web.config.file: %w", err)
	}
	_, users, err := deriveWebConfig(b, filepath.Dir(file))
	if err != nil {
		return nil, fmt.Errorf("--web.config.file %s: %w", file, err)
	}
	return users, nil
}

// quietWriter takes the answer of refuse and drops it: for a refusal
// answered with a page or JSON of its own, still logged, audited and
// counted by refuse.
type quietWriter struct{}

func (quietWriter) Header() http.Header         { return http.Header{} }
func (quietWriter) Write(b []byte) (int, error) { return len(b), nil }
func (quietWriter) WriteHeader(int)             {}

func clipRunes(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n]) + "..."
	}
	return strings.ToValidUTF8(s, "?")
}
