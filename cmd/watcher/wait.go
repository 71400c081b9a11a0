package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/deploys"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// Exit codes of `publish --wait` (README "Commands"): a pipeline step
// gates on them.
const (
	exitPassed       = 0 // passed; or marginal and kept
	exitFailed       = 1 // failed, or rolled back
	exitRejected     = 2 // the watcher refused the event, as publish refuses bad flags
	exitWaitFailed   = 3 // no verdict can be known: NATS unreachable, the publish refused, the stream lost
	exitInconclusive = 4 // no verdict on this deploy: inconclusive, or superseded by a newer deploy
	exitNoPolicy     = 5 // no policy matched: the deploy is not validated
	exitTimedOut     = 6 // no verdict within --wait
)

// defaultWait is how long a bare --wait waits. The window and
// initial_delay of the policy that will match are the watcher's to know,
// not the client's; 30m covers the windows of the example policies with a
// wide margin.
const defaultWait = 30 * time.Minute

// earlyMargin is how far before a deploy id's earlier event the audit is
// read when the id is published again: the records about it are written
// after the watcher read the event, but in a cluster by a server whose
// clock may run a little behind the one that stored the event.
const earlyMargin = time.Minute

// waitFlag is --wait's value: how long to wait, 0 when not asked.
type waitFlag struct{ d *time.Duration }

func (f waitFlag) Set(s string) error {
	d, err := model.ParseDuration(s)
	if err != nil || d <= 0 {
		return fmt.Errorf("--wait=%q: want a duration above 0 such as 10m (30s, 1h30m), or --wait alone for %s", s, model.Duration(defaultWait))
	}
	*f.d = time.Duration(d)
	return nil
}

func (f waitFlag) String() string { return model.Duration(*f.d).String() }

func addWaitFlag(cmd *kingpin.CmdClause) *time.Duration {
	d := new(time.Duration)
	cmd.Flag("wait", fmt.Sprintf("Then wait up to DURATION (alone: %s) for the deploy's verdict, printing its measurements, and exit with it: "+
		"0 passed, 1 failed or rolled back, 2 event rejected, 3 could not wait, 4 inconclusive or superseded, 5 no policy matched, 6 timed out.",
		model.Duration(defaultWait))).
		PlaceHolder("[DURATION]").SetValue(waitFlag{d})
	return d
}

// bareWait gives a bare --wait its default value. kingpin has no flag
// whose value is optional: one that takes a value wants it, and a boolean
// one (IsBoolFlag) leaves the "10m" of --wait=10m over as an unexpected
// argument. A bare "--wait" among the arguments can only be that flag
// (kingpin takes no value that starts with "--" but --flag=value), so it
// is rewritten before parsing; after "--" the arguments are left alone.
func bareWait(args []string) []string {
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if a == "--wait" {
			a = "--wait=" + model.Duration(defaultWait).String()
		}
		out = append(out, a)
	}
	return out
}

// waitErr gives an error of publish --wait its exit code: one that says
// the deploy's fate is unknown, not one of a verdict's.
func waitErr(err error) error {
	var ee *exitError
	if err == nil || errors.As(err, &ee) {
		return err
	}
	return &exitError{code: exitWaitFailed, err: err}
}

// published is what the wait needs to know of the publish.
type published struct {
	deploy events.Deploy
	// idGiven: the id came from --id, so it may have been published
	// before.
	idGiven bool
	ack     *jetstream.PubAck
	// auditLast is the audit stream's last sequence, read before the
	// publish.
	auditLast uint64
}

// waitStart is where the deploy's records begin in the audit stream.
// Records are about an event only once the watcher has read it, so they
// come after the publish; the audit stream numbers its records in the
// order it stores them, so all of them are past p.auditLast, read before
// publishing: reading from there on misses none, however soon the watcher
// answers. An id published before (a retried pipeline step, with --id)
// has its records from then: the DEPLOYS stream answered a duplicate, or
// the watcher finds the run done and writes nothing new. They start at the
// earlier event's time, found on DEPLOYS.
func waitStart(ctx context.Context, js jetstream.JetStream, p published) (audit.Start, error) {
	if !p.idGiven && !p.ack.Duplicate {
		return audit.Start{Seq: p.auditLast + 1}, nil
	}
	before := p.ack.Sequence // older than ours
	if p.ack.Duplicate {
		before++ // the sequence of the earlier one, which was kept
	}
	id := p.deploy.ID
	found, err := deploys.Find(ctx, js, deploys.Query{Environment: p.deploy.Environment, Service: p.deploy.Service,
		Match: func(d events.Deploy) bool { return d.ID == id }, Before: before})
	switch {
	case err == nil:
		return audit.Start{Time: found.Time.Add(-earlyMargin)}, nil
	case errors.Is(err, deploys.ErrNotFound), errors.Is(err, deploys.ErrTooFar):
		return audit.Start{Seq: p.auditLast + 1}, nil
	}
	return audit.Start{}, fmt.Errorf("looking for an earlier event with id %s: %w", id, err)
}

// waitVerdict follows the deploy's records in the audit stream for up to
// d, prints them as they come, and returns its verdict as an exit code.
func waitVerdict(ctx context.Context, e *env, js jetstream.JetStream, p published, d time.Duration) error {
	start, err := waitStart(ctx, js, p)
	if err != nil {
		return waitErr(err)
	}
	// A duplicate's ack names the event kept earlier, the one read.
	w := &waiter{deployID: p.deploy.ID, deploySeq: p.ack.Sequence, out: newStreamTable(e.stdout)}
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var v verdict
	errDone := errors.New("verdict in")
	err = audit.FollowFrom(wctx, js, audit.Filter{Service: p.deploy.Service, Environment: p.deploy.Environment}, start, func(r audit.Record) error {
		var done bool
		if v, done = w.see(r); done {
			return errDone
		}
		return nil
	})
	switch {
	case errors.Is(err, errDone):
		fmt.Fprintf(e.stdout, "verdict: %s (exit %d): %s\n", v.word, v.code, oneLine(v.why))
		if v.code == exitPassed {
			return nil
		}
		return &exitError{code: v.code, err: errors.New("")}
	case err != nil && wctx.Err() == nil:
		return waitErr(err)
	}
	if perr := permissionErr(ctx, "reading the audit trail"); perr != nil {
		return waitErr(perr)
	}
	switch {
	case ctx.Err() != nil:
		return &exitError{code: exitTimedOut, err: fmt.Errorf("interrupted before a verdict for deploy %s: %s", p.deploy.ID, w.seen())}
	case wctx.Err() == nil:
		// The stream ended under the wait: the connection was closed.
		return &exitError{code: exitWaitFailed, err: fmt.Errorf("lost the connection to NATS before a verdict for deploy %s: %s", p.deploy.ID, w.seen())}
	}
	return &exitError{code: exitTimedOut, err: fmt.Errorf("no verdict for deploy %s within --wait=%s: %s", p.deploy.ID, model.Duration(d), w.seen())}
}

// verdict is how a deploy's wait ended.
type verdict struct {
	code int
	word string // passed, failed, ...
	why  string // the deciding record's message
}

// waiter reads the records on a deploy's audit subject, prints those about
// the deploy, and says when its verdict is in. The decision is in see
// alone, a function of the records, so that a table tests it.
type waiter struct {
	deployID string
	// deploySeq is the event's sequence on DEPLOYS: an event the decoder
	// refused has no id, and its rejection names the message by sequence.
	deploySeq uint64
	out       *streamTable

	runID, policy string
	windowEnd     time.Time
	measured      int
	last          string // the last measurement: "check value outcome"
	// request is the held rollback of a marginal run whose policy asks a
	// person; the verdict is that person's answer.
	request string
}

// see takes the next record and reports the verdict once it is in.
func (w *waiter) see(r audit.Record) (verdict, bool) {
	switch {
	case w.request != "" && r.RequestID == w.request:
		switch r.Kind {
		case audit.RollbackCancelled:
			return verdict{exitPassed, "marginal, rollback cancelled", r.Message}, true
		case audit.RollbackApproved, audit.RollbackCompleted, audit.RollbackFailed:
			return verdict{exitFailed, "marginal, rollback approved", r.Message}, true
		}
		w.out.record(r)
		return verdict{}, false
	case r.DeployID == w.deployID:
		if w.runID == "" {
			w.runID, w.policy = r.RunID, r.Policy
		}
	case r.Kind == audit.EventRejected && w.deploySeq != 0:
		if d, ok := r.EventRejected(); ok && d.DecodeRejection != nil && d.StreamSeq == w.deploySeq {
			return verdict{exitRejected, "rejected", r.Message}, true
		}
		return verdict{}, false
	default:
		return verdict{}, false
	}
	switch r.Kind {
	case audit.RunStarted:
		w.runID, w.policy = r.RunID, r.Policy
		if d, ok := r.RunStarted(); ok {
			w.windowEnd = d.WindowEnd
		}
	case audit.Measurement:
		w.measured++
		d, _ := r.Measurement()
		w.last = fmt.Sprintf("%s %s %s", oneLine(d.Check), num(d.Value), oneLine(d.Outcome))
		w.out.measurement(r)
		return verdict{}, false
	case audit.RunSkipped:
		if d, _ := r.RunSkipped(); d.Reason != "duplicate" {
			return verdict{exitNoPolicy, "not validated", r.Message}, true
		}
		// The same id published again while its run goes on: that run's
		// verdict is this deploy's.
		w.runID = r.RunID
	case audit.EventRejected:
		return verdict{exitRejected, "rejected", r.Message}, true
	case audit.RunPassed:
		return verdict{exitPassed, "passed", r.Message}, true
	case audit.RunFailed:
		return verdict{exitFailed, "failed", r.Message}, true
	case audit.RunInconclusive:
		// on_inconclusive: rollback rolled the deploy back: what a
		// pipeline must know first.
		if d, _ := r.Verdict(); d.RequestID != "" {
			return verdict{exitFailed, "inconclusive, rollback requested", r.Message}, true
		}
		return verdict{exitInconclusive, "inconclusive", r.Message}, true
	case audit.RunSuperseded:
		return verdict{exitInconclusive, "superseded", r.Message}, true
	case audit.RunMarginal:
		d, _ := r.Verdict()
		switch {
		case d.RequestID == "":
			return verdict{exitPassed, "marginal, kept", r.Message}, true
		case d.OnMarginal != policy.OnMarginalAsk:
			return verdict{exitFailed, "marginal, rollback requested", r.Message}, true
		}
		w.request = d.RequestID
	}
	w.out.record(r)
	return verdict{}, false
}

// seen says what the wait saw of the deploy, for a wait that ends without
// a verdict.
func (w *waiter) seen() string {
	if w.runID == "" {
		return "the watcher wrote nothing about it: is a watcher running against this NATS server, and consuming the DEPLOYS stream?"
	}
	s := fmt.Sprintf("run %s", w.runID)
	if w.policy != "" {
		s += " of policy " + w.policy
	}
	if !w.windowEnd.IsZero() {
		s += ", window ending " + w.windowEnd.Local().Format("2006-01-02 15:04:05")
	}
	switch w.measured {
	case 0:
		s += ", no measurement yet"
	default:
		s += fmt.Sprintf(", %d measurements, the last %s", w.measured, w.last)
	}
	if w.request != "" {
		s += fmt.Sprintf("; run marginal, its rollback %s held for `watcher approve` or `watcher cancel`", w.request)
	}
	return s + fmt.Sprintf("; see watcher history --run=%s", w.runID)
}

// streamTable prints records as they come, in the columns of
// `history --run`: a table that cannot be aligned in advance, so each
// column starts as wide as usual cells and widens for a wider one.
type streamTable struct {
	w      io.Writer
	widths []int
	headed bool
}

func newStreamTable(w io.Writer) *streamTable {
	// TIME, CHECK, VALUE, BASELINE, RATIO, THRESHOLD, OUTCOME.
	return &streamTable{w: w, widths: []int{12, 17, 8, 8, 9, 13, 7}}
}

func (t *streamTable) measurement(r audit.Record) {
	if !t.headed {
		t.row(measurementHeader)
		t.headed = true
	}
	t.row(measurementCells(r))
}

func (t *streamTable) record(r audit.Record) {
	fmt.Fprintln(t.w, strings.Join(recordCells(r), "  "))
}

func (t *streamTable) row(cells []string) {
	var b strings.Builder
	for i, c := range cells {
		if i == len(t.widths) {
			t.widths = append(t.widths, 0)
		}
		t.widths[i] = max(t.widths[i], len([]rune(c)))
		if i == len(cells)-1 {
			b.WriteString(c)
			break
		}
		fmt.Fprintf(&b, "%-*s  ", t.widths[i], c)
	}
	fmt.Fprintln(t.w, b.String())
}
