package rollback

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// cutProxy forwards TCP connections to a real sshd and cuts the first one
// after a given number of bytes (both directions counted together), the
// way a network fault or a restarted middlebox drops a connection at an
// arbitrary point of a rollback. Later connections pass untouched, so a
// redial gets through.
type cutProxy struct {
	ln     net.Listener
	target string
	cutAt  int64 // 0: never cut

	mu     sync.Mutex
	conns  int
	first  atomic.Int64 // bytes through the first connection so far
	cut    atomic.Bool
	closed []net.Conn
}

func startCutProxy(t *testing.T, listenIP, target string, cutAt int64) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(listenIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, cutAt: cutAt}
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.closed {
			_ = c.Close()
		}
	})
	go p.serve()
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

// cutNow drops every connection open through the proxy, as a network
// fault would.
func (p *cutProxy) cutNow() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.closed {
		_ = c.Close()
	}
	p.cut.Store(true)
}

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns++
		first := p.conns == 1
		p.mu.Unlock()
		go p.forward(c, first)
	}
}

func (p *cutProxy) forward(c net.Conn, first bool) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	p.closed = append(p.closed, c, s)
	p.mu.Unlock()
	var once sync.Once
	stop := func() { once.Do(func() { _ = c.Close(); _ = s.Close() }) }
	pipe := func(dst, src net.Conn) {
		defer stop()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 && first {
				total := p.first.Add(int64(n))
				if p.cutAt > 0 && total >= p.cutAt {
					// Pass what fits under the budget, then drop both
					// sides: a connection lost mid-request.
					keep := int64(n) - (total - p.cutAt)
					if keep > 0 {
						_, _ = dst.Write(buf[:keep])
					}
					p.cut.Store(true)
					return
				}
			}
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go pipe(s, c)
	pipe(c, s)
}

// cutFleet is two hosts on one real sshd, each reached through its own
// proxy; host A's proxy cuts its first connection at cutAt bytes.
type cutFleet struct {
	fleet
	proxies    []*cutProxy
	knownHosts string
	afterLog   func(ip string) string
}

var cutHosts = []string{"127.0.0.2", "127.0.0.3"}

func newCutFleet(t *testing.T, s *testutil.SSHD, cutAt int64) cutFleet {
	t.Helper()
	f := cutFleet{fleet: newFleet(t, s, cutHosts...)}
	f.addrs = nil
	var kh strings.Builder
	for i, ip := range cutHosts {
		at := int64(0)
		if i == 0 {
			at = cutAt
		}
		p := startCutProxy(t, ip, s.Addrs[i], at)
		f.proxies = append(f.proxies, p)
		f.addrs = append(f.addrs, p.addr())
		fmt.Fprintln(&kh, knownhosts.Line([]string{p.addr()}, s.HostPublicKey))
	}
	f.knownHosts = filepath.Join(t.TempDir(), "known_hosts")
	writeFile(t, f.knownHosts, kh.String())
	f.afterLog = func(ip string) string { return filepath.Join(f.root, ip, "after.log") }
	return f
}

// runCut rolls the cut fleet back with an after command that appends a
// line to the host's after.log, and returns the result and the audit.
func runCut(t *testing.T, n *testutil.NATS, s *testutil.SSHD, f cutFleet) (Result, []audit.Record) {
	t.Helper()
	rules := loadRules(t, f.policy(s, f.knownHosts, "2s", f.addrs,
		"after: "+yamlList("sh", "-c", `echo ran >> "$0"`, filepath.Join(f.root, "{{ .Host }}", "after.log"))))
	e, rec := fleetExecutor(t, n, rules)
	e.RetryBackoff = 100 * time.Millisecond
	if os.Getenv("CUT_DEBUG") != "" {
		e.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	res := e.Execute(ctxFor(t), request(fmt.Sprintf("rb-cut-%d", f.proxies[0].cutAt)))
	return res, rec.all()
}

// TestExecuteConvergesAcrossCutConnections cuts host A's SSH connection at
// byte offsets spread over a whole rollback (handshake, plan, symlink,
// rename, marker, after command): whatever the offset, the rollback
// converges: both hosts end on v1, v2 is marked on both, the after command
// ran exactly once on each, no temporary link is left behind, and the
// result is rollback.completed.
func TestExecuteConvergesAcrossCutConnections(t *testing.T) {
	n := testutil.StartNATS(t)
	s := testutil.StartSSHD(t, cutHosts...)

	// An uncut rollback measures how many bytes host A's connection carries.
	clean := newCutFleet(t, s, 0)
	res, recs := runCut(t, n, s, clean)
	if res.Status != ResultCompleted {
		t.Fatalf("uncut rollback: %s %v; %v", res.Status, res.Err, kinds(recs))
	}
	total := clean.proxies[0].first.Load()
	if total < 2000 {
		t.Fatalf("host A's connection carried %d bytes; expected a whole SSH session", total)
	}

	const cuts = 16
	for i := 1; i <= cuts; i++ {
		at := total * int64(i) / (cuts + 1)
		t.Run(fmt.Sprintf("cut-at-%d-of-%d", at, total), func(t *testing.T) {
			f := newCutFleet(t, s, at)
			res, recs := runCut(t, n, s, f)
			if !f.proxies[0].cut.Load() {
				t.Fatalf("the proxy never cut the connection at %d bytes", at)
			}
			if res.Status != ResultCompleted {
				t.Fatalf("result %s: %v\naudit: %v", res.Status, res.Err, messages(recs))
			}
			for ip, l := range f.links(t) {
				if l != "releases/v1" {
					t.Errorf("%s: link -> %s, want releases/v1", ip, l)
				}
				h := f.hosts[ip]
				if m := readMarker(t, h.rel("v2")); m.To != h.rel("v1") {
					t.Errorf("%s: marker %+v", ip, m)
				}
				if got := readFile(t, f.afterLog(ip)); got != "ran\n" {
					t.Errorf("%s: after ran %d times, want once", ip, strings.Count(got, "ran"))
				}
				// The marker's temporary file is made in the release
				// switched to (switchAndMark), the link's next to it.
				assertNoTemps(t, filepath.Join(f.root, ip), h.rel("v1"), h.rel("v2"))
			}
			one(t, recs, audit.RollbackCompleted)
		})
	}
}

func messages(recs []audit.Record) string {
	var b strings.Builder
	for _, r := range recs {
		fmt.Fprintf(&b, "\n  %s: %s", r.Kind, r.Message)
	}
	return b.String()
}

// TestExecuteFinishesASwitchACrashCutShort: the executor died between the
// switch and the marker. The redelivered request finds the link on the
// release the request rolls back to and the release it rolls back from
// unmarked: the switch is done, so it writes the marker, runs the after
// command and completes, rather than failing for good because the link is
// not on the release the request rolls back. A link on some other release
// is still refused.
func TestExecuteFinishesASwitchACrashCutShort(t *testing.T) {
	for _, tc := range []struct {
		name       string
		toVersion  string // the request's to_version ("" : previousVersion decides)
		linkOn     string
		noPrevFile bool
		want       string // "" : completed
	}{
		{name: "previousVersion names where the link is", linkOn: "v1"},
		{name: "the request names where the link is", toVersion: "v1", linkOn: "v1"},
		{name: "the link is on another release", linkOn: "v0", want: "refusing to roll back a release that was not requested"},
		// No previousVersion file and no to_version: the newest other
		// release decides, and counts only when it is older than the
		// release rolled back (a rollback goes back in time).
		{name: "newest other release, older", linkOn: "v1", noPrevFile: true},
		{name: "newest other release is a newer deploy", linkOn: "v3", noPrevFile: true, want: "refusing to roll back a release that was not requested"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := deployed(t)
			if tc.noPrevFile {
				if err := os.Remove(filepath.Join(h.rel("v2"), PreviousVersionFile)); err != nil {
					t.Fatal(err)
				}
				touch(t, h.rel("v2"), t0)
			}
			if tc.linkOn == "v3" {
				h.release(t, "v3", time.Hour) // a deploy after v2
			}
			if err := os.Remove(h.link); err != nil {
				t.Fatal(err)
			}
			symlink(t, "releases/"+tc.linkOn, h.link) // the switch made before the crash
			runs := filepath.Join(t.TempDir(), "after-runs")
			rules := loadRules(t, policyYAML("shop", "shop", h, "after: "+yamlList("sh", "-c", `echo ran >> "$0"`, runs)))
			rec := &recorder{}
			e := &Executor{Policies: rules, Audit: rec, AnnounceSource: "test"}
			req := request("rb-crashed")
			req.ToVersion = tc.toVersion

			res := e.Execute(ctxFor(t), req)

			if tc.want != "" {
				if res.Status != ResultFailed || !strings.Contains(res.Err.Error(), tc.want) {
					t.Fatalf("result %s %v, want refused: %s", res.Status, res.Err, tc.want)
				}
				if exists(t, filepath.Join(h.rel("v2"), MarkerFile)) || exists(t, runs) {
					t.Error("a refused request marked v2 or ran the after command")
				}
				return
			}
			if res.Status != ResultCompleted {
				t.Fatalf("result %s: %v", res.Status, res.Err)
			}
			if got := readlink(t, h.link); got != "releases/v1" {
				t.Errorf("link -> %s", got)
			}
			if m := readMarker(t, h.rel("v2")); m.RequestID != req.ID || m.To != h.rel("v1") {
				t.Errorf("marker %+v", m)
			}
			if got := readFile(t, runs); got != "ran\n" {
				t.Errorf("after ran %q, want once", got)
			}
			host := one(t, rec.all(), audit.RollbackHost)
			if !strings.Contains(host.Message, "finished the rollback: marked v2 rolled back, ran the after command") {
				t.Errorf("rollback.host %q does not say what was finished", host.Message)
			}
			// Delivered once more: everything is done; nothing runs again.
			if res := e.Execute(ctxFor(t), req); res.Status != ResultCompleted {
				t.Fatalf("again: %s %v", res.Status, res.Err)
			}
			if got := readFile(t, runs); got != "ran\n" {
				t.Errorf("after ran %q after a second delivery, want once", got)
			}
		})
	}
}

// TestExecuteCutAfterCommandIsStoppedBeforeItRunsAgain: the
// connection drops while the after command runs on the host. The command
// outlives the connection, so the retry first stops it (its process group,
// from a new connection), then runs it again, since it did not get to its
// end: the after command completes once, and two never run at once.
func TestExecuteCutAfterCommandIsStoppedBeforeItRunsAgain(t *testing.T) {
	n := testutil.StartNATS(t)
	s := testutil.StartSSHD(t, cutHosts...)
	f := newCutFleet(t, s, 0)
	dir := t.TempDir()
	started, log, release := filepath.Join(dir, "started"), filepath.Join(dir, "ran"), filepath.Join(dir, "release")
	// The command waits for release, which the test writes only once the
	// second copy has started: the cut always falls while the first runs,
	// however slow the machine, and a first copy left running would finish
	// too.
	rules := loadRules(t, f.policy(s, f.knownHosts, "2s", f.addrs[:1],
		"after: "+yamlList("sh", "-c", `echo x >> "$0"; while [ ! -e "$2" ]; do sleep 0.05; done; echo ran >> "$1"`, started, log, release)))
	e, rec := fleetExecutor(t, n, rules)
	e.RetryBackoff = 100 * time.Millisecond
	go func() {
		testutil.Eventually(t, 10*time.Second, "the after command to start", func() bool { return exists(t, started) })
		f.proxies[0].cutNow()
		testutil.Eventually(t, 10*time.Second, "the after command to start again", func() bool {
			b, err := os.ReadFile(started)
			return err == nil && strings.Count(string(b), "x") >= 2
		})
		writeFile(t, release, "")
	}()

	res := e.Execute(ctxFor(t), request("rb-cut-after"))

	if res.Status != ResultCompleted {
		t.Fatalf("result %s: %v\naudit: %v", res.Status, res.Err, messages(rec.all()))
	}
	if !f.proxies[0].cut.Load() {
		t.Fatal("the connection was never cut")
	}
	time.Sleep(500 * time.Millisecond) // long enough for a first copy left running to see release and finish
	if got := readFile(t, started); got != "x\nx\n" {
		t.Errorf("the after command started %d times, want twice (cut, then again)", strings.Count(got, "x"))
	}
	if got := readFile(t, log); got != "ran\n" {
		t.Errorf("the after command finished %d times, want once: the copy cut off was not stopped", strings.Count(got, "ran"))
	}
}

// TestRetryable: which failures are worth another attempt on a host.
func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		name        string
		err         error
		retry, plan bool
	}{
		{"connection lost", fmt.Errorf("write x: %w", ErrConnectionLost), true, true},
		{"handshake cut", transient{errors.New("SSH handshake: EOF")}, true, true},
		{"refused", unreachable{fmt.Errorf("connecting: %w", syscall.ECONNREFUSED)}, true, false},
		{"no answer", unreachable{errors.New("connecting to x: no answer within connect_timeout 1s")}, true, false},
		{"after killed at command_timeout", fmt.Errorf("run x: killed after command_timeout 1m: %w", context.DeadlineExceeded), false, false},
		{"host key", &HostKeyError{Err: errors.New("key mismatch")}, false, false},
		{"link moved", newError(ErrLinkMoved, nil, "moved"), false, false},
		{"permission", fmt.Errorf("open: %w", fs.ErrPermission), false, false},
		{"no previous", newError(ErrNoPrevious, nil, "none"), false, false},
		{"cancelled", context.Canceled, false, false},
	} {
		if got := Retryable(tc.err); got != tc.retry {
			t.Errorf("%s: Retryable = %v, want %v", tc.name, got, tc.retry)
		}
		if got := retryablePlan(tc.err); got != tc.plan {
			t.Errorf("%s: retryablePlan = %v, want %v", tc.name, got, tc.plan)
		}
	}
}

// flakyMarker fails the first read of a ROLLED_BACK marker as a dropped
// connection would.
type flakyMarker struct {
	Target
	failed atomic.Bool
}

func (f *flakyMarker) ReadFile(name string) ([]byte, error) {
	if filepath.Base(name) == MarkerFile && !f.failed.Swap(true) {
		return nil, fmt.Errorf("open %s: %w", name, ErrConnectionLost)
	}
	return f.Target.ReadFile(name)
}

// TestExecuteMarkerReadFailureIsNotAnotherRequests: a redelivered request
// whose after command never got to its end reads its own marker; when that
// read fails, the marker must not pass for another request's (which would
// leave the after command never run): the read is tried again.
func TestExecuteMarkerReadFailureIsNotAnotherRequests(t *testing.T) {
	h := deployed(t)
	if err := os.Remove(h.link); err != nil {
		t.Fatal(err)
	}
	symlink(t, "releases/v1", h.link)
	req := request("rb-marker-read")
	if err := MarkRolledBack(Local{}, h.rel("v2"), Marker{RequestID: req.ID, Reason: "x", From: h.rel("v2"), To: h.rel("v1")}); err != nil {
		t.Fatal(err)
	}
	runs := filepath.Join(t.TempDir(), "after-runs")
	rules := loadRules(t, policyYAML("shop", "shop", h, `hosts: ["web1"]`, "after: "+yamlList("sh", "-c", `echo ran >> "$0"`, runs)))
	rec := &recorder{}
	flaky := &flakyMarker{Target: named{name: "web1"}}
	e := &Executor{Policies: rules, Audit: rec, AnnounceSource: "test", RetryBackoff: time.Millisecond,
		Dial: func(context.Context, string, policy.SSH) (Target, error) { return flaky, nil }}

	res := e.Execute(ctxFor(t), req)

	if res.Status != ResultCompleted {
		t.Fatalf("result %s: %v", res.Status, res.Err)
	}
	if !flaky.failed.Load() {
		t.Fatal("the marker read never failed")
	}
	if got := readFile(t, runs); got != "ran\n" {
		t.Errorf("after ran %q, want once: a marker that could not be read passed for another request's", got)
	}
}
