package main

import (
	"bytes"
	"context"
	"fmt"
	"html"
	"image"
	"image/png"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// pageFailColour is the colour the status page gives failed measurements
// and failed verdicts (--bad in internal/web/page.html.tmpl).
var pageFailColour = [3]uint8{0xd6, 0x28, 0x28}

// TestPageInBrowser renders the status page of a real watcher, after a bad
// deploy was rolled back by its validation and another by an alert, in
// headless Chromium: the DOM it builds, its layout on a laptop and on
// phones with screenshots that show the failure, and the banners once
// Prometheus stops and a stream fills.
func TestPageInBrowser(t *testing.T) {
	exp := testutil.NewExporter(t)
	exp.Set("shop_orders_per_minute", map[string]string{"service": "shop"}, 120)
	exp.Set("shop_orders_per_minute", map[string]string{"service": "cart"}, 120)
	prom := testutil.StartPrometheus(t, exp.URL)

	dir := t.TempDir()
	shopLink := release(t, filepath.Join(dir, "shop"), "2026.11.24-3", "2026.11.25-1")
	cartLink := release(t, filepath.Join(dir, "cart"), "2026.11.24-1", "2026.11.25-2")
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, fmt.Sprintf(`policies:
  - name: orders
    match: {service: "*", environment: production}
    window: 5s
    interval: 500ms
    initial_delay: 0s
    checks:
      - name: orders-per-minute
        query: shop_orders_per_minute{service="{{ .Service }}"}
        min: 50
        failure_limit: 1
    rollback:
      link: %s/{{ .Service }}/current
    alerts:
      matchers: ['alertname="CartErrorsHigh"']
      within: 1h
`, dir))
	w := startWatcher(t, "--rules="+rules, "--prometheus.url="+prom.URL)
	natsURL := "--nats.url=nats://" + w.nats

	// shop's orders collapse after its deploy; cart's hold.
	exp.Set("shop_orders_per_minute", map[string]string{"service": "shop"}, 12)
	for _, svc := range []struct{ name, version string }{{"shop", "2026.11.25-1"}, {"cart", "2026.11.25-2"}} {
		if code, _, errOut := cli(t, "publish", natsURL, "--service="+svc.name, "--environment=production", "--version="+svc.version); code != 0 {
			t.Fatalf("publish %s: exit %d: %s", svc.name, code, errOut)
		}
	}
	testutil.Eventually(t, 30*time.Second, "shop rolled back", func() bool { return readlink(t, shopLink) == "2026.11.24-3" })
	testutil.Eventually(t, 30*time.Second, "cart's run passed", func() bool {
		return hasKind(history(t, w.nats, "--service=cart", "--environment=production"), audit.RunPassed)
	})

	// Then an alert rolls cart back. Its text is untrusted: the page must
	// show it inert.
	const xss = `<script>alert(1)</script>`
	body := fmt.Sprintf(`{"version":"4","groupKey":"g","status":"firing","receiver":"watcher","alerts":[{"status":"firing",
		"labels":{"alertname":"CartErrorsHigh","service":"cart","environment":"production","note":%q},
		"startsAt":%q,"generatorURL":"javascript:alert(1)","fingerprint":"c0ffee0123456789"}]}`, xss, time.Now().UTC().Format(time.RFC3339))
	resp, err := http.Post("http://"+w.web+"/api/v1/alerts", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /api/v1/alerts: %d", resp.StatusCode)
	}
	testutil.Eventually(t, 30*time.Second, "cart rolled back by the alert", func() bool { return readlink(t, cartLink) == "2026.11.24-1" })
	testutil.Eventually(t, 20*time.Second, "both rollbacks completed in the audit", func() bool {
		n := 0
		for _, r := range history(t, w.nats, "--environment=production") {
			if r.Kind == audit.RollbackCompleted {
				n++
			}
		}
		return n == 2
	})
	// The page caches its audit reads for a few seconds.
	time.Sleep(3 * time.Second)

	url := "http://" + w.web + "/"
	ctx := testutil.Browser(t)
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(dctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("loading %s: %v", url, err)
	}
	dom, err := chromedp.Run(dctx, chromedp.OuterHTML("html"))
	if err != nil {
		t.Fatalf("reading the DOM of %s: %v", url, err)
	}
	for _, want := range []string{"Rollback Watcher", "shop", "cart", "2026.11.25-1", "failed", "passed", "rolled back",
		"<svg", "min 50", "orders-per-minute", "Cause: alert", "CartErrorsHigh", "c0ffee0123456789", "Cause: failed checks",
		"2026.11.24-3", "/api/v1/runs", "/metrics", "&lt;script&gt;alert(1)&lt;/script&gt;"} {
		if !strings.Contains(dom, want) {
			t.Errorf("DOM lacks %q", want)
		}
	}
	lower := strings.ToLower(dom)
	if strings.Contains(lower, "<script") || strings.Contains(lower, `href="javascript:`) {
		t.Errorf("DOM has a script or a javascript: link from the alert")
	}
	if strings.Count(dom, "<svg") < 2 {
		t.Errorf("%d charts in the DOM, want one per run", strings.Count(dom, "<svg"))
	}

	// On a laptop and on phones, every run's service, version, verdict
	// and time are on screen and the page does not scroll sideways
	// (README "HTTP").
	for _, width := range []int64{testutil.Desktop, testutil.PhoneWide, testutil.PhoneNarrow} {
		l, shot := testutil.LayoutAt(t, ctx, url, width, 2000)
		for _, p := range l.Problems() {
			t.Errorf("at %dpx: %s", width, p)
		}
		file := testutil.KeepScreenshot(t, fmt.Sprintf("page-%d.png", width), shot)
		img, err := png.Decode(bytes.NewReader(shot))
		if err != nil {
			t.Fatalf("screenshot %s is not a PNG: %v", file, err)
		}
		if b := img.Bounds(); b.Dx() != int(width) || b.Dy() < 600 {
			t.Errorf("screenshot at %dpx is %dx%d", width, b.Dx(), b.Dy())
		}
		colours, fail := pixels(img)
		if colours < 100 {
			t.Errorf("screenshot at %dpx has %d colours: a blank or broken page", width, colours)
		}
		// Badges and failed points are filled with it: hundreds of pixels.
		if fail < 200 {
			t.Errorf("screenshot at %dpx has %d pixels of the failure colour #%02x%02x%02x, want the failed verdicts and points",
				width, fail, pageFailColour[0], pageFailColour[1], pageFailColour[2])
		}
		t.Logf("at %dpx: page %dpx wide, %d runs, %d badges, %d charts; screenshot %s %dx%d, %d colours, %d failure-coloured pixels",
			width, l.ScrollWidth, len(l.Runs), len(l.Badges), len(l.Charts), file, img.Bounds().Dx(), img.Bounds().Dy(), colours, fail)
	}

	// Prometheus stops. The next run's first query fails, the watcher
	// probes Prometheus, and the page says so at its top.
	prom.Stop()
	if code, _, errOut := cli(t, "publish", natsURL, "--service=search", "--environment=production", "--version=2026.11.26-1"); code != 0 {
		t.Fatalf("publish search: exit %d: %s", code, errOut)
	}
	promBanner := "Prometheus " + prom.URL + " unreachable since"
	testutil.Eventually(t, 30*time.Second, "the page's banner on Prometheus", func() bool {
		_, page := httpGetStatus(url)
		return strings.Contains(page, promBanner)
	})

	// DEPLOYS is limited to what it holds, discarding new messages: the
	// next deploy event is refused, and the page says the storage is full.
	nc, err := nats.Connect("nats://" + w.nats)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	nctx, cancelNATS := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelNATS()
	st, err := js.Stream(nctx, bus.DeploysStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.MaxBytes, cfg.Discard = int64(st.CachedInfo().State.Bytes), jetstream.DiscardNew
	if _, err := js.UpdateStream(nctx, cfg); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := cli(t, "publish", natsURL, "--service=search", "--environment=production", "--version=2026.11.26-2"); code == 0 || !strings.Contains(errOut, "maximum bytes exceeded") {
		t.Errorf("publish to a full DEPLOYS: exit %d: %s; want refused, maximum bytes exceeded", code, errOut)
	}
	var page string
	testutil.Eventually(t, 10*time.Second, "the page's banner on the full stream", func() bool {
		_, page = httpGetStatus(url)
		return strings.Contains(page, "Storage full: stream DEPLOYS holds")
	})
	for _, m := range regexp.MustCompile(`<div class="banner (\w+)" role="alert">(.*)`).FindAllStringSubmatch(page, -1) {
		t.Logf("banner %s: %s", m[1], strings.Join(strings.Fields(html.UnescapeString(regexp.MustCompile(`<[^>]+>`).ReplaceAllString(m[2], " "))), " "))
	}
	l, shot := testutil.LayoutAt(t, ctx, url, testutil.PhoneWide, 2000)
	if len(l.Banners) != 2 {
		t.Errorf("%d banners at %dpx, want 2 (Prometheus, DEPLOYS)", len(l.Banners), testutil.PhoneWide)
	}
	for _, p := range l.Problems() {
		t.Errorf("at %dpx with banners: %s", testutil.PhoneWide, p)
	}
	t.Logf("at %dpx with banners: %d banners, page %dpx wide; screenshot %s", testutil.PhoneWide, len(l.Banners), l.ScrollWidth,
		testutil.KeepScreenshot(t, fmt.Sprintf("page-%d-banners.png", testutil.PhoneWide), shot))
}

// pixels counts img's distinct colours and its pixels of pageFailColour.
func pixels(img image.Image) (colours, fail int) {
	seen := map[[3]uint8]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			c := [3]uint8{uint8(r >> 8), uint8(g >> 8), uint8(bl >> 8)}
			seen[c] = true
			if c == pageFailColour {
				fail++
			}
		}
	}
	return len(seen), fail
}
