// Package policy loads the YAML validation policies in rules/, renders their
// templates, and judges measurements against their thresholds.
package policy

import (
	"math"
	"text/template"

	"github.com/prometheus/common/model"
)

// File is one rules file.
type File struct {
	Policies []*Policy `yaml:"policies"`
}

// Policy says how to validate the deploys it matches and how to roll them back.
type Policy struct {
	Name         string         `yaml:"name"`
	Match        Match          `yaml:"match"`
	Window       model.Duration `yaml:"window"`
	Interval     model.Duration `yaml:"interval"`
	InitialDelay model.Duration `yaml:"initial_delay"`
	// OnInconclusive says what a run that ends inconclusive leads to:
	// OnInconclusiveKeep (the default) or OnInconclusiveRollback.
	OnInconclusive string   `yaml:"on_inconclusive"`
	Checks         []*Check `yaml:"checks"`

	// Score, when set, judges the run by the weight of its checks that did
	// not fail instead of failing it on any failed check (README "Scores").
	Score *Score `yaml:"score"`
	// OnMarginal says what a run that ends marginal leads to:
	// OnMarginalKeep (the default) or OnMarginalRollback. Only with Score.
	OnMarginal string `yaml:"on_marginal"`

	Rollback Rollback `yaml:"rollback"`
	// Alerts, when set, lets matching Alertmanager alerts roll back the
	// deploys the policy matches (POST /api/v1/alerts).
	Alerts *Alerts `yaml:"alerts"`

	// Where the policy was defined, for messages ("rules/shop.yml:3").
	File string `yaml:"-"`
	Line int    `yaml:"-"`

	nameLine int    // of the name key, for duplicate names across files
	source   string // the policy as a rules file of its own (Snapshot)
}

// Match selects deploys by exact name or glob (path.Match syntax, "shop-*").
// An empty field matches everything.
type Match struct {
	Service     string `yaml:"service"`
	Environment string `yaml:"environment"`
}

// What a run that ends inconclusive leads to (Policy.OnInconclusive).
const (
	OnInconclusiveKeep     = "keep"     // keep the deploy: no rollback
	OnInconclusiveRollback = "rollback" // roll it back as if it had failed
)

// What a scored run that ends marginal leads to (Policy.OnMarginal).
const (
	OnMarginalKeep     = "keep"     // keep the deploy, recorded as marginal
	OnMarginalRollback = "rollback" // roll it back as if it had failed
	// OnMarginalAsk holds the rollback for `watcher approve` or `watcher
	// cancel` until rollback.hold ends, then does rollback.ask_default.
	OnMarginalAsk = "ask"
)

// Score is a scored policy's bounds, each 0..100 with Marginal <= Pass: at
// each interval the score is 100 x (weight of checks not failed) / (weight
// of checks judged); below Marginal the run fails at once, and at the end a
// score >= Pass passes, >= Marginal is marginal, anything less fails.
type Score struct {
	Pass     float64 `yaml:"pass"`
	Marginal float64 `yaml:"marginal"`
}

// NoData says what a measurement with no data counts as.
type NoData string

const (
	NoDataInconclusive NoData = "inconclusive"
	NoDataFail         NoData = "fail"
	NoDataPass         NoData = "pass"
)

// Baseline kinds.
const (
	BaselinePreDeploy = "pre_deploy" // the check's query evaluated at the deploy's time
	BaselineOffset    = "offset"     // the check's query evaluated Offset before now
)

// Baseline is what a check's value is compared with for min_ratio/max_ratio:
// `baseline: pre_deploy` or `baseline: {offset: 7d}`.
type Baseline struct {
	Kind   string         // BaselinePreDeploy or BaselineOffset
	Offset model.Duration // for Kind "offset"
}

// What a comparison compares with (CompareWith.Kind).
const (
	WithPreDeploy = "pre_deploy" // the lookback before the deploy
	WithOffset    = "offset"     // the same span, Offset earlier
	WithWeeks     = "weeks"      // the same span 1..Weeks weeks earlier, pooled
	WithCanary    = "canary"     // the canary's series against the others, same span
)

// CompareWith is `with:` of a comparison: `pre_deploy`, `canary`,
// `{offset: 7d}` or `{weeks: 3}`.
type CompareWith struct {
	Kind   string         // one of the With* kinds
	Offset model.Duration // for WithOffset
	Weeks  int            // for WithWeeks
}

// The bad direction of a comparison (Compare.Direction).
const (
	DirectionIncrease = "increase"
	DirectionDecrease = "decrease"
	DirectionEither   = "either"
)

// Compare is a check's statistical comparison of the deploy with what it
// replaced (README "Comparisons"). It compares samples of the check's query, or,
// when Errors and Total are set, the error rate they count.
type Compare struct {
	With     CompareWith    `yaml:"with"`
	Lookback model.Duration `yaml:"lookback"` // the before span for pre_deploy; the policy's window by default
	Step     model.Duration `yaml:"step"`     // sample spacing (range queries)

	// Direction is the bad direction; a count comparison's is always an
	// increase of the error rate.
	Direction string `yaml:"direction"`
	// Margin is the practical margin, relative to the before side: a
	// shift smaller than Margin x before never fails, however significant.
	Margin *float64 `yaml:"margin"`
	// Confidence holds over all the looks of the window, not per look.
	Confidence float64 `yaml:"confidence"`
	MinSamples int     `yaml:"min_samples"` // per side, for a sample comparison

	// Errors and Total make it a count comparison: query templates that
	// count errors and requests over {{ .Range }}.
	Errors   string `yaml:"errors"`
	Total    string `yaml:"total"`
	MinTotal int    `yaml:"min_total"` // requests since the deploy before a count comparison is judged

	CanaryLabel string `yaml:"canary_label"` // for WithCanary: the label whose value is the deploy's version

	errors, total *template.Template // parsed Errors and Total
}

// Counts reports whether the comparison counts errors among requests
// rather than comparing samples of the check's query.
func (c *Compare) Counts() bool { return c.Errors != "" || c.Total != "" }

// Ways to reduce the series of a query to one value (Check.Aggregate).
const (
	AggregateMin = "min"
	AggregateMax = "max"
	AggregateAvg = "avg"
	AggregateSum = "sum"
)

// Check is one PromQL query and its thresholds.
type Check struct {
	Name     string    `yaml:"name"`
	Query    string    `yaml:"query"`
	Min      *float64  `yaml:"min"`
	Max      *float64  `yaml:"max"`
	Baseline *Baseline `yaml:"baseline"`
	MinRatio *float64  `yaml:"min_ratio"`
	MaxRatio *float64  `yaml:"max_ratio"`

	// Each judges every series of the query on its own: one bad series
	// fails the measurement. Aggregate ("min", "max", "avg" or "sum")
	// reduces the series to one value instead. Without either, a query
	// must return one series.
	Each      bool   `yaml:"each"`
	Aggregate string `yaml:"aggregate"`

	// Measurements of each outcome the check tolerates; one more decides
	// it (see State). A nil limit is no limit.
	FailureLimit          int  `yaml:"failure_limit"`
	InconclusiveLimit     *int `yaml:"inconclusive_limit"`
	ConsecutiveErrorLimit *int `yaml:"consecutive_error_limit"` // query errors in a row

	NoData NoData `yaml:"no_data"`

	// Compare, when set, compares the deploy with what it replaced, on its
	// own or besides the thresholds above.
	Compare *Compare `yaml:"compare"`

	// Weight and Critical matter in a scored policy only: the check's
	// share of the score (default 1), and whether its failure fails the
	// run whatever the score. Without a score every check is critical.
	Weight   float64 `yaml:"weight"`
	Critical bool    `yaml:"critical"`

	// DryRun checks are measured and audited but never count toward the
	// run's verdict.
	DryRun bool `yaml:"dry_run"`

	Line  int                `yaml:"-"`
	query *template.Template // parsed Query
}

// Rollback modes.
const (
	ModeExecute = "execute" // publish the request and execute it
	ModePublish = "publish" // decide and publish, execute nothing (a freeze)
	// ModeAsk holds each request for `watcher approve` or `watcher cancel`
	// until rollback.hold ends, then does what ask_default says.
	ModeAsk = "ask"
)

// What an unanswered ask does when rollback.hold ends (Rollback.AskDefault).
const (
	AskKeep     = "keep"     // keep the deploy: no rollback
	AskRollback = "rollback" // execute the rollback
)

// Rollback says how the executor rolls back the deploys this policy matches.
type Rollback struct {
	Mode        string    `yaml:"mode"`
	Link        string    `yaml:"link"`
	ReleasesDir string    `yaml:"releases_dir"`
	Hosts       []string  `yaml:"hosts"`
	SSH         SSH       `yaml:"ssh"`
	Parallelism int       `yaml:"parallelism"`
	After       []string  `yaml:"after"`
	Data        *DataStep `yaml:"data"`
	// Hold announces a rollback (rollback.held) and waits this long before
	// executing it, so a person can cancel it; with mode: ask (or a
	// policy's on_marginal: ask) it is how long a request waits for an
	// answer. Zero: no hold.
	Hold model.Duration `yaml:"hold"`
	// AskDefault is what an unanswered ask does when Hold ends.
	AskDefault string `yaml:"ask_default"`
	// Verify measures the run's failed checks again after the rollback.
	Verify *Verify `yaml:"verify"`
	// Cooldown is how long after an automatic rollback of a service and
	// environment another automatic one is left to a person. Zero turns
	// it off.
	Cooldown model.Duration `yaml:"cooldown"`

	link, releasesDir *template.Template
	after             []*template.Template
}

// Verify says how long after a rollback its run's failed checks must
// have recovered (rollback.verified) before it is called unhelpful.
type Verify struct {
	Within model.Duration `yaml:"within"`
}

// SSH configures connections to remote hosts.
type SSH struct {
	User           string         `yaml:"user"`
	Port           int            `yaml:"port"`
	IdentityFile   string         `yaml:"identity_file"`
	KnownHosts     string         `yaml:"known_hosts"`
	ConnectTimeout model.Duration `yaml:"connect_timeout"`
	CommandTimeout model.Duration `yaml:"command_timeout"`
}

// DataStep is the schema/data rollback that runs with the code rollback.
type DataStep struct {
	Command []string       `yaml:"command"`
	RunOn   string         `yaml:"run_on"` // local | first | all
	Order   string         `yaml:"order"`  // before_code | after_code
	Timeout model.Duration `yaml:"timeout"`

	command []*template.Template
}

// TemplateData is what a template in a policy sees. Host is set only for the
// per-host fields (link, releases_dir, after, data.command).
type TemplateData struct {
	Service         string
	Environment     string
	Version         string
	PreviousVersion string
	Labels          map[string]string
	Host            string
	// Range is the span a comparison's errors and total count, as a
	// PromQL duration ("30m", "1h5m30s"), filled in per evaluation; only
	// those two templates may use it.
	Range string
}

// Outcome is what one measurement counts as.
type Outcome string

const (
	Pass         Outcome = "pass"
	Fail         Outcome = "fail"
	Inconclusive Outcome = "inconclusive" // no series, NaN, Inf, or no baseline
	Error        Outcome = "error"        // the query failed
)

// Series is one sample of an instant query's result.
type Series struct {
	Labels string // canonical label set as Prometheus prints it, {instance="a:9100", job="shop"}; "{}" for none
	Value  float64
}

// Judgement is the verdict on one measurement, with the numbers that decided it.
type Judgement struct {
	Outcome   Outcome
	Value     float64 // NaN when there is none; for `each`, the worst series' (see Judge)
	Baseline  float64 // NaN when the check has no baseline or it had no data
	Ratio     float64 // Value / Baseline, NaN when not used
	Threshold string  // "min 50", "max 0.05", "min_ratio 0.8"
	Reason    string  // "12 < min 50", "no data", "query returned 3 series; ..."

	// Series has the verdict on every series, sorted by Labels, for a
	// check with `each: true` whose query returned any; nil otherwise.
	Series []SeriesJudgement
}

// SeriesJudgement is the verdict on one series of an `each` check.
type SeriesJudgement struct {
	Labels   string
	Value    float64
	Baseline float64 // NaN when none
	Ratio    float64 // NaN when not used
	Outcome  Outcome
	Reason   string // as in Judgement: "0.09 > max 0.05", "no baseline", "ok"
}

// Tally counts a check's outcomes over a run.
type Tally struct {
	Pass, Fail, Inconclusive, Error int

	// ConsecutiveErrors is the number of errors since the last outcome
	// that was not one.
	ConsecutiveErrors int
}

// Add counts one outcome.
func (t *Tally) Add(o Outcome) {
	if o == Error {
		t.ConsecutiveErrors++
	} else {
		t.ConsecutiveErrors = 0
	}
	switch o {
	case Pass:
		t.Pass++
	case Fail:
		t.Fail++
	case Inconclusive:
		t.Inconclusive++
	case Error:
		t.Error++
	}
}

// CheckState is where a check stands after its measurements so far.
type CheckState string

const (
	CheckOK           CheckState = "ok"
	CheckFailed       CheckState = "failed"       // more failures than failure_limit
	CheckInconclusive CheckState = "inconclusive" // past inconclusive_limit or consecutive_error_limit, or blind at the end
)

var nan = math.NaN()
