package audit

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/events"
)

// wire is what v looks like in the stream.
func wire(t *testing.T, v any) map[string]any {
	t.Helper()
	m, err := Wire(v)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// The typed rollback details put on the wire what the executor's maps put
// there before they were typed (the maps below are those maps, as the
// executor built them), and read back to what was written.
func TestRollbackDetailWire(t *testing.T) {
	at := time.Date(2026, 11, 25, 10, 0, 0, 123, time.UTC)
	alert := &events.AlertRef{Name: "ShopErrorsHigh", Fingerprint: "f00", StartsAt: at, Labels: map[string]string{"severity": "page"}}
	dryRun, noDryRun, publish := true, false, "publish"
	for _, tc := range []struct {
		name  string
		kind  string
		typed any
		old   map[string]any
	}{
		{"requested, executed", RollbackRequested,
			RollbackRequestedDetail{Source: "validation", Reason: "errors", Hosts: []string{"web1"}, RequestedAt: at, Executed: true},
			map[string]any{"source": "validation", "reason": "errors", "to_version": "", "hosts": []string{"web1"}, "requested_at": at, "executed": true}},
		{"requested by an alert, no hosts", RollbackRequested,
			RollbackRequestedDetail{Source: "alert", Reason: "firing", ToVersion: "v1", RequestedAt: at, Executed: true, Alert: alert},
			map[string]any{"source": "alert", "reason": "firing", "to_version": "v1", "hosts": []string(nil), "requested_at": at, "executed": true, "alert": alert}},
		{"requested, --dry-run", RollbackRequested,
			RollbackRequestedDetail{Source: "manual", Reason: "r", RequestedAt: at, DryRun: &dryRun, Mode: &publish},
			map[string]any{"source": "manual", "reason": "r", "to_version": "", "hosts": []string(nil), "requested_at": at, "executed": false, "dry_run": true, "mode": "publish"}},
		{"requested, mode publish", RollbackRequested,
			RollbackRequestedDetail{Source: "manual", Reason: "r", RequestedAt: at, DryRun: &noDryRun, Mode: &publish},
			map[string]any{"source": "manual", "reason": "r", "to_version": "", "hosts": []string(nil), "requested_at": at, "executed": false, "dry_run": false, "mode": "publish"}},
		{"host", RollbackHost,
			RollbackHostDetail{Host: "web1", Link: "/srv/shop/current", From: "/srv/shop/releases/v2", To: "/srv/shop/releases/v1", Source: "previousVersion",
				Switched: true, DurationSeconds: (1500 * time.Microsecond).Seconds(), AfterOutput: "ok", Attempts: 2, Earlier: "switched", AfterRan: "yes"},
			map[string]any{"host": "web1", "link": "/srv/shop/current", "from": "/srv/shop/releases/v2", "to": "/srv/shop/releases/v1", "source": "previousVersion",
				"switched": true, "duration_seconds": (1500 * time.Microsecond).Seconds(), "error": "", "after_output": "ok",
				"attempts": 2, "earlier": "switched", "after_ran": "yes"}},
		{"host that failed", RollbackHost,
			RollbackHostDetail{Host: "web2", Error: "no previous release", Attempts: 1},
			map[string]any{"host": "web2", "link": "", "from": "", "to": "", "source": "",
				"switched": false, "duration_seconds": 0.0, "error": "no previous release", "after_output": "",
				"attempts": 1, "earlier": "", "after_ran": ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Record{Kind: tc.kind}
			if err := r.SetDetail(tc.typed); err != nil {
				t.Fatal(err)
			}
			if got, want := wire(t, r.Detail), wire(t, tc.old); !reflect.DeepEqual(got, want) {
				t.Errorf("detail on the wire changed:\n got %v\nwant %v", got, want)
			}
			// Read back after the stream (Memory goes through JSON).
			var m Memory
			if err := m.Record(context.Background(), Record{Kind: tc.kind, Detail: tc.old}); err != nil {
				t.Fatal(err)
			}
			stored := m.All()[0]
			var got any
			var ok bool
			switch tc.kind {
			case RollbackRequested:
				got, ok = stored.RollbackRequested()
				if _, other := stored.RollbackHost(); other {
					t.Error("a rollback.requested record read as a rollback.host")
				}
			case RollbackHost:
				got, ok = stored.RollbackHost()
			}
			if !ok || !reflect.DeepEqual(wire(t, got), wire(t, tc.typed)) {
				t.Errorf("read back %+v (%v), want %+v", got, ok, tc.typed)
			}
		})
	}
}

func TestNotExecuted(t *testing.T) {
	yes, no, publish := true, false, "publish"
	for _, tc := range []struct {
		d    RollbackRequestedDetail
		want string
	}{
		{RollbackRequestedDetail{Executed: true}, ""},
		{RollbackRequestedDetail{DryRun: &yes, Mode: &publish}, "--dry-run"},
		{RollbackRequestedDetail{DryRun: &no, Mode: &publish}, "policy shop has mode: publish"},
	} {
		if got := tc.d.NotExecuted("shop"); got != tc.want {
			t.Errorf("NotExecuted(%+v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

// A measurement reads back the same whether its detail holds the Go values
// the watcher put there or what came back from the stream.
func TestMeasurementReadBack(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	two := 2
	d := MeasurementDetail{Check: "errs", Query: "q", EvalTime: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC),
		Value: f(3), Values: []*float64{f(3), nil}, Threshold: "max_ratio 2", Thresholds: Thresholds{MaxRatio: f(2)},
		Outcome: "pass", Reason: "ok", Limits: Limits{FailureLimit: 1, InconclusiveLimit: &two},
		Counts: Counts{Pass: 1}, State: "passing", FailureLimit: 1,
		Baseline: Some(nil), Ratio: Some(f(1.5)), BaselineTime: time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC),
		Series:       []SeriesDetail{{Labels: `{a="1"}`, Value: f(3), Outcome: "pass", Reason: "ok", Baseline: Some(f(2)), Ratio: Some(f(1.5))}},
		Verification: &VerificationRef{RequestID: "rb-1", RolledBackAt: time.Date(2026, 11, 25, 9, 59, 0, 0, time.UTC)},
	}
	inMemory := Record{Kind: Measurement, Detail: d.Map()}
	var m Memory
	if err := m.Record(context.Background(), inMemory); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]Record{"in memory": inMemory, "from the stream": m.All()[0]} {
		got, ok := r.Measurement()
		if !ok || !reflect.DeepEqual(got, d) {
			t.Errorf("%s: read back\n %+v (%v)\nwant\n %+v", name, got, ok, d)
		}
	}
	if !reflect.DeepEqual(wire(t, d), wire(t, d.Map())) {
		t.Errorf("MeasurementDetail JSON differs from its Map:\n%v\n%v", wire(t, d), wire(t, d.Map()))
	}
	// A check without a baseline has no baseline fields at all.
	plain := wire(t, MeasurementDetail{Check: "c"})
	for _, k := range []string{"baseline", "ratio", "baseline_time", "series", "dry_run", "aggregate", "verification"} {
		if _, ok := plain[k]; ok {
			t.Errorf("detail.%s present for a check without it: %v", k, plain)
		}
	}
}

// A verification's verdict reads back the same from memory and from the
// stream, as a rollback.verified or rollback.unhelpful record only.
func TestVerificationReadBack(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	at := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	d := VerifyDetail{RequestID: "rb-1", Outcome: VerifyNotRecovered, From: "v2", To: "v1", RolledBackAt: at,
		WithinSeconds: 300, SkippedMeasurements: 2,
		Checks: []VerifyCheck{
			{Check: "errors", Query: "q", Counts: Counts{Fail: 10}, EvalTime: at.Add(5 * time.Minute), Value: f(0.3),
				Threshold: "max 0.05", Outcome: "fail", Reason: "0.3 > max 0.05"},
			{Check: "latency", Query: "l", Counts: Counts{Inconclusive: 10}, Outcome: "inconclusive", Reason: "no data"},
		}}
	for _, kind := range []string{RollbackVerified, RollbackUnhelpful} {
		inMemory := Record{Kind: kind, Detail: d.Map()}
		var m Memory
		if err := m.Record(context.Background(), inMemory); err != nil {
			t.Fatal(err)
		}
		for name, r := range map[string]Record{"in memory": inMemory, "from the stream": m.All()[0]} {
			got, ok := r.Verification()
			if !ok || !reflect.DeepEqual(got, d) {
				t.Errorf("%s %s: read back\n %+v (%v)\nwant\n %+v", kind, name, got, ok, d)
			}
		}
	}
	if !reflect.DeepEqual(wire(t, d), wire(t, d.Map())) {
		t.Errorf("VerifyDetail JSON differs from its Map:\n%v\n%v", wire(t, d), wire(t, d.Map()))
	}
	if _, ok := (Record{Kind: RunFailed, Detail: d.Map()}).Verification(); ok {
		t.Error("a run.failed record read as a verification")
	}
}
