package rollback

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// Switching each host and finishing what an interrupted attempt left.

// standing reads back where each target's link stands, into results (in
// plan order): after a failure, the operator's first question is which
// hosts changed. A target whose connection dropped is redialled for this
// (SSHTarget does so for reads).
func standing(plans []*plan, results []HostResult, par int) {
	if len(plans) != len(results) {
		return
	}
	forEach(par, len(plans), func(i int) {
		pl, r := plans[i], &results[i]
		switch {
		case pl.target == nil:
			r.standing = "not reached"
		case pl.link == "":
			r.standing = "unknown (link not rendered)"
		default:
			cur, err := currentRelease(pl.target, pl.link)
			if err != nil {
				r.standing = "unknown (" + err.Error() + ")"
				return
			}
			r.LinkNow = cur
			r.standing = "on " + filepath.Base(cur)
		}
	})
}

// switchAll switches every target, at most parallelism at once, and records
// a rollback.host for each.
func (e *Executor) switchAll(ctx context.Context, req events.RollbackRequest, p *policy.Policy, plans []*plan) []HostResult {
	par := p.Rollback.Parallelism
	if par <= 0 {
		par = 32
	}
	sem := make(chan struct{}, par)
	results := make([]HostResult, len(plans))
	var wg sync.WaitGroup
	for i, pl := range plans {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			results[i] = e.switchOne(ctx, req, p, pl)
		}()
	}
	wg.Wait()
	return results
}

// switchOne brings one target to where the plan says, recording a
// rollback.host. A connection that drops at any point does not leave the
// host half-done: the host is read again on a new connection and what is
// missing is finished (the switch where the link has not moved, the
// marker, the after command), up to HostAttempts tries with backoff.
func (e *Executor) switchOne(ctx context.Context, req events.RollbackRequest, p *policy.Policy, pl *plan) HostResult {
	start := time.Now()
	r := HostResult{HostOutcome: audit.HostOutcome{Host: pl.target.Name(), Link: pl.link, From: pl.release.Current, To: pl.release.Previous, Source: pl.release.PreviousSource, Earlier: pl.earlier}}
	st := &hostProgress{}
	var err error
	for r.Attempts = 1; ; r.Attempts++ {
		err = e.converge(ctx, req, p, pl, st, &r)
		if err == nil || !Retryable(err) || r.Attempts >= e.hostAttempts() || !e.backoff(ctx, r.Attempts) {
			break
		}
		e.logger.Warn("rollback of a host interrupted; trying again", "request", req.ID, "host", r.Host, "attempt", r.Attempts, "err", err)
		// What was read before the drop may be stale now.
		pl.view = nil
		st.retried = true
	}
	r.Duration = time.Since(start)
	if err != nil {
		r.Error = err.Error()
		if r.Attempts > 1 {
			r.Error += fmt.Sprintf(" (after %d attempts)", r.Attempts)
		}
	}
	rec := audit.Record{
		Kind: audit.RollbackHost, MsgID: req.ID + ".host." + r.Host, RequestID: req.ID, RunID: req.RunID, DeployID: req.DeployID,
		Service: req.Service, Environment: req.Environment, Version: req.Version, Policy: p.Name,
	}
	if err := rec.SetDetail(hostDetail(r)); err != nil {
		e.logger.Error("rollback.host not recorded", "host", r.Host, "err", err)
		return r
	}
	switch {
	case err != nil:
		rec.Message = fmt.Sprintf("%s: %s", r.Host, r.Error)
	case pl.noop && !st.marked && r.AfterRan != "yes":
		rec.Message = fmt.Sprintf("%s: already on %s (%s)", r.Host, filepath.Base(r.To), r.Earlier)
	case pl.noop:
		var did []string
		if st.marked {
			did = append(did, "marked "+filepath.Base(r.From)+" rolled back")
		}
		if r.AfterRan == "yes" {
			did = append(did, "ran the after command")
		}
		rec.Message = fmt.Sprintf("%s: %s -> %s (%s); finished the rollback: %s", r.Host, filepath.Base(r.From), filepath.Base(r.To), r.Earlier, strings.Join(did, ", "))
	default:
		rec.Message = fmt.Sprintf("%s: %s -> %s in %s", r.Host, filepath.Base(r.From), filepath.Base(r.To), r.Duration.Round(time.Microsecond))
	}
	if r.Attempts > 1 && err == nil {
		rec.Message += fmt.Sprintf(" (%d attempts: the connection dropped)", r.Attempts)
	}
	if aerr := e.Audit.Record(ctx, rec); aerr != nil {
		e.logger.Error("rollback.host not recorded", "host", r.Host, "err", aerr)
	}
	return r
}

// hostDetail is what a rollback.host record says of r.
func hostDetail(r HostResult) audit.RollbackHostDetail {
	return audit.RollbackHostDetail{Host: r.Host, Link: r.Link, From: r.From, To: r.To, Source: r.Source,
		Switched: r.Switched, DurationSeconds: r.Duration.Seconds(), Error: r.Error, AfterOutput: r.AfterOutput,
		Attempts: r.Attempts, Earlier: r.Earlier, AfterRan: r.AfterRan}
}

// hostProgress is what one host's rollback got done in this execution.
type hostProgress struct {
	switched, marked, afterDone bool
	afterTried                  bool // the after command was started: it may have run
	afterPID                    int  // its process group on the host, when its connection was cut
	retried                     bool // an attempt was cut short
}

// converge does what is left of one host's rollback.
func (e *Executor) converge(ctx context.Context, req events.RollbackRequest, p *policy.Policy, pl *plan, st *hostProgress, r *HostResult) error {
	if pl.view == nil {
		pl.view = newReadOnce(pl.target)
	}
	view := pl.view
	if !pl.noop && !st.switched {
		// The link is read again, not taken from the plan: when it
		// moved meanwhile (a deploy), SwitchFrom refuses. What the plan
		// read of the release directories still stands; its read-back
		// follows a change, which readOnce never answers from memory.
		view.forgetPath(pl.link)
		if st.retried {
			// The drop may have come after the rename took effect, its
			// answer lost: then the link names the previous release.
			cur, err := currentRelease(view, pl.link)
			if err != nil {
				return err
			}
			if samePath(view, cur, pl.release.Previous) {
				st.switched, r.Switched = true, true
			}
			removeTemps(view, filepath.Dir(pl.link), "."+filepath.Base(pl.link)+".tmp-")
		}
		ps, pipelined := unwrapTarget(view).(pipelinedSwitcher)
		switch {
		case st.switched:
		case pipelined && pl.mark && !st.marked && !st.retried:
			// Over SSH, the switch and the marker in two round trips.
			m := Marker{Time: time.Now().UTC(), RunID: req.RunID, RequestID: req.ID, Reason: req.Reason, From: pl.release.Current, To: pl.release.Previous}
			switched, marked, err := ps.switchAndMark(view, pl.link, pl.release.Current, pl.release.Previous, m)
			st.switched, r.Switched, st.marked = switched, switched, marked
			if err != nil && switched {
				return fmt.Errorf("link switched, but marking %s rolled back failed: %w", pl.release.Current, err)
			}
			if err != nil {
				return err
			}
		default:
			if _, err := SwitchFrom(view, pl.link, pl.release.Current, pl.release.Previous); err != nil {
				return err
			}
			st.switched, r.Switched = true, true
		}
	}
	if pl.mark && !st.marked {
		if st.retried {
			// switchAndMark makes the marker's temporary file in the
			// release switched to; the ordinary way, next to the marker.
			removeTemps(view, pl.release.Current, "."+MarkerFile+".tmp-")
			removeTemps(view, pl.release.Previous, "."+MarkerFile+".tmp-")
		}
		m := Marker{Time: time.Now().UTC(), RunID: req.RunID, RequestID: req.ID, Reason: req.Reason, From: pl.release.Current, To: pl.release.Previous}
		if err := MarkRolledBack(view, pl.release.Current, m); err != nil {
			return fmt.Errorf("link switched, but marking %s rolled back failed: %w", pl.release.Current, err)
		}
		st.marked = true
	}
	if len(p.Rollback.After) == 0 || pl.skipAfter || st.afterDone {
		return nil
	}
	done := afterRecord(pl.release.Current, req.ID)
	if st.afterTried || pl.afterMaybeRan {
		// An after command cut short may still be running on the host (a
		// command outlives a dropped connection): stop it, so that two
		// never run at once, then its record says whether it got to its
		// end.
		if st.afterPID > 0 {
			if k, ok := unwrapTarget(view).(groupKiller); ok {
				if err := k.KillGroup(ctx, st.afterPID); err != nil {
					return fmt.Errorf("link switched, but the after command cut short could not be stopped: %w", err)
				}
			}
			st.afterPID = 0
		}
		view.forgetPath(done)
		if _, err := view.Lstat(done); err == nil {
			st.afterDone = true
			r.AfterRan = "earlier"
			return nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("link switched, but whether the after command ran cannot be read: %w", err)
		}
	}
	argv, err := p.Rollback.RenderAfter(pl.data)
	if err != nil {
		return fmt.Errorf("link switched, but the after command could not be rendered: %w", err)
	}
	st.afterTried = true
	out, err := runRecorded(ctx, view, argv, rollbackEnv(req, pl), done)
	r.AfterOutput = string(out)
	var cut *CommandCutError
	if errors.As(err, &cut) {
		st.afterPID = cut.PID
	}
	if err != nil {
		return fmt.Errorf("link switched, but the after command %q failed: %w", strings.Join(argv, " "), err)
	}
	st.afterDone = true
	r.AfterRan = "yes"
	return nil
}

// afterRecord is the file in the release rolled away from that says the
// after command of request id ran to success there. It is written in the
// same step as the command's end (on a remote host by the same shell), so
// that a retry after a dropped connection or a crash can tell whether to run
// the command again.
func afterRecord(release, requestID string) string {
	return filepath.Join(release, ".rollback-after-"+requestKey(requestID))
}

// removeTemps removes what an interrupted attempt may have left in dir: the
// temporary links and files (prefix + random suffix) that a rename never
// moved into place. Best effort: they are hidden and harmless.
func removeTemps(t Target, dir, prefix string) {
	infos, err := t.ReadDir(dir)
	if err != nil {
		return
	}
	for _, fi := range infos {
		if strings.HasPrefix(fi.Name(), prefix) {
			_ = t.Remove(filepath.Join(dir, fi.Name()))
		}
	}
}

// groupKiller stops a command left running by a dropped connection.
type groupKiller interface {
	KillGroup(ctx context.Context, pgid int) error
}

// unwrapTarget is the target under a readOnce view.
func unwrapTarget(t Target) Target {
	if ro, ok := t.(*readOnce); ok {
		return ro.Target
	}
	return t
}

// recordingRunner runs a command and, when it succeeds, creates the file
// done in the same step.
type recordingRunner interface {
	RunRecorded(ctx context.Context, argv, env []string, done string) ([]byte, error)
}

// runRecorded runs argv on t and records its success in done: on a target
// that can do both in one step (SSHTarget), in one; otherwise (the local
// filesystem) the file is written right after.
func runRecorded(ctx context.Context, t Target, argv, env []string, done string) ([]byte, error) {
	if ro, ok := t.(*readOnce); ok {
		ro.forget()
		t = ro.Target
	}
	if rr, ok := t.(recordingRunner); ok {
		return rr.RunRecorded(ctx, argv, env, done)
	}
	out, err := t.Run(ctx, argv, env)
	if err != nil {
		return out, err
	}
	if werr := t.ReplaceFile(done, nil); werr != nil {
		// The command ran; only a retry would run it again.
		return out, nil
	}
	return out, nil
}

// Retryable reports whether err is a transport failure (a dropped or
// refused connection, a timeout) after which trying again may succeed, as
// opposed to an answer (no such release, permission denied, a link that
// moved) that another try would only repeat.
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	var hk *HostKeyError
	var tr transient
	var un unreachable
	switch {
	case errors.As(err, &hk), errors.Is(err, ErrPoolClosed), errors.Is(err, context.Canceled):
		return false
	case errors.Is(err, ErrConnectionLost), errors.As(err, &tr), errors.As(err, &un), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EPIPE):
		return true
	case errors.Is(err, context.DeadlineExceeded):
		// A command killed at command_timeout (it satisfies net.Error):
		// running it again would take as long.
		return false
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// retryablePlan is Retryable for a host being planned: a host that is down
// fails the rollback at once, nothing touched.
func retryablePlan(err error) bool {
	var un unreachable
	return Retryable(err) && !errors.As(err, &un) && !errors.Is(err, syscall.ECONNREFUSED)
}

// rollbackEnv describes the rollback to after and data commands.
func rollbackEnv(req events.RollbackRequest, pl *plan) []string {
	return []string{
		"WATCHER_SERVICE=" + req.Service,
		"WATCHER_ENVIRONMENT=" + req.Environment,
		"WATCHER_VERSION=" + pl.data.Version,
		"WATCHER_PREVIOUS_VERSION=" + pl.data.PreviousVersion,
		"WATCHER_FROM=" + pl.release.Current,
		"WATCHER_TO=" + pl.release.Previous,
		"WATCHER_HOST=" + pl.host,
		"WATCHER_REQUEST_ID=" + req.ID,
		"WATCHER_RUN_ID=" + req.RunID,
		"WATCHER_REASON=" + req.Reason,
	}
}
