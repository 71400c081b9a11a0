package audit

import "time"

// Details of a rollback's verification (README "Did the rollback help?"):
// the checks that failed a run, measured again after its rollback.

// Outcomes of a verification (VerifyDetail.Outcome).
const (
	// VerifyRecovered: at one measurement every check passed
	// (rollback.verified).
	VerifyRecovered = "recovered"
	// VerifyNotRecovered: within's end came and a check still failed
	// (rollback.unhelpful).
	VerifyNotRecovered = "not_recovered"
	// VerifyUnverified: within's end came without a measurement that
	// could say: no data, errors, or a check that recovered while another
	// never got a usable value (rollback.unhelpful: nobody knows it
	// helped).
	VerifyUnverified = "unverified"
)

// VerificationRef marks a measurement record as part of a rollback's
// verification: the measurement was taken after the rollback, against the
// run's own baselines.
type VerificationRef struct {
	RequestID string `json:"request_id"`
	// RolledBackAt is when the rollback completed, where the
	// verification's measurements count from.
	RolledBackAt time.Time `json:"rolled_back_at"`
}

// verificationMap adds d's verification, if any, to its Map.
func (d MeasurementDetail) verificationMap(m map[string]any) {
	if d.Verification != nil {
		m["verification"] = d.Verification
	}
}

// VerifyDetail is the detail of a rollback.verified or rollback.unhelpful
// record.
type VerifyDetail struct {
	RequestID string `json:"request_id"`
	// Outcome is VerifyRecovered, VerifyNotRecovered or VerifyUnverified.
	Outcome string `json:"outcome"`
	// From and To are the versions rolled back from and to.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// RolledBackAt is when the rollback completed; WithinSeconds is the
	// policy's rollback.verify.within, counted from then.
	RolledBackAt  time.Time `json:"rolled_back_at"`
	WithinSeconds float64   `json:"within_seconds"`
	// SkippedMeasurements is how many measurements a verification out of
	// time could not take.
	SkippedMeasurements int `json:"skipped_measurements,omitempty"`
	// Checks are the checks verified, each with its last measurement.
	Checks []VerifyCheck `json:"checks"`
}

// VerifyCheck is one verified check: the measurements of the verification
// (Counts), and the last one, with its value, threshold and reason.
type VerifyCheck struct {
	Check     string    `json:"check"`
	Query     string    `json:"query"`
	Counts    Counts    `json:"counts"`
	EvalTime  time.Time `json:"eval_time,omitzero"`
	Value     *float64  `json:"value"` // nil when there was none (no data, NaN, Inf)
	Threshold string    `json:"threshold"`
	Outcome   string    `json:"outcome"`
	Reason    string    `json:"reason"`
}

// Map is d as the watcher keeps it in memory.
func (d VerifyDetail) Map() map[string]any {
	checks := make([]map[string]any, len(d.Checks))
	for i, c := range d.Checks {
		checks[i] = map[string]any{
			"check": c.Check, "query": c.Query, "counts": c.Counts.Map(), "value": c.Value,
			"threshold": c.Threshold, "outcome": c.Outcome, "reason": c.Reason,
		}
		if !c.EvalTime.IsZero() {
			checks[i]["eval_time"] = c.EvalTime
		}
	}
	m := map[string]any{
		"request_id": d.RequestID, "outcome": d.Outcome, "rolled_back_at": d.RolledBackAt,
		"within_seconds": d.WithinSeconds, "checks": checks,
	}
	if d.From != "" {
		m["from"] = d.From
	}
	if d.To != "" {
		m["to"] = d.To
	}
	if d.SkippedMeasurements != 0 {
		m["skipped_measurements"] = d.SkippedMeasurements
	}
	return m
}

// Verification is r's detail when r is a rollback.verified or
// rollback.unhelpful record.
func (r Record) Verification() (VerifyDetail, bool) {
	var d VerifyDetail
	switch r.Kind {
	case RollbackVerified, RollbackUnhelpful:
		return d, r.decode(r.Kind, &d)
	}
	return d, false
}
