package rollback

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
)

// A view of a target that reads each path once.

// readOnce is a view of a target for one host's rollback in which each path
// is read from the target once: the first answer to Lstat, Stat, Readlink,
// ReadFile or ReadDir of a path is kept and given again, until a change made
// through the view (Symlink, Rename, WriteFile, ReplaceFile, Remove, Run)
// forgets them all, so that a read after a change, such as Switch's
// read-back of the link, goes to the target. Errors are not kept, except
// that a path is missing: a target that reads ahead (prefetcher) says so
// with learnMissing.
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
	file        map[string][]byte
	dir         map[string][]fs.FileInfo
	missing     map[string]bool
}

func newReadOnce(t Target) *readOnce { return &readOnce{Target: t} }

func (r *readOnce) forget() {
	r.lstat, r.stat, r.link, r.file, r.dir, r.missing = nil, nil, nil, nil, nil, nil
}

func remember[V any](r *readOnce, m *map[string]V, op, name string, read func(string) (V, error)) (V, error) {
	if v, ok := (*m)[name]; ok {
		return v, nil
	}
	if r.missing[name] {
		var zero V
		return zero, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
	}
	v, err := read(name)
	if err == nil {
		learn(m, name, v)
	}
	return v, err
}

func learn[V any](m *map[string]V, name string, v V) {
	if *m == nil {
		*m = map[string]V{}
	}
	(*m)[name] = v
}

func (r *readOnce) Lstat(name string) (fs.FileInfo, error) {
	return remember(r, &r.lstat, "lstat", name, r.Target.Lstat)
}

// Stat answers from an Lstat of name already made when it found no
// symlink there: Stat and Lstat agree then.
func (r *readOnce) Stat(name string) (fs.FileInfo, error) {
	if fi, ok := r.lstat[name]; ok && fi.Mode()&fs.ModeSymlink == 0 {
		return fi, nil
	}
	return remember(r, &r.stat, "stat", name, r.Target.Stat)
}

func (r *readOnce) ReadFile(name string) ([]byte, error) {
	return remember(r, &r.file, "open", name, r.Target.ReadFile)
}

// ReadDir keeps a listing, and each entry as the answer to an Lstat of
// it (the Target contract: entries are described as by Lstat).
func (r *readOnce) ReadDir(name string) ([]fs.FileInfo, error) {
	infos, err := remember(r, &r.dir, "readdir", name, r.Target.ReadDir)
	if err == nil {
		r.learnDir(name, infos, true)
	}
	return infos, err
}

// forgetPath drops what was read of name.
func (r *readOnce) forgetPath(name string) {
	delete(r.lstat, name)
	delete(r.stat, name)
	delete(r.link, name)
	delete(r.file, name)
	delete(r.dir, name)
	delete(r.missing, name)
}

// What a target that reads ahead tells the view, as if it had been asked.

func (r *readOnce) learnLink(name, content string)         { learn(&r.link, name, content) }
func (r *readOnce) learnLstat(name string, fi fs.FileInfo) { learn(&r.lstat, name, fi) }
func (r *readOnce) learnFile(name string, b []byte)        { learn(&r.file, name, b) }
func (r *readOnce) learnMissing(name string)               { learn(&r.missing, name, true) }

// lstatBatcher answers several Lstats in one round trip.
type lstatBatcher interface {
	lstatAll(paths []string) ([]fs.FileInfo, []error)
}

// lstatAhead reads the Lstat of paths not known yet in one go, when the
// target can (over SSH, one flight), before they are asked one by one.
func (r *readOnce) lstatAhead(paths []string) {
	b, ok := r.Target.(lstatBatcher)
	if !ok {
		return
	}
	var todo []string
	for _, p := range paths {
		if _, known := r.lstat[p]; !known && !r.missing[p] && !slices.Contains(todo, p) {
			todo = append(todo, p)
		}
	}
	if len(todo) < 2 {
		return
	}
	infos, errs := b.lstatAll(todo)
	for i, p := range todo {
		switch {
		case errs[i] == nil:
			r.learnLstat(p, infos[i])
		case errors.Is(errs[i], fs.ErrNotExist):
			r.learnMissing(p)
		}
	}
}

// learnDir keeps the entries of dir as Lstat answers and, when the listing
// is complete, as the answer to ReadDir(dir).
func (r *readOnce) learnDir(dir string, infos []fs.FileInfo, complete bool) {
	for _, fi := range infos {
		learn(&r.lstat, filepath.Join(dir, fi.Name()), fi)
	}
	if complete {
		learn(&r.dir, dir, infos)
	}
}

func (r *readOnce) Readlink(name string) (string, error) {
	return remember(r, &r.link, "readlink", name, r.Target.Readlink)
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
