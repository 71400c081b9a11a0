package rollback

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/deploys"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

// Planning a rollback: reaching every host and resolving where each goes,
// before any is touched.

type plan struct {
	target  Target
	addr    string // the host as configured ("web1:2222"), or "local"
	host    string // without port, for templates
	link    string
	release Release
	data    policy.TemplateData
	noop    bool // already rolled back: nothing to switch
	// mark says the release rolled away from still needs its ROLLED_BACK
	// marker; after that the after command runs unless skipAfter.
	// afterMaybeRan says an earlier attempt of this request may have run
	// it, so its record on the host is looked at first.
	mark          bool
	skipAfter     bool
	afterMaybeRan bool
	// earlier says what an earlier attempt (or request) did on this host,
	// for the record: "" when this execution does it all.
	earlier string
	// doneBefore says another request rolled the host back and finished:
	// nothing is left to do.
	doneBefore bool
	// view holds what resolving read from the target, so that switching
	// does not ask again whether each release is a directory.
	view     *readOnce
	attempts int   // tries it took to reach and resolve the host
	err      error // why the host cannot be rolled back (not reached, not resolved)
}

// errHostsNotAnnounced: a request names hosts that its deploy did not.
var errHostsNotAnnounced = errors.New("hosts not announced by the deploy")

// checkHosts refuses a request naming hosts that the deploy it rolls back
// did not announce, when the policy lists none: the hosts a rollback
// reaches with the watcher's SSH key come from the policy or from the
// deploy event, never from whoever may publish a rollback request.
func (e *Executor) checkHosts(ctx context.Context, req events.RollbackRequest) error {
	q := deploys.Query{Environment: req.Environment, Service: req.Service, Limit: 1000}
	which := "version " + req.Version
	switch {
	case req.DeployID != "":
		which = "deploy " + req.DeployID
		q.Match = func(d events.Deploy) bool { return d.ID == req.DeployID }
	case req.Version != "":
		q.Match = func(d events.Deploy) bool { return d.Version == req.Version }
	default:
		which = "deploy"
	}
	var found deploys.Found
	var err error
	if req.DeploySeq > 0 {
		// Named by its place in the stream: one read, whatever came after.
		found, err = deploys.At(ctx, e.JS, req.Environment, req.Service, req.DeploySeq)
		if err == nil && req.DeployID != "" && found.Deploy.ID != req.DeployID {
			err = fmt.Errorf("%w: sequence %d holds deploy %s, not %s", deploys.ErrNotFound, req.DeploySeq, found.Deploy.ID, req.DeployID)
		}
	} else {
		found, err = deploys.Find(ctx, e.JS, q)
	}
	switch {
	case errors.Is(err, deploys.ErrNotFound):
		return fmt.Errorf("%w: the request names hosts %v, but no %s of %s in %s on %s announced them (%v); a request may name only the hosts of the deploy it rolls back (or list them in the policy's rollback.hosts); nothing touched",
			errHostsNotAnnounced, req.Hosts, which, req.Service, req.Environment, bus.DeploysStream, err)
	case errors.Is(err, deploys.ErrTooFar):
		return fmt.Errorf("%w: the request names hosts %v, but its %s is not among the newest %d messages of %s in %s on %s, so they cannot be checked; name the deploy by its sequence (deploy_seq), or list the hosts in the policy's rollback.hosts; nothing touched",
			errHostsNotAnnounced, req.Hosts, which, q.Limit, req.Service, req.Environment, bus.DeploysStream)
	case err != nil:
		return fmt.Errorf("looking up the deploy whose hosts the request names: %w", err)
	}
	var unknown []string
	for _, h := range req.Hosts {
		if !slices.Contains(found.Deploy.Hosts, h) {
			unknown = append(unknown, h)
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("%w: the request names hosts %v that deploy %s (version %s) did not announce (it named %v); a request may name only the hosts of the deploy it rolls back (or list them in the policy's rollback.hosts); nothing touched",
			errHostsNotAnnounced, unknown, found.Deploy.ID, found.Deploy.Version, found.Deploy.Hosts)
	}
	return nil
}

// plan reaches every target and resolves its previous release before any
// is touched, parallelism at once: one target that cannot roll back (not
// reached, host key refused, no previous release), or targets that would
// end on different releases, fail the whole rollback with nothing switched
// anywhere.
func (e *Executor) plan(ctx context.Context, req events.RollbackRequest, p *policy.Policy) ([]*plan, error) {
	hosts := p.Rollback.Hosts
	if len(hosts) == 0 {
		hosts = req.Hosts
	}
	var plans []*plan
	if len(hosts) == 0 {
		plans = []*plan{{target: e.Local, addr: "local", host: "local"}}
	} else {
		for _, h := range hosts {
			plans = append(plans, &plan{addr: h, host: HostOnly(h)})
		}
		if e.Dial == nil {
			return plans, fmt.Errorf("hosts %v need SSH, which this watcher cannot do yet; leave hosts empty to roll back the watcher's own filesystem", hosts)
		}
	}
	forEach(parallelism(p), len(plans), func(i int) {
		pl := plans[i]
		// A connection that drops while the plan reads (or during the
		// handshake) is worth another try. A host that refuses or does
		// not answer is down: the rollback fails at once, nothing
		// touched, rather than waiting through the retries.
		for pl.attempts = 1; ; pl.attempts++ {
			pl.err = e.planOne(ctx, req, p, pl)
			if pl.err == nil || !retryablePlan(pl.err) || pl.attempts >= e.hostAttempts() || !e.backoff(ctx, pl.attempts) {
				return
			}
		}
	})
	var unreached, unresolved []error
	for _, pl := range plans {
		switch {
		case pl.err == nil:
		case pl.target == nil:
			unreached = append(unreached, fmt.Errorf("host %s: %w", pl.addr, pl.err))
		default:
			unresolved = append(unresolved, fmt.Errorf("%s: %w", pl.target.Name(), pl.err))
		}
	}
	switch {
	case len(unreached) > 0:
		return plans, fmt.Errorf("%d of %d hosts not reached, nothing touched: %w",
			len(unreached), len(plans), joinErrs(append(unreached, unresolved...)))
	case len(unresolved) > 0:
		return plans, fmt.Errorf("previous release not resolved, nothing touched: %w", joinErrs(unresolved))
	}
	if req.ToVersion == "" {
		if err := agree(plans); err != nil {
			return plans, err
		}
	}
	return plans, nil
}

// agree fails when the targets would end on different releases: each
// resolved "previous" on its own (previousVersion files, newest release),
// and a fleet split between two versions is worse than a failed rollback.
func agree(plans []*plan) error {
	to := filepath.Base(plans[0].release.Previous)
	same := true
	for _, pl := range plans[1:] {
		same = same && filepath.Base(pl.release.Previous) == to
	}
	if same {
		return nil
	}
	detail := make([]string, len(plans))
	for i, pl := range plans {
		detail[i] = fmt.Sprintf("%s: %s -> %s (%s)", pl.target.Name(),
			filepath.Base(pl.release.Current), filepath.Base(pl.release.Previous), pl.release.PreviousSource)
	}
	return fmt.Errorf("hosts disagree on the previous release, no host switched: %s; roll back to a version named in the request (watcher rollback --to-version), or fix the hosts' previousVersion files",
		strings.Join(detail, "; "))
}

func parallelism(p *policy.Policy) int {
	if p.Rollback.Parallelism > 0 {
		return p.Rollback.Parallelism
	}
	return policy.DefaultParallelism
}

// forEach calls f(0) ... f(n-1), at most par at once, and waits for them.
func forEach(par, n int, f func(i int)) {
	if n == 1 {
		f(0)
		return
	}
	sem := make(chan struct{}, max(par, 1))
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f(i)
		})
	}
	wg.Wait()
}

// planOne reaches one target (dialing it the first time) and resolves
// where its link stands and where the rollback takes it.
func (e *Executor) planOne(ctx context.Context, req events.RollbackRequest, p *policy.Policy, pl *plan) error {
	if pl.target == nil {
		t, err := e.Dial(ctx, pl.addr, p.Rollback.SSH)
		if err != nil {
			return err
		}
		pl.target = t
	}
	pl.data = policy.TemplateData{
		Service: req.Service, Environment: req.Environment, Version: req.Version,
		PreviousVersion: req.ToVersion, Labels: req.Labels, Host: pl.host,
	}
	return e.resolve(ctx, req, p, pl)
}

func (e *Executor) hostAttempts() int {
	if e.HostAttempts > 0 {
		return e.HostAttempts
	}
	return 5
}

// backoff waits before attempt+1 of one host's step (RetryBackoff,
// doubling, at most 10s) and reports false when ctx ended meanwhile.
func (e *Executor) backoff(ctx context.Context, attempt int) bool {
	d := e.RetryBackoff
	if d <= 0 {
		d = time.Second
	}
	for range attempt - 1 {
		d = min(2*d, 10*time.Second)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (e *Executor) resolve(ctx context.Context, req events.RollbackRequest, p *policy.Policy, pl *plan) error {
	link, err := p.Rollback.RenderLink(pl.data)
	if err != nil {
		return err
	}
	pl.link = link
	dir, err := p.Rollback.RenderReleasesDir(pl.data)
	if err != nil {
		return err
	}
	// Every path is read from the host once (see readOnce); over SSH,
	// what resolving asks is read ahead in as few round trips as it can be.
	t := newReadOnce(pl.target)
	pl.view = t
	if pf, ok := pl.target.(prefetcher); ok {
		pf.prefetchPlan(t, planGuess{link: link, releasesDir: dir, version: req.Version, toVersion: req.ToVersion})
	}
	if req.Version != "" {
		// Check the link before resolving anything: a host that is not on
		// the release the request rolls away from either ran this request
		// already (that release carries the marker) or got a newer deploy,
		// which is not ours to undo. Resolving first would step a host that
		// was already rolled back one release further.
		cur, err := currentRelease(t, link)
		if err != nil {
			return err
		}
		if filepath.Base(cur) != req.Version {
			return e.resolveMoved(ctx, req, p, pl, t, link, dir, cur)
		}
	}
	rel, err := Resolve(t, link, dir, req.ToVersion)
	if err != nil {
		return err
	}
	if rel.PreviousSource == SourceRequested && req.Source == events.SourceValidation {
		rel.PreviousSource = SourceEvent // the deploy event's previous_version
	}
	pl.release = rel
	// Resolve returns Previous == Current when the host is already on the
	// requested to_version (a retried request without a version). That is
	// the same situation as the already-rolled-back case above: nothing to
	// switch, mark or run after.
	pl.noop = rel.Previous == rel.Current
	pl.mark = !pl.noop
	pl.skipAfter = pl.noop
	pl.data.Version = filepath.Base(pl.release.Current)
	pl.data.PreviousVersion = filepath.Base(pl.release.Previous)
	return nil
}

// resolveMoved plans a host whose link is not on req.Version, the release
// the request rolls away from. Either this request (an earlier attempt cut
// by a crash or a dropped connection) or another one rolled it back
// already, or a newer deploy moved the link, which is not ours to undo.
//
//   - The release carries a ROLLED_BACK marker written for this request:
//     switched and marked; the after command runs unless the host recorded
//     that it ran.
//   - It carries another request's marker: rolled back earlier; nothing to
//     do (a repeated or late request is a recorded no-op).
//   - No marker, but the link names the release that rolling back
//     req.Version leads to (named by the request or by the release's
//     previousVersion file): the switch was made and the rest was cut
//     short; mark it and run after.
//   - Anything else: refuse.
func (e *Executor) resolveMoved(ctx context.Context, req events.RollbackRequest, p *policy.Policy, pl *plan, t *readOnce, link, dir, cur string) error {
	relDir := dir
	if relDir == "" {
		relDir = filepath.Dir(cur)
	}
	from := filepath.Join(relDir, req.Version)
	refuse := fmt.Errorf("link %s is on %s, not on %s which the request rolls back: refusing to roll back a release that was not requested", link, filepath.Base(cur), req.Version)
	if checkVersion(req.Version) != nil {
		return refuse
	}
	if err := checkInside(t, relDir, from, "the release rolled back"); err != nil {
		return err
	}
	m, marked, err := markerOf(t, from)
	if err != nil {
		return err
	}
	pl.release = Release{Link: link, Current: from, Previous: cur, ReleasesDir: relDir, PreviousSource: "already rolled back"}
	pl.data.Version, pl.data.PreviousVersion = req.Version, filepath.Base(cur)
	pl.noop = true
	switch {
	case marked && m.RequestID == req.ID:
		pl.earlier = "switched and marked by an earlier attempt of this request"
		pl.afterMaybeRan = true
		return nil
	case marked:
		by := "earlier"
		if m.RequestID != "" {
			by = "by request " + m.RequestID
		}
		// Another request switched and marked it; whether it finished
		// (its after command, its data step) decides what is left.
		afterDone := len(p.Rollback.After) == 0
		if !afterDone && m.RequestID != "" {
			_, err := t.Lstat(afterRecord(from, m.RequestID))
			switch {
			case err == nil:
				afterDone = true
			case !errors.Is(err, fs.ErrNotExist):
				return fmt.Errorf("whether the after command of request %s ran cannot be read: %w", m.RequestID, err)
			}
		}
		finished, err := e.finished(ctx, m.RequestID)
		if err != nil {
			return err
		}
		pl.skipAfter = afterDone
		if afterDone && finished {
			pl.doneBefore = true
			pl.earlier = "rolled back " + by
			return nil
		}
		// Left half-done (its after command or data step failed, or it
		// was cut short): this request finishes it.
		pl.earlier = "switched and marked " + by + ", which did not finish"
		return nil
	}
	want := Release{Link: link, Current: from, ReleasesDir: relDir}
	if err := resolvePrevious(t, &want, req.ToVersion); err != nil || !samePath(t, want.Previous, cur) {
		return refuse
	}
	if want.PreviousSource == SourceNewest {
		// "The newest other release" is weak evidence: a deploy after
		// this one is the newest too. A rollback goes back in time, so
		// it counts only when the link's release is older than the one
		// rolled back (Activate refreshes a release's time when it
		// deploys it).
		fc, errc := t.Stat(cur)
		ff, errf := t.Stat(from)
		if errc != nil || errf != nil || fc.ModTime().After(ff.ModTime()) {
			return refuse
		}
	}
	pl.mark = true
	pl.earlier = "switched by an earlier attempt of this request, which did not finish"
	return nil
}

// markerOf reads releaseDir's ROLLED_BACK marker; a marker that does not
// parse counts as another request's (one that can be read is needed to
// tell whose it is: a failed read is an error).
func markerOf(t Target, releaseDir string) (Marker, bool, error) {
	marked, err := RolledBack(t, releaseDir)
	if err != nil || !marked {
		return Marker{}, false, err
	}
	var m Marker
	b, err := t.ReadFile(filepath.Join(releaseDir, MarkerFile))
	if err != nil {
		return Marker{}, true, fmt.Errorf("reading the rolled back marker of %s: %w", releaseDir, err)
	}
	_ = json.Unmarshal(b, &m)
	return m, true, nil
}

// finished reports whether request id ran to a completed end, as
// RequestsBucket says. A request it does not know (no bucket here, a
// marker written by a drill or long ago) counts as finished: there is no
// record of anything left to do.
func (e *Executor) finished(ctx context.Context, id string) (bool, error) {
	if e.requests == nil || id == "" {
		return true, nil
	}
	entry, err := e.requests.Get(ctx, requestKey(id))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("reading the progress of rollback request %s: %w", id, err)
	}
	var prog rollbackreq.Progress
	if err := json.Unmarshal(entry.Value(), &prog); err != nil {
		return false, fmt.Errorf("progress of rollback request %s: %w", id, err)
	}
	return prog.Has(stepDone) && prog.Result == ResultCompleted, nil
}

func hostResults(plans []*plan) []HostResult {
	out := make([]HostResult, 0, len(plans))
	for _, pl := range plans {
		name := pl.addr
		if pl.target != nil {
			name = pl.target.Name()
		}
		r := HostResult{HostOutcome: audit.HostOutcome{Host: name, Link: pl.link, From: pl.release.Current, To: pl.release.Previous, Source: pl.release.PreviousSource}}
		if pl.err != nil {
			r.Error = pl.err.Error()
		}
		out = append(out, r)
	}
	return out
}

// currentRelease is the absolute path the link points at.
func currentRelease(t Target, link string) (string, error) {
	target, err := t.Readlink(link)
	if err != nil {
		return "", fmt.Errorf("reading link %s: %w", link, err)
	}
	if !filepath.IsAbs(target) {
		target = filepath.Join(filepath.Dir(link), target)
	}
	return filepath.Clean(target), nil
}

// HostOnly strips the port: templates see the host name.
func HostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return h
}
