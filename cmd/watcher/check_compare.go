package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/watch"
)

// previewAgo (an hour: printComparisonNote says so) is when `watcher check --prometheus.url` assumes the deploy
// happened: a comparison needs time after the deploy to gather samples,
// which a deploy that happens now has not had.
const previewAgo = time.Hour

// previewQueryTimeout bounds one query of a comparison preview, as the
// instant queries of the preview are bounded.
const previewQueryTimeout = 30 * time.Second

// printComparisonNote says, above a policy's table, what the comparison
// rows assume.
func printComparisonNote(w io.Writer, deployed time.Time, version string) {
	fmt.Fprintf(w, "  comparisons as if version %q had been deployed at %s, an hour ago, replayed look by look up to now:\n",
		version, deployed.Local().Format("15:04"))
}

// previewComparison replays c's comparison as a run for a deploy at
// deployed would have judged it up to now, and prints its row: the
// after and before sides' medians (or error rates), their ratio, and the
// outcome with the look it came at. It reports whether the comparison
// could be evaluated: false when a query failed or a template did not
// render, as for the instant checks of the preview.
func previewComparison(ctx context.Context, tw io.Writer, q watch.Querier, p *policy.Policy, c *policy.Check, data policy.TemplateData, deployed, now time.Time) bool {
	cmp := c.Compare
	if err := renderCompare(c, data); err != nil {
		fmt.Fprintf(tw, "  %s\t-\t-\t-\t%s\terror\t%s\n", c.Name, cmp.String(), oneLine(err.Error()))
		return false
	}
	pv, err := watch.PreviewComparison(ctx, &stopAtError{q: q}, p, c, data, deployed, now)
	if err != nil {
		// Rendering worked, so the window has no look before now (an
		// initial_delay of an hour or more): nothing to replay, which is
		// no fault of the rules.
		fmt.Fprintf(tw, "  %s\t-\t-\t-\t%s\t-\tnot previewed: %s\n", c.Name, cmp.String(), oneLine(err.Error()))
		return true
	}
	j := pv.Judgement
	reason := j.Reason
	if j.Outcome != policy.Error {
		reason = lookWhen(p, pv, deployed, now) + ": " + reason
	}
	if hint := canaryHint(c, pv, data.Version); hint != "" {
		reason = hint + "; " + reason
	}
	outcome := string(j.Outcome)
	if c.DryRun {
		outcome += " (dry-run)"
	}
	value, baseline, ratio := fmtNum(j.Value), fmtNum(j.Baseline), fmtNum(j.Ratio)
	if d := pv.Detail; d != nil {
		// A side without samples has no median, whatever the judge's
		// arithmetic made of it.
		if d.After.N == 0 {
			value, ratio = "-", "-"
		}
		if d.Before.N == 0 {
			baseline, ratio = "-", "-"
		}
	}
	fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, value, baseline, ratio, cmp.String(), outcome, oneLine(reason))
	return j.Outcome != policy.Error
}

// renderCompare renders the comparison's queries as a run would, so that
// a template that cannot render is told apart from a window that has no
// look to replay (PreviewComparison fails for both).
func renderCompare(c *policy.Check, data policy.TemplateData) error {
	data.Range = model.Duration(c.Compare.Step).String()
	if c.Compare.Counts() {
		if _, err := c.RenderErrors(data); err != nil {
			return err
		}
		_, err := c.RenderTotal(data)
		return err
	}
	_, err := c.RenderQuery(data)
	return err
}

// lookWhen says when, after the deploy, the look was that the preview's
// judgement comes from: the first that failed, else the last one, which
// is the window's end or, while the window would still be open, the last
// look before now. (The judgement's own "look N of M" counts only the
// looks that can be judged.)
func lookWhen(p *policy.Policy, pv watch.Preview, deployed, now time.Time) string {
	at := "+" + model.Duration(pv.At.Sub(deployed).Round(time.Second)).String()
	switch end := deployed.Add(time.Duration(p.Window)); {
	case pv.Judgement.Outcome == policy.Fail:
		return "first failed at " + at
	case end.After(now):
		return fmt.Sprintf("at %s, the last look before now (the window runs to +%s)", at, p.Window)
	default:
		return "at " + at + ", the window's end"
	}
}

// canaryHint explains a canary comparison that found no series of the
// version the preview assumes while the others have data: the usual
// cause is a --version that no series carries.
func canaryHint(c *policy.Check, pv watch.Preview, version string) string {
	d := pv.Detail
	if c.Compare.With.Kind != policy.WithCanary || d == nil || d.After.N > 0 || d.Before.N == 0 {
		return ""
	}
	return fmt.Sprintf("no series with %s=%q: pass --version", c.Compare.CanaryLabel, version)
}

// stopAtError is the preview's querier: after one query has failed it
// fails every other one at once with the same error. A run would record
// an error for such a look and go on; a replay going on would wait a
// query timeout per look on a Prometheus that hangs, for no more news.
type stopAtError struct {
	q watch.Querier

	mu  sync.Mutex
	err error
}

func (s *stopAtError) Query(ctx context.Context, query string, ts time.Time) (model.Vector, error) {
	if err := s.failed(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, previewQueryTimeout)
	defer cancel()
	v, err := s.q.Query(ctx, query, ts)
	return v, s.note(err)
}

func (s *stopAtError) QueryRange(ctx context.Context, query string, start, end time.Time, step time.Duration) (model.Matrix, error) {
	if err := s.failed(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, previewQueryTimeout)
	defer cancel()
	m, err := s.q.QueryRange(ctx, query, start, end, step)
	return m, s.note(err)
}

func (s *stopAtError) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *stopAtError) note(err error) error {
	if err != nil {
		s.mu.Lock()
		if s.err == nil {
			s.err = err
		}
		s.mu.Unlock()
	}
	return err
}

// thresholdsOnly is what c's threshold row judges: its min, max and
// ratios, without its comparison, which has its own row.
func thresholdsOnly(c *policy.Check) string {
	t := *c
	t.Compare = nil
	return strings.TrimSpace(t.Threshold())
}
