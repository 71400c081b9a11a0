package rollback

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// A host's rollback over its SFTP session in as few round trips as the
// layout allows (README "Fleets over SSH"): the plan's reads in two flights
// and the switch with its marker in two, instead of a round trip per
// request. The decisions stay with the layout code (Resolve, planSwitch,
// checkReadBack), which reads what the flights brought from a readOnce
// view; only the order of the requests on the wire is decided here.

// planGuess is what the executor knows of a host before reading anything
// there: the link, the releases directory (when the policy names one) and
// the versions of the request.
type planGuess struct {
	link, releasesDir string
	version           string // the release the request rolls back
	toVersion         string // the release it rolls back to, when named
}

// prefetcher reads ahead, into view, what resolving a host's rollback will
// ask of it. It is an optimisation: whatever it could not read, the layout
// code reads itself.
type prefetcher interface {
	prefetchPlan(view *readOnce, g planGuess)
}

// pipelinedSwitcher does SwitchFrom(view, link, expect, target) and then
// MarkRolledBack(view, expect, m) in one go. switched and marked say what
// got done; an error after switched is the marking's.
type pipelinedSwitcher interface {
	switchAndMark(view *readOnce, link, expect, target string, m Marker) (switched, marked bool, err error)
}

var (
	_ prefetcher        = (*SSHTarget)(nil)
	_ pipelinedSwitcher = (*SSHTarget)(nil)
	_ lstatBatcher      = (*SSHTarget)(nil)
)

// lstatAll implements lstatBatcher: one flight of lstats.
func (t *SSHTarget) lstatAll(paths []string) ([]fs.FileInfo, []error) {
	infos, errs := make([]fs.FileInfo, len(paths)), make([]error, len(paths))
	err := t.call(true, func(c *sshConn) error {
		f := c.sftp.flight()
		ops := make([]*sftpOp, len(paths))
		for i, p := range paths {
			ops[i] = f.lstat(p)
		}
		if err := f.send(); err != nil {
			return err
		}
		for i, op := range ops {
			infos[i], errs[i] = op.info(paths[i])
		}
		return nil
	})
	if err != nil {
		for i := range errs {
			errs[i] = err
		}
	}
	return infos, errs
}

// prefetchPlan reads what Resolve asks, in two flights when the guess is
// right (the link names releases_dir/version):
//
//  1. readlink of the link; for the guessed current release, the opening of
//     its previousVersion file and of the releases directory (or, when the
//     request names the release to go to, the lstat of both releases);
//  2. the read and close of previousVersion; a readdir and close of the
//     releases directory, whose entries answer the lstats of the current and
//     the previous release (OpenSSH lists with lstat(2)).
//
// A wrong guess (the link is elsewhere: a retried request) or no guess
// (no releases_dir or no version) costs one more flight.
func (t *SSHTarget) prefetchPlan(view *readOnce, g planGuess) {
	if !filepath.IsAbs(g.link) {
		return
	}
	link := filepath.Clean(g.link)
	dir := ""
	if filepath.IsAbs(g.releasesDir) {
		dir = filepath.Clean(g.releasesDir)
	}
	_ = t.call(true, func(c *sshConn) error {
		s := c.sftp
		f := s.flight()
		rl := f.readlink(link)
		guess := ""
		var ahead readAhead
		if dir != "" && checkVersion(g.version) == nil {
			guess = filepath.Join(dir, g.version)
			ahead = startAhead(f, guess, dir, g.toVersion)
		}
		if err := f.send(); err != nil {
			return err
		}
		raw, err := rl.target()
		if err != nil {
			// The layout code reads it again and says what is wrong.
			f = s.flight()
			ahead.abandon(f)
			return f.send()
		}
		view.learnLink(link, raw)
		if cur := linkDest(link, raw); cur != guess {
			d := dir
			if d == "" {
				d = filepath.Dir(cur)
			}
			f = s.flight()
			ahead.abandon(f)
			ahead = startAhead(f, cur, d, g.toVersion)
			if err := f.send(); err != nil {
				return err
			}
		}
		return ahead.finish(s, view)
	})
}

// readAhead is the first half of the plan's reads for one current release.
type readAhead struct {
	cur, dir, prev string
	lcur, lprev    *sftpOp // lstats, when the release to go to is named
	pv, d          *sftpOp // opening of previousVersion and of the releases directory
}

func startAhead(f *flight, cur, dir, toVersion string) readAhead {
	a := readAhead{cur: cur, dir: dir}
	if toVersion != "" && checkVersion(toVersion) == nil {
		a.prev = filepath.Join(dir, toVersion)
		a.lcur, a.lprev = f.lstat(cur), f.lstat(a.prev)
		return a
	}
	a.pv = f.open(filepath.Join(cur, PreviousVersionFile), fxfRead)
	a.d = f.opendir(dir)
	return a
}

// abandon adds to f the closing of what a wrong guess opened.
func (a readAhead) abandon(f *flight) {
	for _, op := range []*sftpOp{a.pv, a.d} {
		if op == nil {
			continue
		}
		if h, err := op.handle(); err == nil {
			f.closeHandle(h)
		}
	}
}

// finish sends the second flight and tells view what the two brought.
func (a readAhead) finish(s *sftpConn, view *readOnce) error {
	if a.lcur != nil {
		learnInfo(view, a.cur, a.lcur)
		learnInfo(view, a.prev, a.lprev)
		return nil
	}
	pvFile := filepath.Join(a.cur, PreviousVersionFile)
	f := s.flight()
	var rd *sftpOp
	pvh, pverr := a.pv.handle()
	switch {
	case pverr == nil:
		rd = f.read(pvh, 0, sftpChunk)
		f.closeHandle(pvh)
	case errors.Is(pverr, fs.ErrNotExist):
		view.learnMissing(pvFile)
	}
	var listing []*sftpOp
	dh, derr := a.d.handle()
	switch {
	case derr == nil:
		// Without previousVersion the newest release is chosen from the
		// whole listing: a second readdir tells that it is complete (up
		// to 100 entries, which OpenSSH sends in one answer).
		n := 1
		if pverr != nil {
			n = 2
		}
		for range n {
			listing = append(listing, f.readdir(dh))
		}
		f.closeHandle(dh)
	case errors.Is(derr, fs.ErrNotExist):
		view.learnMissing(a.dir)
	}
	if err := f.send(); err != nil {
		return err
	}
	if rd != nil {
		switch b, err := rd.data(); {
		case errors.Is(err, io.EOF):
			view.learnFile(pvFile, nil)
		case err == nil && len(b) < sftpChunk:
			view.learnFile(pvFile, b)
		}
	}
	var infos []fs.FileInfo
	complete := false
	for _, op := range listing {
		es, err := op.entries()
		if errors.Is(err, io.EOF) {
			complete = true
			break
		}
		if err != nil {
			break
		}
		infos = append(infos, es...)
	}
	view.learnDir(a.dir, infos, complete)
	return nil
}

func learnInfo(view *readOnce, p string, op *sftpOp) {
	fi, err := op.info(p)
	switch {
	case err == nil:
		view.learnLstat(p, fi)
	case errors.Is(err, fs.ErrNotExist):
		view.learnMissing(p)
	}
}

// switchAndMark switches link from expect to target and marks expect
// rolled back, in two flights:
//
//  1. readlink of the link (a link that moved since the plan is refused,
//     nothing changed); the opening of the link's directory, and the
//     creation of the marker's temporary file, made in target;
//  2. the temporary link, its rename over the link, the directory's fsync,
//     the link read back; the marker's content, fsync and close, then its
//     rename into expect from link/<its name>.
//
// The marker's rename resolves its source through the link, so it finds
// the temporary file only where the link names target when the rename
// runs: the server puts the marker in place exactly when the switch took
// effect, without the round trip that waiting for the read-back would
// cost. When that rename fails all the same (target and expect on two
// filesystems), the marker is left to MarkRolledBack: marked is false with
// no error.
//
// Each change is sent only once the answers it depends on are in, as
// SwitchFrom makes them one by one; what is decided (where the link
// stands, its style, the read-back) is decided by the same code. A failure
// leaves no temporary file behind, except when the connection drops, after
// which converge's retry removes them.
func (t *SSHTarget) switchAndMark(view *readOnce, link, expect, target string, m Marker) (switched, marked bool, err error) {
	data, err := markerJSON(m)
	if err != nil {
		return false, false, err
	}
	link, expect, target = filepath.Clean(link), filepath.Clean(expect), filepath.Clean(target)
	markerFile := filepath.Join(expect, MarkerFile)
	markerTmp, linkTmp := tempName(filepath.Join(target, MarkerFile)), tempName(link)
	// decided is the outcome when the host answered: a refusal, or a
	// marker that could not be put in place. The operation itself fails
	// only when the connection does, so that call probes it only then.
	var decided error
	err = t.call(false, func(c *sshConn) error {
		if !c.posixRename {
			return fmt.Errorf("%w, needed to replace %s atomically", ErrNoPosixRename, link)
		}
		s := c.sftp
		f := s.flight()
		rl := f.readlink(link)
		dirOp := c.openDir(f, filepath.Dir(link))
		mo := f.open(markerTmp, fxfWrite|fxfCreate|fxfExcl)
		if err := f.send(); err != nil {
			return err
		}
		dh, derr := handleOf(dirOp)
		mh, merr := mo.handle()
		// cleanup removes what was made for a switch or a marker that
		// will not happen.
		cleanup := func(f *flight, temps ...string) error {
			for _, tmp := range temps {
				f.remove(tmp)
			}
			return f.send()
		}
		raw, rerr := rl.target()
		_, content, done, err := planSwitch(view, link, expect, target, raw, rerr)
		if err != nil {
			f = s.flight()
			if derr == nil {
				f.closeHandle(dh)
			}
			var temps []string
			if merr == nil {
				f.closeHandle(mh)
				temps = append(temps, markerTmp)
			}
			_ = cleanup(f, temps...)
			decided = err
			return nil
		}

		f = s.flight()
		var sym, rn, rb, mr *sftpOp
		if !done {
			sym = f.symlink(content, linkTmp)
			rn = f.posixRename(linkTmp, link)
			if derr == nil {
				f.fsync(dh)
			}
			rb = f.readlink(link)
		}
		if derr == nil {
			f.closeHandle(dh)
		}
		var writes []*sftpOp
		if merr == nil {
			writes = f.write(mh, 0, data)
			if c.fsync {
				writes = append(writes, f.fsync(mh))
			}
			writes = append(writes, f.closeHandle(mh))
			mr = f.posixRename(throughLink(link, markerTmp), markerFile)
		}
		if err := f.send(); err != nil {
			return err
		}
		// leftover is the marker's temporary file when its rename did not
		// take it away.
		leftover := func() []string {
			if merr != nil || mr.status() == nil {
				return nil
			}
			return []string{markerTmp}
		}
		if !done {
			failed := func(op, oldname, newname string, err error) error {
				temps := leftover()
				if op == "rename" {
					temps = append(temps, linkTmp)
				}
				_ = cleanup(s.flight(), temps...)
				return fmt.Errorf("switch %s to %s: %w (link names %s)", link, target,
					&os.LinkError{Op: op, Old: oldname, New: newname, Err: err}, standsAt(link, rb))
			}
			if err := sym.status(); err != nil {
				return failed("symlink", content, linkTmp, err)
			}
			if err := rn.status(); err != nil {
				return failed("rename", linkTmp, link, err)
			}
			view.forget()
			raw, err := rb.target()
			if err := checkReadBack(view, link, target, raw, err); err != nil {
				if temps := leftover(); temps != nil {
					_ = cleanup(s.flight(), temps...)
				}
				decided = err
				return nil
			}
		}
		switched = true
		if merr != nil {
			decided = fmt.Errorf("mark rolled back: write %s: %w", markerFile, merr)
			return nil
		}
		if err := firstErr(writes); err != nil {
			_ = cleanup(s.flight(), leftover()...)
			decided = fmt.Errorf("mark rolled back: write %s: %w", markerFile, err)
			return nil
		}
		if temps := leftover(); temps != nil {
			// MarkRolledBack writes it the ordinary way.
			_ = cleanup(s.flight(), temps...)
			return nil
		}
		marked = true
		return nil
	})
	if err == nil {
		err = decided
	}
	return switched, marked, err
}

// throughLink is the path of tmp, made in the release the link is switched
// to, as reached through the link (a test points it elsewhere to see the
// marker written the ordinary way).
var throughLink = func(link, tmp string) string {
	return filepath.Join(link, filepath.Base(tmp))
}

// handleOf is the handle op opened, or why there is none (op nil: not
// asked).
func handleOf(op *sftpOp) (string, error) {
	if op == nil {
		return "", errors.New("not opened")
	}
	return op.handle()
}

// standsAt describes where link stands from its read-back, for an error
// message after a failed switch (as where does).
func standsAt(link string, rb *sftpOp) string {
	raw, err := rb.target()
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "nothing: it does not exist"
	case err != nil:
		return "an unknown release: " + err.Error()
	}
	return linkDest(link, raw)
}
