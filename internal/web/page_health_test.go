package web

import (
	"context"
	"errors"
	"fmt"
	"html"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/testutil"
	"github.com/rollback-watcher/watcher/internal/watch"
)

// bannersOf returns the page's banners: class and text.
func bannersOf(body string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`(?s)<div class="banner ([a-z]+)" role="alert">(.*?)</div>\n`).FindAllStringSubmatch(body, -1) {
		text := regexp.MustCompile(`<[^>]+>`).ReplaceAllString(m[2], " ")
		out = append(out, m[1]+": "+strings.Join(strings.Fields(html.UnescapeString(text)), " "))
	}
	return out
}

// Each state the page's source reports gets a banner that says what is
// wrong, what it means and what to do, with the README section; a healthy
// watcher gets none.
func TestPageBanners(t *testing.T) {
	since := t0.Add(-90 * time.Second)
	for _, tc := range []struct {
		name   string
		health Health
		want   []string // one per banner, in order: class, then words it must contain
	}{
		{name: "healthy"},
		{name: "prometheus unreachable", health: Health{Prometheus: &PrometheusDown{URL: "http://prom:9090", Since: since, Err: "dial tcp: connection refused"}},
			want: []string{"bad: Prometheus http://prom:9090 unreachable since 2026-11-25T22:20:03Z: dial tcp: connection refused|judged as each check says|--prometheus.url|README.md, \"HTTP\": Prometheus unreachable"}},
		{name: "stream full", health: Health{Storage: []bus.Limit{{Scope: "stream", Stream: "DEPLOYS", Setting: "max_bytes", Used: 1 << 20, Max: 1 << 20, Full: true}}},
			want: []string{"bad: Storage full: stream DEPLOYS holds 1.0 MiB of its max_bytes 1.0 MiB (100%), discard: new|refuses deploy events|nats stream edit DEPLOYS --max-bytes=|README.md, \"HTTP\": Storage full"}},
		{name: "stream nearly full", health: Health{Storage: []bus.Limit{{Scope: "stream", Stream: "ROLLBACKS", Setting: "max_msgs", Used: 95, Max: 100}}},
			want: []string{"warn: Storage nearly full: stream ROLLBACKS holds 95 messages of its max_msgs 100 messages (95%)|refuses rollback requests|--max-msgs=|Storage full"}},
		{name: "account full", health: Health{Storage: []bus.Limit{{Scope: "account", Setting: "max_storage", Tier: "R3", Used: 10 << 30, Max: 10 << 30, Full: true}}},
			want: []string{"bad: Storage full: the JetStream account (tier R3) uses 10.0 GiB of its max_storage 10.0 GiB (100%)|every stream refuses|account's JetStream storage limit|Storage full"}},
		{name: "server full", health: Health{Storage: []bus.Limit{{Scope: "server", Setting: "max_file_store", Used: 3000, Max: 3000, Full: true}}},
			want: []string{"bad: Storage full: the embedded NATS server's JetStream uses 2.9 KiB of its max_file_store 2.9 KiB (100%)|insufficient resources|restart the watcher|Storage full"}},
		{name: "disk full", health: Health{StorageError: errors.New("JetStream cannot write to its storage in /data (no space left on device): free space there")},
			want: []string{"bad: Storage not writable: JetStream cannot write to its storage in /data (no space left on device): free space there|Storage full"}},
		{name: "limits unread", health: Health{StorageUnread: errors.New("JetStream storage limits not read: account: nats: timeout")},
			want: []string{"warn: JetStream storage limits not read: account: nats: timeout|not known|Storage full"}},
		{name: "both", health: Health{Prometheus: &PrometheusDown{URL: "http://prom:9090", Since: since, Err: "x"},
			Storage: []bus.Limit{{Scope: "stream", Stream: "AUDIT", Setting: "max_bytes", Used: 950, Max: 1000}}},
			want: []string{"bad: Prometheus http://prom:9090 unreachable", "warn: Storage nearly full: stream AUDIT holds 950 B of its max_bytes 1000 B (95%)|refuses audit records"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := fixture("shop", "r", "", nil)
			src.health = tc.health
			_, body := get(t, src, t0.Add(40*time.Second))
			got := bannersOf(body)
			if len(got) != len(tc.want) {
				t.Fatalf("banners %q, want %d", got, len(tc.want))
			}
			for i, w := range tc.want {
				for _, part := range strings.Split(w, "|") {
					if !strings.Contains(got[i], part) {
						t.Errorf("banner %d %q lacks %q", i, got[i], part)
					}
				}
			}
			// Above everything else on the page.
			if len(got) > 0 && strings.Index(body, `class="banner`) > strings.Index(body, `class="tiles"`) {
				t.Errorf("banners below the tiles")
			}
		})
	}
}

// The health is read once per pageTailTTL however many page views.
func TestPageHealthCached(t *testing.T) {
	src := fixture("shop", "r", "", nil)
	p := newStatusPage(src, nil)
	now := t0
	p.now = func() time.Time { return now }
	for range 3 {
		p.build(context.Background())
	}
	now = now.Add(pageTailTTL)
	p.build(context.Background())
	if src.healthReads != 2 {
		t.Errorf("health read %d times, want 2 (once, then after %s)", src.healthReads, pageTailTTL)
	}
}

type noRuns struct{}

func (noRuns) Runs() (active, recent []watch.RunStatus) { return nil, nil }

// A stream with discard: new filled to its max_bytes refuses a publish,
// and the page says so: nearly full first, then full. Real JetStream.
func TestStreamPageStorageFull(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx := context.Background()
	src := StreamPage{Watcher: noRuns{}, JS: n.JS}
	if h := src.Health(ctx); len(h.Storage) != 0 || h.StorageUnread != nil {
		t.Fatalf("fresh streams: %+v, want no limit reached", h)
	}

	subj := "deploys.production.shop"
	msg := []byte(strings.Repeat("x", 200))
	if _, err := n.JS.Publish(ctx, subj, msg); err != nil {
		t.Fatal(err)
	}
	st, err := n.JS.Stream(ctx, bus.DeploysStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	size := int64(st.CachedInfo().State.Bytes) // one message as stored
	cfg.MaxBytes, cfg.Discard = 10*size, jetstream.DiscardNew
	if _, err := n.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	page := func() []string {
		t.Helper()
		_, body := get(t, src, time.Now())
		return bannersOf(body)
	}
	for range 8 {
		if _, err := n.JS.Publish(ctx, subj, msg); err != nil {
			t.Fatal(err)
		}
	}
	want := fmt.Sprintf("warn: Storage nearly full: stream DEPLOYS holds %s of its max_bytes %s (90%%)", amount(bus.Limit{}, 9*size), amount(bus.Limit{}, 10*size))
	if got := page(); len(got) != 1 || !strings.HasPrefix(got[0], want) {
		t.Errorf("at 9 of 10 messages: banners %q, want %q", got, want)
	}
	if _, err := n.JS.Publish(ctx, subj, msg); err != nil {
		t.Fatalf("the 10th message does not fit: %v", err)
	}
	want = "bad: Storage full: stream DEPLOYS holds"
	if got := page(); len(got) != 1 || !strings.HasPrefix(got[0], want) || !strings.Contains(got[0], "refuses deploy events") {
		t.Errorf("at 10 of 10 messages: banners %q, want %q", got, want)
	}
	// Full is what the next publish says.
	if _, err := n.JS.Publish(ctx, subj, msg); err == nil || !strings.Contains(err.Error(), "maximum bytes exceeded") {
		t.Errorf("publish to the full stream: %v, want maximum bytes exceeded", err)
	}

	// A limit on messages, on another stream, too.
	st, err = n.JS.Stream(ctx, bus.AuditStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg = st.CachedInfo().Config
	cfg.MaxMsgs, cfg.Discard = 2, jetstream.DiscardNew
	if _, err := n.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := n.JS.Publish(ctx, "audit.production.shop", []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	h := src.Health(ctx)
	if len(h.Storage) != 2 || h.Storage[1].Stream != bus.AuditStream || h.Storage[1].Setting != "max_msgs" || !h.Storage[1].Full {
		t.Errorf("limits %+v, want DEPLOYS max_bytes and AUDIT max_msgs full", h.Storage)
	}
	if _, err := n.JS.Publish(ctx, "audit.production.shop", []byte("{}")); err == nil || !strings.Contains(err.Error(), "maximum messages exceeded") {
		t.Errorf("publish to the full AUDIT stream: %v, want maximum messages exceeded", err)
	}
}
