package rollback

import (
	"context"
	"log/slog"
	"sync"

	"github.com/rollback-watcher/watcher/internal/policy"
)

// Warmer keeps SSH connections open to the hosts of deploys in their
// validation window, so that a failing verdict rolls back over connections
// that are already up: the handshake, not the switch, is what costs.
// References are counted: several runs may share hosts, and a host is let go
// only when none needs it. The pool bounds how many stay open.
type Warmer struct {
	Pool   *SSHPool
	Logger *slog.Logger
	// Parallel bounds the dials in flight for one Warm call.
	Parallel int

	mu   sync.Mutex
	refs map[warmKey]int
}

type warmKey struct {
	host string
	cfg  policy.SSH
}

// Warm opens connections to hosts in the background. It returns at once;
// a host that cannot be reached now is only logged: the rollback will
// report it if it comes to that.
func (w *Warmer) Warm(ctx context.Context, hosts []string, cfg policy.SSH) {
	if len(hosts) == 0 {
		return
	}
	w.mu.Lock()
	if w.refs == nil {
		w.refs = map[warmKey]int{}
	}
	for _, h := range hosts {
		w.refs[warmKey{h, cfg}]++
	}
	w.mu.Unlock()
	par := w.Parallel
	if par <= 0 {
		par = 16
	}
	go forEach(par, len(hosts), func(i int) {
		t, err := w.Pool.Dial(ctx, hosts[i], cfg)
		if err == nil {
			// A round trip proves the connection, and the SFTP session
			// behind it, are up.
			_, err = t.Lstat("/")
		}
		if err != nil && w.Logger != nil {
			w.Logger.Debug("warming a connection failed", "host", hosts[i], "err", err)
		}
	})
}

// Cool releases what Warm took; a host no run needs any more has its
// connection closed.
func (w *Warmer) Cool(hosts []string, cfg policy.SSH) {
	w.mu.Lock()
	var idle []string
	for _, h := range hosts {
		k := warmKey{h, cfg}
		if w.refs[k] <= 1 {
			delete(w.refs, k)
			idle = append(idle, h)
			continue
		}
		w.refs[k]--
	}
	w.mu.Unlock()
	for _, h := range idle {
		w.Pool.Drop(h, cfg)
	}
}

// Held is how many runs hold host open.
func (w *Warmer) Held(host string, cfg policy.SSH) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.refs[warmKey{host, cfg}]
}
