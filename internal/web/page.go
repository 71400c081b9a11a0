package web

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/watch"
)

// PageSource is what the status page at / shows: the runs a watcher knows
// and the audit records that explain them.
type PageSource interface {
	// Runs lists active runs and recently finished ones, newest first.
	Runs() (active, recent []watch.RunStatus)
	// Records returns the audit records matching f, oldest first.
	Records(ctx context.Context, f audit.Filter) ([]audit.Record, error)
}

// The page's bounds: it is rendered every few seconds by every open
// browser, so what it reads and draws is limited, and the audit reads are
// cached briefly.
const (
	// pageTableRuns is how many runs the runs table lists at most.
	pageTableRuns = 50
	// pageActiveCharts and pageRecentCharts are how many active and
	// finished runs get their measurements charted.
	pageActiveCharts = 20
	pageRecentCharts = 20
	// pageTailRecords is how many of the newest audit records are read
	// for the recent rollbacks and for the charts of runs they cover.
	pageTailRecords = 2000
	// pageRunRecords bounds the records read for one run whose records
	// are older than that tail.
	pageRunRecords = 2000
	// pageChartPoints is how many measurements one chart draws at most
	// (the newest).
	pageChartPoints = 240
	// pageRollbacks is how many recent rollbacks are shown.
	pageRollbacks = 10
	// Cache lifetimes: the tail, a run's own read while it is active,
	// and once it is finished (only its rollback may still add records).
	pageTailTTL     = 2 * time.Second
	pageActiveTTL   = 3 * time.Second
	pageFinishedTTL = 30 * time.Second
	// pageReadTimeout bounds the audit reads of one page.
	pageReadTimeout = 8 * time.Second
	// pageReaders is how many runs' records are read at once.
	pageReaders = 4
)

//go:embed page.html.tmpl
var pageTemplateText string

var pageTemplate = template.Must(template.New("page").Parse(pageTemplateText))

// statusPage serves the status page and caches the audit reads behind it.
type statusPage struct {
	src    PageSource
	logger *slog.Logger
	now    func() time.Time
	// degraded, when set, names what the watcher works without: shown
	// first, as banners.
	degraded func() []string

	// mu makes one page build at a time: concurrent viewers wait for it
	// and then share its cached reads instead of reading the stream again.
	mu   sync.Mutex
	tail cachedRecords
	runs map[string]cachedRecords
}

type cachedRecords struct {
	at   time.Time
	recs []audit.Record
	err  error
}

func newStatusPage(src PageSource, logger *slog.Logger) *statusPage {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &statusPage{src: src, logger: logger.With("component", "page"), now: time.Now, runs: map[string]cachedRecords{}}
}

func (p *statusPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), pageReadTimeout)
	defer cancel()
	data := p.build(ctx)
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, data); err != nil {
		p.logger.Error("status page not rendered", "err", err)
		http.Error(w, "status page not rendered: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	// The page has no script and loads nothing: should escaping ever
	// miss, the browser still runs nothing.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	_, _ = w.Write(buf.Bytes())
}

// Page data, as the template sees it. Every string in it is plain text
// that html/template escapes; numbers for the SVG are formatted here with
// strconv.

type pageData struct {
	Now       string
	Errors    []string
	Active    int
	Recent    int
	Runs      []runRow
	MoreRuns  int
	Rollbacks []rollbackView
	Details   []runDetail
	// Uncharted counts the runs in the table without charts.
	Uncharted int
}

type runRow struct {
	ID, Anchor                            string
	Service, Environment, Version, Policy string
	DeployID                              string
	Started, StartedAgo                   string
	WindowEnd, WindowEndRel               string
	Ended                                 string
	Verdict, VerdictClass                 string
	Rollback, RollbackClass               string
	Reason                                string
	Active, Charted                       bool
}

type runDetail struct {
	Run    runRow
	Checks []checkView
	Note   string
}

type checkView struct {
	Name, Threshold, Query string
	DryRun                 bool
	Last, LastClass        string
	LastReason             string
	Counts                 string
	Charts                 []chartView
}

type rollbackView struct {
	RequestID, RunID, Anchor      string
	Service, Environment, Version string
	Time, Ago                     string
	Status, StatusClass           string
	Source                        string
	FromTo                        string
	Error                         string
	Note                          string
	Reason                        string
	Checks                        []causeCheck
	Alert                         *alertView
	Hosts                         []hostView
}

type causeCheck struct{ Name, Reason string }

type alertView struct {
	Name, Fingerprint, StartsAt string
	// URL is the generator URL when it is an http(s) link; Text is any
	// other generator URL, shown but not linked.
	URL, Text string
	Labels    []labelView
}

type labelView struct{ Name, Value string }

type hostView struct {
	Host, From, To, FromPath, ToPath string
	Switched                         bool
	Duration, Error                  string
}

// build gathers what the page shows.
func (p *statusPage) build(ctx context.Context) *pageData {
	now := p.now().UTC()
	active, recent := p.src.Runs()
	d := &pageData{Now: now.Format("2006-01-02 15:04:05") + " UTC", Active: len(active), Recent: len(recent)}
	if p.degraded != nil {
		d.Errors = append(d.Errors, p.degraded()...)
	}

	charted := map[string]bool{}
	var detailRuns []watch.RunStatus
	for i, r := range active {
		if i < pageActiveCharts {
			detailRuns = append(detailRuns, r)
			charted[r.ID] = true
		}
	}
	for i, r := range recent {
		if i < pageRecentCharts {
			detailRuns = append(detailRuns, r)
			charted[r.ID] = true
		}
	}

	p.mu.Lock()
	tail, tailErr := p.tailRecords(ctx, now)
	byRun, runErrs := p.runRecords(ctx, now, detailRuns, tail)
	p.mu.Unlock()
	if tailErr != nil {
		d.Errors = append(d.Errors, "recent audit records not read: "+tailErr.Error())
	}

	// Every record on hand, once: the tail and the runs' own reads overlap.
	pool := dedup(tail, byRun)
	rollbacks := rollbacksOf(pool, now)
	byRunID, byDeploy := map[string]*rollbackGroup{}, map[string]*rollbackGroup{}
	for i := range rollbacks {
		rb := &rollbacks[i]
		if rb.RunID != "" && byRunID[rb.RunID] == nil {
			byRunID[rb.RunID] = rb
		}
		if rb.deployKey != "" && byDeploy[rb.deployKey] == nil {
			byDeploy[rb.deployKey] = rb
		}
	}
	rowOf := func(r watch.RunStatus, isActive bool) runRow {
		row := newRunRow(r, isActive, now)
		row.Charted = charted[r.ID]
		rb := byRunID[r.ID]
		if rb == nil && r.DeployID != "" {
			rb = byDeploy[r.Environment+"\x00"+r.Service+"\x00"+r.DeployID]
		}
		if rb != nil {
			row.Rollback, row.RollbackClass = rb.Status, rb.StatusClass
		}
		return row
	}
	all := len(active) + len(recent)
	for _, r := range active {
		if len(d.Runs) < pageTableRuns {
			d.Runs = append(d.Runs, rowOf(r, true))
		}
	}
	for _, r := range recent {
		if len(d.Runs) < pageTableRuns {
			d.Runs = append(d.Runs, rowOf(r, false))
		}
	}
	d.MoreRuns = all - len(d.Runs)
	d.Uncharted = all - len(detailRuns)

	for _, r := range detailRuns {
		isActive := r.Ended == nil && r.Verdict == watch.VerdictPending
		det := runDetail{Run: rowOf(r, isActive)}
		recs, ok := byRun[r.ID]
		if err := runErrs[r.ID]; err != nil {
			det.Note = "measurements not read from the audit stream: " + err.Error()
		}
		det.Checks = checksOf(r, recs, ok, now, isActive)
		if len(det.Checks) == 0 && det.Note == "" {
			det.Note = "no measurement yet"
		}
		d.Details = append(d.Details, det)
	}

	if len(rollbacks) > pageRollbacks {
		rollbacks = rollbacks[:pageRollbacks]
	}
	for i := range rollbacks {
		if charted[rollbacks[i].RunID] {
			rollbacks[i].Anchor = runAnchor(rollbacks[i].RunID)
		}
	}
	d.Rollbacks = make([]rollbackView, len(rollbacks))
	for i, rb := range rollbacks {
		d.Rollbacks[i] = rb.rollbackView
	}
	return d
}

// tailRecords reads the newest records, cached for pageTailTTL.
func (p *statusPage) tailRecords(ctx context.Context, now time.Time) ([]audit.Record, error) {
	if !p.tail.at.IsZero() && now.Sub(p.tail.at) < pageTailTTL {
		return p.tail.recs, p.tail.err
	}
	recs, err := p.src.Records(ctx, audit.Filter{Limit: pageTailRecords})
	if err != nil {
		p.logger.Warn("audit records for the status page not read", "err", err)
	}
	p.tail = cachedRecords{at: now, recs: recs, err: err}
	return recs, err
}

// runRecords finds each run's records: in the tail when the tail reaches
// back to the run's start, else by a read of the run's own (cached).
func (p *statusPage) runRecords(ctx context.Context, now time.Time, runs []watch.RunStatus, tail []audit.Record) (map[string][]audit.Record, map[string]error) {
	fromTail := map[string][]audit.Record{}
	started := map[string]bool{}
	for _, r := range tail {
		if r.RunID == "" {
			continue
		}
		fromTail[r.RunID] = append(fromTail[r.RunID], r)
		if r.Kind == audit.RunStarted {
			started[r.RunID] = true
		}
	}
	// A tail shorter than asked for is the whole stream.
	whole := len(tail) < pageTailRecords
	out := map[string][]audit.Record{}
	errs := map[string]error{}
	var todo []watch.RunStatus
	keep := map[string]bool{}
	for _, r := range runs {
		keep[r.ID] = true
		switch {
		case started[r.ID] || whole && p.tail.err == nil:
			out[r.ID] = fromTail[r.ID]
		default:
			c, ok := p.runs[r.ID]
			ttl := pageFinishedTTL
			if r.Ended == nil {
				ttl = pageActiveTTL
			}
			if ok && now.Sub(c.at) < ttl {
				out[r.ID], errs[r.ID] = c.recs, c.err
				continue
			}
			todo = append(todo, r)
		}
	}
	for id := range p.runs {
		if !keep[id] {
			delete(p.runs, id)
		}
	}
	if len(todo) == 0 {
		return out, errs
	}
	results := make([]cachedRecords, len(todo))
	sem := make(chan struct{}, pageReaders)
	var wg sync.WaitGroup
	for i, r := range todo {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			recs, err := p.src.Records(ctx, audit.Filter{Service: r.Service, Environment: r.Environment, RunID: r.ID, Limit: pageRunRecords})
			results[i] = cachedRecords{at: now, recs: recs, err: err}
		}()
	}
	wg.Wait()
	for i, r := range todo {
		c := results[i]
		if c.err != nil {
			p.logger.Warn("audit records of a run not read for the status page", "run", r.ID, "err", c.err)
		}
		p.runs[r.ID] = c
		out[r.ID], errs[r.ID] = c.recs, c.err
	}
	return out, errs
}

// dedup merges the tail and the runs' records, each record once, oldest
// first.
func dedup(tail []audit.Record, byRun map[string][]audit.Record) []audit.Record {
	seen := map[string]bool{}
	var out []audit.Record
	add := func(r audit.Record) {
		k := r.Kind + "\x00" + r.RunID + "\x00" + r.RequestID + "\x00" + r.Time.Format(time.RFC3339Nano) + "\x00" + str(r.Detail, "host") + "\x00" + str(r.Detail, "check")
		if !seen[k] {
			seen[k] = true
			out = append(out, r)
		}
	}
	for _, r := range tail {
		add(r)
	}
	ids := make([]string, 0, len(byRun))
	for id := range byRun {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		for _, r := range byRun[id] {
			add(r)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out
}

func runAnchor(id string) string { return "run-" + id }

func newRunRow(r watch.RunStatus, isActive bool, now time.Time) runRow {
	row := runRow{
		ID: r.ID, Anchor: runAnchor(r.ID), Service: r.Service, Environment: r.Environment, Version: r.Version,
		Policy: r.Policy, DeployID: r.DeployID, Reason: r.Reason, Active: isActive,
		Started: clock(r.Started, now), StartedAgo: relative(r.Started, now),
		WindowEnd: clock(r.WindowEnd, now), WindowEndRel: relative(r.WindowEnd, now),
	}
	if r.Ended != nil {
		row.Ended = clock(*r.Ended, now)
	}
	row.Verdict, row.VerdictClass = verdictText(r.Verdict)
	return row
}

func verdictText(v string) (text, class string) {
	switch v {
	case watch.VerdictPending:
		return "validating", "info"
	case watch.VerdictPassed:
		return "passed", "ok"
	case watch.VerdictFailed:
		return "failed", "bad"
	case watch.VerdictInconclusive:
		return "inconclusive", "warn"
	case watch.VerdictSuperseded:
		return "superseded", "muted"
	case "":
		return "unknown", "muted"
	}
	return v, "muted"
}

// clock is t as the page shows it: the time of day in UTC, with the date
// when it is not today's.
func clock(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	t = t.UTC()
	if t.YearDay() == now.YearDay() && t.Year() == now.Year() {
		return t.Format("15:04:05")
	}
	return t.Format("Jan 2 15:04:05")
}

// relative is t from now: "12s ago", "in 4m".
func relative(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := now.Sub(t)
	ago := true
	if d < 0 {
		d, ago = -d, false
	}
	var s string
	switch {
	case d < time.Minute:
		s = strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		s = strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		s = strconv.Itoa(int(d/time.Hour)) + "h"
	default:
		s = strconv.Itoa(int(d/(24*time.Hour))) + "d"
	}
	if ago {
		return s + " ago"
	}
	return "in " + s
}

// Reading record details, which came from JSON.

func str(m map[string]any, k string) string {
	if m == nil {
		return ""
	}
	switch v := m[k].(type) {
	case string:
		return v
	case nil:
		return ""
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	default:
		return fmt.Sprint(v)
	}
}

// num is m[k] as a number; ok is false for null, missing, or not a number.
func num(m map[string]any, k string) (float64, bool) {
	if m == nil {
		return 0, false
	}
	v, ok := m[k].(float64)
	return v, ok
}

func obj(m map[string]any, k string) map[string]any {
	if m == nil {
		return nil
	}
	v, _ := m[k].(map[string]any)
	return v
}

func list(m map[string]any, k string) []map[string]any {
	if m == nil {
		return nil
	}
	vs, _ := m[k].([]any)
	var out []map[string]any
	for _, v := range vs {
		if o, ok := v.(map[string]any); ok {
			out = append(out, o)
		}
	}
	return out
}

func recTime(m map[string]any, k string, def time.Time) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, str(m, k)); err == nil {
		return t
	}
	return def
}

// formatNum formats a measured value for people: up to four significant
// digits, no exponent for everyday sizes.
func formatNum(v float64) string {
	a := v
	if a < 0 {
		a = -a
	}
	switch {
	case a == 0:
		return "0"
	case a >= 1e6 || a < 1e-4:
		return strconv.FormatFloat(v, 'g', 4, 64)
	case a >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	s := strconv.FormatFloat(v, 'g', 4, 64)
	if strings.ContainsAny(s, "e") {
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return s
}

func outcomeClass(o string) string {
	switch o {
	case "pass":
		return "pass"
	case "fail":
		return "fail"
	case "inconclusive":
		return "inconclusive"
	case "error":
		return "error"
	}
	return "unknown"
}

// Checks and their charts.

type measurement struct {
	at      time.Time
	value   *float64
	ratio   *float64
	outcome string
	reason  string
	msg     string
}

// checksOf lists r's checks with their measurements from recs (loaded says
// they were read), or with the latest measurement the watcher holds when
// they were not.
func checksOf(r watch.RunStatus, recs []audit.Record, loaded bool, now time.Time, isActive bool) []checkView {
	type check struct {
		name, threshold, query string
		dryRun                 bool
		ms                     []measurement
		counts                 map[string]any
	}
	var order []*check
	byName := map[string]*check{}
	get := func(name string) *check {
		c := byName[name]
		if c == nil {
			c = &check{name: name}
			byName[name] = c
			order = append(order, c)
		}
		return c
	}
	for _, rec := range recs {
		if rec.Kind != audit.Measurement || rec.RunID != r.ID {
			continue
		}
		d := rec.Detail
		c := get(str(d, "check"))
		c.threshold, c.query = str(d, "threshold"), str(d, "query")
		if b, _ := d["dry_run"].(bool); b {
			c.dryRun = true
		}
		c.counts = obj(d, "counts")
		m := measurement{at: recTime(d, "eval_time", rec.Time), outcome: str(d, "outcome"), reason: str(d, "reason"), msg: rec.Message}
		if v, ok := num(d, "value"); ok {
			m.value = &v
		}
		if v, ok := num(d, "ratio"); ok {
			m.ratio = &v
		}
		c.ms = append(c.ms, m)
	}
	// The watcher's latest measurement of each check, for checks the
	// records do not show (not read, or not yet in the stream).
	for _, ms := range r.Measurements {
		if ms == nil || byName[ms.Check] != nil {
			continue
		}
		c := get(ms.Check)
		c.threshold, c.dryRun = ms.Threshold, ms.DryRun
		c.ms = append(c.ms, measurement{at: ms.Time, value: ms.Value, outcome: ms.Outcome, reason: ms.Reason})
	}

	start := r.Started
	end := r.WindowEnd
	if !isActive {
		if r.Ended != nil {
			end = *r.Ended
		} else {
			end = time.Time{}
		}
	}
	var out []checkView
	for _, c := range order {
		cv := checkView{Name: c.name, Threshold: c.threshold, Query: c.query, DryRun: c.dryRun}
		if n := len(c.ms); n > 0 {
			last := c.ms[n-1]
			cv.LastClass = outcomeClass(last.outcome)
			if last.value != nil {
				cv.Last = formatNum(*last.value) + " " + last.outcome
			} else {
				cv.Last = "no value, " + last.outcome
			}
			cv.LastReason = last.reason
		}
		if c.counts != nil {
			var parts []string
			for _, k := range []string{"pass", "fail", "inconclusive", "error"} {
				if v, ok := num(c.counts, k); ok {
					parts = append(parts, k+" "+strconv.Itoa(int(v)))
				}
			}
			cv.Counts = strings.Join(parts, " · ")
		}
		abs, ratio := parseThreshold(c.threshold)
		ms := c.ms
		note := ""
		if len(ms) > pageChartPoints {
			note = "last " + strconv.Itoa(pageChartPoints) + " of " + strconv.Itoa(len(ms)) + " measurements"
			ms = ms[len(ms)-pageChartPoints:]
		}
		nowMark := time.Time{}
		if isActive {
			nowMark = now
		}
		if len(ratio) > 0 {
			cv.Charts = append(cv.Charts, buildChart("ratio to baseline", ms, func(m measurement) *float64 { return m.ratio }, ratio, start, end, nowMark, note))
		}
		if len(abs) > 0 || len(ratio) == 0 {
			cv.Charts = append(cv.Charts, buildChart("value", ms, func(m measurement) *float64 { return m.value }, abs, start, end, nowMark, note))
		}
		out = append(out, cv)
	}
	return out
}

type threshold struct {
	name  string // min, max, min_ratio, max_ratio
	value float64
}

// parseThreshold reads a threshold text such as "min 50, max 200" or
// "min_ratio 0.8" into absolute and ratio thresholds.
func parseThreshold(s string) (abs, ratio []threshold) {
	for _, part := range strings.Split(s, ",") {
		f := strings.Fields(part)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "min", "max":
			abs = append(abs, threshold{f[0], v})
		case "min_ratio", "max_ratio":
			ratio = append(ratio, threshold{f[0], v})
		}
	}
	return abs, ratio
}

// chartView is one small SVG chart. Coordinates are strconv-formatted
// numbers; labels are text for html/template to escape.
type chartView struct {
	Label, Note                  string
	W, H                         string
	Left, Right, Top, Bottom     string
	PlotW, PlotH                 string
	LabelX, LabelY, NoteX, NoteY string
	MidX, MidY                   string
	YTicks, XTicks               []tickView
	Thresholds                   []thresholdView
	Zones                        []zoneView
	Lines                        []string // polyline points, one per run of values without a gap
	Points, Nulls                []pointView
	Last                         *tickView // the newest value, labelled with its number
	NowX                         string
	Empty                        string

	nullY                      float64
	width, height, left, right float64
	top, bottom, plotW, plotH  float64
	ymin, ymax                 float64
	xmin, xmax                 time.Time
}

type tickView struct{ X, Y, Label, Anchor string }

type thresholdView struct{ Y, LabelX, LabelY, Label, Class string }

type zoneView struct{ X, Y, W, H string }

type pointView struct {
	X, Y, R, Class, Title string
	Path                  string
}

func fmtCoord(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

// buildChart plots the measurements' values (as val picks them) over time
// against the thresholds: a line through the values with gaps where there
// is none, a point per value coloured by its outcome, a mark on the time
// axis for each measurement without a value, each threshold as a dashed
// line with the side that fails shaded.
func buildChart(label string, ms []measurement, val func(measurement) *float64, ths []threshold, start, end, now time.Time, note string) chartView {
	c := chartView{Label: label, Note: note, width: 380, height: 150, left: 50, right: 10, top: 20, bottom: 22}
	c.plotW = c.width - c.left - c.right
	c.plotH = c.height - c.top - c.bottom
	c.W, c.H = fmtCoord(c.width), fmtCoord(c.height)
	c.Left, c.Top = fmtCoord(c.left), fmtCoord(c.top)
	c.Right, c.Bottom = fmtCoord(c.left+c.plotW), fmtCoord(c.top+c.plotH)
	c.PlotW, c.PlotH = fmtCoord(c.plotW), fmtCoord(c.plotH)
	c.LabelX, c.LabelY = fmtCoord(c.left), "13"
	c.NoteX, c.NoteY = fmtCoord(c.left+c.plotW), "13"
	c.MidX, c.MidY = fmtCoord(c.left+c.plotW/2), fmtCoord(c.top+c.plotH/2)

	// Time axis: the run's start to the window's end (active run) or to
	// when it ended, stretched to hold every measurement.
	c.xmin, c.xmax = start, end
	for _, m := range ms {
		if c.xmin.IsZero() || m.at.Before(c.xmin) {
			c.xmin = m.at
		}
		if m.at.After(c.xmax) {
			c.xmax = m.at
		}
	}
	if !now.IsZero() && now.After(c.xmin) && now.After(c.xmax) {
		c.xmax = now
	}
	if !c.xmax.After(c.xmin) {
		c.xmax = c.xmin.Add(time.Second)
	}

	// Value axis: every value and threshold, with some room.
	lo, hi, seen := 0.0, 0.0, false
	see := func(v float64) {
		if !seen {
			lo, hi, seen = v, v, true
			return
		}
		lo, hi = min(lo, v), max(hi, v)
	}
	nvals := 0
	for _, m := range ms {
		if v := val(m); v != nil {
			see(*v)
			nvals++
		}
	}
	for _, t := range ths {
		see(t.value)
	}
	if !seen {
		lo, hi = 0, 1
	}
	c.axis(lo, hi)

	for _, t := range ths {
		y := c.y(t.value)
		tv := thresholdView{Y: fmtCoord(y), LabelX: fmtCoord(c.left + c.plotW - 3), Label: t.name + " " + formatNum(t.value), Class: "th"}
		// The label sits on the side that passes, away from the shading.
		if strings.HasPrefix(t.name, "min") {
			tv.LabelY = fmtCoord(y - 4)
			c.Zones = append(c.Zones, zoneView{X: c.Left, Y: fmtCoord(y), W: c.PlotW, H: fmtCoord(c.top + c.plotH - y)})
		} else {
			tv.LabelY = fmtCoord(y + 12)
			c.Zones = append(c.Zones, zoneView{X: c.Left, Y: c.Top, W: c.PlotW, H: fmtCoord(y - c.top)})
		}
		c.Thresholds = append(c.Thresholds, tv)
	}

	c.nullY = c.top + c.plotH - 5
	var seg []string
	flush := func() {
		if len(seg) > 1 {
			c.Lines = append(c.Lines, strings.Join(seg, " "))
		}
		seg = nil
	}
	for _, m := range ms {
		x := c.x(m.at)
		title := m.at.UTC().Format("15:04:05") + "  "
		v := val(m)
		if v != nil {
			title += formatNum(*v) + "  "
		}
		title += m.outcome
		if m.reason != "" && m.reason != "ok" {
			title += ": " + m.reason
		}
		if v == nil {
			flush()
			c.Nulls = append(c.Nulls, pointView{
				X: fmtCoord(x), Y: fmtCoord(c.nullY), Class: "pt " + outcomeClass(m.outcome), Title: title,
				Path: "M" + fmtCoord(x-3.5) + " " + fmtCoord(c.nullY-3.5) + "L" + fmtCoord(x+3.5) + " " + fmtCoord(c.nullY+3.5) +
					"M" + fmtCoord(x-3.5) + " " + fmtCoord(c.nullY+3.5) + "L" + fmtCoord(x+3.5) + " " + fmtCoord(c.nullY-3.5),
			})
			continue
		}
		y := c.y(*v)
		seg = append(seg, fmtCoord(x)+","+fmtCoord(y))
		r := "3.5"
		if m.outcome == "fail" {
			r = "5"
		}
		c.Points = append(c.Points, pointView{X: fmtCoord(x), Y: fmtCoord(y), R: r, Class: "pt " + outcomeClass(m.outcome), Title: title})
	}
	flush()
	for i := len(ms) - 1; i >= 0; i-- {
		v := val(ms[i])
		if v == nil {
			continue
		}
		x, y := c.x(ms[i].at), c.y(*v)
		l := tickView{Label: formatNum(*v), X: fmtCoord(x - 7), Anchor: "end"}
		if x < c.left+60 {
			l.X, l.Anchor = fmtCoord(x+7), "start"
		}
		if y-8 < c.top+10 {
			l.Y = fmtCoord(y + 16)
		} else {
			l.Y = fmtCoord(y - 8)
		}
		c.Last = &l
		break
	}

	if !now.IsZero() {
		c.NowX = fmtCoord(c.x(now))
	}
	c.XTicks = []tickView{
		{X: fmtCoord(c.left), Y: fmtCoord(c.height - 6), Label: c.xmin.UTC().Format("15:04:05"), Anchor: "start"},
		{X: fmtCoord(c.left + c.plotW), Y: fmtCoord(c.height - 6), Label: "+" + shortDuration(c.xmax.Sub(c.xmin)), Anchor: "end"},
	}
	switch {
	case len(ms) == 0:
		c.Empty = "no measurement yet"
	case nvals == 0:
		c.Empty = "no value in " + strconv.Itoa(len(ms)) + " measurement(s)"
	}
	return c
}

func (c *chartView) x(t time.Time) float64 {
	f := float64(t.Sub(c.xmin)) / float64(c.xmax.Sub(c.xmin))
	return c.left + f*c.plotW
}

func (c *chartView) y(v float64) float64 {
	f := (v - c.ymin) / (c.ymax - c.ymin)
	return c.top + (1-f)*c.plotH
}

// axis makes the value axis: [lo, hi] widened to round tick steps, and
// its ticks.
func (c *chartView) axis(lo, hi float64) {
	if hi == lo {
		pad := abs(lo) * 0.1
		if pad == 0 {
			pad = 1
		}
		lo, hi = lo-pad, hi+pad
	} else {
		pad := (hi - lo) * 0.1
		nlo := lo - pad
		if lo >= 0 && nlo < 0 {
			nlo = 0 // counts and rates: no negative room
		}
		lo, hi = nlo, hi+pad
	}
	step := niceStep((hi - lo) / 4)
	lo = floorTo(lo, step)
	hi = ceilTo(hi, step)
	if hi <= lo {
		hi = lo + step
	}
	decimals := 0
	for s := step; s < 1 && decimals < 10; s *= 10 {
		decimals++
	}
	if step != float64(int64(step)) && decimals == 0 {
		decimals = 1
	}
	c.ymin, c.ymax = lo, hi
	for i := 0; ; i++ {
		v := lo + float64(i)*step
		if v > hi+step/1000 || i > 20 {
			break
		}
		label := strconv.FormatFloat(v, 'f', decimals, 64)
		if abs(v) >= 1e6 {
			label = strconv.FormatFloat(v, 'g', 3, 64)
		}
		y := c.y(v)
		c.YTicks = append(c.YTicks, tickView{X: fmtCoord(c.left - 5), Y: fmtCoord(y), Label: label})
	}
}

func abs(v float64) float64 {
	if v < 0 {
		return -v
	}
	return v
}

// niceStep is the 1, 2, 2.5 or 5 times a power of ten nearest above raw.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := 1.0
	for p*10 <= raw {
		p *= 10
	}
	for p > raw {
		p /= 10
	}
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if p*m >= raw {
			return p * m
		}
	}
	return p * 10
}

func floorTo(v, step float64) float64 {
	n := v / step
	f := float64(int64(n))
	if f > n {
		f--
	}
	return f * step
}

func ceilTo(v, step float64) float64 {
	n := v / step
	f := float64(int64(n))
	if f < n {
		f++
	}
	return f * step
}

// shortDuration is d for an axis label: "8s", "4m30s", "2h".
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return strconv.Itoa(int(d/time.Millisecond)) + "ms"
	case d < time.Minute:
		return strconv.Itoa(int(d.Round(time.Second)/time.Second)) + "s"
	case d < time.Hour:
		d = d.Round(time.Second)
		m, s := int(d/time.Minute), int(d%time.Minute/time.Second)
		if s == 0 {
			return strconv.Itoa(m) + "m"
		}
		return strconv.Itoa(m) + "m" + strconv.Itoa(s) + "s"
	}
	d = d.Round(time.Minute)
	h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
	if m == 0 {
		return strconv.Itoa(h) + "h"
	}
	return strconv.Itoa(h) + "h" + strconv.Itoa(m) + "m"
}

// Rollbacks.

type rollbackGroup struct {
	rollbackView
	at        time.Time
	deployKey string
}

// rollbacksOf groups the rollback records by request, newest first, each
// with its cause: the checks of the run that failed, the alert, or the
// reason a person gave.
func rollbacksOf(recs []audit.Record, now time.Time) []rollbackGroup {
	verdicts := map[string]audit.Record{} // run id -> run.failed / run.inconclusive
	for _, r := range recs {
		if r.Kind == audit.RunFailed || r.Kind == audit.RunInconclusive {
			verdicts[r.RunID] = r
		}
	}
	groups := map[string]*rollbackGroup{}
	var order []*rollbackGroup
	done := map[string]bool{}
	for _, r := range recs {
		switch r.Kind {
		case audit.RollbackRequested, audit.RollbackHost, audit.RollbackCompleted, audit.RollbackFailed:
		default:
			continue
		}
		if r.RequestID == "" {
			continue
		}
		g := groups[r.RequestID]
		if g == nil {
			g = &rollbackGroup{rollbackView: rollbackView{RequestID: r.RequestID, Status: "rolling back", StatusClass: "info"}, at: r.Time}
			groups[r.RequestID] = g
			order = append(order, g)
		}
		if g.RunID == "" {
			g.RunID = r.RunID
		}
		if g.Service == "" {
			g.Service, g.Environment, g.Version = r.Service, r.Environment, r.Version
			if r.DeployID != "" {
				g.deployKey = r.Environment + "\x00" + r.Service + "\x00" + r.DeployID
			}
		}
		d := r.Detail
		switch r.Kind {
		case audit.RollbackRequested:
			g.at = r.Time
			g.Source = str(d, "source")
			g.Reason = str(d, "reason")
			if a := obj(d, "alert"); a != nil {
				g.Alert = alertOf(a, now)
			}
			if b, ok := d["executed"].(bool); ok && !b && !done[r.RequestID] {
				g.Status, g.StatusClass = "not executed", "muted"
				if i := strings.Index(r.Message, "; not executed: "); i >= 0 {
					g.Note = "not executed: " + r.Message[i+len("; not executed: "):]
				}
			}
		case audit.RollbackHost:
			g.Hosts = append(g.Hosts, hostOf(d))
		case audit.RollbackCompleted:
			done[r.RequestID] = true
			g.Status, g.StatusClass = "rolled back", "ok"
			if from, to := str(d, "from"), str(d, "to"); from != "" || to != "" {
				g.FromTo = from + " → " + to
			}
			if len(g.Hosts) == 0 {
				for _, h := range list(d, "hosts") {
					g.Hosts = append(g.Hosts, hostOf(h))
				}
			}
		case audit.RollbackFailed:
			done[r.RequestID] = true
			g.Status, g.StatusClass = "rollback failed", "bad"
			g.Error = str(d, "error")
			if len(g.Hosts) == 0 {
				for _, h := range list(d, "hosts") {
					g.Hosts = append(g.Hosts, hostOf(h))
				}
			}
		}
	}
	out := make([]rollbackGroup, 0, len(order))
	for _, g := range order {
		if v, ok := verdicts[g.RunID]; ok {
			for _, c := range list(v.Detail, "checks") {
				g.Checks = append(g.Checks, causeCheck{Name: str(c, "check"), Reason: str(c, "reason")})
			}
			if g.Reason == "" {
				g.Reason = v.Message
			}
		}
		if g.Source == "" {
			g.Source = "unknown"
		}
		g.Time, g.Ago = clock(g.at, now), relative(g.at, now)
		out = append(out, *g)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].at.After(out[j].at) })
	return out
}

func hostOf(d map[string]any) hostView {
	h := hostView{Host: str(d, "host"), FromPath: str(d, "from"), ToPath: str(d, "to"), Error: str(d, "error")}
	h.From, h.To = base(h.FromPath), base(h.ToPath)
	h.Switched, _ = d["switched"].(bool)
	if s, ok := num(d, "duration_seconds"); ok {
		h.Duration = formatSeconds(s)
	} else if ns, ok := num(d, "duration_ns"); ok {
		h.Duration = formatSeconds(ns / 1e9)
	}
	return h
}

func base(p string) string {
	if p == "" {
		return ""
	}
	return path.Base(p)
}

func formatSeconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func alertOf(a map[string]any, now time.Time) *alertView {
	v := &alertView{Name: str(a, "name"), Fingerprint: str(a, "fingerprint")}
	if t := recTime(a, "starts_at", time.Time{}); !t.IsZero() {
		v.StartsAt = clock(t, now) + " (" + relative(t, now) + ")"
	}
	if g := str(a, "generator_url"); g != "" {
		if u, err := url.Parse(g); err == nil && (strings.EqualFold(u.Scheme, "http") || strings.EqualFold(u.Scheme, "https")) && u.Host != "" {
			v.URL = g
		} else {
			v.Text = g
		}
	}
	if ls := obj(a, "labels"); ls != nil {
		for k := range ls {
			v.Labels = append(v.Labels, labelView{Name: k, Value: str(ls, k)})
		}
		sort.Slice(v.Labels, func(i, j int) bool { return v.Labels[i].Name < v.Labels[j].Name })
	}
	return v
}
