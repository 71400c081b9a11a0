package rollback

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Connecting to a host: the connection and its SFTP session, host keys,
// credentials.

// sshConn is one SSH connection and the SFTP session on it.
type sshConn struct {
	client      *ssh.Client
	sftp        *sftpConn
	posixRename bool
	fsync       bool

	done      chan struct{} // closed once either is gone
	closeOnce sync.Once
}

// close closes the SSH connection, which ends the SFTP session on it;
// requests waiting for an answer fail at once.
func (c *sshConn) close() {
	c.closeOnce.Do(func() {
		_ = c.client.Close()
		c.sftp.close()
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
	sf, err := startSFTP(client)
	if err != nil {
		_ = client.Close()
		return nil, fail("starting the SFTP subsystem on", err)
	}
	if !stop() {
		// The timeout fired just as the SFTP session came up.
		sf.close()
		_ = client.Close()
		return nil, fail("connecting to", dctx.Err())
	}
	c := &sshConn{client: client, sftp: sf, done: make(chan struct{})}
	c.posixRename = sf.hasExt(extPosixRename, "")
	c.fsync = sf.hasExt(extFsync, "1")
	go func() {
		// Whichever goes first takes the other with it: an SSH connection
		// whose SFTP session died is of no use to the switch.
		errc := make(chan struct{}, 2)
		go func() { _ = client.Wait(); errc <- struct{}{} }()
		go func() { <-sf.done; errc <- struct{}{} }()
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
	db, err := knownHostsDB(ep.knownHosts)
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

// knownHosts holds each known_hosts file parsed, until its content changes. Every
// connection keeps its host key callback (for key re-exchanges), and a
// callback holds the whole parsed file: parsed once a dial, a fleet's
// known_hosts (a line per host) cost every connection about 330 bytes a
// line, memory quadratic in the fleet (330 KiB a connection with 1000
// hosts), and as much CPU a dial.
var knownHosts = struct {
	sync.Mutex
	files map[string]knownHostsFile
}{files: map[string]knownHostsFile{}}

type knownHostsFile struct {
	sum [sha256.Size]byte
	db  ssh.HostKeyCallback
}

// knownHostsDB is knownhosts.New(path), parsed again only when the file's
// content changed. Reading and hashing it costs a fraction of parsing it,
// and no timestamp can miss an edit.
func knownHostsDB(path string) (ssh.HostKeyCallback, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	knownHosts.Lock()
	defer knownHosts.Unlock()
	if f, ok := knownHosts.files[path]; ok && f.sum == sum {
		return f.db, nil
	}
	// Parsed from the file again: if it changed since it was read, the
	// next dial finds the sums differ and parses it once more.
	db, err := knownhosts.New(path)
	if err != nil {
		return nil, err
	}
	knownHosts.files[path] = knownHostsFile{sum: sum, db: db}
	return db, nil
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
