package watch

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	promclient "github.com/rollback-watcher/watcher/internal/promclient"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// Timing of the comparison scenarios. Prometheus scrapes every
// scrapeInterval (500ms); a step of 1s holds two scrapes, which is what
// increase() over {{ .Range }} needs to see a counter move. The window
// holds 21 steps, enough for stats.MinSteps of counts by mid-window.
const (
	cmpInterval = 2 * time.Second
	cmpWindow   = 20 * time.Second
	cmpStep     = time.Second
	cmpLookback = 20 * time.Second
	// cmpLead is how long the traces play before the deploy: the
	// pre_deploy lookback must be in Prometheus by then.
	cmpLead = cmpLookback + 3*time.Second
	// cmpStartup is how long Prometheus may take to start: the traces
	// play live from then on, and the deploy is cmpLead later.
	cmpStartup = 8 * time.Second
	// cmpHistory is how much of a trace before the deploy is backfilled
	// for a scenario that wants history.
	cmpHistory = 4*time.Minute + 10*time.Second
	// slot is the resolution of the traces' noise and counters.
	slot = 100 * time.Millisecond
)

// cpoint is one gauge value of a comparison scenario: labels are those
// besides service.
type cpoint struct {
	metric string
	labels map[string]string
	v      float64
}

// ctrace gives a comparison scenario's gauges at el since its deploy
// (negative before it). It is called with el increasing, from one
// goroutine, so counters may keep their sums.
type ctrace func(el time.Duration) []cpoint

// startCmpBackend starts an exporter and a Prometheus scraping it, with
// the past of the scenarios that want history backfilled up to a second
// ago. It returns the deploy time, after cmpStartup and cmpLead, and each
// scenario's trace, to play live from now on.
func startCmpBackend(t *testing.T, table []cmpScenario) (*backend, time.Time, []ctrace) {
	t.Helper()
	now := time.Now()
	deploy := now.Add(cmpStartup + cmpLead)
	b := &backend{exp: testutil.NewExporter(t)}
	traces := make([]ctrace, len(table))
	families := map[string]*strings.Builder{}
	var names []string
	for i, sc := range table {
		traces[i] = sc.trace()
		if !sc.history {
			continue
		}
		for el := -cmpHistory; deploy.Add(el).Before(now.Add(-time.Second)); el += scrapeInterval {
			for _, pt := range traces[i](el) {
				w, ok := families[pt.metric]
				if !ok {
					w = &strings.Builder{}
					families[pt.metric] = w
					names = append(names, pt.metric)
				}
				// The labels the scrape gives the live samples: one series.
				labels := []string{fmt.Sprintf("service=%q", sc.name), `job="test"`, fmt.Sprintf("instance=%q", b.exp.URL)}
				for k, v := range pt.labels {
					labels = append(labels, fmt.Sprintf("%s=%q", k, v))
				}
				sort.Strings(labels)
				fmt.Fprintf(w, "%s{%s} %g %.3f\n", pt.metric, strings.Join(labels, ","), pt.v, float64(deploy.Add(el).UnixMilli())/1000)
			}
		}
	}
	if len(names) == 0 {
		b.prom = testutil.StartPrometheus(t, b.exp.URL)
	} else {
		var om strings.Builder
		for _, n := range names {
			fmt.Fprintf(&om, "# TYPE %s gauge\n%s", n, families[n].String())
		}
		om.WriteString("# EOF\n")
		b.prom = testutil.StartPrometheusWithHistory(t, om.String(), b.exp.URL)
	}
	q, err := promclient.New(promclient.Options{URL: b.prom.URL})
	if err != nil {
		t.Fatal(err)
	}
	b.q = q
	if late := time.Since(now); late > cmpStartup {
		// Not fatal: the 20s lookbacks then hold a few repeated values
		// from before Prometheus scraped, and the judge sees fewer
		// distinct samples.
		t.Logf("Prometheus took %s to start, more than %s", late.Round(time.Millisecond), cmpStartup)
	}
	return b, deploy, traces
}

// playSeries sets the gauges of service svc from tr every playTick, on a
// grid aligned with the deploy, until the test ends.
func (b *backend) playSeries(t *testing.T, svc string, deploy time.Time, tr ctrace) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		timer := time.NewTimer(0)
		defer timer.Stop()
		for {
			el := time.Duration(math.Ceil(float64(time.Since(deploy))/float64(playTick))) * playTick
			timer.Reset(time.Until(deploy.Add(el)))
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
			for _, pt := range tr(el) {
				labels := map[string]string{"service": svc}
				for k, v := range pt.labels {
					labels[k] = v
				}
				b.exp.Set(pt.metric, labels, pt.v)
			}
		}
	}()
}

// uniform is a deterministic value in [0, 1) for seed and the slot of el.
func uniform(seed uint64, el time.Duration) float64 { return (noise(seed, el) + 1) / 2 }

// noisy is base with 10% jitter, and three times base in about 5% of the
// slots: a latency whose spikes would fail a fixed threshold now and then.
func noisy(seed uint64, base float64, el time.Duration) float64 {
	v := base * (1 + 0.1*noise(seed, el))
	if uniform(seed+1000, el) > 0.95 {
		v *= 3
	}
	return v
}

// poisson draws from a Poisson distribution of mean lambda by inversion
// of u.
func poisson(u, lambda float64) float64 {
	p := math.Exp(-lambda)
	c := p
	k := 0
	for u > c && k < 10000 {
		k++
		p *= lambda / float64(k)
		c += p
	}
	return float64(k)
}

// traffic is a service's requests and errors counters: rps requests a
// second (Poisson), each an error with probability errRate(el) (Poisson
// per slot, at most the slot's requests). The counters start from before
// the traces start playing.
func traffic(seed uint64, rps float64, errRate func(el time.Duration) float64) ctrace {
	next := -cmpLead - 5*time.Second // the next slot to count
	var reqs, errs float64
	return func(el time.Duration) []cpoint {
		for ; next < el; next += slot {
			r := poisson(uniform(seed, next), rps*slot.Seconds())
			reqs += r
			errs += min(r, poisson(uniform(seed+1, next), errRate(next)*r))
		}
		return []cpoint{{metric: "scn_cmp_requests_total", v: reqs}, {metric: "scn_cmp_errors_total", v: errs}}
	}
}

// comparison is the comparison detail of measurement m.
func comparison(t *testing.T, m audit.Record) *audit.ComparisonDetail {
	t.Helper()
	d, ok := m.Detail["comparison"].(*audit.ComparisonDetail)
	if !ok {
		t.Fatalf("measurement %q has no comparison detail", m.Message)
	}
	return d
}

// waitVerdict waits up to d for the record that ends the run of deploy id.
func waitVerdict(h *harness, id string, d time.Duration) audit.Record {
	h.t.Helper()
	var got []audit.Record
	testutil.Eventually(h.t, d, fmt.Sprintf("the verdict on deploy %s", id), func() bool {
		got = h.rec.ofDeploy(id, verdictKinds...)
		return len(got) > 0
	})
	return got[0]
}

// medianInt is the median of xs (the lower one of an even count); 0 for
// none.
func medianInt(xs []int) int {
	if len(xs) == 0 {
		return 0
	}
	s := append([]int(nil), xs...)
	sort.Ints(s)
	return s[(len(s)-1)/2]
}
