package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/links"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// heldDetail is the rollback.held detail of request id.
func heldDetail(t *testing.T, natsURL, service, id string) audit.RollbackHeldDetail {
	t.Helper()
	for _, r := range byRequest(historyURL(t, natsURL, "--service="+service), id) {
		if d, ok := r.RollbackHeld(); ok {
			return d
		}
	}
	t.Fatalf("no rollback.held of %s", id)
	return audit.RollbackHeldDetail{}
}

func request(t *testing.T, method, u, body string, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestCancelLink: `watcher run` with --web.external-url puts signed links
// in rollback.held. GET on the cancel link shows the request and changes
// nothing; its form's POST cancels (rollback.cancelled, via link). An
// altered or expired link decides nothing. Without basic auth in
// --web.config.file, the unsigned API refuses everyone.
func TestCancelLink(t *testing.T) {
	dir := t.TempDir()
	shop := release(t, filepath.Join(dir, "shop"), "v1", "v2")
	release(t, filepath.Join(dir, "cart"), "v1", "v2")
	web, natsAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	ext := "http://" + web + "/"
	startRun(t, web, "--nats.listen="+natsAddr, "--storage.path="+t.TempDir(), "--rules="+holdRules(t, dir),
		"--prometheus.url=http://127.0.0.1:1", "--web.external-url="+ext)
	natsURL := "nats://" + natsAddr

	id := heldRequest(t, natsURL, "shop", "v2")
	held := heldDetail(t, natsURL, "shop", id)
	if !strings.HasPrefix(held.CancelURL, ext+"rollbacks/"+id+"/cancel?expires=") || held.ApproveURL != "" {
		t.Fatalf("rollback.held links: cancel %q, approve %q", held.CancelURL, held.ApproveURL)
	}
	cartID := heldRequest(t, natsURL, "cart", "v2")
	if d := heldDetail(t, natsURL, "cart", cartID); !strings.HasPrefix(d.ApproveURL, ext+"rollbacks/"+cartID+"/approve?") {
		t.Errorf("an ask's rollback.held has no approve link: %q", d.ApproveURL)
	}

	status, body := request(t, http.MethodGet, held.CancelURL, "", nil)
	if status != http.StatusOK || !strings.Contains(body, "Cancel the rollback of shop in production?") || !strings.Contains(body, "checkout is broken") {
		t.Fatalf("GET the link: %d\n%s", status, body)
	}
	if got := kinds(byRequest(historyURL(t, natsURL, "--service=shop"), id)); strings.Join(got, " ") != "rollback.held" {
		t.Fatalf("after GET, the audit of %s is %v", id, got)
	}

	u, _ := url.Parse(held.CancelURL)
	q := u.Query()
	q.Set(links.ParamSignature, strings.Repeat("A", len(q.Get(links.ParamSignature))))
	form := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	if status, body := request(t, http.MethodPost, ext+"rollbacks/"+id+"/cancel?"+q.Encode(), "by=eve&reason=x", form); status != http.StatusForbidden ||
		!strings.Contains(body, "signature does not match") {
		t.Errorf("a forged link: %d\n%s", status, body)
	}
	// An expired link, signed with the watcher's own key as it is kept.
	kv, err := natsClient(t, natsURL).KeyValue(t.Context(), links.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := kv.Get(t.Context(), "hmac-sha256")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := links.New(entry.Value(), ext)
	if err != nil {
		t.Fatal(err)
	}
	if status, body := request(t, http.MethodPost, signer.URL(id, events.ActionCancel, time.Now().Add(-time.Second)), "by=eve&reason=x", form); status != http.StatusGone ||
		!strings.Contains(body, "This link expired at") {
		t.Errorf("an expired link: %d\n%s", status, body)
	}

	status, body = request(t, http.MethodPost, held.CancelURL, url.Values{"by": {"bob"}, "reason": {"the dip is the provider"}}.Encode(), form)
	if status != http.StatusOK || !strings.Contains(body, "Rollback cancelled") {
		t.Fatalf("POST the link: %d\n%s", status, body)
	}
	recs := byRequest(historyURL(t, natsURL, "--service=shop"), id)
	var refused []string
	var cancelled audit.RollbackDecisionDetail
	for _, r := range recs {
		if d, ok := r.RollbackDecision(); ok {
			cancelled = d
		}
		if d, ok := r.EventRejected(); ok && d.HTTPDecision != nil {
			refused = append(refused, d.Field)
		}
	}
	if cancelled.By != "bob" || cancelled.Via != events.ViaLink || cancelled.Reason != "the dip is the provider" {
		t.Errorf("rollback.cancelled detail %+v", cancelled)
	}
	if strings.Join(refused, " ") != "signature expires" {
		t.Errorf("refusals recorded: %v, want the forged and the expired link", refused)
	}
	if got := readlink(t, shop); got != "v2" {
		t.Errorf("shop on %s after the cancel, want v2", got)
	}

	// No basic_auth_users: the unsigned API takes nobody.
	status, body = request(t, http.MethodPost, ext+"api/v1/rollbacks/"+cartID+"/approve", `{"reason": "go"}`, http.Header{"Content-Type": {"application/json"}})
	if status != http.StatusForbidden || !strings.Contains(body, "basic_auth_users in --web.config.file") {
		t.Errorf("the API without users: %d %s", status, body)
	}
}

// TestDecideAPIBehindBasicAuth: with basic_auth_users in
// --web.config.file, the watcher asks callers for them, and the API
// decides as the user it authenticated, within that user's scope in
// decisions: of --config.file: a user scoped to another service gets 403,
// recorded under the request's service, and the rollback stays held. A
// token of decisions.tokens and a signed link decide without basic auth;
// the status page and /metrics still ask for it, whatever the path says.
func TestDecideAPIBehindBasicAuth(t *testing.T) {
	const token = "chatops-token-3c9d1e7a5b2f4086"
	dir := t.TempDir()
	cart := release(t, filepath.Join(dir, "cart"), "v1", "v2")
	shop := release(t, filepath.Join(dir, "shop"), "v1", "v2")
	writeFile(t, filepath.Join(dir, "chatops-token"), token+"\n")
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webConfig := filepath.Join(dir, "web.yml")
	writeFile(t, webConfig, fmt.Sprintf("basic_auth_users:\n  oncall: %s\n  shopper: %s\n", hash, hash))
	config := filepath.Join(dir, "watcher.yml")
	writeFile(t, config, "decisions:\n  users:\n"+
		"    - {name: oncall, services: [\"*\"], environments: [production]}\n"+
		"    - {name: shopper, services: [\"shop*\"], environments: [production]}\n"+
		"  tokens:\n    - {name: chatops, token_file: chatops-token, services: [shop], environments: [production]}\n")
	web, natsAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	w := startRun(t, web, "--nats.listen="+natsAddr, "--storage.path="+t.TempDir(), "--config.file="+config, "--rules="+holdRules(t, dir),
		"--web.config.file="+webConfig, "--prometheus.url=http://127.0.0.1:1", "--web.external-url=http://"+web+"/")
	natsURL := "nats://" + natsAddr
	id := heldRequest(t, natsURL, "cart", "v2")
	api := "http://" + w.web + "/api/v1/rollbacks/" + id + "/approve"
	as := func(user string) http.Header {
		req, _ := http.NewRequest(http.MethodPost, api, nil)
		req.SetBasicAuth(user, "s3cret")
		return http.Header{"Content-Type": {"application/json"}, "Authorization": {req.Header.Get("Authorization")}}
	}

	if status, _ := request(t, http.MethodPost, api, `{"reason": "go"}`, http.Header{"Content-Type": {"application/json"}}); status != http.StatusUnauthorized {
		t.Errorf("without credentials: %d, want 401", status)
	}
	const outOfScope = `user shopper may not decide on service cart in environment production: its scope in decisions: is services ["shop*"], environments ["production"]`
	if status, body := request(t, http.MethodPost, api, `{"reason": "go"}`, as("shopper")); status != http.StatusForbidden || !strings.Contains(body, outOfScope) {
		t.Errorf("shopper on cart: %d %q, want 403 saying %q", status, body, outOfScope)
	}
	var refused []audit.Record
	testutil.Eventually(t, 10*time.Second, "the refusal in cart's history", func() bool {
		refused = nil
		for _, r := range byRequest(historyURL(t, natsURL, "--service=cart", "--kind=event.rejected"), id) {
			if d, ok := r.EventRejected(); ok && d.HTTPDecision != nil && d.HTTPDecision.User == "shopper" && d.Field == "scope" {
				refused = append(refused, r)
			}
		}
		return len(refused) == 1
	})
	if readlink(t, cart) != "v2" {
		t.Fatal("cart was rolled back by a user out of scope")
	}
	status, body := request(t, http.MethodPost, api, `{"reason": "confirmed with the cart team"}`, as("oncall"))
	if status != http.StatusOK || !strings.Contains(body, `"state":"`) || !strings.Contains(body, `"by":"oncall","via":"http"`) {
		t.Fatalf("approve: %d %s", status, body)
	}
	testutil.Eventually(t, 10*time.Second, "cart rolled back", func() bool { return readlink(t, cart) == "v1" })
	var approved audit.RollbackDecisionDetail
	for _, r := range byRequest(historyURL(t, natsURL, "--service=cart"), id) {
		if d, ok := r.RollbackDecision(); ok {
			approved = d
		}
	}
	if approved.By != "oncall" || approved.Via != events.ViaHTTP || approved.Action != events.ActionApprove {
		t.Errorf("rollback.approved detail %+v", approved)
	}

	if log := w.stderr.String(); !strings.Contains(log, "decisions=\"user oncall, user shopper, token chatops\"") || strings.Contains(log, "cannot authenticate") || strings.Contains(log, token) {
		t.Errorf("the start-up log (want no warning that the token cannot authenticate):\n%s", log)
	}

	// The token cancels shop's rollback without basic auth; a wrong one is
	// refused and recorded by the API, as before.
	shopID := heldRequest(t, natsURL, "shop", "v2")
	cancelAPI := "http://" + w.web + "/api/v1/rollbacks/" + shopID + "/cancel"
	bearer := func(tok string) http.Header {
		return http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer " + tok}}
	}
	if status, body := request(t, http.MethodPost, cancelAPI, `{"reason": "x"}`, bearer("not-"+token)); status != http.StatusUnauthorized || !strings.Contains(body, "not one of decisions.tokens") {
		t.Errorf("a wrong token: %d %s", status, body)
	}
	testutil.Eventually(t, 10*time.Second, "the wrong token's refusal in shop's history", func() bool {
		for _, r := range byRequest(historyURL(t, natsURL, "--service=shop", "--kind=event.rejected"), shopID) {
			if d, ok := r.EventRejected(); ok && d.HTTPDecision != nil && d.HTTPDecision.Status == http.StatusUnauthorized && d.Field == "authorization" {
				return true
			}
		}
		return false
	})
	if status, body := request(t, http.MethodPost, cancelAPI, `{"reason": "the dip is the provider"}`, bearer(token)); status != http.StatusOK ||
		!strings.Contains(body, `"by":"chatops","via":"http"`) {
		t.Fatalf("cancel with the token, no basic auth: %d %s", status, body)
	}

	// A signed link cancels without basic auth.
	linkID := heldRequest(t, natsURL, "shop", "v2")
	held := heldDetail(t, natsURL, "shop", linkID)
	form := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	if status, body := request(t, http.MethodGet, held.CancelURL, "", nil); status != http.StatusOK || !strings.Contains(body, "Cancel the rollback of shop in production?") {
		t.Errorf("GET the link without basic auth: %d %s", status, body)
	}
	if status, body := request(t, http.MethodPost, held.CancelURL, "by=bob&reason=provider", form); status != http.StatusOK || !strings.Contains(body, "Rollback cancelled") {
		t.Errorf("POST the link without basic auth: %d %s", status, body)
	}
	if readlink(t, shop) != "v2" {
		t.Error("shop was rolled back despite both cancels")
	}

	// Everything else still asks for basic auth, whatever the path says.
	for _, target := range []string{"/", "/metrics", "/api/v1/runs", "/api/v1/events/../metrics", "/rollbacks/" + linkID + "/cancel/../../../metrics"} {
		if status, www := rawGet(t, w.web, target, ""); status != http.StatusUnauthorized || www != "Basic" {
			t.Errorf("GET %s without basic auth: %d, WWW-Authenticate %q; want 401 asking for Basic", target, status, www)
		}
	}
	for _, target := range []string{"/", "/metrics"} {
		req, _ := http.NewRequest(http.MethodGet, "/", nil)
		req.SetBasicAuth("oncall", "s3cret")
		if status, _ := rawGet(t, w.web, target, req.Header.Get("Authorization")); status != http.StatusOK {
			t.Errorf("GET %s as oncall: %d, want 200", target, status)
		}
	}
}

// rawGet sends GET target as written, dot segments and all, and returns
// the status and WWW-Authenticate.
func rawGet(t *testing.T, addr, target, authorization string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := "GET " + target + " HTTP/1.1\r\nHost: " + addr + "\r\nConnection: close\r\n"
	if authorization != "" {
		req += "Authorization: " + authorization + "\r\n"
	}
	if _, err := conn.Write([]byte(req + "\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate")
}
