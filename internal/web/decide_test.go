package web

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/links"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollback"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// holdWorld is a real executor on embedded NATS holding rollbacks: shop's
// for an hour (cancel them), cart's waiting for an answer (approve them).
// The web tests decide them as a person would.
type holdWorld struct {
	n   *testutil.NATS
	dir string
}

func startHolds(t *testing.T) *holdWorld {
	t.Helper()
	n := testutil.StartNATS(t)
	dir := t.TempDir()
	var rules strings.Builder
	rules.WriteString("policies:\n")
	for _, svc := range []struct{ name, extra string }{{"shop", "hold: 1h"}, {"cart", "mode: ask\n      hold: 1h"}} {
		for _, v := range []string{"v1", "v2"} {
			if err := os.MkdirAll(filepath.Join(dir, svc.name, "releases", v), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink("releases/v2", filepath.Join(dir, svc.name, "current")); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&rules, `  - name: %[1]s
    match: {service: %[1]s, environment: production}
    checks:
      - {name: up, query: up, min: 1}
    rollback:
      link: %[2]s/%[1]s/current
      releases_dir: %[2]s/%[1]s/releases
      %[3]s
`, svc.name, dir, svc.extra)
	}
	file := filepath.Join(dir, "rules.yml")
	if err := os.WriteFile(file, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	set, err := policy.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	x := &rollback.Executor{JS: n.JS, Policies: func() *policy.Set { return set }, Audit: &audit.Publisher{JS: n.JS}, Replica: "a", AckWait: 5 * time.Second}
	x.Register(prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	if err := x.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); x.Wait() })
	return &holdWorld{n: n, dir: dir}
}

// hold requests a rollback of service and waits until it is held.
func (hw *holdWorld) hold(t *testing.T, id, service, reason string) {
	t.Helper()
	req := events.RollbackRequest{ID: id, Service: service, Environment: "production", Version: "v2", Reason: reason,
		Source: events.SourceManual, Time: time.Now().UTC()}
	if err := rollbackreq.Publish(t.Context(), hw.n.JS, req); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, id+" held", func() bool {
		h, err := rollbackreq.Lookup(t.Context(), hw.n.JS, id)
		return err == nil && h.Announced
	})
}

func (hw *holdWorld) state(t *testing.T, id string) string {
	t.Helper()
	h, err := rollbackreq.Lookup(t.Context(), hw.n.JS, id)
	if h == nil {
		return err.Error()
	}
	return h.State
}

// records is the audit about request id, or the refusals naming none.
func (hw *holdWorld) records(t *testing.T, id string) []audit.Record {
	t.Helper()
	recs, err := audit.Read(t.Context(), hw.n.JS, audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Record
	for _, r := range recs {
		if r.RequestID == id {
			out = append(out, r)
		}
	}
	return out
}

// refusals are the event.rejected records of HTTP decisions about
// request id (naming none, for id ""), oldest first.
func (hw *holdWorld) refusals(t *testing.T, id string) []audit.Record {
	t.Helper()
	var out []audit.Record
	for _, r := range hw.records(t, id) {
		if d, ok := r.EventRejected(); ok && d.HTTPDecision != nil {
			out = append(out, r)
		}
	}
	return out
}

// nextRefusal waits for the refusal about request id after the first n,
// and checks its status.
func (hw *holdWorld) nextRefusal(t *testing.T, id string, n, status int) (audit.Record, audit.EventRejectedDetail) {
	t.Helper()
	var recs []audit.Record
	testutil.Eventually(t, 5*time.Second, fmt.Sprintf("refusal %d of %q", n+1, id), func() bool {
		recs = hw.refusals(t, id)
		return len(recs) > n
	})
	d, _ := recs[n].EventRejected()
	if d.HTTPDecision.Status != status {
		t.Errorf("refusal %q has status %d, want %d", recs[n].Message, d.HTTPDecision.Status, status)
	}
	return recs[n], d
}

func webConfig(t *testing.T, user, password string) string {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(file, []byte(fmt.Sprintf("basic_auth_users:\n  %s: %s\n", user, hash)), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// decisionServer serves d. Its clock runs ahead by *ahead, so that a
// test can move on to the next minute of the refusal budget.
func decisionServer(t *testing.T, hw *holdWorld, d *Decisions) (*httptest.Server, *prometheus.Registry, *atomic.Int64) {
	t.Helper()
	d.JS, d.Audit = hw.n.JS, &audit.Publisher{JS: hw.n.JS}
	reg := prometheus.NewRegistry()
	d.Register(reg)
	ahead := &atomic.Int64{}
	s := &Server{Gatherer: reg, Reload: func() error { return nil }, Decisions: d,
		now: func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }}
	srv := httptest.NewUnstartedServer(nil)
	s.ListenAddress = srv.Listener.Addr().String()
	srv.Config.Handler = s.Handler()
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, reg, ahead
}

func do(t *testing.T, method, url, body string, headers map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	if u, p, ok := strings.Cut(headers["basic"], ":"); ok {
		req.Header.Del("basic")
		req.SetBasicAuth(u, p)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestDecideAPINeedsUsers: without basic_auth_users in --web.config.file
// there is nobody to authenticate, and the API decides nothing for
// anyone: the refusal says how to configure it, and is recorded.
func TestDecideAPINeedsUsers(t *testing.T) {
	hw := startHolds(t)
	hw.hold(t, "rb-open", "shop", "checkout is broken")
	for _, cfg := range []string{"", filepath.Join(t.TempDir(), "tls-only.yml")} {
		if cfg != "" {
			if err := os.WriteFile(cfg, []byte("tls_server_config: {}\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		srv, _, _ := decisionServer(t, hw, &Decisions{WebConfigFile: cfg})
		// Credentials nobody can check are no credentials.
		resp, body := do(t, http.MethodPost, srv.URL+"/api/v1/rollbacks/rb-open/cancel", `{"reason": "no"}`,
			map[string]string{"Content-Type": "application/json", "basic": "admin:admin"})
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "list them under basic_auth_users in --web.config.file") {
			t.Errorf("web config %q: status %d %q, want 403 saying to configure basic_auth_users", cfg, resp.StatusCode, body)
		}
	}
	if got := hw.state(t, "rb-open"); got != rollbackreq.HoldHeld {
		t.Errorf("the request is %s, want still held", got)
	}
	rec, d := hw.nextRefusal(t, "rb-open", 0, http.StatusForbidden)
	if d.Field != "authorization" || d.HTTPDecision.Via != events.ViaHTTP || d.HTTPDecision.Action != events.ActionCancel ||
		!strings.HasPrefix(rec.Message, "cancel of rollback request rb-open refused (HTTP API, 403): ") {
		t.Errorf("refusal %q %+v %+v", rec.Message, d, d.HTTPDecision)
	}
}

// TestDecideAPI: an authenticated caller cancels and approves held
// rollbacks as `watcher cancel`/`approve` do; everything else is refused
// with a status that says why, and recorded.
func TestDecideAPI(t *testing.T) {
	hw := startHolds(t)
	hw.hold(t, "rb-shop", "shop", "checkout is broken")
	hw.hold(t, "rb-cart", "cart", "cart errors after v2")
	srv, reg, ahead := decisionServer(t, hw, &Decisions{WebConfigFile: webConfig(t, "oncall", "s3cret")})
	api := func(id, action string) string { return srv.URL + "/api/v1/rollbacks/" + id + "/" + action }
	jsonAs := func(user string) map[string]string {
		return map[string]string{"Content-Type": "application/json", "basic": user}
	}

	for _, tc := range []struct {
		name, url, body string
		headers         map[string]string
		status          int
		say, field      string
	}{
		{"no credentials", api("rb-shop", "cancel"), `{"reason": "x"}`, map[string]string{"Content-Type": "application/json"},
			http.StatusUnauthorized, "basic_auth_users and their password are required", "authorization"},
		{"wrong password", api("rb-shop", "cancel"), `{"reason": "x"}`, jsonAs("oncall:guess"), http.StatusUnauthorized, "password", "authorization"},
		{"unknown user", api("rb-shop", "cancel"), `{"reason": "x"}`, jsonAs("mallory:s3cret"), http.StatusUnauthorized, "password", "authorization"},
		{"a form from a page", api("rb-shop", "cancel"), "reason=x", map[string]string{"Content-Type": "application/x-www-form-urlencoded", "basic": "oncall:s3cret"},
			http.StatusUnsupportedMediaType, "Content-Type must be application/json", "content_type"},
		{"cross-site", api("rb-shop", "cancel"), `{"reason": "x"}`, map[string]string{"Content-Type": "application/json", "basic": "oncall:s3cret", "Sec-Fetch-Site": "cross-site"},
			http.StatusForbidden, "cross-origin request refused", "origin"},
		{"unknown field", api("rb-shop", "cancel"), `{"reason": "x", "force": true}`, jsonAs("oncall:s3cret"), http.StatusBadRequest, `unknown field "force"`, "body"},
		{"no reason", api("rb-shop", "cancel"), `{"by": "alice"}`, jsonAs("oncall:s3cret"), http.StatusBadRequest, "reason is required: say why", "reason"},
		{"long reason", api("rb-shop", "cancel"), `{"reason": "` + strings.Repeat("x", events.MaxReasonLen+1) + `"}`, jsonAs("oncall:s3cret"),
			http.StatusBadRequest, "more than 1024", "reason"},
		{"two objects", api("rb-shop", "cancel"), `{"reason": "x"} {"reason": "y"}`, jsonAs("oncall:s3cret"), http.StatusBadRequest, "nothing after it", "body"},
		{"not an id", api("rb%20shop", "cancel"), `{"reason": "x"}`, jsonAs("oncall:s3cret"), http.StatusBadRequest, "is not a rollback request id", "request_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(hw.refusals(t, "rb-shop"))
			resp, body := do(t, http.MethodPost, tc.url, tc.body, tc.headers)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.say) {
				t.Errorf("status %d %q, want %d saying %q", resp.StatusCode, body, tc.status, tc.say)
			}
			if tc.status == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			if tc.field == "request_id" {
				return // names no request: recorded without one
			}
			if _, d := hw.nextRefusal(t, "rb-shop", n, tc.status); d.Field != tc.field {
				t.Errorf("refusal field %q, want %q", d.Field, tc.field)
			}
		})
	}
	if got := hw.state(t, "rb-shop"); got != rollbackreq.HoldHeld {
		t.Fatalf("rb-shop is %s after the refused requests, want held", got)
	}
	refusals := 0
	for _, r := range hw.records(t, "rb-shop") {
		if d, ok := r.EventRejected(); ok && d.HTTPDecision != nil {
			refusals++
			if d.HTTPDecision.Path != "/api/v1/rollbacks/rb-shop/cancel" || d.HTTPDecision.Remote == "" {
				t.Errorf("refusal detail %+v", d.HTTPDecision)
			}
		}
	}
	if refusals != 9 { // all but "not an id", which names no request
		t.Errorf("%d refusals of rb-shop recorded, want 9", refusals)
	}
	// RefusalAuditBudget is spent for this minute: the next refusals
	// would only be counted.
	ahead.Store(int64(time.Minute))

	// Unknown: 404, as JSON.
	resp, body := do(t, http.MethodPost, api("rb-nope", "cancel"), `{"reason": "x"}`, jsonAs("oncall:s3cret"))
	var ans apiAnswer
	if err := json.Unmarshal([]byte(body), &ans); err != nil || resp.StatusCode != http.StatusNotFound || ans.ErrorType != "not_found" ||
		!strings.Contains(ans.Error, "unknown rollback request rb-nope") {
		t.Errorf("unknown request: %d %s (%v)", resp.StatusCode, body, err)
	}
	if _, d := hw.nextRefusal(t, "rb-nope", 0, http.StatusNotFound); d.HTTPDecision.User != "oncall" {
		t.Errorf("the 404's record names user %q, want oncall", d.HTTPDecision.User)
	}

	// Cancel: by the basic-auth user.
	resp, body = do(t, http.MethodPost, api("rb-shop", "cancel"), `{"reason": "the dip is the provider"}`, jsonAs("oncall:s3cret"))
	ans = apiAnswer{}
	if err := json.Unmarshal([]byte(body), &ans); err != nil || resp.StatusCode != http.StatusOK || ans.Status != "success" ||
		ans.Data == nil || ans.Data.State != rollbackreq.HoldCancelled || ans.Data.Decision.By != "oncall" || ans.Data.Decision.Via != events.ViaHTTP ||
		ans.Data.Service != "shop" || !strings.HasPrefix(ans.Data.Description, "cancelled by oncall (http) at ") {
		t.Fatalf("cancel: %d %s (%v)", resp.StatusCode, body, err)
	}
	var cancelled audit.Record
	testutil.Eventually(t, 5*time.Second, "rollback.cancelled", func() bool {
		for _, r := range hw.records(t, "rb-shop") {
			if r.Kind == audit.RollbackCancelled {
				cancelled = r
			}
		}
		return cancelled.Kind != ""
	})
	if d, _ := cancelled.RollbackDecision(); d.By != "oncall" || d.Via != events.ViaHTTP || d.Reason != "the dip is the provider" {
		t.Errorf("rollback.cancelled detail %+v", d)
	}
	// Again: 409, with where it stands.
	resp, body = do(t, http.MethodPost, api("rb-shop", "approve"), `{"reason": "changed my mind"}`, jsonAs("oncall:s3cret"))
	ans = apiAnswer{}
	if err := json.Unmarshal([]byte(body), &ans); err != nil || resp.StatusCode != http.StatusConflict || ans.ErrorType != "not_held" ||
		ans.Data == nil || ans.Data.State != rollbackreq.HoldCancelled || !strings.Contains(ans.Error, "cancelled by oncall (http)") {
		t.Errorf("approve after the cancel: %d %s (%v)", resp.StatusCode, body, err)
	}
	hw.nextRefusal(t, "rb-shop", 9, http.StatusConflict)

	// Approve, on behalf of someone: both names are kept.
	resp, body = do(t, http.MethodPost, api("rb-cart", "approve"), `{"reason": "confirmed with the cart team", "by": "alice"}`, jsonAs("oncall:s3cret"))
	ans = apiAnswer{}
	if err := json.Unmarshal([]byte(body), &ans); err != nil || resp.StatusCode != http.StatusOK || ans.Data.Decision.By != "oncall for alice" {
		t.Fatalf("approve: %d %s (%v)", resp.StatusCode, body, err)
	}
	testutil.Eventually(t, 10*time.Second, "cart rolled back", func() bool {
		s, _ := os.Readlink(filepath.Join(hw.dir, "cart", "current"))
		return s == "releases/v1"
	})
	for result, want := range map[string]float64{decisionDecided: 2, decisionRefused: 10, decisionUnknown: 1, decisionNotHeld: 1} {
		if got := testutil.ToFloat64(t, reg, "watcher_decision_requests_total", "result", result); got != want {
			t.Errorf("watcher_decision_requests_total{result=%q} = %v, want %v", result, got, want)
		}
	}
}

// TestDecideLink: a signed link shows the held request and changes
// nothing on GET (unfurlers and scanners fetch links); its form's POST
// cancels with via link. An altered, expired, or reused link decides
// nothing and says why.
func TestDecideLink(t *testing.T) {
	hw := startHolds(t)
	hw.hold(t, "rb-link", "shop", `checkout <script>alert(1)</script> is broken`)
	d := &Decisions{}
	var err error
	if d.Links, err = links.New([]byte(strings.Repeat("k", links.KeySize)), "https://watcher.example.com"); err != nil {
		t.Fatal(err)
	}
	srv, _, _ := decisionServer(t, hw, d)
	// The links name the external URL; the test reaches the server directly.
	local := func(link string) string { return srv.URL + strings.TrimPrefix(link, "https://watcher.example.com") }
	h, err := rollbackreq.Lookup(t.Context(), hw.n.JS, "rb-link")
	if err != nil {
		t.Fatal(err)
	}
	cancelURL, _ := d.Links.Links("rb-link", h.ExecuteAt, false)
	cancelURL = local(cancelURL)

	// GET: the page, and nothing else, however often.
	for range 3 {
		resp, body := do(t, http.MethodGet, cancelURL, "", nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "Cancel the rollback of shop in production?") ||
			!strings.Contains(body, `<form method="post">`) || !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") ||
			strings.Contains(body, "<script>") || !strings.Contains(body, "Opening this page changed nothing") {
			t.Fatalf("GET: %d\n%s", resp.StatusCode, body)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || resp.Header.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("headers %v", resp.Header)
		}
	}
	if got := hw.state(t, "rb-link"); got != rollbackreq.HoldHeld {
		t.Fatalf("after GETs the request is %s, want held", got)
	}

	u, _ := url.Parse(cancelURL)
	q := u.Query()
	forged := func(edit func(q url.Values)) string {
		qq := url.Values{}
		for k, v := range q {
			qq[k] = append([]string(nil), v...)
		}
		edit(qq)
		return srv.URL + u.Path + "?" + qq.Encode()
	}
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	expired := local(d.Links.URL("rb-link", events.ActionCancel, time.Now().Add(-time.Minute)))
	for _, tc := range []struct {
		name, method, url, body string
		headers                 map[string]string
		status                  int
		say, field              string
	}{
		{"a later expiry", http.MethodPost, forged(func(q url.Values) { q.Set("expires", "9999999999") }), "by=eve&reason=x", form,
			http.StatusForbidden, "signature does not match", "signature"},
		{"no signature", http.MethodGet, forged(func(q url.Values) { q.Del("sig") }), "", nil, http.StatusForbidden, "signature does not match", "signature"},
		{"the cancel signature on approve", http.MethodPost, strings.Replace(cancelURL, "/cancel?", "/approve?", 1), "by=eve&reason=x", form,
			http.StatusForbidden, "signature does not match", "signature"},
		{"expired", http.MethodPost, expired, "by=eve&reason=x", form, http.StatusGone, "This link expired at", "expires"},
		{"cross-site", http.MethodPost, cancelURL, "by=eve&reason=x", map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"},
			http.StatusForbidden, "cross-origin request refused", "origin"},
		{"JSON", http.MethodPost, cancelURL, `{"by": "eve", "reason": "x"}`, map[string]string{"Content-Type": "application/json"},
			http.StatusUnsupportedMediaType, "send the page&#39;s form", "content_type"},
		{"no name", http.MethodPost, cancelURL, "reason=x", form, http.StatusBadRequest, "say who you are", "by"},
		{"no reason", http.MethodPost, cancelURL, "by=eve", form, http.StatusBadRequest, "reason is required", "reason"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(hw.refusals(t, "rb-link"))
			resp, body := do(t, tc.method, tc.url, tc.body, tc.headers)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.say) {
				t.Errorf("status %d, want %d saying %q:\n%s", resp.StatusCode, tc.status, tc.say, body)
			}
			_, d := hw.nextRefusal(t, "rb-link", n, tc.status)
			if d.Field != tc.field || d.HTTPDecision.Via != events.ViaLink || d.HTTPDecision.Method != tc.method || strings.Contains(d.HTTPDecision.Path, "sig") {
				t.Errorf("refusal detail %+v %+v", d, d.HTTPDecision)
			}
		})
	}
	if got := hw.state(t, "rb-link"); got != rollbackreq.HoldHeld {
		t.Fatalf("after the refused requests the request is %s, want held", got)
	}

	resp, body := do(t, http.MethodPost, cancelURL, url.Values{"by": {"bob"}, "reason": {"not us: the provider is down"}}.Encode(), form)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "Rollback cancelled") || !strings.Contains(body, "version v2 stays") {
		t.Fatalf("POST: %d\n%s", resp.StatusCode, body)
	}
	var rec audit.Record
	testutil.Eventually(t, 5*time.Second, "rollback.cancelled", func() bool {
		for _, r := range hw.records(t, "rb-link") {
			if r.Kind == audit.RollbackCancelled {
				rec = r
			}
		}
		return rec.Kind != ""
	})
	if dd, _ := rec.RollbackDecision(); dd.By != "bob" || dd.Via != events.ViaLink || dd.Reason != "not us: the provider is down" {
		t.Errorf("rollback.cancelled detail %+v", dd)
	}
	// The link again: what became of the request. A GET asks for no
	// decision, so it is no refusal either (a refusal is recorded before
	// the answer is sent).
	n := len(hw.refusals(t, "rb-link"))
	resp, body = do(t, http.MethodGet, cancelURL, "", nil)
	if resp.StatusCode != http.StatusConflict || !strings.Contains(body, "This rollback was cancelled by bob (link) at ") || strings.Contains(body, "<form") {
		t.Errorf("GET after the cancel: %d\n%s", resp.StatusCode, body)
	}
	if got := len(hw.refusals(t, "rb-link")); got != n {
		t.Errorf("a GET of a decided request's link was recorded as a refusal (%d, was %d)", got, n)
	}
	if s, _ := os.Readlink(filepath.Join(hw.dir, "shop", "current")); s != "releases/v2" {
		t.Errorf("shop's link -> %s, want releases/v2", s)
	}
}

func TestCountdown(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	for at, want := range map[time.Time]string{
		now.Add(80 * time.Second): "in 1m20s", now.Add(400 * time.Millisecond): "due now", now.Add(-time.Minute): "due now",
	} {
		if got := countdown(at, now); got != want {
			t.Errorf("countdown(%s) = %q, want %q", at.Sub(now), got, want)
		}
	}
}
