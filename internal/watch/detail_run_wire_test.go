package watch

import (
	"reflect"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// The details of run.started, the verdicts, run.skipped, event.rejected,
// run.resumed and run.policy_kept are built from audit's types; their JSON
// must be what the maps the watcher wrote before held (the old maps below,
// kept as they were), the Go values a test reads from the records it keeps
// must be of the same types, and a reader of the stream must get the typed
// detail back.
func TestRunDetailsWire(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	ip := func(v int) *int { return &v }
	at := time.Date(2026, 11, 25, 10, 0, 30, 0, time.UTC)
	d := events.Deploy{ID: "d1", Service: "shop", Environment: "production", Version: "v2", PreviousVersion: "v1",
		Hosts: []string{"web1", "web2"}, Time: at, Labels: map[string]string{"team": "a"}, Format: events.FormatCDEvent}
	bare := events.Deploy{ID: "d2", Service: "shop", Environment: "production", Version: "v3", Time: at, Format: events.FormatJSON}
	failing := &checkState{check: &policy.Check{Name: "errors", Max: f(1), FailureLimit: 1}, query: "sum(errors)",
		tally: policy.Tally{Pass: 2, Fail: 2}, last: &MeasurementStatus{Reason: "3 > max 1", Value: f(3)}}
	blind := &checkState{check: &policy.Check{Name: "orders", Min: f(5), InconclusiveLimit: ip(2), ConsecutiveErrorLimit: ip(3)},
		query: "sum(orders)", tally: policy.Tally{Inconclusive: 3, Error: 4, ConsecutiveErrors: 4},
		last: &MeasurementStatus{Reason: "no data", Value: nil}}
	never := &checkState{check: &policy.Check{Name: "latency", Max: f(0.5)}, query: "max(latency)"}
	checks := []*checkState{failing, blind, never}

	for _, tc := range []struct {
		name  string
		kind  string
		typed interface{ Map() map[string]any }
		old   map[string]any
		read  func(audit.Record) (any, bool)
	}{
		{"started", audit.RunStarted,
			audit.RunStartedDetail{Format: d.Format, PreviousVersion: d.PreviousVersion, Hosts: d.Hosts, Labels: d.Labels, DeployTime: d.Time,
				Start: at, FirstMeasurement: at.Add(time.Minute), WindowEnd: at.Add(time.Hour), PolicyFile: "shop.yml:3", Replica: "r1"},
			map[string]any{"format": d.Format, "previous_version": d.PreviousVersion, "hosts": d.Hosts, "labels": d.Labels,
				"deploy_time": d.Time, "start": at, "first_measurement": at.Add(time.Minute), "window_end": at.Add(time.Hour), "policy_file": "shop.yml:3",
				"replica": "r1"},
			func(r audit.Record) (any, bool) { return r.RunStarted() }},
		{"started, bare deploy", audit.RunStarted,
			audit.RunStartedDetail{Format: bare.Format, PreviousVersion: bare.PreviousVersion, Hosts: bare.Hosts, Labels: bare.Labels,
				DeployTime: bare.Time, FirstMeasurement: at, WindowEnd: at, PolicyFile: "shop.yml:3", Replica: "r1"},
			map[string]any{"format": bare.Format, "previous_version": bare.PreviousVersion, "hosts": bare.Hosts, "labels": bare.Labels,
				"deploy_time": bare.Time, "first_measurement": at, "window_end": at, "policy_file": "shop.yml:3", "replica": "r1"},
			func(r audit.Record) (any, bool) { return r.RunStarted() }},
		{"passed", audit.RunPassed, audit.VerdictDetail{}, map[string]any{},
			func(r audit.Record) (any, bool) { return r.Verdict() }},
		{"failed, rollback requested", audit.RunFailed,
			audit.VerdictDetail{Checks: checkDetails(checks[:1]), RequestID: "rb-1"},
			map[string]any{"checks": oldCheckDetails(checks[:1]), "request_id": "rb-1"},
			func(r audit.Record) (any, bool) { return r.Verdict() }},
		{"inconclusive, kept, measurements skipped", audit.RunInconclusive,
			audit.VerdictDetail{Checks: checkDetails(checks), SkippedMeasurements: 3, OnInconclusive: policy.OnInconclusiveKeep},
			map[string]any{"checks": oldCheckDetails(checks), "on_inconclusive": policy.OnInconclusiveKeep, "skipped_measurements": 3},
			func(r audit.Record) (any, bool) { return r.Verdict() }},
		{"inconclusive, rollback requested", audit.RunInconclusive,
			audit.VerdictDetail{Checks: checkDetails(checks[1:2]), RequestID: "rb-2", SkippedMeasurements: 1},
			map[string]any{"checks": oldCheckDetails(checks[1:2]), "request_id": "rb-2", "skipped_measurements": 1},
			func(r audit.Record) (any, bool) { return r.Verdict() }},
		{"inconclusive, every check dry-run", audit.RunInconclusive,
			audit.VerdictDetail{Checks: checkDetails(nil), OnInconclusive: policy.OnInconclusiveKeep},
			map[string]any{"checks": oldCheckDetails(nil), "on_inconclusive": policy.OnInconclusiveKeep},
			func(r audit.Record) (any, bool) { return r.Verdict() }},
		{"superseded", audit.RunSuperseded,
			audit.VerdictDetail{SupersededBy: &audit.SupersededBy{DeployID: "d3", Version: "v4"}},
			map[string]any{"superseded_by": map[string]any{"deploy_id": "d3", "version": "v4"}},
			func(r audit.Record) (any, bool) { return r.Verdict() }},
		{"skipped, not a deploy", audit.RunSkipped,
			audit.RunSkippedDetail{Subject: "deploys.production.shop", Type: "dev.cdevents.service.removed.0.3.0", Reason: "not a deploy event"},
			map[string]any{"subject": "deploys.production.shop", "type": "dev.cdevents.service.removed.0.3.0", "reason": "not a deploy event"},
			func(r audit.Record) (any, bool) { return r.RunSkipped() }},
		{"skipped, no policy", audit.RunSkipped,
			audit.RunSkippedDetail{Subject: "deploys.production.shop", Format: events.FormatJSON},
			map[string]any{"subject": "deploys.production.shop", "format": events.FormatJSON},
			func(r audit.Record) (any, bool) { return r.RunSkipped() }},
		{"skipped, duplicate", audit.RunSkipped,
			audit.RunSkippedDetail{Subject: "deploys.production.shop", Reason: "duplicate"},
			map[string]any{"subject": "deploys.production.shop", "reason": "duplicate"},
			func(r audit.Record) (any, bool) { return r.RunSkipped() }},
		{"rejected by the decoder", audit.EventRejected,
			audit.EventRejectedDetail{Subject: "deploys.production.shop", Field: "service",
				DecodeRejection: &audit.DecodeRejection{Reason: "is required", Size: 0, StreamSeq: 7}},
			map[string]any{"subject": "deploys.production.shop", "field": "service", "reason": "is required", "size": 0, "stream_seq": uint64(7)},
			func(r audit.Record) (any, bool) { return r.EventRejected() }},
		{"rejected by a template", audit.EventRejected,
			audit.EventRejectedDetail{Subject: "deploys.production.shop", Field: "policy template"},
			map[string]any{"subject": "deploys.production.shop", "field": "policy template"},
			func(r audit.Record) (any, bool) { return r.EventRejected() }},
		{"resumed", RunResumed,
			audit.RunResumedDetail{Replica: "r2", PreviousOwner: "r1", NextMeasurement: at, Verdict: VerdictPending},
			map[string]any{"replica": "r2", "previous_owner": "r1", "next_measurement": at, "verdict": VerdictPending},
			func(r audit.Record) (any, bool) { return r.RunResumed() }},
		{"policy kept, none matches", RunPolicyKept, audit.PolicyKeptDetail{StartedWith: "shop.yml:3"},
			map[string]any{"started_with": "shop.yml:3"},
			func(r audit.Record) (any, bool) { return r.PolicyKept() }},
		{"policy kept, another matches", RunPolicyKept, audit.PolicyKeptDetail{StartedWith: "shop.yml:3", NowMatching: "all.yml:9"},
			map[string]any{"started_with": "shop.yml:3", "now_matching": "all.yml:9"},
			func(r audit.Record) (any, bool) { return r.PolicyKept() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.typed.Map()
			if !sameGoTypes(got, tc.old) {
				t.Errorf("detail in memory changed:\n got %#v\nwant %#v", got, tc.old)
			}
			want := viaJSON(t, tc.old)
			if m := viaJSON(t, got); !reflect.DeepEqual(m, want) {
				t.Errorf("detail on the wire changed:\n got %v\nwant %v", m, want)
			}
			if s := viaJSON(t, tc.typed); !reflect.DeepEqual(s, want) {
				t.Errorf("the struct's JSON differs from its Map's:\nstruct %v\n   map %v", s, want)
			}
			back, ok := tc.read(audit.Record{Kind: tc.kind, Detail: want})
			if !ok || !reflect.DeepEqual(back, tc.typed) {
				t.Errorf("read back %+v (%v), want %+v", back, ok, tc.typed)
			}
		})
	}
}

// sameGoTypes reports whether a and b hold the same keys with values of the
// same Go types, as far down as maps and slices of maps go.
func sameGoTypes(a, b any) bool {
	if reflect.TypeOf(a) != reflect.TypeOf(b) {
		return false
	}
	switch x := a.(type) {
	case map[string]any:
		y := b.(map[string]any)
		if len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if w, ok := y[k]; !ok || !sameGoTypes(v, w) {
				return false
			}
		}
	case []map[string]any:
		y := b.([]map[string]any)
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameGoTypes(x[i], y[i]) {
				return false
			}
		}
	}
	return true
}

// oldCheckDetails is checkDetails as it was before the verdict's detail was
// typed (audit.VerdictDetail), kept to prove the wire did not change.
func oldCheckDetails(css []*checkState) []map[string]any {
	out := make([]map[string]any, 0, len(css))
	for _, cs := range css {
		m := map[string]any{
			"check": cs.check.Name, "query": cs.query, "limits": cs.check.Limits(),
			"counts": map[string]int{"pass": cs.tally.Pass, "fail": cs.tally.Fail, "inconclusive": cs.tally.Inconclusive,
				"error": cs.tally.Error, "consecutive_errors": cs.tally.ConsecutiveErrors},
			"failures": cs.tally.Fail, "failure_limit": cs.check.FailureLimit,
		}
		if cs.last != nil {
			m["reason"] = cs.last.Reason
			m["value"] = cs.last.Value
		}
		out = append(out, m)
	}
	return out
}
