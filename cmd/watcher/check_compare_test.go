package main

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestCheckPreviewsComparisons replays comparisons on a real Prometheus
// whose last two hours are backfilled, as if a deploy had happened an
// hour ago: a flat latency passes, one that doubled 55 minutes ago (a few
// minutes after the assumed deploy) fails at the look that saw it, steady
// errors pass with both sides' counts, and a canary comparison names the
// --version it could not find.
func TestCheckPreviewsComparisons(t *testing.T) {
	now := time.Now()
	shiftAt := now.Add(-55 * time.Minute)
	// Every 15 s on multiples of 15 s, as the comparisons' steps: noise
	// between 1 and 1.1 that depends on the time only, so that both sides
	// of a flat series have the same spread.
	var times []time.Time
	for ts := now.Add(-2 * time.Hour).Truncate(15 * time.Second); ts.Before(now.Add(-5 * time.Second)); ts = ts.Add(15 * time.Second) {
		times = append(times, ts)
	}
	noise := func(ts time.Time, phase int64) float64 { return 1 + 0.01*float64((ts.Unix()/15*7+phase)%11) }
	var om strings.Builder
	om.WriteString("# TYPE preview_latency gauge\n")
	for _, ts := range times {
		fmt.Fprintf(&om, "preview_latency{series=\"flat\"} %g %d\n", noise(ts, 0), ts.Unix())
		shifted := noise(ts, 0)
		if !ts.Before(shiftAt) {
			shifted *= 2
		}
		fmt.Fprintf(&om, "preview_latency{series=\"shifted\"} %g %d\n", shifted, ts.Unix())
	}
	om.WriteString("# TYPE preview_canary_latency gauge\n")
	for _, ts := range times {
		fmt.Fprintf(&om, "preview_canary_latency{instance=\"a\",version=\"v1\"} %g %d\n", noise(ts, 0), ts.Unix())
		fmt.Fprintf(&om, "preview_canary_latency{instance=\"b\",version=\"v2\"} %g %d\n", noise(ts, 3), ts.Unix())
	}
	// 400 requests and 4 errors a minute: 1% on both sides.
	om.WriteString("# TYPE preview_requests counter\n")
	for i, ts := range times {
		fmt.Fprintf(&om, "preview_requests_total %d %d\n", 100*i, ts.Unix())
	}
	om.WriteString("# TYPE preview_errors counter\n")
	for i, ts := range times {
		fmt.Fprintf(&om, "preview_errors_total %d %d\n", i, ts.Unix())
	}
	om.WriteString("# EOF\n")
	exp := testutil.NewExporter(t)
	exp.Set("preview_exporter_up", map[string]string{}, 1)
	prom := testutil.StartPrometheusWithHistory(t, om.String(), exp.URL)

	rules := filepath.Join(t.TempDir(), "rules.yml")
	writeFile(t, rules, `policies:
  - name: latency
    match: {service: shop, environment: prod}
    window: 30m
    interval: 1m
    checks:
      - {name: flat, query: 'preview_latency{series="flat"}', compare: {with: pre_deploy, direction: increase, margin: 0.2}}
      - {name: shifted, query: 'preview_latency{series="shifted"}', compare: {with: pre_deploy, direction: increase, margin: 0.2}}
      - {name: canary, query: 'preview_canary_latency', compare: {with: canary, direction: increase, margin: 0.2}}
    rollback: {mode: publish}
  - name: payments
    match: {service: pay, environment: prod}
    window: 30m
    interval: 1m
    checks:
      - name: errors
        compare:
          with: pre_deploy
          errors: 'sum(increase(preview_errors_total[{{ .Range }}]))'
          total: 'sum(increase(preview_requests_total[{{ .Range }}]))'
          step: 1m
          margin: 0.5
    rollback: {mode: publish}
  - name: long
    match: {service: slow, environment: prod}
    window: 2h
    interval: 5m
    checks:
      - {name: flat-long, query: 'preview_latency{series="flat"}', compare: {with: pre_deploy, lookback: 30m, direction: increase, margin: 0.2}}
    rollback: {mode: publish}
`)
	code, out, errOut := cli(t, "check", "--prometheus.url="+prom.URL, rules)
	// A comparison that would fail is no fault of the rules.
	if code != 0 {
		t.Fatalf("check --prometheus.url: exit %d: %s\n%s", code, errOut, out)
	}
	t.Logf("check output:\n%s", out)
	if !strings.Contains(out, `comparisons as if version "trial" had been deployed at `+now.Add(-time.Hour).Truncate(time.Minute).Local().Format("15:04")+", an hour ago") &&
		!strings.Contains(out, `comparisons as if version "trial" had been deployed at `+now.Add(-time.Hour+time.Minute).Truncate(time.Minute).Local().Format("15:04")+", an hour ago") {
		t.Errorf("no line saying when the deploy is assumed:\n%s", out)
	}

	flat := row(t, out, "flat")
	if flat.outcome != "pass" || !strings.Contains(flat.reason, "at +30m, the window's end: median ") ||
		!strings.Contains(flat.reason, "not worse by more than 20%") {
		t.Errorf("flat latency: %+v, want a pass at the window's end", flat)
	}
	if v, b := flat.num(t, flat.value), flat.num(t, flat.baseline); v < 1 || v > 1.1 || b < 1 || b > 1.1 {
		t.Errorf("flat latency: medians %v after, %v before; want both within the noise, 1 to 1.1", v, b)
	}

	shifted := row(t, out, "shifted")
	m := regexp.MustCompile(`^first failed at \+(\d+)m: median `).FindStringSubmatch(shifted.reason)
	if shifted.outcome != "fail" || m == nil || !strings.Contains(shifted.reason, "worse by more than 20%") {
		t.Fatalf("shifted latency: %+v, want it failed at a look", shifted)
	}
	// The shift came about 5 minutes after the deploy: the after side's
	// median moves once most of its samples are shifted, 10 minutes in.
	if at, _ := strconv.Atoi(m[1]); at < 10 || at > 20 {
		t.Errorf("shifted latency failed at +%dm, want between +10m and +20m: %s", at, shifted.reason)
	}
	if v, b := shifted.num(t, shifted.value), shifted.num(t, shifted.baseline); v < 1.6 || b > 1.1 {
		t.Errorf("shifted latency: medians %v after, %v before; want the after side doubled", v, b)
	}

	canary := row(t, out, "canary")
	if canary.outcome != "inconclusive" || !strings.HasPrefix(canary.reason, `no series with version="trial": pass --version; `) {
		t.Errorf("canary without --version: %+v, want inconclusive with a hint to pass --version", canary)
	}

	errs := row(t, out, "errors")
	n := regexp.MustCompile(`: errors (\d+) of (\d+) \(1%\) after vs (\d+) of (\d+) \(1%\) before: rate x1 \[`).FindStringSubmatch(errs.reason)
	if errs.outcome != "pass" || n == nil || errs.value != "0.01" || errs.baseline != "0.01" || errs.ratio != "1" {
		t.Fatalf("errors: %+v, want a pass at 1%% on both sides", errs)
	}
	// Both sides over 30 minutes (the lookback is the window), 400
	// requests a minute.
	for _, i := range []int{2, 4} {
		if total, _ := strconv.Atoi(n[i]); total < 28*400 || total > 31*400 {
			t.Errorf("errors: %s requests on a side, want about 30 minutes of 400: %s", n[i], errs.reason)
		}
	}

	long := row(t, out, "flat-long")
	if long.outcome != "pass" || !strings.Contains(long.reason, ", the last look before now (the window runs to +2h): median ") {
		t.Errorf("flat latency in a 2h window: %+v, want a pass at the last look before now", long)
	}

	code, out, errOut = cli(t, "check", "--prometheus.url="+prom.URL, "--version=v2", rules)
	if code != 0 {
		t.Fatalf("check --version=v2: exit %d: %s\n%s", code, errOut, out)
	}
	canary = row(t, out, "canary")
	if canary.outcome != "pass" || strings.Contains(canary.reason, "no series with") || !strings.Contains(canary.reason, "not worse by more than 20%") {
		t.Errorf("canary with --version=v2: %+v, want v2 judged against v1 and passed", canary)
	}

	// A comparison query Prometheus refuses is an error of the rules, as
	// for any query: exit 1.
	writeFile(t, rules, `policies:
  - name: bad
    match: {service: shop, environment: prod}
    window: 30m
    interval: 1m
    checks:
      - {name: many-to-many, query: 'preview_latency * on() preview_latency', compare: {with: pre_deploy, direction: increase, margin: 0.2}}
    rollback: {mode: publish}
`)
	code, out, errOut = cli(t, "check", "--prometheus.url="+prom.URL, rules)
	bad := row(t, out, "many-to-many")
	if code != 1 || !strings.Contains(errOut, "1 check(s) could not be evaluated") || bad.outcome != "error" || !strings.HasPrefix(bad.reason, "query failed: ") {
		t.Errorf("a refused comparison query: exit %d, stderr %q, row %+v; want exit 1 and an error row", code, errOut, bad)
	}
}

// previewRow is one row of check's table, its columns split where the
// table aligns them.
type previewRow struct {
	value, baseline, ratio, threshold, outcome, reason string
}

func (previewRow) num(t *testing.T, s string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("column %q is not a number", s)
	}
	return v
}

// row finds the check's row in the table: columns are separated by two
// spaces or more, the THRESHOLD and REASON by their header's position.
func row(t *testing.T, out, check string) previewRow {
	t.Helper()
	lines := strings.Split(out, "\n")
	header := ""
	for _, l := range lines {
		if strings.HasPrefix(l, "  CHECK ") {
			header = l
		}
		if !strings.HasPrefix(l, "  "+check+" ") || header == "" {
			continue
		}
		col := func(name string) int { return strings.Index(header, name) }
		cut := func(from, to string) string {
			end := len(l)
			if to != "" {
				end = col(to)
			}
			return strings.TrimSpace(l[col(from):end])
		}
		return previewRow{
			value: cut("VALUE", "BASELINE"), baseline: cut("BASELINE", "RATIO"), ratio: cut("RATIO", "THRESHOLD"),
			threshold: cut("THRESHOLD", "OUTCOME"), outcome: cut("OUTCOME", "REASON"), reason: cut("REASON", ""),
		}
	}
	t.Fatalf("no row for check %s in:\n%s", check, out)
	return previewRow{}
}
