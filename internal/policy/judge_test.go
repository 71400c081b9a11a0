package policy

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
)

// one is a query result of one series without labels.
func one(v float64) []Series { return []Series{{Labels: "{}", Value: v}} }

// values is a query result of series without labels.
func values(vs ...float64) []Series {
	var s []Series
	for _, v := range vs {
		s = append(s, Series{Labels: "{}", Value: v})
	}
	return s
}

// instances is a query result of one series per instance:
// instances("a", 1, "b", 2).
func instances(pairs ...any) []Series {
	var s []Series
	for i := 0; i+1 < len(pairs); i += 2 {
		s = append(s, Series{Labels: `{instance="` + pairs[i].(string) + `"}`, Value: float64From(pairs[i+1])})
	}
	return s
}

func float64From(v any) float64 {
	if i, ok := v.(int); ok {
		return float64(i)
	}
	return v.(float64)
}

func intp(v int) *int { return &v }

func TestJudge(t *testing.T) {
	minCheck := &Check{Name: "orders", Min: float(50)}
	maxCheck := &Check{Name: "errors", Max: float(0.05)}
	both := &Check{Name: "latency", Min: float(50), Max: float(200)}
	ratio := &Check{Name: "vs-before", Baseline: &Baseline{Kind: BaselinePreDeploy}, MinRatio: float(0.8), MaxRatio: float(1.5)}
	mixed := &Check{Name: "mixed", Min: float(10), Baseline: &Baseline{Kind: BaselinePreDeploy}, MinRatio: float(0.8)}
	failOnNoData := &Check{Name: "x", Min: float(1), NoData: NoDataFail}
	passOnNoData := &Check{Name: "x", Min: float(1), NoData: NoDataPass}
	aggMax := &Check{Name: "latency", Aggregate: AggregateMax, Max: float(0.5)}
	aggMin := &Check{Name: "orders", Aggregate: AggregateMin, Min: float(50)}
	aggAvg := &Check{Name: "orders", Aggregate: AggregateAvg, Min: float(50)}
	aggSum := &Check{Name: "orders", Aggregate: AggregateSum, Min: float(50)}
	aggRatio := &Check{Name: "vs-before", Aggregate: AggregateSum, Baseline: &Baseline{Kind: BaselinePreDeploy}, MinRatio: float(0.8)}
	inf := math.Inf(1)

	for _, tc := range []struct {
		name     string
		check    *Check
		values   []Series
		baseline []Series
		err      error
		want     Judgement
	}{
		{"pass", minCheck, one(73), nil, nil,
			Judgement{Pass, 73, nan, nan, "min 50", "ok", nil}},
		{"at the limit passes", minCheck, one(50), nil, nil,
			Judgement{Pass, 50, nan, nan, "min 50", "ok", nil}},
		{"below min", minCheck, one(12), nil, nil,
			Judgement{Fail, 12, nan, nan, "min 50", "12 < min 50", nil}},
		{"above max", maxCheck, one(0.09), nil, nil,
			Judgement{Fail, 0.09, nan, nan, "max 0.05", "0.09 > max 0.05", nil}},
		{"min and max", both, one(250.5), nil, nil,
			Judgement{Fail, 250.5, nan, nan, "min 50, max 200", "250.5 > max 200", nil}},
		{"labels do not matter for one series", minCheck, instances("a", 73), nil, nil,
			Judgement{Pass, 73, nan, nan, "min 50", "ok", nil}},
		{"query error", minCheck, nil, nil, errors.New("connection refused"),
			Judgement{Error, nan, nan, nan, "min 50", "query failed: connection refused", nil}},
		{"query error wins over values", minCheck, one(73), nil, errors.New("timeout"),
			Judgement{Error, nan, nan, nan, "min 50", "query failed: timeout", nil}},
		{"no data", minCheck, nil, nil, nil,
			Judgement{Inconclusive, nan, nan, nan, "min 50", "no data", nil}},
		{"no data fails", failOnNoData, []Series{}, nil, nil,
			Judgement{Fail, nan, nan, nan, "min 1", "no data", nil}},
		{"no data passes", passOnNoData, nil, nil, nil,
			Judgement{Pass, nan, nan, nan, "min 1", "no data", nil}},
		{"many series", minCheck, values(1, 2, 3), nil, nil,
			Judgement{Error, nan, nan, nan, "min 50", "query returned 3 series; set aggregate (min, max, avg, sum) or each: true", nil}},
		{"NaN", minCheck, one(nan), nil, nil,
			Judgement{Inconclusive, nan, nan, nan, "min 50", "value is NaN", nil}},
		{"+Inf", maxCheck, one(inf), nil, nil,
			Judgement{Inconclusive, inf, nan, nan, "max 0.05", "value is +Inf", nil}},
		{"ratio pass", ratio, one(150), one(171), nil,
			Judgement{Pass, 150, 171, 150.0 / 171, "min_ratio 0.8, max_ratio 1.5", "ok", nil}},
		{"ratio below", ratio, one(106), one(171), nil,
			Judgement{Fail, 106, 171, 106.0 / 171, "min_ratio 0.8, max_ratio 1.5", "0.62 x baseline 171 < min_ratio 0.8", nil}},
		{"ratio above", ratio, one(300), one(100), nil,
			Judgement{Fail, 300, 100, 3, "min_ratio 0.8, max_ratio 1.5", "3 x baseline 100 > max_ratio 1.5", nil}},
		{"ratio rounding to the limit", ratio, one(79.96), one(100), nil,
			Judgement{Fail, 79.96, 100, 0.7996, "min_ratio 0.8, max_ratio 1.5", "0.7996 x baseline 100 < min_ratio 0.8", nil}},
		{"no baseline", ratio, one(100), nil, nil,
			Judgement{Inconclusive, 100, nan, nan, "min_ratio 0.8, max_ratio 1.5", "no baseline", nil}},
		{"empty baseline", ratio, one(100), []Series{}, nil,
			Judgement{Inconclusive, 100, nan, nan, "min_ratio 0.8, max_ratio 1.5", "no baseline", nil}},
		{"baseline 0", ratio, one(100), one(0), nil,
			Judgement{Inconclusive, 100, 0, nan, "min_ratio 0.8, max_ratio 1.5", "no baseline", nil}},
		{"baseline NaN", ratio, one(100), one(nan), nil,
			Judgement{Inconclusive, 100, nan, nan, "min_ratio 0.8, max_ratio 1.5", "no baseline", nil}},
		{"baseline Inf", ratio, one(100), one(inf), nil,
			Judgement{Inconclusive, 100, inf, nan, "min_ratio 0.8, max_ratio 1.5", "no baseline", nil}},
		{"baseline of many series", ratio, one(100), instances("a", 60, "b", 40), nil,
			Judgement{Inconclusive, 100, nan, nan, "min_ratio 0.8, max_ratio 1.5", "baseline returned 2 series", nil}},
		{"absolute failure needs no baseline", mixed, one(5), nil, nil,
			Judgement{Fail, 5, nan, nan, "min 10, min_ratio 0.8", "5 < min 10", nil}},
		{"absolute failure needs no single baseline", mixed, one(5), values(1, 2), nil,
			Judgement{Fail, 5, nan, nan, "min 10, min_ratio 0.8", "5 < min 10", nil}},
		{"absolute pass, ratio fail", mixed, one(20), one(100), nil,
			Judgement{Fail, 20, 100, 0.2, "min 10, min_ratio 0.8", "0.2 x baseline 100 < min_ratio 0.8", nil}},
		{"baseline ignored without one configured", minCheck, one(73), one(10), nil,
			Judgement{Pass, 73, nan, nan, "min 50", "ok", nil}},

		{"aggregate max", aggMax, instances("a", 0.2, "b", 0.7, "c", 0.4), nil, nil,
			Judgement{Fail, 0.7, nan, nan, "max 0.5", "0.7 > max 0.5", nil}},
		{"aggregate of one series", aggMax, one(0.4), nil, nil,
			Judgement{Pass, 0.4, nan, nan, "max 0.5", "ok", nil}},
		{"aggregate min", aggMin, values(73, 12, 99), nil, nil,
			Judgement{Fail, 12, nan, nan, "min 50", "12 < min 50", nil}},
		{"aggregate avg", aggAvg, values(40, 50, 60, 50), nil, nil,
			Judgement{Pass, 50, nan, nan, "min 50", "ok", nil}},
		{"aggregate sum", aggSum, values(20, 20, 9), nil, nil,
			Judgement{Fail, 49, nan, nan, "min 50", "49 < min 50", nil}},
		{"aggregate with NaN", aggMax, values(0.1, nan), nil, nil,
			Judgement{Inconclusive, nan, nan, nan, "max 0.5", "value is NaN", nil}},
		{"aggregate with Inf", aggMin, values(73, inf), nil, nil,
			Judgement{Inconclusive, nan, nan, nan, "min 50", "value is NaN", nil}},
		{"aggregate sum overflows", aggSum, values(math.MaxFloat64, math.MaxFloat64), nil, nil,
			Judgement{Inconclusive, inf, nan, nan, "min 50", "value is +Inf", nil}},
		{"aggregate avg does not overflow", aggAvg, values(1e308, 1e308), nil, nil,
			Judgement{Pass, 1e308, nan, nan, "min 50", "ok", nil}},
		{"aggregate baseline too", aggRatio, values(50, 56), instances("a", 100, "b", 71), nil,
			Judgement{Fail, 106, 171, 106.0 / 171, "min_ratio 0.8", "0.62 x baseline 171 < min_ratio 0.8", nil}},
		{"aggregate baseline with NaN", aggRatio, values(50, 56), values(100, nan), nil,
			Judgement{Inconclusive, 106, nan, nan, "min_ratio 0.8", "no baseline", nil}},
		{"aggregate without baseline", aggRatio, values(50, 56), nil, nil,
			Judgement{Inconclusive, 106, nan, nan, "min_ratio 0.8", "no baseline", nil}},
	} {
		got := tc.check.Judge(tc.values, tc.baseline, tc.err)
		if !sameJudgement(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
		}
	}
}

func TestJudgeEach(t *testing.T) {
	errs := &Check{Name: "errors", Each: true, Max: float(0.05)}
	band := &Check{Name: "latency", Each: true, Min: float(10), Max: float(100)}
	ratio := &Check{Name: "orders", Each: true, Baseline: &Baseline{Kind: BaselinePreDeploy}, MinRatio: float(0.8)}
	const a, b, c = `{instance="a"}`, `{instance="b"}`, `{instance="c"}`
	pass := func(labels string, v float64) SeriesJudgement {
		return SeriesJudgement{labels, v, nan, nan, Pass, "ok"}
	}

	for _, tc := range []struct {
		name     string
		check    *Check
		values   []Series
		baseline []Series
		want     Judgement
	}{
		{"one of three fails, sorted by labels", errs, instances("b", 0.09, "a", 0.01, "c", 0.02), nil,
			Judgement{Fail, 0.09, nan, nan, "max 0.05", `{instance="b"} 0.09 > max 0.05 (1 of 3 series failed)`, []SeriesJudgement{
				pass(a, 0.01),
				{b, 0.09, nan, nan, Fail, "0.09 > max 0.05"},
				pass(c, 0.02),
			}}},
		{"the worst failure is named", errs, instances("a", 0.01, "b", 0.09, "c", 0.2), nil,
			Judgement{Fail, 0.2, nan, nan, "max 0.05", `{instance="c"} 0.2 > max 0.05 (2 of 3 series failed)`, []SeriesJudgement{
				pass(a, 0.01),
				{b, 0.09, nan, nan, Fail, "0.09 > max 0.05"},
				{c, 0.2, nan, nan, Fail, "0.2 > max 0.05"},
			}}},
		{"ties go to the first by labels", errs, instances("c", 0.09, "b", 0.09), nil,
			Judgement{Fail, 0.09, nan, nan, "max 0.05", `{instance="b"} 0.09 > max 0.05 (2 of 2 series failed)`, []SeriesJudgement{
				{b, 0.09, nan, nan, Fail, "0.09 > max 0.05"},
				{c, 0.09, nan, nan, Fail, "0.09 > max 0.05"},
			}}},
		{"furthest past relative to the threshold", band, instances("a", 5, "b", 150), nil,
			// 5 is half of min 10 below it; 150 is half of max 100 above it: a tie.
			Judgement{Fail, 5, nan, nan, "min 10, max 100", `{instance="a"} 5 < min 10 (2 of 2 series failed)`, []SeriesJudgement{
				{a, 5, nan, nan, Fail, "5 < min 10"},
				{b, 150, nan, nan, Fail, "150 > max 100"},
			}}},
		{"failure and inconclusive", errs, instances("a", nan, "b", 0.09, "c", 0.01), nil,
			Judgement{Fail, 0.09, nan, nan, "max 0.05", `{instance="b"} 0.09 > max 0.05 (1 of 3 series failed, 1 inconclusive)`, []SeriesJudgement{
				{a, nan, nan, nan, Inconclusive, "value is NaN"},
				{b, 0.09, nan, nan, Fail, "0.09 > max 0.05"},
				pass(c, 0.01),
			}}},
		{"inconclusive", errs, instances("a", 0.01, "c", math.Inf(1), "b", nan), nil,
			Judgement{Inconclusive, nan, nan, nan, "max 0.05", `{instance="b"}: value is NaN (2 of 3 series inconclusive)`, []SeriesJudgement{
				pass(a, 0.01),
				{b, nan, nan, nan, Inconclusive, "value is NaN"},
				{c, math.Inf(1), nan, nan, Inconclusive, "value is +Inf"},
			}}},
		{"pass names the series closest to a threshold", band, instances("a", 12, "b", 95, "c", 50), nil,
			Judgement{Pass, 95, nan, nan, "min 10, max 100", `3 series ok, closest to a threshold: {instance="b"} 95`, []SeriesJudgement{
				pass(a, 12), pass(b, 95), pass(c, 50),
			}}},
		{"one series without labels", errs, one(0.01), nil,
			Judgement{Pass, 0.01, nan, nan, "max 0.05", `1 series ok, closest to a threshold: {} 0.01`, []SeriesJudgement{
				pass("{}", 0.01),
			}}},
		{"baseline by labels", ratio, instances("c", 50, "b", 106, "a", 160), instances("b", 171, "a", 171, "d", 1),
			Judgement{Fail, 106, 171, 106.0 / 171, "min_ratio 0.8", `{instance="b"} 106: 0.62 x baseline 171 < min_ratio 0.8 (1 of 3 series failed, 1 inconclusive)`, []SeriesJudgement{
				{a, 160, 171, 160.0 / 171, Pass, "ok"},
				{b, 106, 171, 106.0 / 171, Fail, "0.62 x baseline 171 < min_ratio 0.8"},
				{c, 50, nan, nan, Inconclusive, "no baseline"},
			}}},
		{"series without a baseline", ratio, instances("a", 160, "c", 50), instances("a", 171),
			Judgement{Inconclusive, 50, nan, nan, "min_ratio 0.8", `{instance="c"} 50: no baseline (1 of 2 series inconclusive)`, []SeriesJudgement{
				{a, 160, 171, 160.0 / 171, Pass, "ok"},
				{c, 50, nan, nan, Inconclusive, "no baseline"},
			}}},
		{"no baseline at all", ratio, instances("a", 160), nil,
			Judgement{Inconclusive, 160, nan, nan, "min_ratio 0.8", `{instance="a"} 160: no baseline (1 of 1 series inconclusive)`, []SeriesJudgement{
				{a, 160, nan, nan, Inconclusive, "no baseline"},
			}}},
		{"ratios pass", ratio, instances("a", 160, "b", 170), instances("a", 171, "b", 171),
			Judgement{Pass, 160, 171, 160.0 / 171, "min_ratio 0.8", `2 series ok, closest to a threshold: {instance="a"} 160 (0.936 x baseline 171)`, []SeriesJudgement{
				{a, 160, 171, 160.0 / 171, Pass, "ok"},
				{b, 170, 171, 170.0 / 171, Pass, "ok"},
			}}},
		{"no series", errs, nil, nil,
			Judgement{Inconclusive, nan, nan, nan, "max 0.05", "no data", nil}},
	} {
		in := slices.Clone(tc.values)
		got := tc.check.Judge(tc.values, tc.baseline, nil)
		if !sameJudgement(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
		}
		if !slices.EqualFunc(in, tc.values, func(x, y Series) bool { return x.Labels == y.Labels && same(x.Value, y.Value) }) {
			t.Errorf("%s: Judge reordered its input", tc.name)
		}
	}

	if j := errs.Judge(instances("a", 1), nil, errors.New("timeout")); j.Outcome != Error || j.Series != nil {
		t.Errorf("query error: %+v", j)
	}
}

func same(x, y float64) bool { return x == y || math.IsNaN(x) && math.IsNaN(y) }

// sameJudgement compares judgements with NaN equal to NaN.
func sameJudgement(a, b Judgement) bool {
	return a.Outcome == b.Outcome && same(a.Value, b.Value) && same(a.Baseline, b.Baseline) &&
		same(a.Ratio, b.Ratio) && a.Threshold == b.Threshold && a.Reason == b.Reason &&
		(a.Series == nil) == (b.Series == nil) &&
		slices.EqualFunc(a.Series, b.Series, func(x, y SeriesJudgement) bool {
			return x.Labels == y.Labels && same(x.Value, y.Value) && same(x.Baseline, y.Baseline) &&
				same(x.Ratio, y.Ratio) && x.Outcome == y.Outcome && x.Reason == y.Reason
		})
}

func TestTally(t *testing.T) {
	var tally Tally
	for _, o := range []Outcome{Error, Error, Pass, Error, Fail, Error, Error, Error, Inconclusive, Error} {
		tally.Add(o)
	}
	if want := (Tally{Pass: 1, Fail: 1, Inconclusive: 1, Error: 7, ConsecutiveErrors: 1}); tally != want {
		t.Errorf("tally = %+v, want %+v", tally, want)
	}
	tally.Add(Error)
	tally.Add(Error)
	if tally.ConsecutiveErrors != 3 || tally.Error != 9 {
		t.Errorf("tally = %+v, want 3 errors in a row of 9", tally)
	}
}

func TestState(t *testing.T) {
	plain := &Check{FailureLimit: 1}
	limited := &Check{FailureLimit: 1, InconclusiveLimit: intp(2), ConsecutiveErrorLimit: intp(0)}
	strict := &Check{InconclusiveLimit: intp(0), ConsecutiveErrorLimit: intp(3)}

	for _, tc := range []struct {
		name       string
		check      *Check
		tally      Tally
		state, end CheckState
	}{
		{"nothing yet", plain, Tally{}, CheckOK, CheckInconclusive},
		{"passes", plain, Tally{Pass: 3}, CheckOK, CheckOK},
		{"failures within the limit", plain, Tally{Fail: 1}, CheckOK, CheckOK},
		{"past the failure limit", plain, Tally{Fail: 2, Pass: 9}, CheckFailed, CheckFailed},
		{"no limit on inconclusive", plain, Tally{Pass: 1, Inconclusive: 100}, CheckOK, CheckOK},
		{"no limit on errors", plain, Tally{Pass: 1, Error: 100, ConsecutiveErrors: 100}, CheckOK, CheckOK},
		{"only inconclusive", plain, Tally{Inconclusive: 5, Error: 2}, CheckOK, CheckInconclusive},
		{"inconclusive at the limit", limited, Tally{Pass: 1, Inconclusive: 2}, CheckOK, CheckOK},
		{"inconclusive past the limit", limited, Tally{Pass: 1, Inconclusive: 3}, CheckInconclusive, CheckInconclusive},
		{"an error past limit 0", limited, Tally{Pass: 1, Error: 1, ConsecutiveErrors: 1}, CheckInconclusive, CheckInconclusive},
		{"errors not in a row", limited, Tally{Pass: 1, Error: 5}, CheckOK, CheckOK},
		{"failure outweighs", limited, Tally{Fail: 2, Inconclusive: 3, ConsecutiveErrors: 1}, CheckFailed, CheckFailed},
		{"inconclusive limit 0", strict, Tally{Pass: 1, Inconclusive: 1}, CheckInconclusive, CheckInconclusive},
		{"errors in a row at the limit", strict, Tally{Fail: 0, Pass: 1, Error: 3, ConsecutiveErrors: 3}, CheckOK, CheckOK},
		{"errors in a row past the limit", strict, Tally{Pass: 1, Error: 4, ConsecutiveErrors: 4}, CheckInconclusive, CheckInconclusive},
		{"one failure with limit 0", strict, Tally{Fail: 1}, CheckFailed, CheckFailed},
	} {
		if got := tc.check.State(tc.tally); got != tc.state {
			t.Errorf("%s: State(%+v) = %s, want %s", tc.name, tc.tally, got, tc.state)
		}
		if got := tc.check.EndState(tc.tally); got != tc.end {
			t.Errorf("%s: EndState(%+v) = %s, want %s", tc.name, tc.tally, got, tc.end)
		}
		if got := tc.check.Failed(tc.tally); got != (tc.state == CheckFailed) {
			t.Errorf("%s: Failed(%+v) = %v", tc.name, tc.tally, got)
		}
	}
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

func TestLimits(t *testing.T) {
	got := (&Check{FailureLimit: 1, InconclusiveLimit: intp(2), ConsecutiveErrorLimit: intp(4)}).Limits()
	if len(got) != 3 || got["failure_limit"] != 1 || got["inconclusive_limit"] != 2 || got["consecutive_error_limit"] != 4 {
		t.Errorf("Limits = %v", got)
	}
	got = (&Check{}).Limits()
	if len(got) != 3 || got["failure_limit"] != 0 || got["inconclusive_limit"] != nil || got["consecutive_error_limit"] != nil {
		t.Errorf("Limits without limits = %v", got)
	}
	if _, ok := got["inconclusive_limit"]; !ok {
		t.Error("Limits leaves out inconclusive_limit; want it null")
	}
}

func TestDescribe(t *testing.T) {
	orders := &Check{Name: "orders-per-minute", Min: float(50), FailureLimit: 1}
	ratio := &Check{Name: "orders-vs-before", Baseline: &Baseline{Kind: BaselinePreDeploy}, MinRatio: float(0.8)}
	ratioLimited := &Check{Name: "orders-vs-before", Baseline: &Baseline{Kind: BaselinePreDeploy}, MinRatio: float(0.8), FailureLimit: 1}
	passOnNoData := &Check{Name: "orders-per-minute", Min: float(50), NoData: NoDataPass}
	failOnNoData := &Check{Name: "orders-per-minute", Min: float(50), NoData: NoDataFail, FailureLimit: 1}
	limited := &Check{Name: "orders", Min: float(50), InconclusiveLimit: intp(2), ConsecutiveErrorLimit: intp(4)}
	each := &Check{Name: "error-ratio-each-instance", Each: true, Max: float(0.05)}
	eachRatio := &Check{Name: "orders", Each: true, Baseline: &Baseline{Kind: BaselinePreDeploy}, MinRatio: float(0.8), InconclusiveLimit: intp(2)}
	shadow := &Check{Name: "latency-shadow", Aggregate: AggregateMax, Max: float(0.5), DryRun: true}
	inf := math.Inf(-1)

	for _, tc := range []struct {
		check    *Check
		values   []Series
		baseline []Series
		err      error
		tally    Tally
		want     string
	}{
		{orders, one(12), nil, nil, Tally{Fail: 2},
			"orders-per-minute = 12 < min 50 (failure 2 of limit 1)"},
		{orders, one(73), nil, nil, Tally{Pass: 1},
			"orders-per-minute = 73 ok (min 50)"},
		{orders, one(73.123456789), nil, nil, Tally{Pass: 1},
			"orders-per-minute = 73.1235 ok (min 50)"},
		{orders, nil, nil, nil, Tally{Inconclusive: 1},
			"orders-per-minute: no data (inconclusive 1)"},
		{orders, nil, nil, errors.New(`bad_data: parse error`), Tally{Error: 1, ConsecutiveErrors: 1},
			"orders-per-minute: query failed: bad_data: parse error (error 1)"},
		{orders, values(1, 2), nil, nil, Tally{Error: 3},
			"orders-per-minute: query returned 2 series; set aggregate (min, max, avg, sum) or each: true (error 3)"},
		{orders, one(nan), nil, nil, Tally{Inconclusive: 2},
			"orders-per-minute: value is NaN (inconclusive 2)"},
		{orders, one(inf), nil, nil, Tally{Inconclusive: 1},
			"orders-per-minute: value is -Inf (inconclusive 1)"},
		{passOnNoData, nil, nil, nil, Tally{Pass: 1},
			"orders-per-minute: no data, counted as a pass (no_data: pass)"},
		{failOnNoData, nil, nil, nil, Tally{Fail: 1},
			"orders-per-minute: no data (failure 1 of limit 1)"},
		{ratio, one(106), one(171), nil, Tally{Fail: 1},
			"orders-vs-before = 106: 0.62 x baseline 171 < min_ratio 0.8 (failure 1 of limit 0)"},
		{ratioLimited, one(106), one(171), nil, Tally{Fail: 2},
			"orders-vs-before = 106: 0.62 x baseline 171 < min_ratio 0.8 (failure 2 of limit 1)"},
		{ratio, one(160), one(171), nil, Tally{Pass: 4},
			"orders-vs-before = 160 ok (0.936 x baseline 171; min_ratio 0.8)"},
		{ratio, one(160), nil, nil, Tally{Inconclusive: 1},
			"orders-vs-before = 160: no baseline (inconclusive 1)"},
		{ratio, one(160), values(1, 2), nil, Tally{Inconclusive: 1},
			"orders-vs-before = 160: baseline returned 2 series (inconclusive 1)"},
		{ratio, one(1234567.5), one(1e6), nil, Tally{Pass: 1},
			"orders-vs-before = 1.23457e+06 ok (1.23 x baseline 1000000; min_ratio 0.8)"},
		{limited, nil, nil, nil, Tally{Inconclusive: 3},
			"orders: no data (inconclusive 3 of limit 2)"},
		{limited, nil, nil, errors.New("timeout"), Tally{Pass: 1, Error: 7, ConsecutiveErrors: 5},
			"orders: query failed: timeout (error 5 in a row, limit 4)"},
		{limited, one(12), nil, nil, Tally{Fail: 1},
			"orders = 12 < min 50 (failure 1 of limit 0)"},
		{each, instances("a", 0.01, "b", 0.09, "c", 0.02), nil, nil, Tally{Fail: 1},
			`error-ratio-each-instance: {instance="b"} 0.09 > max 0.05 (1 of 3 series failed) (failure 1 of limit 0)`},
		{each, instances("a", 0.01, "b", 0.04), nil, nil, Tally{Pass: 1},
			`error-ratio-each-instance: 2 series ok, closest to a threshold: {instance="b"} 0.04 (max 0.05)`},
		{each, instances("a", 0.01, "b", nan), nil, nil, Tally{Inconclusive: 1},
			`error-ratio-each-instance: {instance="b"}: value is NaN (1 of 2 series inconclusive) (inconclusive 1)`},
		{each, nil, nil, nil, Tally{Inconclusive: 1},
			`error-ratio-each-instance: no data (inconclusive 1)`},
		{eachRatio, instances("a", 160, "b", 50), instances("a", 171), nil, Tally{Pass: 2, Inconclusive: 3},
			`orders: {instance="b"} 50: no baseline (1 of 2 series inconclusive) (inconclusive 3 of limit 2)`},
		{eachRatio, instances("a", 160), instances("a", 171), nil, Tally{Pass: 1},
			`orders: 1 series ok, closest to a threshold: {instance="a"} 160 (0.936 x baseline 171) (min_ratio 0.8)`},
		{shadow, values(0.2, 0.7), nil, nil, Tally{Fail: 1},
			"[dry-run] latency-shadow = 0.7 > max 0.5 (failure 1 of limit 0)"},
		{shadow, values(0.2, 0.3), nil, nil, Tally{Pass: 1},
			"[dry-run] latency-shadow = 0.3 ok (max 0.5)"},
		{shadow, nil, nil, nil, Tally{Inconclusive: 1},
			"[dry-run] latency-shadow: no data (inconclusive 1)"},
	} {
		j := tc.check.Judge(tc.values, tc.baseline, tc.err)
		if got := tc.check.Describe(j, tc.tally); got != tc.want {
			t.Errorf("Describe(%+v)\n got %s\nwant %s", j, got, tc.want)
		}
	}

	// One measurement on its own (after a rollback) says the same,
	// without counts that no limit applies to.
	for _, tc := range []struct {
		check  *Check
		values []Series
		err    error
		want   string
	}{
		{orders, one(12), nil, "orders-per-minute = 12 < min 50"},
		{orders, one(73), nil, "orders-per-minute = 73 ok (min 50)"},
		{orders, nil, nil, "orders-per-minute: no data"},
		{limited, nil, errors.New("timeout"), "orders: query failed: timeout"},
		{passOnNoData, nil, nil, "orders-per-minute: no data, counted as a pass (no_data: pass)"},
		{each, instances("a", 0.01, "b", 0.09), nil, `error-ratio-each-instance: {instance="b"} 0.09 > max 0.05 (1 of 2 series failed)`},
	} {
		j := tc.check.Judge(tc.values, nil, tc.err)
		if got := tc.check.DescribeOne(j); got != tc.want {
			t.Errorf("DescribeOne(%+v)\n got %s\nwant %s", j, got, tc.want)
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

// FuzzJudge builds a check and a measurement from the fuzzer's numbers:
// thresholds, limits, each or an aggregate (including one Load would
// reject), and values and a baseline over a few label sets, so that some
// series lack a baseline and some appear twice.
func FuzzJudge(f *testing.F) {
	inf, huge := math.Inf(1), math.MaxFloat64
	// flags: bit 0-3 min, max, min_ratio, max_ratio; bit 4 baseline;
	// bit 5 each; bits 6-8 aggregate; bit 9 dry_run; bits 10-11 no_data;
	// bit 12 query error. n: bits 0-2 how many values, 3-5 how many
	// baseline series.
	f.Add(uint16(0b1), uint8(0o11), 50.0, 0.0, 0.0, 0.0, 12.0, 0.0, 0.0, 0.0, 0, 0, 0)
	f.Add(uint16(0b1_0001_1100), uint8(0o33), 0.0, 0.0, 0.8, 1.5, 106.0, 50.0, nan, 171.0, 1, 2, 4)
	f.Add(uint16(0b10_0011_0010), uint8(0o23), 0.0, 0.05, 0.0, 0.0, 0.09, nan, inf, 0.0, 0, -1, 3)
	f.Add(uint16(0b11_0101_1011), uint8(0o44), -huge, huge, 1e-300, 1e300, huge, -huge, inf, -inf, 5, 2, -1)
	f.Add(uint16(0b1_1111_1111_1111), uint8(0o77), nan, inf, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -3, 0, 0)
	f.Add(uint16(0b1100_0001_0001), uint8(0o10), 1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 0, 0, 0)
	f.Fuzz(func(t *testing.T, flags uint16, n uint8, lo, hi, loRatio, hiRatio, v0, v1, v2, v3 float64, failures, inconclusive, errorsInARow int) {
		c := &Check{Name: "fuzz", FailureLimit: failures}
		for i, p := range []**float64{&c.Min, &c.Max, &c.MinRatio, &c.MaxRatio} {
			if flags&(1<<i) != 0 {
				*p = float([]float64{lo, hi, loRatio, hiRatio}[i])
			}
		}
		if flags&(1<<4) != 0 {
			c.Baseline = &Baseline{Kind: BaselinePreDeploy}
		}
		c.Each = flags&(1<<5) != 0
		c.Aggregate = []string{"", AggregateMin, AggregateMax, AggregateAvg, AggregateSum, "median", "", ""}[flags>>6&7]
		c.DryRun = flags&(1<<9) != 0
		c.NoData = []NoData{"", NoDataInconclusive, NoDataFail, NoDataPass}[flags>>10&3]
		if inconclusive >= 0 {
			c.InconclusiveLimit = &inconclusive
		}
		if errorsInARow >= 0 {
			c.ConsecutiveErrorLimit = &errorsInARow
		}
		var qerr error
		if flags&(1<<12) != 0 {
			qerr = errors.New("timeout")
		}

		labels := []string{"{}", `{instance="a"}`, `{instance="b"}`, `{instance="a"}`, `{instance="c"}`, `{instance="d"}`, `{instance="b"}`, `{job="x"}`}
		nums := []float64{v0, v1, v2, v3}
		var vals, base []Series
		for i := range int(n & 7) {
			vals = append(vals, Series{labels[i], nums[i%4]})
		}
		for i := range int(n >> 3 & 7) {
			base = append(base, Series{labels[(i+2)%8], nums[(i+1)%4] * 2})
		}
		in := slices.Clone(vals)

		j := c.Judge(vals, base, qerr)
		switch j.Outcome {
		case Pass, Fail, Inconclusive, Error:
		default:
			t.Fatalf("outcome %q", j.Outcome)
		}
		if j.Reason == "" {
			t.Errorf("no reason: %+v", j)
		}
		if !slices.EqualFunc(in, vals, func(x, y Series) bool { return x.Labels == y.Labels && same(x.Value, y.Value) }) {
			t.Error("Judge changed its input")
		}
		if c.Each && qerr == nil && len(vals) > 0 {
			if len(j.Series) != len(vals) {
				t.Fatalf("%d series judged of %d", len(j.Series), len(vals))
			}
			if !slices.IsSortedFunc(j.Series, func(x, y SeriesJudgement) int { return strings.Compare(x.Labels, y.Labels) }) {
				t.Errorf("series not sorted: %+v", j.Series)
			}
			worst := Pass
			for _, s := range j.Series {
				switch {
				case s.Outcome == Fail:
					worst = Fail
				case s.Outcome == Inconclusive && worst == Pass:
					worst = Inconclusive
				case s.Outcome == Pass, s.Outcome == Fail, s.Outcome == Inconclusive:
				default:
					t.Fatalf("series outcome %q", s.Outcome)
				}
			}
			if j.Outcome != worst {
				t.Errorf("outcome %s, worst series %s", j.Outcome, worst)
			}
		} else if j.Series != nil {
			t.Errorf("series judged for a check without each: %+v", j)
		}
		if j.Outcome == Pass && len(vals) > 0 && !finite(j.Value) {
			t.Errorf("a pass with value %v: %+v", j.Value, j)
		}

		var tally Tally
		for range 3 {
			tally.Add(j.Outcome)
		}
		s := c.Describe(j, tally)
		if !strings.Contains(s, "fuzz") {
			t.Errorf("Describe = %q", s)
		}
		switch c.State(tally) {
		case CheckOK, CheckFailed, CheckInconclusive:
		default:
			t.Errorf("State = %q", c.State(tally))
		}
		if c.EndState(tally) == CheckOK && tally.Pass+tally.Fail == 0 {
			t.Errorf("EndState ok without a valid measurement: %+v", tally)
		}
	})
}

// TestDescribeCompare: the text of a comparing check says what it compares
// with, over what, and when it fails, for `watcher check` and the audit.
func TestDescribeCompare(t *testing.T) {
	p := mustLoad(t, "testdata/good-compare.yml").Policies[0]
	want := []string{
		"max 2, compare with pre_deploy over 1h: increase > 20% at 98%",
		"compare with 3 weeks back: decrease > 10% at 95%",
		"compare error rate with offset 1d: increase > 50% at 99%",
		"compare error rate canary (label release) with the others: increase > 0% at 95%",
		"compare canary (label version) with the others: increase or decrease > 30% at 95%",
	}
	for i, c := range p.Checks {
		if got := c.Threshold(); got != want[i] {
			t.Errorf("%s: Threshold() = %q, want %q", c.Name, got, want[i])
		}
	}
	if got := (&Compare{With: CompareWith{Kind: WithWeeks, Weeks: 1}, Direction: DirectionIncrease, Margin: float(0.25), Confidence: 0.9}).String(); got != "compare with 1 week back: increase > 25% at 90%" {
		t.Errorf("one week: %q", got)
	}

	// A comparison's measurement has no single value: its reason carries
	// both sides and the shift, and a pass says what it was held to.
	c := p.Checks[1]
	j := Judgement{Outcome: Pass, Value: nan, Baseline: nan, Ratio: nan, Threshold: c.Threshold(), Reason: "-3% [-7%, +1%] ok"}
	if got, want := c.Describe(j, Tally{Pass: 1}), "orders-vs-weeks: -3% [-7%, +1%] ok (compare with 3 weeks back: decrease > 10% at 95%)"; got != want {
		t.Errorf("Describe pass = %q, want %q", got, want)
	}
	j.Outcome, j.Reason = Fail, "-24% [-31%, -17%] < -10%"
	if got, want := c.Describe(j, Tally{Fail: 1}), "orders-vs-weeks: -24% [-31%, -17%] < -10% (failure 1 of limit 0)"; got != want {
		t.Errorf("Describe fail = %q, want %q", got, want)
	}
}
