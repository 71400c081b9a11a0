package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/watch"
	"github.com/rollback-watcher/watcher/internal/web"
)

// How often promProbe asks Prometheus whether it answers: often while it
// does not, so that its return shows soon; rarely while it does, since every
// run's queries say so too.
const (
	promProbeDown    = 5 * time.Second
	promProbeUp      = 30 * time.Second
	promProbeTimeout = 5 * time.Second
)

// promProbe knows whether Prometheus answers queries, so that an operator
// learns it from the log, /-/ready, the status page and
// watcher_prometheus_up instead of from runs that only record query errors.
// It is the runs' Querier: a query that succeeds says Prometheus is up, one
// that fails triggers a probe (a bad query fails too, while Prometheus is
// fine, so the failure alone proves nothing).
type promProbe struct {
	q      watch.Querier
	url    string // redacted, for messages
	logger *slog.Logger
	scrub  func(error) error
	kick   chan struct{}

	mu     sync.Mutex
	probed bool // false until the first answer or failure
	up     bool
	since  time.Time // when it stopped answering
	err    error     // the last failure
}

func newPromProbe(q watch.Querier, redactedURL string, logger *slog.Logger, scrub func(error) error) *promProbe {
	return &promProbe{q: q, url: redactedURL, logger: logger.With("component", "prometheus"), scrub: scrub, kick: make(chan struct{}, 1)}
}

// Query runs a run's query, hiding any secret that the error echoes (it
// goes into the audit and the API).
func (p *promProbe) Query(ctx context.Context, query string, ts time.Time) (model.Vector, error) {
	v, err := p.q.Query(ctx, query, ts)
	if err = p.answered(err); err != nil {
		return nil, err
	}
	return v, nil
}

// QueryRange runs a comparison's range query, as Query.
func (p *promProbe) QueryRange(ctx context.Context, query string, start, end time.Time, step time.Duration) (model.Matrix, error) {
	m, err := p.q.QueryRange(ctx, query, start, end, step)
	if err = p.answered(err); err != nil {
		return nil, err
	}
	return m, nil
}

// answered notes how a query went: a failure wakes the probe (and is
// returned scrubbed), an answer says Prometheus is up.
func (p *promProbe) answered(err error) error {
	if err != nil {
		select {
		case p.kick <- struct{}{}:
		default:
		}
		return p.scrub(err)
	}
	p.set(nil)
	return nil
}

// Run probes at once, then on its schedule and after a failed query, until
// ctx ends.
func (p *promProbe) Run(ctx context.Context) {
	for {
		pctx, cancel := context.WithTimeout(ctx, promProbeTimeout)
		_, err := p.q.Query(pctx, "vector(1)", time.Now())
		cancel()
		if ctx.Err() != nil {
			return
		}
		p.set(err)
		every := promProbeUp
		if err != nil {
			every = promProbeDown
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-p.kick:
			t.Stop()
		}
	}
}

func (p *promProbe) set(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	wasUp, first := p.up, !p.probed
	p.probed = true
	if err == nil {
		p.up, p.err = true, nil
		if !wasUp && !first {
			p.logger.Info("Prometheus reachable again", "url", p.url, "down_for", time.Since(p.since).Round(time.Second))
		}
		return
	}
	p.up, p.err = false, p.scrub(err)
	if wasUp || first {
		p.since = time.Now()
		p.logger.Warn("Prometheus unreachable: runs record their queries as errors, judged as each check says, until it answers; "+
			"check --prometheus.url (or prometheus.url and http_client in --config.file) and that Prometheus runs",
			"url", p.url, "err", p.err)
	}
}

// Degraded says what is wrong with Prometheus, for /-/ready: nothing while
// it answers or before the first probe has finished.
func (p *promProbe) Degraded() []string {
	d := p.Down()
	if d == nil {
		return nil
	}
	return []string{fmt.Sprintf("Prometheus %s unreachable since %s: %s", d.URL, d.Since.UTC().Format(time.RFC3339), d.Err)}
}

// Down is Degraded for the status page's banner.
func (p *promProbe) Down() *web.PrometheusDown {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.probed || p.up {
		return nil
	}
	return &web.PrometheusDown{URL: p.url, Since: p.since, Err: p.err.Error()}
}

// Collector is watcher_prometheus_up.
func (p *promProbe) Collector() prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "watcher_prometheus_up",
		Help: "1 when the last query to Prometheus (a run's or the watcher's own probe) was answered, else 0.",
	}, func() float64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.up {
			return 1
		}
		return 0
	})
}
