package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/config"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// request is one POST a receiver got.
type request struct {
	delivery, kind, signature, contentType string
	body                                   []byte
	signedOK                               bool
}

// receiver is a real HTTP server on loopback standing for Slack or a
// webhook endpoint. It answers each request with status(n) (n counts from
// 1), or, while hanging, holds it until the client goes away. It counts a
// delivery as received when it answered it 2xx, as a receiver that
// dedupes by X-Watcher-Delivery would.
type receiver struct {
	URL    string
	secret []byte

	mu       sync.Mutex
	reqs     []request
	accepted map[string]int
	status   func(n int) int

	// hang holds every request; hangAfter, when set, those after that
	// many deliveries (guarded by mu).
	hang      atomic.Bool
	hangAfter int
	hanging   atomic.Int32
}

func newReceiver(t *testing.T, secret string) *receiver {
	t.Helper()
	rc := &receiver{secret: []byte(secret), accepted: map[string]int{}, status: func(int) int { return http.StatusOK }}
	srv := httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(srv.Close)
	rc.URL = srv.URL
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	req := request{
		delivery: r.Header.Get(DeliveryHeader), kind: r.Header.Get(KindHeader),
		signature: r.Header.Get(SignatureHeader), contentType: r.Header.Get("Content-Type"), body: body,
	}
	// What a receiver does: recompute the HMAC and compare in constant time.
	req.signedOK = hmac.Equal([]byte(req.signature), []byte(Sign(rc.secret, body)))
	rc.mu.Lock()
	if rc.hang.Load() || (rc.hangAfter > 0 && len(rc.accepted) >= rc.hangAfter) {
		rc.mu.Unlock()
		rc.hanging.Add(1)
		<-r.Context().Done()
		rc.hanging.Add(-1)
		return
	}
	rc.reqs = append(rc.reqs, req)
	code := rc.status(len(rc.reqs))
	if code/100 == 2 {
		rc.accepted[req.delivery]++
	}
	rc.mu.Unlock()
	w.WriteHeader(code)
}

func (rc *receiver) requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]request(nil), rc.reqs...)
}

func (rc *receiver) deliveries() map[string]int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	m := map[string]int{}
	for k, v := range rc.accepted {
		m[k] = v
	}
	return m
}

// target writes url and secret to files and reads them back as Targets
// does at start.
func target(t *testing.T, name, kind, url, secret string, match config.NotifyMatch, on ...string) *Target {
	t.Helper()
	dir := t.TempDir()
	c := config.NotifyTarget{Name: name, Kind: kind, URLFile: filepath.Join(dir, "url"), Match: match, On: on}
	if err := os.WriteFile(c.URLFile, []byte(url+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if secret != "" {
		c.SecretFile = filepath.Join(dir, "secret")
		if err := os.WriteFile(c.SecretFile, []byte(secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ts, err := Targets([]config.NotifyTarget{c})
	if err != nil {
		t.Fatal(err)
	}
	return ts[0]
}

// logBuffer collects the notifier's log.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type running struct {
	n    *Notifier
	reg  *prometheus.Registry
	log  *logBuffer
	stop func()
}

// fast are delivery settings for tests: the same mechanism, shorter waits.
func fast(n *Notifier) {
	n.Attempts = 3
	n.Backoff = 50 * time.Millisecond
	n.Timeout = 5 * time.Second
	n.AckWait = 2 * time.Second
}

// start runs a notifier on nt's AUDIT stream until the test ends or stop.
func start(t *testing.T, js jetstream.JetStream, targets []*Target, tune func(*Notifier)) *running {
	t.Helper()
	lb := &logBuffer{}
	n := &Notifier{JS: js, Targets: targets, Audit: &audit.Publisher{JS: js},
		Logger: slog.New(slog.NewTextHandler(lb, nil)), ExternalURL: "https://watcher.example.com/ops/"}
	fast(n)
	if tune != nil {
		tune(n)
	}
	reg := prometheus.NewRegistry()
	n.Register(reg)
	ctx, cancel := context.WithCancel(context.Background())
	if err := n.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); n.Wait() }) }
	t.Cleanup(stop)
	return &running{n: n, reg: reg, log: lb, stop: stop}
}

func publish(t *testing.T, js jetstream.JetStream, recs ...audit.Record) {
	t.Helper()
	p := &audit.Publisher{JS: js}
	for _, r := range recs {
		if err := p.Record(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
}

// idle waits until the notifier's consumer has handled every record:
// none pending, none unacknowledged.
func idle(t *testing.T, js jetstream.JetStream, consumer string) {
	t.Helper()
	// The server counts a new message in the consumer's NumPending a
	// moment after the publish returns (it signals its consumers
	// asynchronously): nothing pending is idle only once the consumer has
	// been handed the stream's last record.
	testutil.Eventually(t, 30*time.Second, "the notifier to handle every record", func() bool {
		s, err := js.Stream(context.Background(), bus.AuditStream)
		if err != nil {
			return false
		}
		si, err := s.Info(context.Background())
		if err != nil {
			return false
		}
		c, err := js.Consumer(context.Background(), bus.AuditStream, consumer)
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.Delivered.Stream >= si.State.LastSeq && info.NumPending == 0 && info.NumAckPending == 0
	})
}

func records(t *testing.T, js jetstream.JetStream, kind string) []audit.Record {
	t.Helper()
	all, err := audit.Read(context.Background(), js, audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Record
	for _, r := range all {
		if r.Kind == kind {
			out = append(out, r)
		}
	}
	return out
}

func failedRun(service, env, runID string) audit.Record {
	r := audit.Record{Kind: audit.RunFailed, RunID: runID, DeployID: "d-" + runID, Service: service, Environment: env,
		Version: "2026.11.25-1", Policy: "shop-orders", RequestID: "req-" + runID,
		Message: "check orders-per-minute failed: orders-per-minute = 12 < min 50 (failure 2 of limit 1)"}
	v := 12.0
	_ = r.SetDetail(audit.VerdictDetail{RequestID: "req-" + runID, Checks: []audit.CheckDetail{{
		Check: "orders-per-minute", Query: "sum(rate(shop_orders_total[1m])) * 60",
		Limits: audit.Limits{FailureLimit: 1}, Counts: audit.Counts{Fail: 2, Pass: 3},
		LastMeasurement: &audit.LastMeasurement{Reason: "12 < min 50", Value: &v},
	}}})
	return r
}

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "secret")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}
