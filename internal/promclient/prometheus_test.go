package promclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"golang.org/x/crypto/bcrypt"

	"github.com/rollback-watcher/watcher/internal/testutil"
)

func TestQueryRealPrometheus(t *testing.T) {
	exp := testutil.NewExporter(t)
	exp.Set("shop_orders_per_minute", map[string]string{"service": "shop"}, 73)
	exp.Set("shop_orders_per_minute", map[string]string{"service": "cart"}, 12)
	prom := testutil.StartPrometheus(t, exp.URL)
	c, err := New(Options{URL: prom.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()

	tests := []struct {
		query   string
		want    []float64
		wantErr string
	}{
		{query: `shop_orders_per_minute{service="shop"}`, want: []float64{73}},
		{query: `sum(shop_orders_per_minute)`, want: []float64{85}},
		{query: `shop_orders_per_minute`, want: []float64{12, 73}},
		{query: `scalar(shop_orders_per_minute{service="cart"})`, want: []float64{12}},
		{query: `42`, want: []float64{42}},
		{query: `shop_orders_per_minute{service="nope"}`, want: []float64{}},
		{query: `shop_orders_per_minute[1m]`, wantErr: "want an instant vector or scalar"},
		{query: `sum(`, wantErr: "parse error"},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			vec, err := c.Query(ctx, tt.query, now)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := values(vec)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("values = %v, want %v", got, tt.want)
			}
		})
	}

	// A query at an earlier time sees the value then: baselines rely on it.
	before := time.Now()
	exp.Set("shop_orders_per_minute", map[string]string{"service": "shop"}, 5)
	testutil.Eventually(t, 10*time.Second, "new value scraped", func() bool {
		vec, err := c.Query(ctx, `shop_orders_per_minute{service="shop"}`, time.Now())
		return err == nil && len(vec) == 1 && vec[0].Value == 5
	})
	vec, err := c.Query(ctx, `shop_orders_per_minute{service="shop"}`, before)
	if err != nil || len(vec) != 1 || vec[0].Value != 73 {
		t.Errorf("query at %s = %v, %v; want 73", before, vec, err)
	}

	// A range query gives the samples over a span, one every step, as they
	// were then: comparisons rely on it. The new value was seen before
	// the last step began.
	const step = 50 * time.Millisecond
	time.Sleep(2 * step)
	end := time.Now()
	mat, err := c.QueryRange(ctx, `shop_orders_per_minute{service="shop"}`, now, end, step)
	if err != nil || len(mat) != 1 {
		t.Fatalf("range query = %v, %v; want one series", mat, err)
	}
	ss := mat[0].Values
	if len(ss) < 2 || ss[0].Value != 73 || ss[len(ss)-1].Value != 5 {
		t.Errorf("range query samples %v, want 73 first and 5 last", ss)
	}
	for i := 1; i < len(ss); i++ {
		if d := ss[i].Timestamp.Sub(ss[i-1].Timestamp); d != step {
			t.Errorf("samples %d and %d are %s apart, want the step (%s)", i-1, i, d, step)
		}
	}
	if _, err := c.QueryRange(ctx, `sum(`, now, end, time.Second); err == nil || !strings.Contains(err.Error(), "parse error") {
		t.Errorf("bad range query: err = %v, want a parse error", err)
	}
}

func values(vec model.Vector) []float64 {
	out := make([]float64, len(vec))
	for i, s := range vec {
		out[i] = float64(s.Value)
	}
	// Series order is Prometheus's; sort for comparison.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// TestQueryAuthAndTLS runs a real Prometheus behind TLS and basic auth (its
// --web.config.file) and checks that HTTPClientConfig reaches it, and that a
// client without the password or the CA is refused.
func TestQueryAuthAndTLS(t *testing.T) {
	dir := t.TempDir()
	caFile, certFile, keyFile := writeCert(t, dir)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webCfg := filepath.Join(dir, "web.yml")
	writeFile(t, webCfg, fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  watcher: %s\n", certFile, keyFile, hash))
	promCfg := filepath.Join(dir, "prometheus.yml")
	writeFile(t, promCfg, "global:\n  scrape_interval: 1s\n")
	pwFile := filepath.Join(dir, "password")
	writeFile(t, pwFile, "s3cret-pw\n")

	addr := testutil.FreeAddr(t)
	cmd := exec.Command(testutil.PrometheusBinary(t), "--config.file="+promCfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--web.config.file="+webCfg)
	logf, _ := os.Create(filepath.Join(dir, "prometheus.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logf.Close() })

	url := "https://" + addr
	good := Options{URL: url, HTTP: config.HTTPClientConfig{
		BasicAuth: &config.BasicAuth{Username: "watcher", PasswordFile: pwFile},
		TLSConfig: config.TLSConfig{CAFile: caFile, ServerName: "localhost"},
	}}
	c, err := New(good)
	if err != nil {
		t.Fatal(err)
	}
	var vec model.Vector
	testutil.Eventually(t, 30*time.Second, "prometheus answering over TLS with auth", func() bool {
		vec, err = c.Query(context.Background(), "1 + 1", time.Now())
		return err == nil
	})
	if len(vec) != 1 || vec[0].Value != 2 {
		t.Errorf("1 + 1 = %v", vec)
	}

	noAuth := good
	noAuth.HTTP.BasicAuth = nil
	if _, err := mustNew(t, noAuth).Query(context.Background(), "1", time.Now()); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("without credentials: err = %v, want 401", err)
	}
	noCA := good
	noCA.HTTP.TLSConfig = config.TLSConfig{}
	_, err = mustNew(t, noCA).Query(context.Background(), "1", time.Now())
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without the CA: err = %v, want a certificate error", err)
	}
	if err != nil && strings.Contains(err.Error(), "s3cret-pw") {
		t.Errorf("error leaks the password: %v", err)
	}
}

func TestQueryTimeout(t *testing.T) {
	// A Prometheus that hangs cannot be had on demand; a fake can.
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	defer srv.Close()
	defer close(stop)
	c := mustNew(t, Options{URL: srv.URL, Timeout: model.Duration(200 * time.Millisecond)})
	start := time.Now()
	_, err := c.Query(context.Background(), "up", time.Now())
	if err == nil {
		t.Fatal("no error from a hanging server")
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("query took %s, the timeout did not apply", time.Since(start))
	}
}

func TestNewRejectsBadURL(t *testing.T) {
	for _, u := range []string{"", "localhost:9090", "ftp://x", "http://"} {
		if _, err := New(Options{URL: u}); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
}

func mustNew(t *testing.T, o Options) *Client {
	t.Helper()
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeCert writes a self-signed CA-like certificate for localhost and
// 127.0.0.1, its key, and returns (ca, cert, key) paths (ca == cert).
func writeCert(t *testing.T, dir string) (string, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert := filepath.Join(dir, "cert.pem")
	keyFile := filepath.Join(dir, "key.pem")
	writeFile(t, cert, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})))
	return cert, cert, keyFile
}

// fakeProm is a Prometheus stand-in for answers a real one cannot give on
// demand (a proxy's 405, a body with bytes past the JSON). It counts the
// TCP connections it accepted and the requests by method.
type fakeProm struct {
	*httptest.Server
	mu       sync.Mutex
	conns    int
	byMethod map[string]int
}

func newFakeProm(t *testing.T, h http.HandlerFunc) *fakeProm {
	f := &fakeProm{byMethod: map[string]int{}}
	f.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.byMethod[r.Method]++
		f.mu.Unlock()
		h(w, r)
	}))
	f.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.mu.Lock()
			f.conns++
			f.mu.Unlock()
		}
	}
	f.Start()
	t.Cleanup(f.Close)
	return f
}

func (f *fakeProm) counts() (conns int, byMethod map[string]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns, maps.Clone(f.byMethod)
}

const oneSeries = `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"shop"},"value":[1700000000,"1"]}]}}` + "\n"

// TestQueryFallsBackToGET: Prometheus behind a proxy that allows only GET
// answers a POST with 405 Method Not Allowed; client_golang's API client
// then asks again with GET, and so must the watcher, once: later queries
// go straight to GET.
func TestQueryFallsBackToGET(t *testing.T) {
	f := newFakeProm(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
			return
		}
		if q := r.URL.Query().Get("query"); q != `up{job="shop"}` || r.URL.Query().Get("time") == "" || r.URL.Query().Get("timeout") == "" {
			http.Error(w, "missing parameters in "+r.URL.RawQuery, http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, oneSeries)
	})
	c := mustNew(t, Options{URL: f.URL})
	for i := range 3 {
		vec, err := c.Query(t.Context(), `up{job="shop"}`, time.Now())
		if err != nil || len(vec) != 1 || vec[0].Value != 1 {
			t.Fatalf("query %d: %v, %v; want one series of value 1", i, vec, err)
		}
	}
	if _, m := f.counts(); m[http.MethodPost] != 1 || m[http.MethodGet] != 3 {
		t.Errorf("requests by method %v, want one POST (answered 405), then GET only", m)
	}
}

// TestQueryReusesConnection: a body closed before its end costs the
// connection, so every query would dial (and, with TLS, handshake) again.
// The few bytes after the JSON (Prometheus ends its answer with a newline)
// are read before closing.
func TestQueryReusesConnection(t *testing.T) {
	f := newFakeProm(t, func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, oneSeries+strings.Repeat(" ", 4096)+"\n")
	})
	c := mustNew(t, Options{URL: f.URL})
	for i := range 5 {
		if _, err := c.Query(t.Context(), "up", time.Now()); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
	}
	if n, _ := f.counts(); n != 1 {
		t.Errorf("5 queries used %d connections, want 1", n)
	}
}

// TestQueryOversizeNotDrained: an answer past max_response_bytes is not
// read on to reuse the connection (that would read what the limit is
// there to stop): the connection is closed.
func TestQueryOversizeNotDrained(t *testing.T) {
	f := newFakeProm(t, func(w http.ResponseWriter, _ *http.Request) {
		// Small enough that draining it would fit in the drain bound.
		_, _ = io.WriteString(w, `{"status":"success","data":{"resultType":"vector","result":[`+strings.Repeat(`{"metric":{},"value":[1,"1"]},`, 100)+`{"metric":{},"value":[1,"1"]}]}}`)
	})
	c := mustNew(t, Options{URL: f.URL, MaxResponseBytes: 1024})
	for i := range 2 {
		var le *LimitError
		if _, err := c.Query(t.Context(), "up", time.Now()); !errors.As(err, &le) {
			t.Fatalf("query %d: %v, want a LimitError", i, err)
		}
	}
	if n, _ := f.counts(); n != 2 {
		t.Errorf("2 oversize answers used %d connections, want 2 (the first closed, not drained)", n)
	}
}
