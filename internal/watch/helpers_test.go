package watch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// script answers one instant query. n counts the calls with that query text
// so far, from 0, so a script can give values per call; ts is the evaluation
// time the watcher asked for, so a script can also answer per time.
type script func(ctx context.Context, query string, n int, ts time.Time) (model.Vector, error)

type queryCall struct {
	Query string
	TS    time.Time
	Start time.Time // a range query's; zero for an instant one
}

// fakeQuerier is the Prometheus side: a scripted Querier that remembers
// every call.
type fakeQuerier struct {
	mu     sync.Mutex
	script script
	calls  []queryCall
	counts map[string]int
}

func (f *fakeQuerier) Query(ctx context.Context, query string, ts time.Time) (model.Vector, error) {
	f.mu.Lock()
	n := f.counts[query]
	f.counts[query]++
	f.calls = append(f.calls, queryCall{Query: query, TS: ts})
	s := f.script
	f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s(ctx, query, n, ts)
}

// QueryRange evaluates the script at every step from start to end, as
// Prometheus evaluates a range query, and counts as one call (at end, with
// Start set).
func (f *fakeQuerier) QueryRange(ctx context.Context, query string, start, end time.Time, step time.Duration) (model.Matrix, error) {
	f.mu.Lock()
	n := f.counts[query]
	f.counts[query]++
	f.calls = append(f.calls, queryCall{Query: query, TS: end, Start: start})
	s := f.script
	f.mu.Unlock()
	byLabels := map[string]*model.SampleStream{}
	var m model.Matrix
	for ts := start; !ts.After(end); ts = ts.Add(step) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		v, err := s(ctx, query, n, ts)
		if err != nil {
			return nil, err
		}
		for _, smp := range v {
			k := smp.Metric.String()
			ss := byLabels[k]
			if ss == nil {
				ss = &model.SampleStream{Metric: smp.Metric}
				byLabels[k] = ss
				m = append(m, ss)
			}
			ss.Values = append(ss.Values, model.SamplePair{Timestamp: model.TimeFromUnixNano(ts.UnixNano()), Value: smp.Value})
		}
	}
	return m, nil
}

// callsFor returns the calls whose query contains substr, in order.
func (f *fakeQuerier) callsFor(substr string) []queryCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []queryCall
	for _, c := range f.calls {
		if strings.Contains(c.Query, substr) {
			out = append(out, c)
		}
	}
	return out
}

// vec is an instant vector with one series per value.
func vec(vs ...float64) model.Vector {
	out := make(model.Vector, len(vs))
	for i, v := range vs {
		out[i] = &model.Sample{
			Metric:    model.Metric{"instance": model.LabelValue(fmt.Sprintf("web%d:9100", i+1))},
			Value:     model.SampleValue(v),
			Timestamp: model.Now(),
		}
	}
	return out
}

// always answers every query with the same series.
func always(vs ...float64) script {
	return func(context.Context, string, int, time.Time) (model.Vector, error) { return vec(vs...), nil }
}

// step is one scripted answer.
type step struct {
	v   model.Vector
	err error
}

func val(vs ...float64) step { return step{v: vec(vs...)} }
func fails(msg string) step  { return step{err: errors.New(msg)} }

var empty = step{v: model.Vector{}}

// steps answers the nth call of a query with steps[n], and every later call
// with the last step.
func steps(ss ...step) script {
	return func(_ context.Context, _ string, n int, _ time.Time) (model.Vector, error) {
		s := ss[min(n, len(ss)-1)]
		return s.v, s.err
	}
}

// byQuery answers each query with the script of the first key it contains.
func byQuery(m map[string]script) script {
	return func(ctx context.Context, q string, n int, ts time.Time) (model.Vector, error) {
		for k, s := range m {
			if strings.Contains(q, k) {
				return s(ctx, q, n, ts)
			}
		}
		return nil, fmt.Errorf("fake querier: no script for %q", q)
	}
}

// recorder is the Auditor: it keeps every record in memory, for polling,
// after writing it with the real audit.Publisher, so that every record of
// every test also goes through JSON and the AUDIT stream.
type recorder struct {
	t   testing.TB
	pub *audit.Publisher

	mu   sync.Mutex
	recs []audit.Record
	// failures makes the next Record calls fail, as an audit stream that is
	// down would; refused keeps what they were given.
	failures int
	refused  []audit.Record
}

func (r *recorder) Record(ctx context.Context, rec audit.Record) error {
	if rec.Time.IsZero() {
		rec.Time = time.Now().UTC()
	}
	if _, err := json.Marshal(rec); err != nil {
		r.t.Errorf("audit record %s cannot be encoded: %v (%+v)", rec.Kind, err, rec)
		return err
	}
	r.mu.Lock()
	if r.failures > 0 {
		r.failures--
		r.refused = append(r.refused, rec)
		r.mu.Unlock()
		return errors.New("audit stream unavailable (scripted)")
	}
	r.mu.Unlock()
	if err := r.pub.Record(ctx, rec); err != nil {
		return err
	}
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
	return nil
}

func (r *recorder) where(keep func(audit.Record) bool) []audit.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []audit.Record
	for _, rec := range r.recs {
		if keep(rec) {
			out = append(out, rec)
		}
	}
	return out
}

// ofDeploy returns the records about deploy id, of the given kinds (all
// kinds if none are given), oldest first.
func (r *recorder) ofDeploy(id string, kinds ...string) []audit.Record {
	return r.where(func(rec audit.Record) bool {
		if rec.DeployID != id {
			return false
		}
		if len(kinds) == 0 {
			return true
		}
		for _, k := range kinds {
			if rec.Kind == k {
				return true
			}
		}
		return false
	})
}

// verdictKinds are the records that end a run.
var verdictKinds = []string{audit.RunPassed, audit.RunFailed, audit.RunInconclusive, audit.RunMarginal, audit.RunSuperseded}

// harness is a Watcher consuming from a real embedded NATS server.
type harness struct {
	t      *testing.T
	nats   *testutil.NATS
	js     jetstream.JetStream
	w      *Watcher
	q      *fakeQuerier
	rec    *recorder
	reg    *prometheus.Registry
	ctx    context.Context
	cancel context.CancelFunc
	set    atomic.Pointer[policy.Set]
	once   sync.Once
}

// newHarness starts a Watcher with the policies in rules (YAML) and the
// Prometheus answers of s. It is stopped, and waited for, at the end of
// the test.
func newHarness(t *testing.T, rules string, s script) *harness {
	t.Helper()
	n := testutil.StartNATS(t)
	h := &harness{
		t:    t,
		nats: n,
		js:   n.JS,
		q:    &fakeQuerier{script: s, counts: map[string]int{}},
		reg:  prometheus.NewRegistry(),
	}
	h.rec = &recorder{t: t, pub: &audit.Publisher{JS: n.JS}}
	h.set.Store(loadRules(t, rules))
	h.w = &Watcher{
		JS:       n.JS,
		Policies: h.set.Load,
		Querier:  h.q,
		Audit:    h.rec,
		Logger:   slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	h.w.Register(h.reg)
	h.ctx, h.cancel = context.WithCancel(context.Background())
	if err := h.w.Start(h.ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(h.stop)
	return h
}

// stop cancels the watcher's context and waits for it; a Wait that hangs
// fails the test.
func (h *harness) stop() {
	h.t.Helper()
	h.once.Do(func() {
		h.cancel()
		done := make(chan struct{})
		go func() { h.w.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			h.t.Fatalf("Wait did not return within 10s of cancelling the context")
		}
	})
}

// loadRules writes a rules file into a fresh directory and loads it with
// policy.Load.
func loadRules(t *testing.T, yaml string) *policy.Set {
	t.Helper()
	file := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := policy.Load(file)
	if err != nil {
		t.Fatalf("loading rules:\n%s\nerror: %v", yaml, err)
	}
	return set
}

// deployEvent is a native JSON deploy event (README, "Deploy event (native
// JSON)").
func deployEvent(id, service, env, version string, more ...any) map[string]any {
	d := map[string]any{"id": id, "service": service, "environment": env, "version": version}
	for i := 0; i+1 < len(more); i += 2 {
		d[more[i].(string)] = more[i+1]
	}
	return d
}

// publish sends d as native JSON on deploys.<environment>.<service> and
// returns its stream sequence.
func (h *harness) publish(d map[string]any) uint64 {
	h.t.Helper()
	b, err := json.Marshal(d)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.publishRaw(events.Subject(events.DeploysPrefix, d["environment"].(string), d["service"].(string)), nil, b)
}

func (h *harness) publishRaw(subject string, hdr nats.Header, data []byte) uint64 {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := h.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: hdr, Data: data})
	if err != nil {
		h.t.Fatalf("publishing on %s: %v", subject, err)
	}
	return ack.Sequence
}

// waitFor waits for a record of deploy id of one of kinds and returns the
// first.
func (h *harness) waitFor(id string, kinds ...string) audit.Record {
	h.t.Helper()
	var got []audit.Record
	testutil.Eventually(h.t, 15*time.Second, fmt.Sprintf("%v record for deploy %s", kinds, id), func() bool {
		got = h.rec.ofDeploy(id, kinds...)
		return len(got) > 0
	})
	return got[0]
}

// waitMeasurements waits for at least n measurements of deploy id.
func (h *harness) waitMeasurements(id string, n int) []audit.Record {
	h.t.Helper()
	var got []audit.Record
	testutil.Eventually(h.t, 15*time.Second, fmt.Sprintf("%d measurements of deploy %s", n, id), func() bool {
		got = h.rec.ofDeploy(id, audit.Measurement)
		return len(got) >= n
	})
	return got
}

// rollbacks returns every message on the ROLLBACKS stream.
func (h *harness) rollbacks() []*jetstream.RawStreamMsg {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, bus.RollbacksStream)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			h.t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// series returns the series of name whose labels include the given ones
// (pairs) in the harness's registry, nil when there is none.
func (h *harness) series(name string, labels ...string) *dto.Metric {
	h.t.Helper()
	return testutil.Series(h.t, h.reg, name, labels...)
}

// metric returns the value of the series of name with the given labels in
// the harness's registry, and whether there is one.
func (h *harness) metric(name string, labels ...string) (float64, bool) {
	h.t.Helper()
	switch m := h.series(name, labels...); {
	case m == nil:
	case m.Gauge != nil:
		return m.Gauge.GetValue(), true
	case m.Counter != nil:
		return m.Counter.GetValue(), true
	}
	return math.NaN(), false
}

// mustMetric is metric, failing the test when the series is missing.
func (h *harness) mustMetric(name string, labels ...string) float64 {
	h.t.Helper()
	v, ok := h.metric(name, labels...)
	if !ok {
		h.t.Fatalf("no series %s%v in the registry", name, labels)
	}
	return v
}

// waitMetric waits until the series has value want.
func (h *harness) waitMetric(want float64, name string, labels ...string) {
	h.t.Helper()
	testutil.Eventually(h.t, 15*time.Second, fmt.Sprintf("%s%v == %v", name, labels, want), func() bool {
		v, ok := h.metric(name, labels...)
		return ok && v == want
	})
}

// detailTime reads a time from a record's detail, as kept in memory.
func detailTime(t *testing.T, rec audit.Record, key string) time.Time {
	t.Helper()
	v, ok := rec.Detail[key].(time.Time)
	if !ok {
		t.Fatalf("%s record: detail.%s = %#v, want a time.Time", rec.Kind, key, rec.Detail[key])
	}
	return v
}

// counts reads a measurement's detail.counts, as kept in memory.
func counts(t *testing.T, rec audit.Record) map[string]int {
	t.Helper()
	c, ok := rec.Detail["counts"].(map[string]int)
	if !ok {
		t.Fatalf("measurement detail.counts = %#v, want map[string]int", rec.Detail["counts"])
	}
	return c
}

// expectedMeasurements is how many measurements a healthy run takes: at
// initial_delay, then every interval while not past the window.
func expectedMeasurements(window, interval, delay time.Duration) int {
	if delay > window {
		return 0
	}
	return int((window-delay)/interval) + 1
}

// policyYAML writes one policy with one check.
func policyYAML(name, match, timing, check string) string {
	return fmt.Sprintf(`  - name: %s
    match: %s
%s
    checks:
%s
    rollback:
      mode: publish
`, name, match, indent(timing, 4), indent(check, 6))
}

func indent(s string, n int) string {
	pad := strings.Repeat(" ", n)
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i, l := range lines {
		lines[i] = pad + l
	}
	return strings.Join(lines, "\n")
}
