package rollback

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/rollback-watcher/watcher/internal/policy"
)

// Remote targets: one SSH connection per host, with one SFTP session kept
// open on it. Every file operation of the switch (read the link, make the
// temporary link, rename it over the link, read it back, write ROLLED_BACK)
// is an SFTP request: no process is spawned on the host for any of them.
// Requests that do not wait for one another's answers go out together
// (ssh_wire.go), so that a host far away costs round trips per step of the
// rollback, not per request (ssh_pipeline.go). Only Run (the after and data
// commands) opens an exec session.

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
	// keepalive as Dial hands it out, so that a connection the network
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
