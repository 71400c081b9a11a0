package policy

import (
	"errors"
	"math"
	"testing"
)

func TestJudge(t *testing.T) {
	minCheck := &Check{Name: "orders", Min: float(50)}
	maxCheck := &Check{Name: "errors", Max: float(0.05)}
	both := &Check{Name: "latency", Min: float(50), Max: float(200)}
	ratio := &Check{Name: "vs-before", Baseline: &Baseline{Kind: BaselinePreDeploy}, MinRatio: float(0.8), MaxRatio: float(1.5)}
	mixed := &Check{Name: "mixed", Min: float(10), Baseline: &Baseline{Kind: BaselinePreDeploy}, MinRatio: float(0.8)}
	failOnNoData := &Check{Name: "x", Min: float(1), NoData: NoDataFail}
	passOnNoData := &Check{Name: "x", Min: float(1), NoData: NoDataPass}
	inf := math.Inf(1)

	for _, tc := range []struct {
		name     string
		check    *Check
		values   []float64
		baseline *float64
		err      error
		want     Judgement
	}{
		{"pass", minCheck, []float64{73}, nil, nil,
			Judgement{Pass, 73, nan, nan, "min 50", "ok"}},
		{"at the limit passes", minCheck, []float64{50}, nil, nil,
			Judgement{Pass, 50, nan, nan, "min 50", "ok"}},
		{"below min", minCheck, []float64{12}, nil, nil,
			Judgement{Fail, 12, nan, nan, "min 50", "12 < min 50"}},
		{"above max", maxCheck, []float64{0.09}, nil, nil,
			Judgement{Fail, 0.09, nan, nan, "max 0.05", "0.09 > max 0.05"}},
		{"min and max", both, []float64{250.5}, nil, nil,
			Judgement{Fail, 250.5, nan, nan, "min 50, max 200", "250.5 > max 200"}},
		{"query error", minCheck, nil, nil, errors.New("connection refused"),
			Judgement{Error, nan, nan, nan, "min 50", "query failed: connection refused"}},
		{"query error wins over values", minCheck, []float64{73}, nil, errors.New("timeout"),
			Judgement{Error, nan, nan, nan, "min 50", "query failed: timeout"}},
		{"no data", minCheck, nil, nil, nil,
			Judgement{Inconclusive, nan, nan, nan, "min 50", "no data"}},
		{"no data fails", failOnNoData, []float64{}, nil, nil,
			Judgement{Fail, nan, nan, nan, "min 1", "no data"}},
		{"no data passes", passOnNoData, nil, nil, nil,
			Judgement{Pass, nan, nan, nan, "min 1", "no data"}},
		{"many series", minCheck, []float64{1, 2, 3}, nil, nil,
			Judgement{Error, nan, nan, nan, "min 50", "query returned 3 series; use an aggregation such as sum() so it returns one"}},
		{"NaN", minCheck, []float64{nan}, nil, nil,
			Judgement{Inconclusive, nan, nan, nan, "min 50", "value is NaN"}},
		{"+Inf", maxCheck, []float64{inf}, nil, nil,
			Judgement{Inconclusive, inf, nan, nan, "max 0.05", "value is +Inf"}},
		{"ratio pass", ratio, []float64{150}, float(171), nil,
			Judgement{Pass, 150, 171, 150.0 / 171, "min_ratio 0.8, max_ratio 1.5", "ok"}},
		{"ratio below", ratio, []float64{106}, float(171), nil,
			Judgement{Fail, 106, 171, 106.0 / 171, "min_ratio 0.8, max_ratio 1.5", "0.62 x baseline 171 < min_ratio 0.8"}},
		{"ratio above", ratio, []float64{300}, float(100), nil,
			Judgement{Fail, 300, 100, 3, "min_ratio 0.8, max_ratio 1.5", "3 x baseline 100 > max_ratio 1.5"}},
		{"ratio rounding to the limit", ratio, []float64{79.96}, float(100), nil,
			Judgement{Fail, 79.96, 100, 0.7996, "min_ratio 0.8, max_ratio 1.5", "0.7996 x baseline 100 < min_ratio 0.8"}},
		{"no baseline", ratio, []float64{100}, nil, nil,
			Judgement{Inconclusive, 100, nan, nan, "min_ratio 0.8, max_ratio 1.5", "no baseline"}},
		{"baseline 0", ratio, []float64{100}, float(0), nil,
			Judgement{Inconclusive, 100, 0, nan, "min_ratio 0.8, max_ratio 1.5", "no baseline"}},
		{"baseline NaN", ratio, []float64{100}, float(nan), nil,
			Judgement{Inconclusive, 100, nan, nan, "min_ratio 0.8, max_ratio 1.5", "no baseline"}},
		{"baseline Inf", ratio, []float64{100}, &inf, nil,
			Judgement{Inconclusive, 100, inf, nan, "min_ratio 0.8, max_ratio 1.5", "no baseline"}},
		{"absolute failure needs no baseline", mixed, []float64{5}, nil, nil,
			Judgement{Fail, 5, nan, nan, "min 10, min_ratio 0.8", "5 < min 10"}},
		{"absolute pass, ratio fail", mixed, []float64{20}, float(100), nil,
			Judgement{Fail, 20, 100, 0.2, "min 10, min_ratio 0.8", "0.2 x baseline 100 < min_ratio 0.8"}},
		{"baseline ignored without one configured", minCheck, []float64{73}, float(10), nil,
			Judgement{Pass, 73, nan, nan, "min 50", "ok"}},
	} {
		got := tc.check.Judge(tc.values, tc.baseline, tc.err)
		if !sameJudgement(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
		}
	}
}

// sameJudgement compares judgements with NaN equal to NaN.
func sameJudgement(a, b Judgement) bool {
	same := func(x, y float64) bool { return x == y || math.IsNaN(x) && math.IsNaN(y) }
	return a.Outcome == b.Outcome && same(a.Value, b.Value) && same(a.Baseline, b.Baseline) &&
		same(a.Ratio, b.Ratio) && a.Threshold == b.Threshold && a.Reason == b.Reason
}

func TestFailed(t *testing.T) {
	c := &Check{FailureLimit: 1}
	for fails, want := range []bool{false, false, true, true} {
		if got := c.Failed(Tally{Fail: fails, Inconclusive: 5, Error: 5}); got != want {
			t.Errorf("Failed with %d failures and limit 1 = %v", fails, got)
		}
	}
	if !(&Check{}).Failed(Tally{Fail: 1}) {
		t.Error("one failure with limit 0 did not fail")
	}
}

func TestDescribe(t *testing.T) {
	orders := &Check{Name: "orders-per-minute", Min: float(50), FailureLimit: 1}
	ratio := &Check{Name: "orders-vs-before", Baseline: &Baseline{Kind: BaselinePreDeploy}, MinRatio: float(0.8)}
	passOnNoData := &Check{Name: "orders-per-minute", Min: float(50), NoData: NoDataPass}
	failOnNoData := &Check{Name: "orders-per-minute", Min: float(50), NoData: NoDataFail, FailureLimit: 1}
	inf := math.Inf(-1)

	for _, tc := range []struct {
		check    *Check
		values   []float64
		baseline *float64
		err      error
		tally    Tally
		want     string
	}{
		{orders, []float64{12}, nil, nil, Tally{Fail: 2},
			"orders-per-minute = 12 < min 50 (failure 2 of limit 1)"},
		{orders, []float64{73}, nil, nil, Tally{Pass: 1},
			"orders-per-minute = 73 ok (min 50)"},
		{orders, []float64{73.123456789}, nil, nil, Tally{Pass: 1},
			"orders-per-minute = 73.1235 ok (min 50)"},
		{orders, nil, nil, nil, Tally{Inconclusive: 1},
			"orders-per-minute: no data (inconclusive 1)"},
		{orders, nil, nil, errors.New(`bad_data: parse error`), Tally{Error: 1},
			"orders-per-minute: query failed: bad_data: parse error (error 1)"},
		{orders, []float64{1, 2}, nil, nil, Tally{Error: 3},
			"orders-per-minute: query returned 2 series; use an aggregation such as sum() so it returns one (error 3)"},
		{orders, []float64{nan}, nil, nil, Tally{Inconclusive: 2},
			"orders-per-minute: value is NaN (inconclusive 2)"},
		{orders, []float64{inf}, nil, nil, Tally{Inconclusive: 1},
			"orders-per-minute: value is -Inf (inconclusive 1)"},
		{passOnNoData, nil, nil, nil, Tally{Pass: 1},
			"orders-per-minute: no data, counted as a pass (no_data: pass)"},
		{failOnNoData, nil, nil, nil, Tally{Fail: 1},
			"orders-per-minute: no data (failure 1 of limit 1)"},
		{ratio, []float64{106}, float(171), nil, Tally{Fail: 1},
			"orders-vs-before = 106: 0.62 x baseline 171 < min_ratio 0.8 (failure 1 of limit 0)"},
		{ratio, []float64{160}, float(171), nil, Tally{Pass: 4},
			"orders-vs-before = 160 ok (0.936 x baseline 171; min_ratio 0.8)"},
		{ratio, []float64{160}, nil, nil, Tally{Inconclusive: 1},
			"orders-vs-before = 160: no baseline (inconclusive 1)"},
		{ratio, []float64{1234567.5}, float(1e6), nil, Tally{Pass: 1},
			"orders-vs-before = 1.23457e+06 ok (1.23 x baseline 1000000; min_ratio 0.8)"},
	} {
		j := tc.check.Judge(tc.values, tc.baseline, tc.err)
		if got := tc.check.Describe(j, tc.tally); got != tc.want {
			t.Errorf("Describe(%+v)\n got %s\nwant %s", j, got, tc.want)
		}
	}
}

func TestFormatNumber(t *testing.T) {
	for v, want := range map[float64]string{
		12:           "12",
		-3:           "-3",
		0:            "0",
		0.05:         "0.05",
		1.0 / 3:      "0.333333",
		171.25:       "171.25",
		1e6:          "1000000",
		1e20:         "1e+20",
		0.000012345:  "1.2345e-05",
		math.Inf(1):  "+Inf",
		math.Inf(-1): "-Inf",
	} {
		if got := formatNumber(v); got != want {
			t.Errorf("formatNumber(%v) = %q, want %q", v, got, want)
		}
	}
	if got := formatNumber(nan); got != "NaN" {
		t.Errorf("formatNumber(NaN) = %q", got)
	}
}
