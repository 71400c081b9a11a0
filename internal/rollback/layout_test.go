package rollback

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC)

// host is a release layout in a temporary directory:
// root/releases/<name>/ and root/current.
type host struct {
	root, releases, link string
}

func newHost(t *testing.T) host {
	t.Helper()
	root := t.TempDir()
	h := host{root: root, releases: filepath.Join(root, "releases"), link: filepath.Join(root, "current")}
	mkdir(t, h.releases)
	return h
}

func (h host) rel(name string) string { return filepath.Join(h.releases, name) }

// release creates a release directory whose mtime is t0 plus age. Call it
// after writing files into the release, since that changes the mtime.
func (h host) release(t *testing.T, name string, age time.Duration, files ...string) string {
	t.Helper()
	dir := h.rel(name)
	mkdir(t, dir)
	for i := 0; i+1 < len(files); i += 2 {
		writeFile(t, filepath.Join(dir, files[i]), files[i+1])
	}
	touch(t, dir, t0.Add(age))
	return dir
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func touch(t *testing.T, name string, mtime time.Time) {
	t.Helper()
	if err := os.Chtimes(name, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, oldname, newname string) {
	t.Helper()
	if err := os.Symlink(oldname, newname); err != nil {
		t.Fatal(err)
	}
}

func readlink(t *testing.T, name string) string {
	t.Helper()
	s, err := os.Readlink(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func exists(t *testing.T, name string) bool {
	t.Helper()
	_, err := os.Lstat(name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// snapshot records every path under root with its type, link content, file
// content and mtime, to prove an operation touched nothing.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		s := fmt.Sprintf("%v %v", fi.Mode(), fi.ModTime().UnixNano())
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			s += " -> " + readlink(t, p)
		case fi.Mode().IsRegular():
			s += " " + readFile(t, p)
		}
		m[p] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func assertUnchanged(t *testing.T, before map[string]string, root string) {
	t.Helper()
	after := snapshot(t, root)
	for p, s := range before {
		if after[p] != s {
			t.Errorf("%s changed: %q -> %q", p, s, after[p])
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s appeared", p)
		}
	}
}

// readOnly fails the test on any write: Resolve must never change a host.
type readOnly struct {
	Local
	t *testing.T
}

func (r readOnly) Symlink(o, n string) error { r.t.Errorf("Symlink(%s, %s)", o, n); return nil }
func (r readOnly) Rename(o, n string) error  { r.t.Errorf("Rename(%s, %s)", o, n); return nil }
func (r readOnly) Remove(n string) error     { r.t.Errorf("Remove(%s)", n); return nil }
func (r readOnly) ReplaceFile(n string, _ []byte) error {
	r.t.Errorf("ReplaceFile(%s)", n)
	return nil
}
func (r readOnly) WriteFile(n string, _ []byte, _ fs.FileMode) error {
	r.t.Errorf("WriteFile(%s)", n)
	return nil
}

func TestResolve(t *testing.T) {
	type want struct {
		prev   string // a release name, or an absolute path starting with "/"
		source string
		err    error
		errSub string
	}
	tests := []struct {
		name string
		// setup builds the host and returns link, releasesDir, wantVersion.
		setup func(t *testing.T, h host) (link, releasesDir, version string)
		want  want
	}{
		{
			name: "requested version beats file and newest",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "B", time.Hour)
				h.release(t, "D", 3*time.Hour)
				h.release(t, "C", 2*time.Hour, PreviousVersionFile, h.rel("B")+"\n")
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, "A"
			},
			want: want{prev: "A", source: SourceRequested},
		},
		{
			name: "previousVersion file beats newest",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "B", time.Hour)
				h.release(t, "D", 3*time.Hour)
				h.release(t, "C", 2*time.Hour, PreviousVersionFile, h.rel("B")+"\n")
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{prev: "B", source: SourcePreviousVersion},
		},
		{
			name: "newest without previousVersion file",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "B", time.Hour)
				h.release(t, "D", 3*time.Hour)
				h.release(t, "C", 2*time.Hour)
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{prev: "D", source: SourceNewest},
		},
		{
			name: "absolute link target",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour, PreviousVersionFile, "A")
				symlink(t, h.rel("C"), h.link)
				return h.link, h.releases, ""
			},
			want: want{prev: "A", source: SourcePreviousVersion},
		},
		{
			name: "relative link target with dot-dot",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour, PreviousVersionFile, "A")
				mkdir(t, filepath.Join(h.root, "www"))
				link := filepath.Join(h.root, "www", "current")
				symlink(t, "../releases/C", link)
				return link, h.releases, ""
			},
			want: want{prev: "A", source: SourcePreviousVersion},
		},
		{
			name: "previousVersion absolute path is cleaned",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour, PreviousVersionFile, "  "+h.releases+"//A/\n")
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{prev: "A", source: SourcePreviousVersion},
		},
		{
			// An absolute previousVersion is fine when it is inside.
			name: "absolute previousVersion inside the releases directory",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour, PreviousVersionFile, h.rel("A"))
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{prev: "A", source: SourcePreviousVersion},
		},
		{
			// A previousVersion naming a directory outside releases/
			// (/etc, say) must not become the link's target.
			name: "previousVersion outside the releases directory",
			setup: func(t *testing.T, h host) (string, string, string) {
				mkdir(t, filepath.Join(h.root, "old", "A"))
				h.release(t, "C", time.Hour, PreviousVersionFile, filepath.Join(h.root, "old", "A"))
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{err: ErrOutsideReleases, errSub: "outside the releases directory"},
		},
		{
			name: "previousVersion climbs out through a symlinked release",
			setup: func(t *testing.T, h host) (string, string, string) {
				mkdir(t, filepath.Join(h.root, "etc"))
				symlink(t, filepath.Join(h.root, "etc"), h.rel("A"))
				h.release(t, "C", time.Hour, PreviousVersionFile, "A")
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{err: ErrOutsideReleases, errSub: "outside the releases directory"},
		},
		{
			name: "the link names something outside the releases directory",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				mkdir(t, filepath.Join(h.root, "etc"))
				symlink(t, filepath.Join(h.root, "etc"), h.link)
				return h.link, h.releases, ""
			},
			want: want{err: ErrOutsideReleases, errSub: "names"},
		},
		{
			name: "the link names a release that is a symlink to outside",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				mkdir(t, filepath.Join(h.root, "etc"))
				symlink(t, filepath.Join(h.root, "etc"), h.rel("C"))
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{err: ErrOutsideReleases, errSub: "outside the releases directory"},
		},
		{
			name: "newest is a symlinked entry pointing outside: refused",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour)
				other := filepath.Join(h.root, "etc")
				mkdir(t, other)
				touch(t, other, t0.Add(2*time.Hour))
				symlink(t, other, h.rel("E"))
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{err: ErrOutsideReleases, errSub: "outside the releases directory"},
		},
		{
			// A directory whose name is no version ("v9\nevil") is never
			// the newest release.
			name: "newest skips names that are not versions",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour)
				for _, bad := range []string{"v9\nevil", "v9 evil", "v9$(id)", "-v9", "v9..x", "é9"} {
					mkdir(t, h.rel(bad))
					touch(t, h.rel(bad), t0.Add(5*time.Hour))
				}
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{prev: "A", source: SourceNewest},
		},
		{
			name: "previousVersion names a missing release: no fall through to newest",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour, PreviousVersionFile, h.rel("2026.11.24-3")+"\n")
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{err: ErrNoPrevious, errSub: "2026.11.24-3 (from previousVersion file"},
		},
		{
			name: "previousVersion names a file",
			setup: func(t *testing.T, h host) (string, string, string) {
				writeFile(t, h.rel("A"), "")
				h.release(t, "C", time.Hour, PreviousVersionFile, "A")
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{err: ErrNoPrevious, errSub: "is not a directory"},
		},
		{
			name: "previousVersion names the current release",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour, PreviousVersionFile, "C")
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{err: ErrNoPrevious, errSub: "names the current release"},
		},
		{
			name: "requested version missing: no fall through",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour, PreviousVersionFile, "A")
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, "B"
			},
			want: want{err: ErrNoPrevious, errSub: "releases/B (requested version B) does not exist"},
		},
		{
			name: "requested version is the current one",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour, PreviousVersionFile, "A")
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, "C"
			},
			want: want{prev: "C", source: SourceRequested},
		},
		{
			name: "newest skips rolled back and current",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "B", time.Hour)
				h.release(t, "D", 3*time.Hour, MarkerFile, "{}")
				h.release(t, "E", 4*time.Hour)
				symlink(t, "releases/E", h.link)
				return h.link, h.releases, ""
			},
			want: want{prev: "B", source: SourceNewest},
		},
		{
			name: "newest: equal times, higher name wins",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "2026.11.24-9", time.Hour)
				h.release(t, "2026.11.24-10", time.Hour)
				h.release(t, "2026.11.24-2", time.Hour)
				h.release(t, "C", 0)
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{prev: "2026.11.24-9", source: SourceNewest},
		},
		{
			name: "newest follows a symlinked release, skips dangling links, files, hidden",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour)
				other := h.rel(".store/E")
				mkdir(t, other)
				touch(t, other, t0.Add(2*time.Hour))
				symlink(t, other, h.rel("E"))
				symlink(t, h.rel("gone"), h.rel("F"))
				writeFile(t, h.rel("notes.txt"), "")
				touch(t, h.rel("notes.txt"), t0.Add(5*time.Hour))
				mkdir(t, h.rel(".tmp"))
				touch(t, h.rel(".tmp"), t0.Add(5*time.Hour))
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{prev: "E", source: SourceNewest},
		},
		{
			name: "newest recognises current through a symlinked releases path",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour)
				alias := filepath.Join(h.root, "alias")
				symlink(t, h.root, alias)
				symlink(t, h.rel("C"), h.link)
				return h.link, filepath.Join(alias, "releases"), ""
			},
			want: want{prev: "/alias/releases/A", source: SourceNewest},
		},
		{
			name: "empty releases directory means the current release's directory",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour)
				symlink(t, "releases/C", h.link)
				return h.link, "", ""
			},
			want: want{prev: "A", source: SourceNewest},
		},
		{
			name: "no other release",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "C", time.Hour)
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{err: ErrNoPrevious, errSub: "no release in"},
		},
		{
			name: "every other release rolled back",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0, MarkerFile, "{}")
				h.release(t, "C", time.Hour)
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{err: ErrNoPrevious, errSub: "not marked ROLLED_BACK"},
		},
		{
			name: "releases directory missing",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "C", time.Hour)
				symlink(t, "releases/C", h.link)
				return h.link, filepath.Join(h.root, "nope"), ""
			},
			want: want{err: ErrNoPrevious, errSub: "releases directory"},
		},
		{
			name: "link is a directory",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				mkdir(t, h.link)
				return h.link, h.releases, ""
			},
			want: want{err: ErrNotSymlink},
		},
		{
			name: "link missing",
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				return h.link, h.releases, ""
			},
			want: want{err: fs.ErrNotExist},
		},
		{
			name: "relative link path",
			setup: func(t *testing.T, h host) (string, string, string) {
				return "current", h.releases, ""
			},
			want: want{errSub: "not an absolute path"},
		},
	}
	for _, v := range []string{"..", ".", "a/b", "/A", "a\x00"} {
		tests = append(tests, struct {
			name  string
			setup func(t *testing.T, h host) (link, releasesDir, version string)
			want  want
		}{
			name: fmt.Sprintf("invalid requested version %q", v),
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour)
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, v
			},
			want: want{err: ErrInvalidVersion},
		})
	}
	for _, content := range []string{"", " \n", "releases/A", "../A", "/x/../releases/A", "A\nB", "."} {
		tests = append(tests, struct {
			name  string
			setup func(t *testing.T, h host) (link, releasesDir, version string)
			want  want
		}{
			name: fmt.Sprintf("invalid previousVersion %q", content),
			setup: func(t *testing.T, h host) (string, string, string) {
				h.release(t, "A", 0)
				h.release(t, "C", time.Hour, PreviousVersionFile, content)
				symlink(t, "releases/C", h.link)
				return h.link, h.releases, ""
			},
			want: want{err: ErrNoPrevious, errSub: "want an absolute path or a release name"},
		})
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t)
			link, releasesDir, version := tc.setup(t, h)
			before := snapshot(t, h.root)
			got, err := Resolve(readOnly{t: t}, link, releasesDir, version)
			assertUnchanged(t, before, h.root)

			if tc.want.err != nil || tc.want.errSub != "" {
				if err == nil {
					t.Fatalf("got %+v, want an error", got)
				}
				if tc.want.err != nil && !errors.Is(err, tc.want.err) {
					t.Errorf("error %q is not %v", err, tc.want.err)
				}
				if !strings.Contains(err.Error(), tc.want.errSub) {
					t.Errorf("error %q does not contain %q", err, tc.want.errSub)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantPrev := h.rel(tc.want.prev)
			if strings.HasPrefix(tc.want.prev, "/") {
				wantPrev = h.root + tc.want.prev
			}
			if got.Previous != wantPrev || got.PreviousSource != tc.want.source {
				t.Errorf("previous %s from %s, want %s from %s", got.Previous, got.PreviousSource, wantPrev, tc.want.source)
			}
			if got.Link != link || got.LinkTarget != readlink(t, link) {
				t.Errorf("link %s -> %s, want %s -> %s", got.Link, got.LinkTarget, link, readlink(t, link))
			}
			if wantCur, err := filepath.EvalSymlinks(link); err != nil {
				t.Fatal(err)
			} else if realCur, _ := filepath.EvalSymlinks(got.Current); realCur != wantCur || !filepath.IsAbs(got.Current) {
				t.Errorf("current %s, want %s", got.Current, wantCur)
			}
			if tc.want.prev == "C" && got.Previous != got.Current {
				t.Errorf("previous %s != current %s", got.Previous, got.Current)
			}
		})
	}
}

func TestResolveCurrentPaths(t *testing.T) {
	for _, raw := range []string{"releases/C", "./releases//C/", "", "/"} {
		t.Run(raw, func(t *testing.T) {
			h := newHost(t)
			h.release(t, "A", 0)
			c := h.release(t, "C", time.Hour)
			if raw == "" || raw == "/" {
				raw = c + raw
			}
			symlink(t, raw, h.link)
			got, err := Resolve(Local{}, h.link, h.releases, "")
			if err != nil {
				t.Fatal(err)
			}
			if got.Current != c || got.LinkTarget != raw {
				t.Errorf("current %s (raw %s), want %s (raw %s)", got.Current, got.LinkTarget, c, raw)
			}
		})
	}
}

func TestSwitchNeverMissing(t *testing.T) {
	h := newHost(t)
	a := h.release(t, "A", 0)
	b := h.release(t, "B", 0)
	symlink(t, a, h.link)

	var (
		stop   atomic.Bool
		reads  atomic.Int64
		wg     sync.WaitGroup
		failMu sync.Mutex
		fails  []string
	)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				s, err := os.Readlink(h.link)
				reads.Add(1)
				if err != nil || (s != a && s != b) {
					failMu.Lock()
					fails = append(fails, fmt.Sprintf("%q %v", s, err))
					failMu.Unlock()
				}
			}
		}()
	}
	for i := range 500 {
		target := []string{b, a}[i%2]
		from, err := Switch(Local{}, h.link, target)
		if err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("switch %d: %v", i, err)
		}
		if want := []string{a, b}[i%2]; from != want {
			t.Errorf("switch %d: from %s, want %s", i, from, want)
		}
	}
	stop.Store(true)
	wg.Wait()
	if len(fails) > 0 {
		t.Errorf("%d of %d reads failed, first: %s", len(fails), reads.Load(), fails[0])
	}
	assertNoTemp(t, h.root)
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file left: %s", filepath.Join(dir, e.Name()))
		}
	}
}

func TestSwitchStyle(t *testing.T) {
	tests := []struct {
		name     string
		existing string // "" no link; "abs"; otherwise the raw relative content
		wantRaw  string // "abs" or the relative content
	}{
		{"relative stays relative", "releases/A", "releases/B"},
		{"relative with dot stays relative", "./releases/A", "releases/B"},
		{"absolute stays absolute", "abs", "abs"},
		{"missing link is created absolute", "", "abs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t)
			a := h.release(t, "A", 0)
			b := h.release(t, "B", 0)
			wantFrom := ""
			switch tc.existing {
			case "":
			case "abs":
				symlink(t, a, h.link)
				wantFrom = a
			default:
				symlink(t, tc.existing, h.link)
				wantFrom = a
			}
			from, err := Switch(Local{}, h.link, b)
			if err != nil {
				t.Fatal(err)
			}
			if from != wantFrom {
				t.Errorf("from %q, want %q", from, wantFrom)
			}
			want := tc.wantRaw
			if want == "abs" {
				want = b
			}
			if got := readlink(t, h.link); got != want {
				t.Errorf("link -> %s, want %s", got, want)
			}
			assertNoTemp(t, h.root)
		})
	}
}

func TestSwitchIdempotent(t *testing.T) {
	tests := []struct {
		name   string
		raw    func(h host) string
		target func(h host) string
	}{
		{"same absolute path", func(h host) string { return h.rel("A") }, func(h host) string { return h.rel("A") }},
		{"relative link", func(h host) string { return "releases/A" }, func(h host) string { return h.rel("A") }},
		{"target through a symlinked directory", func(h host) string { return h.rel("A") },
			func(h host) string { return filepath.Join(h.root, "alias", "releases", "A") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t)
			h.release(t, "A", 0)
			symlink(t, h.root, filepath.Join(h.root, "alias"))
			symlink(t, tc.raw(h), h.link)
			before, err := os.Lstat(h.link)
			if err != nil {
				t.Fatal(err)
			}
			snap := snapshot(t, h.root)
			from, err := Switch(readOnly{t: t}, h.link, tc.target(h))
			if err != nil {
				t.Fatal(err)
			}
			if from != h.rel("A") {
				t.Errorf("from %s, want %s", from, h.rel("A"))
			}
			after, err := os.Lstat(h.link)
			if err != nil {
				t.Fatal(err)
			}
			if !os.SameFile(before, after) || !before.ModTime().Equal(after.ModTime()) {
				t.Error("link was rewritten")
			}
			assertUnchanged(t, snap, h.root)
		})
	}
}

// hooked lets a test replace Rename on the local filesystem.
type hooked struct {
	Local
	rename func(oldname, newname string) error
}

func (h hooked) Rename(oldname, newname string) error { return h.rename(oldname, newname) }

func TestSwitchFailures(t *testing.T) {
	tests := []struct {
		name    string
		target  func(t *testing.T, h host) Target
		to      string
		err     error
		errSub  string
		wantRaw string // where the link must stand afterwards
	}{
		{
			name: "rename fails: temp removed, link unchanged",
			target: func(t *testing.T, h host) Target {
				return hooked{rename: func(string, string) error { return fs.ErrPermission }}
			},
			to:      "B",
			err:     fs.ErrPermission,
			errSub:  "link names " + "%A",
			wantRaw: "releases/A",
		},
		{
			name: "someone else switches meanwhile: read back catches it",
			target: func(t *testing.T, h host) Target {
				return hooked{rename: func(o, n string) error {
					if err := os.Rename(o, n); err != nil {
						return err
					}
					tmp := n + ".other"
					if err := os.Symlink("releases/C", tmp); err != nil {
						return err
					}
					return os.Rename(tmp, n)
				}}
			},
			to:      "B",
			err:     ErrLinkMismatch,
			errSub:  "link now names " + "%C",
			wantRaw: "releases/C",
		},
		{
			name:    "target missing",
			target:  func(t *testing.T, h host) Target { return Local{} },
			to:      "missing",
			err:     fs.ErrNotExist,
			wantRaw: "releases/A",
		},
		{
			name:    "target is a file",
			target:  func(t *testing.T, h host) Target { return Local{} },
			to:      "file",
			errSub:  "is not a directory",
			wantRaw: "releases/A",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t)
			h.release(t, "A", 0)
			h.release(t, "B", 0)
			h.release(t, "C", 0)
			writeFile(t, h.rel("file"), "")
			symlink(t, "releases/A", h.link)
			_, err := Switch(tc.target(t, h), h.link, h.rel(tc.to))
			if err == nil {
				t.Fatal("no error")
			}
			if tc.err != nil && !errors.Is(err, tc.err) {
				t.Errorf("error %q is not %v", err, tc.err)
			}
			if sub := strings.ReplaceAll(tc.errSub, "%", h.releases+"/"); !strings.Contains(err.Error(), sub) {
				t.Errorf("error %q does not contain %q", err, sub)
			}
			if got := readlink(t, h.link); got != tc.wantRaw {
				t.Errorf("link -> %s, want %s", got, tc.wantRaw)
			}
			assertNoTemp(t, h.root)
		})
	}
}

func TestSwitchNotSymlink(t *testing.T) {
	h := newHost(t)
	b := h.release(t, "B", 0)
	mkdir(t, h.link)
	before := snapshot(t, h.root)
	_, err := Switch(Local{}, h.link, b)
	if !errors.Is(err, ErrNotSymlink) {
		t.Fatalf("error %v, want ErrNotSymlink", err)
	}
	assertUnchanged(t, before, h.root)
}

func TestActivate(t *testing.T) {
	t.Run("records previous, switches, clears marker", func(t *testing.T) {
		h := newHost(t)
		a := h.release(t, "A", 0)
		b := h.release(t, "B", 0, MarkerFile, "{}", PreviousVersionFile, "stale\n")
		symlink(t, "releases/A", h.link)
		prev, err := Activate(Local{}, h.link, b)
		if err != nil {
			t.Fatal(err)
		}
		if prev != a {
			t.Errorf("previous %s, want %s", prev, a)
		}
		if got := readFile(t, filepath.Join(b, PreviousVersionFile)); got != a+"\n" {
			t.Errorf("previousVersion %q, want %q", got, a+"\n")
		}
		if got := readlink(t, h.link); got != "releases/B" {
			t.Errorf("link -> %s", got)
		}
		if exists(t, filepath.Join(b, MarkerFile)) {
			t.Error("marker not removed")
		}
		assertNoTemp(t, b)
		assertNoTemp(t, h.root)
	})
	t.Run("no link yet", func(t *testing.T) {
		h := newHost(t)
		a := h.release(t, "A", 0)
		prev, err := Activate(Local{}, h.link, a)
		if err != nil {
			t.Fatal(err)
		}
		if prev != "" {
			t.Errorf("previous %q, want none", prev)
		}
		if got := readlink(t, h.link); got != a {
			t.Errorf("link -> %s, want %s", got, a)
		}
		if exists(t, filepath.Join(a, PreviousVersionFile)) {
			t.Error("previousVersion written without a previous release")
		}
	})
	t.Run("already current keeps previousVersion", func(t *testing.T) {
		h := newHost(t)
		h.release(t, "A", 0)
		b := h.release(t, "B", 0, PreviousVersionFile, "A\n")
		symlink(t, b, h.link)
		before := snapshot(t, h.root)
		prev, err := Activate(Local{}, h.link, b)
		if err != nil {
			t.Fatal(err)
		}
		if prev != b {
			t.Errorf("previous %s, want %s", prev, b)
		}
		assertUnchanged(t, before, h.root)
	})
	for _, tc := range []struct{ name, release string }{
		{"release missing", "missing"},
		{"release is a file", "file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t)
			h.release(t, "A", 0)
			writeFile(t, h.rel("file"), "")
			symlink(t, "releases/A", h.link)
			before := snapshot(t, h.root)
			if _, err := Activate(Local{}, h.link, h.rel(tc.release)); err == nil {
				t.Fatal("no error")
			}
			assertUnchanged(t, before, h.root)
		})
	}
	t.Run("link is not a symlink", func(t *testing.T) {
		h := newHost(t)
		a := h.release(t, "A", 0)
		mkdir(t, h.link)
		before := snapshot(t, h.root)
		if _, err := Activate(Local{}, h.link, a); !errors.Is(err, ErrNotSymlink) {
			t.Fatalf("error %v, want ErrNotSymlink", err)
		}
		assertUnchanged(t, before, h.root)
	})
}

// TestDrill walks the README's rehearsal: activate, roll back, activate
// again, with the layout functions the executor will combine.
func TestDrill(t *testing.T) {
	h := newHost(t)
	a := h.release(t, "A", 0)
	b := h.release(t, "B", time.Hour)
	symlink(t, "releases/A", h.link)

	if _, err := Activate(Local{}, h.link, b); err != nil {
		t.Fatal(err)
	}
	rel, err := Resolve(Local{}, h.link, h.releases, "")
	if err != nil {
		t.Fatal(err)
	}
	if rel.Current != b || rel.Previous != a || rel.PreviousSource != SourcePreviousVersion {
		t.Fatalf("resolved %+v", rel)
	}
	from, err := Switch(Local{}, h.link, rel.Previous)
	if err != nil {
		t.Fatal(err)
	}
	m := Marker{RunID: "r-1", Reason: "orders-per-minute below 50", From: from, To: rel.Previous}
	if err := MarkRolledBack(Local{}, from, m); err != nil {
		t.Fatal(err)
	}
	if marked, err := RolledBack(Local{}, b); err != nil || !marked {
		t.Fatalf("RolledBack(B) = %v, %v", marked, err)
	}

	// A retried rollback pinned to A finds the host already there.
	again, err := Resolve(Local{}, h.link, h.releases, "A")
	if err != nil || again.Previous != again.Current {
		t.Fatalf("retry resolved %+v, %v", again, err)
	}
	// B is newer than A but marked, so nothing is left to roll back to.
	if _, err := Resolve(Local{}, h.link, h.releases, ""); !errors.Is(err, ErrNoPrevious) {
		t.Fatalf("second rollback: %v, want ErrNoPrevious", err)
	}

	if _, err := Activate(Local{}, h.link, b); err != nil {
		t.Fatal(err)
	}
	if marked, err := RolledBack(Local{}, b); err != nil || marked {
		t.Fatalf("RolledBack(B) after re-activation = %v, %v", marked, err)
	}
	if got := readlink(t, h.link); got != "releases/B" {
		t.Errorf("link -> %s", got)
	}
}

func TestMarker(t *testing.T) {
	dir := t.TempDir()
	if marked, err := RolledBack(Local{}, dir); err != nil || marked {
		t.Fatalf("unmarked: %v, %v", marked, err)
	}
	m := Marker{RunID: "r-1", RequestID: "q-7", Reason: "alert", From: "/r/B", To: "/r/A"}
	if err := MarkRolledBack(Local{}, dir, m); err != nil {
		t.Fatal(err)
	}
	var got Marker
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(dir, MarkerFile))), &got); err != nil {
		t.Fatal(err)
	}
	if got.Time.IsZero() || time.Since(got.Time) > time.Minute {
		t.Errorf("time %v not set to now", got.Time)
	}
	got.Time = time.Time{}
	if got != m {
		t.Errorf("marker %+v, want %+v", got, m)
	}
	if marked, err := RolledBack(Local{}, dir); err != nil || !marked {
		t.Fatalf("marked: %v, %v", marked, err)
	}
	var raw map[string]any
	_ = json.Unmarshal([]byte(readFile(t, filepath.Join(dir, MarkerFile))), &raw)
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"from", "reason", "request_id", "run_id", "time", "to"}; !slices.Equal(keys, want) {
		t.Errorf("keys %v, want %v", keys, want)
	}
	assertNoTemp(t, dir)
}

func BenchmarkSwitchLocal(b *testing.B) {
	root := b.TempDir()
	link := filepath.Join(root, "current")
	rels := []string{filepath.Join(root, "releases", "A"), filepath.Join(root, "releases", "B")}
	for _, r := range rels {
		if err := os.MkdirAll(r, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.Symlink("releases/A", link); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		i++
		if _, err := Switch(Local{}, link, rels[i%2]); err != nil {
			b.Fatal(err)
		}
	}
}
