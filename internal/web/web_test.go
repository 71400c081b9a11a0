package web

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestStateChangingRequests: a web page the operator happens to visit can
// make the browser POST to the watcher (a form or fetch with text/plain
// needs no CORS preflight). Such requests must change nothing, while
// Alertmanager and curl, which send neither Origin nor Sec-Fetch-Site, keep
// working.
func TestStateChangingRequests(t *testing.T) {
	var mu sync.Mutex
	var handled, reloads int
	var refused []string
	s := &Server{
		Gatherer: prometheus.NewRegistry(),
		Reload: func() error {
			mu.Lock()
			defer mu.Unlock()
			reloads++
			return nil
		},
		Alerts: func(_ context.Context, body io.Reader) error {
			_, _ = io.Copy(io.Discard, body)
			mu.Lock()
			defer mu.Unlock()
			handled++
			return nil
		},
		AlertsRefused: func(_ context.Context, why string) {
			mu.Lock()
			defer mu.Unlock()
			refused = append(refused, why)
		},
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	const webhook = `{"version": "4", "status": "firing", "alerts": []}`

	for _, tc := range []struct {
		name    string
		path    string
		headers map[string]string
		status  int
		say     string // in the body of a refusal
	}{
		{"alerts: text/plain from a page", "/api/v1/alerts", map[string]string{"Content-Type": "text/plain"},
			http.StatusUnsupportedMediaType, "Content-Type must be application/json"},
		{"alerts: no content type", "/api/v1/alerts", nil, http.StatusUnsupportedMediaType, "Content-Type must be application/json"},
		{"alerts: form", "/api/v1/alerts", map[string]string{"Content-Type": "application/x-www-form-urlencoded"},
			http.StatusUnsupportedMediaType, "Content-Type must be application/json"},
		{"alerts: cross-site fetch", "/api/v1/alerts", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
			http.StatusForbidden, "cross-origin request refused"},
		{"alerts: another port of the host", "/api/v1/alerts", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"},
			http.StatusForbidden, "cross-origin request refused"},
		{"alerts: foreign Origin, old browser", "/api/v1/alerts", map[string]string{"Content-Type": "application/json", "Origin": "http://evil.example"},
			http.StatusForbidden, "cross-origin request refused"},
		{"alerts: cross-site text/plain", "/api/v1/alerts", map[string]string{"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site"},
			http.StatusForbidden, "cross-origin request refused"},
		{"reload: cross-site", "/-/reload", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden, "cross-origin request refused"},
		{"reload: foreign Origin", "/-/reload", map[string]string{"Origin": "http://evil.example"}, http.StatusForbidden, "cross-origin request refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			h, r, n := handled, reloads, len(refused)
			mu.Unlock()
			status, body := post(t, srv.URL+tc.path, webhook, tc.headers)
			if status != tc.status || !strings.Contains(body, tc.say) {
				t.Errorf("status %d %q, want %d saying %q", status, body, tc.status, tc.say)
			}
			mu.Lock()
			defer mu.Unlock()
			if handled != h || reloads != r {
				t.Errorf("the refused request was acted on: %d webhooks handled, %d reloads", handled-h, reloads-r)
			}
			if strings.HasPrefix(tc.path, "/api/v1/alerts") && (len(refused) != n+1 || !strings.Contains(refused[len(refused)-1], tc.say)) {
				t.Errorf("refusals reported %q, want one more saying %q", refused[n:], tc.say)
			}
		})
	}

	for _, tc := range []struct {
		name    string
		path    string
		headers map[string]string
	}{
		{"alerts: Alertmanager (no Origin, no Sec-Fetch-Site)", "/api/v1/alerts", map[string]string{"Content-Type": "application/json"}},
		{"alerts: charset parameter", "/api/v1/alerts", map[string]string{"Content-Type": "application/json; charset=utf-8"}},
		{"alerts: same-origin fetch", "/api/v1/alerts", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "same-origin",
			"Origin": srv.URL}},
		{"alerts: old browser, same Origin", "/api/v1/alerts", map[string]string{"Content-Type": "application/json", "Origin": srv.URL}},
		{"reload: curl", "/-/reload", nil},
		{"reload: typed into the address bar", "/-/reload", map[string]string{"Sec-Fetch-Site": "none"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			h, r := handled, reloads
			mu.Unlock()
			if status, body := post(t, srv.URL+tc.path, webhook, tc.headers); status != http.StatusOK {
				t.Fatalf("status %d %q, want 200", status, body)
			}
			mu.Lock()
			defer mu.Unlock()
			if handled+reloads != h+r+1 {
				t.Errorf("the request was not acted on")
			}
		})
	}
}

func post(t *testing.T, url, body string, headers map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		if k == "Host" {
			req.Host = v // Go sends req.Host, not a Host header
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestDNSRebinding: a page on evil.example whose name is made to resolve
// to 127.0.0.1 is same-origin to the browser (its Origin and Host are both
// evil.example), so the cross-origin checks let its POST through. A
// watcher on a loopback address knows that it is reached by loopback
// names only: any other Host on a state-changing request is refused.
func TestDNSRebinding(t *testing.T) {
	var mu sync.Mutex
	var acted int
	var refused []string
	s := &Server{
		Gatherer: prometheus.NewRegistry(),
		Reload:   func() error { mu.Lock(); defer mu.Unlock(); acted++; return nil },
		Alerts: func(_ context.Context, body io.Reader) error {
			_, _ = io.Copy(io.Discard, body)
			mu.Lock()
			defer mu.Unlock()
			acted++
			return nil
		},
		AlertsRefused: func(_ context.Context, why string) { mu.Lock(); defer mu.Unlock(); refused = append(refused, why) },
		ExternalURL:   "https://Watcher.Example.com/watcher/",
	}
	srv := httptest.NewUnstartedServer(nil)
	s.ListenAddress = srv.Listener.Addr().String()
	srv.Config.Handler = s.Handler()
	srv.Start()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(s.ListenAddress)
	const webhook = `{"version": "4", "status": "firing", "alerts": []}`
	// What a browser sends from a rebound page: Host and Origin agree.
	rebound := func(host string) map[string]string {
		return map[string]string{"Host": host, "Origin": "http://" + host, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}
	}

	for _, host := range []string{"evil.example:" + port, "evil.example", "127.0.0.1.nip.io:" + port, "localhost.evil.example:" + port, "watcher.example.com.evil:" + port} {
		for _, path := range []string{"/api/v1/alerts", "/-/reload"} {
			t.Run("refused "+host+" "+path, func(t *testing.T) {
				mu.Lock()
				a, n := acted, len(refused)
				mu.Unlock()
				status, body := post(t, srv.URL+path, webhook, rebound(host))
				if status != http.StatusForbidden || !strings.Contains(body, "is not this watcher's") || !strings.Contains(body, "DNS rebinding?") {
					t.Errorf("status %d %q, want 403 naming the Host and DNS rebinding", status, body)
				}
				mu.Lock()
				defer mu.Unlock()
				if acted != a {
					t.Errorf("the request was acted on")
				}
				if path == "/api/v1/alerts" && len(refused) != n+1 {
					t.Errorf("refusals reported %q, want one more", refused[n:])
				}
			})
		}
	}
	for _, host := range []string{"127.0.0.1:" + port, "localhost:" + port, "LOCALHOST", "localhost.:" + port, "[::1]:" + port, "127.1.2.3:" + port,
		"watcher.example.com", "watcher.example.com:443"} {
		t.Run("accepted "+host, func(t *testing.T) {
			mu.Lock()
			a := acted
			mu.Unlock()
			if status, body := post(t, srv.URL+"/api/v1/alerts", webhook, rebound(host)); status != http.StatusOK {
				t.Errorf("status %d %q, want 200", status, body)
			}
			mu.Lock()
			defer mu.Unlock()
			if acted != a+1 {
				t.Errorf("the request was not acted on")
			}
		})
	}

	// On a non-loopback address names vary (a load balancer's, a
	// Service's): any Host is taken, the cross-origin checks still apply.
	for _, listen := range []string{"0.0.0.0:9797", ":9797", "192.0.2.10:9797", "[::]:9797"} {
		t.Run("listening on "+listen, func(t *testing.T) {
			s := &Server{Gatherer: prometheus.NewRegistry(), Reload: func() error { return nil }, ListenAddress: listen}
			srv := httptest.NewServer(s.Handler())
			t.Cleanup(srv.Close)
			if status, body := post(t, srv.URL+"/-/reload", "", map[string]string{"Host": "watcher.prod.example:9797"}); status != http.StatusOK {
				t.Errorf("Host watcher.prod.example: status %d %q, want 200", status, body)
			}
			if status, body := post(t, srv.URL+"/-/reload", "", map[string]string{"Host": "watcher.prod.example", "Sec-Fetch-Site": "cross-site"}); status != http.StatusForbidden {
				t.Errorf("cross-site: status %d %q, want 403", status, body)
			}
		})
	}
}

// TestRefusalsDoNotFloodTheAudit: a web page can send refused requests in
// a loop. Each was a log line and an audit record; past
// RefusalAuditBudget a minute from one address they are only counted,
// and the log says so once.
func TestRefusalsDoNotFloodTheAudit(t *testing.T) {
	var mu sync.Mutex
	var audited, quiet int
	var logs bytes.Buffer
	now := time.Date(2026, 11, 25, 10, 0, 5, 0, time.UTC)
	s := &Server{
		Gatherer: prometheus.NewRegistry(),
		Reload:   func() error { return nil },
		Alerts:   func(context.Context, io.Reader) error { return nil },
		AlertsRefused: func(context.Context, string) {
			mu.Lock()
			defer mu.Unlock()
			audited++
		},
		AlertsRefusedQuiet: func(context.Context, string) {
			mu.Lock()
			defer mu.Unlock()
			quiet++
		},
		Logger: slog.New(slog.NewTextHandler(&syncWriter{w: &logs, mu: &mu}, nil)),
		now: func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			return now
		},
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	flood := func(n int) {
		for range n {
			if status, _ := post(t, srv.URL+"/api/v1/alerts", "{}", map[string]string{"Content-Type": "text/plain"}); status != http.StatusUnsupportedMediaType {
				t.Fatalf("status %d, want 415", status)
			}
		}
	}
	flood(200)
	mu.Lock()
	if audited != RefusalAuditBudget || quiet != 200-RefusalAuditBudget {
		t.Errorf("200 refusals in a minute: %d audited, %d only counted; want %d and %d", audited, quiet, RefusalAuditBudget, 200-RefusalAuditBudget)
	}
	if n, m := strings.Count(logs.String(), `msg="request refused"`), strings.Count(logs.String(), "the rest are counted, not logged or audited, until 2026-11-25T10:01:00Z"); n != RefusalAuditBudget || m != 1 {
		t.Errorf("the log has %d refusals and %d notes that the rest are only counted, want %d and 1:\n%s", n, m, RefusalAuditBudget, logs.String())
	}
	// The next minute, refusals are audited again.
	now = now.Add(time.Minute)
	audited, quiet = 0, 0
	mu.Unlock()
	flood(RefusalAuditBudget + 1)
	mu.Lock()
	defer mu.Unlock()
	if audited != RefusalAuditBudget || quiet != 1 {
		t.Errorf("the next minute: %d audited, %d only counted; want %d and 1", audited, quiet, RefusalAuditBudget)
	}
}

type syncWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}
