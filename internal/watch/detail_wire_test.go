package watch

import (
	"encoding/json"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// The measurement detail is built from audit.MeasurementDetail; its JSON
// must be what the map the watcher wrote before held (oldMeasurementDetail,
// kept here as it was), plus the new thresholds, and the Go values a test
// reads from the records it keeps must be the same types.
func TestMeasurementDetailWire(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	ip := func(v int) *int { return &v }
	ts := time.Date(2026, 11, 25, 10, 0, 30, 0, time.UTC)
	baseAt := ts.Add(-time.Hour)
	vec := model.Vector{{Value: 12}, {Value: model.SampleValue(math.NaN())}}
	for _, tc := range []struct {
		name       string
		check      *policy.Check
		j          policy.Judgement
		thresholds string
	}{
		{"plain", &policy.Check{Name: "orders", Min: f(50), FailureLimit: 1},
			policy.Judgement{Outcome: policy.Fail, Value: 12, Baseline: math.NaN(), Ratio: math.NaN(), Threshold: "min 50", Reason: "12 < min 50"},
			`{"min":50}`},
		{"no data, limits, dry run, aggregate", &policy.Check{Name: "lat", Max: f(0.5), Min: f(0), DryRun: true, Aggregate: "max",
			InconclusiveLimit: ip(2), ConsecutiveErrorLimit: ip(4)},
			policy.Judgement{Outcome: policy.Inconclusive, Value: math.NaN(), Baseline: math.NaN(), Ratio: math.NaN(), Threshold: "min 0, max 0.5", Reason: "no data"},
			`{"min":0,"max":0.5}`},
		{"baseline and each", &policy.Check{Name: "errs", Each: true, MinRatio: f(0.8), MaxRatio: f(2),
			Baseline: &policy.Baseline{Kind: policy.BaselinePreDeploy}},
			policy.Judgement{Outcome: policy.Pass, Value: 3, Baseline: math.NaN(), Ratio: math.Inf(1), Threshold: "min_ratio 0.8, max_ratio 2", Reason: "ok",
				Series: []policy.SeriesJudgement{{Labels: `{a="1"}`, Value: 3, Baseline: 2, Ratio: 1.5, Outcome: policy.Pass, Reason: "ok"},
					{Labels: `{a="2"}`, Value: math.NaN(), Baseline: math.NaN(), Ratio: math.NaN(), Outcome: policy.Inconclusive, Reason: "no baseline"}}},
			`{"min_ratio":0.8,"max_ratio":2}`},
		{"each with no series", &policy.Check{Name: "errs", Each: true, Max: f(1)},
			policy.Judgement{Outcome: policy.Inconclusive, Value: math.NaN(), Baseline: math.NaN(), Ratio: math.NaN(), Threshold: "max 1", Reason: "no data"},
			`{"max":1}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := &checkState{check: tc.check, query: "sum(rate(x[1m]))"}
			tally := policy.Tally{Pass: 1, Fail: 2, Inconclusive: 3, Error: 4, ConsecutiveErrors: 1}
			want := oldMeasurementDetail(cs, tc.j, tally, vec, ts)
			if tc.check.Baseline != nil {
				want["baseline_time"] = baseAt.UTC()
			}
			var th any
			if err := json.Unmarshal([]byte(tc.thresholds), &th); err != nil {
				t.Fatal(err)
			}
			got := measurementDetail(cs, tc.j, tally, vec, ts, baseAt).Map()
			for k, v := range want {
				if reflect.TypeOf(got[k]) != reflect.TypeOf(v) {
					t.Errorf("detail.%s is a %T in memory, want %T as before", k, got[k], v)
				}
			}
			wantJSON, gotJSON := viaJSON(t, want), viaJSON(t, got)
			if !reflect.DeepEqual(gotJSON["thresholds"], th) {
				t.Errorf("detail.thresholds = %v, want %v", gotJSON["thresholds"], th)
			}
			delete(gotJSON, "thresholds")
			if !reflect.DeepEqual(gotJSON, wantJSON) {
				t.Errorf("detail on the wire changed:\n got %v\nwant %v", gotJSON, wantJSON)
			}
			// The struct's own JSON is the map's.
			typed := measurementDetail(cs, tc.j, tally, vec, ts, baseAt)
			if s := viaJSON(t, typed); !reflect.DeepEqual(s, viaJSON(t, got)) {
				t.Errorf("MeasurementDetail JSON differs from its Map:\n struct %v\n    map %v", s, viaJSON(t, got))
			}
		})
	}
}

func viaJSON(t *testing.T, v any) map[string]any {
	t.Helper()
	m, err := audit.Wire(v)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// oldMeasurementDetail is measurementDetail as it was before the detail was
// typed (audit.MeasurementDetail), kept to prove the wire did not change.
func oldMeasurementDetail(cs *checkState, j policy.Judgement, t policy.Tally, vec model.Vector, ts time.Time) map[string]any {
	c := cs.check
	values := make([]float64, len(vec))
	for i, s := range vec {
		values[i] = float64(s.Value)
	}
	d := map[string]any{
		"check":     c.Name,
		"query":     cs.query,
		"eval_time": ts.UTC(),
		"value":     jsonFloat(j.Value),
		"values":    jsonFloats(values),
		"threshold": j.Threshold,
		"outcome":   string(j.Outcome),
		"reason":    j.Reason,
		"limits":    c.Limits(),
		"counts": map[string]int{"pass": t.Pass, "fail": t.Fail, "inconclusive": t.Inconclusive,
			"error": t.Error, "consecutive_errors": t.ConsecutiveErrors},
		"state":         string(c.State(t)),
		"failure_limit": c.FailureLimit,
	}
	if c.DryRun {
		d["dry_run"] = true
	}
	if c.Aggregate != "" {
		d["aggregate"] = c.Aggregate
	}
	if c.Baseline != nil {
		d["baseline"] = jsonFloat(j.Baseline)
		d["ratio"] = jsonFloat(j.Ratio)
	}
	if c.Each {
		series := make([]map[string]any, len(j.Series))
		for i, sj := range j.Series {
			series[i] = map[string]any{"labels": sj.Labels, "value": jsonFloat(sj.Value), "outcome": string(sj.Outcome), "reason": sj.Reason}
			if c.Baseline != nil {
				series[i]["baseline"] = jsonFloat(sj.Baseline)
				series[i]["ratio"] = jsonFloat(sj.Ratio)
			}
		}
		d["series"] = series
	}
	return d
}
