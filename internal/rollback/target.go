// Package rollback executes rollbacks: it resolves the previous release on each
// target, switches the `current` link atomically, marks the release rolled away
// from, and runs the policy's after and data steps.
package rollback

import (
	"context"
	"io/fs"
)

// Target is one machine holding releases: the watcher's own filesystem
// (Local) or a host reached over SSH. Paths are absolute paths on the target.
// The methods are the few file operations the switch needs, so that a remote
// target can implement them without spawning a process (SFTP).
type Target interface {
	// Name is "local" or the host as configured ("web1:22").
	Name() string
	Readlink(name string) (string, error)
	// Stat follows symlinks.
	Stat(name string) (fs.FileInfo, error)
	Lstat(name string) (fs.FileInfo, error)
	ReadFile(name string) ([]byte, error)
	// ReadDir lists a directory; entries' FileInfo follow the fs.FileInfo
	// of Lstat (a symlinked release shows as a symlink).
	ReadDir(name string) ([]fs.FileInfo, error)
	Symlink(oldname, newname string) error
	// Rename replaces newname atomically when it exists (rename(2)).
	Rename(oldname, newname string) error
	// WriteFile writes name atomically: temp file, fsync, rename.
	WriteFile(name string, data []byte, perm fs.FileMode) error
	// ReplaceFile writes name atomically like WriteFile (a reader sees the
	// old content or the new, never part of it; the temporary file never
	// outlives a failure) but does not sync the directory afterwards, and
	// the mode is 0644 (0666 less the umask over SSH). It is for files
	// whose loss in a crash costs nothing that matters, such as the
	// ROLLED_BACK marker; over SSH it takes five requests where WriteFile
	// takes nine (three round trips either way).
	ReplaceFile(name string, data []byte) error
	Remove(name string) error
	// Run executes argv (no shell) with extra environment entries
	// ("KEY=value") and returns its combined output.
	Run(ctx context.Context, argv []string, env []string) ([]byte, error)
}
