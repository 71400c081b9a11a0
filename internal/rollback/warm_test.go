package rollback

import (
	"context"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestWarmer opens connections to a deploy's hosts ahead of a rollback and
// closes them when no run holds them any more; a host two runs share stays
// open until both let go.
func TestWarmer(t *testing.T) {
	sshd := testutil.StartSSHD(t, "127.0.0.2", "127.0.0.3")
	cfg := sshConfig(sshd)
	pool := newPool(t)
	w := &Warmer{Pool: pool}
	a, b := sshd.Addrs[0], sshd.Addrs[1]

	w.Warm(context.Background(), []string{a, b}, cfg)
	w.Warm(context.Background(), []string{a}, cfg)
	testutil.Eventually(t, 10*time.Second, "two warm connections", func() bool { return pool.Open() == 2 })
	if w.Held(a, cfg) != 2 || w.Held(b, cfg) != 1 {
		t.Errorf("held a=%d b=%d, want 2 and 1", w.Held(a, cfg), w.Held(b, cfg))
	}
	// A rollback dials the same hosts: no new connection.
	for _, h := range []string{a, b} {
		if _, err := pool.Dial(context.Background(), h, cfg); err != nil {
			t.Fatal(err)
		}
	}
	if pool.Open() != 2 {
		t.Errorf("%d connections after the rollback's dials, want the 2 warm ones reused", pool.Open())
	}
	w.Cool([]string{a, b}, cfg)
	if pool.Open() != 1 || w.Held(a, cfg) != 1 || w.Held(b, cfg) != 0 {
		t.Errorf("after one run let go: %d open, held a=%d b=%d; want a still open", pool.Open(), w.Held(a, cfg), w.Held(b, cfg))
	}
	w.Cool([]string{a}, cfg)
	if pool.Open() != 0 {
		t.Errorf("%d connections open after every run let go", pool.Open())
	}
	// An unreachable host is not an error for the run: only logged.
	w.Warm(context.Background(), []string{"127.0.0.9:1"}, cfg)
	w.Cool([]string{"127.0.0.9:1"}, cfg)
}
