package rollback

import (
	"context"
	"io/fs"
)

// A view of a target that reads each path once.

// readOnce is a view of a target for one host's rollback in which each path
// is read from the target once: the first answer to Lstat, Stat or Readlink
// of a path is kept and given again, until a change made through the view
// (Symlink, Rename, WriteFile, ReplaceFile, Remove, Run) forgets them all, so
// that a read after a change, such as Switch's read-back of the link, goes
// to the target. Errors are not kept.
//
// Over SSH every read is a round trip through the host's sshd, and the
// layout code asks the same questions more than once: the executor reads
// the link before Resolve reads it again, samePath and checkPrevious both
// look at the previous release, and switching asks again what resolving
// learnt of the release directories. The switch step reuses the plan's view
// with the link forgotten (forgetPath): the link is what a deploy changes
// in between, while a release directory does not turn into a symlink
// during a rollback. A view serves one goroutine at a time.
type readOnce struct {
	Target
	lstat, stat map[string]fs.FileInfo
	link        map[string]string
}

func newReadOnce(t Target) *readOnce { return &readOnce{Target: t} }

func (r *readOnce) forget() { r.lstat, r.stat, r.link = nil, nil, nil }

func remember[V any](m *map[string]V, name string, read func(string) (V, error)) (V, error) {
	if v, ok := (*m)[name]; ok {
		return v, nil
	}
	v, err := read(name)
	if err == nil {
		if *m == nil {
			*m = map[string]V{}
		}
		(*m)[name] = v
	}
	return v, err
}

func (r *readOnce) Lstat(name string) (fs.FileInfo, error) {
	return remember(&r.lstat, name, r.Target.Lstat)
}

// Stat answers from an Lstat of name already made when it found no
// symlink there: Stat and Lstat agree then.
func (r *readOnce) Stat(name string) (fs.FileInfo, error) {
	if fi, ok := r.lstat[name]; ok && fi.Mode()&fs.ModeSymlink == 0 {
		return fi, nil
	}
	return remember(&r.stat, name, r.Target.Stat)
}

// forgetPath drops what was read of name.
func (r *readOnce) forgetPath(name string) {
	delete(r.lstat, name)
	delete(r.stat, name)
	delete(r.link, name)
}

func (r *readOnce) Readlink(name string) (string, error) {
	return remember(&r.link, name, r.Target.Readlink)
}

func (r *readOnce) Symlink(oldname, newname string) error {
	r.forget()
	return r.Target.Symlink(oldname, newname)
}

func (r *readOnce) Rename(oldname, newname string) error {
	r.forget()
	return r.Target.Rename(oldname, newname)
}

func (r *readOnce) WriteFile(name string, data []byte, perm fs.FileMode) error {
	r.forget()
	return r.Target.WriteFile(name, data, perm)
}

func (r *readOnce) ReplaceFile(name string, data []byte) error {
	r.forget()
	return r.Target.ReplaceFile(name, data)
}

func (r *readOnce) Remove(name string) error {
	r.forget()
	return r.Target.Remove(name)
}

func (r *readOnce) Run(ctx context.Context, argv []string, env []string) ([]byte, error) {
	r.forget()
	return r.Target.Run(ctx, argv, env)
}
