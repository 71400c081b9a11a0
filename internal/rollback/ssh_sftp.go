package rollback

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"

	"github.com/rollback-watcher/watcher/internal/policy"
)

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
