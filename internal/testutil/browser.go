package testutil

// Headless Chromium for the status page's tests: the layout a phone and a
// laptop get, measured in the browser (README "HTTP").

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Widths the status page is laid out for: a small phone held upright, a
// large one, and a laptop.
const (
	PhoneNarrow = 360
	PhoneWide   = 420
	Desktop     = 1280
)

// Chromium finds the browser, or fails the test saying how to install it.
func Chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed: the status page tests need a real headless browser; run scripts/deps.sh (or apt-get install chromium)")
	return ""
}

// Browser starts headless Chromium, driven over its DevTools protocol, for
// the test; it is closed when the test ends.
func Browser(t testing.TB) context.Context {
	t.Helper()
	bin := Chromium(t)
	home := t.TempDir()
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(bin), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("force-color-profile", "srgb"),
		chromedp.UserDataDir(filepath.Join(home, "profile")), chromedp.Env("HOME="+home))
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first action starts the browser, bound to the context it is
	// given: this one, not a shorter-lived one.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("%s does not start under chromedp: %v", bin, err)
	}
	return ctx
}

// PageLayout is where the status page's parts land at one viewport width,
// in CSS pixels, as Chromium laid them out.
type PageLayout struct {
	Width       int `json:"width"`
	InnerWidth  int `json:"innerWidth"`
	ScrollWidth int `json:"scrollWidth"`
	// Runs is each row of the runs table: its service, version, verdict
	// and start time, each with whether it is fully on screen (not past
	// the viewport, not scrolled out of a box).
	Runs []struct {
		Service string         `json:"service"`
		Cells   map[string]Box `json:"cells"`
	} `json:"runs"`
	// Badges are the verdict and rollback badges anywhere on the page;
	// Banners the banners at its top.
	Badges  []Box `json:"badges"`
	Banners []Box `json:"banners"`
	// Offscreen lists the elements that reach past the viewport's right
	// edge without a box clipping them: the page scrolls sideways.
	Offscreen      []string `json:"offscreen"`
	OffscreenCount int      `json:"offscreenCount"`
	// Charts are the right edges of the SVG charts.
	Charts []Box `json:"charts"`
}

// Box is one part of the page: its text and its horizontal extent.
type Box struct {
	Text    string  `json:"text"`
	Left    float64 `json:"left"`
	Right   float64 `json:"right"`
	Visible bool    `json:"visible"`
}

// layoutJS measures the page. A part is visible when its box lies within
// the viewport and within every ancestor that clips (a scroll box): a
// verdict scrolled out of a table's box is as hidden as one past the edge.
const layoutJS = `(() => {
  const W = %d, de = document.documentElement;
  const clipped = (el, r) => {
    for (let a = el.parentElement; a && a !== de; a = a.parentElement) {
      if (getComputedStyle(a).overflowX === 'visible') continue;
      const ar = a.getBoundingClientRect();
      if (r.left < ar.left - 0.5 || r.right > ar.right + 0.5) return true;
    }
    return false;
  };
  const box = el => {
    const r = el.getBoundingClientRect();
    const vis = r.width > 0 && r.height > 0 && r.left >= -0.5 && r.right <= W + 0.5 && !clipped(el, r);
    return {text: el.textContent.trim().replace(/\s+/g, ' ').slice(0, 40), left: r.left, right: r.right, visible: vis};
  };
  const name = el => el.tagName.toLowerCase() + (el.className && el.className.baseVal === undefined ? '.' + el.className.trim().replace(/\s+/g, '.') : '');
  const heads = [...document.querySelectorAll('table.runs thead th')].map(th => th.textContent.trim());
  const want = {'Service': 'service', 'Version': 'version', 'Verdict': 'verdict', 'Started (UTC)': 'started'};
  const runs = [...document.querySelectorAll('table.runs tbody tr')].map(tr => {
    const cells = {};
    [...tr.children].forEach((td, i) => {
      const k = want[heads[i]];
      if (!k) return;
      cells[k] = box(k === 'verdict' ? (td.querySelector('.badge') || td) : td);
    });
    return {service: tr.children[0] ? tr.children[0].textContent.trim() : '', cells};
  });
  const off = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > W + 0.5 && !clipped(el, r)) off.push(name(el) + ' "' + el.textContent.trim().replace(/\s+/g, ' ').slice(0, 30) + '" right=' + Math.round(r.right));
  }
  return {width: W, innerWidth: innerWidth, scrollWidth: de.scrollWidth, runs,
    badges: [...document.querySelectorAll('.badge')].map(box),
    banners: [...document.querySelectorAll('.banner')].map(box),
    offscreen: off.slice(0, 12), offscreenCount: off.length,
    charts: [...document.querySelectorAll('svg.chart')].map(box)};
})()`

// LayoutAt loads url in a viewport width x height, as a phone does (the
// page's viewport meta decides its layout width), and returns how it is
// laid out and a screenshot of the whole page. The page reloads itself
// every 5 s; a measurement that a reload cuts is taken again.
func LayoutAt(t testing.TB, ctx context.Context, url string, width, height int64) (PageLayout, []byte) {
	t.Helper()
	var err error
	for range 3 {
		var l PageLayout
		var png []byte
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = chromedp.Do(actx, chromedp.EmulateViewport(width, height, chromedp.EmulateMobile), chromedp.Navigate(url))
		if err == nil {
			l, err = chromedp.Run(actx, chromedp.Evaluate[PageLayout](fmt.Sprintf(layoutJS, width)))
		}
		if err == nil {
			png, err = chromedp.Run(actx, chromedp.FullScreenshot(100))
		}
		cancel()
		if err == nil {
			return l, png
		}
	}
	t.Fatalf("laying out %s at %dpx: %v", url, width, err)
	return PageLayout{}, nil
}

// Problems says what a reader of the page cannot see at l's width: a page
// wider than the screen, a run whose service, version, verdict or time is
// off screen, a badge or a chart cut off.
func (l PageLayout) Problems() []string {
	var out []string
	if l.ScrollWidth > l.Width {
		out = append(out, fmt.Sprintf("the page is %dpx wide in a %dpx viewport (window.innerWidth %d): it scrolls sideways", l.ScrollWidth, l.Width, l.InnerWidth))
	}
	if len(l.Runs) == 0 {
		out = append(out, "no run in the runs table")
	}
	for _, r := range l.Runs {
		for _, k := range []string{"service", "version", "verdict", "started"} {
			c, ok := r.Cells[k]
			switch {
			case !ok:
				out = append(out, fmt.Sprintf("run %q: no %s cell", r.Service, k))
			case !c.Visible:
				out = append(out, fmt.Sprintf("run %q: %s %q off screen (x %.0f to %.0f)", r.Service, k, c.Text, c.Left, c.Right))
			}
		}
	}
	for _, b := range l.Badges {
		if !b.Visible {
			out = append(out, fmt.Sprintf("badge %q off screen (x %.0f to %.0f)", b.Text, b.Left, b.Right))
		}
	}
	for _, b := range l.Banners {
		if !b.Visible {
			out = append(out, fmt.Sprintf("banner %q off screen (x %.0f to %.0f)", b.Text, b.Left, b.Right))
		}
	}
	for i, c := range l.Charts {
		if !c.Visible {
			out = append(out, fmt.Sprintf("chart %d off screen (x %.0f to %.0f)", i+1, c.Left, c.Right))
		}
	}
	if l.OffscreenCount > 0 {
		out = append(out, fmt.Sprintf("%d elements past the right edge, first %s", l.OffscreenCount, strings.Join(l.Offscreen, "; ")))
	}
	return out
}

// KeepScreenshot writes png under $WATCHER_PAGE_SCREENSHOT_DIR, when set,
// to be looked at; else under the test's temporary directory.
func KeepScreenshot(t testing.TB, name string, png []byte) string {
	t.Helper()
	dir := os.Getenv("WATCHER_PAGE_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
