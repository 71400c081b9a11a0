package web

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/watch"
)

// The status page's checks: their measurements and thresholds.

// Checks and their charts.

type measurement struct {
	at      time.Time
	value   *float64
	ratio   *float64
	outcome string
	reason  string
	msg     string
}

// checksOf lists r's checks with their measurements from recs (loaded says
// they were read), or with the latest measurement the watcher holds when
// they were not.
func checksOf(r watch.RunStatus, recs []audit.Record, loaded bool, now time.Time, isActive bool) []checkView {
	type check struct {
		name, threshold, query string
		thresholds             *audit.Thresholds
		dryRun                 bool
		ms                     []measurement
		counts                 *audit.Counts
		cmp                    *comparisonView
	}
	var order []*check
	byName := map[string]*check{}
	get := func(name string) *check {
		c := byName[name]
		if c == nil {
			c = &check{name: name}
			byName[name] = c
			order = append(order, c)
		}
		return c
	}
	for _, rec := range recs {
		if rec.Kind != audit.Measurement || rec.RunID != r.ID {
			continue
		}
		// A detail that does not decode whole still shows what did.
		d, _ := rec.Measurement()
		c := get(d.Check)
		c.threshold, c.query = d.Threshold, d.Query
		c.thresholds = nil
		if d.Thresholds != (audit.Thresholds{}) {
			c.thresholds = &d.Thresholds
		}
		if d.DryRun {
			c.dryRun = true
		}
		c.counts = &d.Counts
		at := d.EvalTime
		if at.IsZero() {
			at = rec.Time
		}
		c.ms = append(c.ms, measurement{at: at, value: d.Value, ratio: d.Ratio.Value, outcome: d.Outcome, reason: d.Reason, msg: rec.Message})
		if d.Comparison != nil {
			c.cmp = &comparisonView{d: d.Comparison, Time: clock(at, now), Outcome: d.Outcome, OutcomeClass: outcomeClass(d.Outcome)}
		}
	}
	// The watcher's latest measurement of each check, for checks the
	// records do not show (not read, or not yet in the stream).
	for _, ms := range r.Measurements {
		if ms == nil || byName[ms.Check] != nil {
			continue
		}
		c := get(ms.Check)
		c.threshold, c.dryRun = ms.Threshold, ms.DryRun
		c.ms = append(c.ms, measurement{at: ms.Time, value: ms.Value, outcome: ms.Outcome, reason: ms.Reason})
	}

	start := r.Started
	end := r.WindowEnd
	if !isActive {
		if r.Ended != nil {
			end = *r.Ended
		} else {
			end = time.Time{}
		}
	}
	var out []checkView
	for _, c := range order {
		cv := checkView{Name: c.name, Threshold: c.threshold, Query: c.query, DryRun: c.dryRun}
		if c.cmp != nil {
			// Only the latest comparison is drawn: its lines and chart.
			c.cmp.Lines, c.cmp.Chart = ComparisonLines(c.cmp.d), buildCompareChart(c.cmp.d)
			cv.Comparison = c.cmp
		}
		if n := len(c.ms); n > 0 {
			last := c.ms[n-1]
			cv.LastClass = outcomeClass(last.outcome)
			if last.value != nil {
				cv.Last = formatNum(*last.value) + " " + last.outcome
			} else {
				cv.Last = "no value, " + last.outcome
			}
			cv.LastReason = last.reason
			if last.ratio != nil && (last.reason == "" || last.reason == "ok") {
				// A failure's reason states the ratio; a pass has none,
				// and the chart beside it plots the ratio, not the value.
				cv.LastReason = formatNum(*last.ratio) + " x baseline"
			}
		}
		if n := c.counts; n != nil {
			cv.Counts = fmt.Sprintf("pass %d · fail %d · inconclusive %d · error %d", n.Pass, n.Fail, n.Inconclusive, n.Error)
		}
		abs, ratio := thresholdsOf(c.thresholds, c.threshold)
		ms := c.ms
		note := ""
		if len(ms) > pageChartPoints {
			note = "last " + strconv.Itoa(pageChartPoints) + " of " + strconv.Itoa(len(ms)) + " measurements"
			ms = ms[len(ms)-pageChartPoints:]
		}
		nowMark := time.Time{}
		if isActive {
			nowMark = now
		}
		if len(ratio) > 0 {
			cv.Charts = append(cv.Charts, buildChart("ratio to baseline", ms, func(m measurement) *float64 { return m.ratio }, ratio, start, end, nowMark, note))
		}
		if len(abs) > 0 || len(ratio) == 0 {
			cv.Charts = append(cv.Charts, buildChart("value", ms, func(m measurement) *float64 { return m.value }, abs, start, end, nowMark, note))
		}
		out = append(out, cv)
	}
	return out
}

type threshold struct {
	name  string // min, max, min_ratio, max_ratio
	value float64
}

// thresholdsOf is a check's absolute and ratio thresholds: the numbers of
// its measurements, or, for the records of a watcher that did not write
// them, read from the threshold text.
func thresholdsOf(n *audit.Thresholds, text string) (abs, ratio []threshold) {
	if n == nil {
		return parseThreshold(text)
	}
	for _, t := range []struct {
		name string
		v    *float64
		into *[]threshold
	}{{"min", n.Min, &abs}, {"max", n.Max, &abs}, {"min_ratio", n.MinRatio, &ratio}, {"max_ratio", n.MaxRatio, &ratio}} {
		if t.v != nil {
			*t.into = append(*t.into, threshold{t.name, *t.v})
		}
	}
	return abs, ratio
}

// parseThreshold reads a threshold text such as "min 50, max 200" or
// "min_ratio 0.8" into absolute and ratio thresholds.
func parseThreshold(s string) (abs, ratio []threshold) {
	for _, part := range strings.Split(s, ",") {
		f := strings.Fields(part)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "min", "max":
			abs = append(abs, threshold{f[0], v})
		case "min_ratio", "max_ratio":
			ratio = append(ratio, threshold{f[0], v})
		}
	}
	return abs, ratio
}
