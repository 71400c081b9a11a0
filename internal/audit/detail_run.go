package audit

import (
	"encoding/json"
	"time"

	"github.com/rollback-watcher/watcher/internal/events"
)

// Details of the records a validation run and its intake write. The
// watcher keeps what it records in memory as Map gives it (Go values:
// ints, time.Time, []map[string]any), which its tests read; the JSON of
// Map is the JSON of the struct, which the wire tests check.

// Record kinds the watcher writes besides those above.
const (
	RunResumed    = "run.resumed"     // another replica (or a restart) took a stored run over
	RunPolicyKept = "run.policy_kept" // a reload changed the policy of a run in progress, which keeps its own
)

// RunStartedDetail is the detail of a run.started record.
type RunStartedDetail struct {
	Format          string            `json:"format"`
	PreviousVersion string            `json:"previous_version"`
	Hosts           []string          `json:"hosts"`
	Labels          map[string]string `json:"labels"`
	DeployTime      time.Time         `json:"deploy_time"`
	// Start is when the run's window opened (the event's arrival): its
	// measurements fall on the interval's grid from it, which a backtest
	// of the same deploy follows.
	Start            time.Time `json:"start,omitzero"`
	FirstMeasurement time.Time `json:"first_measurement"`
	WindowEnd        time.Time `json:"window_end"`
	// PolicyFile is where the policy is written, file:line.
	PolicyFile string `json:"policy_file"`
	Replica    string `json:"replica"`
}

// Map is d as the watcher keeps it in memory.
func (d RunStartedDetail) Map() map[string]any {
	m := map[string]any{
		"format": d.Format, "previous_version": d.PreviousVersion, "hosts": d.Hosts, "labels": d.Labels,
		"deploy_time": d.DeployTime, "first_measurement": d.FirstMeasurement, "window_end": d.WindowEnd,
		"policy_file": d.PolicyFile, "replica": d.Replica,
	}
	if !d.Start.IsZero() {
		m["start"] = d.Start
	}
	return m
}

// RunStarted is r's detail when r is a run.started record.
func (r Record) RunStarted() (RunStartedDetail, bool) {
	var d RunStartedDetail
	return d, r.decode(RunStarted, &d)
}

// VerdictDetail is the detail of a run's verdict: a run.passed, run.failed,
// run.inconclusive or run.superseded record. A passed run's is empty.
type VerdictDetail struct {
	// Checks are the checks that decided a failed or inconclusive run.
	Checks []CheckDetail `json:"checks,omitzero"`
	// RequestID is the rollback request the verdict asked for.
	RequestID string `json:"request_id,omitempty"`
	// SkippedMeasurements is how many measurements a run decided out of
	// time could not take.
	SkippedMeasurements int `json:"skipped_measurements,omitempty"`
	// OnInconclusive is the policy's on_inconclusive when it kept an
	// inconclusive deploy.
	OnInconclusive string        `json:"on_inconclusive,omitempty"`
	SupersededBy   *SupersededBy `json:"superseded_by,omitempty"`
	// Score is a scored policy's score when the run was decided.
	Score *ScoreDetail `json:"score,omitempty"`
	// OnMarginal is the policy's on_marginal, on a run.marginal record.
	OnMarginal string `json:"on_marginal,omitempty"`
}

// ScoreDetail is a scored run's score: 100 x (weight of the checks not
// failed) / (weight of the checks judged), and what went into it.
type ScoreDetail struct {
	Score    float64 `json:"score"`
	Pass     float64 `json:"pass"`
	Marginal float64 `json:"marginal"`
	// Checks are the policy's checks that are not dry-run, each with its
	// weight and whether it counted (judged) and failed.
	Checks []ScoreCheck `json:"checks"`
}

// ScoreCheck is one check's part in a score.
type ScoreCheck struct {
	Check    string  `json:"check"`
	Weight   float64 `json:"weight"`
	Critical bool    `json:"critical,omitempty"`
	// State is ok, failed, inconclusive (left out of the score) or
	// unjudged (no pass or fail yet: left out too).
	State string `json:"state"`
}

// SupersededBy is the newer deploy that ended a run.
type SupersededBy struct {
	DeployID string `json:"deploy_id"`
	Version  string `json:"version"`
}

// CheckDetail is a check that decided a verdict, with its numbers.
type CheckDetail struct {
	Check  string `json:"check"`
	Query  string `json:"query"`
	Limits Limits `json:"limits"`
	Counts Counts `json:"counts"`
	// LastMeasurement is there when the check was measured.
	*LastMeasurement
}

// MarshalJSON writes c with Counts.Fail and Limits.FailureLimit repeated
// as failures and failure_limit, the names readers of the stream know them
// by too; they are not fields of their own, so they cannot disagree.
func (c CheckDetail) MarshalJSON() ([]byte, error) {
	type plain CheckDetail
	return json.Marshal(struct {
		plain
		Failures     int `json:"failures"`
		FailureLimit int `json:"failure_limit"`
	}{plain(c), c.Counts.Fail, c.Limits.FailureLimit})
}

// LastMeasurement is how a check's last measurement came out.
type LastMeasurement struct {
	Reason string   `json:"reason"`
	Value  *float64 `json:"value"` // nil when there was none (no data, NaN, Inf)
}

// LastReason is why the check's last measurement came out as it did, ""
// when it was not measured.
func (c CheckDetail) LastReason() string {
	if c.LastMeasurement == nil {
		return ""
	}
	return c.Reason
}

// Map is d as the watcher keeps it in memory.
func (d VerdictDetail) Map() map[string]any {
	m := map[string]any{}
	if d.Checks != nil {
		checks := make([]map[string]any, len(d.Checks))
		for i, c := range d.Checks {
			checks[i] = map[string]any{
				"check": c.Check, "query": c.Query, "limits": c.Limits.Map(), "counts": c.Counts.Map(),
				"failures": c.Counts.Fail, "failure_limit": c.Limits.FailureLimit,
			}
			if c.LastMeasurement != nil {
				checks[i]["reason"] = c.Reason
				checks[i]["value"] = c.Value
			}
		}
		m["checks"] = checks
	}
	if d.RequestID != "" {
		m["request_id"] = d.RequestID
	}
	if d.SkippedMeasurements != 0 {
		m["skipped_measurements"] = d.SkippedMeasurements
	}
	if d.OnInconclusive != "" {
		m["on_inconclusive"] = d.OnInconclusive
	}
	if d.SupersededBy != nil {
		m["superseded_by"] = map[string]any{"deploy_id": d.SupersededBy.DeployID, "version": d.SupersededBy.Version}
	}
	if d.Score != nil {
		m["score"] = d.Score
	}
	if d.OnMarginal != "" {
		m["on_marginal"] = d.OnMarginal
	}
	return m
}

// Verdict is r's detail when r is a verdict record (run.passed,
// run.failed, run.inconclusive, run.marginal, run.superseded).
func (r Record) Verdict() (VerdictDetail, bool) {
	var d VerdictDetail
	switch r.Kind {
	case RunPassed, RunFailed, RunInconclusive, RunMarginal, RunSuperseded:
		return d, r.decode(r.Kind, &d)
	}
	return d, false
}

// RunSkippedDetail is the detail of a run.skipped record: a deploy event
// no run validates. Reason is "not a deploy event" (with the event's Type)
// or "duplicate"; a deploy no policy matches has its Format instead.
type RunSkippedDetail struct {
	Subject string `json:"subject"`
	Type    string `json:"type,omitempty"`
	Format  string `json:"format,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// Map is d as the watcher keeps it in memory.
func (d RunSkippedDetail) Map() map[string]any {
	m := map[string]any{"subject": d.Subject}
	if d.Type != "" {
		m["type"] = d.Type
	}
	if d.Format != "" {
		m["format"] = d.Format
	}
	if d.Reason != "" {
		m["reason"] = d.Reason
	}
	return m
}

// RunSkipped is r's detail when r is a run.skipped record.
func (r Record) RunSkipped() (RunSkippedDetail, bool) {
	var d RunSkippedDetail
	return d, r.decode(RunSkipped, &d)
}

// EventRejectedDetail is the detail of an event.rejected record: a deploy
// event or rollback request refused, and the field that made it so.
type EventRejectedDetail struct {
	// HTTPDecision is there when an HTTP request to decide a held
	// rollback decided nothing.
	HTTPDecision *DecisionRequest `json:"http_decision,omitempty"`

	Subject string `json:"subject"`
	Field   string `json:"field"`
	// DecodeRejection is there when the deploy event's decoder refused it.
	*DecodeRejection
	// HTTP is there when the event came over HTTP (README "Send deploy
	// events from your tool"): which request, and who sent it.
	HTTP *IngestRequest `json:"http,omitempty"`
}

// DecodeRejection is why the decoder refused a deploy event, and which
// message it was.
type DecodeRejection struct {
	Reason    string `json:"reason"`
	Size      int    `json:"size"`
	StreamSeq uint64 `json:"stream_seq"`
}

// Map is d as the watcher keeps it in memory.
func (d EventRejectedDetail) Map() map[string]any {
	m := map[string]any{"subject": d.Subject, "field": d.Field}
	if d.HTTPDecision != nil {
		m["http_decision"] = d.HTTPDecision
	}
	if d.DecodeRejection != nil {
		m["reason"], m["size"], m["stream_seq"] = d.Reason, d.Size, d.StreamSeq
	}
	if d.HTTP != nil {
		m["http"] = d.HTTP
	}
	return m
}

// EventRejected is r's detail when r is an event.rejected record.
func (r Record) EventRejected() (EventRejectedDetail, bool) {
	var d EventRejectedDetail
	return d, r.decode(EventRejected, &d)
}

// RunResumedDetail is the detail of a run.resumed record.
type RunResumedDetail struct {
	Replica         string    `json:"replica"`
	PreviousOwner   string    `json:"previous_owner"`
	NextMeasurement time.Time `json:"next_measurement"`
	// Verdict is the run's verdict when it was taken over: pending, or
	// one decided and not yet concluded.
	Verdict string `json:"verdict"`
}

// Map is d as the watcher keeps it in memory.
func (d RunResumedDetail) Map() map[string]any {
	return map[string]any{"replica": d.Replica, "previous_owner": d.PreviousOwner, "next_measurement": d.NextMeasurement, "verdict": d.Verdict}
}

// RunResumed is r's detail when r is a run.resumed record.
func (r Record) RunResumed() (RunResumedDetail, bool) {
	var d RunResumedDetail
	return d, r.decode(RunResumed, &d)
}

// PolicyKeptDetail is the detail of a run.policy_kept record: where the
// run's policy is written (file:line), and the policy that matches the
// run's deploy after the reload, if one does.
type PolicyKeptDetail struct {
	StartedWith string `json:"started_with"`
	NowMatching string `json:"now_matching,omitempty"`
}

// Map is d as the watcher keeps it in memory.
func (d PolicyKeptDetail) Map() map[string]any {
	m := map[string]any{"started_with": d.StartedWith}
	if d.NowMatching != "" {
		m["now_matching"] = d.NowMatching
	}
	return m
}

// PolicyKept is r's detail when r is a run.policy_kept record.
func (r Record) PolicyKept() (PolicyKeptDetail, bool) {
	var d PolicyKeptDetail
	return d, r.decode(RunPolicyKept, &d)
}

// AlertReceivedDetail is the detail of an alert.received record: what the
// webhook did with an alert, or with a request it refused unread.
type AlertReceivedDetail struct {
	// ReceivedAlert is there for an alert; a refused request has only
	// its Outcome.
	*ReceivedAlert
	Outcome string `json:"outcome"`
	// SkippedMessages is how many newer messages on the deploy's subject
	// were passed over as no valid deploy.
	SkippedMessages int `json:"skipped_messages,omitempty"`
	// RequestID is the rollback request the alert made.
	RequestID string `json:"request_id,omitempty"`
}

// ReceivedAlert is one alert of an Alertmanager message.
type ReceivedAlert struct {
	Alert    events.AlertRef `json:"alert"`
	Status   string          `json:"status"`
	GroupKey string          `json:"group_key"`
	Receiver string          `json:"receiver"`
}

// AlertReceived is r's detail when r is an alert.received record.
func (r Record) AlertReceived() (AlertReceivedDetail, bool) {
	var d AlertReceivedDetail
	return d, r.decode(AlertReceived, &d)
}
