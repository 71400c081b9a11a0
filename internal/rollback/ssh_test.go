package rollback

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// The tests in this file run against a real sshd on loopback (see
// testutil.StartSSHD): one sshd listening on 127.0.0.2, 127.0.0.3, ... is a
// fleet of hosts, and since they all share this machine's filesystem, each
// host's release tree lives under root/<host address>/, reached through the
// {{ .Host }} in the policy's link template.

// fleetHosts are the hosts of the fleet tests.
var fleetHosts = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}

func sshConfig(s *testutil.SSHD) policy.SSH {
	return policy.SSH{
		User: s.User, IdentityFile: s.IdentityFile, KnownHosts: s.KnownHosts,
		ConnectTimeout: model.Duration(5 * time.Second), CommandTimeout: model.Duration(20 * time.Second),
	}
}

func newPool(t *testing.T) *SSHPool {
	t.Helper()
	p := NewSSHPool(0)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func dialSSHTarget(t *testing.T, p *SSHPool, addr string, cfg policy.SSH) *SSHTarget {
	t.Helper()
	tg, err := p.Dial(ctxFor(t), addr, cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return tg.(*SSHTarget)
}

// execSessions counts the commands sshd started (exec sessions), as opposed
// to the SFTP subsystem: file operations must start none.
func execSessions(s *testutil.SSHD) int {
	return strings.Count(s.Log(), "Starting session: command")
}

// TestSSHTargetFiles runs the Target's file operations over SFTP and checks
// them on the filesystem the host (sshd) sees, and that none of them made
// sshd start a process.
func TestSSHTargetFiles(t *testing.T) {
	s := testutil.StartSSHD(t)
	tg := dialSSHTarget(t, newPool(t), s.Addrs[0], sshConfig(s))
	if tg.Name() != s.Addrs[0] {
		t.Errorf("Name() = %q, want %q", tg.Name(), s.Addrs[0])
	}
	h := newHost(t)
	h.release(t, "v1", -time.Hour)
	h.release(t, "v2", 0)
	link := h.link

	// Symlink, Lstat, Readlink, Stat.
	if err := tg.Symlink("releases/v1", link); err != nil {
		t.Fatal(err)
	}
	if got := readlink(t, link); got != "releases/v1" {
		t.Fatalf("link -> %q", got)
	}
	if fi, err := tg.Lstat(link); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("Lstat(link) = %v, %v; want a symlink", fi, err)
	}
	if got, err := tg.Readlink(link); err != nil || got != "releases/v1" {
		t.Errorf("Readlink = %q, %v", got, err)
	}
	if fi, err := tg.Stat(link); err != nil || !fi.IsDir() {
		t.Errorf("Stat(link) = %v, %v; want the release directory", fi, err)
	}

	// Rename over an existing link replaces it (posix-rename).
	tmp := filepath.Join(h.root, ".current.tmp")
	if err := tg.Symlink("releases/v2", tmp); err != nil {
		t.Fatal(err)
	}
	if err := tg.Rename(tmp, link); err != nil {
		t.Fatalf("rename over the link: %v", err)
	}
	if got := readlink(t, link); got != "releases/v2" {
		t.Errorf("after rename, link -> %q", got)
	}
	if exists(t, tmp) {
		t.Error("temporary link still there")
	}

	// WriteFile: content, exact mode, replaces, no temporary file left.
	f := filepath.Join(h.rel("v2"), "note")
	for _, content := range []string{"first\n", "second, longer\n"} {
		if err := tg.WriteFile(f, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, f); got != content {
			t.Errorf("file %q, want %q", got, content)
		}
	}
	if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v (%v), want 0640", fi.Mode(), err)
	}
	if got, err := tg.ReadFile(f); err != nil || string(got) != "second, longer\n" {
		t.Errorf("ReadFile = %q, %v", got, err)
	}
	names := func(dir string) []string {
		infos, err := tg.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, fi := range infos {
			out = append(out, fmt.Sprintf("%s %v", fi.Name(), fi.Mode().Type()))
		}
		slices.Sort(out)
		return out
	}
	if got, want := names(h.rel("v2")), []string{"note ----------"}; !slices.Equal(got, want) {
		t.Errorf("ReadDir(v2) = %q, want %q (no temporary file)", got, want)
	}
	// ReadDir shows a symlink as a symlink (lstat), like Local.
	if got, want := names(h.root), []string{"current L---------", "releases d---------"}; !slices.Equal(got, want) {
		t.Errorf("ReadDir(root) = %q, want %q", got, want)
	}

	// Errors name the path and match fs.ErrNotExist, like Local's.
	missing := filepath.Join(h.root, "missing")
	for name, err := range map[string]error{
		"Readlink": func() error { _, err := tg.Readlink(missing); return err }(),
		"Lstat":    func() error { _, err := tg.Lstat(missing); return err }(),
		"ReadFile": func() error { _, err := tg.ReadFile(missing); return err }(),
		"ReadDir":  func() error { _, err := tg.ReadDir(missing); return err }(),
		"Remove":   tg.Remove(missing),
	} {
		if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(fmt.Sprint(err), missing) {
			t.Errorf("%s(missing) = %v, want fs.ErrNotExist naming %s", name, err, missing)
		}
	}
	if err := tg.WriteFile(filepath.Join(missing, "f"), []byte("x"), 0o644); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("WriteFile into a missing directory: %v", err)
	}

	// Remove.
	if err := tg.Remove(f); err != nil || exists(t, f) {
		t.Errorf("Remove: %v", err)
	}

	// The layout functions over SSH: activate v1 (recording v2 as its
	// previous release), then resolve and switch back.
	if prev, err := Activate(tg, link, h.rel("v1")); err != nil || prev != h.rel("v2") {
		t.Fatalf("Activate = %q, %v", prev, err)
	}
	if got := readFile(t, filepath.Join(h.rel("v1"), PreviousVersionFile)); got != h.rel("v2")+"\n" {
		t.Errorf("previousVersion %q", got)
	}
	rel, err := Resolve(tg, link, h.releases, "")
	if err != nil || rel.Previous != h.rel("v2") || rel.PreviousSource != SourcePreviousVersion {
		t.Fatalf("Resolve = %+v, %v", rel, err)
	}
	if _, err := Switch(tg, link, rel.Previous); err != nil {
		t.Fatal(err)
	}
	if got := readlink(t, link); got != "releases/v2" {
		t.Errorf("after Switch, link -> %q (the relative style must be kept)", got)
	}

	if n := execSessions(s); n != 0 {
		t.Errorf("sshd started %d command(s) for file operations, want none (SFTP only)", n)
	}
}

// hostileWords arrive at a remote command literally: nothing in them may
// mean anything to the shell sshd runs the command with.
var hostileWords = []string{
	"two words", "it's", `"double"`, "$(touch %SENTINEL%)", "`touch %SENTINEL%`", "a; touch %SENTINEL%",
	"x && touch %SENTINEL% || y", "| touch %SENTINEL%", "> %SENTINEL%", "line1\nline2", "*", "~", "$HOME", "${PATH}",
	`back\slash`, "'", "''", `'\''`, "", " ", "\ttab", "-n", "--", "%s", "héllo wörld", "#comment", "!event",
}

func sentinelWords(sentinel string) []string {
	out := make([]string, len(hostileWords))
	for i, w := range hostileWords {
		out[i] = strings.ReplaceAll(w, "%SENTINEL%", sentinel)
	}
	return out
}

// TestShellCommand checks the quoting with the local /bin/sh, quickly; the
// SSH test below checks it through sshd and the user's login shell.
func TestShellCommand(t *testing.T) {
	sentinel := filepath.Join(t.TempDir(), "pwned")
	words := sentinelWords(sentinel)
	env := []string{"WATCHER_REASON=it's $(touch " + sentinel + ")\nnext line", "EMPTY="}
	line, err := shellCommand(append([]string{"printf", `%s\n`}, words...), env)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(line, `exec env 'WATCHER_REASON=it'\''s $(touch `) {
		t.Errorf("command line %q", line)
	}
	out, err := exec.Command("/bin/sh", "-c", line).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if want := strings.Join(words, "\n") + "\n"; string(out) != want {
		t.Errorf("sh printed\n%q\nwant\n%q", out, want)
	}
	line, _ = shellCommand([]string{"printenv", "WATCHER_REASON"}, env)
	if out, err := exec.Command("/bin/sh", "-c", line).CombinedOutput(); err != nil || string(out) != "it's $(touch "+sentinel+")\nnext line\n" {
		t.Errorf("printenv: %q, %v", out, err)
	}
	if exists(t, sentinel) {
		t.Error("a word was executed by the shell")
	}

	for _, tc := range []struct {
		argv, env []string
		want      string
	}{
		{nil, nil, "empty command"},
		{[]string{""}, nil, "empty command"},
		{[]string{"-oProxyCommand=x"}, nil, "starts with '-'"},
		{[]string{"A=b"}, []string{"K=v"}, "env(1) would take for a variable"},
		{[]string{"true"}, []string{"no equals"}, "not NAME=value"},
		{[]string{"true"}, []string{"BAD NAME=v"}, "not NAME=value"},
		{[]string{"true"}, []string{"$(id)=v"}, "not NAME=value"},
		{[]string{"echo", "a\x00b"}, nil, "NUL"},
	} {
		if _, err := shellCommand(tc.argv, tc.env); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("shellCommand(%q, %q) = %v, want an error saying %q", tc.argv, tc.env, err, tc.want)
		}
	}
}

// FuzzShellQuote: any word without NUL survives the local shell intact.
func FuzzShellQuote(f *testing.F) {
	for _, w := range hostileWords {
		f.Add(w)
	}
	f.Fuzz(func(t *testing.T, w string) {
		if strings.ContainsRune(w, 0) {
			return
		}
		line, err := shellCommand([]string{"printf", "%s", w}, nil)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("/bin/sh", "-c", line).Output()
		if err != nil || string(out) != w {
			t.Fatalf("%q arrived as %q (%v)", w, out, err)
		}
	})
}

// TestSSHRun runs commands on a real sshd: hostile words and environment
// values arrive literally, output is captured and bounded, failures and
// timeouts are reported, and a timed-out command is killed on the host.
func TestSSHRun(t *testing.T) {
	s := testutil.StartSSHD(t)
	cfg := sshConfig(s)
	tg := dialSSHTarget(t, newPool(t), s.Addrs[0], cfg)
	ctx := ctxFor(t)
	sentinel := filepath.Join(t.TempDir(), "pwned")
	words := sentinelWords(sentinel)

	t.Run("hostile words arrive literally", func(t *testing.T) {
		out, err := tg.Run(ctx, append([]string{"printf", `%s\n`}, words...), nil)
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if want := strings.Join(words, "\n") + "\n"; string(out) != want {
			t.Errorf("printed\n%q\nwant\n%q", out, want)
		}
		if exists(t, sentinel) {
			t.Error("a word was executed by the remote shell")
		}
	})
	t.Run("environment", func(t *testing.T) {
		reason := "it's $(touch " + sentinel + "); `touch " + sentinel + "`\nsecond line"
		out, err := tg.Run(ctx, []string{"printenv", "WATCHER_REASON", "WATCHER_HOST"},
			[]string{"WATCHER_REASON=" + reason, "WATCHER_HOST=127.0.0.2"})
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if want := reason + "\n127.0.0.2\n"; string(out) != want {
			t.Errorf("printenv printed %q, want %q", out, want)
		}
		if exists(t, sentinel) {
			t.Error("an environment value was executed by the remote shell")
		}
	})
	t.Run("failure: exit status and both streams", func(t *testing.T) {
		out, err := tg.Run(ctx, []string{"sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"}, nil)
		var exit *ssh.ExitError
		if !errors.As(err, &exit) || exit.ExitStatus() != 3 {
			t.Fatalf("err = %v, want exit status 3", err)
		}
		if !strings.Contains(err.Error(), "run sh on "+s.Addrs[0]) {
			t.Errorf("error %q does not name the command and host", err)
		}
		if !strings.Contains(string(out), "to-stdout") || !strings.Contains(string(out), "to-stderr") {
			t.Errorf("output %q", out)
		}
	})
	t.Run("output is bounded", func(t *testing.T) {
		out, err := tg.Run(ctx, []string{"sh", "-c", "head -c 300000 /dev/zero | tr '\\0' a; echo END"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) > maxRunOutput+100 || !strings.Contains(string(out), "bytes of output truncated") || !strings.HasSuffix(string(out), "END\n") {
			t.Errorf("%d bytes of output, want at most about %d with a truncation marker and the end", len(out), maxRunOutput)
		}
	})
	t.Run("command_timeout kills the command", func(t *testing.T) {
		short := cfg
		short.CommandTimeout = model.Duration(300 * time.Millisecond)
		p := newPool(t)
		tg := dialSSHTarget(t, p, s.Addrs[0], short)
		start := time.Now()
		_, err := tg.Run(ctx, []string{"sleep", "31.4159"}, nil)
		if err == nil || !strings.Contains(err.Error(), "command_timeout 300ms") {
			t.Fatalf("err = %v, want a command_timeout error", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("Run returned after %s", d)
		}
		testutil.Eventually(t, 5*time.Second, "the remote sleep to be killed", func() bool {
			return !processRunning(t, "sleep\x0031.4159\x00")
		})
	})
	t.Run("cancel kills the command", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(300*time.Millisecond, cancel)
		_, err := tg.Run(cctx, []string{"sleep", "27.1828"}, nil)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		testutil.Eventually(t, 5*time.Second, "the remote sleep to be killed", func() bool {
			return !processRunning(t, "sleep\x0027.1828\x00")
		})
	})
}

// processRunning reports whether a process with exactly this command line
// (NUL-separated, as in /proc/PID/cmdline) runs on this machine.
func processRunning(t *testing.T, cmdline string) bool {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && string(b) == cmdline {
			return true
		}
	}
	return false
}

// fleet is a release tree per host under root: v0, v1, v2 deployed in that
// order, current -> releases/v2, v2/previousVersion naming v1.
type fleet struct {
	root  string
	hosts map[string]host // by address without port
	addrs []string        // "127.0.0.2:PORT", in order
}

func newFleet(t *testing.T, s *testutil.SSHD, hostIPs ...string) fleet {
	t.Helper()
	f := fleet{root: t.TempDir(), hosts: map[string]host{}}
	for _, ip := range hostIPs {
		dir := filepath.Join(f.root, ip)
		h := host{root: dir, releases: filepath.Join(dir, "releases"), link: filepath.Join(dir, "current")}
		mkdir(t, h.releases)
		h.release(t, "v0", -2*time.Hour)
		h.release(t, "v1", -time.Hour)
		h.release(t, "v2", 0, PreviousVersionFile, "v1\n")
		symlink(t, "releases/v2", h.link)
		f.hosts[ip] = h
		f.addrs = append(f.addrs, net.JoinHostPort(ip, strconv.Itoa(s.Port)))
	}
	return f
}

// policy is a shop policy rolling back every host of the fleet over SSH,
// with the given known_hosts, connect timeout and extra lines.
func (f fleet) policy(s *testutil.SSHD, knownHosts string, connectTimeout string, hosts []string, extra ...string) string {
	perHost := host{link: filepath.Join(f.root, "{{ .Host }}", "current"), releases: filepath.Join(f.root, "{{ .Host }}", "releases")}
	lines := append([]string{
		"hosts: " + yamlList(hosts...),
		fmt.Sprintf("ssh: {user: %q, identity_file: %q, known_hosts: %q, connect_timeout: %s, command_timeout: 20s}",
			s.User, s.IdentityFile, knownHosts, connectTimeout),
	}, extra...)
	return policyYAML("shop", "shop", perHost, lines...)
}

func (f fleet) links(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for ip, h := range f.hosts {
		out[ip] = readlink(t, h.link)
	}
	return out
}

// fleetExecutor is an executor dialing through a fresh pool.
func fleetExecutor(t *testing.T, n *testutil.NATS, rules func() *policy.Set) (*Executor, *recorder) {
	t.Helper()
	e, rec, _ := newExecutor(t, n, rules)
	e.Dial = newPool(t).Dial
	return e, rec
}

// TestSSHExecuteFleet rolls back three hosts over SSH: every link switched
// and read back, every release marked, the after command run on each host
// with the rollback's environment, a rollback.host per host and
// rollback.completed; and no process spawned for the switch itself.
func TestSSHExecuteFleet(t *testing.T) {
	n := testutil.StartNATS(t)
	s := testutil.StartSSHD(t, fleetHosts...)
	f := newFleet(t, s, fleetHosts...)
	rules := loadRules(t, f.policy(s, s.KnownHosts, "5s", f.addrs,
		"after: "+yamlList("printenv", "WATCHER_HOST", "WATCHER_FROM", "WATCHER_TO", "WATCHER_REASON")))
	e, rec := fleetExecutor(t, n, rules)
	req := request("rb-ssh-fleet")
	req.Reason = "error ratio 0.07 > max 0.05; it's $(id)"

	res := e.Execute(ctxFor(t), req)

	if res.Status != ResultCompleted {
		t.Fatalf("result %s, %v; audit %+v\nsshd log:\n%s", res.Status, res.Err, rec.all(), s.Log())
	}
	for ip, l := range f.links(t) {
		if l != "releases/v1" {
			t.Errorf("%s: link -> %s, want releases/v1", ip, l)
		}
		h := f.hosts[ip]
		if m := readMarker(t, h.rel("v2")); m.RequestID != req.ID || m.To != h.rel("v1") {
			t.Errorf("%s: marker %+v", ip, m)
		}
	}
	recs := rec.all()
	var seen []string
	for _, r := range recs {
		if r.Kind != audit.RollbackHost {
			continue
		}
		hostAddr := dig(t, r.Detail, "host").(string)
		seen = append(seen, hostAddr)
		ip, _, _ := net.SplitHostPort(hostAddr)
		h := f.hosts[ip]
		if dig(t, r.Detail, "switched") != true || dig(t, r.Detail, "error") != "" ||
			dig(t, r.Detail, "from") != h.rel("v2") || dig(t, r.Detail, "to") != h.rel("v1") {
			t.Errorf("rollback.host %v", r.Detail)
		}
		wantOut := fmt.Sprintf("%s\n%s\n%s\n%s\n", ip, h.rel("v2"), h.rel("v1"), req.Reason)
		if got := dig(t, r.Detail, "after_output"); got != wantOut {
			t.Errorf("%s: after printed %q, want %q", hostAddr, got, wantOut)
		}
	}
	slices.Sort(seen)
	if !slices.Equal(seen, f.addrs) {
		t.Errorf("rollback.host records for %v, want %v", seen, f.addrs)
	}
	done := one(t, recs, audit.RollbackCompleted)
	if want := "shop in production rolled back from v2 to v1 on 3 host(s)"; done.Message != want {
		t.Errorf("rollback.completed %q, want %q", done.Message, want)
	}
	// One exec session per host, for the after command; the switch itself
	// went over SFTP.
	if got := execSessions(s); got != len(fleetHosts) {
		t.Errorf("sshd started %d commands, want %d (the after command on each host)", got, len(fleetHosts))
	}

	// Again: every host is already there; nothing switches, nothing runs.
	res = e.Execute(ctxFor(t), req)
	if res.Status != ResultCompleted || slices.ContainsFunc(res.Hosts, func(h HostResult) bool { return h.Switched }) {
		t.Errorf("second execution: %s %+v", res.Status, res.Hosts)
	}
	if got := execSessions(s); got != len(fleetHosts) {
		t.Errorf("the second execution ran the after command again (%d commands)", got)
	}
}

// otherKnownHosts writes a known_hosts for the fleet in which each address
// gets what line(addr) returns ("" for none).
func otherKnownHosts(t *testing.T, addrs []string, line func(addr string) string) string {
	t.Helper()
	var b strings.Builder
	for _, a := range addrs {
		if l := line(a); l != "" {
			b.WriteString(l + "\n")
		}
	}
	p := filepath.Join(t.TempDir(), "known_hosts")
	writeFile(t, p, b.String())
	return p
}

func otherHostKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestSSHExecuteHostKeys: host keys are always verified. A host whose key
// is unknown or changed fails the rollback before any host is touched, with
// a message saying what to do; hashed known_hosts entries are accepted.
func TestSSHExecuteHostKeys(t *testing.T) {
	n := testutil.StartNATS(t)
	s := testutil.StartSSHD(t, fleetHosts...)
	other := otherHostKey(t)
	tests := []struct {
		name  string
		line  func(addr string) string // the known_hosts line of addr
		bad   string                   // host refused; "" for none
		wants []string                 // in the rollback.failed message
	}{
		{
			name: "hashed entries",
			line: func(a string) string { return knownhosts.HashHostname(knownhosts.Normalize(a)) + " " + s.HostKey },
		},
		{
			name: "unknown key",
			line: func(a string) string {
				if strings.HasPrefix(a, "127.0.0.3:") {
					return ""
				}
				return knownhosts.Line([]string{a}, s.HostPublicKey)
			},
			bad: "127.0.0.3",
			wants: []string{
				"1 of 3 hosts not reached, nothing touched",
				"host key of 127.0.0.3:%PORT% is not in %KH%: add it with ssh-keyscan -p %PORT% 127.0.0.3 >> %KH%",
				"links now: on v2: 127.0.0.2:%PORT%, 127.0.0.4:%PORT%; not reached: 127.0.0.3:%PORT%",
			},
		},
		{
			name: "changed key",
			line: func(a string) string {
				if strings.HasPrefix(a, "127.0.0.4:") {
					return knownhosts.Line([]string{a}, other)
				}
				return knownhosts.Line([]string{a}, s.HostPublicKey)
			},
			bad: "127.0.0.4",
			wants: []string{
				"host key of 127.0.0.4:%PORT% CHANGED: it offered ssh-ed25519 " + ssh.FingerprintSHA256(s.HostPublicKey),
				"%KH%:3 has ssh-ed25519 " + ssh.FingerprintSHA256(other),
				"nothing was done on it",
			},
		},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t, s, fleetHosts...)
			kh := otherKnownHosts(t, f.addrs, tc.line)
			afterRan := filepath.Join(t.TempDir(), "after-ran")
			e, rec := fleetExecutor(t, n, loadRules(t, f.policy(s, kh, "5s", f.addrs, "after: "+yamlList("touch", afterRan))))
			before := snapshot(t, f.root)

			res := e.Execute(ctxFor(t), request(fmt.Sprintf("rb-ssh-keys-%d", i)))

			if tc.bad == "" {
				if res.Status != ResultCompleted {
					t.Fatalf("result %s: %v", res.Status, res.Err)
				}
				for ip, l := range f.links(t) {
					if l != "releases/v1" {
						t.Errorf("%s: link -> %s", ip, l)
					}
				}
				return
			}
			if res.Status != ResultFailed {
				t.Fatalf("result %s, want failed", res.Status)
			}
			assertUnchanged(t, before, f.root)
			if exists(t, afterRan) {
				t.Error("after command ran")
			}
			var hke *HostKeyError
			if !errors.As(res.Err, &hke) || !errors.Is(res.Err, ErrHostKey) {
				t.Errorf("error %v is not a *HostKeyError", res.Err)
			}
			recs := rec.all()
			if got, want := kinds(recs), []string{audit.RollbackRequested, audit.RollbackFailed}; !slices.Equal(got, want) {
				t.Fatalf("audit kinds %v, want %v", got, want)
			}
			failed := recs[1]
			r := strings.NewReplacer("%PORT%", strconv.Itoa(s.Port), "%KH%", kh)
			for _, w := range tc.wants {
				if w = r.Replace(w); !strings.Contains(failed.Message, w) {
					t.Errorf("rollback.failed %q\ndoes not say %q", failed.Message, w)
				}
			}
			// Per-host detail: the refused host has the error, the others
			// where their link stands.
			for i, a := range f.addrs {
				ip, _, _ := net.SplitHostPort(a)
				hostErr, _ := dig(t, failed.Detail, "hosts", i, "error").(string)
				now, _ := dig(t, failed.Detail, "hosts", i, "link_now").(string)
				if dig(t, failed.Detail, "hosts", i, "host") != a {
					t.Errorf("hosts[%d] is %v, want %s", i, dig(t, failed.Detail, "hosts", i), a)
				}
				if ip == tc.bad {
					if !strings.Contains(hostErr, "host key of "+a) || now != "" {
						t.Errorf("%s: error %q, link_now %q", a, hostErr, now)
					}
				} else if hostErr != "" || now != f.hosts[ip].rel("v2") {
					t.Errorf("%s: error %q, link_now %q, want none and v2", a, hostErr, now)
				}
			}
		})
	}
}

// TestSSHExecuteHostDown: a host that refuses connections, and one that
// accepts and then says nothing (a blackholed sshd), each fail with their own
// error within the connect timeout, and no other host is touched: every
// host is reached and resolved before any is switched.
func TestSSHExecuteHostDown(t *testing.T) {
	n := testutil.StartNATS(t)
	s := testutil.StartSSHD(t, "127.0.0.2", "127.0.0.3")
	f := newFleet(t, s, "127.0.0.2", "127.0.0.3", "127.0.0.5", "127.0.0.6")
	// 127.0.0.5: nothing listens on the port. 127.0.0.6: a listener that
	// accepts and never sends an SSH banner.
	hole, err := net.Listen("tcp", net.JoinHostPort("127.0.0.6", strconv.Itoa(s.Port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hole.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	kh := otherKnownHosts(t, f.addrs, func(a string) string { return knownhosts.Line([]string{a}, s.HostPublicKey) })
	afterRan := filepath.Join(t.TempDir(), "after-ran")
	e, rec := fleetExecutor(t, n, loadRules(t, f.policy(s, kh, "700ms", f.addrs, "after: "+yamlList("touch", afterRan))))
	before := snapshot(t, f.root)
	start := time.Now()

	res := e.Execute(ctxFor(t), request("rb-ssh-down"))

	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s with a connect timeout of 700ms", d)
	}
	if res.Status != ResultFailed {
		t.Fatalf("result %s, want failed", res.Status)
	}
	assertUnchanged(t, before, f.root)
	if exists(t, afterRan) {
		t.Error("after command ran")
	}
	failed := one(t, rec.all(), audit.RollbackFailed)
	port := strconv.Itoa(s.Port)
	for _, w := range []string{
		"2 of 4 hosts not reached, nothing touched",
		"host 127.0.0.5:" + port + ": connecting to 127.0.0.5:" + port + ": dial tcp 127.0.0.5:" + port + ": connect: connection refused",
		"host 127.0.0.6:" + port + ": SSH handshake with 127.0.0.6:" + port + ": not done within connect_timeout 700ms",
		"links now: on v2: 127.0.0.2:" + port + ", 127.0.0.3:" + port + "; not reached: 127.0.0.5:" + port + ", 127.0.0.6:" + port,
	} {
		if !strings.Contains(failed.Message, w) {
			t.Errorf("rollback.failed %q\ndoes not say %q", failed.Message, w)
		}
	}
	for i, want := range []string{"", "", "connection refused", "connect_timeout 700ms"} {
		got, _ := dig(t, failed.Detail, "hosts", i, "error").(string)
		if (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("hosts[%d].error = %q, want %q", i, got, want)
		}
	}
}

// TestSSHExecuteHostsDisagree: hosts whose previous releases differ (and no
// to_version names one) fail the rollback with each host's resolution and
// nothing switched; naming the version resolves it.
func TestSSHExecuteHostsDisagree(t *testing.T) {
	n := testutil.StartNATS(t)
	s := testutil.StartSSHD(t, fleetHosts...)
	f := newFleet(t, s, fleetHosts...)
	writeFile(t, filepath.Join(f.hosts["127.0.0.3"].rel("v2"), PreviousVersionFile), "v0\n")
	afterRan := filepath.Join(t.TempDir(), "after-ran")
	e, rec := fleetExecutor(t, n, loadRules(t, f.policy(s, s.KnownHosts, "5s", f.addrs, "after: "+yamlList("touch", afterRan))))
	before := snapshot(t, f.root)

	res := e.Execute(ctxFor(t), request("rb-ssh-disagree"))

	if res.Status != ResultFailed {
		t.Fatalf("result %s, want failed", res.Status)
	}
	assertUnchanged(t, before, f.root)
	if exists(t, afterRan) {
		t.Error("after command ran")
	}
	recs := rec.all()
	if got, want := kinds(recs), []string{audit.RollbackRequested, audit.RollbackFailed}; !slices.Equal(got, want) {
		t.Fatalf("audit kinds %v, want %v", got, want)
	}
	msg := recs[1].Message
	for _, w := range []string{
		"hosts disagree on the previous release, no host switched",
		f.addrs[0] + ": v2 -> v1 (previousVersion)",
		f.addrs[1] + ": v2 -> v0 (previousVersion)",
		f.addrs[2] + ": v2 -> v1 (previousVersion)",
		"--to-version",
		"links now: every host on v2",
	} {
		if !strings.Contains(msg, w) {
			t.Errorf("rollback.failed %q\ndoes not say %q", msg, w)
		}
	}
	for i, want := range []string{"v1", "v0", "v1"} {
		if got := dig(t, recs[1].Detail, "hosts", i, "to"); got != f.hosts[fleetHosts[i]].rel(want) {
			t.Errorf("hosts[%d].to = %v, want %s", i, got, want)
		}
	}

	// A request that names the version settles it.
	req := request("rb-ssh-disagree-to")
	req.ToVersion, req.Source = "v1", events.SourceManual
	if res := e.Execute(ctxFor(t), req); res.Status != ResultCompleted {
		t.Fatalf("with to_version: %s, %v", res.Status, res.Err)
	}
	for ip, l := range f.links(t) {
		if l != "releases/v1" {
			t.Errorf("%s: link -> %s", ip, l)
		}
	}
}

// TestSSHExecuteHostileValues: values from events and templates reach the
// remote command as single argv words, and values that must not reach a
// remote shell at all (a version with "/", a host with shell
// metacharacters) fail the rollback before any command runs.
func TestSSHExecuteHostileValues(t *testing.T) {
	n := testutil.StartNATS(t)
	s := testutil.StartSSHD(t, "127.0.0.2", "127.0.0.3")
	sentinel := filepath.Join(t.TempDir(), "pwned")
	hostile := "it's $(touch " + sentinel + "); `touch " + sentinel + "` | touch " + sentinel + "\nnext"

	t.Run("template values arrive literally", func(t *testing.T) {
		f := newFleet(t, s, "127.0.0.2", "127.0.0.3")
		e, rec := fleetExecutor(t, n, loadRules(t, f.policy(s, s.KnownHosts, "5s", f.addrs,
			"after: "+yamlList("printf", `[%s]\n`, "{{ .Labels.note }}", "{{ .Host }}", "{{ .Version }} -> {{ .PreviousVersion }}"))))
		req := request("rb-ssh-hostile-labels")
		req.Labels = map[string]string{"note": hostile}
		if res := e.Execute(ctxFor(t), req); res.Status != ResultCompleted {
			t.Fatalf("result %s, %v", res.Status, res.Err)
		}
		for _, r := range rec.all() {
			if r.Kind != audit.RollbackHost {
				continue
			}
			ip, _, _ := net.SplitHostPort(dig(t, r.Detail, "host").(string))
			want := "[" + hostile + "]\n[" + ip + "]\n[v2 -> v1]\n"
			if got := dig(t, r.Detail, "after_output"); got != want {
				t.Errorf("%s: after printed %q, want %q", ip, got, want)
			}
		}
		if exists(t, sentinel) {
			t.Error("a label was executed by the remote shell")
		}
	})

	for i, tc := range []struct {
		name  string
		req   func(r *events.RollbackRequest)
		hosts func(f fleet) []string
		want  string
	}{
		{
			name: "version with a slash",
			req:  func(r *events.RollbackRequest) { r.Version = "v2/../../../etc" },
			want: "refusing to roll back a release that was not requested",
		},
		{
			name: "to_version with a slash",
			req:  func(r *events.RollbackRequest) { r.ToVersion = "../v1"; r.Source = events.SourceManual },
			want: `version "../v1" is not a release name`,
		},
		{
			name: "to_version with shell syntax and a slash",
			req: func(r *events.RollbackRequest) {
				r.ToVersion = "v1;touch " + sentinel
				r.Source = events.SourceManual
			},
			want: "is not a release name",
		},
		{
			name: "host with shell metacharacters",
			hosts: func(f fleet) []string {
				return []string{f.addrs[0], "127.0.0.3;touch " + sentinel, "$(touch " + sentinel + ")", "-oProxyCommand=touch " + sentinel}
			},
			want: `host "127.0.0.3;touch ` + sentinel + `" is not a host name or an IP address`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t, s, "127.0.0.2", "127.0.0.3")
			hosts := f.addrs
			if tc.hosts != nil {
				hosts = tc.hosts(f)
			}
			e, rec := fleetExecutor(t, n, loadRules(t, f.policy(s, s.KnownHosts, "5s", hosts,
				"after: "+yamlList("touch", sentinel+"-after-{{ .PreviousVersion }}"))))
			req := request(fmt.Sprintf("rb-ssh-hostile-%d", i))
			if tc.req != nil {
				tc.req(&req)
			}
			before := snapshot(t, f.root)
			commands := execSessions(s)

			res := e.Execute(ctxFor(t), req)

			if res.Status != ResultFailed {
				t.Fatalf("result %s, want failed", res.Status)
			}
			if msg := one(t, rec.all(), audit.RollbackFailed).Message; !strings.Contains(msg, tc.want) {
				t.Errorf("rollback.failed %q\ndoes not say %q", msg, tc.want)
			}
			assertUnchanged(t, before, f.root)
			if got := execSessions(s); got != commands {
				t.Errorf("sshd started %d command(s)", got-commands)
			}
			matches, _ := filepath.Glob(sentinel + "*")
			if len(matches) > 0 {
				t.Errorf("hostile value executed: %v", matches)
			}
		})
	}
}

// TestSSHPool covers the pool: one connection per host reused, a dropped
// connection redialled, the bound on open connections, Drop and Close; and
// the ways to log in (identity file, ssh-agent, an encrypted key) and to be
// refused.
func TestSSHPool(t *testing.T) {
	s := testutil.StartSSHD(t, "127.0.0.2", "127.0.0.3")
	cfg := sshConfig(s)
	ctx := ctxFor(t)
	probe := filepath.Join(t.TempDir(), "link")
	symlink(t, "somewhere", probe)
	readsBack := func(t *testing.T, tg Target) {
		t.Helper()
		if got, err := tg.Readlink(probe); err != nil || got != "somewhere" {
			t.Fatalf("Readlink over %s = %q, %v", tg.Name(), got, err)
		}
	}

	t.Run("one connection per host, reused", func(t *testing.T) {
		p := newPool(t)
		a := dialSSHTarget(t, p, s.Addrs[0], cfg)
		b := dialSSHTarget(t, p, s.Addrs[0], cfg)
		c := dialSSHTarget(t, p, s.Addrs[1], cfg)
		if a != b || a == c || p.Open() != 2 {
			t.Errorf("same target %v, other %v, open %d; want one connection per host", a == b, a != c, p.Open())
		}
		readsBack(t, a)
		readsBack(t, c)
	})
	t.Run("host without port takes the policy's port", func(t *testing.T) {
		withPort := cfg
		withPort.Port = s.Port
		tg := dialSSHTarget(t, newPool(t), "127.0.0.2", withPort)
		if tg.Name() != "127.0.0.2" {
			t.Errorf("Name() = %q, want the host as configured", tg.Name())
		}
		readsBack(t, tg)
	})
	t.Run("a dropped connection is redialled", func(t *testing.T) {
		p := newPool(t)
		tg := dialSSHTarget(t, p, s.Addrs[0], cfg)
		old := tg.conn
		_ = old.client.Close() // as if the network dropped it
		<-old.done
		readsBack(t, tg)
		if tg.conn == old || p.Open() != 1 {
			t.Errorf("new connection %v, open %d", tg.conn != old, p.Open())
		}
		// Dial does not hand out a connection known to be closed.
		tg.conn.client.Close()
		<-tg.conn.done
		if again := dialSSHTarget(t, p, s.Addrs[0], cfg); again != tg || tg.conn.closed() {
			t.Error("Dial handed out a closed connection")
		}
	})
	t.Run("a connection that stopped answering is probed and redialled", func(t *testing.T) {
		// Through a proxy that can stop forwarding on the connections it
		// has, as a network that drops packets would, while new ones work.
		px := newFreezingProxy(t, "127.0.0.7", s.Addrs[0])
		c := cfg
		c.KnownHosts = otherKnownHosts(t, []string{px.addr}, func(a string) string { return knownhosts.Line([]string{a}, s.HostPublicKey) })
		c.ConnectTimeout = model.Duration(500 * time.Millisecond)
		p := newPool(t)
		tg := dialSSHTarget(t, p, px.addr, c)
		old := tg.conn
		px.freeze()
		p.mu.Lock()
		tg.lastUse = time.Now().Add(-time.Minute) // idle long enough to be checked
		p.mu.Unlock()
		start := time.Now()
		again := dialSSHTarget(t, p, px.addr, c)
		// The keepalive goes out with the first request, which waits for
		// it: no answer, so the connection is closed and the request
		// tried again on a new one.
		readsBack(t, again)
		if again != tg || tg.conn == old || !old.closed() || p.Open() != 1 {
			t.Errorf("after a failed keepalive: same target %v, new connection %v, old closed %v, open %d",
				again == tg, tg.conn != old, old.closed(), p.Open())
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %s with a connect timeout of 500ms", d)
		}
	})
	t.Run("a connection that stops answering during an operation", func(t *testing.T) {
		px := newFreezingProxy(t, "127.0.0.7", s.Addrs[0])
		c := cfg
		c.KnownHosts = otherKnownHosts(t, []string{px.addr}, func(a string) string { return knownhosts.Line([]string{a}, s.HostPublicKey) })
		c.ConnectTimeout = model.Duration(500 * time.Millisecond)
		c.CommandTimeout = model.Duration(500 * time.Millisecond)
		tg := dialSSHTarget(t, newPool(t), px.addr, c)

		// A read is given up after command_timeout and tried once more,
		// on a new connection.
		px.freeze()
		start := time.Now()
		readsBack(t, tg)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("read took %s", d)
		}

		// A change is not retried: it may have happened. The error says
		// the connection was lost, and the next operation redials.
		px.freeze()
		newLink := filepath.Join(filepath.Dir(probe), "new-link")
		err := tg.Symlink("somewhere", newLink)
		if !errors.Is(err, ErrConnectionLost) || !strings.Contains(err.Error(), "no answer within command_timeout 500ms") {
			t.Errorf("Symlink on a silent connection: %v", err)
		}
		readsBack(t, tg)
	})
	t.Run("bounded: the least recently used idle connection makes room", func(t *testing.T) {
		p := NewSSHPool(1)
		t.Cleanup(func() { _ = p.Close() })
		a := dialSSHTarget(t, p, s.Addrs[0], cfg)
		b := dialSSHTarget(t, p, s.Addrs[1], cfg)
		if p.Open() != 1 || a.conn != nil {
			t.Errorf("open %d, first connection still open: %v", p.Open(), a.conn != nil)
		}
		readsBack(t, a) // redials, closing b's
		if p.Open() != 1 || b.conn != nil {
			t.Errorf("open %d", p.Open())
		}
	})
	t.Run("Drop and Close", func(t *testing.T) {
		p := NewSSHPool(0)
		tg := dialSSHTarget(t, p, s.Addrs[0], cfg)
		p.Drop(s.Addrs[0], cfg)
		if p.Open() != 0 {
			t.Errorf("open %d after Drop", p.Open())
		}
		readsBack(t, tg)
		_ = p.Close()
		if p.Open() != 0 {
			t.Errorf("open %d after Close", p.Open())
		}
		if _, err := p.Dial(ctx, s.Addrs[0], cfg); !errors.Is(err, ErrPoolClosed) {
			t.Errorf("Dial after Close: %v", err)
		}
		if _, err := tg.Readlink(probe); !errors.Is(err, ErrPoolClosed) {
			t.Errorf("Readlink after Close: %v", err)
		}
	})

	clientKey, err := os.ReadFile(s.IdentityFile)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ssh.ParseRawPrivateKey(clientKey)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKeyWithPassphrase(raw, "test", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	encrypted := filepath.Join(t.TempDir(), "id_encrypted")
	writeFile(t, encrypted, string(pem.EncodeToMemory(block)))

	t.Run("encrypted identity file without an agent", func(t *testing.T) {
		t.Setenv("SSH_AUTH_SOCK", "")
		c := cfg
		c.IdentityFile = encrypted
		_, err := newPool(t).Dial(ctx, s.Addrs[0], c)
		if !errors.Is(err, ErrEncryptedKey) || !strings.Contains(err.Error(), "ssh-add "+encrypted) || !strings.Contains(err.Error(), "SSH_AUTH_SOCK") {
			t.Errorf("err = %v, want one saying to load the key into an ssh-agent", err)
		}
	})
	t.Run("ssh-agent", func(t *testing.T) {
		keyring := agent.NewKeyring()
		if err := keyring.Add(agent.AddedKey{PrivateKey: raw}); err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(t.TempDir(), "agent.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { _ = agent.ServeAgent(keyring, c); c.Close() }()
			}
		}()
		t.Setenv("SSH_AUTH_SOCK", sock)
		for _, identity := range []string{"", encrypted} {
			c := cfg
			c.IdentityFile = identity
			readsBack(t, dialSSHTarget(t, newPool(t), s.Addrs[0], c))
		}
	})
	t.Run("key not authorized", func(t *testing.T) {
		t.Setenv("SSH_AUTH_SOCK", "")
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		_ = pub
		block, err := ssh.MarshalPrivateKey(priv, "")
		if err != nil {
			t.Fatal(err)
		}
		c := cfg
		c.IdentityFile = filepath.Join(t.TempDir(), "id_other")
		writeFile(t, c.IdentityFile, string(pem.EncodeToMemory(block)))
		_, err = newPool(t).Dial(ctx, s.Addrs[0], c)
		if err == nil || !strings.Contains(err.Error(), "logging in as "+s.User+" to "+s.Addrs[0]) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("known_hosts missing", func(t *testing.T) {
		c := cfg
		c.KnownHosts = filepath.Join(t.TempDir(), "none")
		_, err := newPool(t).Dial(ctx, s.Addrs[0], c)
		if !errors.Is(err, ErrHostKey) || !strings.Contains(err.Error(), "ssh-keyscan -p "+strconv.Itoa(s.Port)+" 127.0.0.2 >> "+c.KnownHosts) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("bad hosts", func(t *testing.T) {
		for _, h := range []string{"web1;id", "$(id)", "-oProxyCommand=id", "web1 web2", "web1:0", "web1:99999", "web1:ssh", "a..b", ""} {
			if _, err := newPool(t).Dial(ctx, h, cfg); err == nil {
				t.Errorf("Dial(%q) succeeded", h)
			}
		}
	})
}

// freezingProxy forwards TCP connections from addr to a backend until
// freeze, after which the connections it has carry nothing (without being
// closed) while new ones are forwarded.
type freezingProxy struct {
	addr   string
	mu     sync.Mutex
	gen    int
	frozen map[int]bool
}

func newFreezingProxy(t *testing.T, ip, backend string) *freezingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	px := &freezingProxy{addr: ln.Addr().String(), frozen: map[int]bool{}}
	var conns []net.Conn
	var connsMu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		connsMu.Lock()
		defer connsMu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			connsMu.Lock()
			conns = append(conns, c, b)
			connsMu.Unlock()
			px.mu.Lock()
			gen := px.gen
			px.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if err != nil {
						return
					}
					px.mu.Lock()
					frozen := px.frozen[gen]
					px.mu.Unlock()
					if frozen {
						continue // dropped on the floor
					}
					if _, err := dst.Write(buf[:n]); err != nil {
						return
					}
				}
			}
			go pipe(b, c)
			go pipe(c, b)
		}
	}()
	return px
}

func (px *freezingProxy) freeze() {
	px.mu.Lock()
	defer px.mu.Unlock()
	px.frozen[px.gen] = true
	px.gen++
}

// TestSSHExecuteDataStepOrder runs the data step where run_on says (the
// watcher's machine, the first host, every host) and when order says
// (before or after the code switch), with the after command on each host:
// each command logs what the host's link named when it ran.
func TestSSHExecuteDataStepOrder(t *testing.T) {
	n := testutil.StartNATS(t)
	s := testutil.StartSSHD(t, fleetHosts...)
	for _, tc := range []struct {
		runOn, order string
		wantData     []string // "<where> <release the host's link named>"
	}{
		{"all", "before_code", []string{"127.0.0.2 v2", "127.0.0.3 v2", "127.0.0.4 v2"}},
		{"first", "after_code", []string{"127.0.0.2 v1"}},
		{"local", "before_code", []string{"local -"}},
	} {
		t.Run(tc.runOn+"/"+tc.order, func(t *testing.T) {
			f := newFleet(t, s, fleetHosts...)
			logFile := filepath.Join(f.root, "steps.log")
			// A host sees its own link; the watcher's machine has none.
			data := yamlList("sh", "-c", `l=$(readlink "$0" 2>/dev/null | sed 's|.*/||'); echo "data $1 ${l:--}" >> "$2"`,
				filepath.Join(f.root, "{{ .Host }}", "current"), "{{ .Host }}", logFile)
			after := yamlList("sh", "-c", `echo "after $0" >> "$1"`, "{{ .Host }}", logFile)
			rules := loadRules(t, f.policy(s, s.KnownHosts, "5s", f.addrs,
				"after: "+after,
				"data: {command: "+data+", run_on: "+tc.runOn+", order: "+tc.order+", timeout: 20s}"))
			e, _ := fleetExecutor(t, n, rules)
			res := e.Execute(ctxFor(t), request("rb-data-"+tc.runOn))
			if res.Status != ResultCompleted {
				t.Fatalf("result %s: %v", res.Status, res.Err)
			}
			lines := strings.Split(strings.TrimSpace(readFile(t, logFile)), "\n")
			var dataLines, afterLines []string
			firstAfter, lastData := len(lines), -1
			for i, l := range lines {
				switch {
				case strings.HasPrefix(l, "data "):
					dataLines = append(dataLines, strings.TrimPrefix(l, "data "))
					lastData = i
				case strings.HasPrefix(l, "after "):
					afterLines = append(afterLines, l)
					firstAfter = min(firstAfter, i)
				}
			}
			slices.Sort(dataLines)
			if !slices.Equal(dataLines, tc.wantData) {
				t.Errorf("data step ran as %v, want %v (log:\n%s)", dataLines, tc.wantData, strings.Join(lines, "\n"))
			}
			if len(afterLines) != len(fleetHosts) {
				t.Errorf("after ran %d times, want once per host: %v", len(afterLines), afterLines)
			}
			if tc.order == "before_code" && lastData > firstAfter {
				t.Errorf("before_code data step ran after an after command:\n%s", strings.Join(lines, "\n"))
			}
			if tc.order == "after_code" && lastData < firstAfter {
				t.Errorf("after_code data step ran before the code switch finished:\n%s", strings.Join(lines, "\n"))
			}
		})
	}
}
