package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rollback-watcher/watcher/internal/config"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/promclient"
)

type trialFlags struct {
	service, environment, version string
}

// trial runs every check's query now, as if a deploy had just happened, and
// prints what each would get: a way to try a policy before trusting it with
// production. A comparison is replayed instead as if the deploy had
// happened previewAgo ago, since it needs time after the deploy. It fails
// (exit 1) when a query fails, since a run would only ever record errors
// for it; a check that would fail is no fault of the rules.
func trial(ctx context.Context, e *env, cfg *config.Config, set *policy.Set, tf trialFlags) error {
	prom, err := promclient.New(cfg.Prometheus)
	if err != nil {
		return usageErr("%v", err)
	}
	now := time.Now()
	// On a whole minute, so that the looks (on multiples of the interval)
	// come at round times after it.
	deployed := now.Add(-previewAgo).Truncate(time.Minute)
	errors := 0
	for _, p := range set.Policies {
		svc, env := pick(tf.service, p.Match.Service), pick(tf.environment, p.Match.Environment)
		if svc == "" || env == "" {
			fmt.Fprintf(e.stdout, "\n%s (%s:%d): skipped: its match is a glob; give --service and --environment to try it\n", p.Name, p.File, p.Line)
			continue
		}
		fmt.Fprintf(e.stdout, "\n%s (%s:%d) for service %s in %s:\n", p.Name, p.File, p.Line, svc, env)
		if slices.ContainsFunc(p.Checks, func(c *policy.Check) bool { return c.Compare != nil }) {
			printComparisonNote(e.stdout, deployed, tf.version)
		}
		data := policy.TemplateData{Service: svc, Environment: env, Version: tf.version, PreviousVersion: "previous", Labels: map[string]string{}}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  CHECK\tVALUE\tBASELINE\tRATIO\tTHRESHOLD\tOUTCOME\tREASON")
		for _, c := range p.Checks {
			ok := true
			if c.Compare == nil || c.HasThresholds() {
				ok = trialThresholds(ctx, tw, prom, c, data, now)
			}
			if c.Compare != nil {
				ok = previewComparison(ctx, tw, prom, p, c, data, deployed, now) && ok
			}
			if !ok {
				errors++
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if errors > 0 {
		return fmt.Errorf("%d check(s) could not be evaluated on %s; see the table above", errors, redactURLs(cfg.Prometheus.URL))
	}
	return nil
}

// trialThresholds runs c's query now and prints how its thresholds judge
// the value. It reports whether the query ran.
func trialThresholds(ctx context.Context, tw io.Writer, prom *promclient.Client, c *policy.Check, data policy.TemplateData, now time.Time) bool {
	threshold := thresholdsOnly(c)
	q, err := c.RenderQuery(data)
	if err != nil {
		fmt.Fprintf(tw, "  %s\t-\t-\t-\t%s\terror\t%v\n", c.Name, threshold, err)
		return false
	}
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	vec, qerr := prom.Query(tctx, q, now)
	var base []policy.Series
	if c.Baseline != nil && qerr == nil {
		at := now // pre_deploy: the deploy is now
		if c.Baseline.Kind != policy.BaselinePreDeploy {
			at = now.Add(-time.Duration(c.Baseline.Offset))
		}
		if bv, err := prom.Query(tctx, q, at); err == nil {
			base = policy.SeriesOf(bv)
		}
	}
	cancel()
	j := c.Judge(policy.SeriesOf(vec), base, qerr)
	outcome := string(j.Outcome)
	if c.DryRun {
		outcome += " (dry-run)"
	}
	fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, fmtNum(j.Value), fmtNum(j.Baseline), fmtNum(j.Ratio),
		threshold, outcome, oneLine(j.Reason))
	return j.Outcome != policy.Error
}

// pick is the flag's value, else the match when it names one thing.
func pick(flag, match string) string {
	if flag != "" {
		return flag
	}
	if match == "" || hasGlob(match) {
		return ""
	}
	return match
}

func hasGlob(s string) bool { return strings.ContainsAny(s, "*?[\\") }

func fmtNum(v float64) string {
	if v != v { // NaN: not available
		return "-"
	}
	return strconv.FormatFloat(v, 'g', 6, 64)
}
