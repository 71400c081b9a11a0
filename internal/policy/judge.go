package policy

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Judge decides one measurement of the check. values are the samples the
// instant query returned, one per series; baseline is the baseline query's
// single value, nil when it returned nothing or the check has none; queryErr
// is the query's error.
//
// No data, NaN and a failed query are outcomes of their own, never a pass:
// a broken exporter must not look like a healthy deploy.
func (c *Check) Judge(values []float64, baseline *float64, queryErr error) Judgement {
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
	case len(values) > 1:
		j.Outcome = Error
		j.Reason = fmt.Sprintf("query returned %d series; use an aggregation such as sum() so it returns one", len(values))
		return j
	}

	v := values[0]
	j.Value = v
	if !finite(v) {
		j.Outcome, j.Reason = Inconclusive, "value is "+formatNumber(v)
		return j
	}
	useRatio := c.Baseline != nil && (c.MinRatio != nil || c.MaxRatio != nil)
	if useRatio && baseline != nil {
		j.Baseline = *baseline
		if finite(*baseline) && *baseline != 0 {
			j.Ratio = v / *baseline
		}
	}

	switch {
	case c.Min != nil && v < *c.Min:
		j.Outcome, j.Reason = Fail, formatNumber(v)+" < min "+formatNumber(*c.Min)
	case c.Max != nil && v > *c.Max:
		j.Outcome, j.Reason = Fail, formatNumber(v)+" > max "+formatNumber(*c.Max)
	case !useRatio:
		j.Outcome, j.Reason = Pass, "ok"
	case math.IsNaN(j.Ratio):
		j.Outcome, j.Reason = Inconclusive, "no baseline"
	case c.MinRatio != nil && j.Ratio < *c.MinRatio:
		j.Outcome, j.Reason = Fail, ratioReason(j, "<", "min_ratio", *c.MinRatio)
	case c.MaxRatio != nil && j.Ratio > *c.MaxRatio:
		j.Outcome, j.Reason = Fail, ratioReason(j, ">", "max_ratio", *c.MaxRatio)
	default:
		j.Outcome, j.Reason = Pass, "ok"
	}
	return j
}

// ratioReason says "0.62 x baseline 171 < min_ratio 0.8".
func ratioReason(j Judgement, op, name string, limit float64) string {
	return formatRatio(j.Ratio, limit) + " x baseline " + formatNumber(j.Baseline) + " " + op + " " + name + " " + formatNumber(limit)
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
	return strings.Join(s, ", ")
}

// Failed reports whether the check has failed more often than its
// failure_limit tolerates.
func (c *Check) Failed(t Tally) bool {
	return t.Fail > c.FailureLimit
}

// Describe is the audit message for a measurement: j is its judgement and
// t the check's tally including it. For example
//
//	orders-per-minute = 12 < min 50 (failure 2 of limit 1)
//	orders-per-minute = 73 ok (min 50)
//	orders-per-minute: no data (inconclusive 1)
//	orders-per-minute: query failed: ... (error 1)
func (c *Check) Describe(j Judgement, t Tally) string {
	var b strings.Builder
	b.WriteString(c.Name)
	v := formatNumber(j.Value)
	switch {
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
	switch j.Outcome {
	case Pass:
		detail := j.Threshold
		if !math.IsNaN(j.Ratio) {
			detail = formatRatio(j.Ratio, nan) + " x baseline " + formatNumber(j.Baseline) + "; " + detail
		}
		if detail != "" {
			fmt.Fprintf(&b, " (%s)", detail)
		}
	case Fail:
		fmt.Fprintf(&b, " (failure %d of limit %d)", t.Fail, c.FailureLimit)
	case Inconclusive:
		fmt.Fprintf(&b, " (inconclusive %d)", t.Inconclusive)
	case Error:
		fmt.Fprintf(&b, " (error %d)", t.Error)
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
