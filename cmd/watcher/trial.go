package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/config"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/promclient"
)

type trialFlags struct {
	service, environment, version string
}

// trial runs every check's query now, as if a deploy had just happened, and
// prints what each would get: a way to try a policy before trusting it with
// production. It fails (exit 1) when a query fails, since a run would only
// ever record errors for it.
func trial(ctx context.Context, e *env, cfg *config.Config, set *policy.Set, tf trialFlags) error {
	prom, err := promclient.New(cfg.Prometheus)
	if err != nil {
		return usageErr("%v", err)
	}
	now := time.Now()
	errors := 0
	for _, p := range set.Policies {
		svc, env := pick(tf.service, p.Match.Service), pick(tf.environment, p.Match.Environment)
		if svc == "" || env == "" {
			fmt.Fprintf(e.stdout, "\n%s (%s:%d): skipped: its match is a glob; give --service and --environment to try it\n", p.Name, p.File, p.Line)
			continue
		}
		fmt.Fprintf(e.stdout, "\n%s (%s:%d) for service %s in %s:\n", p.Name, p.File, p.Line, svc, env)
		data := policy.TemplateData{Service: svc, Environment: env, Version: tf.version, PreviousVersion: "previous", Labels: map[string]string{}}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  CHECK\tVALUE\tBASELINE\tRATIO\tTHRESHOLD\tOUTCOME\tREASON")
		for _, c := range p.Checks {
			if c.Compare != nil && c.Compare.Counts() {
				if !trialCounts(ctx, tw, prom, c, data, now) {
					errors++
				}
				continue
			}
			q, err := c.RenderQuery(data)
			if err != nil {
				fmt.Fprintf(tw, "  %s\t-\t-\t-\t%s\terror\t%v\n", c.Name, c.Threshold(), err)
				errors++
				continue
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
			if j.Outcome == policy.Error {
				errors++
			}
			outcome, reason := string(j.Outcome), j.Reason
			if c.Compare != nil {
				// Judge weighs only the thresholds; the comparison's verdict
				// needs both sides' samples, which the preview does not fetch.
				reason += "; " + comparisonNotPreviewed
				if c.Min == nil && c.Max == nil && c.MinRatio == nil && c.MaxRatio == nil && j.Outcome != policy.Error {
					outcome, reason = "-", "value now; "+comparisonNotPreviewed
				}
			}
			if c.DryRun {
				outcome += " (dry-run)"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, fmtNum(j.Value), fmtNum(j.Baseline), fmtNum(j.Ratio),
				c.Threshold(), outcome, oneLine(reason))
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

const comparisonNotPreviewed = "the comparison is not previewed yet"

// trialCounts runs a count comparison's errors and total over the last
// hour and prints them as the error rate, so that a query the server
// refuses shows now. It reports whether both queries ran.
func trialCounts(ctx context.Context, tw io.Writer, prom *promclient.Client, c *policy.Check, data policy.TemplateData, now time.Time) bool {
	data.Range = "1h"
	var sums [2]float64
	for i, render := range []func(policy.TemplateData) (string, error){c.RenderErrors, c.RenderTotal} {
		q, err := render(data)
		var vec model.Vector
		if err == nil {
			tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			vec, err = prom.Query(tctx, q, now)
			cancel()
		}
		if err != nil {
			fmt.Fprintf(tw, "  %s\t-\t-\t-\t%s\terror\t%s\n", c.Name, c.Threshold(), oneLine(err.Error()))
			return false
		}
		for _, s := range vec {
			sums[i] += float64(s.Value)
		}
	}
	rate := math.NaN()
	if sums[1] > 0 {
		rate = sums[0] / sums[1]
	}
	fmt.Fprintf(tw, "  %s\t%s\t-\t-\t%s\t-\t%s errors of %s in the last 1h; %s\n", c.Name, fmtNum(rate), c.Threshold(),
		fmtNum(sums[0]), fmtNum(sums[1]), comparisonNotPreviewed)
	return true
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
