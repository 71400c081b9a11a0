package policy

import (
	"fmt"
	"path"
	"regexp"
	"text/template"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/rollback-watcher/watcher/internal/stats"
)

// promql parses queries at load time. Experimental functions are allowed:
// whether the server has them enabled is not known here, and rejecting a
// query the server accepts would be worse than a query error at run time.
var promql = parser.NewParser(parser.Options{EnableExperimentalFunctions: true})

// checkPolicy validates a decoded policy, fills in its defaults and parses
// its templates.
func (d *decoder) checkPolicy(p *Policy) {
	p.File = d.file
	p.Line = d.line(0, p)
	p.nameLine = d.line(p.Line, &p.Name)
	what := "policy"
	if p.Name == "" {
		d.errorf(p.Line, "policy has no name")
	} else {
		what = fmt.Sprintf("policy %q", p.Name)
	}

	d.checkGlob(&p.Match.Service, "match.service")
	d.checkGlob(&p.Match.Environment, "match.environment")

	window := d.positive(&p.Window, DefaultWindow, "window")
	interval := d.positive(&p.Interval, DefaultInterval, "interval")
	if _, ok := d.set(&p.InitialDelay); !ok {
		p.InitialDelay = DefaultInitialDelay
	}
	// initial_delay is not compared with window: a delay as long as the
	// window is a way to measure once, at the end. An interval longer than
	// the window, though, is almost surely a slip such as 30m for 30s.
	if window && interval && p.Interval > p.Window {
		d.errorf(d.line(p.Line, &p.Interval, &p.Window), "interval %s is longer than window %s", p.Interval, p.Window)
	}

	if l, ok := d.set(&p.OnInconclusive); !ok {
		p.OnInconclusive = DefaultOnInconclusive
	} else if p.OnInconclusive != OnInconclusiveKeep && p.OnInconclusive != OnInconclusiveRollback {
		d.errorf(l, "on_inconclusive must be keep or rollback, got %q", p.OnInconclusive)
	}
	d.checkScore(p)

	if len(p.Checks) == 0 && !d.failed[&p.Checks] {
		d.errorf(d.line(p.Line, &p.Checks), "%s has no checks", what)
	}
	names := map[string]int{}
	for i, c := range p.Checks {
		if c == nil && !d.failed[&p.Checks[i]] {
			d.errorf(d.line(p.Line, &p.Checks[i]), "empty check")
		}
		if c != nil {
			d.checkCheck(c, names)
			if c.Compare != nil {
				d.checkCompare(p, c, window && interval)
			}
		}
	}
	d.checkRollback(&p.Rollback, d.line(p.Line, &p.Rollback))
	d.checkAlerts(p.Alerts)
}

func (d *decoder) checkGlob(pattern *string, name string) {
	if _, err := path.Match(*pattern, ""); err != nil {
		d.errorf(d.line(0, pattern), "%s: bad glob %q: %v", name, *pattern, err)
	}
}

// positive gives an unset duration its default and reports a set one that
// is zero, which would make a loop spin or a timeout expire at once. It
// returns whether the duration is usable.
func (d *decoder) positive(dur *model.Duration, def model.Duration, name string) bool {
	line, ok := d.set(dur)
	if !ok {
		*dur = def
		return true
	}
	if *dur <= 0 {
		d.errorf(line, "%s must be positive, got %s", name, *dur)
		return false
	}
	return true
}

func (d *decoder) checkCheck(c *Check, names map[string]int) {
	c.Line = d.line(0, c)
	what := "check"
	if c.Name == "" {
		d.errorf(c.Line, "check has no name")
	} else {
		what = fmt.Sprintf("check %q", c.Name)
		line := d.line(c.Line, &c.Name)
		if first, dup := names[c.Name]; dup {
			d.errorf(line, "duplicate check name %q (first at line %d)", c.Name, first)
		} else {
			names[c.Name] = line
		}
	}
	thresholds := d.given(&c.Min) || d.given(&c.Max) || d.given(&c.MinRatio) || d.given(&c.MaxRatio)
	counts := c.Compare != nil && c.Compare.Counts()
	switch {
	case counts && c.Query != "":
		d.errorf(d.line(c.Line, &c.Query), "%s: a count comparison takes no query (it compares compare.errors among compare.total): "+
			"remove query, and put any threshold on it in a check of its own", what)
	case counts && thresholds:
		d.errorf(c.Line, "%s: min, max, min_ratio and max_ratio need a query, which a count comparison does not take: "+
			"put them in a check of their own", what)
	case counts:
	case c.Query == "" && c.Compare != nil:
		d.errorf(c.Line, "%s has no query: a sample comparison compares the query's values "+
			"(or give compare.errors and compare.total to compare counts)", what)
	case c.Query == "":
		d.errorf(c.Line, "%s has no query", what)
	}

	if !thresholds && !d.given(&c.Compare) {
		d.errorf(c.Line, "%s has no threshold: set min, max, min_ratio or max_ratio, or compare", what)
	}
	if c.Min != nil && c.Max != nil && *c.Min > *c.Max {
		d.errorf(d.line(c.Line, &c.Min), "%s: min %s is greater than max %s", what, formatNumber(*c.Min), formatNumber(*c.Max))
	}
	ratios := false
	for _, r := range []struct {
		v    **float64
		name string
	}{{&c.MinRatio, "min_ratio"}, {&c.MaxRatio, "max_ratio"}} {
		if *r.v == nil {
			continue
		}
		ratios = true
		line := d.line(c.Line, r.v)
		if **r.v <= 0 {
			d.errorf(line, "%s: %s must be positive, got %s", what, r.name, formatNumber(**r.v))
		}
		if !d.given(&c.Baseline) {
			d.errorf(line, "%s: %s needs a baseline: set baseline to pre_deploy or {offset: <duration>}", what, r.name)
		}
	}
	if c.MinRatio != nil && c.MaxRatio != nil && *c.MinRatio > *c.MaxRatio {
		d.errorf(d.line(c.Line, &c.MinRatio), "%s: min_ratio %s is greater than max_ratio %s", what, formatNumber(*c.MinRatio), formatNumber(*c.MaxRatio))
	}
	if c.Baseline != nil && !ratios && !d.given(&c.MinRatio) && !d.given(&c.MaxRatio) {
		d.errorf(d.line(c.Line, &c.Baseline), "%s: baseline is set but no min_ratio or max_ratio uses it", what)
	}

	if l, ok := d.set(&c.Aggregate); ok {
		switch c.Aggregate {
		case AggregateMin, AggregateMax, AggregateAvg, AggregateSum:
		default:
			d.errorf(l, "%s: aggregate must be min, max, avg or sum, got %q", what, c.Aggregate)
		}
		if c.Each {
			d.errorf(l, "%s: set each or aggregate, not both: each judges every series on its own, aggregate reduces them to one value", what)
		}
	}

	if c.FailureLimit < 0 {
		d.errorf(d.line(c.Line, &c.FailureLimit), "%s: failure_limit must not be negative, got %d", what, c.FailureLimit)
	}
	for _, l := range []struct {
		v    **int
		name string
	}{{&c.InconclusiveLimit, "inconclusive_limit"}, {&c.ConsecutiveErrorLimit, "consecutive_error_limit"}} {
		if *l.v != nil && **l.v < 0 {
			d.errorf(d.line(c.Line, l.v), "%s: %s must not be negative, got %d", what, l.name, **l.v)
		}
	}
	if line, ok := d.set(&c.NoData); !ok {
		c.NoData = DefaultNoData
	} else if c.NoData != NoDataInconclusive && c.NoData != NoDataFail && c.NoData != NoDataPass {
		d.errorf(line, "%s: no_data must be inconclusive, fail or pass, got %q", what, c.NoData)
	}

	if l, ok := d.set(&c.Weight); !ok {
		c.Weight = DefaultWeight
	} else if c.Weight <= 0 {
		d.errorf(l, "%s: weight must be positive, got %s", what, formatNumber(c.Weight))
	}

	if c.Query != "" {
		c.query = d.checkQuery(what, "query", c.Query, d.line(c.Line, &c.Query), false)
	}
}

// checkQuery parses a query template (a check's query, or a comparison's
// errors or total: name), renders it with sample data, and parses the
// result as PromQL, so that a typo shows at load time rather than as a
// query error in the middle of a deploy. counting says whether the
// template may use .Range, which is filled only for errors and total.
func (d *decoder) checkQuery(what, name, text string, line int, counting bool) *template.Template {
	t, err := newQueryTemplate(name, text)
	if err != nil {
		d.errorf(line, "%s: bad template: %s", what, templateMessage(err))
		return nil
	}
	used := fieldsUsed(t)
	if used.host {
		d.errorf(line, "%s: a %s cannot use .Host: it runs once for all hosts", what, name)
		return nil
	}
	if used.rng && !counting {
		d.errorf(line, "%s: a %s cannot use .Range: it is filled only in compare.errors and compare.total, the span they count", what, name)
		return nil
	}
	q, err := execute(t, sampleData(t, ""))
	if err != nil {
		d.errorf(line, "%s: template fails with sample data: %s", what, templateMessage(err))
		return nil
	}
	expr, err := promql.ParseExpr(q)
	if err != nil {
		msg := fmt.Sprintf("%s: %s is not valid PromQL: %v", what, name, err)
		if q != text {
			msg += fmt.Sprintf(" (in the query rendered with sample data: %s)", q)
		}
		d.errorf(line, "%s", msg)
		return nil
	}
	switch typ := expr.Type(); typ {
	case parser.ValueTypeVector, parser.ValueTypeScalar:
	case parser.ValueTypeMatrix:
		d.errorf(line, "%s: %s returns a range vector; a check needs an instant vector or a scalar (such as rate(x[5m]) rather than x[5m])", what, name)
	default:
		d.errorf(line, "%s: %s returns a %s; a check needs an instant vector or a scalar", what, name, typ)
	}
	return t
}

func (d *decoder) checkRollback(r *Rollback, line int) {
	if d.failed[r] {
		return // not a mapping, already reported
	}
	if l, ok := d.set(&r.Mode); !ok {
		r.Mode = DefaultMode
	} else if r.Mode != ModeExecute && r.Mode != ModePublish && r.Mode != ModeAsk {
		d.errorf(l, "rollback.mode must be execute, publish or ask, got %q", r.Mode)
	} else if r.Mode == ModeAsk && r.Hold <= 0 && !d.failed[&r.Hold] {
		d.errorf(l, "rollback.mode: ask waits for `watcher approve` until rollback.hold ends: set rollback.hold (such as 15m)")
	}
	if r.Link == "" && r.Mode != ModePublish && !d.failed[&r.Link] {
		d.errorf(line, "rollback.link is required unless rollback.mode is publish")
	}
	// Negative durations are refused where they are decoded.
	if _, ok := d.set(&r.Cooldown); !ok && !d.failed[&r.Cooldown] {
		r.Cooldown = DefaultCooldown
	}
	if l, ok := d.set(&r.AskDefault); !ok {
		r.AskDefault = DefaultAskDefault
	} else if r.AskDefault != AskKeep && r.AskDefault != AskRollback {
		d.errorf(l, "rollback.ask_default must be keep or rollback, got %q", r.AskDefault)
	}
	if v := r.Verify; v != nil {
		vline := d.line(line, &r.Verify)
		if l, ok := d.set(&v.Within); !ok && !d.failed[&v.Within] {
			d.errorf(vline, "rollback.verify.within is required: how long after the rollback the failed checks must have recovered (such as 5m)")
		} else if ok && v.Within <= 0 {
			d.errorf(l, "rollback.verify.within must be positive, got %s", v.Within)
		}
		if r.Mode == ModePublish {
			d.errorf(vline, "rollback.verify needs a rollback to verify, and mode: publish executes none")
		}
	}
	if r.Link != "" {
		r.link = d.checkPath("rollback.link", r.Link, d.line(line, &r.Link))
	}
	if r.ReleasesDir != "" {
		r.releasesDir = d.checkPath("rollback.releases_dir", r.ReleasesDir, d.line(line, &r.ReleasesDir))
	}
	for i, h := range r.Hosts {
		if h == "" {
			d.errorf(d.line(line, &r.Hosts[i]), "rollback.hosts[%d] is empty", i)
		}
	}

	ssh := &r.SSH
	if ssh.Port < 0 || ssh.Port > 65535 {
		d.errorf(d.line(line, &ssh.Port), "rollback.ssh.port must be between 1 and 65535, got %d", ssh.Port)
	}
	for _, f := range []struct {
		p    *string
		name string
	}{{&ssh.IdentityFile, "identity_file"}, {&ssh.KnownHosts, "known_hosts"}} {
		p, err := resolvePath(d.file, *f.p)
		if err != nil {
			d.errorf(d.line(line, f.p), "rollback.ssh.%s: %v", f.name, err)
			continue
		}
		*f.p = p
	}
	d.positive(&ssh.ConnectTimeout, DefaultSSHConnectTimeout, "rollback.ssh.connect_timeout")
	d.positive(&ssh.CommandTimeout, DefaultSSHCommandTimeout, "rollback.ssh.command_timeout")

	if l, ok := d.set(&r.Parallelism); !ok {
		r.Parallelism = DefaultParallelism
	} else if r.Parallelism < 1 {
		d.errorf(l, "rollback.parallelism must be at least 1, got %d", r.Parallelism)
	}

	if l, ok := d.set(&r.After); ok && len(r.After) == 0 {
		d.errorf(l, "rollback.after is an empty command: give the program and its arguments, or leave after out")
	}
	r.after = d.checkArgv("rollback.after", r.After, line)

	if ds := r.Data; ds != nil {
		dline := d.line(line, &r.Data)
		if len(ds.Command) == 0 && !d.failed[&ds.Command] {
			d.errorf(d.line(dline, &ds.Command), "rollback.data.command is empty: give the program and its arguments")
		}
		ds.command = d.checkArgv("rollback.data.command", ds.Command, dline)
		if l, ok := d.set(&ds.RunOn); !ok {
			ds.RunOn = DefaultDataRunOn
		} else if ds.RunOn != RunOnLocal && ds.RunOn != RunOnFirst && ds.RunOn != RunOnAll {
			d.errorf(l, "rollback.data.run_on must be local, first or all, got %q", ds.RunOn)
		}
		if l, ok := d.set(&ds.Order); !ok {
			ds.Order = DefaultDataOrder
		} else if ds.Order != OrderBeforeCode && ds.Order != OrderAfterCode {
			d.errorf(l, "rollback.data.order must be before_code or after_code, got %q", ds.Order)
		}
		d.positive(&ds.Timeout, DefaultDataTimeout, "rollback.data.timeout")
	}
}

// checkPath parses a link or releases_dir template and checks that it
// renders to an absolute, clean path with sample data.
func (d *decoder) checkPath(name, text string, line int) *template.Template {
	t, err := newTemplate(name, text)
	if err != nil {
		d.errorf(line, "%s: bad template: %s", name, templateMessage(err))
		return nil
	}
	p, err := execute(t, sampleData(t, "host1"))
	switch {
	case err != nil:
		d.errorf(line, "%s: template fails with sample data: %s", name, templateMessage(err))
		return nil
	case !cleanAbs(p) && p == text:
		d.errorf(line, "%s must be an absolute, clean path, got %q", name, p)
		return nil
	case !cleanAbs(p):
		d.errorf(line, "%s must be an absolute, clean path, got %q (rendered with sample data)", name, p)
		return nil
	}
	return t
}

// checkArgv parses the templates of a command's words.
func (d *decoder) checkArgv(name string, words []string, line int) []*template.Template {
	if len(words) > 0 && words[0] == "" {
		d.errorf(d.line(line, &words[0]), "%s[0] is empty: it is the program to run", name)
	}
	ts := make([]*template.Template, len(words))
	ok := true
	for i, w := range words {
		wname := fmt.Sprintf("%s[%d]", name, i)
		wline := d.line(line, &words[i])
		t, err := newTemplate(wname, w)
		if err != nil {
			d.errorf(wline, "%s: bad template: %s", wname, templateMessage(err))
			ok = false
			continue
		}
		if _, err := execute(t, sampleData(t, "host1")); err != nil {
			d.errorf(wline, "%s: template fails with sample data: %s", wname, templateMessage(err))
			ok = false
			continue
		}
		ts[i] = t
	}
	if !ok {
		return nil
	}
	return ts
}

// labelName is a Prometheus label name that every server accepts.
var labelName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// checkCompare validates a check's comparison and fills in its defaults.
// timing says whether the policy's window and interval are usable, for
// the checks that need them.
func (d *decoder) checkCompare(p *Policy, c *Check, timing bool) {
	cmp := c.Compare
	what := "check"
	if c.Name != "" {
		what = fmt.Sprintf("check %q", c.Name)
	}
	line := d.line(c.Line, &c.Compare)
	counts := cmp.Counts()

	if c.Each {
		d.errorf(d.line(line, &c.Each), "%s: set each or compare, not both: each judges every series against a threshold, "+
			"a comparison judges the query's series together (use canary to compare one version's series with the others)", what)
	}
	if !d.given(&cmp.With) {
		d.errorf(line, "%s: compare.with is required: pre_deploy, canary, {offset: 7d} or {weeks: 3}", what)
	}

	switch {
	case cmp.Errors != "" && cmp.Total == "" && !d.failed[&cmp.Total]:
		d.errorf(d.line(line, &cmp.Errors), "%s: compare.errors needs compare.total: the requests the errors are counted among", what)
	case cmp.Total != "" && cmp.Errors == "" && !d.failed[&cmp.Errors]:
		d.errorf(d.line(line, &cmp.Total), "%s: compare.total needs compare.errors: the errors counted among the requests", what)
	}
	if cmp.Errors != "" {
		cmp.errors = d.checkQuery(what, "compare.errors", cmp.Errors, d.line(line, &cmp.Errors), true)
	}
	if cmp.Total != "" {
		cmp.total = d.checkQuery(what, "compare.total", cmp.Total, d.line(line, &cmp.Total), true)
	}

	if l, ok := d.set(&cmp.Direction); ok {
		switch {
		case cmp.Direction != DirectionIncrease && cmp.Direction != DirectionDecrease && cmp.Direction != DirectionEither:
			d.errorf(l, "%s: compare.direction must be increase, decrease or either, got %q", what, cmp.Direction)
		case counts && cmp.Direction != DirectionIncrease:
			d.errorf(l, "%s: compare.direction of a count comparison is always increase (a higher error rate); leave it out", what)
		}
	} else if counts {
		cmp.Direction = DirectionIncrease
	} else if !d.failed[&cmp.Direction] {
		d.errorf(line, "%s: compare.direction is required for a sample comparison: the bad direction, increase, decrease or either", what)
	}

	if l, ok := d.set(&cmp.Margin); ok && cmp.Margin != nil {
		switch m := *cmp.Margin; {
		case m < 0:
			d.errorf(l, "%s: compare.margin must not be negative, got %s", what, formatNumber(m))
		case m >= 1 && cmp.Direction == DirectionDecrease:
			d.errorf(l, "%s: compare.margin %s can never be exceeded by a decrease (a value cannot fall by 100%% or more): use a margin below 1", what, formatNumber(m))
		}
	} else if !d.failed[&cmp.Margin] {
		d.errorf(line, "%s: compare.margin is required: the smallest shift that counts, relative to the before side, "+
			"such as 0.2 for 20%% (0: any significant shift counts)", what)
	}

	if l, ok := d.set(&cmp.Confidence); !ok {
		cmp.Confidence = DefaultConfidence
	} else if cmp.Confidence <= 0.5 || cmp.Confidence >= 1 {
		d.errorf(l, "%s: compare.confidence must be above 0.5 and below 1, such as 0.95 or 0.99, got %s", what, formatNumber(cmp.Confidence))
	}

	step := true
	if l, ok := d.set(&cmp.Step); !ok {
		cmp.Step = min(DefaultCompareStep, p.Interval)
		if counts {
			cmp.Step = min(DefaultCountStep, p.Interval)
		}
	} else if cmp.Step <= 0 {
		d.errorf(l, "%s: compare.step must be positive, got %s", what, cmp.Step)
		step = false
	} else if timing && cmp.Step > p.Interval {
		d.errorf(l, "%s: compare.step %s is longer than the interval %s: a look could find no new sample", what, cmp.Step, p.Interval)
		step = false
	}

	// Lookback is accepted but not used with offset, weeks and canary,
	// whose before side is the after side's span, moved or beside it.
	lookback := true
	if l, ok := d.set(&cmp.Lookback); !ok {
		cmp.Lookback = p.Window
	} else if cmp.Lookback <= 0 {
		d.errorf(l, "%s: compare.lookback must be positive, got %s", what, cmp.Lookback)
		lookback = false
	}

	if l, ok := d.set(&cmp.MinSamples); ok && counts {
		d.errorf(l, "%s: compare.min_samples is for sample comparisons; a count comparison waits for min_total requests", what)
	} else if ok && cmp.MinSamples < 1 {
		d.errorf(l, "%s: compare.min_samples must be at least 1, got %d", what, cmp.MinSamples)
	} else if !ok && !counts {
		cmp.MinSamples = DefaultMinSamples
	}
	if l, ok := d.set(&cmp.MinTotal); ok && !counts {
		d.errorf(l, "%s: compare.min_total is for count comparisons (errors and total); a sample comparison waits for min_samples", what)
	} else if ok && cmp.MinTotal < 1 {
		d.errorf(l, "%s: compare.min_total must be at least 1, got %d", what, cmp.MinTotal)
	} else if !ok && counts {
		cmp.MinTotal = DefaultMinTotal
	}

	if l, ok := d.set(&cmp.CanaryLabel); ok {
		switch {
		case cmp.With.Kind != WithCanary && d.given(&cmp.With):
			d.errorf(l, "%s: compare.canary_label is only for with: canary", what)
		case !labelName.MatchString(cmp.CanaryLabel):
			d.errorf(l, "%s: compare.canary_label must be a label name such as version, got %q", what, cmp.CanaryLabel)
		}
	} else if cmp.With.Kind == WithCanary {
		cmp.CanaryLabel = DefaultCanaryLabel
	}

	if !timing || !step || d.failed[&cmp.MinSamples] {
		return
	}
	// A comparison that can never see enough samples would end every run
	// inconclusive; say so now rather than after a window of waiting.
	samples := func(span model.Duration) int { return int(span/cmp.Step) + 1 }
	if !counts && cmp.MinSamples >= 1 {
		after := p.Window - p.InitialDelay
		if after < 0 || samples(after) < cmp.MinSamples {
			d.errorf(d.line(line, &cmp.MinSamples, &cmp.Step), "%s: compare.min_samples %d is never reached: the window %s after initial_delay %s holds at most %d samples at step %s",
				what, cmp.MinSamples, p.Window, p.InitialDelay, max(0, samples(max(0, after))), cmp.Step)
		} else if cmp.With.Kind == WithPreDeploy && lookback && samples(cmp.Lookback) < cmp.MinSamples {
			d.errorf(d.line(line, &cmp.Lookback, &cmp.MinSamples, &cmp.Step), "%s: compare.min_samples %d is never reached before the deploy: lookback %s holds %d samples at step %s",
				what, cmp.MinSamples, cmp.Lookback, samples(cmp.Lookback), cmp.Step)
		}
	}
	// A count comparison judges bursts from per-step counts, which takes
	// stats.MinSteps steps a side.
	if counts {
		after := p.Window - p.InitialDelay
		if after < 0 || samples(after) < stats.MinSteps {
			d.errorf(d.line(line, &cmp.Step), "%s: a count comparison needs %d steps after the deploy to judge how bursty errors are, and the window %s after initial_delay %s holds at most %d at step %s: use a shorter compare.step (at least twice the scrape interval) or a longer window",
				what, stats.MinSteps, p.Window, p.InitialDelay, max(0, samples(max(0, after))), cmp.Step)
		} else if cmp.With.Kind == WithPreDeploy && lookback && samples(cmp.Lookback) < stats.MinSteps {
			d.errorf(d.line(line, &cmp.Lookback, &cmp.Step), "%s: a count comparison needs %d steps before the deploy, and lookback %s holds %d at step %s",
				what, stats.MinSteps, cmp.Lookback, samples(cmp.Lookback), cmp.Step)
		}
	}
	// Looks before the after side holds enough samples are inconclusive
	// ("not judged yet"); an inconclusive_limit below their number would
	// decide every run inconclusive before its first judged look.
	if need := max(cmp.MinSamples, 1); c.InconclusiveLimit != nil && p.Interval > 0 {
		if counts {
			need = stats.MinSteps
		}
		early := int((model.Duration(need-1)*cmp.Step + p.Interval - 1) / p.Interval)
		if early > *c.InconclusiveLimit {
			d.errorf(d.line(line, &c.InconclusiveLimit), "%s: inconclusive_limit %d is below the %d looks that come before the comparison has %d steps after the deploy (each is inconclusive, not judged yet): raise inconclusive_limit to at least %d",
				what, *c.InconclusiveLimit, early, need, early)
		}
	}
	// The before side is the after side's span moved back; moved back by
	// less than the window, it would take in time after the deploy.
	if back := cmp.With.back(); back > 0 && back < p.Window {
		d.errorf(d.line(line, &cmp.With), "%s: compare.with goes back %s, less than the window %s: the before side would include time after the deploy",
			what, back, p.Window)
	}
}

// back is how far the before side lies behind the after side, for offset
// and weeks; 0 for the others.
func (w CompareWith) back() model.Duration {
	switch w.Kind {
	case WithOffset:
		return w.Offset
	case WithWeeks:
		return model.Duration(7 * 24 * time.Hour)
	}
	return 0
}

// checkScore validates a policy's score and on_marginal.
func (d *decoder) checkScore(p *Policy) {
	if s := p.Score; s != nil {
		pass, passOK := d.set(&s.Pass)
		marginal, marginalOK := d.set(&s.Marginal)
		line := d.line(p.Line, &p.Score)
		if !passOK && !d.failed[&s.Pass] {
			d.errorf(line, "score.pass is required: the score (0 to 100) a run needs at the window's end to pass")
		}
		if !marginalOK && !d.failed[&s.Marginal] {
			d.errorf(line, "score.marginal is required: the score (0 to 100, at most pass) below which the run fails at once; at or above it but below pass the run is marginal")
		}
		for _, f := range []struct {
			v    float64
			ok   bool
			line int
			name string
		}{{s.Pass, passOK, pass, "pass"}, {s.Marginal, marginalOK, marginal, "marginal"}} {
			if f.ok && (f.v < 0 || f.v > 100) {
				d.errorf(f.line, "score.%s must be from 0 to 100, got %s", f.name, formatNumber(f.v))
			}
		}
		if passOK && marginalOK && s.Marginal > s.Pass {
			d.errorf(marginal, "score.marginal %s is greater than score.pass %s", formatNumber(s.Marginal), formatNumber(s.Pass))
		}
	}
	l, ok := d.set(&p.OnMarginal)
	switch {
	case !ok:
		p.OnMarginal = DefaultOnMarginal
	case p.OnMarginal != OnMarginalKeep && p.OnMarginal != OnMarginalRollback && p.OnMarginal != OnMarginalAsk:
		d.errorf(l, "on_marginal must be keep, rollback or ask, got %q", p.OnMarginal)
	case p.OnMarginal != OnMarginalKeep && p.Score == nil && !d.failed[&p.Score]:
		d.errorf(l, "on_marginal: %s needs a score: only a scored policy's run can end marginal (set score: {pass: 80, marginal: 50}, or leave on_marginal out)", p.OnMarginal)
	case p.OnMarginal == OnMarginalAsk && p.Rollback.Hold <= 0:
		d.errorf(l, "on_marginal: ask waits for `watcher approve` until rollback.hold ends: set rollback.hold (such as 15m)")
	}
}
