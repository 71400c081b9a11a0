package rollback

import (
	"cmp"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/rollback-watcher/watcher/internal/events"
)

// Everything in this file reaches the target only through Target, so that
// the same code switches links on the watcher's own filesystem and over SFTP.
// Paths are target paths: absolute and slash-separated.

const (
	// MarkerFile in a release directory says the release was rolled back
	// from; it holds a Marker as JSON.
	MarkerFile = "ROLLED_BACK"
	// PreviousVersionFile in a release directory holds the path (or the
	// name inside the releases directory) of the release that was current
	// before it was activated.
	PreviousVersionFile = "previousVersion"
)

// Where Release.Previous came from.
const (
	// SourceEvent: the deploy event's previous_version. Resolve cannot tell
	// an event's version from a requested one; the caller that passed it
	// relabels Source.
	SourceEvent           = "event"
	SourcePreviousVersion = "previousVersion"
	SourceNewest          = "newest"
	SourceRequested       = "requested"
)

var (
	// ErrNoPrevious: there is no release to roll back to, or the one named
	// does not exist. Retrying will not help until someone fixes the host.
	ErrNoPrevious = errors.New("no previous release")
	// ErrNotSymlink: the link path exists but is not a symbolic link. It is
	// never replaced: a real directory there is someone else's layout.
	ErrNotSymlink = errors.New("not a symbolic link")
	// ErrInvalidVersion: a version is not a single path element.
	ErrInvalidVersion = errors.New("invalid version")
	// ErrLinkMismatch: after a switch, the link read back does not name the
	// release it was switched to (someone else switched it meanwhile).
	ErrLinkMismatch = errors.New("link does not name the expected release")
	// ErrLinkMoved: before a switch, the link no longer names the release
	// the rollback was planned from; nothing was changed.
	ErrLinkMoved = errors.New("link moved since the rollback was planned")
	// ErrOutsideReleases: a release to switch to or mark resolves outside
	// the releases directory; nothing was changed.
	ErrOutsideReleases = errors.New("outside the releases directory")
)

// layoutError carries a message that reads well on its own while still
// matching its kind (ErrNoPrevious, ...) and its cause with errors.Is/As.
type layoutError struct {
	kind  error
	cause error
	msg   string
}

func (e *layoutError) Error() string {
	if e.cause != nil {
		return e.msg + ": " + e.cause.Error()
	}
	return e.msg
}

func (e *layoutError) Unwrap() []error {
	if e.cause != nil {
		return []error{e.kind, e.cause}
	}
	return []error{e.kind}
}

func newError(kind, cause error, format string, args ...any) error {
	return &layoutError{kind: kind, cause: cause, msg: fmt.Sprintf(format, args...)}
}

// Release is where a link stands and where a rollback would take it.
type Release struct {
	Link string
	// LinkTarget is the link's content as read, relative or absolute.
	LinkTarget string
	// Current is the release the link names, absolute and cleaned (not
	// resolved through further symlinks).
	Current string
	// Previous is the release to roll back to. Previous == Current means
	// the target is already there (a retried rollback): switching is a
	// no-op and nothing must be marked.
	Previous    string
	ReleasesDir string
	// PreviousSource says where Previous came from: one of the Source*
	// constants.
	PreviousSource string
}

// Resolve reads link and decides which release a rollback switches it to.
//
// The previous release is, in order: wantVersion (releasesDir/wantVersion)
// when non-empty; the previousVersion file of the current release, when it
// exists; the newest other release in releasesDir without a ROLLED_BACK
// marker. The first source that applies decides: if it names a release that
// does not exist, Resolve fails with ErrNoPrevious instead of guessing with
// the next source.
//
// An empty releasesDir means the directory holding the current release.
//
// When wantVersion names the current release, Resolve returns Previous ==
// Current: the target was already rolled back (for instance by an earlier
// attempt of the same request).
func Resolve(t Target, link, releasesDir, wantVersion string) (Release, error) {
	if err := checkAbs("link", link); err != nil {
		return Release{}, err
	}
	link = filepath.Clean(link)
	raw, cur, err := readLink(t, link)
	if err != nil {
		return Release{}, err
	}
	if releasesDir == "" {
		releasesDir = filepath.Dir(cur)
	}
	if err := checkAbs("releases directory", releasesDir); err != nil {
		return Release{}, err
	}
	rel := Release{Link: link, LinkTarget: raw, Current: cur, ReleasesDir: filepath.Clean(releasesDir)}
	// The release rolled away from gets the ROLLED_BACK marker: a link
	// that names something outside the releases directory (current ->
	// /etc) must not make the watcher write there.
	if err := checkInside(t, rel.ReleasesDir, cur, fmt.Sprintf("link %s names", link)); err != nil {
		return Release{}, err
	}
	if err := resolvePrevious(t, &rel, wantVersion); err != nil {
		return Release{}, err
	}
	if rel.Previous != rel.Current {
		if err := checkInside(t, rel.ReleasesDir, rel.Previous, "the previous release"); err != nil {
			return Release{}, err
		}
	}
	return rel, nil
}

// resolvePrevious fills in rel.Previous and rel.PreviousSource for a release
// rel.Current in rel.ReleasesDir (see Resolve for the order of sources).
func resolvePrevious(t Target, rel *Release, wantVersion string) error {
	cur := rel.Current
	if wantVersion != "" {
		if err := checkVersion(wantVersion); err != nil {
			return err
		}
		rel.Previous = filepath.Join(rel.ReleasesDir, wantVersion)
		rel.PreviousSource = SourceRequested
		if samePath(t, rel.Previous, cur) {
			rel.Previous = cur
			return nil
		}
		return checkPrevious(t, *rel, fmt.Sprintf("requested version %s", wantVersion))
	}

	pvFile := filepath.Join(cur, PreviousVersionFile)
	data, err := t.ReadFile(pvFile)
	switch {
	case err == nil:
		prev, err := parsePreviousVersion(pvFile, string(data), rel.ReleasesDir)
		if err != nil {
			return err
		}
		rel.Previous, rel.PreviousSource = prev, SourcePreviousVersion
		if samePath(t, prev, cur) {
			return newError(ErrNoPrevious, nil,
				"%s names the current release %s", pvFile, cur)
		}
		return checkPrevious(t, *rel, "from previousVersion file "+pvFile)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("read %s: %w", pvFile, err)
	}

	prev, err := newestRelease(t, rel.ReleasesDir, cur)
	if err != nil {
		return err
	}
	rel.Previous, rel.PreviousSource = prev, SourceNewest
	return checkPrevious(t, *rel, "newest in "+rel.ReleasesDir)
}

// checkInside fails unless p resolves, through every symlink, to a path
// strictly inside dir (itself resolved): whatever a previousVersion file,
// a symlinked entry of the releases directory or the link says, the
// watcher switches to and marks only releases in it.
//
// The usual case costs nothing over SFTP: a direct entry of dir that is no
// symlink (its Lstat is already known to the caller's view) is inside
// whatever dir resolves to. Only a symlink, or a path elsewhere, is walked.
func checkInside(t Target, dir, p, what string) error {
	dir, p = filepath.Clean(dir), filepath.Clean(p)
	if filepath.Dir(p) == dir {
		if fi, err := t.Lstat(p); err == nil && fi.Mode()&fs.ModeSymlink == 0 {
			return nil
		}
	}
	if _, err := t.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return newError(ErrNoPrevious, err, "releases directory %s", dir)
	}
	dirReal := realPathOr(t, dir)
	pReal, err := walkSymlinks(t, "/", p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			// Not there at all: checkPrevious or the switch says so.
			pReal = filepath.Clean(p)
		} else {
			return newError(ErrOutsideReleases, err, "%s %s, which cannot be resolved to check that it is inside the releases directory %s", what, p, dir)
		}
	}
	if strings.HasPrefix(pReal, dirReal+"/") {
		return nil
	}
	shown := p
	if pReal != p {
		shown = p + " (" + pReal + ")"
	}
	return newError(ErrOutsideReleases, nil,
		"%s %s, outside the releases directory %s: refusing to switch to or mark it; nothing changed", what, shown, dir)
}

// checkPrevious makes sure rel.Previous is a directory before anything is
// changed, so that a bad previousVersion fails the rollback untouched.
func checkPrevious(t Target, rel Release, from string) error {
	fi, err := t.Stat(rel.Previous)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return newError(ErrNoPrevious, nil, "previous release %s (%s) does not exist", rel.Previous, from)
	case err != nil:
		return fmt.Errorf("previous release %s (%s): %w", rel.Previous, from, err)
	case !fi.IsDir():
		return newError(ErrNoPrevious, nil, "previous release %s (%s) is not a directory", rel.Previous, from)
	}
	return nil
}

// parsePreviousVersion accepts what deploy tools write there: an absolute
// path (`readlink -f current`) or a bare release name. A relative path with
// slashes is refused rather than guessed at: relative to what would depend
// on the tool that wrote it.
func parsePreviousVersion(file, content, releasesDir string) (string, error) {
	s := strings.TrimSpace(content)
	bad := func(why string) error {
		return newError(ErrNoPrevious, nil,
			"%s: %q is %s; want an absolute path or a release name in %s", file, s, why, releasesDir)
	}
	switch {
	case s == "":
		return "", bad("empty")
	case strings.ContainsAny(s, "\x00\n\r"):
		return "", bad("more than one line")
	case slices.Contains(strings.Split(s, "/"), ".."):
		return "", bad(`a path with ".."`)
	case filepath.IsAbs(s):
		return filepath.Clean(s), nil
	case strings.Contains(s, "/"):
		return "", bad("a relative path")
	case s == ".":
		return "", bad("not a release name")
	}
	return filepath.Join(releasesDir, s), nil
}

// checkVersion re-checks what event validation already enforced, because a
// version joined to the releases directory must not climb out of it.
func checkVersion(v string) error {
	if v == "" || v == "." || v == ".." || strings.ContainsAny(v, "/\x00") {
		return newError(ErrInvalidVersion, nil, "version %q is not a release name", v)
	}
	return nil
}

// validRelease reports whether name is a version, as deploy events must
// spell one (events.VersionPattern).
func validRelease(name string) bool {
	return name != "." && name != ".." && !strings.Contains(name, "..") && events.VersionPattern.MatchString(name)
}

func checkAbs(what, p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%s %q is not an absolute path", what, p)
	}
	return nil
}

// readLink returns the raw content of link and the release it names,
// absolute and cleaned. The link is read first and examined only when that
// fails: over SSH the usual case then costs one round trip, not two.
func readLink(t Target, link string) (raw, abs string, err error) {
	raw, err = t.Readlink(link)
	return judgeLink(t, link, raw, err)
}

// judgeLink is readLink's reading of what Readlink(link) returned, for a
// caller that asked for it along with other requests.
func judgeLink(t Target, link, raw string, err error) (string, string, error) {
	if err != nil {
		if fi, lerr := t.Lstat(link); lerr == nil && fi.Mode()&fs.ModeSymlink == 0 {
			return "", "", newError(ErrNotSymlink, nil, "link %s is a %s, not a symbolic link", link, fileKind(fi))
		}
		return "", "", fmt.Errorf("link: %w", err)
	}
	return raw, linkDest(link, raw), nil
}

// linkDest resolves a link's content the way the kernel does for the last
// step: relative to the directory holding the link.
func linkDest(link, raw string) string {
	if filepath.IsAbs(raw) {
		return filepath.Clean(raw)
	}
	return filepath.Join(filepath.Dir(link), raw)
}

func fileKind(fi fs.FileInfo) string {
	switch {
	case fi.IsDir():
		return "directory"
	case fi.Mode().IsRegular():
		return "regular file"
	default:
		return fi.Mode().Type().String()
	}
}

// newestRelease picks the release to roll back to when nothing names one.
//
// Candidates are the entries of releasesDir that are directories or symlinks
// to directories, except hidden entries (temporary files), the current
// release and releases with a ROLLED_BACK marker. The newest is the one with
// the latest modification time of the release directory (followed through a
// symlink); Activate refreshes it by writing previousVersion there, so it
// approximates the last deploy. Equal times are broken by name, the higher
// name winning, because release names are usually dates or build numbers.
func newestRelease(t Target, releasesDir, cur string) (string, error) {
	infos, err := t.ReadDir(releasesDir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", newError(ErrNoPrevious, err, "releases directory %s", releasesDir)
	}
	if err != nil {
		return "", fmt.Errorf("releases directory: %w", err)
	}
	// Identity goes by the path with symlinks resolved: a releases directory
	// configured through a symlinked path (/srv/shop -> /data/shop) must
	// still recognise the current release, or a rollback would "switch" to
	// where it already is and report success.
	curReal := realPathOr(t, cur)
	dirReal := realPathOr(t, releasesDir)

	type candidate struct {
		path  string
		mtime time.Time
	}
	var cands []candidate
	for _, fi := range infos {
		name := fi.Name()
		if strings.HasPrefix(name, ".") || !validRelease(name) {
			// Hidden entries are temporary files; a name that is not a
			// version (a newline in it, say) was not made by a deploy and
			// would pass into templates and commands as a version.
			continue
		}
		p := filepath.Join(releasesDir, name)
		realPath := filepath.Join(dirReal, name)
		mtime := fi.ModTime()
		switch {
		case fi.IsDir():
		case fi.Mode()&fs.ModeSymlink != 0:
			st, err := t.Stat(p)
			if err != nil || !st.IsDir() {
				continue // dangling or not a release
			}
			mtime = st.ModTime()
			if r, err := walkSymlinks(t, dirReal, name); err == nil {
				realPath = r
			}
		default:
			continue
		}
		if p == cur || realPath == curReal {
			continue
		}
		cands = append(cands, candidate{p, mtime})
	}
	slices.SortFunc(cands, func(a, b candidate) int {
		if c := b.mtime.Compare(a.mtime); c != 0 {
			return c
		}
		return cmp.Compare(b.path, a.path)
	})
	// Markers are checked newest first; over SSH they are read all at once.
	if ro, ok := t.(*readOnce); ok {
		markers := make([]string, len(cands))
		for i, c := range cands {
			markers[i] = filepath.Join(c.path, MarkerFile)
		}
		ro.lstatAhead(markers)
	}
	for _, c := range cands {
		marked, err := RolledBack(t, c.path)
		if err != nil {
			return "", err
		}
		if !marked {
			return c.path, nil
		}
	}
	return "", newError(ErrNoPrevious, nil,
		"no release in %s other than %s that is not marked %s", releasesDir, cur, MarkerFile)
}

// samePath reports whether a and b name the same file, resolving symlinks
// through the target. Paths that cannot be resolved compare as written.
//
// The usual question, "is the previous release the current one?", is asked
// of two entries of one releases directory: when neither is a symlink they
// are two directories (or files) of their own, and the answer costs two
// Lstats instead of a walk from "/" (one Lstat per path component).
func samePath(t Target, a, b string) bool {
	a, b = filepath.Clean(a), filepath.Clean(b)
	if a == b {
		return true
	}
	if filepath.Dir(a) == filepath.Dir(b) {
		fa, erra := t.Lstat(a)
		fb, errb := t.Lstat(b)
		if erra == nil && errb == nil && fa.IsDir() && fb.IsDir() {
			return false // two directory entries, neither a symlink
		}
	}
	return realPathOr(t, a) == realPathOr(t, b)
}

func realPathOr(t Target, p string) string {
	r, err := walkSymlinks(t, "/", p)
	if err != nil {
		return filepath.Clean(p)
	}
	return r
}

// maxSymlinks matches Linux's limit on links followed in one lookup.
const maxSymlinks = 40

// walkSymlinks is filepath.EvalSymlinks over a Target: it resolves rest
// against base, which must already be free of symlinks. Target has no
// realpath, and an SFTP server's realpath extension is not reliable enough
// to decide which release is current.
func walkSymlinks(t Target, base, rest string) (string, error) {
	resolved := base
	todo := strings.Split(rest, "/")
	ahead := true
	for links := 0; len(todo) > 0; {
		if ahead {
			// Over SSH, the whole path in one round trip, not one a step.
			lstatAhead(t, resolved, todo)
			ahead = false
		}
		elem := todo[0]
		todo = todo[1:]
		switch elem {
		case "", ".":
			continue
		case "..":
			resolved = filepath.Dir(resolved)
			continue
		}
		next := filepath.Join(resolved, elem)
		fi, err := t.Lstat(next)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if links++; links > maxSymlinks {
			return "", fmt.Errorf("%s: too many levels of symbolic links", next)
		}
		dest, err := t.Readlink(next)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(dest) {
			resolved = "/"
		}
		todo = append(strings.Split(dest, "/"), todo...)
		ahead = true
	}
	return resolved, nil
}

// lstatAhead asks a view for the Lstat of every step of base/elems (up to
// a ".."), all at once, before a walk asks them one by one.
func lstatAhead(t Target, base string, elems []string) {
	ro, ok := t.(*readOnce)
	if !ok {
		return
	}
	var paths []string
	p := base
	for _, e := range elems {
		if e == ".." {
			break
		}
		if e != "" && e != "." {
			p = filepath.Join(p, e)
			paths = append(paths, p)
		}
	}
	ro.lstatAhead(paths)
}

// Switch points link at target (an absolute release directory) atomically
// and returns the release it pointed at before ("" if it did not exist).
//
// A new symlink is made under a temporary name next to the link and renamed
// over it, so that the link never goes missing (the shell procedure's
// rm + ln left a window without one). The new link keeps the style of the old
// one: relative if it was relative, absolute otherwise or when there was no
// link. Afterwards the link is read back and must name target.
//
// If the link already names target, nothing is written and err is nil.
func Switch(t Target, link, target string) (from string, err error) {
	return SwitchFrom(t, link, "", target)
}

// SwitchFrom is Switch for a caller that decided on the switch from where
// the link stood (expect, an absolute release directory): when the link no
// longer names expect, for instance because a deploy ran in between, nothing
// is written and the error wraps ErrLinkMoved. An empty expect accepts any
// starting point, a missing link included.
func SwitchFrom(t Target, link, expect, target string) (from string, err error) {
	if err := checkAbs("link", link); err != nil {
		return "", err
	}
	if err := checkAbs("release", target); err != nil {
		return "", err
	}
	link, target = filepath.Clean(link), filepath.Clean(target)
	raw, rerr := t.Readlink(link)
	from, content, done, err := planSwitch(t, link, expect, target, raw, rerr)
	if err != nil || done {
		return from, err
	}
	if err := replaceLink(t, link, content); err != nil {
		return from, fmt.Errorf("switch %s to %s: %w (link names %s)", link, target, err, where(t, link))
	}
	raw, err = t.Readlink(link)
	return from, checkReadBack(t, link, target, raw, err)
}

// planSwitch is SwitchFrom's decision, from what reading the link returned
// (raw, rerr) and before anything is written: from is where the link
// stands; done says there is nothing to write (the link names target
// already); otherwise content is what the new link holds, in the style of
// the old one. link and target are clean and absolute.
func planSwitch(t Target, link, expect, target, raw string, rerr error) (from, content string, done bool, err error) {
	relative := false
	switch raw, _, err := judgeLink(t, link, raw, rerr); {
	case errors.Is(err, fs.ErrNotExist) && expect == "":
	case err != nil:
		return "", "", false, fmt.Errorf("switch: %w", err)
	default:
		from = linkDest(link, raw)
		relative = !filepath.IsAbs(raw)
	}
	if expect != "" && !samePath(t, from, expect) {
		return from, "", false, newError(ErrLinkMoved, nil, "switch %s to %s: the link names %s now, not %s as it did when the rollback was planned; nothing changed",
			link, target, from, filepath.Clean(expect))
	}

	if from != "" && samePath(t, from, target) {
		return from, "", true, nil
	}
	fi, err := t.Stat(target)
	if err != nil {
		return from, "", false, fmt.Errorf("switch %s: release: %w", link, err)
	}
	if !fi.IsDir() {
		return from, "", false, fmt.Errorf("switch %s: release %s is not a directory", link, target)
	}

	content = target
	if relative {
		if r, err := filepath.Rel(filepath.Dir(link), target); err == nil {
			content = r
		}
	}
	return from, content, false, nil
}

// checkReadBack judges the link's content read after the switch (raw, or
// the error reading it): it must name target.
func checkReadBack(t Target, link, target, raw string, err error) error {
	if err != nil {
		return fmt.Errorf("switch %s to %s: read back: %w", link, target, err)
	}
	if now := linkDest(link, raw); now != target && !samePath(t, now, target) {
		return newError(ErrLinkMismatch, nil, "switch %s to %s: link now names %s", link, target, now)
	}
	return nil
}

// tempName is the temporary name under which a file or link is made next
// to p before it is renamed over p: hidden, and random so that two writers
// never share one.
func tempName(p string) string {
	return filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".tmp-"+rand.Text()[:16])
}

// replaceLink makes link hold content through a temporary symlink renamed
// over it; the temporary link never outlives a failure.
func replaceLink(t Target, link, content string) error {
	tmp := tempName(link)
	if err := t.Symlink(content, tmp); err != nil {
		return err
	}
	if err := t.Rename(tmp, link); err != nil {
		_ = t.Remove(tmp)
		return err
	}
	return nil
}

// where describes where link stands, for error messages after a failed
// switch: the operator needs to know whether the host changed.
func where(t Target, link string) string {
	raw, err := t.Readlink(link)
	if errors.Is(err, fs.ErrNotExist) {
		return "nothing: it does not exist"
	}
	if err != nil {
		return "an unknown release: " + err.Error()
	}
	return linkDest(link, raw)
}

// Activate is the deploy primitive: it makes release (an existing absolute
// directory) current and returns the release that was current before ("" if
// the link did not exist; release itself if it was current already).
//
// Before switching, the old current release is recorded in release's
// previousVersion file, so that a rollback finds its way back. When release
// is current already, previousVersion is left alone: rewriting it would make
// it name release itself. A ROLLED_BACK marker on release is removed after the
// switch, since deploying it again is deliberate.
func Activate(t Target, link, release string) (previous string, err error) {
	if err := checkAbs("link", link); err != nil {
		return "", err
	}
	if err := checkAbs("release", release); err != nil {
		return "", err
	}
	link, release = filepath.Clean(link), filepath.Clean(release)
	fi, err := t.Stat(release)
	if err != nil {
		return "", fmt.Errorf("activate: release: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("activate: release %s is not a directory", release)
	}

	switch _, cur, err := readLink(t, link); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return "", fmt.Errorf("activate: %w", err)
	case !samePath(t, cur, release):
		pv := filepath.Join(release, PreviousVersionFile)
		if err := t.WriteFile(pv, []byte(cur+"\n"), 0o644); err != nil {
			return "", fmt.Errorf("activate: %w", err)
		}
	}

	// Switch re-reads the link rather than trusting the read above, so a
	// concurrent change between the two is still caught by its read-back.
	previous, err = Switch(t, link, release)
	if err != nil {
		return previous, fmt.Errorf("activate: %w", err)
	}
	// Only now: a release that fails to become current must keep its
	// marker, or a later rollback could pick it as the newest release.
	if err := clearMarker(t, release); err != nil {
		return previous, fmt.Errorf("activate: link %s switched to %s, but: %w", link, release, err)
	}
	return previous, nil
}
