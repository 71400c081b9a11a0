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
	c.sftp.sent = &p.requests
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
	var se *sftpStatus
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
	err := t.call(true, func(c *sshConn) error {
		op, err := ask(c.sftp, func(f *flight) *sftpOp { return f.readlink(name) })
		if err == nil {
			s, err = op.target()
		}
		return err
	})
	return s, pathErr("readlink", name, err)
}

// Stat implements Target.
func (t *SSHTarget) Stat(name string) (fs.FileInfo, error) {
	var fi fs.FileInfo
	err := t.call(true, func(c *sshConn) error {
		op, err := ask(c.sftp, func(f *flight) *sftpOp { return f.stat(name) })
		if err == nil {
			fi, err = op.info(name)
		}
		return err
	})
	return fi, pathErr("stat", name, err)
}

// Lstat implements Target.
func (t *SSHTarget) Lstat(name string) (fs.FileInfo, error) {
	var fi fs.FileInfo
	err := t.call(true, func(c *sshConn) error {
		op, err := ask(c.sftp, func(f *flight) *sftpOp { return f.lstat(name) })
		if err == nil {
			fi, err = op.info(name)
		}
		return err
	})
	return fi, pathErr("lstat", name, err)
}

// ask sends a flight of one request.
func ask(c *sftpConn, req func(f *flight) *sftpOp) (*sftpOp, error) {
	f := c.flight()
	op := req(f)
	return op, f.send()
}

// ReadFile implements Target.
func (t *SSHTarget) ReadFile(name string) ([]byte, error) {
	var b []byte
	err := t.call(true, func(c *sshConn) error {
		op, err := ask(c.sftp, func(f *flight) *sftpOp { return f.open(name, fxfRead) })
		if err != nil {
			return err
		}
		h, err := op.handle()
		if err != nil {
			return err
		}
		b, err = readOpen(c.sftp, name, h)
		return err
	})
	return b, pathErr("open", name, err)
}

// readOpen reads the file name, open as h, to its end and closes h. A file
// shorter than a read request (the switch reads nothing longer) takes one
// flight: the read and the close. A longer one is read on from a new
// handle, a chunk a flight.
func readOpen(c *sftpConn, name, h string) ([]byte, error) {
	f := c.flight()
	rd := f.read(h, 0, sftpChunk)
	f.closeHandle(h)
	if err := f.send(); err != nil {
		return nil, err
	}
	b, err := rd.data()
	switch {
	case errors.Is(err, io.EOF):
		return nil, nil
	case err != nil:
		return nil, err
	case len(b) < sftpChunk:
		return b, nil
	}
	op, err := ask(c, func(f *flight) *sftpOp { return f.open(name, fxfRead) })
	if err != nil {
		return nil, err
	}
	if h, err = op.handle(); err != nil {
		return nil, err
	}
	defer func() { _, _ = ask(c, func(f *flight) *sftpOp { return f.closeHandle(h) }) }()
	for {
		op, err := ask(c, func(f *flight) *sftpOp { return f.read(h, uint64(len(b)), sftpChunk) })
		if err != nil {
			return nil, err
		}
		more, err := op.data()
		if errors.Is(err, io.EOF) {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
		b = append(b, more...)
	}
}

// ReadDir implements Target. OpenSSH lists entries with lstat(2), as the
// Target contract wants.
func (t *SSHTarget) ReadDir(name string) ([]fs.FileInfo, error) {
	var infos []fs.FileInfo
	err := t.call(true, func(c *sshConn) error {
		op, err := ask(c.sftp, func(f *flight) *sftpOp { return f.opendir(name) })
		if err != nil {
			return err
		}
		h, err := op.handle()
		if err != nil {
			return err
		}
		infos, err = readDirOpen(c.sftp, name, h)
		return err
	})
	return infos, pathErr("readdir", name, err)
}

// readDirOpen lists the directory name, open as h, and closes h: two
// readdir requests and the close in one flight, which covers a directory
// of up to 100 entries (OpenSSH sends at most 100 an answer) and tells
// that the listing is complete. A longer directory is listed again from a
// new handle, with four times as many readdirs in the flight.
func readDirOpen(c *sftpConn, name, h string) ([]fs.FileInfo, error) {
	for depth := 2; ; depth *= 4 {
		f := c.flight()
		ops := make([]*sftpOp, depth)
		for i := range ops {
			ops[i] = f.readdir(h)
		}
		f.closeHandle(h)
		if err := f.send(); err != nil {
			return nil, err
		}
		var out []fs.FileInfo
		for _, op := range ops {
			es, err := op.entries()
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			if err != nil {
				return nil, err
			}
			out = append(out, es...)
		}
		op, err := ask(c, func(f *flight) *sftpOp { return f.opendir(name) })
		if err != nil {
			return nil, err
		}
		if h, err = op.handle(); err != nil {
			return nil, err
		}
	}
}

// Symlink implements Target.
func (t *SSHTarget) Symlink(oldname, newname string) error {
	err := t.call(false, func(c *sshConn) error {
		op, err := ask(c.sftp, func(f *flight) *sftpOp { return f.symlink(oldname, newname) })
		if err == nil {
			err = op.status()
		}
		return err
	})
	if err != nil {
		return &os.LinkError{Op: "symlink", Old: oldname, New: newname, Err: err}
	}
	return nil
}

// Rename implements Target with posix-rename@openssh.com, which is rename(2)
// on the host: newname is replaced atomically. The plain SFTP rename is no
// substitute (it fails when newname exists), so a server without the
// extension is an error. Two flights: the rename and the opening of its
// directory, then the directory's fsync and close.
func (t *SSHTarget) Rename(oldname, newname string) error {
	err := t.call(false, func(c *sshConn) error {
		if !c.posixRename {
			return fmt.Errorf("%w, needed to replace %s atomically", ErrNoPosixRename, newname)
		}
		f := c.sftp.flight()
		rn := f.posixRename(oldname, newname)
		dir := c.openDir(f, path.Dir(newname))
		if err := f.send(); err != nil {
			return err
		}
		err := rn.status()
		c.syncDir(dir, err == nil)
		return err
	})
	if err != nil {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err}
	}
	return nil
}

// openDir adds to f the opening of dir for syncDir, when the server can
// fsync (OpenSSH opens a directory read-only like a file and fsyncs the
// handle); nil otherwise.
func (c *sshConn) openDir(f *flight, dir string) *sftpOp {
	if !c.fsync {
		return nil
	}
	return f.open(dir, fxfRead)
}

// syncDir makes a rename durable where the server allows it, in one
// flight: the fsync of the directory opened by openDir (when sync) and its
// close. Best effort, as in Local.Rename: the rename has already taken
// effect.
func (c *sshConn) syncDir(dir *sftpOp, sync bool) {
	if dir == nil {
		return
	}
	h, err := dir.handle()
	if err != nil {
		return
	}
	f := c.sftp.flight()
	if sync {
		f.fsync(h)
	}
	f.closeHandle(h)
	_ = f.send()
}

// WriteFile implements Target: a temporary file next to name, written,
// fsynced (when the server offers fsync@openssh.com), given perm, then
// renamed over name; the temporary file never outlives a failure. Three
// flights: the opening of the file and of its directory; the writes, fsync,
// fsetstat and close; the rename and the directory's fsync and close.
func (t *SSHTarget) WriteFile(name string, data []byte, perm fs.FileMode) error {
	return t.writeFile(name, data, perm, true)
}

// writeFile is WriteFile; without durable, the file keeps the mode the
// server gives it and the directory is not synced.
func (t *SSHTarget) writeFile(name string, data []byte, perm fs.FileMode, durable bool) error {
	err := t.call(false, func(c *sshConn) error {
		if !c.posixRename {
			return fmt.Errorf("%w, needed to replace %s atomically", ErrNoPosixRename, name)
		}
		dir, base := path.Dir(name), path.Base(name)
		tmp := path.Join(dir, "."+base+".tmp-"+rand.Text()[:16])
		f := c.sftp.flight()
		op := f.open(tmp, fxfWrite|fxfCreate|fxfExcl)
		var dirOp *sftpOp
		if durable {
			dirOp = c.openDir(f, dir)
		}
		if err := f.send(); err != nil {
			return err
		}
		h, err := op.handle()
		if err != nil {
			c.syncDir(dirOp, false)
			return err
		}
		f = c.sftp.flight()
		ops := f.write(h, 0, data)
		if c.fsync {
			ops = append(ops, f.fsync(h))
		}
		if durable {
			ops = append(ops, f.chmod(h, perm))
		}
		ops = append(ops, f.closeHandle(h))
		if err := f.send(); err != nil {
			return err
		}
		if err := firstErr(ops); err != nil {
			f = c.sftp.flight()
			f.remove(tmp)
			_ = f.send()
			c.syncDir(dirOp, false)
			return err
		}
		f = c.sftp.flight()
		rn := f.posixRename(tmp, name)
		if err := f.send(); err != nil {
			return err
		}
		if err := rn.status(); err != nil {
			f = c.sftp.flight()
			f.remove(tmp)
			_ = f.send()
			c.syncDir(dirOp, false)
			return err
		}
		c.syncDir(dirOp, true)
		return nil
	})
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// firstErr is the first failure among answered requests.
func firstErr(ops []*sftpOp) error {
	for _, op := range ops {
		if err := op.status(); err != nil {
			return err
		}
	}
	return nil
}

// ReplaceFile implements Target: WriteFile without the fsetstat and the
// directory fsync.
func (t *SSHTarget) ReplaceFile(name string, data []byte) error {
	return t.writeFile(name, data, 0, false)
}

// Remove implements Target: a file, or else an empty directory. Removing
// a path twice does no harm, so a dropped connection gets one retry.
func (t *SSHTarget) Remove(name string) error {
	err := t.call(true, func(c *sshConn) error {
		op, err := ask(c.sftp, func(f *flight) *sftpOp { return f.remove(name) })
		if err != nil {
			return err
		}
		err = op.status()
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if rd, rerr := ask(c.sftp, func(f *flight) *sftpOp { return f.rmdir(name) }); rerr == nil && rd.status() == nil {
			return nil
		}
		return err
	})
	return pathErr("remove", name, err)
}
