package web

import (
	"html"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/watch"
)

func ip(v int64) *int64 { return &v }

// sampleComparison is a failed look of a latency comparison: 7 samples
// after the deploy around 2.08 against 100 before around 1.01.
func sampleComparison() *audit.ComparisonDetail {
	d := &audit.ComparisonDetail{
		With: "pre_deploy", Kind: "samples", Test: "mann-whitney+median", Direction: "increase",
		Margin: 0.2, Confidence: 0.98, Look: 1, Looks: 9, Alpha: 0.0087, P: fp(0.00029), Worse: true,
		After:  audit.SideDetail{N: 7, Median: fp(2.08)},
		Before: audit.SideDetail{N: 100, Median: fp(1.01)},
		Shift:  audit.Some(fp(1.06)), ShiftLow: audit.Some(fp(0.985)), ShiftHigh: audit.Some(fp(1.1)),
		MarginValue: audit.Some(fp(0.202)), Level: 0.9913,
	}
	for i := range 7 {
		d.After.Samples = append(d.After.Samples, fp(2+float64(i%3)*0.04))
	}
	for i := range audit.ChartSamples {
		d.Before.Samples = append(d.Before.Samples, fp(0.98+float64(i%4)*0.02))
	}
	d.Before.Samples[10] = nil // a step without a value
	return d
}

// countComparison is a failed look of an error count comparison: errors
// after the deploy where there were none before.
func countComparison() *audit.ComparisonDetail {
	return &audit.ComparisonDetail{
		With: "canary", Kind: "counts", Test: "conditional binomial", Direction: "increase",
		Margin: 0.5, Confidence: 0.99, Look: 4, Looks: 12, Alpha: 0.0021, P: fp(0.0004), Worse: true,
		After:  audit.SideDetail{N: 20, Errors: ip(12), Total: ip(4000), Rate: fp(0.003), Dispersion: 1.8},
		Before: audit.SideDetail{N: 20, Errors: ip(0), Total: ip(20000), Rate: fp(0), Dispersion: 1},
		Ratio:  audit.Some(nil), RatioLow: audit.Some(fp(8.1)), RatioHigh: audit.Some(nil), Level: 0.9958,
	}
}

// comparisonRecord is a measurement record of a comparison as the watcher
// writes it, through its typed detail and JSON.
func comparisonRecord(t *testing.T, run watch.RunStatus, check string, at time.Time, value *float64, outcome string, cmp *audit.ComparisonDetail) audit.Record {
	t.Helper()
	r := audit.Record{Time: at, Kind: audit.Measurement, RunID: run.ID, Service: run.Service, Environment: run.Environment,
		Version: run.Version, Policy: run.Policy, Message: check + " compared"}
	d := audit.MeasurementDetail{Check: check, Query: "q", EvalTime: at, Value: value, Threshold: "compare " + cmp.With,
		Outcome: outcome, Reason: "r", Counts: audit.Counts{Pass: 1}, Comparison: cmp}
	if err := r.SetDetail(d); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestComparisonLines(t *testing.T) {
	notJudged := sampleComparison()
	notJudged.P, notJudged.Worse, notJudged.Shift, notJudged.ShiftLow, notJudged.ShiftHigh = nil, false, audit.OptionalFloat{}, audit.OptionalFloat{}, audit.OptionalFloat{}
	notJudged.NotJudged = "not judged yet: 4 samples since the deploy, min_samples 5"
	zeroBefore := sampleComparison()
	zeroBefore.Before.Median, zeroBefore.Shift = fp(0), audit.Some(fp(3))
	trend := sampleComparison()
	trend.Trend = &audit.TrendDetail{Early: fp(0.9), Late: fp(1.3), P: 0.0012, Worse: true}
	countTrend := countComparison()
	countTrend.With = "pre_deploy"
	countTrend.Trend = &audit.TrendDetail{Early: fp(0.001), Late: fp(0.004), P: 0.03}
	for _, tc := range []struct {
		name string
		d    *audit.ComparisonDetail
		want []string
	}{
		{"samples", sampleComparison(), []string{
			"compared with pre_deploy: after 7 samples, median 2.08; before 100 samples, median 1.01",
			"shift +105% [+97.5%, +109%] (+1.06 [+0.985, +1.1]), 99.1% interval; margin 20% (0.202), direction increase",
			"mann-whitney+median: p 0.00029 <= alpha 0.0087 at look 1 of 9 (confidence 0.98 over the window): worse by more than the margin",
		}},
		{"not judged", notJudged, []string{
			"compared with pre_deploy: after 7 samples, median 2.08; before 100 samples, median 1.01",
			"margin 20% (0.202), direction increase",
			"mann-whitney+median at look 1 of 9, alpha 0.0087 (confidence 0.98 over the window): not judged yet: 4 samples since the deploy, min_samples 5",
		}},
		{"before median 0: absolute shift only", zeroBefore, []string{
			"compared with pre_deploy: after 7 samples, median 2.08; before 100 samples, median 0",
			"shift +3 [+0.985, +1.1], 99.1% interval; margin 20% (0.202), direction increase",
			"mann-whitney+median: p 0.00029 <= alpha 0.0087 at look 1 of 9 (confidence 0.98 over the window): worse by more than the margin",
		}},
		{"trend", trend, []string{"", "", "",
			"baseline median before the deploy: 0.9 at its start, 1.3 at its end, p 0.0012: already moving the bad way, not blamed on the deploy",
		}},
		{"counts, canary, unbounded ratio", countComparison(), []string{
			"compared with canary: canary 12 errors of 4000 requests (0.3%) over 20 steps, dispersion 1.8; baseline 0 errors of 20000 requests (0%) over 20 steps",
			"rate ratio x∞ [x8.1, x∞], 99.6% interval; margin 50% (a ratio up to x1.5 passes)",
			"conditional binomial: p 0.0004 <= alpha 0.0021 at look 4 of 12 (confidence 0.99 over the window): worse by more than the margin",
		}},
		{"count trend", countTrend, []string{"", "", "",
			"baseline error rate before the deploy: 0.1% at its start, 0.4% at its end, p 0.03: not moving the bad way",
		}},
	} {
		got := ComparisonLines(tc.d)
		if len(got) != len(tc.want) {
			t.Errorf("%s: %d lines, want %d:\n%s", tc.name, len(got), len(tc.want), strings.Join(got, "\n"))
			continue
		}
		for i, w := range tc.want {
			if w != "" && got[i] != w {
				t.Errorf("%s: line %d\n got %s\nwant %s", tc.name, i+1, got[i], w)
			}
		}
	}
}

func TestPageShowsComparisons(t *testing.T) {
	ended := t0.Add(time.Minute)
	run := watch.RunStatus{ID: "01RUNCMP", Service: "shop", Environment: "production", Version: "v2", Policy: "p",
		Started: t0, WindowEnd: t0.Add(10 * time.Minute), Ended: &ended, Verdict: watch.VerdictFailed, Reason: "latency worse"}
	src := &fakeSource{recent: []watch.RunStatus{run}}
	src.recs = append(src.recs, runRecord(run, audit.RunStarted, t0, "validating", nil))
	// An earlier look, not judged yet: the page shows the latest.
	early := sampleComparison()
	early.P, early.Look, early.NotJudged = nil, 1, "not judged yet: 3 samples since the deploy, min_samples 5"
	src.recs = append(src.recs,
		comparisonRecord(t, run, "latency-vs-before", t0.Add(15*time.Second), fp(2), "inconclusive", early),
		comparisonRecord(t, run, "latency-vs-before", t0.Add(30*time.Second), fp(2.08), "fail", sampleComparison()),
		comparisonRecord(t, run, "payment-errors", t0.Add(30*time.Second), fp(0.003), "fail", countComparison()))
	_, body := get(t, src, t0.Add(2*time.Minute))
	text := html.UnescapeString(body)
	for _, want := range []string{
		"comparison at 22:22:03: <span class=\"o fail\">fail</span>",
		"compared with pre_deploy: after 7 samples, median 2.08; before 100 samples, median 1.01",
		"shift +105% [+97.5%, +109%] (+1.06 [+0.985, +1.1]), 99.1% interval; margin 20% (0.202), direction increase",
		"mann-whitney+median: p 0.00029 <= alpha 0.0087 at look 1 of 9",
		"canary 12 errors of 4000 requests (0.3%) over 20 steps, dispersion 1.8; baseline 0 errors of 20000 requests (0%)",
		"rate ratio x∞ [x8.1, x∞], 99.6% interval",
		"p 0.0004 <= alpha 0.0021 at look 4 of 12",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "3 samples since the deploy") {
		t.Errorf("page shows an older look than the latest")
	}
	var cmp []string
	for _, s := range svgs(t, body) {
		if strings.Contains(s, `class="chart cmpchart"`) {
			cmp = append(cmp, s)
		}
	}
	if len(cmp) != 1 {
		t.Fatalf("%d comparison charts, want 1 (the sample comparison; counts are text)", len(cmp))
	}
	chart := cmp[0]
	if n := strings.Count(chart, `<circle class="cs before"`); n != audit.ChartSamples-1 {
		t.Errorf("%d before points, want %d (one sample is null)", n, audit.ChartSamples-1)
	}
	if n := strings.Count(chart, `<circle class="cs after"`); n != 7 {
		t.Errorf("%d after points, want 7", n)
	}
	if n := strings.Count(chart, `<polyline class="cline before"`); n != 2 {
		t.Errorf("%d before line segments, want 2 around the null", n)
	}
	for _, want := range []string{`class="median before"`, `class="median after"`, ">median 1.01<", ">median 2.08<",
		`<rect class="band"`, "within the margin (20% of the before median): 1.01 to 1.212", ">before (100)<", ">after (7)<"} {
		if !strings.Contains(chart, want) {
			t.Errorf("comparison chart lacks %q:\n%s", want, chart)
		}
	}
}

// The band sits where the after median is within the margin: above the
// before median for increase, below for decrease, around it for either.
func TestMarginBand(t *testing.T) {
	for _, tc := range []struct {
		dir    string
		lo, hi float64
	}{{"increase", 1, 1.25}, {"decrease", 0.75, 1}, {"either", 0.75, 1.25}} {
		d := &audit.ComparisonDetail{Direction: tc.dir, Before: audit.SideDetail{Median: fp(1)}, MarginValue: audit.Some(fp(0.25))}
		lo, hi, ok := marginBand(d)
		if !ok || lo != tc.lo || hi != tc.hi {
			t.Errorf("%s: band %v..%v (%v), want %v..%v", tc.dir, lo, hi, ok, tc.lo, tc.hi)
		}
	}
	if _, _, ok := marginBand(&audit.ComparisonDetail{Direction: "increase", Before: audit.SideDetail{Median: fp(1)}}); ok {
		t.Errorf("a band without a margin value")
	}
}

// TestVerdictText: every verdict a run can end with has its words and
// colour; marginal is a warning, not an unknown.
func TestVerdictText(t *testing.T) {
	for v, want := range map[string][2]string{
		watch.VerdictPassed: {"passed", "ok"}, watch.VerdictFailed: {"failed", "bad"},
		watch.VerdictInconclusive: {"inconclusive", "warn"}, watch.VerdictMarginal: {"marginal", "warn"},
		watch.VerdictSuperseded: {"superseded", "muted"}, watch.VerdictPending: {"validating", "info"},
	} {
		if text, class := verdictText(v); text != want[0] || class != want[1] {
			t.Errorf("verdictText(%q) = %q, %q, want %q, %q", v, text, class, want[0], want[1])
		}
	}
}
