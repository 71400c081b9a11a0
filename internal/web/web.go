// Package web serves the watcher's HTTP endpoints (README, "HTTP").
package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rollback-watcher/watcher/internal/alerts"
	"github.com/rollback-watcher/watcher/internal/watch"
)

// Server holds what the endpoints show and do.
type Server struct {
	Gatherer prometheus.Gatherer
	// Reload reloads the policies; its error is shown to the caller.
	Reload func() error
	// Ready says whether the watcher consumes events (nil means ready).
	Ready func() error
	// Degraded, when set, names what the watcher works without, ready or
	// not (Prometheus unreachable): /-/ready says it. The status page
	// has its own banners, from Page's Health.
	Degraded func() []string
	Runs     func() (active, recent []watch.RunStatus)
	// Alerts handles Alertmanager's webhook body (POST /api/v1/alerts);
	// nil answers 404.
	Alerts func(ctx context.Context, body io.Reader) error
	// AlertsRefused, when set, is told why a request to POST
	// /api/v1/alerts was refused before its body was read (a foreign Host,
	// a cross-origin request, not JSON), so that the refusal is counted
	// and audited. It hears of at most RefusalAuditBudget refusals per
	// remote IP per minute: a web page could otherwise fill the audit.
	AlertsRefused func(ctx context.Context, why string)
	// AlertsRefusedQuiet, when set, is told of the refusals past that
	// budget instead: count them, record nothing.
	AlertsRefusedQuiet func(ctx context.Context, why string)
	// Decisions, when set, cancels and approves held rollbacks over HTTP
	// (POST /api/v1/rollbacks/{id}/cancel and /approve, and the signed
	// links: see decide.go).
	Decisions *Decisions
	// ListenAddress is the host:port the server listens on. On a loopback
	// address (127.0.0.1:9797 by default; unset counts as loopback) a
	// state-changing request must name a loopback host (localhost,
	// 127.0.0.0/8, [::1]) or ExternalURL's host in its Host header: see
	// hostCheck. On another address any Host is taken (behind a load
	// balancer names vary); the cross-origin checks apply either way.
	ListenAddress string
	// ExternalURL, when set, is the URL the watcher is reached at through
	// a proxy that keeps the client's Host; its host is accepted too.
	ExternalURL string
	// Page, when set, serves the status page at GET /.
	Page PageSource
	// Ingest, when set, takes deploy events over HTTP (POST
	// /api/v1/events and /api/v1/hooks/{github,gitlab}; see ingest.go).
	Ingest *Ingest
	// WebConfig, when set, is --web.config.file: its basic_auth_users are
	// asked of every request but those that carry a credential of their
	// own (see basicauth.go).
	WebConfig *WebConfig
	Logger    *slog.Logger

	now     func() time.Time // for tests; time.Now when nil
	limiter refusalLimiter
}

// RefusalAuditBudget is how many refused requests from one remote IP are
// logged and audited in a minute; the rest are only counted.
const RefusalAuditBudget = 10

// maxRefusers bounds the remote IPs whose refusals are tracked in a
// minute; refusals from more IPs than that share one budget.
const maxRefusers = 4096

// refusalLimiter counts refusals per remote IP in fixed one-minute windows.
type refusalLimiter struct {
	mu     sync.Mutex
	window time.Time
	counts map[string]int
}

// note counts a refusal from ip at now. It reports whether it is within
// the budget (log and audit it) and whether it is the first past it (say
// once that the rest are only counted).
func (l *refusalLimiter) note(ip string, now time.Time) (within, firstPast bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w := now.Truncate(time.Minute); !w.Equal(l.window) || l.counts == nil {
		l.window, l.counts = w, map[string]int{}
	}
	if _, ok := l.counts[ip]; !ok && len(l.counts) >= maxRefusers {
		ip = "(other addresses)"
	}
	l.counts[ip]++
	n := l.counts[ip]
	return n <= RefusalAuditBudget, n == RefusalAuditBudget+1
}

// Handler returns the routes. Every state-changing route (a POST) refuses
// cross-origin requests: a page the operator visits can make the browser
// POST here, with no CORS preflight for text/plain or a form, and the
// watcher would roll back or reload. Browsers say where a request comes
// from (Sec-Fetch-Site, or Origin in older ones); Alertmanager and curl
// send neither and are let through. On a loopback listener such a route
// also refuses a Host that is not a loopback name (see hostCheck).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	cop := http.NewCrossOriginProtection()
	hostOK := s.hostCheck()
	// guard runs h only for a request that names this watcher and is not
	// cross-origin; on is told about the others.
	guard := func(h http.HandlerFunc, on refusal) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if !hostOK(r.Host) {
				s.refuse(w, r, http.StatusForbidden, on, fmt.Sprintf(
					"Host %.200q is not this watcher's (it listens on %s, where only localhost, 127.0.0.1 or [::1]%s reach it): DNS rebinding? "+
						"Use one of those names, or listen on a non-loopback address",
					r.Host, s.listenAddress(), s.externalNote()))
				return
			}
			if err := cop.Check(r); err != nil {
				s.refuse(w, r, http.StatusForbidden, on, fmt.Sprintf(
					"cross-origin request refused (%v; Origin %.200q, Sec-Fetch-Site %.40q): only the watcher's own page, Alertmanager or a client such as curl may change state",
					err, r.Header.Get("Origin"), r.Header.Get("Sec-Fetch-Site")))
				return
			}
			h(w, r)
		}
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.Gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("Healthy.\n"))
	})
	mux.HandleFunc("GET /-/ready", func(w http.ResponseWriter, _ *http.Request) {
		var notes []string
		if s.Degraded != nil {
			notes = s.Degraded()
		}
		if s.Ready != nil {
			if err := s.Ready(); err != nil {
				http.Error(w, strings.Join(append([]string{"Not ready: " + err.Error()}, notes...), "; "), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte(strings.Join(append([]string{"Ready."}, notes...), " ") + "\n"))
	})
	mux.HandleFunc("POST /-/reload", guard(func(w http.ResponseWriter, _ *http.Request) {
		if err := s.Reload(); err != nil {
			http.Error(w, "failed to reload policies, keeping the ones in force: "+err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("Policies reloaded.\n"))
	}, refusal{}))
	alertsRefused := refusal{record: s.AlertsRefused, count: s.AlertsRefusedQuiet}
	if s.Alerts != nil {
		mux.HandleFunc("POST /api/v1/alerts", guard(func(w http.ResponseWriter, r *http.Request) {
			// Alertmanager sends JSON. Requiring it also keeps out a browser
			// that sends neither Sec-Fetch-Site nor Origin: it may POST
			// text/plain anywhere, but application/json only after a CORS
			// preflight that the watcher never answers.
			if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
				s.refuse(w, r, http.StatusUnsupportedMediaType, alertsRefused, fmt.Sprintf(
					"Content-Type must be application/json (Alertmanager's webhook sends it), got %.200q", r.Header.Get("Content-Type")))
				return
			}
			err := s.Alerts(r.Context(), r.Body)
			var bad *alerts.BadRequest
			switch {
			case errors.As(err, &bad):
				http.Error(w, err.Error(), http.StatusBadRequest)
			case err != nil:
				// Alertmanager sends the message again on a 5xx.
				if s.Logger != nil {
					s.Logger.Error("alert webhook not handled; Alertmanager will retry", "err", err)
				}
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
			default:
				w.WriteHeader(http.StatusOK)
			}
		}, alertsRefused))
	}
	s.ingestRoutes(mux, guard)
	if s.Page != nil {
		mux.Handle("GET /{$}", newStatusPage(s.Page, s.Logger))
	}
	s.decisionRoutes(mux, guard)
	mux.HandleFunc("GET /api/v1/runs", func(w http.ResponseWriter, _ *http.Request) {
		active, recent := s.Runs()
		if active == nil {
			active = []watch.RunStatus{}
		}
		if recent == nil {
			recent = []watch.RunStatus{}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"status": "success", "data": map[string]any{"active": active, "recent": recent}})
	})
	return s.withBasicAuth(mux)
}

// refusal is told why a request was refused: record (audit it) within
// RefusalAuditBudget refusals from the remote IP in a minute, count past
// it. Either may be nil.
type refusal struct {
	record, count func(ctx context.Context, why string)
}

// refuse answers a request that must change nothing, logs it and tells
// on.record why. Past RefusalAuditBudget refusals from the remote IP in a
// minute, it logs once that the rest are only counted and tells on.count
// instead: a web page or a broken script can send refused requests in a
// loop, and each would otherwise be a log line and an audit record.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, status int, on refusal, why string) {
	ip := r.RemoteAddr
	if h, _, err := net.SplitHostPort(ip); err == nil {
		ip = h
	}
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	t := now()
	within, firstPast := s.limiter.note(ip, t)
	switch {
	case within:
		if s.Logger != nil {
			s.Logger.Warn("request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr,
				"user_agent", r.UserAgent(), "status", status, "reason", why)
		}
		if on.record != nil {
			on.record(r.Context(), why)
		}
	default:
		if firstPast && s.Logger != nil {
			s.Logger.Warn(fmt.Sprintf("more than %d refused requests from %s this minute: the rest are counted, not logged or audited, until %s",
				RefusalAuditBudget, ip, t.Truncate(time.Minute).Add(time.Minute).Format(time.RFC3339)),
				"remote", r.RemoteAddr, "path", r.URL.Path, "user_agent", r.UserAgent(), "reason", why)
		}
		if on.count != nil {
			on.count(r.Context(), why)
		}
	}
	http.Error(w, why, status)
}

// hostCheck returns what decides whether a state-changing request's Host
// header names this watcher. The cross-origin checks cannot see DNS
// rebinding: a page on evil.example whose name now resolves to 127.0.0.1
// is same-origin to the browser, which sends Host: evil.example. A
// watcher on a loopback address is reached by loopback names only (or
// ExternalURL's host), so any other Host is such a page. Behind a load
// balancer, on another address, names vary and any Host is taken.
func (s *Server) hostCheck() func(host string) bool {
	if !isLoopbackAddr(s.ListenAddress) {
		return func(string) bool { return true }
	}
	var external string
	if u, err := url.Parse(s.ExternalURL); err == nil {
		external = normalHost(u.Host)
	}
	return func(host string) bool {
		h := normalHost(host)
		if h == "" || h == "localhost" || (external != "" && h == external) {
			return true // no Host (HTTP/1.0) is no browser
		}
		ip := net.ParseIP(h)
		return ip != nil && ip.IsLoopback()
	}
}

// normalHost is the host of a Host header or URL authority, without port
// or brackets, lower case, without a trailing dot.
func normalHost(hostport string) string {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// isLoopbackAddr reports whether a listen address is on loopback only.
// Unset counts as loopback, so that a caller that forgets it gets the
// stricter check; ":9797" (every interface) does not.
func isLoopbackAddr(addr string) bool {
	if addr == "" {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *Server) listenAddress() string {
	if s.ListenAddress == "" {
		return "a loopback address"
	}
	return s.ListenAddress
}

func (s *Server) externalNote() string {
	if u, err := url.Parse(s.ExternalURL); err == nil && u.Host != "" {
		return " or " + u.Hostname()
	}
	return ""
}
