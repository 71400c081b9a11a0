package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/rollback"
	"github.com/rollback-watcher/watcher/internal/testutil"
	"github.com/rollback-watcher/watcher/internal/watch"
)

// TestReplicasShareWorkAndSurviveAKill: three watchers on a 3-node
// JetStream cluster, 200 deploys of which 50 go bad, one watcher SIGKILLed
// halfway through. Every deploy gets exactly one run and one verdict,
// exactly the 50 bad ones are rolled back, once each, and the audit shows
// it all.
func TestReplicasShareWorkAndSurviveAKill(t *testing.T) {
	const deploys, everyBad = 200, 4 // svc-000, svc-004, ... go bad: 50
	cluster := testutil.StartCluster(t, 3)
	exp := testutil.NewExporter(t)
	dir := t.TempDir()
	bad := map[string]bool{}
	for i := range deploys {
		svc := fmt.Sprintf("svc-%03d", i)
		v := 120.0
		if i%everyBad == 0 {
			v, bad[svc] = 3, true
		}
		exp.Set("orders_per_minute", map[string]string{"service": svc}, v)
		release(t, filepath.Join(dir, svc), "v1", "v2")
	}
	prom := testutil.StartPrometheus(t, exp.URL)
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, fmt.Sprintf(`policies:
  - name: orders
    match: {service: "svc-*", environment: production}
    window: 6s
    interval: 1s
    checks:
      - name: orders-per-minute
        query: orders_per_minute{service="{{ .Service }}"}
        min: 50
    rollback:
      link: %s/{{ .Service }}/current
`, dir))
	var procs []*proc
	for i := range 3 {
		procs = append(procs, startProc(t, "--nats.url="+cluster.URL, "--nats.replicas=3", "--rules="+rules,
			"--prometheus.url="+prom.URL, fmt.Sprintf("--runs.replica=r%d", i+1), "--runs.lease=1s"))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	publish := func(i int) {
		svc := fmt.Sprintf("svc-%03d", i)
		b, _ := json.Marshal(map[string]any{"id": "deploy-" + svc, "service": svc, "environment": "production", "version": "v2", "previous_version": "v1"})
		if _, err := cluster.JS.Publish(ctx, "deploys.production."+svc, b); err != nil {
			t.Fatalf("publish %s: %v", svc, err)
		}
	}
	for i := range deploys / 2 {
		publish(i)
	}
	time.Sleep(1500 * time.Millisecond) // r2 has runs in their windows, some decided
	procs[1].kill(t)
	killed := time.Now()
	for i := deploys / 2; i < deploys; i++ {
		publish(i)
	}

	var recs []audit.Record
	verdicts := func() int {
		got, err := audit.Read(ctx, cluster.JS, audit.Filter{Environment: "production"})
		if err != nil {
			// A cluster under this load may answer "no responders"
			// for a moment (a leader moving): read again.
			t.Logf("reading the audit stream: %v", err)
			return -1
		}
		recs = got
		n := 0
		for _, r := range recs {
			if r.Kind == audit.RunPassed || r.Kind == audit.RunFailed || r.Kind == audit.RunInconclusive {
				n++
			}
		}
		return n
	}
	testutil.Eventually(t, 90*time.Second, "200 verdicts", func() bool { return verdicts() >= deploys })
	time.Sleep(2 * time.Second) // anything doubled would show up by now
	testutil.Eventually(t, 30*time.Second, "the audit stream read again", func() bool { return verdicts() >= 0 })

	type perDeploy struct{ started, passed, failed, requested, completed, resumed int }
	per := map[string]*perDeploy{}
	startedBy := map[string]int{}
	completedIDs := map[string]int{}
	for _, r := range recs {
		svc := r.Service
		if per[svc] == nil {
			per[svc] = &perDeploy{}
		}
		p := per[svc]
		switch r.Kind {
		case audit.RunStarted:
			p.started++
			startedBy[fmt.Sprint(r.Detail["replica"])]++
		case audit.RunPassed:
			p.passed++
		case audit.RunFailed:
			p.failed++
		case audit.RollbackRequested:
			p.requested++
		case audit.RollbackCompleted:
			p.completed++
			completedIDs[r.RequestID]++
		case watch.RunResumed:
			p.resumed++
		}
	}
	var problems []string
	resumed, rolledBack := 0, 0
	for i := range deploys {
		svc := fmt.Sprintf("svc-%03d", i)
		p := per[svc]
		if p == nil {
			problems = append(problems, svc+": no record at all (lost)")
			continue
		}
		resumed += p.resumed
		rolledBack += p.completed
		want := perDeploy{started: 1, passed: 1, resumed: p.resumed}
		if bad[svc] {
			want = perDeploy{started: 1, failed: 1, requested: 1, completed: 1, resumed: p.resumed}
		}
		if *p != want {
			problems = append(problems, fmt.Sprintf("%s: %+v, want %+v", svc, *p, want))
		}
		link := readlink(t, filepath.Join(dir, svc, "current"))
		if wantLink := map[bool]string{true: "v1", false: "v2"}[bad[svc]]; link != wantLink {
			problems = append(problems, fmt.Sprintf("%s: link on %s, want %s", svc, link, wantLink))
		}
	}
	sort.Strings(problems)
	if len(problems) > 0 {
		t.Errorf("%d deploys went wrong:\n%s", len(problems), strings.Join(problems, "\n"))
	}
	if rolledBack != deploys/everyBad || len(completedIDs) != deploys/everyBad {
		t.Errorf("%d rollback.completed for %d request ids, want %d", rolledBack, len(completedIDs), deploys/everyBad)
	}
	if resumed == 0 {
		t.Error("no run was taken over from the killed replica")
	}
	t.Logf("runs started by replica: %v; taken over after r2 was killed: %d; rollbacks: %d; last verdict %s after the kill",
		startedBy, resumed, rolledBack, lastTime(recs).Sub(killed).Round(time.Millisecond))

	// The buckets and streams are replicated as --nats.replicas says.
	for _, stream := range []string{"KV_" + watch.RunsBucket, "KV_" + watch.ReplicasBucket, "KV_" + watch.VerifyBucket, "KV_" + rollback.RequestsBucket, "DEPLOYS", "AUDIT"} {
		s, err := cluster.JS.Stream(ctx, stream)
		if err != nil {
			t.Errorf("stream %s: %v", stream, err)
			continue
		}
		if r := s.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("stream %s has %d replicas, want 3", stream, r)
		}
	}
}

func lastTime(recs []audit.Record) time.Time {
	var last time.Time
	for _, r := range recs {
		if r.Time.After(last) {
			last = r.Time
		}
	}
	return last
}

// TestReplicasStartedTogetherOnAFreshCluster: three watchers launched at
// the same instant against a cluster that has just started (no stream, no
// bucket, the meta leader perhaps still being elected), as pods or systemd
// units start. Each creates the streams and buckets at once with the
// others; all three must come up and stay up, and a deploy then gets one
// run.
func TestReplicasStartedTogetherOnAFreshCluster(t *testing.T) {
	cluster := testutil.StartFreshCluster(t, 3)
	exp := testutil.NewExporter(t)
	exp.Set("orders_per_minute", map[string]string{"service": "shop"}, 120)
	prom := testutil.StartPrometheus(t, exp.URL)
	dir := t.TempDir()
	release(t, filepath.Join(dir, "shop"), "v1", "v2")
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, fmt.Sprintf(`policies:
  - name: orders
    match: {service: shop, environment: production}
    window: 3s
    interval: 1s
    checks:
      - name: orders-per-minute
        query: orders_per_minute{service="{{ .Service }}"}
        min: 50
    rollback:
      link: %s/shop/current
`, dir))
	var procs []*proc
	for i := range 3 {
		procs = append(procs, launchProc(t, "--nats.url="+cluster.URL, "--nats.replicas=3", "--rules="+rules,
			"--prometheus.url="+prom.URL, fmt.Sprintf("--runs.replica=r%d", i+1)))
	}
	for _, p := range procs {
		p.waitReady(t)
	}
	time.Sleep(2 * time.Second) // one that fails late would have exited by now
	for i, p := range procs {
		if p.hasExited() {
			t.Fatalf("replica r%d exited after it was ready: %s", i+1, p.log.String())
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, _ := json.Marshal(map[string]any{"id": "deploy-shop", "service": "shop", "environment": "production", "version": "v2", "previous_version": "v1"})
	if _, err := cluster.JS.Publish(ctx, "deploys.production.shop", b); err != nil {
		t.Fatalf("publish: %v", err)
	}
	var started, verdicts int
	testutil.Eventually(t, 30*time.Second, "the deploy's verdict", func() bool {
		recs, err := audit.Read(ctx, cluster.JS, audit.Filter{Environment: "production"})
		if err != nil {
			t.Logf("reading the audit stream: %v", err)
			return false
		}
		started, verdicts = 0, 0
		for _, r := range recs {
			switch r.Kind {
			case audit.RunStarted:
				started++
			case audit.RunPassed, audit.RunFailed, audit.RunInconclusive:
				verdicts++
			}
		}
		return verdicts > 0
	})
	time.Sleep(time.Second) // a second run would show by now
	if started != 1 || verdicts != 1 {
		t.Errorf("%d run.started and %d verdicts for one deploy, want 1 and 1", started, verdicts)
	}
}
