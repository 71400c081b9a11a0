package notify

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/config"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

var deliveryRE = regexp.MustCompile(`^(\d+)-[0-9a-f]{12}$`)

// A webhook gets the record exactly as the stream holds it, signed with
// the target's secret.
func TestWebhookPostsTheSignedRecord(t *testing.T) {
	nt := testutil.StartNATS(t)
	rc := newReceiver(t, "s3cret-key")
	r := start(t, nt.JS, []*Target{target(t, "hook", config.NotifyWebhook, rc.URL+"/hook", "s3cret-key", config.NotifyMatch{}, audit.RunFailed)}, nil)
	publish(t, nt.JS, failedRun("shop", "production", "r1"))
	idle(t, nt.JS, DefaultConsumer)

	reqs := rc.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	req := reqs[0]
	if !req.signedOK {
		t.Errorf("signature %q does not verify with the secret", req.signature)
	}
	if req.contentType != "application/json" || req.kind != audit.RunFailed {
		t.Errorf("Content-Type %q, kind header %q", req.contentType, req.kind)
	}
	m := deliveryRE.FindStringSubmatch(req.delivery)
	if m == nil {
		t.Fatalf("X-Watcher-Delivery %q, want <sequence>-<digest>", req.delivery)
	}
	seq, _ := strconv.ParseUint(m[1], 10, 64)
	stream, err := nt.JS.Stream(context.Background(), bus.AuditStream)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := stream.GetMsg(context.Background(), seq)
	if err != nil {
		t.Fatal(err)
	}
	if string(req.body) != string(stored.Data) {
		t.Errorf("body:\n%s\nwant the stream's record byte for byte:\n%s", req.body, stored.Data)
	}
	if got := DeliveryID(seq, stored.Data); got != req.delivery {
		t.Errorf("delivery %q, want %q", req.delivery, got)
	}
	if got := testutil.ToFloat64(t, r.reg, "watcher_notifications_total", "result", ResultSent); got != 1 {
		t.Errorf("sent = %v, want 1", got)
	}
}

func TestSign(t *testing.T) {
	// The HMAC-SHA256 example on Wikipedia's HMAC page.
	got := Sign([]byte("key"), []byte("The quick brown fox jumps over the lazy dog"))
	if want := "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"; got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}

// Slack gets the verdict, the deciding numbers, per-host results and a
// link to the run on the status page.
func TestSlackMessage(t *testing.T) {
	nt := testutil.StartNATS(t)
	rc := newReceiver(t, "")
	start(t, nt.JS, []*Target{target(t, "oncall", config.NotifySlack, rc.URL+"/services/T0/B0/XXXX", "",
		config.NotifyMatch{Service: "shop-*"}, audit.RunFailed, audit.RollbackCompleted, audit.RollbackFailed)}, nil)

	done := audit.Record{Kind: audit.RollbackCompleted, RunID: "r2", RequestID: "req-r2", Service: "shop-api", Environment: "production",
		Version: "2026.11.25-1", Message: "rolled back shop-api in production to 2026.11.24-3 on 2 hosts"}
	_ = done.SetDetail(audit.RollbackResultDetail{From: "2026.11.25-1", To: "2026.11.24-3", Hosts: []audit.HostOutcome{
		{Host: "web1.example.com:22", From: "2026.11.25-1", To: "2026.11.24-3", Switched: true, Duration: 1200 * time.Millisecond},
		{Host: "web2.example.com:22", From: "2026.11.25-1", To: "2026.11.24-3", Switched: true, Duration: 900 * time.Millisecond},
	}})
	failed := audit.Record{Kind: audit.RollbackFailed, RunID: "r3", Service: "shop-web", Environment: "production",
		Message: "rollback of shop-web failed on 1 of 2 hosts"}
	_ = failed.SetDetail(audit.RollbackResultDetail{Error: "1 of 2 hosts failed", Hosts: []audit.HostOutcome{
		{Host: "web3", From: "b", To: "a", Switched: true},
		{Host: "web4", Error: "previous release /srv/shop/releases/a does not exist"},
	}})
	publish(t, nt.JS, failedRun("shop-api", "production", "r1"), done, failed)
	idle(t, nt.JS, DefaultConsumer)

	bodies := map[string]string{}
	for _, req := range rc.requests() {
		if req.signature != "" {
			t.Errorf("a Slack message carries a signature")
		}
		var m struct {
			Text   string            `json:"text"`
			Blocks []json.RawMessage `json:"blocks"`
		}
		if err := json.Unmarshal(req.body, &m); err != nil || m.Text == "" || len(m.Blocks) == 0 {
			t.Fatalf("not an incoming-webhook message (%v): %s", err, req.body)
		}
		bodies[req.kind] = string(req.body)
	}
	for kind, wants := range map[string][]string{
		audit.RunFailed: {"Deploy failed validation", "shop-api in production, version 2026.11.25-1",
			"orders-per-minute = 12 \\u003c min 50 (failure 2 of limit 1)", "*orders-per-minute*: 2 failed of limit 1: 12 \\u0026lt; min 50",
			"https://watcher.example.com/ops/#run-r1|Status page"},
		audit.RollbackCompleted: {"Rollback completed", "2026.11.25-1 → 2026.11.24-3",
			"*web1.example.com:22*: 2026.11.25-1 → 2026.11.24-3 (1.2s)", "*web2.example.com:22*", "#run-r2|Status page", "req-r2"},
		audit.RollbackFailed: {"Rollback FAILED", "Error: 1 of 2 hosts failed", ":x: *web4*: previous release /srv/shop/releases/a does not exist",
			":white_check_mark: *web3*: b → a"},
	} {
		body, ok := bodies[kind]
		if !ok {
			t.Errorf("no %s message", kind)
			continue
		}
		for _, w := range wants {
			if !strings.Contains(body, w) {
				t.Errorf("%s message lacks %q:\n%s", kind, w, body)
			}
		}
	}
}

// 500s are retried with backoff; the record is delivered once, and the
// retries are counted.
func TestRetriesAfterServerErrors(t *testing.T) {
	nt := testutil.StartNATS(t)
	rc := newReceiver(t, "k")
	rc.status = func(n int) int {
		if n <= 2 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}
	r := start(t, nt.JS, []*Target{target(t, "hook", config.NotifyWebhook, rc.URL, "k", config.NotifyMatch{}, audit.RunFailed)}, nil)
	publish(t, nt.JS, failedRun("shop", "production", "r1"))
	idle(t, nt.JS, DefaultConsumer)

	reqs := rc.requests()
	if len(reqs) != 3 || reqs[0].delivery != reqs[2].delivery || string(reqs[0].body) != string(reqs[2].body) {
		t.Fatalf("%d requests, want 3 of the same delivery", len(reqs))
	}
	if d := rc.deliveries(); len(d) != 1 || d[reqs[0].delivery] != 1 {
		t.Errorf("deliveries %v, want one, once", d)
	}
	for result, want := range map[string]float64{ResultRetried: 2, ResultSent: 1, ResultFailed: 0} {
		if got := testutil.ToFloat64(t, r.reg, "watcher_notifications_total", "result", result); got != want {
			t.Errorf("watcher_notifications_total{result=%q} = %v, want %v", result, got, want)
		}
	}
	if f := records(t, nt.JS, audit.NotifyFailed); len(f) != 0 {
		t.Errorf("notify.failed recorded for a delivery that succeeded: %+v", f)
	}
}

// A notification that every attempt fails is recorded as notify.failed
// and counted, naming the target and never its URL; a 4xx is not retried.
func TestFinalFailureIsRecorded(t *testing.T) {
	nt := testutil.StartNATS(t)
	down := newReceiver(t, "k")
	down.status = func(int) int { return http.StatusServiceUnavailable }
	gone := newReceiver(t, "")
	gone.status = func(int) int { return http.StatusNotFound }
	const token = "XOXB-SECRET-TOKEN"
	r := start(t, nt.JS, []*Target{
		target(t, "down", config.NotifyWebhook, down.URL+"/hook/"+token, "k", config.NotifyMatch{}, audit.RunFailed),
		target(t, "gone", config.NotifySlack, gone.URL+"/services/"+token, "", config.NotifyMatch{}, audit.RunFailed),
	}, nil)
	publish(t, nt.JS, failedRun("shop", "production", "r1"))
	idle(t, nt.JS, DefaultConsumer)
	testutil.Eventually(t, 10*time.Second, "two notify.failed records", func() bool {
		return len(records(t, nt.JS, audit.NotifyFailed)) == 2
	})

	if n := len(down.requests()); n != 3 {
		t.Errorf("503 target got %d attempts, want 3 (Attempts)", n)
	}
	if n := len(gone.requests()); n != 1 {
		t.Errorf("404 target got %d attempts, want 1 (not worth retrying)", n)
	}
	byTarget := map[string]audit.Record{}
	for _, rec := range records(t, nt.JS, audit.NotifyFailed) {
		d, ok := rec.NotifyFailed()
		if !ok {
			t.Fatalf("notify.failed without its detail: %+v", rec)
		}
		byTarget[d.Target] = rec
		if d.RecordKind != audit.RunFailed || d.RunID != "r1" || d.RequestID != "req-r1" || !deliveryRE.MatchString(d.Delivery) ||
			rec.Service != "shop" || rec.Environment != "production" || rec.RunID != "r1" {
			t.Errorf("notify.failed %+v detail %+v", rec, d)
		}
		b, _ := json.Marshal(rec)
		if strings.Contains(string(b), token) || strings.Contains(string(b), "/hook") {
			t.Errorf("notify.failed shows the URL: %s", b)
		}
	}
	if d, _ := byTarget["down"].NotifyFailed(); d.Attempts != 3 || !strings.Contains(d.LastError, "503") || d.TargetKind != config.NotifyWebhook {
		t.Errorf("down: %+v", d)
	}
	if d, _ := byTarget["gone"].NotifyFailed(); d.Attempts != 1 || !strings.Contains(d.LastError, "404") {
		t.Errorf("gone: %+v", d)
	}
	for target, want := range map[string]float64{"down": 2, "gone": 0} {
		if got := metricValue(t, r, target, ResultRetried); got != want {
			t.Errorf("retried{target=%s} = %v, want %v", target, got, want)
		}
		if got := metricValue(t, r, target, ResultFailed); got != 1 {
			t.Errorf("failed{target=%s} = %v, want 1", target, got)
		}
	}
	if strings.Contains(r.log.String(), token) {
		t.Errorf("the log shows the URL:\n%s", r.log.String())
	}
}

// A receiver that is not listening at all: connection refused, retried,
// then recorded, with no URL in the error either.
func TestConnectionRefused(t *testing.T) {
	nt := testutil.StartNATS(t)
	addr := testutil.FreeAddr(t)
	r := start(t, nt.JS, []*Target{target(t, "nobody", config.NotifySlack, "http://"+addr+"/services/T0/SECRETPATH", "",
		config.NotifyMatch{}, audit.RunFailed)}, nil)
	publish(t, nt.JS, failedRun("shop", "production", "r1"))
	testutil.Eventually(t, 20*time.Second, "notify.failed", func() bool { return len(records(t, nt.JS, audit.NotifyFailed)) == 1 })
	rec := records(t, nt.JS, audit.NotifyFailed)[0]
	d, _ := rec.NotifyFailed()
	if d.Attempts != 3 || !strings.Contains(d.LastError, "connection refused") || strings.Contains(rec.Message+d.LastError, "SECRETPATH") {
		t.Errorf("notify.failed %q detail %+v", rec.Message, d)
	}
	if strings.Contains(r.log.String(), "SECRETPATH") {
		t.Errorf("the log shows the URL:\n%s", r.log.String())
	}
	if got := testutil.ToFloat64(t, r.reg, "watcher_notifications_total", "result", ResultRetried); got != 2 {
		t.Errorf("retried = %v, want 2", got)
	}
}

func metricValue(t *testing.T, r *running, target, result string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "watcher_notifications_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["target"] == target && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no watcher_notifications_total{target=%q,result=%q}", target, result)
	return 0
}

// Targets get the kinds they subscribe to, for the services and
// environments their globs match, and never notify.failed.
func TestMatchAndOn(t *testing.T) {
	nt := testutil.StartNATS(t)
	shop, all := newReceiver(t, "k"), newReceiver(t, "k")
	start(t, nt.JS, []*Target{
		target(t, "shop-prod", config.NotifyWebhook, shop.URL, "k", config.NotifyMatch{Service: "shop-*", Environment: "production"},
			audit.RunFailed, audit.RollbackCompleted),
		target(t, "everything", config.NotifyWebhook, all.URL, "k", config.NotifyMatch{}, audit.RunFailed, audit.RunPassed),
	}, nil)
	passed := failedRun("shop-api", "production", "p1")
	passed.Kind, passed.Detail = audit.RunPassed, nil
	completed := audit.Record{Kind: audit.RollbackCompleted, RunID: "c1", Service: "shop-api", Environment: "production", Message: "done"}
	nf := audit.Record{Kind: audit.NotifyFailed, Service: "shop-api", Environment: "production", Message: "x"}
	publish(t, nt.JS,
		failedRun("shop-api", "production", "a"), // both
		failedRun("shop-api", "staging", "b"),    // everything
		failedRun("billing", "production", "c"),  // everything
		failedRun("shop", "production", "d"),     // everything: "shop-*" needs the dash
		passed,                                   // everything
		completed,                                // shop-prod
		nf,                                       // nobody
	)
	idle(t, nt.JS, DefaultConsumer)
	got := func(rc *receiver) map[string]bool {
		m := map[string]bool{}
		for _, req := range rc.requests() {
			var rec audit.Record
			if err := json.Unmarshal(req.body, &rec); err != nil {
				t.Fatal(err)
			}
			m[rec.Kind+"/"+rec.RunID] = true
		}
		return m
	}
	wantShop := map[string]bool{"run.failed/a": true, "rollback.completed/c1": true}
	wantAll := map[string]bool{"run.failed/a": true, "run.failed/b": true, "run.failed/c": true, "run.failed/d": true, "run.passed/p1": true}
	if g := got(shop); !equal(g, wantShop) {
		t.Errorf("shop-prod got %v, want %v", g, wantShop)
	}
	if g := got(all); !equal(g, wantAll) {
		t.Errorf("everything got %v, want %v", g, wantAll)
	}
}

func equal(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// A receiver that hangs holds up its own notifications only: another
// target gets every record meanwhile, and the audit trail is written as
// fast as ever.
func TestSlowReceiverBlocksNothingElse(t *testing.T) {
	nt := testutil.StartNATS(t)
	slow, quick := newReceiver(t, "k"), newReceiver(t, "k")
	slow.hang.Store(true)
	start(t, nt.JS, []*Target{
		target(t, "slow", config.NotifyWebhook, slow.URL, "k", config.NotifyMatch{}, audit.RunFailed),
		target(t, "quick", config.NotifyWebhook, quick.URL, "k", config.NotifyMatch{}, audit.RunFailed),
	}, func(n *Notifier) { n.Timeout = time.Minute })
	for i := range 5 {
		publish(t, nt.JS, failedRun("shop", "production", "r"+strconv.Itoa(i)))
	}
	testutil.Eventually(t, 10*time.Second, "quick to get all 5 while slow hangs", func() bool {
		return len(quick.deliveries()) == 5 && slow.hanging.Load() == 5
	})
}

func TestTargetsKeepSecretsOutOfErrors(t *testing.T) {
	dir := t.TempDir()
	bad := config.NotifyTarget{Name: "x", Kind: config.NotifySlack, URLFile: dir + "/url"}
	for _, content := range []string{"hooks.slack.com/services/T0/B0/SECRETTOKEN", "ftp://h/SECRETTOKEN", "http://%zz/SECRETTOKEN"} {
		if err := writeFile(bad.URLFile, content); err != nil {
			t.Fatal(err)
		}
		_, err := Targets([]config.NotifyTarget{bad})
		if err == nil || strings.Contains(err.Error(), "SECRETTOKEN") || !strings.Contains(err.Error(), bad.URLFile) {
			t.Errorf("url %q: error %v, want one naming the file and not the URL", content, err)
		}
	}
	ts, err := Targets([]config.NotifyTarget{{Name: "x", Kind: config.NotifyWebhook, URLFile: writeTemp(t, "https://h.example.com/SECRETTOKEN"), SecretFile: writeTemp(t, "SECRETKEY")}})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{ts[0].String(), ts[0].LogValue().String()} {
		if strings.Contains(s, "SECRET") {
			t.Errorf("a target prints as %q", s)
		}
	}
	if _, err := Targets([]config.NotifyTarget{{Name: "x", Kind: config.NotifyWebhook, URLFile: writeTemp(t, "https://h.example.com/"), SecretFile: writeTemp(t, " \n")}}); err == nil {
		t.Error("an empty secret was accepted")
	}
}
