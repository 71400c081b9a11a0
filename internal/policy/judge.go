package policy

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/common/model"
)

// Judge decides one measurement of the check. values are the series the
// instant query returned; baseline the series the same query returned at
// the baseline's time, nil when the check has none or it is not known;
// queryErr is the query's error.
//
// No data, NaN and a failed query are outcomes of their own, never a pass:
// a broken exporter must not look like a healthy deploy.
//
// Without each or aggregate the query must return one series, and so must
// the baseline. With aggregate, values and baseline are each reduced to one
// value; a NaN or Inf among them makes the result NaN. With each, every
// series is judged on its own, against the baseline series with the same
// labels: the measurement fails if any series fails, else is inconclusive if
// any is, else passes. Its Value (and Baseline, Ratio) is the worst series':
// of the failing ones, the one furthest past its threshold relative to the
// threshold's size; of passing ones, the one closest to a threshold; of
// inconclusive ones, the first by labels. Ties go to the first by labels.
// Each wins over aggregate should a Check have both (Load rejects that).
func (c *Check) Judge(values []Series, baseline []Series, queryErr error) Judgement {
	j := Judgement{Value: nan, Baseline: nan, Ratio: nan, Threshold: c.Threshold()}
	switch {
	case queryErr != nil:
		j.Outcome, j.Reason = Error, "query failed: "+queryErr.Error()
		return j
	case len(values) == 0:
		j.Reason = "no data"
		switch c.NoData {
		case NoDataFail:
			j.Outcome = Fail
		case NoDataPass:
			j.Outcome = Pass
		default:
			j.Outcome = Inconclusive
		}
		return j
	case c.Each:
		return c.judgeEach(j, values, baseline)
	case c.Aggregate == "" && len(values) > 1:
		j.Outcome = Error
		j.Reason = fmt.Sprintf("query returned %d series; set aggregate (min, max, avg, sum) or each: true", len(values))
		return j
	}

	v := values[0].Value
	if c.Aggregate != "" {
		v = aggregate(c.Aggregate, values)
	}
	base, noBase := nan, ""
	if c.usesBaseline() {
		switch {
		case len(baseline) == 0:
			noBase = "no baseline"
		case c.Aggregate != "":
			base = aggregate(c.Aggregate, baseline)
		case len(baseline) > 1:
			noBase = fmt.Sprintf("baseline returned %d series", len(baseline))
		default:
			base = baseline[0].Value
		}
	}
	r := c.judgeValue(v, base, noBase)
	j.Outcome, j.Reason, j.Value, j.Baseline, j.Ratio = r.outcome, r.reason, v, r.baseline, r.ratio
	return j
}

// usesBaseline reports whether the check compares with a baseline.
func (c *Check) usesBaseline() bool {
	return c.Baseline != nil && (c.MinRatio != nil || c.MaxRatio != nil)
}

// verdict is the judgement of one value.
type verdict struct {
	outcome         Outcome
	reason          string
	baseline, ratio float64
	margin          float64 // how far inside the thresholds, relative to their size: < 0 past one; NaN when inconclusive
}

// judgeValue judges one value against the thresholds. base is its baseline,
// unless noBase says why there is none ("no baseline").
func (c *Check) judgeValue(v, base float64, noBase string) verdict {
	r := verdict{baseline: nan, ratio: nan, margin: nan}
	if !finite(v) {
		r.outcome, r.reason = Inconclusive, "value is "+formatNumber(v)
		return r
	}
	useRatio := c.usesBaseline()
	if useRatio && noBase == "" {
		r.baseline = base
		if finite(base) && base != 0 {
			r.ratio = v / base
		}
	}

	switch {
	case c.Min != nil && v < *c.Min:
		r.outcome, r.reason = Fail, formatNumber(v)+" < min "+formatNumber(*c.Min)
		r.margin = relative(v-*c.Min, *c.Min)
	case c.Max != nil && v > *c.Max:
		r.outcome, r.reason = Fail, formatNumber(v)+" > max "+formatNumber(*c.Max)
		r.margin = relative(*c.Max-v, *c.Max)
	case !useRatio:
		r.outcome, r.reason, r.margin = Pass, "ok", c.headroom(v, nan)
	case noBase != "":
		r.outcome, r.reason = Inconclusive, noBase
	case math.IsNaN(r.ratio):
		r.outcome, r.reason = Inconclusive, "no baseline"
	case c.MinRatio != nil && r.ratio < *c.MinRatio:
		r.outcome, r.reason = Fail, ratioReason(r.ratio, r.baseline, "<", "min_ratio", *c.MinRatio)
		r.margin = relative(r.ratio-*c.MinRatio, *c.MinRatio)
	case c.MaxRatio != nil && r.ratio > *c.MaxRatio:
		r.outcome, r.reason = Fail, ratioReason(r.ratio, r.baseline, ">", "max_ratio", *c.MaxRatio)
		r.margin = relative(*c.MaxRatio-r.ratio, *c.MaxRatio)
	default:
		r.outcome, r.reason, r.margin = Pass, "ok", c.headroom(v, r.ratio)
	}
	return r
}

// headroom is how far a passing value (and its ratio, NaN when not used)
// is from the nearest threshold, relative to the threshold's size.
func (c *Check) headroom(v, ratio float64) float64 {
	h := math.Inf(1)
	if c.Min != nil {
		h = min(h, relative(v-*c.Min, *c.Min))
	}
	if c.Max != nil {
		h = min(h, relative(*c.Max-v, *c.Max))
	}
	if !math.IsNaN(ratio) && c.MinRatio != nil {
		h = min(h, relative(ratio-*c.MinRatio, *c.MinRatio))
	}
	if !math.IsNaN(ratio) && c.MaxRatio != nil {
		h = min(h, relative(*c.MaxRatio-ratio, *c.MaxRatio))
	}
	return h
}

// relative is the distance d from a threshold in units of the threshold's
// size, so that 0.09 against max 0.05 (-0.8) is worse than 120 against
// max 100 (-0.2). A threshold of 0 counts as size 1.
func relative(d, limit float64) float64 {
	if limit == 0 {
		return d
	}
	return d / math.Abs(limit)
}

// judgeEach judges every series on its own; see Judge.
func (c *Check) judgeEach(j Judgement, values, baseline []Series) Judgement {
	values = slices.Clone(values)
	slices.SortStableFunc(values, func(a, b Series) int { return strings.Compare(a.Labels, b.Labels) })
	var bases map[string]float64
	if c.usesBaseline() {
		bases = make(map[string]float64, len(baseline))
		for _, b := range baseline {
			if _, dup := bases[b.Labels]; !dup {
				bases[b.Labels] = b.Value
			}
		}
	}

	j.Series = make([]SeriesJudgement, len(values))
	margins := make([]float64, len(values))
	count := map[Outcome]int{}
	for i, s := range values {
		base, noBase := nan, ""
		if bases != nil {
			b, ok := bases[s.Labels]
			if ok {
				base = b
			} else {
				noBase = "no baseline"
			}
		}
		r := c.judgeValue(s.Value, base, noBase)
		j.Series[i] = SeriesJudgement{Labels: s.Labels, Value: s.Value, Baseline: r.baseline, Ratio: r.ratio, Outcome: r.outcome, Reason: r.reason}
		margins[i] = r.margin
		count[r.outcome]++
	}

	switch {
	case count[Fail] > 0:
		j.Outcome = Fail
	case count[Inconclusive] > 0:
		j.Outcome = Inconclusive
	default:
		j.Outcome = Pass
	}
	worst := -1
	for i, s := range j.Series {
		if s.Outcome != j.Outcome {
			continue
		}
		if worst < 0 || j.Outcome != Inconclusive && margins[i] < margins[worst] {
			worst = i
		}
	}
	w := j.Series[worst]
	j.Value, j.Baseline, j.Ratio = w.Value, w.Baseline, w.Ratio

	n := len(j.Series)
	switch j.Outcome {
	case Fail:
		j.Reason = fmt.Sprintf("%s (%d of %d series failed", seriesText(w), count[Fail], n)
		if count[Inconclusive] > 0 {
			j.Reason += fmt.Sprintf(", %d inconclusive", count[Inconclusive])
		}
		j.Reason += ")"
	case Inconclusive:
		j.Reason = fmt.Sprintf("%s (%d of %d series inconclusive)", seriesText(w), count[Inconclusive], n)
	default:
		closest := w.Labels + " " + formatNumber(w.Value)
		if !math.IsNaN(w.Ratio) {
			closest += " (" + formatRatio(w.Ratio, nan) + " x baseline " + formatNumber(w.Baseline) + ")"
		}
		j.Reason = fmt.Sprintf("%d series ok, closest to a threshold: %s", n, closest)
	}
	return j
}

// seriesText names a series and its verdict: `{instance="b"} 0.09 > max 0.05`,
// `{instance="b"} 106: 0.62 x baseline 171 < min_ratio 0.8`,
// `{instance="c"}: value is NaN`.
func seriesText(s SeriesJudgement) string {
	v := formatNumber(s.Value)
	switch {
	case strings.HasPrefix(s.Reason, v+" "):
		return s.Labels + " " + s.Reason
	case finite(s.Value):
		return s.Labels + " " + v + ": " + s.Reason
	}
	return s.Labels + ": " + s.Reason
}

// aggregate reduces the values of series to one (how is one of the
// Aggregate constants). A NaN or Inf among them, or no series, gives NaN.
func aggregate(how string, ss []Series) float64 {
	if len(ss) == 0 {
		return nan
	}
	for _, s := range ss {
		if !finite(s.Value) {
			return nan
		}
	}
	r := ss[0].Value
	switch how {
	case AggregateMin:
		for _, s := range ss[1:] {
			r = min(r, s.Value)
		}
	case AggregateMax:
		for _, s := range ss[1:] {
			r = max(r, s.Value)
		}
	case AggregateSum, AggregateAvg:
		for _, s := range ss[1:] {
			r += s.Value
		}
		if how == AggregateAvg {
			n := float64(len(ss))
			if !math.IsInf(r, 0) {
				return r / n
			}
			// The sum overflowed; the average of finite values cannot.
			r = 0
			for _, s := range ss {
				r += s.Value / n
			}
		}
	default:
		return nan
	}
	return r
}

// ratioReason says "0.62 x baseline 171 < min_ratio 0.8".
func ratioReason(ratio, baseline float64, op, name string, limit float64) string {
	return formatRatio(ratio, limit) + " x baseline " + formatNumber(baseline) + " " + op + " " + name + " " + formatNumber(limit)
}

// Threshold describes the check's thresholds: "min 50, max 200".
func (c *Check) Threshold() string {
	var s []string
	for _, t := range []struct {
		name string
		v    *float64
	}{{"min", c.Min}, {"max", c.Max}, {"min_ratio", c.MinRatio}, {"max_ratio", c.MaxRatio}} {
		if t.v != nil {
			s = append(s, t.name+" "+formatNumber(*t.v))
		}
	}
	if c.Compare != nil {
		s = append(s, c.Compare.String())
	}
	return strings.Join(s, ", ")
}

// String says what the comparison compares and when it fails:
//
//	compare with pre_deploy over 30m: increase > 20% at 98%
//	compare error rate with offset 1d: increase > 50% at 99%
//	compare with 3 weeks back: increase or decrease > 10% at 95%
//	compare canary (label version) with the others: decrease > 5% at 95%
func (cmp *Compare) String() string {
	var b strings.Builder
	b.WriteString("compare ")
	if cmp.Counts() {
		b.WriteString("error rate ")
	}
	switch w := cmp.With; w.Kind {
	case WithPreDeploy:
		fmt.Fprintf(&b, "with pre_deploy over %s", cmp.Lookback)
	case WithOffset:
		fmt.Fprintf(&b, "with offset %s", w.Offset)
	case WithWeeks:
		if w.Weeks == 1 {
			b.WriteString("with 1 week back")
		} else {
			fmt.Fprintf(&b, "with %d weeks back", w.Weeks)
		}
	case WithCanary:
		fmt.Fprintf(&b, "canary (label %s) with the others", cmp.CanaryLabel)
	default:
		b.WriteString("with ?")
	}
	dir := cmp.Direction
	if dir == DirectionEither {
		dir = "increase or decrease"
	}
	margin := "?"
	if cmp.Margin != nil {
		margin = formatNumber(*cmp.Margin*100) + "%"
	}
	fmt.Fprintf(&b, ": %s > %s at %s%%", dir, margin, formatNumber(cmp.Confidence*100))
	return b.String()
}

// State is where the check stands after the measurements t counts: failed
// once it has failed more often than failure_limit tolerates, inconclusive
// once it has been inconclusive more often than inconclusive_limit
// tolerates or has had more query errors in a row than
// consecutive_error_limit tolerates, else ok. A failure outweighs the
// rest. A dry_run check has a state too; the caller does not count it.
func (c *Check) State(t Tally) CheckState {
	switch {
	case t.Fail > c.FailureLimit:
		return CheckFailed
	case c.InconclusiveLimit != nil && t.Inconclusive > *c.InconclusiveLimit,
		c.ConsecutiveErrorLimit != nil && t.ConsecutiveErrors > *c.ConsecutiveErrorLimit:
		return CheckInconclusive
	}
	return CheckOK
}

// EndState is the check's State when the window has closed: also
// inconclusive when it never had a valid measurement (a pass or a fail),
// because no data is never silently healthy.
func (c *Check) EndState(t Tally) CheckState {
	if s := c.State(t); s != CheckOK || t.Pass+t.Fail > 0 {
		return s
	}
	return CheckInconclusive
}

// Failed reports whether the check has failed more often than its
// failure_limit tolerates.
func (c *Check) Failed(t Tally) bool {
	return c.State(t) == CheckFailed
}

// Limits are the check's limits for the audit: failure_limit,
// inconclusive_limit and consecutive_error_limit, nil for no limit.
func (c *Check) Limits() map[string]any {
	limit := func(p *int) any {
		if p == nil {
			return nil
		}
		return *p
	}
	return map[string]any{
		"failure_limit":           c.FailureLimit,
		"inconclusive_limit":      limit(c.InconclusiveLimit),
		"consecutive_error_limit": limit(c.ConsecutiveErrorLimit),
	}
}

// Describe is the audit message for a measurement: j is its judgement and
// t the check's tally including it. It gives the count against the limit
// of the measurement's outcome, if the check sets one. For example
//
//	orders-per-minute = 12 < min 50 (failure 2 of limit 1)
//	orders-per-minute = 73 ok (min 50)
//	orders-per-minute: no data (inconclusive 1)
//	orders-per-minute: no data (inconclusive 3 of limit 2)
//	orders-per-minute: query failed: ... (error 1)
//	orders-per-minute: query failed: ... (error 5 in a row, limit 4)
//	errors: {instance="b"} 0.09 > max 0.05 (1 of 3 series failed) (failure 1 of limit 0)
//	[dry-run] latency = 0.7 > max 0.5 (failure 1 of limit 0)
//	latency-vs-before: +4% [-1%, +9%] ok (compare with pre_deploy over 30m: increase > 20% at 98%)
func (c *Check) Describe(j Judgement, t Tally) string {
	return c.describe(j, &t)
}

// DescribeOne is Describe without the counts: one measurement on its own,
// such as one taken after a rollback, which no limit counts.
//
//	orders-per-minute = 12 < min 50
//	orders-per-minute = 73 ok (min 50)
//	orders-per-minute: no data
func (c *Check) DescribeOne(j Judgement) string {
	return c.describe(j, nil)
}

func (c *Check) describe(j Judgement, tally *Tally) string {
	var b strings.Builder
	if c.DryRun {
		b.WriteString("[dry-run] ")
	}
	b.WriteString(c.Name)
	v := formatNumber(j.Value)
	switch {
	case len(j.Series) > 0: // each: the reason names the series
		b.WriteString(": " + j.Reason)
	case c.Compare != nil: // the reason gives both sides and the shift
		b.WriteString(": " + j.Reason)
	case j.Outcome == Pass && !finite(j.Value):
		b.WriteString(": " + j.Reason + ", counted as a pass (no_data: pass)")
		return b.String()
	case !finite(j.Value):
		b.WriteString(": " + j.Reason)
	case j.Outcome == Pass:
		b.WriteString(" = " + v + " ok")
	case strings.HasPrefix(j.Reason, v+" "): // "12 < min 50"
		b.WriteString(" = " + j.Reason)
	default: // "0.62 x baseline 171 < min_ratio 0.8", "no baseline"
		b.WriteString(" = " + v + ": " + j.Reason)
	}
	if j.Outcome != Pass && tally == nil {
		return b.String()
	}
	var t Tally
	if tally != nil {
		t = *tally
	}
	switch j.Outcome {
	case Pass:
		detail := j.Threshold
		if !math.IsNaN(j.Ratio) && len(j.Series) == 0 && c.Compare == nil {
			detail = formatRatio(j.Ratio, nan) + " x baseline " + formatNumber(j.Baseline) + "; " + detail
		}
		if detail != "" {
			fmt.Fprintf(&b, " (%s)", detail)
		}
	case Fail:
		fmt.Fprintf(&b, " (failure %d of limit %d)", t.Fail, c.FailureLimit)
	case Inconclusive:
		if c.InconclusiveLimit != nil {
			fmt.Fprintf(&b, " (inconclusive %d of limit %d)", t.Inconclusive, *c.InconclusiveLimit)
		} else {
			fmt.Fprintf(&b, " (inconclusive %d)", t.Inconclusive)
		}
	case Error:
		if c.ConsecutiveErrorLimit != nil {
			fmt.Fprintf(&b, " (error %d in a row, limit %d)", t.ConsecutiveErrors, *c.ConsecutiveErrorLimit)
		} else {
			fmt.Fprintf(&b, " (error %d)", t.Error)
		}
	}
	return b.String()
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// formatNumber writes numbers the way a person would: 12, not 12.000000;
// integers exactly, anything else to 6 significant digits.
func formatNumber(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return strconv.FormatFloat(v, 'g', 6, 64)
}

// formatRatio writes a ratio to 3 significant digits ("0.62"), or more when
// that would print it equal to the limit it is compared with.
func formatRatio(r, limit float64) string {
	s := strconv.FormatFloat(r, 'g', 3, 64)
	if r != limit && s == formatNumber(limit) {
		return formatNumber(r)
	}
	return s
}

// SeriesOf turns an instant query's result into what Judge takes.
func SeriesOf(vec model.Vector) []Series {
	out := make([]Series, len(vec))
	for i, s := range vec {
		out[i] = Series{Labels: s.Metric.String(), Value: float64(s.Value)}
	}
	return out
}
