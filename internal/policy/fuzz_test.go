package policy

import (
	"bytes"
	"math"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"text/template"

	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

// FuzzDecodeFile decodes any rules file. A file with problems must say
// where and what they are; a file without must hold policies that obey the
// rules (checked here apart from validate.go), that come out the same when
// written back as YAML and decoded again, and that Load reads the same from
// a file on disk. Decoding twice gives the same. Seeds: testdata/*.yml and
// testdata/fuzz/FuzzDecodeFile.
func FuzzDecodeFile(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yml")
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		policies, problems := decodeFile("fuzz.yml", data)
		again, problems2 := decodeFile("fuzz.yml", data)
		if !reflect.DeepEqual(problems, problems2) || !reflect.DeepEqual(stripTemplates(policies), stripTemplates(again)) {
			t.Fatalf("decoding twice differs:\n%v\n%v", problems, problems2)
		}
		// YAML breaks lines at \n, \r\n, \r, NEL, LS and PS.
		lines := 1 + bytes.Count(data, []byte("\n")) + bytes.Count(data, []byte("\r")) - bytes.Count(data, []byte("\r\n")) +
			bytes.Count(data, []byte("\u0085")) + bytes.Count(data, []byte("\u2028")) + bytes.Count(data, []byte("\u2029"))
		for _, p := range problems {
			if p.File != "fuzz.yml" || p.Line < 0 || p.Line > lines+1 || p.Message == "" {
				t.Fatalf("problem %+v in a file of %d lines", p, lines)
			}
		}
		if len(problems) == 0 {
			for _, p := range policies {
				checkLoaded(t, p)
			}
			checkRewritten(t, policies)
		}
		checkLoad(t, dir, data)
	})
}

// checkLoad writes data to a file in dir and loads it: Load must find
// what decodeFile finds, plus duplicate policy names.
func checkLoad(t *testing.T, dir string, data []byte) {
	t.Helper()
	file := filepath.Join(dir, "rules.yml")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	policies, problems := decodeFile(file, data)
	slices.SortStableFunc(problems, func(a, b Problem) int { return a.Line - b.Line })
	set, err := Load(file)
	var loaded []Problem
	if err != nil {
		le, ok := err.(*LoadError)
		if !ok {
			t.Fatalf("Load: %T %v", err, err)
		}
		for _, p := range le.Problems {
			if !strings.HasPrefix(p.Message, "duplicate policy name ") {
				loaded = append(loaded, p)
			}
		}
	}
	if !reflect.DeepEqual(loaded, problems) {
		t.Fatalf("Load found\n%v\ndecodeFile\n%v", loaded, problems)
	}
	if err != nil {
		return
	}
	names := map[string]bool{}
	for _, p := range policies {
		if names[p.Name] {
			t.Fatalf("Load accepted a second policy %q", p.Name)
		}
		names[p.Name] = true
	}
	if !reflect.DeepEqual(stripTemplates(set.Policies), stripTemplates(policies)) {
		t.Fatalf("Load and decodeFile disagree:\n%+v\n%+v", set.Policies, policies)
	}
}

// checkLoaded checks a policy from a file without problems against the
// rules of contract section 7 and the defaults.
func checkLoaded(t *testing.T, p *Policy) {
	t.Helper()
	bad := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("policy %q at line %d: "+format, append([]any{p.Name, p.Line}, args...)...)
	}
	if p.Name == "" || p.File != "fuzz.yml" || p.Line < 1 {
		bad("name, file or line missing: %+v", *p)
	}
	for _, g := range []string{p.Match.Service, p.Match.Environment} {
		if _, err := path.Match(g, ""); err != nil {
			bad("glob %q: %v", g, err)
		}
	}
	if p.Window <= 0 || p.Interval <= 0 || p.Interval > p.Window || p.InitialDelay < 0 {
		bad("window %v, interval %v, initial_delay %v", p.Window, p.Interval, p.InitialDelay)
	}
	if p.OnInconclusive != OnInconclusiveKeep && p.OnInconclusive != OnInconclusiveRollback {
		bad("on_inconclusive %q", p.OnInconclusive)
	}
	if p.OnMarginal != OnMarginalKeep && p.OnMarginal != OnMarginalRollback || p.OnMarginal == OnMarginalRollback && p.Score == nil {
		bad("on_marginal %q with score %v", p.OnMarginal, p.Score)
	}
	if s := p.Score; s != nil && (s.Marginal < 0 || s.Pass > 100 || s.Marginal > s.Pass) {
		bad("score %+v", *s)
	}
	if len(p.Checks) == 0 {
		bad("no checks")
	}
	names := map[string]bool{}
	for _, c := range p.Checks {
		counts := c != nil && c.Compare != nil && c.Compare.Counts()
		if c == nil || c.Name == "" || names[c.Name] || counts != (c.Query == "") || c.Query != "" && c.query == nil {
			bad("check %+v", c)
		}
		if c.Compare != nil {
			checkLoadedCompare(t, p, c)
		}
		names[c.Name] = true
		checkLoadedCheck(t, c)
	}

	r := &p.Rollback
	if r.Mode != ModeExecute && r.Mode != ModePublish {
		bad("mode %q", r.Mode)
	}
	if r.Mode == ModeExecute && (r.Link == "" || r.link == nil) {
		bad("mode execute without a link")
	}
	for _, tp := range []struct {
		text string
		tmpl *template.Template
	}{{r.Link, r.link}, {r.ReleasesDir, r.releasesDir}} {
		if tp.text == "" {
			continue
		}
		if tp.tmpl == nil {
			bad("path %q without a template", tp.text)
		}
		s, err := execute(tp.tmpl, sampleData(tp.tmpl, "host1"))
		if err != nil || !path.IsAbs(s) || path.Clean(s) != s || s == "/" {
			bad("path %q renders to %q, %v", tp.text, s, err)
		}
	}
	for i, h := range r.Hosts {
		if h == "" {
			bad("hosts[%d] empty", i)
		}
	}
	if r.Parallelism < 1 || r.SSH.Port < 0 || r.SSH.Port > 65535 || r.SSH.ConnectTimeout <= 0 || r.SSH.CommandTimeout <= 0 {
		bad("rollback %+v", *r)
	}
	for _, f := range []string{r.SSH.IdentityFile, r.SSH.KnownHosts} {
		if strings.HasPrefix(f, "~") || f != "" && filepath.Clean(f) != f {
			bad("ssh path %q not resolved", f)
		}
	}
	checkArgv := func(name string, words []string, tmpls []*template.Template) {
		if words != nil && (len(words) == 0 || words[0] == "" || len(tmpls) != len(words)) {
			bad("%s %q with %d templates", name, words, len(tmpls))
		}
		for i, tt := range tmpls {
			if tt == nil {
				bad("%s[%d] without a template", name, i)
			}
			if _, err := execute(tt, sampleData(tt, "host1")); err != nil {
				bad("%s[%d]: %v", name, i, err)
			}
		}
	}
	checkArgv("after", r.After, r.after)
	if ds := r.Data; ds != nil {
		if len(ds.Command) == 0 {
			bad("data step without a command")
		}
		checkArgv("data.command", ds.Command, ds.command)
		if ds.RunOn != RunOnLocal && ds.RunOn != RunOnFirst && ds.RunOn != RunOnAll ||
			ds.Order != OrderBeforeCode && ds.Order != OrderAfterCode || ds.Timeout <= 0 {
			bad("data step %+v", *ds)
		}
	}
}

func checkLoadedCheck(t *testing.T, c *Check) {
	t.Helper()
	bad := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("check %q at line %d: "+format, append([]any{c.Name, c.Line}, args...)...)
	}
	if c.Line < 1 {
		bad("no line")
	}
	if c.Min == nil && c.Max == nil && c.MinRatio == nil && c.MaxRatio == nil && c.Compare == nil {
		bad("no threshold")
	}
	if c.Weight <= 0 || math.IsNaN(c.Weight) || math.IsInf(c.Weight, 0) {
		bad("weight %v", c.Weight)
	}
	if c.Query == "" {
		return // a count comparison: checkLoadedCompare checks its queries
	}
	for _, v := range []*float64{c.Min, c.Max, c.MinRatio, c.MaxRatio} {
		if v != nil && (math.IsNaN(*v) || math.IsInf(*v, 0)) {
			bad("threshold %v", *v)
		}
	}
	if c.Min != nil && c.Max != nil && *c.Min > *c.Max {
		bad("min %v > max %v", *c.Min, *c.Max)
	}
	if c.MinRatio != nil && c.MaxRatio != nil && *c.MinRatio > *c.MaxRatio {
		bad("min_ratio %v > max_ratio %v", *c.MinRatio, *c.MaxRatio)
	}
	ratio := c.MinRatio != nil || c.MaxRatio != nil
	for _, v := range []*float64{c.MinRatio, c.MaxRatio} {
		if v != nil && *v <= 0 {
			bad("ratio %v", *v)
		}
	}
	switch {
	case ratio != (c.Baseline != nil):
		bad("ratios without a baseline or the other way round: %+v", *c)
	case c.Baseline == nil:
	case c.Baseline.Kind == BaselinePreDeploy && c.Baseline.Offset == 0:
	case c.Baseline.Kind == BaselineOffset && c.Baseline.Offset > 0:
	default:
		bad("baseline %+v", *c.Baseline)
	}
	switch c.Aggregate {
	case "", AggregateMin, AggregateMax, AggregateAvg, AggregateSum:
	default:
		bad("aggregate %q", c.Aggregate)
	}
	if c.Each && c.Aggregate != "" {
		bad("each and aggregate")
	}
	if c.FailureLimit < 0 || c.InconclusiveLimit != nil && *c.InconclusiveLimit < 0 || c.ConsecutiveErrorLimit != nil && *c.ConsecutiveErrorLimit < 0 {
		bad("negative limit")
	}
	if c.NoData != NoDataInconclusive && c.NoData != NoDataFail && c.NoData != NoDataPass {
		bad("no_data %q", c.NoData)
	}
	if fieldsUsed(c.query).host {
		bad("query uses .Host")
	}
	q, err := c.RenderQuery(sampleData(c.query, ""))
	if err != nil {
		bad("query does not render: %v", err)
	}
	expr, err := parser.NewParser(parser.Options{EnableExperimentalFunctions: true}).ParseExpr(q)
	if err != nil {
		bad("query %q is not PromQL: %v", q, err)
	}
	if typ := expr.Type(); typ != parser.ValueTypeVector && typ != parser.ValueTypeScalar {
		bad("query %q returns a %s", q, typ)
	}
}

func checkLoadedCompare(t *testing.T, p *Policy, c *Check) {
	t.Helper()
	cmp := c.Compare
	bad := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("check %q at line %d: compare %+v: "+format, append([]any{c.Name, c.Line, *cmp}, args...)...)
	}
	switch w := cmp.With; {
	case w.Kind == WithPreDeploy && w.Offset == 0 && w.Weeks == 0:
	case w.Kind == WithCanary && w.Offset == 0 && w.Weeks == 0 && cmp.CanaryLabel != "":
	case w.Kind == WithOffset && w.Offset >= p.Window && w.Weeks == 0:
	case w.Kind == WithWeeks && w.Weeks >= 1 && w.Weeks <= MaxCompareWeeks && w.Offset == 0:
	default:
		bad("with")
	}
	if cmp.With.Kind != WithCanary && cmp.CanaryLabel != "" || c.Each {
		bad("canary_label or each")
	}
	if cmp.Margin == nil || *cmp.Margin < 0 || cmp.Direction == DirectionDecrease && *cmp.Margin >= 1 {
		bad("margin")
	}
	if !(cmp.Confidence > 0.5 && cmp.Confidence < 1) || cmp.Step <= 0 || cmp.Step > p.Interval || cmp.Lookback <= 0 {
		bad("confidence, step or lookback")
	}
	if !cmp.Counts() {
		if cmp.Direction != DirectionIncrease && cmp.Direction != DirectionDecrease && cmp.Direction != DirectionEither ||
			cmp.MinSamples < 1 || cmp.MinTotal != 0 || int((p.Window-p.InitialDelay)/cmp.Step)+1 < cmp.MinSamples {
			bad("sample comparison")
		}
		return
	}
	if cmp.Direction != DirectionIncrease || cmp.MinTotal < 1 || cmp.MinSamples != 0 || cmp.errors == nil || cmp.total == nil {
		bad("count comparison")
	}
	for _, render := range []func(TemplateData) (string, error){c.RenderErrors, c.RenderTotal} {
		q, err := render(sampleData(cmp.errors, ""))
		if err != nil {
			bad("does not render: %v", err)
		}
		expr, err := parser.NewParser(parser.Options{EnableExperimentalFunctions: true}).ParseExpr(q)
		if err != nil {
			bad("%q is not PromQL: %v", q, err)
		}
		if typ := expr.Type(); typ != parser.ValueTypeVector && typ != parser.ValueTypeScalar {
			bad("%q returns a %s", q, typ)
		}
	}
}

// checkRewritten writes the policies back as YAML, every default spelled
// out, and decodes that: it must give the same policies without a problem.
func checkRewritten(t *testing.T, policies []*Policy) {
	t.Helper()
	var ps []any
	for _, p := range policies {
		ps = append(ps, policyYAML(p))
	}
	out, err := yaml.Marshal(map[string]any{"policies": ps})
	if err != nil {
		t.Fatalf("writing back %d policies: %v", len(policies), err)
	}
	again, problems := decodeFile("fuzz.yml", out)
	if len(problems) > 0 {
		t.Fatalf("policies written back as\n%s\nhave problems: %v", out, problems)
	}
	if want, got := withoutLines(policies), withoutLines(again); !reflect.DeepEqual(want, got) {
		t.Fatalf("policies written back as\n%s\ndecode differently:\n%s\n%s", out, dump(want), dump(got))
	}
}

func dump(ps []*Policy) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(strings.ReplaceAll(strings.TrimSpace(yamlString(policyYAML(p))), "\n", "\n  "))
		b.WriteString("\n")
	}
	return b.String()
}

func yamlString(v any) string {
	b, _ := yaml.Marshal(v)
	return string(b)
}

// withoutLines strips what depends on where a policy was written.
func withoutLines(ps []*Policy) []*Policy {
	ps = stripTemplates(ps)
	for _, p := range ps {
		p.Line, p.nameLine = 0, 0
		for _, c := range p.Checks {
			if c != nil {
				c.Line = 0
			}
		}
	}
	return ps
}

// policyYAML is p as a rules file would spell it.
func policyYAML(p *Policy) map[string]any {
	m := map[string]any{
		"name":            p.Name,
		"match":           map[string]any{"service": p.Match.Service, "environment": p.Match.Environment},
		"window":          p.Window.String(),
		"interval":        p.Interval.String(),
		"initial_delay":   p.InitialDelay.String(),
		"on_inconclusive": p.OnInconclusive,
	}
	var checks []any
	for _, c := range p.Checks {
		cm := map[string]any{
			"name": c.Name, "query": c.Query, "each": c.Each, "failure_limit": c.FailureLimit,
			"no_data": string(c.NoData), "dry_run": c.DryRun,
		}
		for k, v := range map[string]*float64{"min": c.Min, "max": c.Max, "min_ratio": c.MinRatio, "max_ratio": c.MaxRatio} {
			if v != nil {
				cm[k] = *v
			}
		}
		for k, v := range map[string]*int{"inconclusive_limit": c.InconclusiveLimit, "consecutive_error_limit": c.ConsecutiveErrorLimit} {
			if v != nil {
				cm[k] = *v
			}
		}
		if c.Aggregate != "" {
			cm["aggregate"] = c.Aggregate
		}
		if c.Query == "" {
			delete(cm, "query")
		}
		cm["weight"], cm["critical"] = c.Weight, c.Critical
		if cmp := c.Compare; cmp != nil {
			cmpm := map[string]any{
				"lookback": cmp.Lookback.String(), "step": cmp.Step.String(), "direction": cmp.Direction,
				"margin": *cmp.Margin, "confidence": cmp.Confidence,
			}
			switch cmp.With.Kind {
			case WithOffset:
				cmpm["with"] = map[string]any{"offset": cmp.With.Offset.String()}
			case WithWeeks:
				cmpm["with"] = map[string]any{"weeks": cmp.With.Weeks}
			default:
				cmpm["with"] = cmp.With.Kind
			}
			if cmp.Counts() {
				cmpm["errors"], cmpm["total"], cmpm["min_total"] = cmp.Errors, cmp.Total, cmp.MinTotal
			} else {
				cmpm["min_samples"] = cmp.MinSamples
			}
			if cmp.CanaryLabel != "" {
				cmpm["canary_label"] = cmp.CanaryLabel
			}
			cm["compare"] = cmpm
		}
		if b := c.Baseline; b != nil {
			if b.Kind == BaselineOffset {
				cm["baseline"] = map[string]any{"offset": b.Offset.String()}
			} else {
				cm["baseline"] = b.Kind
			}
		}
		checks = append(checks, cm)
	}
	m["checks"] = checks
	m["on_marginal"] = p.OnMarginal
	if s := p.Score; s != nil {
		m["score"] = map[string]any{"pass": s.Pass, "marginal": s.Marginal}
	}
	r := p.Rollback
	rm := map[string]any{
		"mode": r.Mode, "link": r.Link, "releases_dir": r.ReleasesDir, "parallelism": r.Parallelism,
		"ssh": map[string]any{
			"user": r.SSH.User, "port": r.SSH.Port, "identity_file": r.SSH.IdentityFile, "known_hosts": r.SSH.KnownHosts,
			"connect_timeout": r.SSH.ConnectTimeout.String(), "command_timeout": r.SSH.CommandTimeout.String(),
		},
	}
	if r.Hosts != nil {
		rm["hosts"] = r.Hosts
	}
	if r.After != nil {
		rm["after"] = r.After
	}
	if ds := r.Data; ds != nil {
		rm["data"] = map[string]any{"command": ds.Command, "run_on": ds.RunOn, "order": ds.Order, "timeout": ds.Timeout.String()}
	}
	m["rollback"] = rm
	return m
}
