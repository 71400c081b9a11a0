package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// webConfigUsers is a --web.config.file with these basic-auth users, all
// with password s3cret.
func webConfigUsers(t *testing.T, users ...string) string {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("basic_auth_users:\n")
	for _, u := range users {
		fmt.Fprintf(&b, "  %s: %s\n", u, hash)
	}
	file := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

func decisionCredentials(t *testing.T, c DecisionCallers) *DecisionCredentials {
	t.Helper()
	creds, err := NewDecisionCredentials(c)
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

// decided waits for request id's rollback.cancelled or rollback.approved.
func (hw *holdWorld) decided(t *testing.T, id string) audit.RollbackDecisionDetail {
	t.Helper()
	var d audit.RollbackDecisionDetail
	testutil.Eventually(t, 5*time.Second, "the decision of "+id, func() bool {
		for _, r := range hw.records(t, id) {
			if dd, ok := r.RollbackDecision(); ok {
				d = dd
				return true
			}
		}
		return false
	})
	return d
}

// TestDecideAPIScopedUsers: with decisions.users, a basic-auth user
// decides only on the services and environments of its scope; one out of
// scope, or not listed, gets 403 naming it and its scope, the refusal is
// recorded under the request's service and environment, and the request
// stays held.
func TestDecideAPIScopedUsers(t *testing.T) {
	hw := startHolds(t)
	hw.hold(t, "rb-shop", "shop", "checkout is broken")
	hw.hold(t, "rb-cart", "cart", "cart errors after v2")
	srv, reg, _ := decisionServer(t, hw, &Decisions{
		WebConfigFile: webConfigUsers(t, "shopper", "stager", "stranger"),
		Credentials: decisionCredentials(t, DecisionCallers{Users: []DecisionUser{
			{Name: "shopper", Services: []string{"shop", "shop-*"}, Environments: []string{"production"}},
			{Name: "stager", Services: []string{"*"}, Environments: []string{"staging"}},
		}}),
	})
	api := func(id, action string) string { return srv.URL + "/api/v1/rollbacks/" + id + "/" + action }
	as := func(user string) map[string]string {
		return map[string]string{"Content-Type": "application/json", "basic": user + ":s3cret"}
	}

	for i, tc := range []struct {
		name, id, user, service, say string
	}{
		{"service out of scope", "rb-cart", "shopper", "cart",
			`user shopper may not decide on service cart in environment production: its scope in decisions: is services ["shop" "shop-*"], environments ["production"]`},
		{"environment out of scope", "rb-shop", "stager", "shop",
			`user stager may not decide on service shop in environment production: its scope in decisions: is services ["*"], environments ["staging"]`},
		{"not listed", "rb-shop", "stranger", "shop",
			"user stranger may decide on nothing over the HTTP API: it is not listed under decisions.users in the watcher's --config.file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(hw.refusals(t, tc.id))
			resp, body := do(t, http.MethodPost, api(tc.id, "cancel"), `{"reason": "not us"}`, as(tc.user))
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, tc.say) {
				t.Errorf("status %d %q, want 403 saying %q", resp.StatusCode, body, tc.say)
			}
			rec, d := hw.nextRefusal(t, tc.id, n, http.StatusForbidden)
			if rec.Service != tc.service || rec.Environment != "production" || d.Field != "scope" || d.HTTPDecision.User != tc.user ||
				!strings.Contains(rec.Message, tc.say) {
				t.Errorf("refusal %d: %+v %+v %+v", i, rec, d, d.HTTPDecision)
			}
		})
	}
	for _, id := range []string{"rb-shop", "rb-cart"} {
		if got := hw.state(t, id); got != rollbackreq.HoldHeld {
			t.Fatalf("%s is %s after the refused requests, want held", id, got)
		}
	}

	// In scope: decides, as the user.
	resp, body := do(t, http.MethodPost, api("rb-shop", "cancel"), `{"reason": "the dip is the provider"}`, as("shopper"))
	var ans apiAnswer
	if err := json.Unmarshal([]byte(body), &ans); err != nil || resp.StatusCode != http.StatusOK || ans.Data == nil ||
		ans.Data.State != rollbackreq.HoldCancelled || ans.Data.Decision.By != "shopper" {
		t.Fatalf("cancel in scope: %d %s (%v)", resp.StatusCode, body, err)
	}
	if d := hw.decided(t, "rb-shop"); d.By != "shopper" || d.Via != events.ViaHTTP || d.Action != events.ActionCancel {
		t.Errorf("rollback.cancelled detail %+v", d)
	}
	// An unknown request has no scope to check: 404 as before.
	if resp, _ := do(t, http.MethodPost, api("rb-nope", "cancel"), `{"reason": "x"}`, as("shopper")); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown request: %d, want 404", resp.StatusCode)
	}
	// A decided request out of scope: 403, not its state.
	resp, body = do(t, http.MethodPost, api("rb-shop", "approve"), `{"reason": "x"}`, as("stager"))
	if resp.StatusCode != http.StatusForbidden || strings.Contains(body, "cancelled") {
		t.Errorf("a decided request out of scope: %d %s, want 403 without its state", resp.StatusCode, body)
	}
	for result, want := range map[string]float64{decisionDecided: 1, decisionRefused: 4, decisionUnknown: 1} {
		if m := testutil.Series(t, reg, "watcher_decision_requests_total", "via", events.ViaHTTP, "result", result); m.GetCounter().GetValue() != want {
			t.Errorf("watcher_decision_requests_total{via=http,result=%q} = %v, want %v", result, m.GetCounter().GetValue(), want)
		}
	}
}

// TestDecideAPITokens: a bearer token of decisions.tokens decides within
// its scope, as the token's name, where --web.config.file has no users
// (exporter-toolkit would otherwise ask for basic auth first). A wrong or
// missing token is 401 with WWW-Authenticate; no token is ever written
// into an answer or a record.
func TestDecideAPITokens(t *testing.T) {
	const token = "chatops-0123456789abcdef"
	hw := startHolds(t)
	hw.hold(t, "rb-shop", "shop", "checkout is broken")
	hw.hold(t, "rb-cart", "cart", "cart errors after v2")
	srv, _, _ := decisionServer(t, hw, &Decisions{
		Credentials: decisionCredentials(t, DecisionCallers{Tokens: []ScopedSecret{
			{Name: "chatops", Secret: token, Services: []string{"cart"}, Environments: []string{"prod*"}},
		}}),
	})
	api := func(id, action string) string { return srv.URL + "/api/v1/rollbacks/" + id + "/" + action }
	jsonWith := func(authorization string) map[string]string {
		h := map[string]string{"Content-Type": "application/json"}
		if authorization != "" {
			h["Authorization"] = authorization
		}
		return h
	}

	for _, tc := range []struct {
		name, id, authorization string
		status                  int
		say, field              string
	}{
		{"wrong token", "rb-cart", "Bearer not-" + token, http.StatusUnauthorized, "the bearer token is not one of decisions.tokens", "authorization"},
		{"no token", "rb-cart", "", http.StatusUnauthorized, `send "Authorization: Bearer <token>" with a token from decisions.tokens`, "authorization"},
		{"basic auth where tokens are taken", "rb-cart", "Basic b25jYWxsOnMzY3JldA==", http.StatusUnauthorized, `scheme "Basic"`, "authorization"},
		{"out of scope", "rb-shop", "Bearer " + token, http.StatusForbidden,
			`token chatops may not decide on service shop in environment production: its scope in decisions: is services ["cart"], environments ["prod*"]`, "scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(hw.refusals(t, tc.id))
			resp, body := do(t, http.MethodPost, api(tc.id, "cancel"), `{"reason": "x"}`, jsonWith(tc.authorization))
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.say) || strings.Contains(body, token) {
				t.Errorf("status %d %q, want %d saying %q", resp.StatusCode, body, tc.status, tc.say)
			}
			if tc.status == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate %q, want Bearer", resp.Header.Get("WWW-Authenticate"))
			}
			if _, d := hw.nextRefusal(t, tc.id, n, tc.status); d.Field != tc.field {
				t.Errorf("refusal field %q, want %q", d.Field, tc.field)
			}
		})
	}
	if got := hw.state(t, "rb-shop"); got != rollbackreq.HoldHeld {
		t.Fatalf("rb-shop is %s after the refused requests, want held", got)
	}

	resp, body := do(t, http.MethodPost, api("rb-cart", "approve"), `{"reason": "confirmed with the cart team"}`, jsonWith("Bearer "+token))
	var ans apiAnswer
	if err := json.Unmarshal([]byte(body), &ans); err != nil || resp.StatusCode != http.StatusOK || ans.Data.Decision.By != "chatops" {
		t.Fatalf("approve with the token: %d %s (%v)", resp.StatusCode, body, err)
	}
	if d := hw.decided(t, "rb-cart"); d.By != "chatops" || d.Via != events.ViaHTTP || d.Action != events.ActionApprove {
		t.Errorf("rollback.approved detail %+v", d)
	}
	recs, err := audit.Read(t.Context(), hw.n.JS, audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if b, _ := json.Marshal(r); strings.Contains(string(b), token) {
			t.Errorf("the token is in a record: %s", b)
		}
	}
}

// TestDecideAPINobodyListed: `decisions: {}` lets nobody decide over the
// API, and the refusal says where to list callers.
func TestDecideAPINobodyListed(t *testing.T) {
	hw := startHolds(t)
	hw.hold(t, "rb-shop", "shop", "checkout is broken")
	for _, web := range []string{"", webConfigUsers(t, "oncall")} {
		srv, _, _ := decisionServer(t, hw, &Decisions{WebConfigFile: web, Credentials: decisionCredentials(t, DecisionCallers{})})
		resp, body := do(t, http.MethodPost, srv.URL+"/api/v1/rollbacks/rb-shop/cancel", `{"reason": "no"}`,
			map[string]string{"Content-Type": "application/json", "basic": "oncall:s3cret"})
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "decisions") {
			t.Errorf("web config %q: %d %q, want 403 naming decisions", web, resp.StatusCode, body)
		}
	}
	if got := hw.state(t, "rb-shop"); got != rollbackreq.HoldHeld {
		t.Errorf("rb-shop is %s, want held", got)
	}
}

func TestDecisionCredentials(t *testing.T) {
	all := []string{"*"}
	c, err := NewDecisionCredentials(DecisionCallers{
		Users:  []DecisionUser{{Name: "oncall", Services: all, Environments: all}, {Name: "alice", Services: all, Environments: all}},
		Tokens: []ScopedSecret{{Name: "chatops", Secret: "chatops-0123456789abcdef", Services: all, Environments: all}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if s := fmt.Sprint(c) + " / " + c.LogValue().String(); s != "user alice, user oncall, token chatops / user alice, user oncall, token chatops" {
		t.Errorf("String / LogValue %q", s)
	}
	var none *DecisionCredentials
	if s := none.String(); s != "every basic-auth user, every service" {
		t.Errorf("no decisions: %q", s)
	}
	for _, tc := range []struct {
		name string
		c    DecisionCallers
		want string
	}{
		{"a user twice", DecisionCallers{Users: []DecisionUser{{Name: "a"}, {Name: "a"}}}, "decisions.users a is listed twice"},
		{"a user and a token", DecisionCallers{Users: []DecisionUser{{Name: "a"}}, Tokens: []ScopedSecret{{Name: "a", Secret: "a-0123456789abcdef"}}},
			"decisions: a is both a user and a token"},
		{"one token twice", DecisionCallers{Tokens: []ScopedSecret{{Name: "a", Secret: "a-0123456789abcdef"}, {Name: "b", Secret: "a-0123456789abcdef"}}},
			"decisions.tokens b holds the same token as a"},
		{"an empty token", DecisionCallers{Tokens: []ScopedSecret{{Name: "a"}}}, "decisions.tokens a: the token is empty"},
	} {
		if _, err := NewDecisionCredentials(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "0123456789") {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}

	// Warnings: a listed user the web config lacks. Tokens reach the API
	// with basic_auth_users too (basicauth.go): no warning for them.
	d := &Decisions{WebConfigFile: webConfigUsers(t, "oncall"), Credentials: c}
	want := []string{
		"decisions.users alice is not one of basic_auth_users in --web.config.file: it cannot authenticate, so it decides nothing",
	}
	got := d.Warnings()
	if len(got) != len(want) {
		t.Fatalf("warnings %q, want %d", got, len(want))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("warning %d: %q, want it to start %q", i, got[i], want[i])
		}
	}
	if w := (&Decisions{WebConfigFile: webConfigUsers(t, "oncall")}).Warnings(); len(w) != 0 {
		t.Errorf("without decisions: warnings %q", w)
	}
}
