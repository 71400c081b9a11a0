package watch

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	promclient "github.com/rollback-watcher/watcher/internal/promclient"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// Timing of the scenarios. Prometheus scrapes every scrapeInterval
// (testutil.StartPrometheus); the policies measure every scnInterval during
// scnWindow.
const (
	scrapeInterval = 500 * time.Millisecond
	scnInterval    = 500 * time.Millisecond
	scnWindow      = 5 * time.Second
	// playTick is how often a player sets its gauges.
	playTick = 50 * time.Millisecond
	// lead is how long a player sets values before the deploy, so that
	// Prometheus has scraped them (pre_deploy baselines need that).
	lead = 1500 * time.Millisecond
)

// backend is an exporter and a real Prometheus scraping it.
type backend struct {
	exp  *testutil.Exporter
	prom *testutil.Prometheus
	q    *promclient.Client
	// scrape is the timestamp of one scrape of the exporter; Prometheus
	// scrapes it every scrapeInterval from there, at a fixed phase.
	scrape time.Time
}

func startBackend(t *testing.T) *backend {
	t.Helper()
	b := &backend{exp: testutil.NewExporter(t)}
	b.prom = testutil.StartPrometheus(t, b.exp.URL)
	q, err := promclient.New(promclient.Options{URL: b.prom.URL})
	if err != nil {
		t.Fatal(err)
	}
	b.q = q
	// The sample of the synthetic series up carries the scrape's timestamp.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vec, err := q.Query(ctx, `timestamp(up{job="test"})`, time.Now())
	if err != nil || len(vec) != 1 {
		t.Fatalf("reading the scrape phase: %v (%v)", err, vec)
	}
	b.scrape = time.UnixMilli(int64(math.Round(float64(vec[0].Value) * 1000)))
	return b
}

// midScrape returns the first moment at or after earliest that lies halfway
// between two scrapes.
//
// Scenarios deploy at such a moment. Runs measure every scnInterval from
// their start, so each measurement then comes half a scrape interval after
// the scrape whose sample it sees, and a spike that spans one scrape time
// (see aroundScrape) is seen by exactly one measurement. Without that, timer
// jitter could let two measurements see the same sample, and a test of
// "one spike within failure_limit: 1" would fail now and then.
func (b *backend) midScrape(earliest time.Time) time.Time {
	first := b.scrape.Add(scrapeInterval / 2)
	k := math.Ceil(float64(earliest.Sub(first)) / float64(scrapeInterval))
	return first.Add(time.Duration(k) * scrapeInterval)
}

// point is one gauge value. scn_value has the label service; the per
// instance gauges (scn_error_ratio, scn_latency) have service and instance.
type point struct {
	metric   string
	instance string
	v        float64
}

// trace gives the gauges of a scenario at el since its deploy (negative
// before it). A series not returned does not exist then.
type trace func(el time.Duration) []point

func value(v float64) []point { return []point{{metric: "scn_value", v: v}} }

// instances gives metric one series per instance, with the values in order
// of names.
func instances(metric string, names []string, vs ...float64) []point {
	out := make([]point, len(names))
	for i, n := range names {
		out[i] = point{metric: metric, instance: n, v: vs[i]}
	}
	return out
}

// aroundScrape reports whether el is within 150ms of at, which must be a
// scrape time: with the deploy at midScrape, scrapes happen at 250ms,
// 750ms, 1250ms, ... after it. Such a spike is in exactly one sample.
func aroundScrape(el, at time.Duration) bool {
	if (at-scrapeInterval/2)%scrapeInterval != 0 {
		panic(fmt.Sprintf("aroundScrape: %s is not a scrape time", at))
	}
	return el >= at-150*time.Millisecond && el < at+150*time.Millisecond
}

// noise is a deterministic value in [-1, 1) for seed and the 100ms slot of
// el: the jitter of a noisy but healthy metric.
func noise(seed uint64, el time.Duration) float64 {
	x := seed*0x9e3779b97f4a7c15 + uint64(el.Milliseconds()/100)
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>11)/(1<<53)*2 - 1
}

// player sets a scenario's gauges on the exporter every playTick, on a
// grid aligned with the deploy, and notes when the trace first went past
// its limit.
type player struct {
	mu     sync.Mutex
	breach time.Time
	done   chan struct{}
	cancel context.CancelFunc
}

// play starts setting the gauges of service svc from tr, for a deploy at
// deploy. breachAt is when tr goes past the check's limit (0: never).
func (b *backend) play(t *testing.T, svc string, deploy time.Time, tr trace, breachAt time.Duration) *player {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &player{done: make(chan struct{}), cancel: cancel}
	t.Cleanup(p.stop)
	labels := func(pt point) map[string]string {
		if pt.instance == "" {
			return map[string]string{"service": svc}
		}
		return map[string]string{"service": svc, "instance": pt.instance}
	}
	go func() {
		defer close(p.done)
		timer := time.NewTimer(0)
		defer timer.Stop()
		prev := map[point]bool{} // by metric and instance; v is 0
		for {
			// The next slot of the grid deploy + k*playTick.
			el := time.Duration(math.Ceil(float64(time.Since(deploy))/float64(playTick))) * playTick
			timer.Reset(time.Until(deploy.Add(el)))
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
			now := map[point]bool{}
			for _, pt := range tr(el) {
				b.exp.Set(pt.metric, labels(pt), pt.v)
				now[point{metric: pt.metric, instance: pt.instance}] = true
			}
			for k := range prev {
				if !now[k] {
					b.exp.Delete(k.metric, labels(k))
				}
			}
			prev = now
			if breachAt > 0 && el >= breachAt {
				p.mu.Lock()
				if p.breach.IsZero() {
					p.breach = time.Now()
				}
				p.mu.Unlock()
			}
		}
	}()
	return p
}

func (p *player) stop() {
	p.cancel()
	<-p.done
}

// breached is when the exporter first served a value past the limit; zero
// if it has not.
func (p *player) breached() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.breach
}

// newPromHarness is newHarness with q, a client of a real Prometheus, as
// the Querier.
func newPromHarness(t *testing.T, rules string, q Querier) *harness {
	t.Helper()
	n := testutil.StartNATS(t)
	h := &harness{t: t, nats: n, js: n.JS, reg: prometheus.NewRegistry()}
	h.rec = &recorder{t: t, pub: &audit.Publisher{JS: n.JS}}
	h.set.Store(loadRules(t, rules))
	h.w = &Watcher{
		JS:       n.JS,
		Policies: h.set.Load,
		Querier:  q,
		Audit:    h.rec,
		Logger:   slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	h.w.Register(h.reg)
	h.ctx, h.cancel = context.WithCancel(context.Background())
	if err := h.w.Start(h.ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(h.stop)
	return h
}

// outcome is what a scenario's run left in the audit.
type outcome struct {
	deploy  time.Time // the deploy's time, which the trace counts from
	verdict audit.Record
	meas    []audit.Record // the run's measurements, in order
	breach  time.Time      // when the exporter first served a breaching value
	// n is how many measurements the run takes if it is not decided
	// early: every scnInterval from its first, on the interval's grid, to
	// the window's end (10 or 11, by where the start falls on the grid).
	n int
}

// of returns the measurements of check, in order.
func (o *outcome) of(check string) []audit.Record {
	var out []audit.Record
	for _, m := range o.meas {
		if m.Detail["check"] == check {
			out = append(out, m)
		}
	}
	return out
}

// last returns the last measurement of check.
func (o *outcome) last(t *testing.T, check string) audit.Record {
	t.Helper()
	ms := o.of(check)
	if len(ms) == 0 {
		t.Fatalf("no measurement of check %s", check)
	}
	return ms[len(ms)-1]
}

// deciding is the measurement that failed the run: the last one of the
// first check run.failed names.
func (o *outcome) deciding(t *testing.T) audit.Record {
	t.Helper()
	checks, _ := o.verdict.Detail["checks"].([]map[string]any)
	if len(checks) == 0 {
		t.Fatalf("%s record names no checks: %#v", o.verdict.Kind, o.verdict.Detail)
	}
	return o.last(t, fmt.Sprint(checks[0]["check"]))
}

// num reads a number from a measurement's detail as kept in memory (a
// *float64, nil for NaN and Inf); NaN when there is none.
func num(rec audit.Record, key string) float64 {
	switch v := rec.Detail[key].(type) {
	case *float64:
		if v != nil {
			return *v
		}
	case float64:
		return v
	case int:
		return float64(v)
	}
	return math.NaN()
}

// near reports whether a and b agree to 1e-9.
func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9 }

// wantNumbers checks numbers in a measurement's detail.
func wantNumbers(t *testing.T, rec audit.Record, kv ...any) {
	t.Helper()
	for i := 0; i+1 < len(kv); i += 2 {
		k, want := kv[i].(string), kv[i+1].(float64)
		if got := num(rec, k); !near(got, want) {
			t.Errorf("measurement %q: detail.%s = %v, want %v", rec.Message, k, got, want)
		}
	}
}

// wantCounts checks a measurement's running counts (those given).
func wantCounts(t *testing.T, rec audit.Record, kv ...any) {
	t.Helper()
	c := counts(t, rec)
	for i := 0; i+1 < len(kv); i += 2 {
		k, want := kv[i].(string), kv[i+1].(int)
		if c[k] != want {
			t.Errorf("measurement %q: counts.%s = %d, want %d (counts %v)", rec.Message, k, c[k], want, c)
		}
	}
}

// wantContains checks that s says each of subs.
func wantContains(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s %q does not say %q", what, s, sub)
		}
	}
}
