package rollback

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Running commands on a host: the after and data steps, and stopping them.

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
// arrives. (The command does not replace the shell, which must outlive it
// to create done; killing the session's process group stops both.)
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
		if c.closed() || c.probe(ep.connectTimeout) != nil {
			// Cut before the command started: nothing ran, and a new
			// connection may well get through.
			t.drop(c)
			err = fmt.Errorf("%w to %s: %w", ErrConnectionLost, ep.name, err)
		}
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
