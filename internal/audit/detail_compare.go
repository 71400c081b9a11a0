package audit

// ComparisonDetail is what a measurement of a check's comparison carries
// besides the measurement's own fields: both sides (sizes and medians, or
// counts and rates), the estimated shift with its interval, the test, the
// margin and the look, so that the verdict explains itself.
type ComparisonDetail struct {
	// With is what the deploy was compared with: "pre_deploy", "offset
	// 1w", "weeks 3" or "canary".
	With string `json:"with"`
	// Kind is "samples" (the check's query) or "counts" (errors among
	// requests).
	Kind string `json:"kind"`
	// ErrorsQuery and TotalQuery are a count comparison's queries, as
	// run (.Range the step).
	ErrorsQuery string  `json:"errors_query,omitempty"`
	TotalQuery  string  `json:"total_query,omitempty"`
	Test        string  `json:"test,omitempty"`
	Direction   string  `json:"direction"`
	Margin      float64 `json:"margin"` // relative to the before side, as in the policy
	Confidence  float64 `json:"confidence"`
	// Look is this look's number among the Looks of the window that can
	// be judged; Alpha is its share of 1 - confidence, the level its test
	// ran at.
	Look  int     `json:"look"`
	Looks int     `json:"looks"`
	Alpha float64 `json:"alpha"`
	// P is the test's p-value; absent when the look was not judged
	// (NotJudged says why).
	P         *float64 `json:"p,omitempty"`
	Worse     bool     `json:"worse"`
	NotJudged string   `json:"not_judged,omitempty"`

	After  SideDetail `json:"after"`
	Before SideDetail `json:"before"`

	// A sample comparison's shift (after minus before, in the metric's
	// unit: Hodges-Lehmann), its interval, and the margin in that unit.
	Shift       OptionalFloat `json:"shift,omitzero"`
	ShiftLow    OptionalFloat `json:"shift_low,omitzero"`
	ShiftHigh   OptionalFloat `json:"shift_high,omitzero"`
	MarginValue OptionalFloat `json:"margin_value,omitzero"`
	// A count comparison's ratio of the error rates and its interval; a
	// null bound is unbounded (every error after the deploy).
	Ratio     OptionalFloat `json:"ratio,omitzero"`
	RatioLow  OptionalFloat `json:"ratio_low,omitzero"`
	RatioHigh OptionalFloat `json:"ratio_high,omitzero"`
	Level     float64       `json:"level,omitempty"` // the interval's coverage

	// Trend is the pre-deploy baseline's own trend, tested when the after
	// side came out worse.
	Trend *TrendDetail `json:"trend,omitempty"`
}

// SideDetail is one side of a comparison: N and Median for samples,
// Errors, Total, Rate and Dispersion for counts. Samples holds at most
// ChartSamples of its values, evenly picked in time order, for a chart.
type SideDetail struct {
	N          int        `json:"n"`
	Median     *float64   `json:"median,omitempty"`
	Errors     *int64     `json:"errors,omitempty"`
	Total      *int64     `json:"total,omitempty"`
	Rate       *float64   `json:"rate,omitempty"`
	Dispersion float64    `json:"dispersion,omitempty"`
	Samples    []*float64 `json:"samples,omitempty"`
}

// ChartSamples is how many values of a side a record keeps for its chart.
const ChartSamples = 60

// TrendDetail is whether the baseline was already moving the bad way
// before the deploy: the end of the before span (Late: a median, or an
// error rate) against its start (Early).
type TrendDetail struct {
	Early *float64 `json:"early"`
	Late  *float64 `json:"late"`
	P     float64  `json:"p"`
	Worse bool     `json:"worse"`
}

// comparisonMap adds d's comparison, if any, to its Map.
func (d MeasurementDetail) comparisonMap(m map[string]any) {
	if d.Comparison != nil {
		m["comparison"] = d.Comparison
	}
}
