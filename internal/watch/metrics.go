package watch

import (
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
}

// Register adds the watcher's metrics to reg. Call it once before Run.
func (w *Watcher) Register(reg prometheus.Registerer) {
	w.init()
	reg.MustRegister(w.metrics.active, w.metrics.runs, w.metrics.byPolicy, w.metrics.events, w.metrics.measurements, w.metrics.queries)
}
