package web

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
	"github.com/rollback-watcher/watcher/internal/watch"
)

// fakeSource serves fixed runs and records, and counts the reads.
type fakeSource struct {
	active, recent []watch.RunStatus
	recs           []audit.Record
	err            error
	health         Health

	mu          sync.Mutex
	reads       []audit.Filter
	healthReads int
}

func (f *fakeSource) Runs() (active, recent []watch.RunStatus) { return f.active, f.recent }

func (f *fakeSource) Health(context.Context) Health {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.healthReads++
	return f.health
}

func (f *fakeSource) Records(_ context.Context, flt audit.Filter) ([]audit.Record, error) {
	f.mu.Lock()
	f.reads = append(f.reads, flt)
	f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	var out []audit.Record
	for _, r := range f.recs {
		if (flt.Service == "" || r.Service == flt.Service) && (flt.Environment == "" || r.Environment == flt.Environment) &&
			(flt.RunID == "" || r.RunID == flt.RunID) {
			out = append(out, r)
		}
	}
	if flt.Limit > 0 && len(out) > flt.Limit {
		out = out[len(out)-flt.Limit:]
	}
	return out, nil
}

func (f *fakeSource) readsOf(runID string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.reads {
		if r.RunID == runID {
			n++
		}
	}
	return n
}

var t0 = time.Date(2026, 11, 25, 22, 21, 33, 0, time.UTC)

func fp(v float64) *float64 { return &v }

// measurementRecord is a measurement as the watcher writes it, after a trip
// through JSON (numbers are float64, times are text).
func measurementRecord(run watch.RunStatus, check, threshold string, at time.Time, value *float64, outcome, reason string, fails int) audit.Record {
	d := map[string]any{
		"check": check, "query": `shop_orders_per_minute{service="` + run.Service + `"}`, "eval_time": at.Format(time.RFC3339Nano),
		"value": nil, "threshold": threshold, "outcome": outcome, "reason": reason,
		"counts": map[string]any{"pass": 1.0, "fail": float64(fails), "inconclusive": 0.0, "error": 0.0},
	}
	if value != nil {
		d["value"] = *value
	}
	return audit.Record{Time: at, Kind: audit.Measurement, RunID: run.ID, Service: run.Service, Environment: run.Environment,
		Version: run.Version, Policy: run.Policy, Message: check + " measured", Detail: d}
}

func runRecord(run watch.RunStatus, kind string, at time.Time, msg string, detail map[string]any) audit.Record {
	return audit.Record{Time: at, Kind: kind, RunID: run.ID, DeployID: run.DeployID, Service: run.Service,
		Environment: run.Environment, Version: run.Version, Policy: run.Policy, Message: msg, Detail: detail}
}

// fixture is a failed run of service svc rolled back on one host, an
// active run, and an alert-caused rollback whose alert carries the given
// generator URL and labels.
func fixture(svc, reason, generatorURL string, labels map[string]any) *fakeSource {
	ended := t0.Add(10 * time.Second)
	failed := watch.RunStatus{ID: "01RUNFAILED", DeployID: "d-1", Service: svc, Environment: "production", Version: "2026.11.25-1",
		Policy: "orders", Started: t0, WindowEnd: t0.Add(time.Minute), Ended: &ended, Verdict: watch.VerdictFailed, Reason: reason}
	active := watch.RunStatus{ID: "01RUNACTIVE", DeployID: "d-2", Service: "cart", Environment: "production", Version: "2026.11.25-2",
		Policy: "orders", Started: t0.Add(20 * time.Second), WindowEnd: t0.Add(80 * time.Second), Verdict: watch.VerdictPending,
		Measurements: []*watch.MeasurementStatus{}}
	src := &fakeSource{active: []watch.RunStatus{active}, recent: []watch.RunStatus{failed}}
	add := func(r audit.Record) { src.recs = append(src.recs, r) }
	add(runRecord(failed, audit.RunStarted, t0, "validating", nil))
	vals := []struct {
		v       *float64
		outcome string
		reason  string
	}{{fp(120), "pass", "ok"}, {fp(43.69), "fail", "43.69 < min 50"}, {nil, "inconclusive", "no data"}, {fp(12), "fail", "12 < min 50"}}
	for i, m := range vals {
		add(measurementRecord(failed, "orders-per-minute", "min 50", t0.Add(time.Duration(2*i+2)*time.Second), m.v, m.outcome, m.reason, i))
	}
	add(runRecord(failed, audit.RunFailed, ended, "check orders-per-minute failed: "+reason, map[string]any{
		"checks":     []any{map[string]any{"check": "orders-per-minute", "reason": "12 < min 50"}},
		"request_id": "rb-01RUNFAILED",
	}))
	rb := runRecord(failed, audit.RollbackRequested, ended, "rollback requested", map[string]any{"source": "validation", "reason": reason, "executed": true})
	rb.RequestID = "rb-01RUNFAILED"
	add(rb)
	host := runRecord(failed, audit.RollbackHost, ended.Add(time.Millisecond), "web1: switched", map[string]any{
		"host": "web1.example.com:22", "from": "/srv/shop/releases/2026.11.25-1", "to": "/srv/shop/releases/2026.11.24-3",
		"switched": true, "duration_seconds": 0.000842, "error": ""})
	host.RequestID = "rb-01RUNFAILED"
	add(host)
	done := runRecord(failed, audit.RollbackCompleted, ended.Add(2*time.Millisecond), "rolled back", map[string]any{"from": "2026.11.25-1", "to": "2026.11.24-3"})
	done.RequestID = "rb-01RUNFAILED"
	add(done)

	add(runRecord(active, audit.RunStarted, active.Started, "validating", nil))
	add(measurementRecord(active, "orders-per-minute", "min 50", active.Started.Add(2*time.Second), fp(110), "pass", "ok", 0))
	add(measurementRecord(active, "orders-per-minute", "min 50", active.Started.Add(4*time.Second), fp(95), "pass", "ok", 0))

	alert := audit.Record{Time: t0.Add(30 * time.Second), Kind: audit.RollbackRequested, RequestID: "alert-abc", DeployID: "d-9",
		Service: "billing", Environment: "production", Version: "7", Message: "rollback requested by alert",
		Detail: map[string]any{"source": "alert", "reason": "alert ShopErrorsHigh firing", "executed": true,
			"alert": map[string]any{"name": "ShopErrorsHigh", "fingerprint": "0123456789abcdef", "starts_at": t0.Format(time.RFC3339),
				"generator_url": generatorURL, "labels": labels}}}
	add(alert)
	afail := alert
	afail.Kind, afail.Time = audit.RollbackFailed, alert.Time.Add(time.Second)
	afail.Detail = map[string]any{"error": "web2: no previous release", "hosts": []any{
		map[string]any{"host": "web2", "from": "/srv/billing/releases/7", "to": "", "switched": false, "duration_ns": 1.5e6, "error": "no previous release"}}}
	add(afail)
	return src
}

// get renders the page of src at now.
func get(t *testing.T, src PageSource, now time.Time) (*http.Response, string) {
	t.Helper()
	// The page built directly, for its clock (TestPageRoute covers the
	// route).
	p := newStatusPage(src, nil)
	p.now = func() time.Time { return now }
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	resp := rec.Result()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// svgs returns the page's <svg> elements, each checked to be well-formed
// XML.
func svgs(t *testing.T, body string) []string {
	t.Helper()
	all := regexp.MustCompile(`(?s)<svg .*?</svg>`).FindAllString(body, -1)
	for _, s := range all {
		d := xml.NewDecoder(strings.NewReader(s))
		for {
			_, err := d.Token()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("SVG is not well-formed XML: %v\n%s", err, s)
			}
		}
	}
	return all
}

func TestPageShowsRunsChartsAndRollbacks(t *testing.T) {
	src := fixture("shop", "check orders-per-minute failed: 12 < min 50 (failure 2 of limit 1)",
		"http://prometheus:9090/graph?g0.expr=rate(x[1m])&g0.tab=1", map[string]any{"severity": "page", "service": "billing"})
	resp, body := get(t, src, t0.Add(40*time.Second))
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy = %q", csp)
	}
	for _, want := range []string{
		`<meta http-equiv="refresh" content="5">`, `href="api/v1/runs"`, `href="metrics"`,
		// Runs table.
		"shop", "cart", "2026.11.25-1", "validating", ">failed<", ">rolled back<", "check orders-per-minute failed: 12 &lt; min 50",
		// Rollbacks: per-host results and causes.
		"web1.example.com:22", "2026.11.25-1</span> → <span", "2026.11.24-3", "842µs", `class="yes"`,
		"Cause: failed checks", "<b>orders-per-minute</b>: 12 &lt; min 50",
		"Cause: alert", "ShopErrorsHigh", "0123456789abcdef", `href="http://prometheus:9090/graph?g0.expr=rate%28x[1m]%29&amp;g0.tab=1"`,
		"severity=page", ">rollback failed<", "web2: no previous release", "1.5ms",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	charts := svgs(t, body)
	if len(charts) != 2 {
		t.Fatalf("%d charts, want 2 (one check in each of two runs)", len(charts))
	}
	failedChart := charts[1] // active runs come first
	if !strings.Contains(failedChart, `class="threshold th"`) || !strings.Contains(failedChart, ">min 50<") {
		t.Errorf("failed run's chart has no threshold line labelled min 50:\n%s", failedChart)
	}
	if n := strings.Count(failedChart, `<circle class="pt fail"`); n != 2 {
		t.Errorf("%d failed points, want 2:\n%s", n, failedChart)
	}
	if n := strings.Count(failedChart, `<circle class="pt pass"`); n != 1 {
		t.Errorf("%d passed points, want 1", n)
	}
	if !strings.Contains(charts[0], `class="now"`) {
		t.Errorf("active run's chart has no now line:\n%s", charts[0])
	}
	// Rollbacks newest first: the alert's before the validation's.
	if strings.Index(body, "ShopErrorsHigh") > strings.Index(body, "web1.example.com:22") {
		t.Errorf("rollbacks not newest first")
	}
}

func TestPageEscapesHostileText(t *testing.T) {
	const xss = `<script>alert(1)</script>`
	src := fixture(xss, "reason "+xss, "javascript:alert(1)", map[string]any{"note": xss, "x\"><img src=x onerror=alert(1)>": "v"})
	src.recent[0].Policy = `"><svg onload=alert(1)>`
	for i := range src.recs {
		if src.recs[i].Kind == audit.Measurement {
			src.recs[i].Detail["check"] = `</title><script>alert(2)</script>`
			src.recs[i].Detail["reason"] = xss
		}
	}
	_, body := get(t, src, t0.Add(40*time.Second))
	lower := strings.ToLower(body)
	for _, bad := range []string{"<script", "<img", "<svg onload", `href="javascript:`, "href='javascript:", "href=javascript:"} {
		if strings.Contains(lower, bad) {
			i := strings.Index(lower, bad)
			t.Errorf("page contains %q unescaped: ...%s...", bad, body[max(0, i-80):min(len(body), i+80)])
		}
	}
	for _, want := range []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "(not a web link)", "javascript:alert(1)</code>"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if n := len(regexp.MustCompile(`href="[^"#]`).FindAllString(body, -1)); n != 2 {
		t.Errorf("%d links off the page, want 2 (/api/v1/runs and /metrics): no alert link for a javascript: URL", n)
	}
	svgs(t, body) // still well-formed
}

func TestPageNullValues(t *testing.T) {
	ended := t0.Add(20 * time.Second)
	run := watch.RunStatus{ID: "01NULLS", Service: "shop", Environment: "staging", Version: "v2", Policy: "p",
		Started: t0, WindowEnd: t0.Add(time.Minute), Ended: &ended, Verdict: watch.VerdictInconclusive, Reason: "no data"}
	src := &fakeSource{recent: []watch.RunStatus{run}}
	src.recs = append(src.recs, runRecord(run, audit.RunStarted, t0, "validating", nil))
	for i, v := range []*float64{fp(1), fp(2), nil, nil, fp(3), fp(4), nil} {
		outcome := "pass"
		if v == nil {
			outcome = "inconclusive"
		}
		src.recs = append(src.recs, measurementRecord(run, "ratio", "min_ratio 0.8", t0.Add(time.Duration(i+1)*2*time.Second), v, outcome, "", 0))
	}
	// A check that never had a value.
	for i := range 3 {
		src.recs = append(src.recs, measurementRecord(run, "blind", "max 0.05", t0.Add(time.Duration(i+1)*2*time.Second), nil, "error", "query failed: connection refused", 0))
	}
	_, body := get(t, src, t0.Add(time.Minute))
	charts := svgs(t, body)
	if len(charts) != 2 {
		t.Fatalf("%d charts, want 2", len(charts))
	}
	// min_ratio plots the ratio, which these records lack: every point
	// is a null mark, no line.
	if n := strings.Count(charts[0], `null" d="`); n != 7 {
		t.Errorf("ratio chart: %d null marks, want 7:\n%s", n, charts[0])
	}
	if !strings.Contains(charts[0], ">min_ratio 0.8<") {
		t.Errorf("ratio chart lacks its threshold")
	}
	if n := strings.Count(charts[1], `null" d="`); n != 3 || !strings.Contains(charts[1], "no value in 3 measurement(s)") {
		t.Errorf("blind chart: %d null marks, want 3 and a note:\n%s", n, charts[1])
	}
	if !strings.Contains(body, "query failed: connection refused") {
		t.Errorf("last reason not shown")
	}

	// With values, the gaps split the line: 1,2 | 3,4 (a lone point draws
	// no line).
	for i := range src.recs {
		if d := src.recs[i].Detail; d != nil && d["check"] == "ratio" && d["value"] != nil {
			d["ratio"] = d["value"]
		}
	}
	_, body = get(t, src, t0.Add(time.Minute))
	charts = svgs(t, body)
	if n := strings.Count(charts[0], "<polyline"); n != 2 {
		t.Errorf("%d line segments, want 2 around the gap:\n%s", n, charts[0])
	}
	if n := strings.Count(charts[0], `null" d="`); n != 3 {
		t.Errorf("%d null marks, want 3", n)
	}
	if n := strings.Count(charts[0], `<circle class="pt pass"`); n != 4 {
		t.Errorf("%d points, want 4", n)
	}
}

func TestPageBoundsAndCachesReads(t *testing.T) {
	src := &fakeSource{}
	for i := range 100 {
		e := t0.Add(time.Duration(i) * time.Minute)
		src.recent = append(src.recent, watch.RunStatus{ID: fmt.Sprintf("R%03d", i), Service: "shop", Environment: "production",
			Version: "v", Policy: "p", Started: e, WindowEnd: e.Add(time.Minute), Ended: &e, Verdict: watch.VerdictPassed})
	}
	// The newest records are of an unrelated service: the tail holds
	// none of the runs, which are then read one by one.
	for range pageTailRecords + 10 {
		src.recs = append(src.recs, audit.Record{Time: t0, Kind: audit.AlertReceived, Service: "other", Environment: "production"})
	}
	p := newStatusPage(src, nil)
	now := t0.Add(3 * time.Hour)
	p.now = func() time.Time { return now }
	serve := func() string {
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
		if rec.Code != 200 {
			t.Fatalf("status %d", rec.Code)
		}
		return rec.Body.String()
	}
	body := serve()
	runReads := 0
	for _, r := range src.reads {
		switch {
		case r.RunID != "":
			runReads++
			if r.Limit <= 0 || r.Service != "shop" || r.Environment != "production" {
				t.Errorf("unbounded or unnarrowed run read %+v", r)
			}
		case r.Limit <= 0:
			t.Errorf("unbounded read %+v", r)
		}
	}
	if runReads != pageRecentCharts {
		t.Errorf("%d runs read, want %d (the charted ones)", runReads, pageRecentCharts)
	}
	if n := strings.Count(body, "<tr class=\"\">"); n != pageTableRuns {
		t.Errorf("%d runs in the table, want %d", n, pageTableRuns)
	}
	if !strings.Contains(body, "50 more runs not listed") {
		t.Errorf("no note on the runs left out")
	}
	before := len(src.reads)
	serve()
	if len(src.reads) != before {
		t.Errorf("a page within the cache lifetimes read the audit again: %+v", src.reads[before:])
	}
	now = now.Add(pageFinishedTTL)
	serve()
	if got := src.readsOf("R000"); got != 2 {
		t.Errorf("run read %d times after its cache expired, want 2", got)
	}
}

func TestPageAuditUnreadable(t *testing.T) {
	src := fixture("shop", "r", "", nil)
	src.err = errors.New("nats: <timeout>")
	resp, body := get(t, src, t0.Add(40*time.Second))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for _, want := range []string{"recent audit records not read: nats: &lt;timeout&gt;", "measurements not read from the audit stream", "shop", "cart"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

func TestPageRoute(t *testing.T) {
	src := fixture("shop", "r", "", nil)
	for _, tc := range []struct {
		page PageSource
		path string
		code int
	}{
		{nil, "/", http.StatusNotFound},
		{src, "/", http.StatusOK},
		{src, "/nothing", http.StatusNotFound},
	} {
		h := (&Server{Gatherer: prometheus.NewRegistry(), Runs: src.Runs, Page: tc.page}).Handler()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", tc.path, nil))
		if rec.Code != tc.code {
			t.Errorf("page %v, GET %s: %d, want %d", tc.page != nil, tc.path, rec.Code, tc.code)
		}
	}
}

func TestParseThreshold(t *testing.T) {
	abs, ratio := parseThreshold("min 50, max 200, min_ratio 0.8, max_ratio 3, bogus x")
	if fmt.Sprint(abs) != "[{min 50} {max 200}]" || fmt.Sprint(ratio) != "[{min_ratio 0.8} {max_ratio 3}]" {
		t.Errorf("abs %v ratio %v", abs, ratio)
	}
}

func TestNiceStep(t *testing.T) {
	for _, tc := range []struct{ raw, want float64 }{{0.3, 0.5}, {1, 1}, {1.2, 2}, {2.2, 2.5}, {33, 50}, {0.013, 0.02}, {700, 1000}} {
		if got := niceStep(tc.raw); got != tc.want {
			t.Errorf("niceStep(%v) = %v, want %v", tc.raw, got, tc.want)
		}
	}
}

// TestStreamPageTail reads the newest records without reading the whole
// stream, and the records of one run with audit.Read.
func TestStreamPageTail(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx := context.Background()
	pub := &audit.Publisher{JS: n.JS}
	for i := range 30 {
		run := "A"
		if i%2 == 1 {
			run = "B"
		}
		if err := pub.Record(ctx, audit.Record{Kind: audit.Measurement, RunID: run, Service: "shop", Environment: "production",
			Message: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	src := StreamPage{JS: n.JS}
	recs, err := src.Records(ctx, audit.Filter{Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, r := range recs {
		msgs = append(msgs, r.Message)
	}
	if strings.Join(msgs, ",") != "25,26,27,28,29" {
		t.Errorf("tail = %v, want the last 5", msgs)
	}
	recs, err = src.Records(ctx, audit.Filter{Limit: 100})
	if err != nil || len(recs) != 30 {
		t.Errorf("tail of 100 = %d records (%v), want all 30", len(recs), err)
	}
	recs, err = src.Records(ctx, audit.Filter{Service: "shop", Environment: "production", RunID: "B", Limit: 100})
	if err != nil || len(recs) != 15 || recs[0].Message != "1" {
		t.Errorf("run B = %d records (%v)", len(recs), err)
	}
}

// The page takes a check's thresholds from the numbers its measurements
// carry; only the records of a watcher that did not write them are read
// from the text.
func TestThresholdsOf(t *testing.T) {
	abs, ratio := thresholdsOf(&audit.Thresholds{Min: fp(50), MaxRatio: fp(1.5)}, "not the numbers")
	if len(abs) != 1 || abs[0] != (threshold{"min", 50}) || len(ratio) != 1 || ratio[0] != (threshold{"max_ratio", 1.5}) {
		t.Errorf("from numbers: abs %v ratio %v, want min 50 and max_ratio 1.5", abs, ratio)
	}
	abs, ratio = thresholdsOf(nil, "min 50, max 200")
	if len(abs) != 2 || abs[1] != (threshold{"max", 200}) || len(ratio) != 0 {
		t.Errorf("from text: abs %v ratio %v, want min 50, max 200", abs, ratio)
	}
}

// A request that was not executed says why from its detail, whatever its
// message says.
func TestRollbackNotExecutedNote(t *testing.T) {
	for _, tc := range []struct {
		detail map[string]any
		want   string
	}{
		{map[string]any{"source": "manual", "reason": "r", "executed": false, "dry_run": true, "mode": "execute"}, "not executed: --dry-run"},
		{map[string]any{"source": "manual", "reason": "r", "executed": false, "dry_run": false, "mode": "publish"}, "not executed: policy orders has mode: publish"},
	} {
		r := audit.Record{Time: t0, Kind: audit.RollbackRequested, RequestID: "rb-1", Service: "shop", Environment: "production",
			Policy: "orders", Message: "rollback of shop in production requested by manual: r", Detail: tc.detail}
		gs := rollbacksOf([]audit.Record{r}, t0)
		if len(gs) != 1 || gs[0].Status != "not executed" || gs[0].Note != tc.want {
			t.Errorf("groups %+v, want one not executed with note %q", gs, tc.want)
		}
	}
}

// TestPageLastRatio: a comparison check's latest measurement says its
// ratio to the baseline when it passed, as a failure's reason does, since
// its chart plots the ratio, not the value.
func TestPageLastRatio(t *testing.T) {
	run := watch.RunStatus{ID: "01RATIO", Service: "shop", Environment: "production", Version: "v2", Policy: "p",
		Started: t0, WindowEnd: t0.Add(time.Minute), Verdict: watch.VerdictPending}
	src := &fakeSource{active: []watch.RunStatus{run}}
	pass := measurementRecord(run, "orders-vs-before", "min_ratio 0.5", t0.Add(2*time.Second), fp(33.5556), "pass", "ok", 0)
	pass.Detail["ratio"] = 1.0137
	src.recs = append(src.recs, runRecord(run, audit.RunStarted, t0, "validating", nil), pass)

	_, body := get(t, src, t0.Add(10*time.Second))

	if !strings.Contains(body, `33.56 pass</span> <span class="sub">1.014 x baseline</span>`) {
		i := strings.Index(body, "last: ")
		t.Errorf("the passing ratio check's last measurement does not say its ratio: %s", body[i:min(len(body), i+200)])
	}
}
