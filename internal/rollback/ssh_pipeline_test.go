package rollback

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestSSHSwitchAndMarkRefusals: the switch and the marker go over SSH in
// three flights (switchAndMark), and each change is still sent only once
// what it depends on is known. A before_code data step changes the host
// between the plan and the switch; whatever it did, nothing is written that
// should not be, the host is reported, and no temporary file is left.
func TestSSHSwitchAndMarkRefusals(t *testing.T) {
	s := testutil.StartSSHD(t, "127.0.0.2")
	for _, tc := range []struct {
		name    string
		script  func(h host) string // run on the watcher's machine, which shares the host's filesystem
		link    string              // where the link must end
		marked  bool                // v2 carries a marker afterwards
		message string              // in the host's record
	}{
		{
			name:    "a deploy moved the link",
			script:  func(h host) string { return "ln -sfn releases/v3 " + h.link },
			link:    "releases/v3",
			message: "not " + "%v2%" + " as it did when the rollback was planned; nothing changed",
		},
		{
			name:    "the link became a directory",
			script:  func(h host) string { return "rm " + h.link + " && mkdir " + h.link },
			message: "is a directory, not a symbolic link",
		},
		{
			name:    "the marker cannot be put in place",
			script:  func(h host) string { return "mkdir -p " + filepath.Join(h.rel("v2"), MarkerFile, "x") },
			link:    "releases/v1",
			message: "link switched, but marking " + "%v2%" + " rolled back failed",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t, s, "127.0.0.2")
			h := f.hosts["127.0.0.2"]
			mkdir(t, h.rel("v3"))
			rules := loadRules(t, f.policy(s, s.KnownHosts, "5s", f.addrs,
				"data: {command: "+yamlList("sh", "-c", tc.script(h))+", run_on: local, order: before_code, timeout: 30s}"))
			rec := &recorder{}
			e := &Executor{Policies: rules, Audit: rec, AnnounceSource: "test", Dial: newPool(t).Dial}

			res := e.Execute(ctxFor(t), request("rb-refused"))

			if res.Status != ResultFailed {
				t.Fatalf("result %s, want failed", res.Status)
			}
			if tc.link != "" {
				if got := readlink(t, h.link); got != tc.link {
					t.Errorf("link -> %s, want %s", got, tc.link)
				}
			}
			if fi, err := os.Lstat(filepath.Join(h.rel("v2"), MarkerFile)); err == nil && fi.Mode().IsRegular() {
				t.Errorf("v2 marked rolled back: %s", readFile(t, filepath.Join(h.rel("v2"), MarkerFile)))
			}
			host := one(t, rec.all(), audit.RollbackHost)
			if want := strings.ReplaceAll(tc.message, "%v2%", h.rel("v2")); !strings.Contains(host.Message, want) {
				t.Errorf("rollback.host %q does not say %q", host.Message, want)
			}
			assertNoTemps(t, h.root, h.rel("v1"), h.rel("v2"), h.rel("v3"))
		})
	}
}

// TestRenameThroughLink: what switchAndMark's one-flight marker rests on.
// A rename whose source is reached through the link finds the file only
// when the link names the directory it was made in: on a real sshd, with
// the link elsewhere the rename fails and nothing moves; with the link
// there, the file moves.
func TestRenameThroughLink(t *testing.T) {
	s := testutil.StartSSHD(t, "127.0.0.2")
	tg := dialSSHTarget(t, newPool(t), s.Addrs[0], sshConfig(s))
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	mkdir(t, a)
	mkdir(t, b)
	link := filepath.Join(dir, "current")
	symlink(t, "b", link)
	writeFile(t, filepath.Join(a, ".tmp"), "marker")
	dst := filepath.Join(dir, "ROLLED_BACK")

	rename := func() error {
		return tg.call(false, func(c *sshConn) error {
			op, err := ask(c.sftp, func(f *flight) *sftpOp { return f.posixRename(filepath.Join(link, ".tmp"), dst) })
			if err != nil {
				return err
			}
			return op.status()
		})
	}
	if err := rename(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("rename through a link naming b: %v, want no such file", err)
	}
	if exists(t, dst) || !exists(t, filepath.Join(a, ".tmp")) {
		t.Fatal("the rename through a link naming another directory moved the file")
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	symlink(t, "a", link)
	if err := rename(); err != nil {
		t.Fatalf("rename through a link naming a: %v", err)
	}
	if got := readFile(t, dst); got != "marker" {
		t.Errorf("moved file holds %q", got)
	}
}

// TestSSHMarkerFallsBack: when the marker's rename through the link fails
// although the switch took effect (target and expect on two filesystems),
// the marker is written the ordinary way and no temporary file is left.
func TestSSHMarkerFallsBack(t *testing.T) {
	s := testutil.StartSSHD(t, "127.0.0.2")
	throughLink = func(link, tmp string) string {
		return filepath.Join(filepath.Dir(link), "elsewhere", filepath.Base(tmp))
	}
	t.Cleanup(func() {
		throughLink = func(link, tmp string) string { return filepath.Join(link, filepath.Base(tmp)) }
	})
	f := newFleet(t, s, "127.0.0.2")
	h := f.hosts["127.0.0.2"]
	rules := loadRules(t, f.policy(s, s.KnownHosts, "5s", f.addrs))
	e := &Executor{Policies: rules, Audit: &recorder{}, AnnounceSource: "test", Dial: newPool(t).Dial}

	res := e.Execute(ctxFor(t), request("rb-fallback"))

	if res.Status != ResultCompleted {
		t.Fatalf("result %s: %v", res.Status, res.Err)
	}
	if got := readlink(t, h.link); got != "releases/v1" {
		t.Errorf("link -> %s, want releases/v1", got)
	}
	if m := readMarker(t, h.rel("v2")); m.To != h.rel("v1") || m.RequestID != "rb-fallback" {
		t.Errorf("marker %+v", m)
	}
	assertNoTemps(t, h.root, h.rel("v1"), h.rel("v2"))
}

// assertNoTemps fails t for every temporary file (a link's or a marker's)
// left in dirs.
func assertNoTemps(t *testing.T, dirs ...string) {
	t.Helper()
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if strings.Contains(e.Name(), ".tmp-") {
				t.Errorf("temporary %s left in %s", e.Name(), dir)
			}
		}
	}
}
