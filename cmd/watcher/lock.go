package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockFile is the file in --storage.path whose lock says that a watcher's
// embedded server stores its JetStream data there.
const lockFile = "watcher.lock"

// lockStorage takes the storage path for this process, or says which
// process has it. Two embedded servers writing one JetStream store corrupt
// it, and nats-server does not prevent it. The lock is flock(2) on a file
// kept open for the process's life, so the kernel releases it however the
// process ends (SIGKILL included): a stale lock file never blocks a
// restart. The file holds the holder's pid, for the message only.
func lockStorage(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("--storage.path %s: %w", dir, err)
	}
	name := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("--storage.path %s: cannot open its lock file: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := "another process"
		if b, rerr := os.ReadFile(name); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
				holder = "pid " + strconv.Itoa(pid)
			}
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("--storage.path %s is in use by another watcher (%s, which holds %s): "+
				"give each watcher its own --storage.path, or point this one at the other's NATS with --nats.url", dir, holder, name)
		}
		return nil, fmt.Errorf("--storage.path %s: cannot lock %s: %w", dir, name, err)
	}
	// The pid is only information for the next one refused: a failure to
	// write it does not matter.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() {
		// Empty the file before releasing it, so that a pid is never
		// shown for a lock that nobody holds.
		_ = f.Truncate(0)
		f.Close()
	}, nil
}
