package web

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

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
