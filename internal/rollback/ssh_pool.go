package rollback

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rollback-watcher/watcher/internal/policy"
)

// SSHPool opens SSH targets and keeps their connections for the next
// rollback: one connection per host, user, port and credentials, at most
// MaxOpen at once. Its Dial method is a Dialer. Safe for concurrent use.
type SSHPool struct {
	// MaxOpen bounds the open connections; 0 means DefaultSSHMaxOpen.
	// When full, the least recently used idle connection is closed; when
	// none is idle, Dial fails (nothing is touched on that host).
	MaxOpen int
	// IdleTimeout closes connections unused for so long; 0 means
	// DefaultSSHIdleTimeout.
	IdleTimeout time.Duration

	requests atomic.Int64 // SFTP requests sent

	mu      sync.Mutex
	targets map[sshKey]*SSHTarget
	open    int // connections open or being dialed
	closed  bool
}

// NewSSHPool returns a pool of at most maxOpen connections (0: the default).
func NewSSHPool(maxOpen int) *SSHPool { return &SSHPool{MaxOpen: maxOpen} }

var _ Dialer = (&SSHPool{}).Dial

// Dial returns the target for host ("web1" or "web1:2222"), connected: a
// cached connection when one is open, else a new one; a failure to connect
// (refused, timed out, host key not verified, login refused) is returned as
// is.
//
// A cached connection idle for a while is checked with a keepalive sent as
// Dial returns, so that its answer comes back with the first requests'
// instead of costing a round trip of its own: when none comes within the
// connect timeout, the connection is closed, and the requests waiting on it
// fail and are tried again on a new one (reads at once, changes once the
// host was read back).
func (p *SSHPool) Dial(ctx context.Context, host string, cfg policy.SSH) (Target, error) {
	ep, err := newEndpoint(host, cfg)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrPoolClosed
	}
	if p.targets == nil {
		p.targets = map[sshKey]*SSHTarget{}
	}
	p.sweepLocked(time.Now())
	t := p.targets[ep.key()]
	if t == nil {
		t = &SSHTarget{pool: p}
		p.targets[ep.key()] = t
	}
	t.ep = ep // timeouts may have changed with a reload
	p.mu.Unlock()

	c, st, err := t.acquire(ctx)
	if err != nil {
		return nil, err
	}
	if !st.fresh && st.idle > sshProbeAfter {
		go func() {
			if c.probe(ep.connectTimeout) != nil {
				t.drop(c)
			}
		}()
	}
	t.release()
	return t, nil
}

// Drop closes the connection to host, if open; the next use redials. Use it
// for a connection known to be broken.
func (p *SSHPool) Drop(host string, cfg policy.SSH) {
	ep, err := newEndpoint(host, cfg)
	if err != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := p.targets[ep.key()]; t != nil {
		p.closeLocked(t)
	}
}

// SFTPRequests is the number of SFTP requests sent over the pool's
// connections, for benchmarks and tests: every request is a little work
// for the host's sshd, however many share a round trip.
func (p *SSHPool) SFTPRequests() int64 { return p.requests.Load() }

// Open is the number of connections open (or being dialed).
func (p *SSHPool) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

// Close closes every connection; the pool dials no more.
func (p *SSHPool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, t := range p.targets {
		p.closeLocked(t)
	}
	return nil
}

func (p *SSHPool) closeLocked(t *SSHTarget) {
	if t.conn != nil {
		t.conn.close()
		t.conn = nil
		p.open--
	}
}

func (p *SSHPool) sweepLocked(now time.Time) {
	idle := p.IdleTimeout
	if idle <= 0 {
		idle = DefaultSSHIdleTimeout
	}
	for _, t := range p.targets {
		if t.conn != nil && t.inflight == 0 && now.Sub(t.lastUse) > idle {
			p.closeLocked(t)
		}
	}
}

// reserveLocked counts one more connection, closing the least recently used
// idle one when the pool is full.
func (p *SSHPool) reserveLocked() error {
	max := p.MaxOpen
	if max <= 0 {
		max = DefaultSSHMaxOpen
	}
	if p.open >= max {
		var lru *SSHTarget
		for _, t := range p.targets {
			if t.conn != nil && t.inflight == 0 && (lru == nil || t.lastUse.Before(lru.lastUse)) {
				lru = t
			}
		}
		if lru == nil {
			return fmt.Errorf("%w: %d connections open and in use (max %d)", ErrPoolFull, p.open, max)
		}
		p.closeLocked(lru)
	}
	p.open++
	return nil
}
