package web

import (
	"math"
	"strconv"
	"strings"

	"github.com/rollback-watcher/watcher/internal/audit"
)

// A comparison measurement shown to people (README "Comparisons"): the
// same lines on the status page and under `watcher history --run`, and on
// the page a chart of the two samples.

// comparisonView is the latest comparison of a check on the page.
type comparisonView struct {
	Time, Outcome, OutcomeClass string
	Lines                       []string
	Chart                       *compareChartView

	d *audit.ComparisonDetail
}

// SideNames are what a comparison's two sides are called: the canary and
// its baseline, else after and before the deploy.
func SideNames(d *audit.ComparisonDetail) (after, before string) {
	if d.With == "canary" {
		return "canary", "baseline"
	}
	return "after", "before"
}

// ComparisonLines explains a comparison measurement in a few lines of
// text: both sides, the estimate with its interval and the margin, the
// test at its look, and the baseline's own trend when it was tested.
func ComparisonLines(d *audit.ComparisonDetail) []string {
	if d == nil {
		return nil
	}
	an, bn := SideNames(d)
	var lines []string
	if d.Kind == "counts" {
		lines = append(lines, "compared with "+d.With+": "+an+" "+countSide(d.After)+"; "+bn+" "+countSide(d.Before))
		if est := ratioEstimate(d); est != "" {
			lines = append(lines, est)
		} else {
			lines = append(lines, "margin "+percent(d.Margin)+" (a rate ratio up to x"+ratioText(new(1+d.Margin))+" passes)")
		}
	} else {
		lines = append(lines, "compared with "+d.With+": "+an+" "+sampleSide(d.After)+"; "+bn+" "+sampleSide(d.Before))
		lines = append(lines, shiftEstimate(d))
	}
	lines = append(lines, testLine(d))
	if t := d.Trend; t != nil {
		lines = append(lines, trendLine(d, t))
	}
	return lines
}

func sampleSide(s audit.SideDetail) string {
	out := strconv.Itoa(s.N) + " samples"
	if s.Median != nil {
		out += ", median " + formatNum(*s.Median)
	}
	return out
}

func countSide(s audit.SideDetail) string {
	var out string
	if s.Errors != nil && s.Total != nil {
		out = strconv.FormatInt(*s.Errors, 10) + " errors of " + strconv.FormatInt(*s.Total, 10) + " requests"
	}
	out += " (" + rateText(s.Rate) + ") over " + strconv.Itoa(s.N) + " steps"
	if s.Dispersion > 1 {
		out += ", dispersion " + formatNum(s.Dispersion)
	}
	return strings.TrimPrefix(out, " ")
}

// shiftEstimate is "shift +105% [+97.5%, +109%] (+1.06 [+0.985, +1.1]),
// 98.3% interval; margin 20% (0.202), direction increase": relative to the
// before median when it is not 0, in the metric's unit always.
func shiftEstimate(d *audit.ComparisonDetail) string {
	margin := "margin " + percent(d.Margin)
	if d.MarginValue.Value != nil {
		margin += " (" + formatNum(*d.MarginValue.Value) + ")"
	}
	margin += ", direction " + d.Direction
	if d.Shift.Value == nil {
		return margin
	}
	abs := signedNum(d.Shift.Value) + " [" + signedNum(d.ShiftLow.Value) + ", " + signedNum(d.ShiftHigh.Value) + "]"
	est := "shift " + abs
	if mb := d.Before.Median; mb != nil && *mb != 0 {
		rel := func(v *float64) string {
			if v == nil {
				return "?"
			}
			return signedG(100*(*v)/math.Abs(*mb)) + "%"
		}
		est = "shift " + rel(d.Shift.Value) + " [" + rel(d.ShiftLow.Value) + ", " + rel(d.ShiftHigh.Value) + "] (" + abs + ")"
	}
	return est + level(d.Level) + "; " + margin
}

// ratioEstimate is "rate ratio x∞ [x8.1, x∞], 98% interval; margin 50%
// (up to x1.5 passes)", "" when the look was not judged.
func ratioEstimate(d *audit.ComparisonDetail) string {
	if !d.Ratio.Present {
		return ""
	}
	return "rate ratio x" + ratioText(d.Ratio.Value) + " [x" + ratioText(d.RatioLow.Value) + ", x" + ratioText(d.RatioHigh.Value) + "]" +
		level(d.Level) + "; margin " + percent(d.Margin) + " (a ratio up to x" + ratioText(new(1+d.Margin)) + " passes)"
}

// testLine is the test at its look: "mann-whitney+median: p 0.00029 <=
// alpha 0.0087 at look 1 of 9 (confidence 0.98 over the window): worse by
// more than the margin".
func testLine(d *audit.ComparisonDetail) string {
	test := d.Test
	if test == "" {
		test = "test"
	}
	look := ""
	if d.Looks > 0 {
		look = " at look " + strconv.Itoa(d.Look) + " of " + strconv.Itoa(d.Looks)
	}
	conf := ""
	if d.Confidence > 0 {
		conf = " (confidence " + formatNum(d.Confidence) + " over the window)"
	}
	if d.P == nil {
		out := test + look + ", alpha " + formatP(d.Alpha) + conf
		if d.NotJudged != "" {
			out += ": " + d.NotJudged
		}
		return out
	}
	op, verdict := ">", "not worse by more than the margin"
	if *d.P <= d.Alpha {
		op = "<="
	}
	if d.Worse {
		verdict = "worse by more than the margin"
	}
	out := test + ": p " + formatP(*d.P) + " " + op + " alpha " + formatP(d.Alpha) + look + conf + ": " + verdict
	if d.NotJudged != "" {
		out += "; " + d.NotJudged
	}
	return out
}

// trendLine is the pre-deploy baseline's own trend: the end of the before
// span against its start.
func trendLine(d *audit.ComparisonDetail, t *audit.TrendDetail) string {
	show := func(v *float64) string {
		if v == nil {
			return "-"
		}
		if d.Kind == "counts" {
			return rateText(v)
		}
		return formatNum(*v)
	}
	what := "baseline median"
	if d.Kind == "counts" {
		what = "baseline error rate"
	}
	out := what + " before the deploy: " + show(t.Early) + " at its start, " + show(t.Late) + " at its end, p " + formatP(t.P)
	if t.Worse {
		return out + ": already moving the bad way, not blamed on the deploy"
	}
	return out + ": not moving the bad way"
}

func level(l float64) string {
	if l <= 0 {
		return ""
	}
	return ", " + strconv.FormatFloat(100*l, 'g', 3, 64) + "% interval"
}

// ratioText is a rate ratio to 3 significant digits; a null one is
// unbounded (every error on the after side).
func ratioText(v *float64) string {
	if v == nil || math.IsInf(*v, 1) {
		return "∞"
	}
	return strings.TrimSuffix(strconv.FormatFloat(*v, 'g', 3, 64), ".")
}

// rateText is an error rate as a percentage, "n/a" without requests.
func rateText(v *float64) string {
	if v == nil {
		return "n/a"
	}
	return strconv.FormatFloat(*v*100, 'g', 3, 64) + "%"
}

func percent(m float64) string { return formatNum(m*100) + "%" }

// formatP is a p-value or level to 2 significant digits.
func formatP(p float64) string {
	if p == 0 || math.IsNaN(p) || math.IsInf(p, 0) {
		return formatNum(p)
	}
	return strconv.FormatFloat(p, 'g', 2, 64)
}

func signedNum(v *float64) string {
	switch {
	case v == nil:
		return "?"
	case *v > 0:
		return "+" + formatNum(*v)
	}
	return formatNum(*v)
}

// signedG is a percentage to 3 significant digits, with its sign.
func signedG(v float64) string {
	s := strconv.FormatFloat(v, 'g', 3, 64)
	if strings.Contains(s, "e") {
		s = strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	}
	if v > 0 {
		return "+" + s
	}
	return s
}
