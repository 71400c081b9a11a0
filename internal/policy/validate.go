package policy

import (
	"fmt"
	"path"
	"text/template"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
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
	if c.Query == "" {
		d.errorf(c.Line, "%s has no query", what)
	}

	if !d.given(&c.Min) && !d.given(&c.Max) && !d.given(&c.MinRatio) && !d.given(&c.MaxRatio) {
		d.errorf(c.Line, "%s has no threshold: set min, max, min_ratio or max_ratio", what)
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

	if c.Query != "" {
		c.query = d.checkQuery(c, what, d.line(c.Line, &c.Query))
	}
}

// checkQuery parses the query's template, renders it with sample data, and
// parses the result as PromQL, so that a typo shows at load time rather
// than as a query error in the middle of a deploy.
func (d *decoder) checkQuery(c *Check, what string, line int) *template.Template {
	t, err := newQueryTemplate("query", c.Query)
	if err != nil {
		d.errorf(line, "%s: bad template: %s", what, templateMessage(err))
		return nil
	}
	if fieldsUsed(t).host {
		d.errorf(line, "%s: a query cannot use .Host: it runs once for all hosts", what)
		return nil
	}
	q, err := execute(t, sampleData(t, ""))
	if err != nil {
		d.errorf(line, "%s: template fails with sample data: %s", what, templateMessage(err))
		return nil
	}
	expr, err := promql.ParseExpr(q)
	if err != nil {
		msg := fmt.Sprintf("%s: query is not valid PromQL: %v", what, err)
		if q != c.Query {
			msg += fmt.Sprintf(" (in the query rendered with sample data: %s)", q)
		}
		d.errorf(line, "%s", msg)
		return nil
	}
	switch typ := expr.Type(); typ {
	case parser.ValueTypeVector, parser.ValueTypeScalar:
	case parser.ValueTypeMatrix:
		d.errorf(line, "%s: query returns a range vector; a check needs an instant vector or a scalar (such as rate(x[5m]) rather than x[5m])", what)
	default:
		d.errorf(line, "%s: query returns a %s; a check needs an instant vector or a scalar", what, typ)
	}
	return t
}

func (d *decoder) checkRollback(r *Rollback, line int) {
	if d.failed[r] {
		return // not a mapping, already reported
	}
	if l, ok := d.set(&r.Mode); !ok {
		r.Mode = DefaultMode
	} else if r.Mode != ModeExecute && r.Mode != ModePublish {
		d.errorf(l, "rollback.mode must be execute or publish, got %q", r.Mode)
	}
	if r.Link == "" && r.Mode == ModeExecute && !d.failed[&r.Link] {
		d.errorf(line, "rollback.link is required unless rollback.mode is publish")
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
