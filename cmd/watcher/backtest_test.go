package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/testutil"
)

// backtestRules: shop is judged by an error ratio threshold and a latency
// comparison with the half hour before the deploy; pay by its orders
// compared with the same span 1 and 2 weeks back, pooled (two weeks pool
// their samples; three or more, their step medians: holidayRules).
const backtestRules = `policies:
  - name: shop
    match: {service: shop, environment: production}
    window: 30m
    interval: 1m
    checks:
      - {name: errors, query: 'bt_errors_ratio{service="{{ .Service }}"}', max: 0.05, failure_limit: 1}
      - name: latency-vs-before
        query: 'bt_latency_seconds{service="{{ .Service }}"}'
        compare: {with: pre_deploy, direction: increase, margin: 0.2}
    rollback: {mode: publish}
  - name: pay
    match: {service: pay, environment: production}
    window: 30m
    interval: 1m
    checks:
      - name: orders-vs-past-weeks
        query: 'sum(bt_orders{service="{{ .Service }}"})'
        compare: {with: {weeks: 2}, step: 1m, direction: either, margin: 0.2}
    rollback: {mode: publish}
`

// inSpan says whether ts is in [from, from+d).
func inSpan(ts, from time.Time, d time.Duration) bool {
	return !ts.Before(from) && ts.Before(from.Add(d))
}

// backtestHistory writes 15 days of pay's orders (100 a minute, half that
// on a holiday two weeks back) and two days of shop's errors and latency,
// with what the deploys did to them and one incident that no deploy
// caused, as OpenMetrics for promtool.
func backtestHistory(om *strings.Builder, now time.Time, at map[string]time.Time) {
	noise := func(ts time.Time, step int64) float64 { return 0.01 * float64((ts.Unix()/step*7)%11) }
	in := inSpan
	om.WriteString("# TYPE bt_orders gauge\n")
	for ts := now.Add(-15 * 24 * time.Hour); ts.Before(now); ts = ts.Add(time.Minute) {
		v := 100 * (1 + noise(ts, 60))
		if in(ts, now.Add(-15*24*time.Hour), 15*time.Hour) {
			v /= 2 // the holiday
		}
		if in(ts, at["p-2"], time.Hour) {
			v *= 0.2 // a bad deploy: orders fall
		}
		fmt.Fprintf(om, "bt_orders{service=\"pay\"} %g %d\n", v, ts.Unix())
	}
	om.WriteString("# TYPE bt_errors_ratio gauge\n")
	for ts := now.Add(-52 * time.Hour); ts.Before(now); ts = ts.Add(30 * time.Second) {
		v := 0.01
		if in(ts, at["s-2"].Add(2*time.Minute), 40*time.Minute) {
			v = 0.2 // a bad deploy: errors from 2 minutes in
		}
		if in(ts, at["s-4"].Add(10*time.Minute), 30*time.Minute) {
			v = 0.3 // an incident elsewhere, 10 minutes after a good deploy
		}
		fmt.Fprintf(om, "bt_errors_ratio{service=\"shop\"} %g %d\n", v, ts.Unix())
	}
	om.WriteString("# TYPE bt_latency_seconds gauge\n")
	for ts := now.Add(-52 * time.Hour); ts.Before(now); ts = ts.Add(15 * time.Second) {
		v := 0.2 * (1 + noise(ts, 15))
		if in(ts, at["s-3"], time.Hour) {
			v *= 2 // a bad deploy: twice as slow
		}
		if in(ts, at["s-5"], time.Hour) {
			v *= 1.1 // a bad deploy, but within the comparison's margin
		}
		fmt.Fprintf(om, "bt_latency_seconds{service=\"shop\"} %g %d\n", v, ts.Unix())
	}
}

// TestBacktest replays a deploys file over weeks of history on a real
// Prometheus: a threshold check catches a bad deploy and blames a good
// one for an incident, a comparison with the time before the deploy
// catches a slowdown but not one within its margin, a comparison with past
// weeks catches a drop in orders, and keeps a good deploy whose weeks
// back include a holiday (a baseline of two weeks that disagree is not
// one the deploy is judged worse than). The table, the JSON objects and
// the summary say so; --fail-on-mistakes exits 1 for the false rollback
// and the miss. The subtest "holiday week" replays other deploys over the
// same Prometheus's four weeks with a holiday week in them.
func TestBacktest(t *testing.T) {
	now := time.Now().Truncate(time.Minute)
	at := map[string]time.Time{
		"s-1": now.Add(-50 * time.Hour), "s-2": now.Add(-46 * time.Hour), "s-3": now.Add(-40 * time.Hour),
		"s-4": now.Add(-30 * time.Hour), "s-5": now.Add(-20 * time.Hour),
		"p-1": now.Add(-10 * time.Hour), "p-2": now.Add(-8 * time.Hour), "p-3": now.Add(-6 * time.Hour),
		"c-1": now.Add(-5 * time.Hour), "s-6": now.Add(-5 * time.Minute),
	}
	holiday := now.Add(-15 * 24 * time.Hour)
	season := holidayDeploys(holiday)
	var om strings.Builder
	backtestHistory(&om, now, at)
	holidayHistory(&om, now, season, holiday)
	om.WriteString("# EOF\n")
	prom := testutil.StartPrometheusWithHistory(t, om.String(), testutil.NewExporter(t).URL)
	// One Prometheus for both: promtool writes a block for every two
	// hours of history, and most of this test's time is spent on them.
	t.Run("holiday week", func(t *testing.T) { testBacktestHolidayWeek(t, prom, season) })

	dir := t.TempDir()
	rules, deploys := filepath.Join(dir, "rules.yml"), filepath.Join(dir, "deploys.jsonl")
	writeFile(t, rules, backtestRules)
	var lines strings.Builder
	for _, d := range []struct{ id, service, version, expect string }{
		{"s-1", "shop", "1.1", "good"}, {"s-2", "shop", "1.2", "bad"}, {"s-3", "shop", "1.3", "bad"},
		{"p-1", "pay", "7.1", "good"}, {"s-4", "shop", "1.4", "good"}, {"s-5", "shop", "1.5", "bad"},
		{"p-2", "pay", "7.2", "bad"}, {"p-3", "pay", "7.3", ""}, {"c-1", "checkout", "3.0", ""}, {"s-6", "shop", "1.6", "good"},
	} {
		expect := ""
		if d.expect != "" {
			expect = fmt.Sprintf(`, "expect": %q`, d.expect)
		}
		fmt.Fprintf(&lines, `{"id": %q, "service": %q, "environment": "production", "version": %q, "time": %q%s}`+"\n",
			d.id, d.service, d.version, at[d.id].UTC().Format(time.RFC3339), expect)
	}
	writeFile(t, deploys, lines.String())

	code, out, errOut := cli(t, "backtest", "--rules="+rules, "--prometheus.url="+prom.URL, "--deploys="+deploys)
	if code != 0 {
		t.Fatalf("backtest: exit %d: %s\n%s", code, errOut, out)
	}
	t.Logf("backtest output:\n%s", out)
	words := strings.Join(strings.Fields(out), " ")
	row := func(id string) string { return at[id].UTC().Format(time.RFC3339) }
	for _, w := range []string{
		"SERVICE ENVIRONMENT VERSION TIME POLICY VERDICT AFTER EXPECT CHECK MEASUREMENT",
		"shop production 1.1 " + row("s-1") + " shop passed 30m0s good - window closed healthy:",
		"shop production 1.2 " + row("s-2") + " shop failed 3m0s bad errors errors = 0.2 > max 0.05 (failure 2 of limit 1)",
		"shop production 1.3 " + row("s-3") + " shop failed ",
		"pay production 7.1 " + row("p-1") + " pay passed 30m0s good - window closed healthy:",
		"shop production 1.4 " + row("s-4") + " shop failed 11m0s good: FALSE ROLLBACK errors errors = 0.3 > max 0.05 (failure 2 of limit 1)",
		"shop production 1.5 " + row("s-5") + " shop passed 30m0s bad: MISS - window closed healthy:",
		"pay production 7.2 " + row("p-2") + " pay failed ",
		"pay production 7.3 " + row("p-3") + " pay passed 30m0s - - window closed healthy:",
		"checkout production 3.0 " + row("c-1") + " - skipped - - - no policy matches service checkout in environment production",
		"shop production 1.6 " + row("s-6") + " shop skipped - good - not replayed: the validation window is still open",
		"10 deploys, 7 judged against an expectation (1 more not replayed):",
		"false rollbacks 1 (good deploys it would have rolled back: s-4)",
		"misses 1 (bad deploys it would have kept: s-5)",
		"precision 0.75 (3 of 4 rollbacks were of bad deploys)",
		"recall 0.75 (3 of 4 bad deploys caught)",
		"median time to detection ",
	} {
		if !strings.Contains(words, w) {
			t.Errorf("the table lacks %q", w)
		}
	}
	// The comparisons decide with their numbers: the slowdown as a shift
	// of the median against the half hour before, the drop in orders
	// against the pooled weeks.
	for _, w := range []string{
		" bad latency-vs-before latency-vs-before: median 0.4",
		" bad orders-vs-past-weeks orders-vs-past-weeks: median 2",
	} {
		if !strings.Contains(words, w) || !strings.Contains(words[strings.Index(words, w):], "worse by more than 20%") {
			t.Errorf("the table lacks the comparison %q ... worse by more than 20%%", w)
		}
	}

	code, out, errOut = cli(t, "backtest", "--rules="+rules, "--prometheus.url="+prom.URL, "--deploys="+deploys, "--json")
	if code != 0 {
		t.Fatalf("backtest --json: exit %d: %s\n%s", code, errOut, out)
	}
	var objs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %s", l)
		}
		objs = append(objs, m)
	}
	if len(objs) != 11 {
		t.Fatalf("%d JSON objects, want 10 deploys and the summary:\n%s", len(objs), out)
	}
	keys := func(m map[string]any) string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		return strings.Join(sortedStrings(ks), ",")
	}
	for _, m := range objs[:10] {
		if k := keys(m); k != "check,decided_after_seconds,deploy_id,environment,policy,service,verdict,version" {
			t.Errorf("deploy object with keys %s: %v", k, m)
		}
	}
	for _, w := range []struct {
		i       int
		id      string
		verdict string
		check   any
		after   any
	}{
		{1, "s-2", "failed", "errors", 180.0}, {4, "s-4", "failed", "errors", 660.0}, {5, "s-5", "passed", nil, 1800.0},
		{2, "s-3", "failed", "latency-vs-before", objs[2]["decided_after_seconds"]},
		{6, "p-2", "failed", "orders-vs-past-weeks", objs[6]["decided_after_seconds"]},
		{8, "c-1", "skipped", nil, nil}, {9, "s-6", "skipped", nil, nil},
	} {
		m := objs[w.i]
		if m["deploy_id"] != w.id || m["verdict"] != w.verdict || m["check"] != w.check || m["decided_after_seconds"] != w.after {
			t.Errorf("JSON object %d: %v; want %s %s by %v after %v", w.i, m, w.id, w.verdict, w.check, w.after)
		}
	}
	for _, i := range []int{2, 6} {
		if s, ok := objs[i]["decided_after_seconds"].(float64); !ok || s < 60 || s > 20*60 {
			t.Errorf("%s decided after %v s, want within 20 minutes", objs[i]["deploy_id"], objs[i]["decided_after_seconds"])
		}
	}
	sum, _ := json.Marshal(objs[10])
	if string(sum) != `{"deploys":10,"false_rollbacks":1,"misses":1,"precision":0.75,"recall":0.75,"summary":true}` {
		t.Errorf("summary %s", sum)
	}

	code, _, errOut = cli(t, "backtest", "--rules="+rules, "--prometheus.url="+prom.URL, "--deploys="+deploys, "--json", "--fail-on-mistakes")
	if code != 1 || !strings.Contains(errOut, "--fail-on-mistakes: 1 false rollbacks, 1 misses") {
		t.Errorf("--fail-on-mistakes: exit %d, stderr %q; want 1 naming the mistakes", code, errOut)
	}
}

func sortedStrings(s []string) []string {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}

// TestBacktestUsage: the command line's mistakes are exit 2 with one
// line; a deploys file's are exit 1 naming the line.
func TestBacktestUsage(t *testing.T) {
	dir := t.TempDir()
	rules, deploys := filepath.Join(dir, "rules.yml"), filepath.Join(dir, "deploys.jsonl")
	writeFile(t, rules, backtestRules)
	writeFile(t, deploys, `{"id": "d-1", "service": "shop", "environment": "production", "version": "1.1"}`+"\n")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--prometheus.url=http://127.0.0.1:1"}, 2, "no deploys to replay: give --deploys=FILE, or --from=T --to=T"},
		{[]string{"--prometheus.url=http://127.0.0.1:1", "--deploys=" + deploys, "--from=2026-11-01T00:00:00Z"}, 2, "either --deploys=FILE or --from and --to, not both"},
		{[]string{"--prometheus.url=http://127.0.0.1:1", "--from=2026-11-01T00:00:00Z"}, 2, "--to is missing"},
		{[]string{"--prometheus.url=http://127.0.0.1:1", "--from=yesterday", "--to=2026-11-01T00:00:00Z"}, 2, `--from="yesterday": want an RFC 3339 time`},
		{[]string{"--prometheus.url=http://127.0.0.1:1", "--from=2026-11-02T00:00:00Z", "--to=2026-11-01T00:00:00Z"}, 2, "is not before --to"},
		{[]string{"--deploys=" + deploys}, 2, "--prometheus.url is required"},
		{[]string{"--prometheus.url=http://127.0.0.1:1", "--deploys=" + deploys}, 1, deploys + `:1: deploy d-1 has no "time"`},
	} {
		code, _, errOut := cli(t, append([]string{"backtest", "--rules=" + rules}, c.args...)...)
		if code != c.code || !strings.Contains(errOut, c.want) || strings.Count(strings.TrimSpace(errOut), "\n") > 0 {
			t.Errorf("backtest %s: exit %d, stderr %q; want %d and one line with %q", strings.Join(c.args, " "), code, errOut, c.code, c.want)
		}
	}
}

// holidayRules: market is judged by its error ratio and by its orders
// against the same half hour of the three weeks before, step by step by
// their median.
const holidayRules = `policies:
  - name: market
    match: {service: market, environment: production}
    window: 30m
    interval: 1m
    checks:
      - {name: errors, query: 'bt_market_errors_ratio{service="{{ .Service }}"}', max: 0.05, failure_limit: 1}
      - name: orders-vs-3-weeks
        query: 'sum(bt_market_orders{service="{{ .Service }}"})'
        compare: {with: {weeks: 3}, step: 1m, direction: decrease, margin: 0.2}
    rollback: {mode: publish}
`

// holidayDeploys are market's deploys after a holiday week that began at
// holiday.
func holidayDeploys(holiday time.Time) map[string]time.Time {
	day := 24 * time.Hour
	return map[string]time.Time{
		// A week and a day after the holiday began: one week back is
		// the holiday's.
		"m-1": holiday.Add(8*day + 2*time.Hour),
		"m-2": holiday.Add(9 * day),
		"m-3": holiday.Add(10 * day),
		// Nearly two weeks after: one week back is its last day.
		"m-4": holiday.Add(13*day + 5*time.Hour),
	}
}

// holidayHistory writes four weeks of market's orders, about 100 a minute
// but a fifth of that through the holiday week, and its last eight days
// of error ratio, with what the deploys did to them and one
// incident no deploy caused, as OpenMetrics for promtool.
func holidayHistory(om *strings.Builder, now time.Time, at map[string]time.Time, holiday time.Time) {
	// Noise that does not repeat week on week.
	noise := func(ts time.Time) float64 { return 0.01 * float64((ts.Unix()/60*7)%13) }
	om.WriteString("# TYPE bt_market_orders gauge\n")
	for ts := now.Add(-28 * 24 * time.Hour); ts.Before(now); ts = ts.Add(time.Minute) {
		v := 100 * (1 + noise(ts))
		if inSpan(ts, holiday, 7*24*time.Hour) {
			v /= 5
		}
		if inSpan(ts, at["m-2"], time.Hour) {
			v /= 5 // a bad deploy: orders down to the holiday's level
		}
		fmt.Fprintf(om, "bt_market_orders{service=\"market\"} %g %d\n", v, ts.Unix())
	}
	om.WriteString("# TYPE bt_market_errors_ratio gauge\n")
	for ts := now.Add(-8 * 24 * time.Hour); ts.Before(now); ts = ts.Add(time.Minute) {
		v := 0.01 + noise(ts)/10
		if inSpan(ts, at["m-3"].Add(10*time.Minute), 45*time.Minute) {
			v = 0.3 // an incident elsewhere, 10 minutes after a good deploy
		}
		fmt.Fprintf(om, "bt_market_errors_ratio{service=\"market\"} %g %d\n", v, ts.Unix())
	}
}

// testBacktestHolidayWeek replays market's deploys over four weeks of
// history with a whole holiday week in it, against a comparison with
// three weeks back: ordinary deploys whose weeks back include the holiday
// pass (each step's median of three weeks is an ordinary week's), a deploy
// that drops orders to the holiday's level fails, and a good deploy
// followed by an incident is the false rollback the error threshold would
// have caused.
func testBacktestHolidayWeek(t *testing.T, prom *testutil.Prometheus, at map[string]time.Time) {
	dir := t.TempDir()
	rules, deploys := filepath.Join(dir, "rules.yml"), filepath.Join(dir, "deploys.jsonl")
	writeFile(t, rules, holidayRules)
	var lines strings.Builder
	for _, d := range []struct{ id, version, expect string }{
		{"m-1", "8.1", "good"}, {"m-2", "8.2", "bad"}, {"m-3", "8.3", "good"}, {"m-4", "8.4", "good"},
	} {
		fmt.Fprintf(&lines, `{"id": %q, "service": "market", "environment": "production", "version": %q, "time": %q, "expect": %q}`+"\n",
			d.id, d.version, at[d.id].UTC().Format(time.RFC3339), d.expect)
	}
	writeFile(t, deploys, lines.String())

	code, out, errOut := cli(t, "backtest", "--rules="+rules, "--prometheus.url="+prom.URL, "--deploys="+deploys)
	if code != 0 {
		t.Fatalf("backtest: exit %d: %s\n%s", code, errOut, out)
	}
	t.Logf("backtest output:\n%s", out)
	words := strings.Join(strings.Fields(out), " ")
	row := func(id, version string) string {
		return "market production " + version + " " + at[id].UTC().Format(time.RFC3339) + " market "
	}
	for _, w := range []string{
		row("m-1", "8.1") + "passed 30m0s good - window closed healthy:",
		row("m-2", "8.2") + "failed ",
		row("m-3", "8.3") + "failed 11m0s good: FALSE ROLLBACK errors errors = 0.3 > max 0.05 (failure 2 of limit 1)",
		row("m-4", "8.4") + "passed 30m0s good - window closed healthy:",
		"4 deploys, 4 judged against an expectation:",
		"false rollbacks 1 (good deploys it would have rolled back: m-3)",
		"misses 0 ",
		"precision 0.5 (1 of 2 rollbacks were of bad deploys)",
		"recall 1 (1 of 1 bad deploys caught)",
		"median time to detection ",
	} {
		if !strings.Contains(words, w) {
			t.Errorf("the table lacks %q", w)
		}
	}
	// The drop is judged against the weeks' step medians, about 100
	// orders, not against a pool a third of which is the holiday's 20.
	w := " bad orders-vs-3-weeks orders-vs-3-weeks: median 2"
	if i := strings.Index(words, w); i < 0 || !strings.Contains(words[i:], " after vs 10") || !strings.Contains(words[i:], "worse by more than 20%") {
		t.Errorf("the table lacks the comparison %q... after vs 10x before... worse by more than 20%%", w)
	}

	code, out, errOut = cli(t, "backtest", "--rules="+rules, "--prometheus.url="+prom.URL, "--deploys="+deploys, "--json")
	if code != 0 {
		t.Fatalf("backtest --json: exit %d: %s\n%s", code, errOut, out)
	}
	var objs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %s", l)
		}
		objs = append(objs, m)
	}
	if len(objs) != 5 {
		t.Fatalf("%d JSON objects, want 4 deploys and the summary:\n%s", len(objs), out)
	}
	for i, w := range []struct {
		id, verdict string
		check       any
	}{{"m-1", "passed", nil}, {"m-2", "failed", "orders-vs-3-weeks"}, {"m-3", "failed", "errors"}, {"m-4", "passed", nil}} {
		if m := objs[i]; m["deploy_id"] != w.id || m["verdict"] != w.verdict || m["check"] != w.check {
			t.Errorf("JSON object %d: %v; want %s %s by %v", i, m, w.id, w.verdict, w.check)
		}
	}
	if s, ok := objs[1]["decided_after_seconds"].(float64); !ok || s < 60 || s > 20*60 {
		t.Errorf("m-2 decided after %v s, want within 20 minutes", objs[1]["decided_after_seconds"])
	}
	sum, _ := json.Marshal(objs[4])
	if string(sum) != `{"deploys":4,"false_rollbacks":1,"misses":0,"precision":0.5,"recall":1,"summary":true}` {
		t.Errorf("summary %s", sum)
	}
}
