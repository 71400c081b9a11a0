package rollback

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/rollback-watcher/watcher/internal/policy"
)

// Remote targets: one SSH connection per host, with one SFTP session kept
// open on it. Every file operation of the switch (read the link, make the
// temporary link, rename it over the link, read it back, write ROLLED_BACK)
// is an SFTP request: no process is spawned on the host for any of them.
// Only Run (the after and data commands) opens an exec session.

// SFTP extensions of OpenSSH that the switch relies on.
const (
	extPosixRename = "posix-rename@openssh.com"
	extFsync       = "fsync@openssh.com"
)

// Pool defaults.
const (
	// DefaultSSHMaxOpen bounds the connections an SSHPool keeps open.
	DefaultSSHMaxOpen = 256
	// DefaultSSHIdleTimeout closes connections that nothing used for so long.
	DefaultSSHIdleTimeout = 15 * time.Minute
	// sshProbeAfter: a cached connection idle for longer is checked with a
	// keepalive before Dial hands it out, so that a connection the network
	// dropped meanwhile costs a redial now rather than a failed host later.
	sshProbeAfter = 2 * time.Second
	// defaultConnectTimeout applies when the policy gives none (a
	// policy.SSH not made by policy.Load).
	defaultConnectTimeout = 10 * time.Second
)

var (
	// ErrHostKey: the host's key is unknown, changed or revoked. Nothing was
	// done on that host. *HostKeyError has the detail.
	ErrHostKey = errors.New("host key not verified")
	// ErrEncryptedKey: the identity file needs a passphrase, which a daemon
	// cannot type; the key belongs in an ssh-agent.
	ErrEncryptedKey = errors.New("identity file is encrypted")
	// ErrNoPosixRename: the host's SFTP server cannot replace a file
	// atomically (no posix-rename@openssh.com).
	ErrNoPosixRename = errors.New("SFTP server lacks " + extPosixRename)
	// ErrPoolClosed: the SSHPool was closed (the watcher is stopping).
	ErrPoolClosed = errors.New("SSH connection pool closed")
	// ErrPoolFull: every connection the pool may open is in use.
	ErrPoolFull = errors.New("SSH connection pool full")
	// ErrConnectionLost: the connection to the host dropped during an
	// operation, so whether a change took effect is unknown until the
	// link is read back.
	ErrConnectionLost = errors.New("SSH connection lost")
)

// HostKeyError says why a host's key was refused. It matches ErrHostKey and
// wraps the knownhosts error (*knownhosts.KeyError, *knownhosts.RevokedError).
type HostKeyError struct {
	Addr       string // "127.0.0.2:2222"
	KnownHosts string
	Offered    ssh.PublicKey
	// Known are the keys known_hosts holds for the host; none means the
	// host is unknown, some means its key CHANGED.
	Known   []knownhosts.KnownKey
	Revoked *knownhosts.KnownKey
	Err     error
}

func (e *HostKeyError) Error() string {
	fp := ssh.FingerprintSHA256(e.Offered)
	switch {
	case e.Revoked != nil:
		return fmt.Sprintf("host key of %s (%s %s) is marked @revoked in %s:%d: refusing to connect",
			e.Addr, e.Offered.Type(), fp, e.Revoked.Filename, e.Revoked.Line)
	case len(e.Known) == 0:
		return fmt.Sprintf("host key of %s is not in %s: add it with %s >> %s (after checking that its fingerprint is %s %s)",
			e.Addr, e.KnownHosts, keyscan(e.Addr), shellWord(e.KnownHosts), e.Offered.Type(), fp)
	}
	known := make([]string, len(e.Known))
	for i, k := range e.Known {
		known[i] = fmt.Sprintf("%s:%d has %s %s", k.Filename, k.Line, k.Key.Type(), ssh.FingerprintSHA256(k.Key))
	}
	return fmt.Sprintf("host key of %s CHANGED: it offered %s %s, but %s: someone may be intercepting the connection, or the host was reinstalled; nothing was done on it (if the change is expected, replace the old entry: ssh-keygen -R %s -f %s)",
		e.Addr, e.Offered.Type(), fp, strings.Join(known, ", "), shellWord(knownhosts.Normalize(e.Addr)), shellWord(e.KnownHosts))
}

func (e *HostKeyError) Unwrap() []error { return []error{ErrHostKey, e.Err} }

// keyscan is the ssh-keyscan command that fetches the key of addr.
func keyscan(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "22" {
		return "ssh-keyscan " + shellWord(addr)
	}
	return "ssh-keyscan -p " + port + " " + shellWord(host)
}

// sshEndpoint is one host as a policy configures it, resolved.
type sshEndpoint struct {
	name           string // as configured: "web1", "web1:2222"
	addr           string // host:port dialed
	user           string
	identityFile   string
	knownHosts     string
	connectTimeout time.Duration
	commandTimeout time.Duration
}

// key identifies a connection: the same host reached as the same user with
// the same credentials and the same known_hosts shares one.
type sshKey struct {
	name, addr, user, identityFile, knownHosts string
}

func (ep sshEndpoint) key() sshKey {
	return sshKey{ep.name, ep.addr, ep.user, ep.identityFile, ep.knownHosts}
}

// hostName is a DNS name or an address; anything else (a shell
// metacharacter, a space, an option) is refused before it reaches a dialer.
var hostName = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$`)

// newEndpoint parses host ("web1", "web1:2222", "[2001:db8::1]:22") and
// fills in the defaults: the policy's port, else 22; the policy's user, else
// the user the watcher runs as; ~/.ssh/known_hosts.
func newEndpoint(host string, cfg policy.SSH) (sshEndpoint, error) {
	h, port := host, cfg.Port
	if port == 0 {
		port = 22
	}
	if strings.HasPrefix(host, "[") || strings.Count(host, ":") == 1 {
		hh, p, err := net.SplitHostPort(host)
		if err != nil {
			return sshEndpoint{}, fmt.Errorf("host %q: %w", host, err)
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return sshEndpoint{}, fmt.Errorf("host %q: bad port %q", host, p)
		}
		h, port = hh, n
	}
	if net.ParseIP(h) == nil && (!hostName.MatchString(h) || strings.Contains(h, "..")) {
		return sshEndpoint{}, fmt.Errorf("host %q is not a host name or an IP address", host)
	}
	ep := sshEndpoint{
		name:           host,
		addr:           net.JoinHostPort(h, strconv.Itoa(port)),
		user:           cfg.User,
		connectTimeout: time.Duration(cfg.ConnectTimeout),
		commandTimeout: time.Duration(cfg.CommandTimeout),
	}
	if ep.connectTimeout <= 0 {
		ep.connectTimeout = defaultConnectTimeout
	}
	if ep.user == "" {
		u, err := user.Current()
		if err != nil || u.Username == "" {
			return sshEndpoint{}, fmt.Errorf("no rollback.ssh.user, and the current user is unknown: %v", err)
		}
		ep.user = u.Username
	}
	var err error
	if ep.identityFile, err = expandHome(cfg.IdentityFile); err != nil {
		return sshEndpoint{}, fmt.Errorf("rollback.ssh.identity_file: %w", err)
	}
	kh := cfg.KnownHosts
	if kh == "" {
		kh = "~/.ssh/known_hosts"
	}
	if ep.knownHosts, err = expandHome(kh); err != nil {
		return sshEndpoint{}, fmt.Errorf("rollback.ssh.known_hosts: %w", err)
	}
	return ep, nil
}

// expandHome resolves "~/" (policy.Load already did for loaded policies).
func expandHome(p string) (string, error) {
	if p != "~" && !strings.HasPrefix(p, "~/") {
		return p, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cannot expand %q: %w", p, err)
	}
	return filepath.Join(home, p[1:]), nil
}

// sshConn is one SSH connection and the SFTP session on it.
type sshConn struct {
	client      *ssh.Client
	sftp        *sftp.Client
	posixRename bool
	fsync       bool

	done      chan struct{} // closed once either is gone
	closeOnce sync.Once
}

// close closes the SSH connection first: sftp.Client.Close waits for its
// reader, which only a closed transport ends when the peer stopped answering.
func (c *sshConn) close() {
	c.closeOnce.Do(func() {
		_ = c.client.Close()
		_ = c.sftp.Close()
	})
}

func (c *sshConn) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// probe checks that the peer still answers, within timeout. OpenSSH answers
// the keepalive request with a failure, which is an answer all the same.
func (c *sshConn) probe(timeout time.Duration) error {
	errc := make(chan error, 1)
	go func() {
		_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
		errc <- err
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-errc:
		return err
	case <-c.done:
		return errors.New("connection closed")
	case <-t.C:
		c.close()
		return fmt.Errorf("no answer to a keepalive within %s", timeout)
	}
}

// dialSSH connects, verifies the host key, logs in and opens the SFTP
// session, all within the connect timeout.
func dialSSH(ctx context.Context, ep sshEndpoint) (*sshConn, error) {
	var hkErr *HostKeyError
	cb, algos, err := hostKeyCallback(ep, &hkErr)
	if err != nil {
		return nil, err
	}
	auth, closeAuth, err := authMethod(ep)
	if err != nil {
		return nil, err
	}
	defer closeAuth()
	cfg := &ssh.ClientConfig{
		User:              ep.user,
		Auth:              []ssh.AuthMethod{auth},
		HostKeyCallback:   cb,
		HostKeyAlgorithms: algos,
		Timeout:           ep.connectTimeout,
	}

	dctx, cancel := context.WithTimeout(ctx, ep.connectTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(dctx, "tcp", ep.addr)
	if err != nil {
		if ctx.Err() == nil && dctx.Err() != nil {
			return nil, unreachable{fmt.Errorf("connecting to %s: no answer within connect_timeout %s", ep.addr, ep.connectTimeout)}
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connecting to %s: %w", ep.addr, err)
		}
		return nil, unreachable{fmt.Errorf("connecting to %s: %w", ep.addr, err)}
	}
	// The handshake, the login and the SFTP start must finish within the
	// connect timeout too: a host that accepts the connection and then
	// says nothing must not hold the rollback.
	stop := context.AfterFunc(dctx, func() { _ = nc.Close() })
	fail := func(what string, err error) error {
		_ = nc.Close()
		switch {
		case hkErr != nil:
			return hkErr
		case ctx.Err() != nil:
			return fmt.Errorf("%s %s: %w", what, ep.addr, ctx.Err())
		case dctx.Err() != nil:
			return unreachable{fmt.Errorf("%s %s: not done within connect_timeout %s", what, ep.addr, ep.connectTimeout)}
		case strings.HasPrefix(what, "logging in") || !brokenConn(err):
			// A refused login or a handshake that cannot agree (no
			// common algorithm) would fail the same way again.
			return fmt.Errorf("%s %s: %w", what, ep.addr, err)
		}
		// The connection broke during the handshake or the SFTP start:
		// another dial may well get through.
		return transient{fmt.Errorf("%s %s: %w", what, ep.addr, err)}
	}
	sc, chans, reqs, err := ssh.NewClientConn(nc, ep.addr, cfg)
	if err != nil {
		what := "SSH handshake with"
		if strings.Contains(err.Error(), "unable to authenticate") {
			what = "logging in as " + ep.user + " to"
		}
		return nil, fail(what, err)
	}
	client := ssh.NewClient(sc, chans, reqs)
	sf, err := sftp.NewClient(client)
	if err != nil {
		_ = client.Close()
		return nil, fail("starting the SFTP subsystem on", err)
	}
	if !stop() {
		// The timeout fired just as the SFTP session came up.
		_ = sf.Close()
		_ = client.Close()
		return nil, fail("connecting to", dctx.Err())
	}
	c := &sshConn{client: client, sftp: sf, done: make(chan struct{})}
	_, c.posixRename = sf.HasExtension(extPosixRename)
	v, ok := sf.HasExtension(extFsync)
	c.fsync = ok && v == "1"
	go func() {
		// Whichever goes first takes the other with it: an SSH connection
		// whose SFTP session died is of no use to the switch.
		errc := make(chan struct{}, 2)
		go func() { _ = client.Wait(); errc <- struct{}{} }()
		go func() { _ = sf.Wait(); errc <- struct{}{} }()
		<-errc
		c.close()
		close(c.done)
	}()
	return c, nil
}

// transient marks a dial failure that another attempt may not meet (the
// connection broke before the login), without changing its message. See
// Retryable.
type transient struct{ error }

func (e transient) Unwrap() error { return e.error }

// unreachable marks a host that refused the connection or did not answer
// within connect_timeout: down, or cut off. A rollback being planned fails
// at once on it (nothing is touched yet, and waiting helps no one); one
// under way tries it again, since its host may be half-done.
type unreachable struct{ error }

func (e unreachable) Unwrap() error { return e.error }

// brokenConn reports whether err says the connection itself broke (closed,
// reset, cut mid-packet), as opposed to the peer's considered answer.
func brokenConn(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) {
		return true
	}
	// x/crypto/ssh reports a connection cut between a request and its
	// answer as an unexpected packet with no packet.
	msg := err.Error()
	return strings.Contains(msg, "unexpected packet") || strings.Contains(msg, "connection reset")
}

// probeKey is a key no known_hosts holds, to learn which key types it has
// for a host.
var probeKey = sync.OnceValue(func() ssh.PublicKey {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return k
})

// hostKeyCallback verifies the host key against known_hosts (hashed names
// and [host]:port entries included) and records a refusal in *refused. It
// also returns the host key algorithms to ask for: those of the keys known
// for the host, so that a host known by its ed25519 key is not asked for its
// ECDSA key and then reported as changed.
func hostKeyCallback(ep sshEndpoint, refused **HostKeyError) (ssh.HostKeyCallback, []string, error) {
	db, err := knownhosts.New(ep.knownHosts)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("%w: known_hosts file %s does not exist, and host keys are always verified: create it with %s >> %s",
				ErrHostKey, ep.knownHosts, keyscan(ep.addr), shellWord(ep.knownHosts))
		}
		return nil, nil, fmt.Errorf("known_hosts %s: %w", ep.knownHosts, err)
	}
	var algos []string
	dummy := &net.TCPAddr{IP: net.IPv4zero, Port: 22}
	var ke *knownhosts.KeyError
	if err := db(ep.addr, dummy, probeKey()); errors.As(err, &ke) {
		seen := map[string]bool{}
		for _, k := range ke.Want {
			for _, a := range algorithmsFor(k.Key.Type()) {
				if !seen[a] {
					seen[a] = true
					algos = append(algos, a)
				}
			}
		}
	}
	cb := func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := db(hostname, remote, key)
		if err == nil {
			return nil
		}
		e := &HostKeyError{Addr: ep.addr, KnownHosts: ep.knownHosts, Offered: key, Err: err}
		var ke *knownhosts.KeyError
		var re *knownhosts.RevokedError
		switch {
		case errors.As(err, &ke):
			e.Known = ke.Want
		case errors.As(err, &re):
			e.Revoked = &re.Revoked
		default:
			return err
		}
		*refused = e
		return e
	}
	return cb, algos, nil
}

func algorithmsFor(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

// authMethod offers the identity file's key, then the ssh-agent's keys, as
// one publickey method (the client tries each method name once).
func authMethod(ep sshEndpoint) (ssh.AuthMethod, func(), error) {
	var signers []ssh.Signer
	encrypted := false
	if ep.identityFile != "" {
		b, err := os.ReadFile(ep.identityFile)
		if err != nil {
			return nil, nil, fmt.Errorf("rollback.ssh.identity_file: %w", err)
		}
		s, err := ssh.ParsePrivateKey(b)
		var pm *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &pm):
			encrypted = true
		case err != nil:
			return nil, nil, fmt.Errorf("rollback.ssh.identity_file %s: %w", ep.identityFile, err)
		default:
			signers = append(signers, s)
		}
	}
	closeAuth := func() {}
	var fromAgent func() ([]ssh.Signer, error)
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		conn, err := net.Dial("unix", sock)
		switch {
		case err == nil:
			fromAgent = agent.NewClient(conn).Signers
			closeAuth = func() { _ = conn.Close() }
		case len(signers) == 0:
			return nil, nil, fmt.Errorf("ssh-agent at SSH_AUTH_SOCK=%s: %w", sock, err)
		}
	}
	switch {
	case encrypted && fromAgent == nil:
		return nil, nil, fmt.Errorf("%w: rollback.ssh.identity_file %s needs a passphrase, which the watcher cannot type: load it into an ssh-agent (ssh-add %s) and run the watcher with SSH_AUTH_SOCK set",
			ErrEncryptedKey, ep.identityFile, shellWord(ep.identityFile))
	case len(signers) == 0 && fromAgent == nil:
		return nil, nil, errors.New("no SSH key to log in with: set rollback.ssh.identity_file, or run the watcher with SSH_AUTH_SOCK pointing at an ssh-agent")
	}
	return ssh.PublicKeysCallback(func() ([]ssh.Signer, error) {
		out := signers[:len(signers):len(signers)]
		if fromAgent != nil {
			if as, err := fromAgent(); err == nil {
				out = append(out, as...)
			}
		}
		return out, nil
	}), closeAuth, nil
}

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

	mu      sync.Mutex
	targets map[sshKey]*SSHTarget
	open    int // connections open or being dialed
	closed  bool
}

// NewSSHPool returns a pool of at most maxOpen connections (0: the default).
func NewSSHPool(maxOpen int) *SSHPool { return &SSHPool{MaxOpen: maxOpen} }

var _ Dialer = (&SSHPool{}).Dial

// Dial returns the target for host ("web1" or "web1:2222"), connected: a
// cached connection when one is open and answers, else a new one. A cached
// connection that dropped is worth one redial; any other failure (refused,
// timed out, host key not verified, login refused) is returned as is.
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
		if perr := c.probe(ep.connectTimeout); perr != nil {
			t.release()
			t.drop(c)
			if _, _, err = t.acquire(ctx); err != nil {
				return nil, fmt.Errorf("%w (the cached connection had dropped: %v)", err, perr)
			}
		}
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

// SSHTarget is a host reached over SSH as a Target: the file operations go
// over one SFTP session kept open, Run over an exec session on the same
// connection. Made by SSHPool.Dial.
//
// When the connection is gone (dropped, or closed by the pool to make room),
// the next operation redials. A read-only operation that the connection
// dropped under is tried once more on a new connection; a change (Symlink,
// Rename, WriteFile, Run) is not: it may have taken effect, and only reading
// the link back can tell (Switch does).
type SSHTarget struct {
	pool   *SSHPool
	dialMu sync.Mutex // serialises (re)connecting

	// Guarded by pool.mu.
	ep       sshEndpoint
	conn     *sshConn
	inflight int
	lastUse  time.Time
}

var _ Target = (*SSHTarget)(nil)

// Name implements Target: the host as configured ("127.0.0.2:2222").
func (t *SSHTarget) Name() string {
	t.pool.mu.Lock()
	defer t.pool.mu.Unlock()
	return t.ep.name
}

func (t *SSHTarget) endpoint() sshEndpoint {
	t.pool.mu.Lock()
	defer t.pool.mu.Unlock()
	return t.ep
}

type acquired struct {
	fresh bool          // just dialed
	idle  time.Duration // unused for so long before
}

// acquire returns the open connection, dialing one if there is none, and
// counts the caller as using it until release.
func (t *SSHTarget) acquire(ctx context.Context) (*sshConn, acquired, error) {
	t.dialMu.Lock()
	defer t.dialMu.Unlock()
	p := t.pool
	p.mu.Lock()
	now := time.Now()
	if c := t.conn; c != nil && !c.closed() {
		st := acquired{idle: now.Sub(t.lastUse)}
		t.inflight++
		t.lastUse = now
		p.mu.Unlock()
		return c, st, nil
	}
	p.closeLocked(t)
	if p.closed {
		p.mu.Unlock()
		return nil, acquired{}, ErrPoolClosed
	}
	if err := p.reserveLocked(); err != nil {
		p.mu.Unlock()
		return nil, acquired{}, err
	}
	ep := t.ep
	p.mu.Unlock()

	c, err := dialSSH(ctx, ep)

	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.open--
		return nil, acquired{}, err
	}
	if p.closed {
		p.open--
		c.close()
		return nil, acquired{}, ErrPoolClosed
	}
	t.conn = c
	t.inflight++
	t.lastUse = time.Now()
	return c, acquired{fresh: true}, nil
}

func (t *SSHTarget) release() {
	t.pool.mu.Lock()
	defer t.pool.mu.Unlock()
	t.inflight--
	t.lastUse = time.Now()
}

// drop closes c if it is still the target's connection.
func (t *SSHTarget) drop(c *sshConn) {
	t.pool.mu.Lock()
	defer t.pool.mu.Unlock()
	if t.conn == c {
		t.pool.closeLocked(t)
	} else {
		c.close()
	}
}

// serverAnswered reports whether err is the SFTP server's answer (no such
// file, permission denied, failure), as opposed to a transport problem.
func serverAnswered(err error) bool {
	var se *sftp.StatusError
	return errors.As(err, &se) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) ||
		errors.Is(err, ErrNoPosixRename)
}

// call runs op on the connection. When op fails in a way that is not the
// server's answer, the connection is checked; if it is gone, the error says
// so, and a read-only op (retry) runs once more on a new connection.
//
// SFTP requests have no deadline of their own: an op that gets no answer
// within the policy's command_timeout closes the connection, as a peer that
// stopped answering would otherwise hold the rollback forever.
func (t *SSHTarget) call(retry bool, op func(c *sshConn) error) error {
	for attempt := 0; ; attempt++ {
		c, _, err := t.acquire(context.Background())
		if err != nil {
			return err
		}
		timeout := t.endpoint().commandTimeout
		if timeout <= 0 {
			timeout = time.Duration(policy.DefaultSSHCommandTimeout)
		}
		var timedOut atomic.Bool
		timer := time.AfterFunc(timeout, func() {
			timedOut.Store(true)
			t.drop(c)
		})
		err = op(c)
		timer.Stop()
		t.release()
		if timedOut.Load() && err != nil {
			err = fmt.Errorf("no answer within command_timeout %s: %w", timeout, err)
		}
		if err == nil || (serverAnswered(err) && !timedOut.Load()) {
			return err
		}
		if !c.closed() {
			if perr := c.probe(t.endpoint().connectTimeout); perr == nil {
				return err // the connection is fine: a genuine error
			}
		}
		t.drop(c)
		err = fmt.Errorf("%w to %s: %w", ErrConnectionLost, t.Name(), err)
		if !retry || attempt > 0 {
			return err
		}
	}
}

func pathErr(op, name string, err error) error {
	if err == nil {
		return nil
	}
	return &fs.PathError{Op: op, Path: name, Err: err}
}

// Readlink implements Target.
func (t *SSHTarget) Readlink(name string) (string, error) {
	var s string
	err := t.call(true, func(c *sshConn) (err error) {
		s, err = c.sftp.ReadLink(name)
		return err
	})
	return s, pathErr("readlink", name, err)
}

// Stat implements Target.
func (t *SSHTarget) Stat(name string) (fs.FileInfo, error) {
	var fi fs.FileInfo
	err := t.call(true, func(c *sshConn) (err error) {
		fi, err = c.sftp.Stat(name)
		return err
	})
	return fi, pathErr("stat", name, err)
}

// Lstat implements Target.
func (t *SSHTarget) Lstat(name string) (fs.FileInfo, error) {
	var fi fs.FileInfo
	err := t.call(true, func(c *sshConn) (err error) {
		fi, err = c.sftp.Lstat(name)
		return err
	})
	return fi, pathErr("lstat", name, err)
}

// ReadFile implements Target.
func (t *SSHTarget) ReadFile(name string) ([]byte, error) {
	var b []byte
	err := t.call(true, func(c *sshConn) error {
		f, err := c.sftp.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		b, err = io.ReadAll(f)
		return err
	})
	return b, pathErr("open", name, err)
}

// ReadDir implements Target. OpenSSH lists entries with lstat(2), as the
// Target contract wants.
func (t *SSHTarget) ReadDir(name string) ([]fs.FileInfo, error) {
	var infos []fs.FileInfo
	err := t.call(true, func(c *sshConn) (err error) {
		infos, err = c.sftp.ReadDir(name)
		return err
	})
	return infos, pathErr("readdir", name, err)
}

// Symlink implements Target.
func (t *SSHTarget) Symlink(oldname, newname string) error {
	err := t.call(false, func(c *sshConn) error { return c.sftp.Symlink(oldname, newname) })
	if err != nil {
		return &os.LinkError{Op: "symlink", Old: oldname, New: newname, Err: err}
	}
	return nil
}

// Rename implements Target with posix-rename@openssh.com, which is rename(2)
// on the host: newname is replaced atomically. The plain SFTP rename is no
// substitute (it fails when newname exists), so a server without the
// extension is an error.
func (t *SSHTarget) Rename(oldname, newname string) error {
	err := t.call(false, func(c *sshConn) error {
		if !c.posixRename {
			return fmt.Errorf("%w, needed to replace %s atomically", ErrNoPosixRename, newname)
		}
		if err := c.sftp.PosixRename(oldname, newname); err != nil {
			return err
		}
		c.syncDir(path.Dir(newname))
		return nil
	})
	if err != nil {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err}
	}
	return nil
}

// syncDir makes a rename durable where the server allows it: OpenSSH opens
// a directory read-only like a file and fsyncs the handle. Best effort, as in
// Local.Rename: the rename has already taken effect.
func (c *sshConn) syncDir(dir string) {
	if !c.fsync {
		return
	}
	f, err := c.sftp.Open(dir)
	if err != nil {
		return
	}
	_ = f.Sync()
	_ = f.Close()
}

// WriteFile implements Target: a temporary file next to name, written,
// fsynced (when the server offers fsync@openssh.com), given perm, then
// renamed over name; the temporary file never outlives a failure.
func (t *SSHTarget) WriteFile(name string, data []byte, perm fs.FileMode) error {
	return t.writeFile(name, data, perm, true)
}

// writeFile is WriteFile; without durable, the file keeps the mode the
// server gives it and the directory is not synced.
func (t *SSHTarget) writeFile(name string, data []byte, perm fs.FileMode, durable bool) error {
	err := t.call(false, func(c *sshConn) (err error) {
		if !c.posixRename {
			return fmt.Errorf("%w, needed to replace %s atomically", ErrNoPosixRename, name)
		}
		dir, base := path.Dir(name), path.Base(name)
		tmp := path.Join(dir, "."+base+".tmp-"+rand.Text()[:16])
		f, err := c.sftp.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
		if err != nil {
			return err
		}
		closed := false
		defer func() {
			if err == nil {
				return
			}
			if !closed {
				_ = f.Close()
			}
			_ = c.sftp.Remove(tmp)
		}()
		if _, err := f.Write(data); err != nil {
			return err
		}
		if c.fsync {
			if err := f.Sync(); err != nil {
				return err
			}
		}
		if durable {
			if err := f.Chmod(perm); err != nil {
				return err
			}
		}
		closed = true
		if err := f.Close(); err != nil {
			return err
		}
		if err := c.sftp.PosixRename(tmp, name); err != nil {
			return err
		}
		if durable {
			c.syncDir(dir)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// ReplaceFile implements Target: WriteFile without the fsetstat and the
// directory fsync.
func (t *SSHTarget) ReplaceFile(name string, data []byte) error {
	return t.writeFile(name, data, 0, false)
}

// Remove implements Target. Removing a path twice does no harm, so a
// dropped connection gets one retry.
func (t *SSHTarget) Remove(name string) error {
	err := t.call(true, func(c *sshConn) error { return c.sftp.Remove(name) })
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Path == name {
		return err // sftp's Remove already says what and where
	}
	return pathErr("remove", name, err)
}

// Run implements Target: one exec session running argv. sshd hands the
// command line to the user's login shell, which must be a POSIX shell (sh,
// dash, bash, ksh, zsh); every word is quoted for it (shellCommand), so no
// value reaches the shell as syntax. The environment goes through env(1),
// since sshd refuses most SetEnv requests. The output (stdout and stderr
// combined) is bounded like Local.Run's.
//
// When ctx ends or the policy's command_timeout passes, the command is
// killed: with a signal request, and, since sshd refuses those for root
// logins and closing the channel does not stop a command without a
// terminal, with a second session killing its process group (the command
// replaced the session's shell, which sshd made a session leader, so its
// pid, printed first on stderr, names the group).
func (t *SSHTarget) Run(ctx context.Context, argv []string, env []string) ([]byte, error) {
	line, err := shellCommand(argv, env)
	if err != nil {
		return nil, err
	}
	return t.run(ctx, argv, line)
}

// RunRecorded is Run, and when the command succeeds, the same shell creates
// the file done before it exits: the record of the command's success is
// made on the host even when the connection drops before its exit status
// arrives. (The command no longer replaces the shell; killing the session's
// process group still stops both.)
func (t *SSHTarget) RunRecorded(ctx context.Context, argv, env []string, done string) ([]byte, error) {
	line, err := shellCommand(argv, env)
	if err != nil {
		return nil, err
	}
	if strings.ContainsRune(done, 0) {
		return nil, fmt.Errorf("run: record file %q contains a NUL byte", done)
	}
	line = strings.TrimPrefix(line, "exec ") + "; rc=$?; if [ $rc -eq 0 ]; then : > " + shellQuote(done) + " 2>/dev/null; fi; exit $rc"
	return t.run(ctx, argv, line)
}

func (t *SSHTarget) run(ctx context.Context, argv []string, line string) ([]byte, error) {
	c, _, err := t.acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", argv[0], err)
	}
	defer t.release()
	ep := t.endpoint()
	runCtx := ctx
	if ep.commandTimeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, ep.commandTimeout)
		defer cancel()
	}
	sess, err := c.client.NewSession()
	if err != nil {
		return nil, fmt.Errorf("run %s on %s: opening a session: %w", argv[0], ep.name, err)
	}
	defer sess.Close()
	out := &lockedOutput{}
	pid := &pidCatcher{out: out}
	sess.Stdout, sess.Stderr = out, pid
	if err := sess.Start("echo " + pidMarker + "$$ >&2; " + line); err != nil {
		return nil, fmt.Errorf("run %s on %s: %w", argv[0], ep.name, err)
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	select {
	case err = <-done:
	case <-runCtx.Done():
		_ = sess.Signal(ssh.SIGKILL)
		if n := pid.pid(); n > 0 {
			killGroup(c, n, ep.connectTimeout)
		}
		_ = sess.Close()
		select {
		case <-done:
		case <-time.After(runWaitDelay):
		}
		err = runCtx.Err()
		if ctx.Err() == nil {
			err = fmt.Errorf("killed after command_timeout %s: %w", ep.commandTimeout, err)
		}
	}
	pid.flush()
	if err != nil && ctx.Err() == nil && runCtx.Err() == nil && (c.closed() || c.probe(ep.connectTimeout) != nil) {
		// No exit status because the connection is gone: the command may
		// or may not have run to its end. Say so, so that the caller can
		// look and try again.
		t.drop(c)
		err = &CommandCutError{PID: pid.pid(), Err: fmt.Errorf("%w to %s: %w", ErrConnectionLost, ep.name, err)}
	}
	if err != nil {
		return out.Bytes(), fmt.Errorf("run %s on %s: %w", argv[0], ep.name, err)
	}
	return out.Bytes(), nil
}

// CommandCutError: the connection dropped while a command ran, so its end
// is unknown; it may still be running on the host. PID is its shell's pid
// there (its process group), 0 if it never said.
type CommandCutError struct {
	PID int
	Err error
}

func (e *CommandCutError) Error() string { return e.Err.Error() }
func (e *CommandCutError) Unwrap() error { return e.Err }

// KillGroup kills process group pgid on the host (a command whose
// connection was cut, before it is run again), from a session of its own.
func (t *SSHTarget) KillGroup(ctx context.Context, pgid int) error {
	if pgid <= 0 {
		return nil
	}
	c, _, err := t.acquire(ctx)
	if err != nil {
		return err
	}
	defer t.release()
	killGroup(c, pgid, t.endpoint().connectTimeout)
	return nil
}

// killGroup kills process group pgid on the host, from a session of its own.
func killGroup(c *sshConn, pgid int, timeout time.Duration) {
	sess, err := c.client.NewSession()
	if err != nil {
		return
	}
	defer sess.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = sess.Run(fmt.Sprintf("kill -s KILL -- -%d 2>/dev/null || kill -s KILL %d", pgid, pgid))
	}()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}

// pidMarker starts the line on which a remote command reports its pid.
const pidMarker = "rollback-watcher-pid="

// pidCatcher passes stderr on to out, except for the pid line the command
// line starts with. Anything before it (a login shell's rc file may print)
// passes through; if no such line comes within 4 KiB, it gives up.
type pidCatcher struct {
	out io.Writer

	mu    sync.Mutex
	buf   []byte
	found int
	done  bool
}

func (p *pidCatcher) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return p.out.Write(b)
	}
	p.buf = append(p.buf, b...)
	i := strings.Index(string(p.buf), pidMarker)
	if i >= 0 {
		if j := strings.IndexByte(string(p.buf[i:]), '\n'); j >= 0 {
			p.found, _ = strconv.Atoi(string(p.buf[i+len(pidMarker) : i+j]))
			rest := append(p.buf[:i:i], p.buf[i+j+1:]...)
			p.buf, p.done = nil, true
			if _, err := p.out.Write(rest); err != nil {
				return 0, err
			}
			return len(b), nil
		}
	}
	if len(p.buf) > 4096 {
		p.flushLocked()
	}
	return len(b), nil
}

func (p *pidCatcher) flushLocked() {
	if !p.done {
		_, _ = p.out.Write(p.buf)
		p.buf, p.done = nil, true
	}
}

// flush passes on what is held back, once the session is over.
func (p *pidCatcher) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flushLocked()
}

func (p *pidCatcher) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.found
}

// lockedOutput is a cappedOutput for two writers: the SSH session copies
// stdout and stderr in goroutines of their own.
type lockedOutput struct {
	mu sync.Mutex
	c  cappedOutput
}

func (l *lockedOutput) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c.Write(p)
}

func (l *lockedOutput) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c.Bytes()
}

// envName is what a shell and env(1) take for a variable name.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// shellCommand builds the command line for a POSIX shell that runs argv
// with env added: `exec env 'K=V'... 'argv0' 'arg'...`. Every word is in
// single quotes (each ' inside closes them, adds \' and reopens them), in
// which a POSIX shell gives no character a meaning: spaces, $(...), `...`,
// ;, |, newlines and globs arrive as written. exec makes the command replace the shell, so that a
// signal reaches it.
func shellCommand(argv, env []string) (string, error) {
	if len(argv) == 0 || argv[0] == "" {
		return "", errors.New("run: empty command")
	}
	if strings.HasPrefix(argv[0], "-") {
		return "", fmt.Errorf("run: command %q starts with '-'", argv[0])
	}
	var b strings.Builder
	b.WriteString("exec")
	if len(env) > 0 {
		if strings.Contains(argv[0], "=") {
			return "", fmt.Errorf("run: command %q contains '=', which env(1) would take for a variable", argv[0])
		}
		b.WriteString(" env")
		for _, kv := range env {
			k, _, ok := strings.Cut(kv, "=")
			if !ok || !envName.MatchString(k) {
				return "", fmt.Errorf("run: environment entry %q is not NAME=value", kv)
			}
			if strings.ContainsRune(kv, 0) {
				return "", fmt.Errorf("run: environment entry %s contains a NUL byte", k)
			}
			b.WriteString(" ")
			b.WriteString(shellQuote(kv))
		}
	}
	for i, w := range argv {
		if strings.ContainsRune(w, 0) {
			return "", fmt.Errorf("run: argument %d of %s contains a NUL byte", i, argv[0])
		}
		b.WriteString(" ")
		b.WriteString(shellQuote(w))
	}
	return b.String(), nil
}

// shellQuote quotes s as one word for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// safeWord is what needs no quoting in a suggested command.
var safeWord = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)

// shellWord quotes s for a command shown to a person, only when needed.
func shellWord(s string) string {
	if safeWord.MatchString(s) {
		return s
	}
	return shellQuote(s)
}
