package rollback

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/sshkit"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// flightRTT is the round trip time the flight tests' proxy adds: well
// above the time between the writes of one flight, so that the count is
// exact, and small enough to keep the tests quick.
const flightRTT = 4 * time.Millisecond

// flightHost is one host on a real sshd, reached through a proxy that adds
// a round trip time and counts the flights (sshkit.Proxy): what a host
// across a network costs, in round trips, whatever the machine's speed.
type flightHost struct {
	s   *testutil.SSHD
	px  *sshkit.Proxy
	cfg policy.SSH
	kh  string
}

func startFlightHost(t *testing.T) flightHost {
	t.Helper()
	s := testutil.StartSSHD(t, "127.0.0.2")
	px, err := sshkit.StartProxy("127.0.0.2:0", s.Addrs[0], flightRTT)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = px.Close() })
	kh := otherKnownHosts(t, []string{px.Addr}, func(a string) string { return knownhosts.Line([]string{a}, s.HostPublicKey) })
	cfg := sshConfig(s)
	cfg.KnownHosts = kh
	return flightHost{s: s, px: px, cfg: cfg, kh: kh}
}

// handshakeFlights is what opening a connection costs, in flights: the TCP
// handshake, the SSH key exchange and login, the session channel and the
// SFTP session.
func (fh flightHost) handshakeFlights(t *testing.T) int64 {
	t.Helper()
	fh.px.Reset()
	dialSSHTarget(t, newPool(t), fh.px.Addr, fh.cfg)
	return fh.px.Flights()
}

// maxHandshakeFlights pins what x/crypto/ssh and OpenSSH take to open an
// SFTP session: TCP (1), versions (1), key exchange (2), the ssh-userauth
// service (1), the "none" method and the public key offered then signed
// (3), the session channel (1), the sftp subsystem (1), SFTP's version
// exchange (1).
const maxHandshakeFlights = 11

func TestHandshakeFlights(t *testing.T) {
	fh := startFlightHost(t)
	n := fh.handshakeFlights(t)
	t.Logf("opening a connection: %d flights", n)
	if n > maxHandshakeFlights {
		t.Errorf("opening an SFTP session takes %d round trips, want at most %d", n, maxHandshakeFlights)
	}
}

// TestExecuteRoundTrips pins what a rollback of one host costs over SSH in
// round trips (flights), which is what a fleet far away waits for: reading
// the plan (the link, previousVersion, what the two releases are) in two
// flights, the switch and the marker in two; one flight fewer when the
// request names the release to go back to. A cold rollback pays the
// handshake on top. A change that adds a round trip fails here before it
// shows in the benchmark (BENCHMARKS.md).
func TestExecuteRoundTrips(t *testing.T) {
	fh := startFlightHost(t)
	handshake := fh.handshakeFlights(t)
	tests := []struct {
		name      string
		layout    func(t *testing.T, h host)
		toVersion string
		cold      bool
		idle      bool // the warm connection was idle long enough to be checked
		max       int64
	}{
		{name: "previousVersion file, relative link", max: 4},
		{name: "idle connection: its keepalive goes with the first flight", idle: true, max: 4},
		{name: "the request names the release", toVersion: "v1", max: 3},
		{name: "cold: previousVersion file, relative link", cold: true, max: 4},
		{name: "cold: the request names the release", toVersion: "v1", cold: true, max: 3},
		{name: "previous release is a symlink", max: 8, layout: func(t *testing.T, h host) {
			// A release kept in a store and linked in: telling it from the
			// current release, and that it is inside the releases
			// directory, takes a walk of the paths from "/".
			store := h.rel(".store")
			mkdir(t, store)
			if err := os.Rename(h.rel("v1"), filepath.Join(store, "v1")); err != nil {
				t.Fatal(err)
			}
			symlink(t, filepath.Join(store, "v1"), h.rel("v1"))
		}},
		{name: "no previousVersion: the newest release", max: 6, layout: func(t *testing.T, h host) {
			if err := os.Remove(filepath.Join(h.rel("v2"), PreviousVersionFile)); err != nil {
				t.Fatal(err)
			}
			touch(t, h.rel("v2"), t0)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t, fh.s, "127.0.0.2")
			h := f.hosts["127.0.0.2"]
			if tc.layout != nil {
				tc.layout(t, h)
			}
			pool := newPool(t)
			if !tc.cold {
				tg := dialSSHTarget(t, pool, fh.px.Addr, fh.cfg)
				if tc.idle {
					pool.mu.Lock()
					tg.lastUse = time.Now().Add(-time.Minute)
					pool.mu.Unlock()
				}
			}
			rules := loadRules(t, f.policy(fh.s, fh.kh, "5s", []string{fh.px.Addr}))
			e := &Executor{Policies: rules, Audit: &recorder{}, AnnounceSource: "test", Dial: pool.Dial}
			req := request("rb-flights")
			req.ToVersion = tc.toVersion
			fh.px.Reset()
			requests := pool.SFTPRequests()

			res := e.Execute(ctxFor(t), req)

			n := fh.px.Flights()
			requests = pool.SFTPRequests() - requests
			assertRolledBack(t, res, h)
			if tc.cold {
				n -= handshake
				t.Logf("%d flights after the handshake's %d, %d SFTP requests", n, handshake, requests)
			} else {
				t.Logf("%d flights, %d SFTP requests", n, requests)
			}
			if n > tc.max {
				t.Errorf("one host's rollback takes %d round trips, want at most %d", n, tc.max)
			}
		})
	}
}

// TestSwitchFromMoved: a link that no longer names the release the switch
// was planned from is left alone.
func TestSwitchFromMoved(t *testing.T) {
	h := deployed(t)
	mkdir(t, h.rel("v3"))
	before := snapshot(t, h.root)

	from, err := SwitchFrom(Local{}, h.link, h.rel("v3"), h.rel("v1"))

	if !errors.Is(err, ErrLinkMoved) {
		t.Fatalf("SwitchFrom = %v, want ErrLinkMoved", err)
	}
	if from != h.rel("v2") {
		t.Errorf("from = %s, want %s", from, h.rel("v2"))
	}
	for _, want := range []string{"names " + h.rel("v2") + " now, not " + h.rel("v3"), "nothing changed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	assertUnchanged(t, before, h.root)

	// Planned from where it stands: switched.
	if _, err := SwitchFrom(Local{}, h.link, h.rel("v2"), h.rel("v1")); err != nil {
		t.Fatal(err)
	}
	if got := readlink(t, h.link); got != "releases/v1" {
		t.Errorf("link -> %s, want releases/v1", got)
	}
}

// TestExecuteLinkMovedAfterPlan: a deploy that lands between planning and
// switching (here run by a before_code data step) is not undone: the host
// keeps the new release and the rollback fails saying why.
func TestExecuteLinkMovedAfterPlan(t *testing.T) {
	n := testutil.StartNATS(t)
	h := deployed(t)
	mkdir(t, h.rel("v3"))
	rules := loadRules(t, policyYAML("shop", "shop", h,
		"data: {command: "+yamlList("ln", "-sfn", "releases/v3", h.link)+", run_on: local, order: before_code, timeout: 30s}"))
	e, rec, _ := newExecutor(t, n, rules)

	res := e.Execute(ctxFor(t), request("rb-moved"))

	if res.Status != ResultFailed {
		t.Fatalf("result %s, want %s", res.Status, ResultFailed)
	}
	if got := readlink(t, h.link); got != "releases/v3" {
		t.Errorf("link -> %s, want releases/v3 (the deploy that came in between)", got)
	}
	if exists(t, h.rel("v2")+"/"+MarkerFile) {
		t.Error("v2 marked rolled back although the host never left it through this rollback")
	}
	host := one(t, rec.all(), audit.RollbackHost)
	if msg := host.Message; !strings.Contains(msg, "not "+h.rel("v2")+" as it did when the rollback was planned") {
		t.Errorf("rollback.host %q does not say the link moved", msg)
	}
	if sw, _ := host.Detail["switched"].(bool); sw {
		t.Error("rollback.host says switched")
	}
	failed := one(t, rec.all(), audit.RollbackFailed)
	if !strings.Contains(failed.Message, "v3") {
		t.Errorf("rollback.failed %q does not say where the link stands", failed.Message)
	}
}

// TestExecuteRoundTripsUnknownServer: an SFTP server that is not known to
// handle a session's requests in order gets them one at a time, each after
// the previous answer: the rollback is the same, in a round trip per
// request.
func TestExecuteRoundTripsUnknownServer(t *testing.T) {
	for banner, want := range map[string]bool{
		"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3": true,
		"SSH-2.0-OpenSSH_for_Windows_9.5":        true,
		"SSH-2.0-dropbear_2022.83":               false,
		"SSH-2.0-Go":                             false,
		"SSH-2.0-openssh":                        false,
	} {
		if got := inOrderServer(banner); got != want {
			t.Errorf("inOrderServer(%q) = %v, want %v", banner, got, want)
		}
	}

	fh := startFlightHost(t)
	sftpInOrder = func(string) bool { return false }
	t.Cleanup(func() { sftpInOrder = inOrderServer })
	f := newFleet(t, fh.s, "127.0.0.2")
	h := f.hosts["127.0.0.2"]
	pool := newPool(t)
	dialSSHTarget(t, pool, fh.px.Addr, fh.cfg)
	rules := loadRules(t, f.policy(fh.s, fh.kh, "5s", []string{fh.px.Addr}))
	e := &Executor{Policies: rules, Audit: &recorder{}, AnnounceSource: "test", Dial: pool.Dial}
	fh.px.Reset()
	requests := pool.SFTPRequests()

	res := e.Execute(ctxFor(t), request("rb-serial"))

	n, requests := fh.px.Flights(), pool.SFTPRequests()-requests
	assertRolledBack(t, res, h)
	t.Logf("%d flights, %d SFTP requests", n, requests)
	if n < requests {
		t.Errorf("%d round trips for %d SFTP requests: requests went out together to a server not known to keep their order", n, requests)
	}
}

// assertRolledBack fails t unless res completed with h on v1 and v2 marked.
func assertRolledBack(t *testing.T, res Result, h host) {
	t.Helper()
	if res.Status != ResultCompleted {
		t.Fatalf("result %s: %v", res.Status, res.Err)
	}
	if got := readlink(t, h.link); got != "releases/v1" {
		t.Fatalf("link -> %s, want releases/v1", got)
	}
	if m := readMarker(t, h.rel("v2")); m.To != h.rel("v1") {
		t.Errorf("marker %+v", m)
	}
}
