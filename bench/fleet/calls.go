package main

import (
	"context"
	"fmt"
	"io/fs"
	"strings"
	"sync"

	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollback"
)

// callCounter counts the Target calls the executor makes, to show where a
// warm rollback's round trips go. It is used for one extra Execute after the
// measured ones, never inside a timed section.
type callCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *callCounter) add(op string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[op]++
}

// dial wraps d so that every target it returns counts its calls.
func (c *callCounter) dial(d rollback.Dialer) rollback.Dialer {
	return func(ctx context.Context, host string, cfg policy.SSH) (rollback.Target, error) {
		t, err := d(ctx, host, cfg)
		if err != nil {
			return nil, err
		}
		return counted{t, c}, nil
	}
}

// sftpRequests is how many SFTP requests each Target call costs an
// SSHTarget (see internal/rollback/ssh.go), for a small file and a server
// with fsync@openssh.com: ReadFile is open, read, read (EOF), close;
// WriteFile is open, write, fsync, fsetstat, close, posix-rename, and a
// directory fsync (open, fsync, close); ReplaceFile is open, write, fsync,
// close, posix-rename; Rename is posix-rename and the directory fsync.
var sftpRequests = map[string]int{"ReadFile": 4, "WriteFile": 9, "ReplaceFile": 5, "Rename": 4}

// summary is "Lstat 16, Readlink 3, ... = N SFTP requests per host".
func (c *callCounter) summary(hosts int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var parts []string
	total := 0
	for _, op := range []string{"Lstat", "Stat", "Readlink", "ReadFile", "ReadDir", "Symlink", "Rename", "WriteFile", "ReplaceFile", "Remove", "Run"} {
		n := c.n[op]
		if n == 0 {
			continue
		}
		per := float64(n) / float64(hosts)
		parts = append(parts, fmt.Sprintf("%s %g", op, per))
		if r, ok := sftpRequests[op]; ok {
			total += n * r
		} else {
			total += n
		}
	}
	return fmt.Sprintf("%s per host = %g SFTP requests per host", strings.Join(parts, ", "), float64(total)/float64(hosts))
}

type counted struct {
	rollback.Target
	c *callCounter
}

func (t counted) Readlink(name string) (string, error) {
	t.c.add("Readlink")
	return t.Target.Readlink(name)
}

func (t counted) Stat(name string) (fs.FileInfo, error) {
	t.c.add("Stat")
	return t.Target.Stat(name)
}

func (t counted) Lstat(name string) (fs.FileInfo, error) {
	t.c.add("Lstat")
	return t.Target.Lstat(name)
}

func (t counted) ReadFile(name string) ([]byte, error) {
	t.c.add("ReadFile")
	return t.Target.ReadFile(name)
}

func (t counted) ReadDir(name string) ([]fs.FileInfo, error) {
	t.c.add("ReadDir")
	return t.Target.ReadDir(name)
}

func (t counted) Symlink(oldname, newname string) error {
	t.c.add("Symlink")
	return t.Target.Symlink(oldname, newname)
}

func (t counted) Rename(oldname, newname string) error {
	t.c.add("Rename")
	return t.Target.Rename(oldname, newname)
}

func (t counted) WriteFile(name string, data []byte, perm fs.FileMode) error {
	t.c.add("WriteFile")
	return t.Target.WriteFile(name, data, perm)
}

func (t counted) ReplaceFile(name string, data []byte) error {
	t.c.add("ReplaceFile")
	return t.Target.ReplaceFile(name, data)
}

func (t counted) Remove(name string) error {
	t.c.add("Remove")
	return t.Target.Remove(name)
}

func (t counted) Run(ctx context.Context, argv []string, env []string) ([]byte, error) {
	t.c.add("Run")
	return t.Target.Run(ctx, argv, env)
}
