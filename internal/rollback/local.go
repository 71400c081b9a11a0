package rollback

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// maxRunOutput bounds what Run keeps of a command's output: an after or data
// step that floods its output must not grow the daemon's memory, and the audit
// record only needs enough to say why a step failed.
const maxRunOutput = 64 << 10

// runWaitDelay bounds how long Run waits for the output pipe to close after
// the command has exited or its context is done. Without it, a grandchild
// that inherited the pipe (a daemon started by a reload script) would keep
// Run from returning for as long as it lives.
const runWaitDelay = 5 * time.Second

// Local is the watcher's own filesystem as a Target.
type Local struct{}

var _ Target = Local{}

// Name implements Target.
func (Local) Name() string { return "local" }

// The single-call methods return the os errors unchanged: they are already
// *fs.PathError (or *os.LinkError) naming the operation and the path, and
// wrapping them again would repeat both in every message.

// Readlink implements Target.
func (Local) Readlink(name string) (string, error) { return os.Readlink(name) }

// Stat implements Target.
func (Local) Stat(name string) (fs.FileInfo, error) { return os.Stat(name) }

// Lstat implements Target.
func (Local) Lstat(name string) (fs.FileInfo, error) { return os.Lstat(name) }

// ReadFile implements Target.
func (Local) ReadFile(name string) ([]byte, error) { return os.ReadFile(name) }

// Symlink implements Target.
func (Local) Symlink(oldname, newname string) error { return os.Symlink(oldname, newname) }

// Remove implements Target.
func (Local) Remove(name string) error { return os.Remove(name) }

// ReadDir implements Target. Entries removed between the listing and their
// Lstat are left out rather than failing the listing: a release being deleted
// by a cleanup job is not a reason to fail a rollback.
func (Local) ReadDir(name string) ([]fs.FileInfo, error) {
	entries, err := os.ReadDir(name)
	if err != nil {
		return nil, err
	}
	infos := make([]fs.FileInfo, 0, len(entries))
	for _, e := range entries {
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		infos = append(infos, fi)
	}
	return infos, nil
}

// Rename implements Target. The parent directory of newname is synced
// afterwards so that a switch survives a crash; that sync is best effort,
// because the rename has already taken effect and an error here would make
// the caller believe the link still stands where it was.
func (Local) Rename(oldname, newname string) error {
	if err := os.Rename(oldname, newname); err != nil {
		return err
	}
	_ = syncDir(filepath.Dir(newname))
	return nil
}

// WriteFile implements Target: a reader sees either the old content or the
// new one, never a partial file, and the temporary file never outlives a
// failed write.
func (l Local) WriteFile(name string, data []byte, perm fs.FileMode) error {
	return l.writeFile(name, data, perm, true)
}

func (Local) writeFile(name string, data []byte, perm fs.FileMode, durable bool) (err error) {
	dir, base := filepath.Dir(name), filepath.Base(name)
	f, err := os.CreateTemp(dir, "."+base+".tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	closed := false
	defer func() {
		if err == nil {
			return
		}
		if !closed {
			_ = f.Close()
		}
		if tmp != "" {
			_ = os.Remove(tmp)
		}
		err = fmt.Errorf("write %s: %w", name, err)
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	// CreateTemp makes the file 0600; set the requested mode exactly (not
	// masked by the umask) so that the file does not depend on how the
	// daemon was started.
	if err := f.Chmod(perm); err != nil {
		return err
	}
	closed = true
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, name); err != nil {
		return err
	}
	tmp = ""
	if !durable {
		return nil
	}
	return syncDir(dir)
}

// ReplaceFile implements Target.
func (l Local) ReplaceFile(name string, data []byte) error {
	return l.writeFile(name, data, 0o644, false)
}

// syncDir makes a rename in dir durable. File systems that cannot sync a
// directory (EINVAL, ENOTSUP on some FUSE and network mounts) are accepted:
// they offer no stronger guarantee to wait for.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOTSUP) {
		err = nil
	}
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Run implements Target. argv goes to execve as is: no shell ever sees it,
// so values from events or templates cannot inject commands.
func (Local) Run(ctx context.Context, argv []string, env []string) ([]byte, error) {
	if len(argv) == 0 || argv[0] == "" {
		return nil, errors.New("run: empty command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = runWaitDelay
	out := &cappedOutput{}
	// The same comparable writer for both streams: exec then serialises the
	// writes, so out needs no lock, and the streams interleave as they came.
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("run %s: %w", argv[0], err)
	}
	return out.Bytes(), nil
}

// cappedOutput keeps the first and the last half of maxRunOutput of what is
// written to it: the start says what the command was doing, the end usually
// says why it failed.
type cappedOutput struct {
	head  []byte
	tail  []byte
	total int64
}

func (c *cappedOutput) Write(p []byte) (int, error) {
	n := len(p)
	c.total += int64(n)
	const half = maxRunOutput / 2
	if room := half - len(c.head); room > 0 {
		k := min(room, len(p))
		c.head = append(c.head, p[:k]...)
		p = p[k:]
	}
	c.tail = append(c.tail, p...)
	// Compact only when tail has grown to twice what is kept, so that a
	// command writing byte by byte costs amortised O(1) per byte.
	if len(c.tail) > 2*half {
		c.tail = append(c.tail[:0], c.tail[len(c.tail)-half:]...)
	}
	return n, nil
}

// Bytes returns the output, with a marker line where bytes were dropped.
func (c *cappedOutput) Bytes() []byte {
	if c.total <= maxRunOutput {
		return append(bytes.Clone(c.head), c.tail...)
	}
	const half = maxRunOutput / 2
	tail := c.tail[len(c.tail)-half:]
	omitted := c.total - int64(len(c.head)) - int64(len(tail))
	out := bytes.Clone(c.head)
	out = fmt.Appendf(out, "\n[... %d bytes of output truncated ...]\n", omitted)
	return append(out, tail...)
}
