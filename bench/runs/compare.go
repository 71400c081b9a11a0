package main

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/watch"
)

// compareFlags are the -compare mode's settings.
type compareFlags struct {
	on                             bool
	spread, step, lookback, window time.Duration
}

// The service every team runs, as the comparison checks see it: four
// hosts, h0 on the deployed version v2 (the canary), h1..h3 on v1.
const (
	benchHosts   = 4
	reqPerSecond = 20   // per host
	errorRate    = 0.01 // errors per request
)

// serviceMetrics serves, per team and host, a latency gauge (lognormal
// noise around 100 ms, drawn at each scrape) and request and error
// counters that grow by Poisson counts between scrapes. Nothing changes
// at the deploys: every comparison judges noise.
type serviceMetrics struct {
	teams                   int
	latency, requests, errs *prometheus.Desc

	mu       sync.Mutex
	rng      *rand.Rand
	last     time.Time
	req, err []float64 // per team x host
}

func newServiceMetrics(teams int) *serviceMetrics {
	labels := []string{"team", "host", "version"}
	return &serviceMetrics{
		teams:    teams,
		latency:  prometheus.NewDesc("bench_latency_seconds", "latency", labels, nil),
		requests: prometheus.NewDesc("bench_requests_total", "requests", labels, nil),
		errs:     prometheus.NewDesc("bench_errors_total", "failed requests", labels, nil),
		rng:      rand.New(rand.NewPCG(1, 2)),
		req:      make([]float64, teams*benchHosts),
		err:      make([]float64, teams*benchHosts),
	}
}

func (m *serviceMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.latency
	ch <- m.requests
	ch <- m.errs
}

func (m *serviceMetrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	dt := 0.0
	if !m.last.IsZero() {
		dt = now.Sub(m.last).Seconds()
	}
	m.last = now
	for t := range m.teams {
		team := fmt.Sprintf("t%03d", t)
		for h := range benchHosts {
			i := t*benchHosts + h
			n := poisson(m.rng, reqPerSecond*dt)
			m.req[i] += n
			m.err[i] += poisson(m.rng, n*errorRate)
			host, version := fmt.Sprintf("h%d", h), "v1"
			if h == 0 {
				version = "v2"
			}
			ch <- prometheus.MustNewConstMetric(m.latency, prometheus.GaugeValue, 0.1*math.Exp(0.2*m.rng.NormFloat64()), team, host, version)
			ch <- prometheus.MustNewConstMetric(m.requests, prometheus.CounterValue, m.req[i], team, host, version)
			ch <- prometheus.MustNewConstMetric(m.errs, prometheus.CounterValue, m.err[i], team, host, version)
		}
	}
}

// poisson draws a Poisson count of mean mu (Knuth's method; a normal
// approximation where exp(-mu) would underflow).
func poisson(r *rand.Rand, mu float64) float64 {
	if mu <= 0 {
		return 0
	}
	if mu > 500 {
		return math.Max(0, math.Round(mu+math.Sqrt(mu)*r.NormFloat64()))
	}
	l, k, p := math.Exp(-mu), 0.0, 1.0
	for {
		p *= r.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

// compareRules is the -compare policy: the threshold check of the plain
// mode plus two sample comparisons (pre_deploy on the team's mean latency,
// canary on the hosts' latencies) and a count comparison (errors among
// requests against pre_deploy). Per team that is 5 resolved queries: 1
// instant, 4 ranges (errors and total are one each).
func compareRules(interval time.Duration, f compareFlags) string {
	d := func(t time.Duration) string { return model.Duration(t).String() }
	return fmt.Sprintf(`policies:
  - name: orders
    match: {service: "svc-*", environment: production}
    window: %[1]s
    interval: %[2]s
    checks:
      - name: orders
        query: 'bench_orders{team="{{ .Labels.team }}"}'
        min: 50
      - name: latency-vs-before
        query: 'avg(bench_latency_seconds{team="{{ .Labels.team }}"})'
        compare: {with: pre_deploy, lookback: %[3]s, step: %[4]s, direction: increase, margin: 0.2, confidence: 0.98, min_samples: 6}
      - name: latency-canary
        query: 'bench_latency_seconds{team="{{ .Labels.team }}"}'
        compare: {with: canary, step: %[4]s, direction: increase, margin: 0.2, confidence: 0.98, min_samples: 6}
      - name: errors-vs-before
        compare:
          with: pre_deploy
          lookback: %[3]s
          step: %[4]s
          errors: 'sum(increase(bench_errors_total{team="{{ .Labels.team }}"}[{{ .Range }}]))'
          total: 'sum(increase(bench_requests_total{team="{{ .Labels.team }}"}[{{ .Range }}]))'
          margin: 0.5
          confidence: 0.99
          min_total: 200
    rollback:
      link: /srv/{{ .Service }}/current
      mode: publish
`, d(f.window), d(interval), d(f.lookback), d(f.step))
}

// Kinds of requests to Prometheus, told apart by their times (tally).
const (
	reqInstant = iota // a threshold check's instant query
	reqLook           // a range of the steps since the previous look
	reqFirst          // a range from a run's deploy to its first look (or a refetch after an error)
	reqBefore         // a pre_deploy span, ending at the deploy
	reqKinds
)

var reqKindNames = [reqKinds]string{"instant", "range: steps since the last look", "range: first look since the deploy", "range: pre_deploy span"}

// tally counts the requests that reach Prometheus per evaluation time, by
// kind, with the distinct requests and distinct resolved queries among
// them: a look's ranges end at its evaluation time (the step divides the
// interval); a pre_deploy span, whose look is not known here, counts at
// the interval of wall time it leaves in. Requests and queries are kept
// as hashes, and a bucket's sets are dropped for their counts once it is
// old, so that the benchmark's own bookkeeping stays out of the memory
// measured.
type tally struct {
	q                  watch.Querier
	interval, lookback time.Duration

	mu      sync.Mutex
	open    map[int64]*bucket
	done    map[int64]bucketCounts
	started bool
}

type bucket struct {
	bucketCounts
	keys    map[uint64]struct{}
	queries map[uint64]struct{}
}

type bucketCounts struct {
	n                        [reqKinds]int
	distinctReqs, distinctQs int
}

func (b bucketCounts) total() int {
	t := 0
	for _, n := range b.n {
		t += n
	}
	return t
}

// keepOpen is how long a bucket takes late requests: longer than any lag
// seen.
const keepOpen = 5 * time.Minute

func hash(parts ...any) uint64 {
	h := fnv.New64a()
	fmt.Fprint(h, parts...)
	return h.Sum64()
}

func (t *tally) note(kind int, at time.Time, key, query uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.started {
		return
	}
	k := at.UnixMilli()
	b := t.open[k]
	if b == nil {
		if _, ok := t.done[k]; ok {
			// Later than keepOpen: counted, though no longer told apart.
			c := t.done[k]
			c.n[kind]++
			t.done[k] = c
			return
		}
		b = &bucket{keys: map[uint64]struct{}{}, queries: map[uint64]struct{}{}}
		t.open[k] = b
		for ok, ob := range t.open {
			if time.Since(time.UnixMilli(ok)) > keepOpen {
				ob.distinctReqs, ob.distinctQs = len(ob.keys), len(ob.queries)
				t.done[ok] = ob.bucketCounts
				delete(t.open, ok)
			}
		}
	}
	b.n[kind]++
	b.keys[key] = struct{}{}
	b.queries[query] = struct{}{}
}

func (t *tally) start() {
	t.mu.Lock()
	t.started = true
	t.mu.Unlock()
}

// counts are the buckets' counts, by evaluation time.
func (t *tally) counts() map[int64]bucketCounts {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[int64]bucketCounts, len(t.done)+len(t.open))
	for k, c := range t.done {
		out[k] = c
	}
	for k, b := range t.open {
		c := b.bucketCounts
		c.distinctReqs, c.distinctQs = len(b.keys), len(b.queries)
		out[k] = c
	}
	return out
}

func (t *tally) Query(ctx context.Context, q string, ts time.Time) (model.Vector, error) {
	t.note(reqInstant, ts, hash("i", q, ts.UnixMilli()), hash(q))
	return t.q.Query(ctx, q, ts)
}

func (t *tally) QueryRange(ctx context.Context, q string, start, end time.Time, step time.Duration) (model.Matrix, error) {
	kind, at := reqBefore, time.Now().Truncate(t.interval)
	span := end.Sub(start)
	if end.Truncate(t.interval).Equal(end) && span < t.lookback-step {
		kind, at = reqFirst, end
		if span == t.interval-step {
			kind = reqLook
		}
	}
	t.note(kind, at, hash("r", q, start.UnixMilli(), end.UnixMilli(), step), hash(q))
	return t.q.QueryRange(ctx, q, start, end, step)
}

// lagHist is a histogram of lags at 10 ms up to 10 minutes (the last
// bucket takes the rest), allocated up front so that it stays out of the
// memory measured.
type lagHist [60001]int64

const lagRes = 10 * time.Millisecond

func (h *lagHist) add(d time.Duration) {
	i := min(max(int(d/lagRes), 0), len(h)-1)
	h[i]++
}

func (h *lagHist) n() int64 {
	var n int64
	for _, c := range h {
		n += c
	}
	return n
}

func (h *lagHist) pct(p float64) time.Duration {
	n := h.n()
	if n == 0 {
		return 0
	}
	want := min(n-1, int64(p*float64(n)))
	var seen int64
	for i, c := range h {
		seen += c
		if seen > want {
			return time.Duration(i) * lagRes
		}
	}
	return time.Duration(len(h)) * lagRes
}

// judged records the measurements of the -compare runs: lag by phase
// (ramp: while the deploys come; steady: from steadyFrom), and in the
// steady phase each check's outcomes.
type judged struct {
	a watch.Auditor

	mu         sync.Mutex
	steadyFrom time.Time // zero until the steady phase
	ramp       *lagHist
	steady     *lagHist
	outcomes   map[string]*[4]int // pass, fail, inconclusive, of which not judged yet
	n          int64
}

// Record reads the measurement detail's map as the watcher built it
// (audit.MeasurementDetail.Map): decoding every record from JSON would
// cost the benchmark as much CPU as the watcher spends judging.
func (j *judged) Record(ctx context.Context, r audit.Record) error {
	err := j.a.Record(ctx, r)
	if r.Kind != audit.Measurement {
		return err
	}
	now := time.Now()
	evalTime, _ := r.Detail["eval_time"].(time.Time)
	check, _ := r.Detail["check"].(string)
	outcome, _ := r.Detail["outcome"].(string)
	cmp, _ := r.Detail["comparison"].(*audit.ComparisonDetail)
	j.mu.Lock()
	defer j.mu.Unlock()
	j.n++
	if j.steadyFrom.IsZero() || evalTime.Before(j.steadyFrom) {
		j.ramp.add(now.Sub(evalTime))
		return err
	}
	j.steady.add(now.Sub(evalTime))
	o := j.outcomes[check]
	if o == nil {
		o = new([4]int)
		j.outcomes[check] = o
	}
	switch outcome {
	case "pass":
		o[0]++
	case "fail":
		o[1]++
	default:
		o[2]++
		if cmp != nil && cmp.NotJudged != "" {
			o[3]++
		}
	}
	return err
}

func compareRuns(dir, promURL string, promReady time.Time, runs, teams int, interval time.Duration, intervals int, f compareFlags) error {
	rules := filepath.Join(dir, "compare.yml")
	if err := os.WriteFile(rules, []byte(compareRules(interval, f)), 0o600); err != nil {
		return err
	}
	q := &tally{interval: interval, lookback: f.lookback, open: map[int64]*bucket{}, done: map[int64]bucketCounts{}}
	aud := &judged{ramp: new(lagHist), steady: new(lagHist), outcomes: map[string]*[4]int{}}
	env, err := startWatcher(dir, promURL, rules, func(p watch.Querier) watch.Querier { q.q = p; return q },
		func(a watch.Auditor) watch.Auditor { aud.a = a; return aud })
	if err != nil {
		return err
	}
	defer env.stop()
	w, js := env.w, env.js

	// A pre_deploy span needs Prometheus to have scraped lookback before the
	// first deploy.
	if wait := time.Until(promReady.Add(f.lookback + 2*f.step)); wait > 0 {
		fmt.Printf("(waiting %s for Prometheus to hold the first deploy's lookback)\n", wait.Round(time.Second))
		time.Sleep(wait)
	}
	memBefore := memInUse()
	q.start()
	start := time.Now()
	for i := range runs {
		if d := time.Until(start.Add(f.spread * time.Duration(i) / time.Duration(runs))); d > 0 {
			time.Sleep(d)
		}
		svc := fmt.Sprintf("svc-%05d", i)
		b, _ := json.Marshal(map[string]any{"id": "d-" + svc, "service": svc, "environment": "production", "version": "v2",
			"labels": map[string]string{"team": fmt.Sprintf("t%03d", i%teams)}})
		if _, err := js.PublishAsync("deploys.production."+svc, b); err != nil {
			return err
		}
	}
	<-js.PublishAsyncComplete()
	if err := waitFor(2*time.Minute, func() bool { return len(activeRuns(w)) == runs }); err != nil {
		return fmt.Errorf("%d runs active: %w", len(activeRuns(w)), err)
	}
	allActive := time.Since(start)

	// Every run has looked once an interval after the last deploy; the
	// steady phase starts at the next evaluation time. Memory is measured
	// between two evaluation times, when no measurement is in flight.
	between := func() {
		if wait := time.Until(time.Now().Truncate(interval).Add(interval * 6 / 10)); wait > 0 {
			time.Sleep(wait)
		} else {
			time.Sleep(wait + interval)
		}
	}
	time.Sleep(time.Until(start.Add(f.spread + interval)))
	between()
	steadyFrom := time.Now().Truncate(interval).Add(interval)
	aud.mu.Lock()
	aud.steadyFrom = steadyFrom
	aud.mu.Unlock()
	mem1, t1, active1 := memInUse(), time.Now(), len(activeRuns(w))

	time.Sleep(time.Until(steadyFrom.Add(time.Duration(intervals) * interval)))
	between()
	mem2, t2, active2 := memInUse(), time.Now(), len(activeRuns(w))
	steadyTo := t2.Truncate(interval)
	if p := os.Getenv("BENCH_HEAP"); p != "" {
		if f, err := os.Create(p); err == nil {
			_ = pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}

	// Requests of the last evaluation times may still be on their way.
	aud.mu.Lock()
	late := aud.steady.pct(0.99)
	aud.mu.Unlock()
	time.Sleep(min(late, 2*time.Minute))
	counts := q.counts()
	var keys []int64
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var ramp, steady []bucketCounts
	for _, k := range keys {
		at := time.UnixMilli(k)
		switch {
		case at.Before(steadyFrom):
			ramp = append(ramp, counts[k])
		case at.Before(steadyTo):
			steady = append(steady, counts[k])
		}
	}
	distinct := teams * 5

	fmt.Printf("comparison runs: %d runs, %d teams; per team 5 resolved queries (1 instant: orders >= 50; 4 ranges: mean latency vs pre_deploy, hosts' latency for canary, errors and requests vs pre_deploy) = %d distinct resolved queries\n",
		runs, teams, distinct)
	fmt.Printf("  interval %s, step %s, lookback %s, window %s; deploys spread evenly over %s (%.0f/s); all %d runs active %s after the first\n",
		interval, f.step, f.lookback, f.window, f.spread, float64(runs)/f.spread.Seconds(), runs, allActive.Round(time.Millisecond))
	show := func(name string, bs []bucketCounts) {
		fmt.Printf("  Prometheus requests per interval, %s (%d intervals):\n", name, len(bs))
		row := func(label string, v func(bucketCounts) int) {
			var vs []string
			for _, b := range bs {
				vs = append(vs, fmt.Sprint(v(b)))
			}
			fmt.Printf("    %-36s [%s]\n", label, strings.Join(vs, " "))
		}
		row("all requests", bucketCounts.total)
		for k := range reqKinds {
			row(reqKindNames[k], func(b bucketCounts) int { return b.n[k] })
		}
		row("distinct requests (none asked twice)", func(b bucketCounts) int { return b.distinctReqs })
		row("distinct resolved queries asked", func(b bucketCounts) int { return b.distinctQs })
	}
	show("while deploying", ramp)
	show("steady, every run deployed", steady)
	perRun := func(m uint64, active int) float64 { return float64(m-memBefore) / float64(max(active, 1)) }
	age := func(t time.Time) time.Duration { return t.Sub(start.Add(f.spread / 2)) } // of the mean run
	g := (perRun(mem2, active2) - perRun(mem1, active1)) / (t2.Sub(t1).Seconds() / interval.Seconds())
	left := f.window - age(t2)
	fmt.Printf("  watcher memory in use (heap + stacks; NATS apart) %.1f MiB before the deploys\n", float64(memBefore)/(1<<20))
	fmt.Printf("    steady start: %.1f MiB, %d runs active, mean run %s into its window: %.0f bytes per run\n",
		float64(mem1)/(1<<20), active1, age(t1).Round(time.Second), perRun(mem1, active1))
	fmt.Printf("    steady end:   %.1f MiB, %d runs active, mean run %s into its window: %.0f bytes per run\n",
		float64(mem2)/(1<<20), active2, age(t2).Round(time.Second), perRun(mem2, active2))
	fmt.Printf("    growth %.0f bytes per run per interval; at the window's end (%s left): %.0f bytes per run, projected (goal < 16 KiB = 16384)\n",
		g, left.Round(time.Second), perRun(mem2, active2)+g*left.Seconds()/interval.Seconds())
	fmt.Printf("  goroutines: %d\n", runtime.NumGoroutine())
	aud.mu.Lock()
	defer aud.mu.Unlock()
	fmt.Printf("  lag (recorded - evaluation time), while deploying: %d measurements, p50 %s, p99 %s, max %s\n",
		aud.ramp.n(), aud.ramp.pct(0.5), aud.ramp.pct(0.99), aud.ramp.pct(1))
	fmt.Printf("  lag, steady: %d measurements, p50 %s, p99 %s, max %s (goal p99 < the interval, %s)\n",
		aud.steady.n(), aud.steady.pct(0.5), aud.steady.pct(0.99), aud.steady.pct(1), interval)
	var checks []string
	for c := range aud.outcomes {
		checks = append(checks, c)
	}
	slices.Sort(checks)
	fmt.Printf("  steady outcomes (no change at any deploy):")
	for _, c := range checks {
		o := aud.outcomes[c]
		fmt.Printf(" %s pass %d fail %d inconclusive %d (not judged yet %d);", c, o[0], o[1], o[2], o[3])
	}
	fmt.Printf("\n  runs ended before their window (failed): %d of %d\n\n", runs-active2, runs)
	return nil
}
