package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
)

func float(v float64) *float64 { return &v }

func dur(d time.Duration) model.Duration { return model.Duration(d) }

// writeFile writes a rules file into dir and returns its path.
func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// mustLoad loads patterns and fails the test on any problem.
func mustLoad(t *testing.T, patterns ...string) *Set {
	t.Helper()
	s, err := Load(patterns...)
	if err != nil {
		t.Fatalf("Load(%q): %v", patterns, err)
	}
	return s
}

// stripTemplates clears the parsed templates, which reflect.DeepEqual
// cannot compare, from copies of loaded policies.
func stripTemplates(ps []*Policy) []*Policy {
	var out []*Policy
	for _, p := range ps {
		q := *p
		q.Checks = nil
		for _, c := range p.Checks {
			if c == nil {
				q.Checks = append(q.Checks, nil)
				continue
			}
			cc := *c
			cc.query = nil
			if c.Compare != nil {
				cmp := *c.Compare
				cmp.errors, cmp.total = nil, nil
				cc.Compare = &cmp
			}
			q.Checks = append(q.Checks, &cc)
		}
		q.source = ""
		q.Rollback.link, q.Rollback.releasesDir, q.Rollback.after = nil, nil, nil
		if p.Rollback.Data != nil {
			ds := *p.Rollback.Data
			ds.command = nil
			q.Rollback.Data = &ds
		}
		out = append(out, &q)
	}
	return out
}

func TestLoadGood(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	s := mustLoad(t, "testdata/good.yml")

	want := []*Policy{
		{
			Name:           "shop-orders",
			Match:          Match{Service: "shop", Environment: "production"},
			Window:         dur(15 * time.Minute),
			Interval:       dur(time.Minute),
			InitialDelay:   dur(2 * time.Minute),
			OnInconclusive: OnInconclusiveRollback,
			OnMarginal:     OnMarginalKeep,
			Checks: []*Check{
				{
					Name:                  "orders-per-minute",
					Query:                 `sum(rate(shop_orders_total{service="{{ .Service }}", team="{{ .Labels.team }}"}[1m])) * 60`,
					Min:                   float(50),
					Max:                   float(5000),
					FailureLimit:          1,
					InconclusiveLimit:     intp(2),
					ConsecutiveErrorLimit: intp(4),
					NoData:                NoDataFail,
					Weight:                1,
					Line:                  10,
				},
				{
					Name:                  "orders-vs-before",
					Query:                 "sum(rate(shop_orders_total[5m]))",
					Baseline:              &Baseline{Kind: BaselinePreDeploy},
					MinRatio:              float(0.8),
					InconclusiveLimit:     intp(0),
					ConsecutiveErrorLimit: intp(0),
					NoData:                NoDataInconclusive,
					Weight:                1,
					Line:                  18,
				},
				{
					Name:     "orders-vs-last-week",
					Query:    `sum(rate(shop_orders_total{region="{{ .Labels.region }}"}[5m]))`,
					Baseline: &Baseline{Kind: BaselineOffset, Offset: dur(7 * 24 * time.Hour)},
					MinRatio: float(0.5),
					MaxRatio: float(2),
					NoData:   NoDataPass,
					Weight:   1,
					Line:     24,
				},
				{
					Name:   "error-ratio-each-instance",
					Query:  "rate(shop_errors_total[1m]) / rate(shop_requests_total[1m])",
					Each:   true,
					Max:    float(0.05),
					NoData: NoDataInconclusive,
					Weight: 1,
					Line:   32,
				},
				{
					Name:      "latency-shadow",
					Query:     "histogram_quantile(0.99, sum by (le, instance) (rate(shop_latency_seconds_bucket[5m])))",
					Aggregate: AggregateMax,
					Max:       float(0.5),
					DryRun:    true,
					NoData:    NoDataInconclusive,
					Weight:    1,
					Line:      36,
				},
			},
			Rollback: Rollback{
				Mode:        ModePublish,
				Link:        "/srv/{{ .Service }}/{{ .Host }}/current",
				ReleasesDir: "/srv/{{ .Service }}/releases",
				Hosts:       []string{"web1.example.com", "web2.example.com:2222"},
				SSH: SSH{
					User:           "deploy",
					Port:           2222,
					IdentityFile:   "testdata/keys/id_ed25519",
					KnownHosts:     filepath.Join(home, ".ssh/known_hosts"),
					ConnectTimeout: dur(5 * time.Second),
					CommandTimeout: dur(2 * time.Minute),
				},
				Parallelism: 4,
				After:       []string{"sudo", "systemctl", "reload", "php-fpm@{{ .Service }}"},
				AskDefault:  DefaultAskDefault,
				Cooldown:    DefaultCooldown,
				Data: &DataStep{
					Command: []string{"bin/migrate", "down", "--to", "{{ .PreviousVersion }}"},
					RunOn:   RunOnFirst,
					Order:   OrderBeforeCode,
					Timeout: dur(10 * time.Minute),
				},
			},
			File:     "testdata/good.yml",
			Line:     3,
			nameLine: 3,
		},
		{
			Name:           "minimal",
			Window:         DefaultWindow,
			Interval:       DefaultInterval,
			InitialDelay:   DefaultInitialDelay,
			OnInconclusive: DefaultOnInconclusive,
			OnMarginal:     DefaultOnMarginal,
			Checks: []*Check{{
				Name:         "up",
				Query:        "up",
				Min:          float(1),
				FailureLimit: DefaultFailureLimit,
				NoData:       DefaultNoData,
				Weight:       1,
				Line:         63,
			}},
			Rollback: Rollback{
				Mode: DefaultMode,
				Link: "/srv/app/current",
				SSH: SSH{
					ConnectTimeout: DefaultSSHConnectTimeout,
					CommandTimeout: DefaultSSHCommandTimeout,
				},
				Parallelism: DefaultParallelism,
				AskDefault:  DefaultAskDefault,
				Cooldown:    DefaultCooldown,
				Data: &DataStep{
					Command: []string{"bin/migrate", "down"},
					RunOn:   DefaultDataRunOn,
					Order:   DefaultDataOrder,
					Timeout: DefaultDataTimeout,
				},
			},
			File:     "testdata/good.yml",
			Line:     61,
			nameLine: 61,
		},
	}
	got := stripTemplates(s.Policies)
	if len(got) != len(want) {
		t.Fatalf("got %d policies, want %d", len(got), len(want))
	}
	for i := range want {
		if reflect.DeepEqual(got[i], want[i]) {
			continue
		}
		t.Errorf("policy %d:\n got %+v\nwant %+v", i, *got[i], *want[i])
		for j := range min(len(got[i].Checks), len(want[i].Checks)) {
			if !reflect.DeepEqual(got[i].Checks[j], want[i].Checks[j]) {
				t.Errorf("check %d:\n got %+v\nwant %+v", j, *got[i].Checks[j], *want[i].Checks[j])
			}
		}
	}
	if !slices.Equal(s.Files, []string{"testdata/good.yml"}) {
		t.Errorf("Files = %q", s.Files)
	}
}

func TestDefaults(t *testing.T) {
	dir := t.TempDir()
	f := writeFile(t, dir, "p.yml", `
policies:
  - name: p
    checks: [{name: c, query: up, min: 1}]
    rollback: {link: /srv/app/current}
`)
	p := mustLoad(t, f).Policies[0]
	c, r := p.Checks[0], p.Rollback
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"window", p.Window, dur(10 * time.Minute)},
		{"interval", p.Interval, dur(30 * time.Second)},
		{"initial_delay", p.InitialDelay, dur(0)},
		{"on_inconclusive", p.OnInconclusive, OnInconclusiveKeep},
		{"no_data", c.NoData, NoDataInconclusive},
		{"failure_limit", c.FailureLimit, 0},
		{"inconclusive_limit", c.InconclusiveLimit, (*int)(nil)},
		{"consecutive_error_limit", c.ConsecutiveErrorLimit, (*int)(nil)},
		{"each", c.Each, false},
		{"aggregate", c.Aggregate, ""},
		{"dry_run", c.DryRun, false},
		{"mode", r.Mode, ModeExecute},
		{"parallelism", r.Parallelism, 32},
		{"ssh.connect_timeout", r.SSH.ConnectTimeout, dur(10 * time.Second)},
		{"ssh.command_timeout", r.SSH.CommandTimeout, dur(time.Minute)},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if r.Data != nil || r.After != nil {
		t.Errorf("data = %v, after = %q; want neither", r.Data, r.After)
	}
	if d, err := r.RenderReleasesDir(TemplateData{}); err != nil || d != "/srv/app/releases" {
		t.Errorf("releases_dir = %q, %v; want /srv/app/releases", d, err)
	}

	writeFile(t, dir, "p.yml", `
policies:
  - name: p
    checks: [{name: c, query: up, min: 1}]
    rollback: {link: /srv/app/current, data: {command: [migrate]}}
`)
	ds := mustLoad(t, f).Policies[0].Rollback.Data
	if ds.RunOn != RunOnLocal || ds.Order != OrderAfterCode || ds.Timeout != dur(5*time.Minute) {
		t.Errorf("data step defaults: %+v", *ds)
	}
}

// TestLoadBadConfigs gives every kind of problem its own file, with the
// exact error it must give.
func TestLoadBadConfigs(t *testing.T) {
	type test struct{ file, want string }
	tests := []test{
		{"invalid-after-empty.yml", "testdata/invalid-after-empty.yml:7: rollback.after is an empty command: give the program and its arguments, or leave after out"},
		{"invalid-aggregate.yml", "testdata/invalid-aggregate.yml:7: check \"latency\": aggregate must be min, max, avg or sum, got \"median\""},
		{"invalid-alerts-matcher.yml", "testdata/invalid-alerts-matcher.yml:7: alerts: matcher \"alertname=~\\\"[unclosed\\\"\": error parsing regexp: missing closing ]: `[unclosed)$`"},
		{"invalid-alerts-no-matchers.yml", "testdata/invalid-alerts-no-matchers.yml:7: alerts: matchers is required (say which alerts may roll back, e.g. 'alertname=\"ShopErrorsHigh\"')"},
		{"invalid-alerts-within.yml", "testdata/invalid-alerts-within.yml:8: alerts.within must be positive, got 0s"},
		{"invalid-baseline-offset.yml", "testdata/invalid-baseline-offset.yml:7: baseline: offset must be a positive duration such as 1d or 7d, got \"0s\""},
		{"invalid-baseline-without-ratio.yml", "testdata/invalid-baseline-without-ratio.yml:6: check \"orders\": baseline is set but no min_ratio or max_ratio uses it"},
		{"invalid-baseline.yml", "testdata/invalid-baseline.yml:6: baseline: want pre_deploy or {offset: <duration>}, got \"yesterday\""},
		{"invalid-check-no-name.yml", "testdata/invalid-check-no-name.yml:4: check has no name"},
		{"invalid-check-no-query.yml", "testdata/invalid-check-no-query.yml:4: check \"up\" has no query"},
		{"invalid-compare-combinations.yml", "testdata/invalid-compare-combinations.yml:6: check \"each\": set each or compare, not both: each judges every series against a threshold, a comparison judges the query's series together (use canary to compare one version's series with the others)\ntestdata/invalid-compare-combinations.yml:10: check \"label-not-canary\": compare.canary_label is only for with: canary\ntestdata/invalid-compare-combinations.yml:13: check \"bad-label\": compare.canary_label must be a label name such as version, got \"app.version\""},
		{"invalid-compare-counts.yml", "testdata/invalid-compare-counts.yml:7: check \"half\": compare.errors needs compare.total: the requests the errors are counted among\ntestdata/invalid-compare-counts.yml:10: check \"with-query\": a count comparison takes no query (it compares compare.errors among compare.total): remove query, and put any threshold on it in a check of its own\ntestdata/invalid-compare-counts.yml:17: check \"with-query\": compare.direction of a count comparison is always increase (a higher error rate); leave it out\ntestdata/invalid-compare-counts.yml:18: check \"with-query\": compare.min_samples is for sample comparisons; a count comparison waits for min_total requests\ntestdata/invalid-compare-counts.yml:19: check \"thresholds\": min, max, min_ratio and max_ratio need a query, which a count comparison does not take: put them in a check of their own\ntestdata/invalid-compare-counts.yml:26: check \"thresholds\": compare.min_total must be at least 1, got 0\ntestdata/invalid-compare-counts.yml:29: check \"samples\": compare.min_total is for count comparisons (errors and total); a sample comparison waits for min_samples"},
		{"invalid-compare-never-judged.yml", "testdata/invalid-compare-never-judged.yml:9: check \"after\": compare.min_samples 20 is never reached: the window 10m after initial_delay 8m holds at most 9 samples at step 15s\ntestdata/invalid-compare-never-judged.yml:12: check \"before\": compare.min_samples 6 is never reached before the deploy: lookback 1m holds 5 samples at step 15s\ntestdata/invalid-compare-never-judged.yml:15: check \"offset\": compare.with goes back 5m, less than the window 10m: the before side would include time after the deploy"},
		{"invalid-compare-too-early.yml", "testdata/invalid-compare-too-early.yml:12: check \"errors\": a count comparison needs 10 steps before the deploy, and lookback 4m holds 9 at step 30s\ntestdata/invalid-compare-too-early.yml:15: check \"latency\": inconclusive_limit 3 is below the 7 looks that come before the comparison has 40 steps after the deploy (each is inconclusive, not judged yet): raise inconclusive_limit to at least 7\ntestdata/invalid-compare-too-early.yml:23: check \"errors\": a count comparison needs 10 steps after the deploy to judge how bursty errors are, and the window 4m after initial_delay 0s holds at most 9 at step 30s: use a shorter compare.step (at least twice the scrape interval) or a longer window"},
		{"invalid-compare-range.yml", "testdata/invalid-compare-range.yml:5: check \"range-in-query\": a query cannot use .Range: it is filled only in compare.errors and compare.total, the span they count\ntestdata/invalid-compare-range.yml:10: check \"range-outside-brackets\": bad template: compare.errors:1:40: {{.Range}}: {{ .Range }} goes only where a duration goes, as all of it: in the [...] of a range selector or subquery, such as rate(x[{{ .Range }}])\ntestdata/invalid-compare-range.yml:11: check \"range-outside-brackets\": bad template: compare.total:1:40: 5m])): follows {{ .Range }} in the same duration: {{ .Range }} must be all of it, such as [{{ .Range }}]\ntestdata/invalid-compare-range.yml:16: check \"range-with-more\": bad template: compare.errors:1:41: {{.Range}}: {{ .Range }} goes only where a duration goes, as all of it: in the [...] of a range selector or subquery, such as rate(x[{{ .Range }}])\ntestdata/invalid-compare-range.yml:17: check \"range-with-more\": bad template: compare.total:1:31: {{.Range | printf \"%s\"}}: prints outside a string literal: in a query, what a template prints must be inside \"...\" or '...', such as team=\"{{ .Labels.team }}\", where it is escaped; elsewhere a deploy's value could rewrite the query"},
		{"invalid-compare-ranges.yml", "testdata/invalid-compare-ranges.yml:9: check \"latency\": compare.direction must be increase, decrease or either, got \"sideways\"\ntestdata/invalid-compare-ranges.yml:10: check \"latency\": compare.margin must not be negative, got -0.1\ntestdata/invalid-compare-ranges.yml:11: check \"latency\": compare.confidence must be above 0.5 and below 1, such as 0.95 or 0.99, got 1\ntestdata/invalid-compare-ranges.yml:12: check \"latency\": compare.step 1m is longer than the interval 30s: a look could find no new sample\ntestdata/invalid-compare-ranges.yml:13: check \"latency\": compare.lookback must be positive, got 0s\ntestdata/invalid-compare-ranges.yml:14: check \"latency\": compare.min_samples must be at least 1, got 0\ntestdata/invalid-compare-ranges.yml:17: check \"drop\": compare.margin 1 can never be exceeded by a decrease (a value cannot fall by 100% or more): use a margin below 1\ntestdata/invalid-compare-ranges.yml:17: check \"drop\": compare.confidence must be above 0.5 and below 1, such as 0.95 or 0.99, got 0.5\ntestdata/invalid-compare-ranges.yml:17: check \"drop\": compare.step must be positive, got 0s"},
		{"invalid-compare-required.yml", "testdata/invalid-compare-required.yml:6: check \"latency\": compare.with is required: pre_deploy, canary, {offset: 7d} or {weeks: 3}\ntestdata/invalid-compare-required.yml:6: check \"latency\": compare.direction is required for a sample comparison: the bad direction, increase, decrease or either\ntestdata/invalid-compare-required.yml:6: check \"latency\": compare.margin is required: the smallest shift that counts, relative to the before side, such as 0.2 for 20% (0: any significant shift counts)\ntestdata/invalid-compare-required.yml:8: check \"no-query\" has no query: a sample comparison compares the query's values (or give compare.errors and compare.total to compare counts)"},
		{"invalid-compare-with.yml", "testdata/invalid-compare-with.yml:6: compare.with: want pre_deploy, canary, {offset: <duration>} or {weeks: <1..8>}, got \"yesterday\"\ntestdata/invalid-compare-with.yml:9: compare.with: weeks must be a whole number from 1 to 8, got \"12\"\ntestdata/invalid-compare-with.yml:12: compare.with: offset must be a positive duration such as 1d or 7d, got \"0s\"\ntestdata/invalid-compare-with.yml:15: compare.with: one key only, offset or weeks, got \"weeks\" as well (want pre_deploy, canary, {offset: <duration>} or {weeks: <1..8>})"},
		{"invalid-consecutive-error-limit.yml", "testdata/invalid-consecutive-error-limit.yml:7: check \"orders\": consecutive_error_limit must not be negative, got -2"},
		{"invalid-data-command-empty.yml", "testdata/invalid-data-command-empty.yml:7: rollback.data.command is empty: give the program and its arguments"},
		{"invalid-data-order.yml", "testdata/invalid-data-order.yml:9: rollback.data.order must be before_code or after_code, got \"during_code\""},
		{"invalid-data-run-on.yml", "testdata/invalid-data-run-on.yml:9: rollback.data.run_on must be local, first or all, got \"everywhere\""},
		{"invalid-duplicate-check.yml", "testdata/invalid-duplicate-check.yml:5: duplicate check name \"up\" (first at line 4)"},
		{"invalid-duplicate-key.yml", "testdata/invalid-duplicate-key.yml:4: duplicate key \"window\" (first at line 3)"},
		{"invalid-duplicate-policy.yml", "testdata/invalid-duplicate-policy.yml:6: duplicate policy name \"shop\" (first defined at testdata/invalid-duplicate-policy.yml:2)"},
		{"invalid-duration.yml", "testdata/invalid-duration.yml:3: window: invalid duration \"10mins\" (use Prometheus syntax such as 500ms, 30s, 10m, 1h)"},
		{"invalid-each-and-aggregate.yml", "testdata/invalid-each-and-aggregate.yml:8: check \"errors\": set each or aggregate, not both: each judges every series on its own, aggregate reduces them to one value"},
		{"invalid-each-not-a-bool.yml", "testdata/invalid-each-not-a-bool.yml:7: each: expected true or false, got \"yes\""},
		{"invalid-failure-limit.yml", "testdata/invalid-failure-limit.yml:7: check \"orders\": failure_limit must not be negative, got -1"},
		{"invalid-inconclusive-limit.yml", "testdata/invalid-inconclusive-limit.yml:7: check \"orders\": inconclusive_limit must not be negative, got -1"},
		{"invalid-interval-longer-than-window.yml", "testdata/invalid-interval-longer-than-window.yml:4: interval 5m is longer than window 1m"},
		{"invalid-limit-not-an-integer.yml", "testdata/invalid-limit-not-an-integer.yml:7: inconclusive_limit: expected an integer, got \"2.5\"\ntestdata/invalid-limit-not-an-integer.yml:8: consecutive_error_limit: expected an integer, got \"many\""},
		{"invalid-link-missing.yml", "testdata/invalid-link-missing.yml:5: rollback.link is required unless rollback.mode is publish"},
		{"invalid-link-relative.yml", "testdata/invalid-link-relative.yml:6: rollback.link must be an absolute, clean path, got \"svc/current\" (rendered with sample data)"},
		{"invalid-many.yml", "testdata/invalid-many.yml:3: unknown key \"windw\"\ntestdata/invalid-many.yml:4: interval: invalid duration \"30 seconds\" (use Prometheus syntax such as 500ms, 30s, 10m, 1h)\ntestdata/invalid-many.yml:6: check \"orders\" has no threshold: set min, max, min_ratio or max_ratio, or compare\ntestdata/invalid-many.yml:7: check \"orders\": query is not valid PromQL: 1:27: parse error: unclosed left parenthesis\ntestdata/invalid-many.yml:8: duplicate check name \"orders\" (first at line 6)\ntestdata/invalid-many.yml:10: check \"orders\": min 5 is greater than max 1\ntestdata/invalid-many.yml:12: check \"orders\": no_data must be inconclusive, fail or pass, got \"maybe\"\ntestdata/invalid-many.yml:13: rollback.link is required unless rollback.mode is publish\ntestdata/invalid-many.yml:15: rollback.parallelism must be at least 1, got 0\ntestdata/invalid-many.yml:16: rollback.after[0] is empty: it is the program to run\ntestdata/invalid-many.yml:16: rollback.after[1]: template fails with sample data: rollback.after[1]:1:3: executing \"rollback.after[1]\" at <.Nope>: can't evaluate field Nope in type policy.TemplateData"},
		{"invalid-match-glob.yml", "testdata/invalid-match-glob.yml:3: match.service: bad glob \"shop-[\": syntax error in pattern"},
		{"invalid-min-greater-than-max.yml", "testdata/invalid-min-greater-than-max.yml:6: check \"orders\": min 100 is greater than max 50"},
		{"invalid-mode.yml", "testdata/invalid-mode.yml:6: rollback.mode must be execute, publish or ask, got \"dry-run\""},
		{"invalid-hold.yml", "testdata/invalid-hold.yml:6: rollback.mode: ask waits for `watcher approve` until rollback.hold ends: set rollback.hold (such as 15m)\n" +
			"testdata/invalid-hold.yml:14: rollback.hold: duration must not be negative, got -1m\n" +
			"testdata/invalid-hold.yml:15: rollback.cooldown: duration must not be negative, got -5m\n" +
			"testdata/invalid-hold.yml:16: rollback.ask_default must be keep or rollback, got \"yes\"\n" +
			"testdata/invalid-hold.yml:17: rollback.verify.within is required: how long after the rollback the failed checks must have recovered (such as 5m)\n" +
			"testdata/invalid-hold.yml:24: rollback.verify.within must be positive, got 0s\n" +
			"testdata/invalid-hold.yml:24: rollback.verify needs a rollback to verify, and mode: publish executes none"},
		{"invalid-negative-duration.yml", "testdata/invalid-negative-duration.yml:9: rollback.data.timeout: duration must not be negative, got -1m"},
		{"invalid-no-checks.yml", "testdata/invalid-no-checks.yml:2: policy \"shop\" has no checks"},
		{"invalid-no-data.yml", "testdata/invalid-no-data.yml:7: check \"orders\": no_data must be inconclusive, fail or pass, got \"ignore\""},
		{"invalid-no-threshold.yml", "testdata/invalid-no-threshold.yml:4: check \"up\" has no threshold: set min, max, min_ratio or max_ratio, or compare"},
		{"invalid-not-a-number.yml", "testdata/invalid-not-a-number.yml:6: min: expected a number, got \"lots\""},
		{"invalid-on-inconclusive.yml", "testdata/invalid-on-inconclusive.yml:3: on_inconclusive must be keep or rollback, got \"ignore\""},
		{"invalid-on-marginal.yml", "testdata/invalid-on-marginal.yml:4: on_marginal: ask waits for `watcher approve` until rollback.hold ends: set rollback.hold (such as 15m)\ntestdata/invalid-on-marginal.yml:10: on_marginal must be keep, rollback or ask, got \"rolback\""},
		{"invalid-parallelism.yml", "testdata/invalid-parallelism.yml:7: rollback.parallelism must be at least 1, got -1"},
		{"invalid-policy-no-name.yml", "testdata/invalid-policy-no-name.yml:2: policy has no name"},
		{"invalid-promql.yml", "testdata/invalid-promql.yml:5: check \"orders\": query is not valid PromQL: 1:42: parse error: unclosed left parenthesis (in the query rendered with sample data: sum(rate(orders_total{service=\"svc\"}[5m]))"},
		{"invalid-query-unquoted.yml", "testdata/invalid-query-unquoted.yml:5: check \"unquoted\": bad template: query:1:33: {{.Service}}: prints outside a string literal: in a query, what a template prints must be inside \"...\" or '...', such as team=\"{{ .Labels.team }}\", where it is escaped; elsewhere a deploy's value could rewrite the query\ntestdata/invalid-query-unquoted.yml:8: check \"metric-name\": bad template: query:1:12: {{.Labels.team}}: prints outside a string literal: in a query, what a template prints must be inside \"...\" or '...', such as team=\"{{ .Labels.team }}\", where it is escaped; elsewhere a deploy's value could rewrite the query\ntestdata/invalid-query-unquoted.yml:11: check \"raw-string\": bad template: query:1:31: {{.Labels.team}}: prints inside a `...` string, where nothing can be escaped: use \"...\" instead\ntestdata/invalid-query-unquoted.yml:14: check \"branches\": bad template: query:1:24: {{if .Labels.team}}\"{{.Labels.team}}\"{{else}}\"none{{end}}: the branches of {{if}} end in different places of the query (one inside a string literal, one outside): open and close each literal in the same branch"},
		{"invalid-query-uses-host.yml", "testdata/invalid-query-uses-host.yml:5: check \"orders\": a query cannot use .Host: it runs once for all hosts"},
		{"invalid-range-vector.yml", "testdata/invalid-range-vector.yml:5: check \"orders\": query returns a range vector; a check needs an instant vector or a scalar (such as rate(x[5m]) rather than x[5m])"},
		{"invalid-ratio-not-positive.yml", "testdata/invalid-ratio-not-positive.yml:7: check \"orders\": max_ratio must be positive, got 0"},
		{"invalid-ratio-without-baseline.yml", "testdata/invalid-ratio-without-baseline.yml:6: check \"orders\": min_ratio needs a baseline: set baseline to pre_deploy or {offset: <duration>}"},
		{"invalid-releases-dir.yml", "testdata/invalid-releases-dir.yml:7: rollback.releases_dir must be an absolute, clean path, got \"/srv/shop/../releases\""},
		{"invalid-score.yml", "testdata/invalid-score.yml:3: score.marginal 80 is greater than score.pass 50\ntestdata/invalid-score.yml:5: check \"up\": weight must be positive, got 0\ntestdata/invalid-score.yml:8: score.marginal is required: the score (0 to 100, at most pass) below which the run fails at once; at or above it but below pass the run is marginal\ntestdata/invalid-score.yml:9: score.pass must be from 0 to 100, got 120\ntestdata/invalid-score.yml:11: check \"up\": weight must be positive, got -2\ntestdata/invalid-score.yml:14: on_marginal: rollback needs a score: only a scored policy's run can end marginal (set score: {pass: 80, marginal: 50}, or leave on_marginal out)"},
		{"invalid-template-exec.yml", "testdata/invalid-template-exec.yml:5: check \"orders\": template fails with sample data: query:1:34: executing \"query\" at <.Servce>: can't evaluate field Servce in type policy.TemplateData"},
		{"invalid-template-parse.yml", "testdata/invalid-template-parse.yml:5: check \"orders\": bad template: query:1: unexpected \"}\" in operand"},
		{"invalid-unknown-key-nested.yml", "testdata/invalid-unknown-key-nested.yml:4: check \"up\" has no threshold: set min, max, min_ratio or max_ratio, or compare\ntestdata/invalid-unknown-key-nested.yml:6: unknown key \"minimum\"\ntestdata/invalid-unknown-key-nested.yml:10: unknown key \"usr\""},
		{"invalid-unknown-key.yml", "testdata/invalid-unknown-key.yml:3: unknown key \"windw\""},
		{"invalid-yaml-syntax.yml", "testdata/invalid-yaml-syntax.yml:4: invalid YAML: mapping values are not allowed in this context"},
		{"invalid-zero-interval.yml", "testdata/invalid-zero-interval.yml:3: interval must be positive, got 0s"},
	}
	files, err := filepath.Glob("testdata/invalid-*.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !slices.ContainsFunc(tests, func(tc test) bool { return tc.file == filepath.Base(f) }) {
			t.Errorf("%s has no entry in the table", f)
		}
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			_, err := Load(filepath.Join("testdata", tc.file))
			if err == nil {
				t.Fatal("Load succeeded")
			}
			if _, ok := errors.AsType[*LoadError](err); !ok {
				t.Errorf("error is a %T, want *LoadError", err)
			}
			if err.Error() != tc.want {
				t.Errorf("error:\n%s\nwant:\n%s", err, tc.want)
			}
		})
	}
}

func TestLoadExampleRules(t *testing.T) {
	s := mustLoad(t, "../../rules/*.yml")
	if len(s.Files) < 2 {
		t.Errorf("Files = %q, want shop.yml and staging.yml", s.Files)
	}
	if p := s.Match("shop", "production"); p == nil || p.Name != "shop-orders" {
		t.Errorf("shop in production matched %v, want shop-orders", p)
	}
	p := s.Match("billing", "staging")
	if p == nil {
		t.Fatal("billing in staging matched nothing")
	}
	link, err := p.Rollback.RenderLink(TemplateData{Service: "billing"})
	if err != nil || link != "/srv/billing/current" {
		t.Errorf("staging link = %q, %v", link, err)
	}
}

// TestLoadReportsEverything checks that Load goes on after a problem, across
// patterns and files, and lists problems by file and line.
func TestLoadReportsEverything(t *testing.T) {
	dir := t.TempDir()
	a := writeFile(t, dir, "a.yml", `
policies:
  - name: shop
    checks: [{name: c, query: up, min: 1}]
    rollback: {link: /srv/shop/current}
`)
	b := writeFile(t, dir, "b.yml", `
policies:
  - name: other
    window: 0s
    checks: [{name: c, query: up}]
    rollback: {link: /srv/other/current}
  - name: shop
    checks: [{name: c, query: up, min: 1}]
    rollback: {link: /srv/shop/current}
`)
	c := writeFile(t, dir, "c.yml", "policies: [\n")
	_, err := Load(filepath.Join(dir, "*.yml"), filepath.Join(dir, "none-*.yml"), filepath.Join(dir, "[x"))
	want := strings.Join([]string{
		`pattern "` + filepath.Join(dir, "none-*.yml") + `" matches no files`,
		`bad pattern "` + filepath.Join(dir, "[x") + `": syntax error in pattern`,
		b + `:4: window must be positive, got 0s`,
		b + `:5: check "c" has no threshold: set min, max, min_ratio or max_ratio, or compare`,
		b + `:7: duplicate policy name "shop" (first defined at ` + a + `:3)`,
		c + `:1: invalid YAML: did not find expected node content`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("error:\n%v\nwant:\n%s", err, want)
	}
	le, ok := errors.AsType[*LoadError](err)
	if !ok || len(le.Problems) != 6 || le.Problems[2] != (Problem{File: b, Line: 4, Message: "window must be positive, got 0s"}) {
		t.Errorf("problems: %+v", le)
	}
}

// TestLoadWrongShapes checks values of the wrong kind: each gives one
// message, not also "x is required" for the value it could not use.
func TestLoadWrongShapes(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"policies:\n  - name: a\n    checks: foo\n    rollback: foo\n",
			"f.yml:3: checks: expected a list, got \"foo\"\n" +
				"f.yml:4: rollback: expected a mapping, got \"foo\""},
		{"policies:\n  - name: a\n    match: [a]\n    checks: [{name: c, query: up, min: [1]}]\n    rollback: {link: /a/b, data: foo, after: {a: b}, hosts: [\"\"]}\n",
			"f.yml:3: match: expected a mapping, got a list\n" +
				"f.yml:4: min: expected a number, got a list\n" +
				"f.yml:5: rollback.data: expected a mapping, got \"foo\"\n" +
				"f.yml:5: rollback.after: expected a list, got a mapping\n" +
				"f.yml:5: rollback.hosts[0] is empty"},
		{"policies: {name: a}\n", "f.yml:1: policies: expected a list, got a mapping"},
		{"- a\n", "f.yml:1: expected a mapping, got a list"},
		{"policies:\n  - name: a\n    checks: [foo, ~]\n    rollback: {link: /a/b, ssh: {port: 70000, connect_timeout: 0s}}\n",
			"f.yml:3: expected a mapping, got \"foo\"\n" +
				"f.yml:3: empty check\n" +
				"f.yml:4: rollback.ssh.port must be between 1 and 65535, got 70000\n" +
				"f.yml:4: rollback.ssh.connect_timeout must be positive, got 0s"},
		{"policies:\n  - name: a\n    checks: [{name: c, query: up, min_ratio: 1, baseline: {offset: 1d, ofset: 2d}}]\n    rollback: {link: /a/b}\n",
			`f.yml:3: baseline: unknown key "ofset" (want pre_deploy or {offset: <duration>})`},
		{"policies:\n  - name: a\n    checks: [{name: c, query: up, min: 1, failure_limit: 1.5}]\n    rollback: {link: /a/b, parallelism: 2x}\n  -\n",
			"f.yml:3: failure_limit: expected an integer, got \"1.5\"\n" +
				"f.yml:4: rollback.parallelism: expected an integer, got \"2x\"\n" +
				"f.yml:5: empty policy"},
		{"policies:\n  - name: a\n    checks: [{name: c, query: '\"x\"', min: 1}, {name: d, query: up, max: .nan}]\n    rollback: {link: ''}\n",
			"f.yml:3: max: expected a number, got \".nan\"\n" +
				"f.yml:3: check \"c\": query returns a string; a check needs an instant vector or a scalar\n" +
				"f.yml:4: rollback.link is required unless rollback.mode is publish"},
		{"policies:\n  - name: a\n    on_inconclusive: [keep]\n    checks: [{name: c, query: up, min: 1, dry_run: 1, each: {}, aggregate: [max]}]\n    rollback: {link: /a/b}\n",
			"f.yml:3: on_inconclusive: expected a string, got a list\n" +
				"f.yml:4: dry_run: expected true or false, got \"1\"\n" +
				"f.yml:4: each: expected true or false, got a mapping\n" +
				"f.yml:4: aggregate: expected a string, got a list"},
		{"policies: []\n---\npolicies: []\n", "f.yml:2: a rules file holds one YAML document, found another"},
		{"policies: *nope\n", "f.yml:1: invalid YAML: unknown anchor 'nope' referenced"},
	} {
		_, problems := decodeFile("f.yml", []byte(tc.text))
		if got := (&LoadError{problems}).Error(); got != tc.want {
			t.Errorf("%s\ngot:\n%s\nwant:\n%s", tc.text, got, tc.want)
		}
	}
}

func TestLoadFiles(t *testing.T) {
	dir := t.TempDir()
	good := "policies:\n  - {name: NAME, checks: [{name: c, query: up, min: 1}], rollback: {link: /srv/x/current}}\n"
	a := writeFile(t, dir, "a.yml", strings.Replace(good, "NAME", "a", 1))
	b := writeFile(t, dir, "b.yml", strings.Replace(good, "NAME", "b", 1))
	writeFile(t, dir, "empty.yml", "# nothing yet\n")

	// A file named twice is loaded once, and files go by name whatever the
	// order of the patterns.
	s := mustLoad(t, b, filepath.Join(dir, "*.yml"), a)
	if want := []string{a, b, filepath.Join(dir, "empty.yml")}; !slices.Equal(s.Files, want) {
		t.Errorf("Files = %q, want %q", s.Files, want)
	}
	if len(s.Policies) != 2 || s.Policies[0].Name != "a" || s.Policies[1].Name != "b" {
		t.Errorf("policies out of order")
	}

	if _, err := Load(); err == nil || err.Error() != "no rules files given" {
		t.Errorf("Load() = %v", err)
	}
	sub := filepath.Join(dir, "sub.yml")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(sub); err == nil || err.Error() != sub+": cannot read: is a directory" {
		t.Errorf("Load(dir) = %v", err)
	}
}

func TestLoadSSHPaths(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	dir := t.TempDir()
	f := writeFile(t, dir, "p.yml", `
policies:
  - name: p
    checks: [{name: c, query: up, min: 1}]
    rollback:
      link: /srv/app/current
      ssh: {identity_file: keys/deploy, known_hosts: ~/.ssh/known_hosts}
`)
	ssh := mustLoad(t, f).Policies[0].Rollback.SSH
	if want := filepath.Join(dir, "keys/deploy"); ssh.IdentityFile != want {
		t.Errorf("identity_file = %q, want %q", ssh.IdentityFile, want)
	}
	if want := filepath.Join(home, ".ssh/known_hosts"); ssh.KnownHosts != want {
		t.Errorf("known_hosts = %q, want %q", ssh.KnownHosts, want)
	}

	writeFile(t, dir, "p.yml", `
policies:
  - name: p
    checks: [{name: c, query: up, min: 1}]
    rollback:
      link: /srv/app/current
      ssh: {identity_file: ~deploy/.ssh/id}
`)
	_, err := Load(f)
	if want := f + `:7: rollback.ssh.identity_file: cannot expand "~deploy/.ssh/id": only ~/ (your own home directory) is supported`; err == nil || err.Error() != want {
		t.Errorf("error:\n%v\nwant:\n%s", err, want)
	}
}

// Anchors and merge keys let policies share checks; they stay strict.
func TestLoadAliases(t *testing.T) {
	dir := t.TempDir()
	f := writeFile(t, dir, "p.yml", `
policies:
  - &a
    name: a
    window: 5m
    checks:
      - &up {name: up, query: up, min: 1}
    rollback: {link: /srv/app/current}
  - <<: *a
    name: b
    window: 7m
    checks: [*up, {name: down, query: up, max: 0}]
`)
	s := mustLoad(t, f)
	a, b := s.Policies[0], s.Policies[1]
	if a.Window != dur(5*time.Minute) || b.Window != dur(7*time.Minute) || b.Rollback.Link != "/srv/app/current" || len(b.Checks) != 2 {
		t.Errorf("merged policy: %+v", *b)
	}

	writeFile(t, dir, "p.yml", `
common: &common {window: 5m}
policies: []
`)
	if _, err := Load(f); err == nil || err.Error() != f+`:2: unknown key "common"` {
		t.Errorf("error: %v", err)
	}

	// Each level of merges multiplies the work by ten; the decoder must
	// give up rather than take forever.
	var laughs strings.Builder
	laughs.WriteString("policies:\n  - name: x\n    checks:\n      - &c0 {name: c, query: up, min: 1}\n")
	for i := 1; i < 9; i++ {
		fmt.Fprintf(&laughs, "      - &c%d {<<: [%s]}\n", i, strings.Repeat(fmt.Sprintf("*c%d, ", i-1), 9)+fmt.Sprintf("*c%d", i-1))
	}
	_, problems := decodeFile("laughs.yml", []byte(laughs.String()))
	if !slices.ContainsFunc(problems, func(p Problem) bool { return strings.HasPrefix(p.Message, "document too large") }) {
		t.Errorf("problems with a billion laughs: %v", problems)
	}
}

// TestLoadCompare: every form of comparison and a score, with what each
// leaves out filled in from the defaults.
func TestLoadCompare(t *testing.T) {
	p := mustLoad(t, "testdata/good-compare.yml").Policies[0]
	if p.Score == nil || *p.Score != (Score{Pass: 80, Marginal: 50}) || p.OnMarginal != OnMarginalRollback {
		t.Errorf("score %v, on_marginal %q", p.Score, p.OnMarginal)
	}
	want := []struct {
		weight   float64
		critical bool
		compare  Compare
	}{
		{2, false, Compare{With: CompareWith{Kind: WithPreDeploy}, Lookback: dur(time.Hour), Step: dur(30 * time.Second),
			Direction: DirectionIncrease, Margin: float(0.2), Confidence: 0.98, MinSamples: 20}},
		// lookback: the window; step: 15s; confidence 0.95; min_samples 10.
		{1, false, Compare{With: CompareWith{Kind: WithWeeks, Weeks: 3}, Lookback: dur(30 * time.Minute), Step: dur(15 * time.Second),
			Direction: DirectionDecrease, Margin: float(0.1), Confidence: 0.95, MinSamples: 10}},
		// counts: direction increase; min_total given, no min_samples; step 30s.
		{3, true, Compare{With: CompareWith{Kind: WithOffset, Offset: dur(24 * time.Hour)}, Lookback: dur(30 * time.Minute), Step: dur(30 * time.Second),
			Direction: DirectionIncrease, Margin: float(0.5), Confidence: 0.99, MinTotal: 200,
			Errors: `sum(increase(checkout_errors_total{service="{{ .Service }}"}[{{ .Range }}]))`,
			Total:  `sum(increase(checkout_requests_total{service="{{ .Service }}"}[{{ .Range }}]))`}},
		{1, false, Compare{With: CompareWith{Kind: WithCanary}, CanaryLabel: "release", Lookback: dur(30 * time.Minute), Step: dur(30 * time.Second),
			Direction: DirectionIncrease, Margin: float(0), Confidence: 0.95, MinTotal: 100,
			Errors: `sum by (release) (increase(checkout_errors_total[{{ .Range }}]))`,
			Total:  `sum by (release) (increase(checkout_requests_total[{{ .Range }}]))`}},
		// canary_label: version; lookback is accepted and not used.
		{1, false, Compare{With: CompareWith{Kind: WithCanary}, CanaryLabel: "version", Lookback: dur(5 * time.Minute), Step: dur(15 * time.Second),
			Direction: DirectionEither, Margin: float(0.3), Confidence: 0.95, MinSamples: 10}},
	}
	got := stripTemplates([]*Policy{p})[0].Checks
	if len(got) != len(want) {
		t.Fatalf("%d checks, want %d", len(got), len(want))
	}
	for i, w := range want {
		c := got[i]
		if c.Weight != w.weight || c.Critical != w.critical || c.Compare == nil || !reflect.DeepEqual(*c.Compare, w.compare) {
			t.Errorf("check %s: weight %v, critical %v, compare\n%+v\nwant\n%+v", c.Name, c.Weight, c.Critical, c.Compare, w.compare)
		}
	}
	if p.Checks[0].Max == nil || *p.Checks[0].Max != 2 {
		t.Errorf("the threshold besides the comparison: max %v", p.Checks[0].Max)
	}

	// A step longer than 15s would leave a look without a new sample; an
	// unset step takes the interval when that is shorter.
	q := loadOne(t, `
policies:
  - name: fast
    window: 1m
    interval: 5s
    checks: [{name: c, query: up, compare: {with: pre_deploy, direction: decrease, margin: 0.1}}]
    rollback: {mode: publish}
`)
	if cmp := q.Checks[0].Compare; cmp.Step != dur(5*time.Second) || cmp.Lookback != dur(time.Minute) {
		t.Errorf("step %v, lookback %v; want 5s (the interval) and 1m (the window)", cmp.Step, cmp.Lookback)
	}
	if q.Score != nil || q.OnMarginal != OnMarginalKeep || q.Checks[0].Weight != 1 || q.Checks[0].Critical {
		t.Errorf("score defaults: %v %q weight %v critical %v", q.Score, q.OnMarginal, q.Checks[0].Weight, q.Checks[0].Critical)
	}
}
