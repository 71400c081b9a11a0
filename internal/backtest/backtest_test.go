package backtest

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// fakeQuerier answers errors_ratio by the time asked: value(service, ts).
// It counts the requests that reach it.
type fakeQuerier struct {
	value func(query string, ts time.Time) float64

	mu       sync.Mutex
	requests int
	latest   time.Time
}

func (f *fakeQuerier) Query(_ context.Context, query string, ts time.Time) (model.Vector, error) {
	f.mu.Lock()
	f.requests++
	if ts.After(f.latest) {
		f.latest = ts
	}
	f.mu.Unlock()
	return model.Vector{{Metric: model.Metric{"instance": "web1"}, Value: model.SampleValue(f.value(query, ts)), Timestamp: model.TimeFromUnixNano(ts.UnixNano())}}, nil
}

func (f *fakeQuerier) QueryRange(ctx context.Context, query string, start, end time.Time, step time.Duration) (model.Matrix, error) {
	ss := &model.SampleStream{Metric: model.Metric{"instance": "web1"}}
	for ts := start; !ts.After(end); ts = ts.Add(step) {
		ss.Values = append(ss.Values, model.SamplePair{Timestamp: model.TimeFromUnixNano(ts.UnixNano()), Value: model.SampleValue(f.value(query, ts))})
	}
	f.mu.Lock()
	f.requests++
	f.mu.Unlock()
	return model.Matrix{ss}, nil
}

func loadRules(t *testing.T, yaml string) *policy.Set {
	t.Helper()
	file := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := policy.Load(file)
	if err != nil {
		t.Fatalf("loading rules: %v", err)
	}
	return set
}

// A 10-minute window measured every minute; two bad minutes fail it.
const shopRules = `policies:
  - name: shop
    match: {service: shop, environment: production}
    window: 10m
    interval: 1m
    checks:
      - name: errors
        query: errors_ratio{service="{{ .Service }}"}
        max: 0.05
        failure_limit: 1
    rollback: {mode: publish}
`

var t0 = time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)

func TestReadFile(t *testing.T) {
	in := `# past deploys
{"id": "d-1", "service": "shop", "environment": "production", "version": "v1", "time": "2026-11-02T10:00:00Z", "expect": "good"}

{"expect": "bad", "id": "d-2", "service": "shop", "environment": "production", "version": "v2", "time": "2026-11-02T12:00:00Z", "labels": {"team": "a"}}
{"id": "d-3", "service": "shop", "environment": "production", "version": "v3", "time": "2026-11-02T14:00:00Z"}
`
	ds, err := ReadFile(strings.NewReader(in), "deploys.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 3 {
		t.Fatalf("%d deploys, want 3", len(ds))
	}
	want := []struct {
		id, expect, from string
		line             int
	}{{"d-1", Good, FromFile, 2}, {"d-2", Bad, FromFile, 4}, {"d-3", "", "", 5}}
	for i, w := range want {
		d := ds[i]
		if d.Event.ID != w.id || d.Expect != w.expect || d.ExpectFrom != w.from || d.Line != w.line {
			t.Errorf("deploy %d: %s expect %q from %q line %d; want %+v", i, d.Event.ID, d.Expect, d.ExpectFrom, d.Line, w)
		}
	}
	if !ds[1].Start.Equal(t0.Add(2*time.Hour)) || ds[1].Event.Labels["team"] != "a" {
		t.Errorf("d-2 starts at %s with labels %v", ds[1].Start, ds[1].Event.Labels)
	}

	// Each refused with the line, and the decoder's own words where the
	// event is at fault.
	bad := []struct{ line, want string }{
		{`{"id": "d-1", "service": "shop", "environment": "production", "version": "v1"}`, `deploys.jsonl:2: deploy d-1 has no "time": a backtest needs`},
		{`{"id": "d-1", "service": "shop", "environment": "production", "version": "v1", "time": "2026-11-02T10:00:00Z", "expect": "ugly"}`, `deploys.jsonl:2: "expect" is "ugly": want "good" or "bad"`},
		{`{"id": "d-1", "service": "shop", "environment": "production", "version": "v1", "time": "2026-11-02T10:00:00Z", "colour": "red"}`, `deploys.jsonl:2: `},
		{`{"id": "d-1", "service": "shop/..", "environment": "production", "version": "v1", "time": "2026-11-02T10:00:00Z"}`, `deploys.jsonl:2: `},
		{`{"id": "d-1", "id": "d-2", "service": "shop", "environment": "production", "version": "v1", "time": "2026-11-02T10:00:00Z"}`, `deploys.jsonl:2: `},
		{`not json`, `deploys.jsonl:2: `},
		{`{"id": "d-0", "service": "shop", "environment": "production", "version": "v1", "time": "2026-11-02T10:00:00Z"}`, `deploys.jsonl:2: deploy id "d-0" again (first on line 1)`},
	}
	for _, b := range bad {
		first := `{"id": "d-0", "service": "shop", "environment": "production", "version": "v0", "time": "2026-11-02T09:00:00Z"}` + "\n"
		_, err := ReadFile(strings.NewReader(first+b.line+"\n"), "deploys.jsonl")
		if err == nil || !strings.HasPrefix(err.Error(), b.want) {
			t.Errorf("%s: %v; want an error starting %q", b.line, err, b.want)
		}
	}
	// The unknown field and the bad service are the decoder's refusals,
	// naming the field.
	for _, b := range []struct{ line, field string }{
		{bad[2].line, "colour"}, {bad[3].line, "service"},
	} {
		if _, err := ReadFile(strings.NewReader(b.line), "f"); err == nil || !strings.Contains(err.Error(), b.field) {
			t.Errorf("%s: %v; want the field %s named", b.line, err, b.field)
		}
	}
}

// TestRun: deploys replayed against their policies, in input order
// whatever order they finish in; the summary counts them against their
// expectations.
func TestRun(t *testing.T) {
	set := loadRules(t, shopRules)
	// shop is bad for 20 minutes from each deploy of a "bad" version:
	// deploys at t0+1h (bad), t0+2h (good), t0+3h (bad but expected good),
	// t0+4h (good but expected bad), checkout has no policy.
	badFrom := map[time.Time]bool{t0.Add(time.Hour): true, t0.Add(3 * time.Hour): true}
	q := &fakeQuerier{value: func(query string, ts time.Time) float64 {
		for at := range badFrom {
			if !ts.Before(at.Add(2*time.Minute)) && ts.Before(at.Add(20*time.Minute)) {
				return 0.2
			}
		}
		return 0.01
	}}
	mk := func(id, svc, version string, at time.Time, expect string) Deploy {
		d, err := decodeLine([]byte(`{"id": "` + id + `", "service": "` + svc + `", "environment": "production", "version": "` + version +
			`", "time": "` + at.Format(time.RFC3339) + `"` + map[bool]string{true: `, "expect": "` + expect + `"`, false: ""}[expect != ""] + `}`))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	deploys := []Deploy{
		mk("d-1", "shop", "v1", t0.Add(time.Hour), Bad),
		mk("d-2", "shop", "v2", t0.Add(2*time.Hour), Good),
		mk("d-3", "shop", "v3", t0.Add(3*time.Hour), Good),
		mk("d-4", "shop", "v4", t0.Add(4*time.Hour), Bad),
		mk("d-5", "checkout", "v1", t0.Add(5*time.Hour), Bad),
		mk("d-6", "shop", "v6", t0.Add(6*time.Hour), ""),
		mk("d-7", "shop", "v7", t0.Add(7*time.Hour), Good), // window open at now
	}
	now := t0.Add(7*time.Hour + 5*time.Minute)
	results, stats, err := Run(context.Background(), Options{Policies: set, Querier: q, Now: now, Workers: 3}, deploys)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		verdict, check, mistake string
		after                   time.Duration
	}{
		{"failed", "errors", "", 3 * time.Minute}, // bad from +2m: fails at the second bad measurement
		{"passed", "", "", 10 * time.Minute},
		{"failed", "errors", "false rollback", 3 * time.Minute},
		{"passed", "", "miss", 10 * time.Minute},
		{"skipped", "", "miss", -1},
		{"passed", "", "", 10 * time.Minute},
		{"skipped", "", "", -1},
	}
	for i, w := range want {
		r := results[i]
		after, ok := r.DecidedAfter()
		if !ok {
			after = -1
		}
		if r.Deploy.Event.ID != deploys[i].Event.ID || r.Verdict != w.verdict || r.Check != w.check || r.Mistake() != w.mistake || after != w.after {
			t.Errorf("%s: %s by %q after %s, mistake %q (%s); want %+v", r.Deploy.Event.ID, r.Verdict, r.Check, after, r.Mistake(), r.Reason, w)
		}
	}
	if m := results[0].Message; m != "errors = 0.2 > max 0.05 (failure 2 of limit 1)" {
		t.Errorf("d-1's deciding measurement: %q", m)
	}
	if r := results[4].Reason; r != "no policy matches service checkout in environment production" {
		t.Errorf("d-5 skipped: %q", r)
	}
	if r := results[6].Reason; !strings.Contains(r, "the validation window is still open (it closes at 2026-11-02T17:10:00Z)") {
		t.Errorf("d-7 skipped: %q", r)
	}
	if q.latest.After(t0.Add(6*time.Hour + 10*time.Minute)) {
		t.Errorf("a query at %s: later than any closed window", q.latest)
	}
	if stats.Requests != q.requests || stats.Asked < stats.Requests {
		t.Errorf("stats %+v, the querier saw %d requests", stats, q.requests)
	}

	s := Summarize(results)
	// d-1 caught, d-3 a false rollback, d-4 and d-5 misses; d-2 right;
	// d-6 has no expectation, d-7 was not replayed.
	if s.Deploys != 7 || s.Expected != 5 || s.FalseRollbacks != 1 || s.Misses != 2 || s.Caught != 1 ||
		*s.Precision != 0.5 || *s.Recall != 1.0/3 || *s.MedianDetection != 3*time.Minute {
		t.Errorf("summary %+v (precision %v, recall %v, median %v)", s, *s.Precision, *s.Recall, *s.MedianDetection)
	}

	var out bytes.Buffer
	if err := WriteJSON(&out, results); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 8 {
		t.Fatalf("%d JSON lines, want 7 deploys and a summary:\n%s", len(lines), out.String())
	}
	wantJSON := []string{
		`{"deploy_id":"d-1","service":"shop","environment":"production","version":"v1","policy":"shop","verdict":"failed","check":"errors","decided_after_seconds":180}`,
		`{"deploy_id":"d-2","service":"shop","environment":"production","version":"v2","policy":"shop","verdict":"passed","check":null,"decided_after_seconds":600}`,
		`{"deploy_id":"d-5","service":"checkout","environment":"production","version":"v1","policy":null,"verdict":"skipped","check":null,"decided_after_seconds":null}`,
		`{"summary":true,"deploys":7,"false_rollbacks":1,"misses":2,"precision":0.5,"recall":0.3333333333333333}`,
	}
	for i, j := range []int{0, 1, 4, 7} {
		if lines[j] != wantJSON[i] {
			t.Errorf("JSON line %d:\n%s\nwant\n%s", j+1, lines[j], wantJSON[i])
		}
	}

	out.Reset()
	if err := WriteTable(&out, results); err != nil {
		t.Fatal(err)
	}
	table := out.String()
	// Compared word by word: the columns' widths are tabwriter's.
	words := strings.Join(strings.Fields(table), " ")
	for _, w := range []string{
		"SERVICE ENVIRONMENT VERSION TIME POLICY VERDICT AFTER EXPECT CHECK MEASUREMENT",
		"shop production v1 2026-11-02T11:00:00Z shop failed 3m0s bad errors errors = 0.2 > max 0.05 (failure 2 of limit 1)",
		"shop production v2 2026-11-02T12:00:00Z shop passed 10m0s good - window closed healthy: errors pass 11 fail 0",
		"shop production v3 2026-11-02T13:00:00Z shop failed 3m0s good: FALSE ROLLBACK errors errors = 0.2",
		"shop production v4 2026-11-02T14:00:00Z shop passed 10m0s bad: MISS - window closed healthy",
		"checkout production v1 2026-11-02T15:00:00Z - skipped - bad: MISS - no policy matches service checkout in environment production",
		"shop production v7 2026-11-02T17:00:00Z shop skipped - good - not replayed: the validation window is still open",
		"7 deploys, 5 judged against an expectation (1 more not replayed):",
		"false rollbacks 1 (good deploys it would have rolled back: d-3)",
		"misses 2 (bad deploys it would have kept: d-4, d-5)",
		"precision 0.5 (1 of 2 rollbacks were of bad deploys)",
		"recall 0.333 (1 of 3 bad deploys caught)",
		"median time to detection 3m0s (deploy to decision, over the 1 bad deploy caught)",
	} {
		if !strings.Contains(words, w) {
			t.Errorf("table lacks %q:\n%s", w, table)
		}
	}
}

// TestSharing: replays asking what another asked get its answer without a
// second request; a failed answer is asked again.
func TestSharing(t *testing.T) {
	q := &fakeQuerier{value: func(string, time.Time) float64 { return 1 }}
	s := newSharing(q, 2)
	ctx := context.Background()
	for range 3 {
		if _, err := s.Query(ctx, "a", t0); err != nil {
			t.Fatal(err)
		}
		if _, err := s.QueryRange(ctx, "a", t0, t0.Add(time.Minute), time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if asked, requests := s.stats(); asked != 6 || requests != 2 || q.requests != 2 {
		t.Errorf("asked %d, %d requests (querier: %d); want 6 asked, 2 requests", asked, requests, q.requests)
	}
	// Keeping 2: a third answer evicts the least recently used, now the
	// range.
	_, _ = s.Query(ctx, "a", t0)
	_, _ = s.Query(ctx, "b", t0)
	_, _ = s.Query(ctx, "a", t0)
	if q.requests != 3 {
		t.Errorf("%d requests, want 3: the instant a was used last and kept", q.requests)
	}
	_, _ = s.QueryRange(ctx, "a", t0, t0.Add(time.Minute), time.Second)
	if q.requests != 4 {
		t.Errorf("%d requests, want 4: the range a was evicted", q.requests)
	}
}

// TestFromAudit: deploys the watcher saw, expecting what it did with each.
func TestFromAudit(t *testing.T) {
	rec := func(at time.Duration, kind, run, deploy, version string, detail any) audit.Record {
		r := audit.Record{Time: t0.Add(at), Kind: kind, RunID: run, DeployID: deploy, Service: "shop", Environment: "production", Version: version}
		if detail != nil {
			if err := r.SetDetail(detail); err != nil {
				t.Fatal(err)
			}
		}
		// As read back from the stream.
		b, _ := json.Marshal(r)
		var back audit.Record
		_ = json.Unmarshal(b, &back)
		return back
	}
	started := func(at time.Duration, run, deploy, version string) audit.Record {
		return rec(at, audit.RunStarted, run, deploy, version, audit.RunStartedDetail{
			DeployTime: t0.Add(at - time.Second), WindowEnd: t0.Add(at + 10*time.Minute - 50*time.Millisecond), Labels: map[string]string{"team": "a"}})
	}
	recs := []audit.Record{
		rec(-time.Hour, audit.RunStarted, "r0", "d-0", "v0", nil), // before --from
		started(0, "r1", "d-1", "v1"),
		rec(3*time.Minute, audit.RunFailed, "r1", "d-1", "v1", nil),
		rec(3*time.Minute, audit.RollbackRequested, "r1", "d-1", "v1", nil),
		started(time.Hour, "r2", "d-2", "v2"),
		rec(time.Hour+10*time.Minute, audit.RunPassed, "r2", "d-2", "v2", nil),
		// Passed, then rolled back by hand: bad.
		started(2*time.Hour, "r3", "d-3", "v3"),
		rec(2*time.Hour+10*time.Minute, audit.RunPassed, "r3", "d-3", "v3", nil),
		rec(2*time.Hour+30*time.Minute, audit.RollbackRequested, "", "", "v3", nil),
		started(3*time.Hour, "r4", "d-4", "v4"),
		rec(3*time.Hour+10*time.Minute, audit.RunInconclusive, "r4", "d-4", "v4", nil),
		rec(4*time.Hour, audit.RunSkipped, "", "d-5", "v5", audit.RunSkippedDetail{Subject: "deploys.production.shop", Format: "json"}),
		rec(4*time.Hour, audit.RunSkipped, "", "d-5", "v5", audit.RunSkippedDetail{Subject: "deploys.production.shop", Reason: "duplicate"}),
		// After --to: its verdict still counts for a run started before.
		started(5*time.Hour, "r6", "d-6", "v6"),
		rec(5*time.Hour+10*time.Minute+time.Second, audit.RunPassed, "r6", "d-6", "v6", nil),
		started(6*time.Hour, "r7", "d-7", "v7"),
	}
	ds := FromAudit(recs, t0, t0.Add(5*time.Hour+time.Minute))
	want := []struct{ id, expect, why string }{
		{"d-1", Bad, "rolled back"}, {"d-2", Good, "passed"}, {"d-3", Bad, "rolled back"}, {"d-4", "", ""}, {"d-5", "", ""}, {"d-6", Good, "passed"},
	}
	if len(ds) != len(want) {
		t.Fatalf("%d deploys, want %d: %+v", len(ds), len(want), ds)
	}
	for i, w := range want {
		d := ds[i]
		if d.Event.ID != w.id || d.Expect != w.expect || d.Why != w.why || (w.expect != "" && d.ExpectFrom != FromWatcher) {
			t.Errorf("deploy %d: %s expect %q (%s) from %q; want %+v", i, d.Event.ID, d.Expect, d.Why, d.ExpectFrom, w)
		}
	}
	if d := ds[0]; !d.Event.Time.Equal(t0.Add(-time.Second)) || d.Event.Labels["team"] != "a" || !d.liveWindowEnd.Equal(t0.Add(10*time.Minute-50*time.Millisecond)) {
		t.Errorf("d-1 from its run.started: time %s, labels %v, window end %s", d.Event.Time, d.Event.Labels, d.liveWindowEnd)
	}

	// A run.started that records its run's start gives it as it is.
	withStart := rec(0, audit.RunStarted, "r9", "d-9", "v9", audit.RunStartedDetail{
		DeployTime: t0.Add(-time.Second), Start: t0.Add(-70 * time.Millisecond), WindowEnd: t0.Add(10*time.Minute - 70*time.Millisecond)})
	if got := FromAudit([]audit.Record{withStart}, t0.Add(-time.Minute), t0.Add(time.Minute)); len(got) != 1 || !got[0].Start.Equal(t0.Add(-70*time.Millisecond)) || !got[0].liveStart {
		t.Errorf("deploy from a run.started with its start: %+v, want start %s", got, t0.Add(-70*time.Millisecond))
	}

	// The live run's start, placed by its window's end, is where the
	// replay starts: 50ms before its record.
	set := loadRules(t, shopRules)
	q := &fakeQuerier{value: func(string, time.Time) float64 { return 0.01 }}
	res, _, err := Run(context.Background(), Options{Policies: set, Querier: q, Now: t0.Add(24 * time.Hour)}, ds[:1])
	if err != nil {
		t.Fatal(err)
	}
	if got := res[0].Decided; !got.Equal(t0.Add(10*time.Minute - 50*time.Millisecond)) {
		t.Errorf("d-1 replayed to %s, want the live window's end %s", got, t0.Add(10*time.Minute-50*time.Millisecond))
	}

	if err := Override(ds, []string{"d-4=bad", "d-1=good"}); err != nil {
		t.Fatal(err)
	}
	if ds[3].Expect != Bad || ds[3].ExpectFrom != FromFlag || ds[0].Expect != Good || ds[0].Why != "" {
		t.Errorf("overridden: d-4 %q from %q, d-1 %q (%s)", ds[3].Expect, ds[3].ExpectFrom, ds[0].Expect, ds[0].Why)
	}
	for _, bad := range []string{"d-9=bad", "d-1=meh", "d-1"} {
		if err := Override(ds, []string{bad}); err == nil {
			t.Errorf("--expect %s accepted", bad)
		}
	}
}
