package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
)

func fptr(v float64) *float64 { return &v }

func iptr(v int64) *int64 { return &v }

// measurement is a measurement record as the watcher writes it, through
// its typed detail and JSON.
func measurement(t *testing.T, at time.Time, d audit.MeasurementDetail) audit.Record {
	t.Helper()
	r := audit.Record{Time: at, Kind: audit.Measurement, RunID: "01RUN", Service: "shop", Environment: "production",
		Version: "v2", Policy: "orders", Message: d.Check + " measured"}
	if err := r.SetDetail(d); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRunTableShowsComparisons(t *testing.T) {
	at := time.Date(2026, 11, 25, 22, 21, 33, 0, time.UTC)
	samples := &audit.ComparisonDetail{
		With: "pre_deploy", Kind: "samples", Test: "mann-whitney+median", Direction: "increase",
		Margin: 0.2, Confidence: 0.98, Look: 1, Looks: 9, Alpha: 0.0087, P: fptr(0.00029), Worse: true,
		After:  audit.SideDetail{N: 7, Median: fptr(2.08), Samples: []*float64{fptr(2), fptr(2.08), fptr(2.16), nil, fptr(2.08)}},
		Before: audit.SideDetail{N: 100, Median: fptr(1), Samples: []*float64{fptr(1), fptr(1.08), fptr(0.92), fptr(1)}},
		Shift:  audit.Some(fptr(1.06)), ShiftLow: audit.Some(fptr(0.985)), ShiftHigh: audit.Some(fptr(1.1)),
		MarginValue: audit.Some(fptr(0.2)), Level: 0.9913,
	}
	counts := &audit.ComparisonDetail{
		With: "pre_deploy", Kind: "counts", Test: "conditional binomial", Direction: "increase",
		Margin: 0.5, Confidence: 0.99, Look: 4, Looks: 12, Alpha: 0.0021, P: fptr(0.0004), Worse: true,
		After:  audit.SideDetail{N: 20, Errors: iptr(12), Total: iptr(4000), Rate: fptr(0.003), Dispersion: 1.8},
		Before: audit.SideDetail{N: 120, Errors: iptr(0), Total: iptr(20000), Rate: fptr(0)},
		Ratio:  audit.Some(nil), RatioLow: audit.Some(fptr(8.1)), RatioHigh: audit.Some(nil), Level: 0.9958,
	}
	recs := []audit.Record{
		{Time: at, Kind: audit.RunStarted, RunID: "01RUN", Service: "shop", Environment: "production", Version: "v2", Policy: "orders", Message: "validating"},
		measurement(t, at.Add(time.Second), audit.MeasurementDetail{Check: "orders-per-minute", Value: fptr(120), Threshold: "min 50", Outcome: "pass"}),
		measurement(t, at.Add(2*time.Second), audit.MeasurementDetail{Check: "latency-vs-before", Value: fptr(2.08), Baseline: audit.Some(fptr(1)),
			Threshold: "compare pre_deploy", Outcome: "fail", Counts: audit.Counts{Fail: 1}, Comparison: samples}),
		measurement(t, at.Add(3*time.Second), audit.MeasurementDetail{Check: "payment-errors", Value: fptr(0.003), Baseline: audit.Some(fptr(0)),
			Threshold: "compare pre_deploy", Outcome: "fail", Counts: audit.Counts{Fail: 1}, Comparison: counts}),
		measurement(t, at.Add(4*time.Second), audit.MeasurementDetail{Check: "orders-per-minute", Value: fptr(110), Threshold: "min 50", Outcome: "pass"}),
	}
	var out bytes.Buffer
	if err := runTable(&out, "01RUN", recs); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	lines := strings.Split(got, "\n")
	// Each comparison's notes follow its own row, indented.
	after := func(row string, want ...string) {
		t.Helper()
		for i, l := range lines {
			if !strings.Contains(l, row) {
				continue
			}
			for j, w := range want {
				if i+1+j >= len(lines) || lines[i+1+j] != w {
					t.Errorf("line %d after the %s row:\n got %q\nwant %q\n%s", j+1, row, lines[min(i+1+j, len(lines)-1)], w, got)
				}
			}
			return
		}
		t.Errorf("no %s row:\n%s", row, got)
	}
	after("latency-vs-before",
		"    compared with pre_deploy: after 7 samples, median 2.08; before 100 samples, median 1",
		"    shift +106% [+98.5%, +110%] (+1.06 [+0.985, +1.1]), 99.1% interval; margin 20% (0.2), direction increase",
		"    mann-whitney+median: p 0.00029 <= alpha 0.0087 at look 1 of 9 (confidence 0.98 over the window): worse by more than the margin",
		"    before ▁▂▁▁  (4 of 100 samples, 0.92 to 2.16)",
		"    after  ▇██ █  (5 of 7 samples, 0.92 to 2.16)",
	)
	after("payment-errors",
		"    compared with pre_deploy: after 12 errors of 4000 requests (0.3%) over 20 steps, dispersion 1.8; before 0 errors of 20000 requests (0%) over 120 steps",
		"    rate ratio x∞ [x8.1, x∞], 99.6% interval; margin 50% (a ratio up to x1.5 passes)",
		"    conditional binomial: p 0.0004 <= alpha 0.0021 at look 4 of 12 (confidence 0.99 over the window): worse by more than the margin",
	)
	// A measurement without a comparison has no notes, and the rows stay
	// one aligned table around the notes.
	var rows []string
	for _, l := range lines {
		if strings.Contains(l, "  compare pre_deploy  ") || strings.Contains(l, "  min 50  ") || strings.HasPrefix(l, "TIME") {
			rows = append(rows, l)
		}
	}
	if len(rows) != 5 {
		t.Fatalf("%d table rows, want a header and 4:\n%s", len(rows), got)
	}
	col := strings.Index(rows[0], "THRESHOLD")
	for _, r := range rows[1:] {
		if c := strings.Index(r, "compare pre_deploy"); c < 0 {
			c = strings.Index(r, "min 50")
			if c != col {
				t.Errorf("THRESHOLD column at %d in row %q, want %d", c, r, col)
			}
		} else if c != col {
			t.Errorf("THRESHOLD column at %d in row %q, want %d", c, r, col)
		}
	}
	if i := strings.Index(got, "orders-per-minute  110"); i < 0 || strings.HasPrefix(got[i:], "orders-per-minute  110\n    ") {
		t.Errorf("last plain row missing or followed by notes:\n%s", got)
	}
}

func TestSparkline(t *testing.T) {
	for _, tc := range []struct {
		vs     []*float64
		lo, hi float64
		want   string
	}{
		{[]*float64{fptr(0), fptr(1), fptr(2), fptr(3), fptr(4), fptr(5), fptr(6), fptr(7)}, 0, 7, "▁▂▃▄▅▆▇█"},
		{[]*float64{fptr(3), nil, fptr(3)}, 3, 3, "▅ ▅"},
		{nil, 0, 1, ""},
	} {
		if got := sparkline(tc.vs, tc.lo, tc.hi); got != tc.want {
			t.Errorf("sparkline(%v) = %q, want %q", tc.vs, got, tc.want)
		}
	}
}

// A measurement taken after the rollback, to verify it, says so in its row.
func TestRunTableShowsVerification(t *testing.T) {
	at := time.Date(2026, 11, 25, 22, 21, 33, 0, time.UTC)
	recs := []audit.Record{
		measurement(t, at, audit.MeasurementDetail{Check: "errors", Value: fptr(50), Threshold: "max 10", Outcome: "fail", Counts: audit.Counts{Fail: 1}}),
		measurement(t, at.Add(2*time.Second), audit.MeasurementDetail{Check: "errors", Value: fptr(5), Threshold: "max 10", Outcome: "pass",
			Counts: audit.Counts{Pass: 1}, Verification: &audit.VerificationRef{RequestID: "rb-01RUN", RolledBackAt: at.Add(time.Second)}}),
		{Time: at.Add(3 * time.Second), Kind: audit.RollbackVerified, RunID: "01RUN", Service: "shop", Environment: "production",
			Message: "the rollback helped: 1s after it, every check that failed the run passes: check errors passes: 5 (max 10)"},
	}
	var out bytes.Buffer
	if err := runTable(&out, "01RUN", recs); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	var rows []string
	for _, l := range strings.Split(got, "\n") {
		if strings.Contains(l, "  errors") {
			rows = append(rows, l)
		}
	}
	if len(rows) != 2 || strings.Contains(rows[0], "after rollback") || !strings.Contains(rows[1], "errors (after rollback)  5 ") {
		t.Errorf("rows %q: want the second one marked as after the rollback\n%s", rows, got)
	}
	wantLine := "rollback.verified  the rollback helped"
	if !strings.Contains(got, wantLine) {
		t.Errorf("no %q line:\n%s", wantLine, got)
	}
}
