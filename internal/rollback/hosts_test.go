package rollback

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// announce publishes the deploy that req rolls back on DEPLOYS, as a
// deploy tool would have, naming hosts.
func announce(t *testing.T, n *testutil.NATS, req events.RollbackRequest, hosts ...string) {
	t.Helper()
	b, err := events.EncodeNative(events.Deploy{
		ID: req.DeployID, Service: req.Service, Environment: req.Environment,
		Version: req.Version, Hosts: hosts, Time: time.Now().UTC(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.JS.Publish(t.Context(), events.Subject(events.DeploysPrefix, req.Environment, req.Service), b); err != nil {
		t.Fatal(err)
	}
}

// TestExecuteRefusesHostsTheDeployDidNotAnnounce: when the
// policy lists no hosts, a request may name only the hosts that the deploy
// it rolls back announced. Whoever may publish a rollback request must not
// point the watcher's SSH key at a host of their choice; a refused request
// dials nothing, touches nothing and is recorded.
func TestExecuteRefusesHostsTheDeployDidNotAnnounce(t *testing.T) {
	n := testutil.StartNATS(t)
	tests := []struct {
		name      string
		announced []string // nil: no deploy announced at all
		deployID  string
		hosts     []string
		want      string // "" : executed
	}{
		{name: "announced hosts", announced: []string{"web1:22", "web2:22"}, hosts: []string{"web1:22", "web2:22"}},
		{name: "a subset of the announced hosts", announced: []string{"web1:22", "web2:22"}, hosts: []string{"web2:22"}},
		{name: "a host the deploy did not announce", announced: []string{"web1:22"}, hosts: []string{"web1:22", "attacker.example:22"},
			want: "names hosts [attacker.example:22] that deploy d-42 (version v2) did not announce"},
		{name: "no such deploy", announced: []string{"web1:22"}, deployID: "d-other", hosts: []string{"web1:22"},
			want: "no deploy d-other of " + "shopd in production on DEPLOYS announced them"},
		{name: "nothing announced", hosts: []string{"web1:22"}, want: "no deploy d-42 of shope in production"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Each case its own service, so that deploys of one case are
			// not found by another.
			root := t.TempDir()
			perHost := host{link: filepath.Join(root, "{{ .Host }}", "current"), releases: filepath.Join(root, "{{ .Host }}", "releases")}
			svc := "shop" + string(rune('a'+i))
			for _, name := range []string{"web1", "web2", "attacker.example"} {
				dir := filepath.Join(root, name)
				h := host{root: dir, releases: filepath.Join(dir, "releases"), link: filepath.Join(dir, "current")}
				mkdir(t, h.releases)
				h.release(t, "v1", -time.Hour)
				h.release(t, "v2", 0, PreviousVersionFile, "v1\n")
				symlink(t, "releases/v2", h.link)
			}
			e, rec, _ := newExecutor(t, n, loadRules(t, policyYAML("shop", svc, perHost)))
			var mu sync.Mutex
			var dialed []string
			dial := staticDial(nil)
			e.Dial = func(ctx context.Context, h string, cfg policy.SSH) (Target, error) {
				mu.Lock()
				dialed = append(dialed, h)
				mu.Unlock()
				return dial(ctx, h, cfg)
			}
			req := request("rb-hosts-" + svc)
			req.Service = svc
			if tc.announced != nil {
				announce(t, n, req, tc.announced...)
			}
			if tc.deployID != "" {
				req.DeployID = tc.deployID
			}
			req.Hosts = tc.hosts
			before := snapshot(t, root)

			res := e.Execute(ctxFor(t), req)

			if tc.want == "" {
				if res.Status != ResultCompleted {
					t.Fatalf("result %s: %v", res.Status, res.Err)
				}
				return
			}
			if res.Status != ResultFailed || res.Retry || !errors.Is(res.Err, errHostsNotAnnounced) {
				t.Fatalf("result %s (retry %v): %v; want refused", res.Status, res.Retry, res.Err)
			}
			assertUnchanged(t, before, root)
			if len(dialed) > 0 {
				t.Errorf("dialed %v for a refused request", dialed)
			}
			failed := one(t, rec.all(), audit.RollbackFailed)
			if !strings.Contains(failed.Message, tc.want) || !strings.Contains(failed.Message, "nothing touched") {
				t.Errorf("rollback.failed %q\ndoes not say %q", failed.Message, tc.want)
			}
		})
	}
}

// TestExecuteRepeatedManualRollbackIsANoop: a manual request
// pinned to the release it rolls back, run after that release was rolled
// back (by an automatic rollback or the same command run twice), changes
// nothing: the good release below stays current and unmarked, neither the
// after command nor the data step runs again, and the audit says so.
func TestExecuteRepeatedManualRollbackIsANoop(t *testing.T) {
	n := testutil.StartNATS(t)
	h := deployed(t) // current -> v2, v2/previousVersion -> v1, v0 below
	writeFile(t, filepath.Join(h.rel("v1"), PreviousVersionFile), "v0\n")
	runs := filepath.Join(t.TempDir(), "runs")
	rules := loadRules(t, policyYAML("shop", "shop", h,
		"after: "+yamlList("sh", "-c", `echo after >> "$0"`, runs),
		"data: {command: "+yamlList("sh", "-c", `echo data >> "$0"`, runs)+", run_on: local, order: after_code, timeout: 10s}"))
	e, rec, reg := newExecutor(t, n, rules)

	auto := request("rb-auto")
	if res := e.Execute(ctxFor(t), auto); res.Status != ResultCompleted {
		t.Fatalf("automatic rollback: %s %v", res.Status, res.Err)
	}
	for i, id := range []string{"rb-manual-1", "rb-manual-2"} {
		manual := request(id)
		manual.Source, manual.RunID, manual.DeployID = events.SourceManual, "", ""
		res := e.Execute(ctxFor(t), manual)
		if res.Status != ResultSkipped {
			t.Fatalf("manual rollback %d: %s %v, want a no-op", i+1, res.Status, res.Err)
		}
		var done audit.Record
		for _, r := range rec.all() {
			if r.Kind == audit.RollbackCompleted && r.RequestID == id {
				done = r
			}
		}
		if !strings.Contains(done.Message, "nothing to do") || !strings.Contains(done.Message, "by request rb-auto") {
			t.Errorf("rollback.completed %q does not say that rb-auto rolled it back already", done.Message)
		}
	}
	if got := readlink(t, h.link); got != "releases/v1" {
		t.Errorf("link -> %s, want releases/v1 (the good release stays)", got)
	}
	if exists(t, filepath.Join(h.rel("v1"), MarkerFile)) {
		t.Error("the good release v1 was marked rolled back")
	}
	if got := readFile(t, runs); got != "after\ndata\n" {
		t.Errorf("after and data ran %q, want once each, for the automatic rollback", got)
	}
	if got := rollbacks(t, reg, ResultSkipped); got != 2 {
		t.Errorf("watcher_rollbacks_total{result=skipped} = %v, want 2", got)
	}
}

// TestRequestFinishesWhatAFailedOneLeft: a request
// switched and marked the release, then its data step failed, so it ended
// rollback.failed. Rolling back the same release again must not pass that
// off as "nothing to do": the new request finds the earlier one unfinished
// and runs what is left (the data step), without running the after
// command that already ran to its end.
func TestRequestFinishesWhatAFailedOneLeft(t *testing.T) {
	n := testutil.StartNATS(t)
	h := deployed(t)
	dir := t.TempDir()
	dataOK, runs := filepath.Join(dir, "data-may-pass"), filepath.Join(dir, "runs")
	rules := loadRules(t, policyYAML("shop", "shop", h,
		"after: "+yamlList("sh", "-c", `echo after >> "$0"`, runs),
		"data: {command: "+yamlList("sh", "-c", `[ -e "$0" ] && echo data >> "$1"`, dataOK, runs)+", run_on: local, order: after_code, timeout: 10s}"))
	startExecutor(t, n, rules, "a")

	waitResult := func(id string) audit.Record {
		t.Helper()
		var res audit.Record
		testutil.Eventually(t, 10*time.Second, "the result of "+id, func() bool {
			for _, r := range auditOf(t, n) {
				if r.RequestID == id && (r.Kind == audit.RollbackCompleted || r.Kind == audit.RollbackFailed) {
					res = r
					return true
				}
			}
			return false
		})
		return res
	}
	publishRequest(t, n, "rb-first", "rb-first")
	if r := waitResult("rb-first"); r.Kind != audit.RollbackFailed || !strings.Contains(r.Message, "data step failed") {
		t.Fatalf("first request: %s %q, want failed in its data step", r.Kind, r.Message)
	}
	writeFile(t, dataOK, "")
	publishRequest(t, n, "rb-second", "rb-second")
	r := waitResult("rb-second")
	if r.Kind != audit.RollbackCompleted || strings.Contains(r.Message, "nothing to do") {
		t.Fatalf("second request: %s %q, want it to finish the rollback", r.Kind, r.Message)
	}
	if got := readFile(t, runs); got != "after\ndata\n" {
		t.Errorf("ran %q, want the after command once (first request) and the data step once (second)", got)
	}
	if got := readlink(t, h.link); got != "releases/v1" {
		t.Errorf("link -> %s", got)
	}
}

// TestExecuteChecksHostsByDeploySequence: a request that names its deploy
// by stream sequence (as validation runs, alerts and watcher rollback do)
// is checked in one read, so a flood of messages on the deploy subject
// after a bad deploy cannot stop its rollback; one that does not is
// refused past the search limit rather than trusted.
func TestExecuteChecksHostsByDeploySequence(t *testing.T) {
	n := testutil.StartNATS(t)
	root := t.TempDir()
	perHost := host{link: filepath.Join(root, "{{ .Host }}", "current"), releases: filepath.Join(root, "{{ .Host }}", "releases")}
	dir := filepath.Join(root, "web1")
	h := host{root: dir, releases: filepath.Join(dir, "releases"), link: filepath.Join(dir, "current")}
	mkdir(t, h.releases)
	h.release(t, "v1", -time.Hour)
	h.release(t, "v2", 0, PreviousVersionFile, "v1\n")
	symlink(t, "releases/v2", h.link)
	e, rec, _ := newExecutor(t, n, loadRules(t, policyYAML("shop", "shop", perHost)))
	e.Dial = staticDial(nil)

	req := request("rb-seq")
	req.Hosts = []string{"web1:22"}
	announce(t, n, req, req.Hosts...)
	info, err := n.JS.Stream(t.Context(), "DEPLOYS")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := info.GetLastMsgForSubject(t.Context(), "deploys.production.shop")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1100 {
		if _, err := n.JS.Publish(t.Context(), "deploys.production.shop", []byte(fmt.Sprintf("junk %d", i))); err != nil {
			t.Fatal(err)
		}
	}

	unnamed := req
	unnamed.ID = "rb-seq-unnamed"
	if res := e.Execute(ctxFor(t), unnamed); res.Status != ResultFailed || !strings.Contains(res.Err.Error(), "not among the newest 1000 messages") {
		t.Fatalf("without deploy_seq: %s %v, want refused past the search limit", res.Status, res.Err)
	}
	wrong := req
	wrong.ID, wrong.DeploySeq = "rb-seq-wrong", msg.Sequence+5 // a junk message
	if res := e.Execute(ctxFor(t), wrong); res.Status != ResultFailed || !errors.Is(res.Err, errHostsNotAnnounced) {
		t.Fatalf("deploy_seq of a junk message: %s %v, want refused", res.Status, res.Err)
	}
	req.DeploySeq = msg.Sequence
	if res := e.Execute(ctxFor(t), req); res.Status != ResultCompleted {
		t.Fatalf("with deploy_seq: %s %v; audit %v", res.Status, res.Err, rec.kinds())
	}
}
