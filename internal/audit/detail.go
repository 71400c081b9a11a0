package audit

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/rollback-watcher/watcher/internal/events"
)

// Typed details. A record's Detail is a JSON object whose fields depend on
// its kind; the types below are those fields, written by the one package
// that makes the record and read back by every reader, so that a field's
// name and meaning live in one place. Record.Detail stays the wire form.

// SetDetail puts v, one of the detail types, in r.Detail as the stream
// will hold it (through JSON: numbers become float64, times strings).
func (r *Record) SetDetail(v any) error {
	d, err := Wire(v)
	if err != nil {
		return fmt.Errorf("encoding the detail of audit record %s: %w", r.Kind, err)
	}
	r.Detail = d
	return nil
}

// Wire is v as a JSON object, as the stream holds a detail (numbers
// float64, times strings): what a reader of the stream gets back.
func Wire(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var d map[string]any
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, err
	}
	return d, nil
}

// decode reads r's detail into v when r is of kind.
func (r Record) decode(kind string, v any) bool {
	if r.Kind != kind || r.Detail == nil {
		return false
	}
	b, err := json.Marshal(r.Detail)
	if err != nil {
		return false
	}
	return json.Unmarshal(b, v) == nil
}

// RollbackRequestedDetail is the detail of a rollback.requested record.
type RollbackRequestedDetail struct {
	Source      string           `json:"source"`
	Reason      string           `json:"reason"`
	ToVersion   string           `json:"to_version"`
	Hosts       []string         `json:"hosts"`
	RequestedAt time.Time        `json:"requested_at"`
	Executed    bool             `json:"executed"`
	Alert       *events.AlertRef `json:"alert,omitempty"`
	// DryRun and Mode are set when the request was not executed: by a
	// watcher running with --dry-run, or a policy with mode: publish.
	DryRun *bool   `json:"dry_run,omitempty"`
	Mode   *string `json:"mode,omitempty"`
}

// NotExecuted says why a request was recorded and not executed ("--dry-run",
// "policy shop has mode: publish"), "" when it was executed. policy is the
// record's Policy.
func (d RollbackRequestedDetail) NotExecuted(policy string) string {
	switch {
	case d.Executed:
		return ""
	case d.DryRun != nil && *d.DryRun:
		return "--dry-run"
	case d.Mode != nil:
		return "policy " + policy + " has mode: " + *d.Mode
	}
	return "not executed"
}

// RollbackRequested is r's detail when r is a rollback.requested record.
func (r Record) RollbackRequested() (RollbackRequestedDetail, bool) {
	var d RollbackRequestedDetail
	return d, r.decode(RollbackRequested, &d)
}

// RollbackHostDetail is the detail of a rollback.host record: one host's
// part of a rollback.
type RollbackHostDetail struct {
	Host string `json:"host"`
	Link string `json:"link"`
	From string `json:"from"`
	To   string `json:"to"`
	// Source is where the release to roll back to was found.
	Source          string  `json:"source"`
	Switched        bool    `json:"switched"`
	DurationSeconds float64 `json:"duration_seconds"`
	Error           string  `json:"error"`
	AfterOutput     string  `json:"after_output"`
	Attempts        int     `json:"attempts"`
	// Earlier says what an earlier attempt or request had done on the host;
	// AfterRan is "yes" when this execution ran the after command,
	// "earlier" when an earlier one had.
	Earlier  string `json:"earlier"`
	AfterRan string `json:"after_ran"`
}

// Duration is how long the host took.
func (d RollbackHostDetail) Duration() time.Duration {
	return time.Duration(d.DurationSeconds * float64(time.Second))
}

// RollbackHost is r's detail when r is a rollback.host record.
func (r Record) RollbackHost() (RollbackHostDetail, bool) {
	var d RollbackHostDetail
	return d, r.decode(RollbackHost, &d)
}

// MeasurementDetail is the detail of a measurement record: enough numbers
// to explain the verdict without running the query again.
type MeasurementDetail struct {
	Check    string     `json:"check"`
	Query    string     `json:"query"`
	EvalTime time.Time  `json:"eval_time"`
	Value    *float64   `json:"value"` // nil when there is none (no data, NaN, Inf)
	Values   []*float64 `json:"values"`
	// Threshold is for people ("min 50, max 200"); Thresholds has its
	// numbers.
	Threshold  string     `json:"threshold"`
	Thresholds Thresholds `json:"thresholds"`
	Outcome    string     `json:"outcome"`
	Reason     string     `json:"reason"`
	Limits     Limits     `json:"limits"`
	// Counts is the check's tally including this measurement, and State
	// where the check stands after it.
	Counts       Counts `json:"counts"`
	State        string `json:"state"`
	FailureLimit int    `json:"failure_limit"`
	DryRun       bool   `json:"dry_run,omitempty"`
	Aggregate    string `json:"aggregate,omitempty"`
	// Baseline, Ratio and BaselineTime are there for a check with a
	// baseline, Series for a check with each: true.
	Baseline     OptionalFloat  `json:"baseline,omitzero"`
	Ratio        OptionalFloat  `json:"ratio,omitzero"`
	BaselineTime time.Time      `json:"baseline_time,omitzero"`
	Series       []SeriesDetail `json:"series,omitzero"`
	// Comparison is there for a check that compares (README
	// "Comparisons").
	Comparison *ComparisonDetail `json:"comparison,omitempty"`
	// Verification is there for a measurement taken after a rollback, to
	// see whether it helped (README "Did the rollback help?").
	Verification *VerificationRef `json:"verification,omitempty"`
}

// Thresholds are a check's thresholds, those it sets.
type Thresholds struct {
	Min      *float64 `json:"min,omitempty"`
	Max      *float64 `json:"max,omitempty"`
	MinRatio *float64 `json:"min_ratio,omitempty"`
	MaxRatio *float64 `json:"max_ratio,omitempty"`
}

// Limits are a check's limits; nil is a limit the check does not set.
type Limits struct {
	FailureLimit          int  `json:"failure_limit"`
	InconclusiveLimit     *int `json:"inconclusive_limit"`
	ConsecutiveErrorLimit *int `json:"consecutive_error_limit"`
}

// Counts is a check's tally of outcomes.
type Counts struct {
	Pass              int `json:"pass"`
	Fail              int `json:"fail"`
	Inconclusive      int `json:"inconclusive"`
	Error             int `json:"error"`
	ConsecutiveErrors int `json:"consecutive_errors"`
}

// Map is l as the watcher keeps it in memory: a limit the check does not
// set is a nil value, present.
func (l Limits) Map() map[string]any {
	limit := func(p *int) any {
		if p == nil {
			return nil
		}
		return *p
	}
	return map[string]any{
		"failure_limit":           l.FailureLimit,
		"inconclusive_limit":      limit(l.InconclusiveLimit),
		"consecutive_error_limit": limit(l.ConsecutiveErrorLimit),
	}
}

// Map is c as the watcher keeps it in memory.
func (c Counts) Map() map[string]int {
	return map[string]int{"pass": c.Pass, "fail": c.Fail, "inconclusive": c.Inconclusive,
		"error": c.Error, "consecutive_errors": c.ConsecutiveErrors}
}

// SeriesDetail is the verdict on one series of an each: true check.
type SeriesDetail struct {
	Labels   string        `json:"labels"`
	Value    *float64      `json:"value"`
	Outcome  string        `json:"outcome"`
	Reason   string        `json:"reason"`
	Baseline OptionalFloat `json:"baseline,omitzero"`
	Ratio    OptionalFloat `json:"ratio,omitzero"`
}

// OptionalFloat is a number some records carry and others do not: absent
// (not Present), null (Present, no Value), or a number.
type OptionalFloat struct {
	Present bool
	Value   *float64
}

// Some is a present number, nil for null.
func Some(v *float64) OptionalFloat { return OptionalFloat{Present: true, Value: v} }

// IsZero lets omitzero leave an absent number out.
func (o OptionalFloat) IsZero() bool { return !o.Present }

// MarshalJSON writes the number or null.
func (o OptionalFloat) MarshalJSON() ([]byte, error) { return json.Marshal(o.Value) }

// UnmarshalJSON reads the number or null; either is present.
func (o *OptionalFloat) UnmarshalJSON(b []byte) error {
	o.Present = true
	return json.Unmarshal(b, &o.Value)
}

// Map is d as Record.Detail holds it before it goes through JSON: the
// watcher's own tests read the Go values (map[string]int counts,
// time.Time, []*float64) from the records they keep. Its JSON is d's JSON,
// which TestMeasurementDetailWire checks.
func (d MeasurementDetail) Map() map[string]any {
	m := map[string]any{
		"check":         d.Check,
		"query":         d.Query,
		"eval_time":     d.EvalTime,
		"value":         d.Value,
		"values":        d.Values,
		"threshold":     d.Threshold,
		"thresholds":    d.Thresholds,
		"outcome":       d.Outcome,
		"reason":        d.Reason,
		"limits":        d.Limits.Map(),
		"counts":        d.Counts.Map(),
		"state":         d.State,
		"failure_limit": d.FailureLimit,
	}
	if d.DryRun {
		m["dry_run"] = true
	}
	if d.Aggregate != "" {
		m["aggregate"] = d.Aggregate
	}
	if d.Baseline.Present {
		m["baseline"] = d.Baseline.Value
	}
	if d.Ratio.Present {
		m["ratio"] = d.Ratio.Value
	}
	if !d.BaselineTime.IsZero() {
		m["baseline_time"] = d.BaselineTime
	}
	if d.Series != nil {
		series := make([]map[string]any, len(d.Series))
		for i, s := range d.Series {
			series[i] = map[string]any{"labels": s.Labels, "value": s.Value, "outcome": s.Outcome, "reason": s.Reason}
			if s.Baseline.Present {
				series[i]["baseline"] = s.Baseline.Value
			}
			if s.Ratio.Present {
				series[i]["ratio"] = s.Ratio.Value
			}
		}
		m["series"] = series
	}
	d.comparisonMap(m)
	d.verificationMap(m)
	return m
}

// Measurement is r's detail when r is a measurement record.
func (r Record) Measurement() (MeasurementDetail, bool) {
	var d MeasurementDetail
	return d, r.decode(Measurement, &d)
}

// RollbackResultDetail is the detail of a rollback.completed or
// rollback.failed record. Error is a failure's; From, To and Noop are a
// completion's (Noop: an earlier request had rolled the release back).
type RollbackResultDetail struct {
	Error string        `json:"error,omitempty"`
	Hosts []HostOutcome `json:"hosts"`
	From  string        `json:"from,omitempty"`
	To    string        `json:"to,omitempty"`
	Noop  bool          `json:"noop,omitempty"`
	Data  DataStep      `json:"data,omitzero"`
}

// HostOutcome is one host of a rollback's result. Its duration is in
// nanoseconds, where a rollback.host record's is in seconds.
type HostOutcome struct {
	Host        string        `json:"host"`
	Link        string        `json:"link"`
	From        string        `json:"from"`
	To          string        `json:"to"`
	Source      string        `json:"source,omitempty"`
	Switched    bool          `json:"switched"`
	Duration    time.Duration `json:"duration_ns"`
	AfterOutput string        `json:"after_output,omitempty"`
	Error       string        `json:"error,omitempty"`
	Attempts    int           `json:"attempts,omitempty"`
	Earlier     string        `json:"earlier,omitempty"`
	AfterRan    string        `json:"after_ran,omitempty"`
	// LinkNow is the release the link named when the rollback failed.
	LinkNow string `json:"link_now,omitempty"`
}

// DataStep is what the data step did: a run per target (a host, or
// "local"), or, when an earlier attempt of the request ran it, Skipped.
type DataStep struct {
	Runs    map[string]DataRun
	Skipped string
}

// DataRun is the data step on one target.
type DataRun struct {
	Command         []string `json:"command"`
	Output          string   `json:"output"`
	DurationSeconds float64  `json:"duration_seconds"`
	Error           string   `json:"error,omitempty"`
}

// IsZero lets omitzero leave out a data step that did not run.
func (d DataStep) IsZero() bool { return d.Runs == nil && d.Skipped == "" }

// MarshalJSON writes {"skipped": "..."} or the runs by target.
func (d DataStep) MarshalJSON() ([]byte, error) {
	if d.Skipped != "" {
		return json.Marshal(map[string]string{"skipped": d.Skipped})
	}
	return json.Marshal(d.Runs)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (d *DataStep) UnmarshalJSON(b []byte) error {
	var skipped struct {
		Skipped string `json:"skipped"`
	}
	if err := json.Unmarshal(b, &skipped); err == nil && skipped.Skipped != "" {
		*d = DataStep{Skipped: skipped.Skipped}
		return nil
	}
	return json.Unmarshal(b, &d.Runs)
}

// Failed is the first data run that failed, by target name.
func (d DataStep) Failed() (string, DataRun, bool) {
	for name, run := range d.Runs {
		if run.Error != "" {
			return name, run, true
		}
	}
	return "", DataRun{}, false
}

// RollbackResult is r's detail when r is a rollback.completed or
// rollback.failed record.
func (r Record) RollbackResult() (RollbackResultDetail, bool) {
	var d RollbackResultDetail
	if r.Kind == RollbackFailed {
		return d, r.decode(RollbackFailed, &d)
	}
	return d, r.decode(RollbackCompleted, &d)
}
