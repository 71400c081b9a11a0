package main

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// pageFailColour is the colour the status page gives failed measurements
// and failed verdicts (--bad in internal/web/page.html.tmpl).
var pageFailColour = [3]uint8{0xd6, 0x28, 0x28}

// chromium finds the browser, or fails the test saying how to install it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed: the status page test needs a real headless browser; run scripts/deps.sh (or apt-get install chromium)")
	return ""
}

// headless runs chromium on url with args and returns its standard output.
func headless(t *testing.T, bin, url string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all := append([]string{"--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--no-first-run", "--disable-extensions", "--user-data-dir=" + t.TempDir()}, args...)
	cmd := exec.CommandContext(ctx, bin, append(all, url)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", bin, strings.Join(all, " "), err, errb.String())
	}
	return out.Bytes()
}

// TestPageInBrowser renders the status page of a real watcher, after a bad
// deploy was rolled back by its validation and another by an alert, in
// headless Chromium: the DOM it builds, and a screenshot that shows the
// failure.
func TestPageInBrowser(t *testing.T) {
	bin := chromium(t)
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
	dom := string(headless(t, bin, url, "--dump-dom"))
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

	shot := filepath.Join(t.TempDir(), "page.png")
	if keep := os.Getenv("WATCHER_PAGE_SCREENSHOT"); keep != "" {
		shot = keep // to look at it
	}
	headless(t, bin, url, "--screenshot="+shot, "--window-size=1280,2000")
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s is not a PNG: %v", shot, err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 2000 {
		t.Errorf("screenshot is %dx%d, want 1280x2000", b.Dx(), b.Dy())
	}
	colours, fail := pixels(img)
	if colours < 100 {
		t.Errorf("screenshot has %d colours: a blank or broken page", colours)
	}
	// Badges and failed points are filled with it: hundreds of pixels.
	if fail < 200 {
		t.Errorf("screenshot has %d pixels of the failure colour #%02x%02x%02x, want the failed verdicts and points", fail, pageFailColour[0], pageFailColour[1], pageFailColour[2])
	}
	t.Logf("screenshot %s: %d colours, %d failure-coloured pixels", shot, colours, fail)
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
