package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestRunningWatcher runs one watcher, with its embedded NATS and a real
// Prometheus scraping an exporter, through what the world may send it: hostile
// deploy events, a manual rollback, a deploy no policy covers, checks that
// find no data, and reloads. The subtests share the watcher and run in order:
// the hostile one counts every rejection the watcher has made.
func TestRunningWatcher(t *testing.T) {
	exp := testutil.NewExporter(t)
	for _, svc := range []string{"shop", "reloadable"} {
		exp.Set("watcher_test_orders", map[string]string{"service": svc}, 100)
	}
	prom := testutil.StartPrometheus(t, exp.URL)

	dir := t.TempDir()
	rulesDir := filepath.Join(dir, "rules")
	if err := os.MkdirAll(rulesDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Healthy services pass within a short window; the blind ones query a
	// series that is never exported.
	policy := func(name, service, query, extra string) string {
		return fmt.Sprintf(`  - name: %s
    match: {service: %s, environment: production}
    window: 3s
    interval: 500ms
    checks:
      - name: orders
        query: %s
        min: 1
%s    rollback:
      link: %s/%s/current
`, name, service, query, extra, dir, service)
	}
	healthy := `watcher_test_orders{service="{{ .Service }}"}`
	blind := `watcher_test_never_exported{service="{{ .Service }}"}`
	writeFile(t, filepath.Join(rulesDir, "10-shop.yml"), "policies:\n"+policy("shop", "shop", healthy, ""))
	writeFile(t, filepath.Join(rulesDir, "20-blind.yml"), "policies:\n"+
		policy("blind", "blind", blind, "")+
		policy("blind-strict", "blind-strict", blind, "        no_data: fail\n"))
	reloadRules := filepath.Join(rulesDir, "50-reload.yml")
	writeFile(t, reloadRules, "policies:\n"+policy("reload-old", "reloadable", healthy, ""))

	w := startWatcher(t, "--rules="+filepath.Join(rulesDir, "*.yml"), "--prometheus.url="+prom.URL)
	natsURL := "--nats.url=nats://" + w.nats

	t.Run("hostile deploy events", func(t *testing.T) { testHostileEvents(t, w) })

	t.Run("manual rollback", func(t *testing.T) {
		link := release(t, filepath.Join(dir, "shop"), "2026.11.24-3", "2026.11.25-1")
		// A good release below the previous one: a second rollback must
		// not reach it.
		older := filepath.Join(dir, "shop", "releases", "2026.11.23-1")
		if err := os.MkdirAll(older, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, "shop", "releases", "2026.11.24-3", "previousVersion"), older+"\n")

		// The release rolled back is named (TestPinDeploy covers finding
		// it on DEPLOYS).
		code, out, errOut := cli(t, "rollback", natsURL, "--service=shop", "--environment=production",
			"--version=2026.11.25-1", "--reason=manual: checkout is broken")
		if code != 0 {
			t.Fatalf("rollback exited %d: %s", code, errOut)
		}
		reqID := strings.TrimSpace(out)
		recs := auditUntil(t, w, "rollback.completed for "+reqID, func(recs []audit.Record) bool {
			recs = byRequest(recs, reqID)
			return hasKind(recs, audit.RollbackCompleted) || hasKind(recs, audit.RollbackFailed)
		}, "--service=shop", "--environment=production")
		recs = byRequest(recs, reqID)
		assertOrder(t, kinds(recs), []string{audit.RollbackRequested, audit.RollbackCompleted})
		for _, r := range recs {
			if r.Kind == audit.RollbackRequested && r.Detail["source"] != events.SourceManual {
				t.Errorf("rollback.requested source = %v, want %s", r.Detail["source"], events.SourceManual)
			}
			if r.Kind == audit.RollbackFailed {
				t.Errorf("rollback failed: %s", r.Message)
			}
		}
		if got := readlink(t, link); got != "2026.11.24-3" {
			t.Errorf("link on %s, want the previous release 2026.11.24-3", got)
		}
		b, err := os.ReadFile(filepath.Join(dir, "shop", "releases", "2026.11.25-1", "ROLLED_BACK"))
		if err != nil || !strings.Contains(string(b), "checkout is broken") {
			t.Errorf("ROLLED_BACK marker = %q (%v), want one with the reason", b, err)
		}

		// The same command again: 2026.11.25-1 is rolled back already, so
		// nothing changes; 2026.11.24-3 is not rolled back in its turn.
		code, out, errOut = cli(t, "rollback", natsURL, "--service=shop", "--environment=production",
			"--version=2026.11.25-1", "--reason=manual: again, to be sure")
		if code != 0 {
			t.Fatalf("second rollback exited %d: %s", code, errOut)
		}
		again := strings.TrimSpace(out)
		recs = auditUntil(t, w, "rollback.completed for "+again, func(recs []audit.Record) bool {
			recs = byRequest(recs, again)
			return hasKind(recs, audit.RollbackCompleted) || hasKind(recs, audit.RollbackFailed)
		}, "--service=shop", "--environment=production")
		for _, r := range byRequest(recs, again) {
			if r.Kind == audit.RollbackCompleted && !strings.Contains(r.Message, "nothing to do") {
				t.Errorf("second rollback.completed %q does not say it had nothing to do", r.Message)
			}
			if r.Kind == audit.RollbackFailed {
				t.Errorf("second rollback failed: %s", r.Message)
			}
		}
		if got := readlink(t, link); got != "2026.11.24-3" {
			t.Errorf("after the second rollback the link is on %s, want it left on 2026.11.24-3", got)
		}
		if _, err := os.Stat(filepath.Join(dir, "shop", "releases", "2026.11.24-3", "ROLLED_BACK")); err == nil {
			t.Error("the second rollback marked the good release 2026.11.24-3 rolled back")
		}
	})

	t.Run("no policy matches", func(t *testing.T) {
		code, out, errOut := cli(t, "publish", natsURL, "--service=orphan", "--environment=production",
			"--version=1.0.0", "--format=json")
		if code != 0 {
			t.Fatalf("publish exited %d: %s", code, errOut)
		}
		id := strings.TrimSpace(out)
		recs := byDeploy(auditUntil(t, w, "run.skipped for orphan", func(recs []audit.Record) bool {
			return hasKind(byDeploy(recs, id), audit.RunSkipped)
		}, "--service=orphan"), id)
		if k := kinds(recs); len(k) != 1 {
			t.Errorf("records for the unmatched deploy = %v, want just run.skipped", k)
		}
		if !strings.Contains(recs[0].Message, "no policy matches") {
			t.Errorf("run.skipped message = %q, want it to say no policy matches", recs[0].Message)
		}
	})

	t.Run("no data", func(t *testing.T) {
		links := map[string]string{}
		ids := map[string]string{}
		for _, svc := range []string{"blind", "blind-strict"} {
			links[svc] = release(t, filepath.Join(dir, svc), "2026.11.24-3", "2026.11.25-1")
			code, out, errOut := cli(t, "publish", natsURL, "--service="+svc, "--environment=production",
				"--version=2026.11.25-1")
			if code != 0 {
				t.Fatalf("publish %s exited %d: %s", svc, code, errOut)
			}
			ids[svc] = strings.TrimSpace(out)
		}
		recs := auditUntil(t, w, "both runs decided", func(recs []audit.Record) bool {
			strict := byDeploy(recs, ids["blind-strict"])
			return hasKind(byDeploy(recs, ids["blind"]), audit.RunInconclusive) &&
				(hasKind(strict, audit.RunInconclusive) || hasKind(strict, audit.RunPassed) ||
					hasKind(byService(recs, "blind-strict"), audit.RollbackCompleted) ||
					hasKind(byService(recs, "blind-strict"), audit.RollbackFailed))
		}, "--environment=production")
		lenient, strict := byDeploy(recs, ids["blind"]), byService(recs, "blind-strict")

		// No data is not healthy, and not a reason to roll back either.
		for _, k := range []string{audit.RunPassed, audit.RunFailed, audit.RollbackRequested} {
			if hasKind(lenient, k) {
				t.Errorf("no_data: inconclusive run has a %s record: %v", k, kinds(lenient))
			}
		}
		for _, r := range lenient {
			if r.Kind == audit.Measurement && r.Detail["outcome"] != "inconclusive" {
				t.Errorf("measurement of a series that is never exported: outcome %v, want inconclusive", r.Detail["outcome"])
			}
		}
		if got := readlink(t, links["blind"]); got != "2026.11.25-1" {
			t.Errorf("inconclusive run moved the link to %s", got)
		}

		assertOrder(t, kinds(strict), []string{audit.RunStarted, audit.Measurement, audit.RunFailed,
			audit.RollbackRequested, audit.RollbackCompleted})
		if got := readlink(t, links["blind-strict"]); got != "2026.11.24-3" {
			t.Errorf("no_data: fail run left the link on %s, want 2026.11.24-3", got)
		}
	})

	t.Run("reload", func(t *testing.T) {
		// A broken file: the reload fails, says why, and changes nothing.
		writeFile(t, reloadRules, "policies:\n"+policy("reload-new", "reloadable", healthy, "")+"    colour: blue\n")
		code, body := post(t, "http://"+w.web+"/-/reload")
		if code != http.StatusInternalServerError || !strings.Contains(body, reloadRules) ||
			!strings.Contains(body, `unknown key "colour"`) {
			t.Errorf("reload of a broken file: %d %q, want 500 naming %s and the unknown key", code, body, reloadRules)
		}
		if p := startedPolicy(t, w, natsURL); p != "reload-old" {
			t.Errorf("after a failed reload a deploy ran with policy %q, want the old one, reload-old", p)
		}

		// Fixed: the reload succeeds and new deploys use the new policy.
		writeFile(t, reloadRules, "policies:\n"+policy("reload-new", "reloadable", healthy, ""))
		if code, body := post(t, "http://"+w.web+"/-/reload"); code != http.StatusOK {
			t.Fatalf("reload of the fixed file: %d %q, want 200", code, body)
		}
		if p := startedPolicy(t, w, natsURL); p != "reload-new" {
			t.Errorf("after a reload a deploy ran with policy %q, want reload-new", p)
		}
	})
}

// testHostileEvents publishes, straight onto deploys.*, what a hostile or
// broken tool might: each invalid message must be rejected once, naming the
// field, and the watcher must go on to validate the valid ones after them.
func testHostileEvents(t *testing.T, w *watcherProc) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nc, err := nats.Connect("nats://" + w.nats)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	const subject = "deploys.production.shop"
	native := func(id string, set map[string]any) []byte {
		m := map[string]any{"id": id, "service": "shop", "environment": "production", "version": "2026.11.25-1"}
		for k, v := range set {
			m[k] = v
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// cdevent returns a structured CloudEvent carrying a service.deployed
	// CDEvent, its CDEvent alone, and the CDEvent's type.
	cdevent := func(id string, edit func(ce map[string]any)) (structured, data []byte, typ string) {
		b, err := events.EncodeCDEvent(events.Deploy{ID: id, Service: "shop", Environment: "production",
			Version: "2026.11.25-1", Time: time.Now().UTC()}, "/hostile-test")
		if err != nil {
			t.Fatal(err)
		}
		var ce map[string]any
		if err := json.Unmarshal(b, &ce); err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			edit(ce)
		}
		structured, _ = json.Marshal(ce)
		data, _ = json.Marshal(ce["data"])
		return structured, data, ce["type"].(string)
	}
	setType := func(typ string) func(map[string]any) {
		return func(ce map[string]any) {
			ce["type"] = typ
			ce["data"].(map[string]any)["context"].(map[string]any)["type"] = typ
		}
	}
	ceHeader := nats.Header{"Content-Type": []string{events.ContentTypeCloudEvents}}
	unknownType, _, _ := cdevent("hostile-type", setType("org.example.deploy.finished"))
	oversize := native("hostile-size", nil)
	oversize = append(oversize, strings.Repeat(" ", events.MaxEventSize+1-len(oversize))...)

	hostile := []struct {
		name  string
		hdr   nats.Header
		data  []byte
		field string
	}{
		{"bad JSON", nil, []byte(`{"id":"hostile-json","service":`), "json"},
		{"path service", nil, native("hostile-path", map[string]any{"service": "../../etc"}), "service"},
		{"shell service", nil, native("hostile-shell", map[string]any{"service": "shop;rm -rf /"}), "service"},
		{"version with /", nil, native("hostile-version", map[string]any{"version": "2026/../../etc"}), "version"},
		{"ssh option host", nil, native("hostile-host", map[string]any{"hosts": []string{"-oProxyCommand=x"}}), "hosts[0]"},
		{"subject disagrees", nil, native("hostile-subject", map[string]any{"service": "cart"}), "subject"},
		{"1 MiB + 1 byte", nil, oversize, "size"},
		{"unknown CloudEvent type", ceHeader, unknownType, "type"},
	}
	want := map[uint64]string{} // stream sequence -> field
	names := map[uint64]string{}
	for _, h := range hostile {
		ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: h.hdr, Data: h.data})
		if err != nil {
			t.Fatalf("publishing %s: %v", h.name, err)
		}
		want[ack.Sequence], names[ack.Sequence] = h.field, h.name
	}

	// A well-formed CDEvent that is not a deploy: ignored, not rejected.
	notDeploy, _, _ := cdevent("not-a-deploy", setType("dev.cdevents.service.removed.0.3.0"))
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: ceHeader, Data: notDeploy}); err != nil {
		t.Fatal(err)
	}
	// Then two valid events: a binary-mode CloudEvent and native JSON.
	_, body, typ := cdevent("binary-ok", nil)
	binary := nats.Header{}
	for k, v := range map[string]string{"ce-specversion": "1.0", "ce-id": "ce-binary-ok", "ce-source": "/hostile-test",
		"ce-type": typ, "Content-Type": "application/json"} {
		binary.Set(k, v)
	}
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: binary, Data: body}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, subject, native("native-ok", nil)); err != nil {
		t.Fatal(err)
	}

	recs := auditUntil(t, w, "every event handled", func(recs []audit.Record) bool {
		return len(byKind(recs, audit.EventRejected)) >= len(hostile) &&
			len(byKind(recs, audit.RunStarted)) >= 2 && len(byKind(recs, audit.RunSkipped)) >= 1
	}, "--service=shop", "--environment=production")

	rejected := byKind(recs, audit.EventRejected)
	if len(rejected) != len(hostile) {
		t.Errorf("%d event.rejected records, want %d (one per hostile message)", len(rejected), len(hostile))
	}
	seen := map[uint64]int{}
	for _, r := range rejected {
		f, _ := r.Detail["stream_seq"].(float64)
		seq := uint64(f)
		seen[seq]++
		field, ok := want[seq]
		switch {
		case !ok:
			t.Errorf("event.rejected for stream sequence %d, which is no hostile message: %s", seq, r.Message)
		case r.Detail["field"] != field:
			t.Errorf("%s: rejected on field %v, want %q (%s)", names[seq], r.Detail["field"], field, r.Message)
		case !strings.Contains(r.Message, strconv.Quote(field)):
			t.Errorf("%s: message does not name field %q: %s", names[seq], field, r.Message)
		}
	}
	for seq, name := range names {
		if seen[seq] != 1 {
			t.Errorf("%s: %d event.rejected records, want 1", name, seen[seq])
		}
	}

	started := map[string]bool{}
	for _, r := range byKind(recs, audit.RunStarted) {
		started[r.DeployID] = true
		if r.Policy != "shop" {
			t.Errorf("run.started for %s with policy %q, want shop", r.DeployID, r.Policy)
		}
	}
	if len(started) != 2 || !started["binary-ok"] || !started["native-ok"] {
		t.Errorf("runs started for %v, want exactly binary-ok and native-ok", started)
	}
	for _, r := range byKind(recs, audit.RunStarted) {
		if r.DeployID == "binary-ok" && r.Detail["format"] != events.FormatCloudEventBinary {
			t.Errorf("binary-mode event decoded as %v", r.Detail["format"])
		}
	}
	skipped := byKind(recs, audit.RunSkipped)
	if len(skipped) != 1 || skipped[0].Detail["type"] != "dev.cdevents.service.removed.0.3.0" {
		t.Errorf("run.skipped records = %+v, want one for the service.removed CDEvent", skipped)
	}

	select {
	case code := <-w.done:
		w.done <- code
		t.Fatalf("watcher exited with %d", code)
	default:
	}
	testutil.Eventually(t, 10*time.Second, "event counters", func() bool {
		return metricValue(t, w, `watcher_deploy_events_total{result="rejected"}`) == float64(len(hostile)) &&
			metricValue(t, w, `watcher_deploy_events_total{result="started"}`) == 2 &&
			metricValue(t, w, `watcher_deploy_events_total{result="ignored"}`) == 1
	})
}

// startedPolicy publishes a deploy of reloadable and returns the policy its
// run started with.
func startedPolicy(t *testing.T, w *watcherProc, natsURL string) string {
	t.Helper()
	code, out, errOut := cli(t, "publish", natsURL, "--service=reloadable", "--environment=production",
		"--version=2026.11.25-1")
	if code != 0 {
		t.Fatalf("publish exited %d: %s", code, errOut)
	}
	id := strings.TrimSpace(out)
	recs := byDeploy(auditUntil(t, w, "run.started for "+id, func(recs []audit.Record) bool {
		return len(byDeploy(recs, id)) > 0
	}, "--service=reloadable"), id)
	if recs[0].Kind != audit.RunStarted {
		t.Fatalf("deploy %s: %s, want run.started: %s", id, recs[0].Kind, recs[0].Message)
	}
	return recs[0].Policy
}

// auditUntil reads the audit trail with `watcher history args...` until
// cond holds, and returns what it read last. Each history call leaves an
// ordered consumer on AUDIT for its inactive threshold (5 minutes), and the
// server allows 1000 per stream, so this polls at most a few times a second:
// a condition that never holds then fails on the deadline, not on the limit.
func auditUntil(t *testing.T, w *watcherProc, what string, cond func([]audit.Record) bool, args ...string) []audit.Record {
	t.Helper()
	var recs []audit.Record
	first := true
	testutil.Eventually(t, 30*time.Second, what, func() bool {
		if !first {
			time.Sleep(250 * time.Millisecond)
		}
		first = false
		recs = history(t, w.nats, args...)
		return cond(recs)
	})
	return recs
}

func byService(recs []audit.Record, service string) []audit.Record {
	var out []audit.Record
	for _, r := range recs {
		if r.Service == service {
			out = append(out, r)
		}
	}
	return out
}

func byKind(recs []audit.Record, kind string) []audit.Record {
	var out []audit.Record
	for _, r := range recs {
		if r.Kind == kind {
			out = append(out, r)
		}
	}
	return out
}

func byDeploy(recs []audit.Record, id string) []audit.Record {
	var out []audit.Record
	for _, r := range recs {
		if r.DeployID == id {
			out = append(out, r)
		}
	}
	return out
}

func byRequest(recs []audit.Record, id string) []audit.Record {
	var out []audit.Record
	for _, r := range recs {
		if r.RequestID == id {
			out = append(out, r)
		}
	}
	return out
}

func post(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue reads one series from the watcher's /metrics; -1 when absent.
func metricValue(t *testing.T, w *watcherProc, series string) float64 {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(httpGet(t, "http://"+w.web+"/metrics")))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return f
		}
	}
	return -1
}
