package rollback

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestSSHKnownHostsOnce: a fleet's known_hosts has a line per host, and
// every connection keeps its host key callback. Parsed once for all
// connections, it costs each connection nothing; parsed a dial, about 330
// bytes a line a connection (330 KiB with 1000 hosts).
func TestSSHKnownHostsOnce(t *testing.T) {
	s := testutil.StartSSHD(t, "127.0.0.2")
	cfg := sshConfig(s)
	var b strings.Builder
	for i := range 1000 {
		fmt.Fprintln(&b, knownhosts.Line([]string{fmt.Sprintf("10.0.%d.%d:22", i/250, i%250)}, otherHostKey(t)))
	}
	fmt.Fprintln(&b, knownhosts.Line([]string{s.Addrs[0]}, s.HostPublicKey))
	cfg.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
	writeFile(t, cfg.KnownHosts, b.String())
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	const conns = 20
	pools := make([]*SSHPool, conns)
	before := heap()
	for i := range pools {
		pools[i] = newPool(t)
		dialSSHTarget(t, pools[i], s.Addrs[0], cfg)
	}
	per := (int64(heap()) - int64(before)) / conns
	runtime.KeepAlive(pools)
	t.Logf("%d KiB of heap a connection", per>>10)
	if per > 150<<10 {
		t.Errorf("a connection keeps %d KiB of heap with a known_hosts of 1001 lines, want under 150 KiB", per>>10)
	}
}

// TestSSHKnownHostsChanged: a known_hosts edited in place (same length,
// within the same clock tick) is read again, whichever way the edit goes.
func TestSSHKnownHostsChanged(t *testing.T) {
	s := testutil.StartSSHD(t, "127.0.0.2")
	cfg := sshConfig(s)
	good := knownhosts.Line([]string{s.Addrs[0]}, s.HostPublicKey) + "\n"
	bad := knownhosts.Line([]string{s.Addrs[0]}, otherHostKey(t)) + "\n"
	if len(good) != len(bad) {
		t.Fatalf("lines of %d and %d bytes", len(good), len(bad))
	}
	cfg.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
	for _, content := range []string{bad, good, bad} {
		writeFile(t, cfg.KnownHosts, content)
		_, err := newPool(t).Dial(ctxFor(t), s.Addrs[0], cfg)
		if want := content == bad; errors.Is(err, ErrHostKey) != want {
			t.Fatalf("with the %s key in known_hosts: Dial = %v", map[bool]string{true: "wrong", false: "right"}[want], err)
		}
	}
}
