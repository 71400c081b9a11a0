package watch

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The watcher's own metrics.

type metrics struct {
	active       prometheus.GaugeFunc
	runs         *prometheus.CounterVec
	byPolicy     *prometheus.CounterVec
	events       *prometheus.CounterVec
	measurements *prometheus.CounterVec
	queries      *prometheus.HistogramVec
	// deploys and verdicts are by service and environment, so that
	// change-failure rate can be computed per service; both come from
	// validated events, which keeps their label sets bounded.
	deploys  *prometheus.CounterVec
	verdicts *prometheus.CounterVec
	decision *prometheus.HistogramVec
	// verifications are by service and environment: an unhelpful
	// rollback is the alert that says the problem is elsewhere.
	verifications *prometheus.CounterVec
}

// Register adds the watcher's metrics to reg. Call it once before Run.
func (w *Watcher) Register(reg prometheus.Registerer) {
	w.init()
	reg.MustRegister(w.metrics.active, w.metrics.runs, w.metrics.byPolicy, w.metrics.events, w.metrics.measurements, w.metrics.queries,
		w.metrics.deploys, w.metrics.verdicts, w.metrics.decision, w.metrics.verifications)
}

// decisionBuckets spans a verdict on the first measurement (a minute or
// two) to a long window (hours); the deploy time may be earlier than the
// run's start when the event came late.
var decisionBuckets = []float64{30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400}

// started counts a run started by a deploy event.
func (m *metrics) started(r *Run) {
	m.deploys.WithLabelValues(r.Deploy.Service, r.Deploy.Environment).Inc()
}

// ended counts a concluded run and observes how long after its deploy it
// was decided.
func (m *metrics) ended(r *Run, verdict string, at time.Time) {
	m.runs.WithLabelValues(verdict).Inc()
	m.byPolicy.WithLabelValues(r.Policy.Name, verdict).Inc()
	m.verdicts.WithLabelValues(r.Deploy.Service, r.Deploy.Environment, verdict).Inc()
	if at.IsZero() {
		at = time.Now()
	}
	if d := at.Sub(r.deployTime()); d >= 0 {
		m.decision.WithLabelValues(verdict).Observe(d.Seconds())
	}
}
