package watch

import (
	"sort"
	"time"
)

// Runs as /api/v1/runs and the status page show them.

// RunStatus is a run as /api/v1/runs shows it.
type RunStatus struct {
	ID           string               `json:"id"`
	DeployID     string               `json:"deploy_id"`
	Service      string               `json:"service"`
	Environment  string               `json:"environment"`
	Version      string               `json:"version"`
	Policy       string               `json:"policy"`
	Started      time.Time            `json:"started"`
	WindowEnd    time.Time            `json:"window_end"`
	Ended        *time.Time           `json:"ended,omitempty"`
	Verdict      string               `json:"verdict"`
	Reason       string               `json:"reason,omitempty"`
	Measurements []*MeasurementStatus `json:"measurements"`
}

// MeasurementStatus is a check's latest measurement.
type MeasurementStatus struct {
	Check     string    `json:"check"`
	Time      time.Time `json:"time"`
	Value     *float64  `json:"value"`
	Outcome   string    `json:"outcome"`
	Threshold string    `json:"threshold"`
	Reason    string    `json:"reason"`
	DryRun    bool      `json:"dry_run,omitempty"`
}

// Runs lists active runs (newest first), then recent ones (newest first).
func (w *Watcher) Runs() (active, recent []RunStatus) {
	w.init()
	w.mu.Lock()
	act := make([]*Run, 0, len(w.active))
	for _, r := range w.active {
		// A rollback's verification is no deploy's run: its records
		// tell of it (README "Did the rollback help?").
		if r.verify == nil {
			act = append(act, r)
		}
	}
	rec := append([]*Run(nil), w.recent...)
	w.mu.Unlock()
	sort.Slice(act, func(i, j int) bool { return act[i].Start.After(act[j].Start) })
	for _, r := range act {
		active = append(active, r.status())
	}
	for i := len(rec) - 1; i >= 0; i-- {
		recent = append(recent, rec[i].status())
	}
	return active, recent
}

func (r *Run) status() RunStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _, end := r.schedule()
	s := RunStatus{
		ID: r.ID, DeployID: r.Deploy.ID, Service: r.Deploy.Service, Environment: r.Deploy.Environment,
		Version: r.Deploy.Version, Policy: r.Policy.Name, Started: r.Start, WindowEnd: end,
		Verdict: r.verdict, Reason: r.reason, Measurements: []*MeasurementStatus{},
	}
	if !r.ended.IsZero() {
		e := r.ended
		s.Ended = &e
	}
	for _, cs := range r.checks {
		if cs.last != nil {
			m := *cs.last
			s.Measurements = append(s.Measurements, &m)
		}
	}
	return s
}
