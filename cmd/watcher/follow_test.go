package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestHistoryFollow: `history --follow` prints the newest --limit records,
// then each new one as it is written, until interrupted.
func TestHistoryFollow(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, `policies:
  - name: other
    match: {service: other}
    checks: [{name: up, query: up, min: 1}]
    rollback: {link: /srv/other/current}
`)
	w := startWatcher(t, "--rules="+rules, "--prometheus.url=http://127.0.0.1:1")
	natsURL := "--nats.url=nats://" + w.nats
	publish := func(version string) {
		t.Helper()
		// No policy matches: each deploy gets one run.skipped record.
		if code, _, errOut := cli(t, "publish", natsURL, "--service=shop", "--environment=production", "--version="+version); code != 0 {
			t.Fatalf("publish: %s", errOut)
		}
	}
	for _, v := range []string{"v1", "v2", "v3"} {
		publish(v)
	}
	testutil.Eventually(t, 10*time.Second, "3 records", func() bool {
		return len(history(t, w.nats, "--service=shop")) == 3
	})

	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"history", natsURL, "--service=shop", "--limit=2", "--follow"}, out, io.Discard, nil)
	}()
	testutil.Eventually(t, 10*time.Second, "the last 2 records", func() bool { return strings.Count(out.String(), "run.skipped") == 2 })
	publish("v4")
	testutil.Eventually(t, 10*time.Second, "the new record", func() bool { return strings.Contains(out.String(), "deploy v4 not validated") })
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("history --follow exited %d when interrupted, want 0", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("history --follow did not stop when interrupted")
	}
	got := out.String()
	for _, v := range []string{"v2", "v3", "v4"} {
		if !strings.Contains(got, fmt.Sprintf("deploy %s not validated", v)) {
			t.Errorf("output lacks %s:\n%s", v, got)
		}
	}
	if strings.Contains(got, "deploy v1 not validated") {
		t.Errorf("--limit=2 printed the oldest record too:\n%s", got)
	}
}

// TestHistoryKind: `history --kind` keeps the records of the kinds asked,
// by name or glob, repeatable; a glob that cannot match is a usage error.
func TestHistoryKind(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, `policies:
  - name: other
    match: {service: other}
    window: 1m
    checks: [{name: up, query: up, min: 1}]
    rollback: {link: /srv/other/current}
`)
	w := startWatcher(t, "--rules="+rules, "--prometheus.url=http://127.0.0.1:1")
	natsURL := "--nats.url=nats://" + w.nats
	for _, svc := range []string{"shop", "other"} {
		if code, _, errOut := cli(t, "publish", natsURL, "--service="+svc, "--environment=production", "--version=v1"); code != 0 {
			t.Fatalf("publish: %s", errOut)
		}
	}
	testutil.Eventually(t, 10*time.Second, "a skipped and a started run", func() bool {
		return len(history(t, w.nats, "--kind=run.skipped")) == 1 && len(history(t, w.nats, "--kind=run.started")) == 1
	})
	if got := kinds(history(t, w.nats, "--kind=run.started")); strings.Join(got, ",") != "run.started" {
		t.Errorf("--kind=run.started: %v", got)
	}
	// The skip and the start are written by different goroutines: their order in the stream is not fixed.
	got := kinds(history(t, w.nats, "--kind=run.*"))
	sort.Strings(got)
	if strings.Join(got, ",") != "run.skipped,run.started" {
		t.Errorf("--kind=run.*: %v", got)
	}
	if got := kinds(history(t, w.nats, "--kind=run.skipped", "--kind=run.started")); len(got) != 2 {
		t.Errorf("--kind twice: %v", got)
	}
	if got := history(t, w.nats, "--kind=rollback.*"); len(got) != 0 {
		t.Errorf("--kind=rollback.*: %v", kinds(got))
	}
	if code, _, errOut := cli(t, "history", natsURL, "--kind=run.["); code != 2 || !strings.Contains(errOut, "glob of kinds") {
		t.Errorf("--kind=run.[: exit %d, %q; want 2 and what a kind is", code, errOut)
	}
}
