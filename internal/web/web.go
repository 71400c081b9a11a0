// Package web serves the watcher's HTTP endpoints (contract section 8).
package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"

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
	// not (Prometheus unreachable): /-/ready and the status page say it.
	Degraded func() []string
	Runs     func() (active, recent []watch.RunStatus)
	// Alerts handles Alertmanager's webhook body (POST /api/v1/alerts);
	// nil answers 404.
	Alerts func(ctx context.Context, body io.Reader) error
	// AlertsRefused, when set, is told why a request to POST
	// /api/v1/alerts was refused before its body was read (a cross-origin
	// request, not JSON), so that the refusal is counted and audited.
	AlertsRefused func(ctx context.Context, why string)
	// Page, when set, serves the status page at GET /.
	Page   PageSource
	Logger *slog.Logger
}

// Handler returns the routes. Every state-changing route (a POST) refuses
// cross-origin requests: a page the operator visits can make the browser
// POST here, with no CORS preflight for text/plain or a form, and the
// watcher would roll back or reload. Browsers say where a request comes
// from (Sec-Fetch-Site, or Origin in older ones); Alertmanager and curl
// send neither and are let through.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	cop := http.NewCrossOriginProtection()
	// guard runs h only for a request that is not cross-origin; refused
	// is told about the others.
	guard := func(h http.HandlerFunc, refused func(context.Context, string)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if err := cop.Check(r); err != nil {
				s.refuse(w, r, http.StatusForbidden, refused, fmt.Sprintf(
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
	}, nil))
	if s.Alerts != nil {
		mux.HandleFunc("POST /api/v1/alerts", guard(func(w http.ResponseWriter, r *http.Request) {
			// Alertmanager sends JSON. Requiring it also keeps out a browser
			// that sends neither Sec-Fetch-Site nor Origin: it may POST
			// text/plain anywhere, but application/json only after a CORS
			// preflight that the watcher never answers.
			if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
				s.refuse(w, r, http.StatusUnsupportedMediaType, s.AlertsRefused, fmt.Sprintf(
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
		}, s.AlertsRefused))
	}
	if s.Page != nil {
		page := newStatusPage(s.Page, s.Logger)
		page.degraded = s.Degraded
		mux.Handle("GET /{$}", page)
	}
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
	return mux
}

// refuse answers a request that must change nothing, logs it and tells
// refused (when set) why.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, status int, refused func(context.Context, string), why string) {
	if s.Logger != nil {
		s.Logger.Warn("request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr,
			"user_agent", r.UserAgent(), "status", status, "reason", why)
	}
	if refused != nil {
		refused(r.Context(), why)
	}
	http.Error(w, why, status)
}
