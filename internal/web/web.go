// Package web serves the watcher's HTTP endpoints (contract section 8).
package web

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
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
	// Page, when set, serves the status page at GET /.
	Page   PageSource
	Logger *slog.Logger
}

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
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
	mux.HandleFunc("POST /-/reload", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.Reload(); err != nil {
			http.Error(w, "failed to reload policies, keeping the ones in force: "+err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("Policies reloaded.\n"))
	})
	if s.Alerts != nil {
		mux.HandleFunc("POST /api/v1/alerts", func(w http.ResponseWriter, r *http.Request) {
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
		})
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
