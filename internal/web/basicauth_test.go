package web

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/links"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
	"github.com/rollback-watcher/watcher/internal/watch"
)

// rawRequest sends a request line as written, so that a path such as
// /api/v1/events/../metrics reaches the server uncleaned, and returns the
// status and the WWW-Authenticate header.
func rawRequest(t *testing.T, addr, method, target string, header map[string]string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nContent-Length: 0\r\n", method, target, addr)
	for k, v := range header {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	b.WriteString("\r\n")
	if _, err := conn.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate")
}

// TestBasicAuth: with basic_auth_users, every route asks for a user but
// those that carry their own credential: the ingest endpoints, the signed
// links, and the decisions API when it is sent a bearer token. Paths that
// clean to another route do not slip past, and edits to the file apply
// at the next request.
func TestBasicAuth(t *testing.T) {
	const token = "chatops-0123456789abcdef"
	hw := startHolds(t)
	hw.hold(t, "rb-shop", "shop", "checkout is broken")
	hw.hold(t, "rb-cart", "cart", "cart errors after v2")
	hw.hold(t, "rb-link", "shop", "checkout is broken")
	file := webConfigUsers(t, "oncall")
	wc, err := NewWebConfig(file, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d := &Decisions{JS: hw.n.JS, Audit: &audit.Publisher{JS: hw.n.JS}, WebConfigFile: file,
		Credentials: decisionCredentials(t, DecisionCallers{
			Users:  []DecisionUser{{Name: "oncall", Services: []string{"*"}, Environments: []string{"*"}}},
			Tokens: []ScopedSecret{{Name: "chatops", Secret: token, Services: []string{"cart"}, Environments: []string{"*"}}},
		})}
	if d.Links, err = links.New([]byte(strings.Repeat("k", links.KeySize)), "https://watcher.example.com"); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	d.Register(reg)
	s := &Server{Gatherer: reg, Reload: func() error { return nil }, Decisions: d, WebConfig: wc,
		Runs: func() (active, recent []watch.RunStatus) { return nil, nil }}
	srv := httptest.NewUnstartedServer(nil)
	s.ListenAddress = srv.Listener.Addr().String()
	srv.Config.Handler = s.Handler()
	srv.Start()
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()

	basic := func(user, pass string) string {
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		r.SetBasicAuth(user, pass)
		return r.Header.Get("Authorization")
	}
	asked := func(status int, wwwAuth string) bool { return status == http.StatusUnauthorized && wwwAuth == "Basic" }

	for _, tc := range []struct{ method, target, authorization string }{
		{"GET", "/metrics", ""},
		{"GET", "/metrics", basic("oncall", "guess")},
		{"GET", "/metrics", basic("mallory", "s3cret")},
		{"GET", "/api/v1/runs", ""},
		{"GET", "/-/healthy", ""},
		{"POST", "/-/reload", ""},
		{"GET", "/no/such/page", ""},
		// Paths that clean to a route that asks for basic auth: the mux
		// would redirect them there, and nothing is served unasked.
		{"GET", "/api/v1/events/../metrics", ""},
		{"POST", "/api/v1/events/../../-/reload", ""},
		{"GET", "/rollbacks/x/cancel/../../../metrics", ""},
		{"GET", "/api/v1/events/%2e%2e/metrics", ""},
		{"POST", "//api/v1/events", ""},
		{"POST", "/api/v1/events/", ""},
		{"GET", "/api/v1/events", ""},
		// The decisions API without a bearer token, or with one in another
		// scheme's place, is basic auth's.
		{"POST", "/api/v1/rollbacks/rb-shop/cancel", ""},
		{"POST", "/api/v1/rollbacks/rb-shop/cancel", "Token " + token},
		{"POST", "/api/v1/rollbacks/rb-shop/cancel/../cancel", "Bearer " + token},
	} {
		if status, www := rawRequest(t, addr, tc.method, tc.target, map[string]string{"Authorization": tc.authorization}); !asked(status, www) {
			t.Errorf("%s %s (Authorization %.12q): %d, WWW-Authenticate %q; want 401 asking for Basic", tc.method, tc.target, tc.authorization, status, www)
		}
	}
	if status, _ := rawRequest(t, addr, "GET", "/metrics", map[string]string{"Authorization": basic("oncall", "s3cret")}); status != http.StatusOK {
		t.Errorf("GET /metrics as oncall: %d, want 200", status)
	}
	if status, _ := rawRequest(t, addr, "GET", "/api/v1/events/../metrics", map[string]string{"Authorization": basic("oncall", "s3cret")}); status != http.StatusTemporaryRedirect {
		t.Errorf("GET /api/v1/events/../metrics as oncall: %d, want the mux's redirect", status)
	}

	// Ingest: the handler answers (here: not enabled), not basic auth.
	for _, p := range []string{"/api/v1/events", "/api/v1/hooks/github", "/api/v1/hooks/gitlab"} {
		if resp, body := do(t, http.MethodPost, srv.URL+p, "{}", map[string]string{"Content-Type": "application/json"}); resp.StatusCode != http.StatusNotFound ||
			!strings.Contains(body, "deploy events over HTTP are not enabled") {
			t.Errorf("POST %s without basic auth: %d %q, want the endpoint's own 404", p, resp.StatusCode, body)
		}
	}

	// The decisions API with a bearer token: the token decides, a wrong
	// one is refused and recorded by the API.
	api := func(id, action string) string { return srv.URL + "/api/v1/rollbacks/" + id + "/" + action }
	n := len(hw.refusals(t, "rb-cart"))
	resp, body := do(t, http.MethodPost, api("rb-cart", "approve"), `{"reason": "x"}`, map[string]string{"Content-Type": "application/json", "Authorization": "Bearer not-" + token})
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") || !strings.Contains(body, "not one of decisions.tokens") {
		t.Errorf("a wrong token: %d %q %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
	}
	if _, rd := hw.nextRefusal(t, "rb-cart", n, http.StatusUnauthorized); rd.Field != "authorization" {
		t.Errorf("the wrong token's refusal: field %q", rd.Field)
	}
	resp, body = do(t, http.MethodPost, api("rb-cart", "approve"), `{"reason": "confirmed"}`, map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + token})
	if resp.StatusCode != http.StatusOK || hw.decided(t, "rb-cart").By != "chatops" {
		t.Errorf("approve with the token and no basic auth: %d %s", resp.StatusCode, body)
	}
	// A basic-auth user still decides.
	resp, body = do(t, http.MethodPost, api("rb-shop", "cancel"), `{"reason": "the dip is the provider"}`, map[string]string{"Content-Type": "application/json", "basic": "oncall:s3cret"})
	if resp.StatusCode != http.StatusOK || hw.decided(t, "rb-shop").By != "oncall" {
		t.Errorf("cancel as oncall: %d %s", resp.StatusCode, body)
	}

	// The signed link is its own credential.
	h, err := rollbackreq.Lookup(t.Context(), hw.n.JS, "rb-link")
	if err != nil {
		t.Fatal(err)
	}
	link, _ := d.Links.Links("rb-link", h.ExecuteAt, false)
	link = srv.URL + strings.TrimPrefix(link, "https://watcher.example.com")
	if resp, body := do(t, http.MethodGet, link, "", nil); resp.StatusCode != http.StatusOK || !strings.Contains(body, "Cancel the rollback of shop in production?") {
		t.Errorf("GET the link without basic auth: %d %s", resp.StatusCode, body)
	}
	if resp, body := do(t, http.MethodPost, link, "by=bob&reason=provider", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}); resp.StatusCode != http.StatusOK ||
		hw.decided(t, "rb-link").By != "bob" {
		t.Errorf("POST the link without basic auth: %d %s", resp.StatusCode, body)
	}

	// Edits apply at the next request: a new user, then a broken file.
	hash, err := bcrypt.GenerateFromPassword([]byte("pa55"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(fmt.Sprintf("basic_auth_users:\n  second: %s\n", hash)), 0o600); err != nil {
		t.Fatal(err)
	}
	if status, _ := rawRequest(t, addr, "GET", "/metrics", map[string]string{"Authorization": basic("second", "pa55")}); status != http.StatusOK {
		t.Errorf("GET /metrics as a user added to the file: %d, want 200", status)
	}
	if status, www := rawRequest(t, addr, "GET", "/metrics", map[string]string{"Authorization": basic("oncall", "s3cret")}); !asked(status, www) {
		t.Errorf("GET /metrics as a user removed from the file: %d, want 401", status)
	}
	if err := os.WriteFile(file, []byte("basic_auth_users: [not, a, mapping]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/metrics", "/api/v1/events"} {
		if status, _ := rawRequest(t, addr, "POST", p, nil); status != http.StatusInternalServerError {
			t.Errorf("POST %s with a broken web config: %d, want 500", p, status)
		}
	}
}

// TestDeriveWebConfig: the toolkit's copy has no basic_auth_users, names
// the TLS files by absolute paths (relative ones are the user's file's
// directory's), keeps an inline key as written, and is 0600.
func TestDeriveWebConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "web.yml")
	const in = `tls_server_config:
  cert_file: tls/server.pem
  key: |
    -----BEGIN PRIVATE KEY-----
    inline
  client_ca_file: /etc/ca.pem
http_server_config:
  headers:
    X-Frame-Options: deny
basic_auth_users:
  oncall: $2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi
`
	if err := os.WriteFile(file, []byte(in), 0o600); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	wc, err := NewWebConfig(file, out)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(wc.Derived())
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	for _, want := range []string{"cert_file: " + filepath.Join(dir, "tls/server.pem"), "client_ca_file: /etc/ca.pem", "inline", "X-Frame-Options: deny"} {
		if !strings.Contains(got, want) {
			t.Errorf("derived config lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "basic_auth_users") || strings.Contains(got, "oncall") || strings.Contains(got, "<secret>") {
		t.Errorf("derived config:\n%s", got)
	}
	if fi, err := os.Stat(wc.Derived()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("derived config mode: %v %v", fi.Mode(), err)
	}
	if users, err := wc.Users(); err != nil || len(users) != 1 || users["oncall"] == "" {
		t.Errorf("users %v, %v", users, err)
	}
	for _, bad := range []string{"- a list\n", "basic_auth_users: yes\n"} {
		if err := os.WriteFile(file, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := wc.Users(); err == nil || !strings.Contains(err.Error(), file) {
			t.Errorf("%q: %v, want an error naming the file", bad, err)
		}
	}
}
