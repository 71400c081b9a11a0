package web

import (
	"bytes"
	"context"
	_ "embed"
	"html/template"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
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
	// Health says what is wrong with Prometheus and the storage, for
	// the banners.
	Health(ctx context.Context) Health
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
	// Cache lifetimes: the tail and the health (Prometheus, storage), a
	// run's own read while it is active, and once it is finished (only
	// its rollback may still add records).
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

	// mu makes one page build at a time: concurrent viewers wait for it
	// and then share its cached reads instead of reading the stream again.
	mu       sync.Mutex
	tail     cachedRecords
	runs     map[string]cachedRecords
	health   Health
	healthAt time.Time
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
	Now string
	// Banners say what the watcher works without (Prometheus, storage).
	Banners   []bannerView
	Errors    []string
	Active    int
	Recent    int
	Runs      []runRow
	MoreRuns  int
	Rollbacks []rollbackView
	// Held counts the rollbacks among them that are held.
	Held    int
	Details []runDetail
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
	Comparison             *comparisonView
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
	// Held is there while the request is held.
	Held *heldView
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
	if p.healthAt.IsZero() || now.Sub(p.healthAt) >= pageTailTTL {
		p.health, p.healthAt = p.src.Health(ctx), now
	}
	d.Banners = banners(p.health)
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
		if rb.Held != nil {
			d.Held++
		}
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

// partOf tells apart records of one kind that a run or request writes at
// the same time: a rollback's hosts, a measurement's checks.
func partOf(r audit.Record) string {
	switch r.Kind {
	case audit.RollbackHost:
		h, _ := r.RollbackHost()
		return h.Host + "\x00"
	case audit.Measurement:
		m, _ := r.Measurement()
		return "\x00" + m.Check
	}
	return "\x00"
}

// dedup merges the tail and the runs' records, each record once, oldest
// first.
func dedup(tail []audit.Record, byRun map[string][]audit.Record) []audit.Record {
	seen := map[string]bool{}
	var out []audit.Record
	add := func(r audit.Record) {
		k := r.Kind + "\x00" + r.RunID + "\x00" + r.RequestID + "\x00" + r.Time.Format(time.RFC3339Nano) + "\x00" + partOf(r)
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
	case watch.VerdictMarginal:
		return "marginal", "warn"
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
