package watch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// RunsBucket holds the state of every run in progress, keyed by run id, so
// that a run outlives the process measuring it: after a crash, or when its
// replica dies, another process resumes it where it was.
const RunsBucket = "WATCHER_RUNS"

// ReplicasBucket holds one key per live replica, rewritten every third of
// the lease; a replica whose key has expired is dead and its runs are taken
// over.
const ReplicasBucket = "WATCHER_REPLICAS"

// DefaultLease is how long a replica's runs stay its own after its last
// heartbeat.
const DefaultLease = 10 * time.Second

// runState is a run as stored in RunsBucket. Each write is a compare-and-set
// on the key's revision: an owner that lost its run to another replica (it
// was presumed dead) finds out at its next write and stops, so one run is
// never measured or decided by two processes.
type runState struct {
	ID     string          `json:"id"`
	Seq    uint64          `json:"seq,omitempty"` // DEPLOYS stream sequence of the event
	Deploy events.Deploy   `json:"deploy"`
	Format string          `json:"format,omitempty"`
	Policy policy.Snapshot `json:"policy"`
	Start  time.Time       `json:"start"`
	// Next is when the next measurement is due: a resumed run goes on from
	// there, its window does not restart.
	Next   time.Time     `json:"next"`
	Owner  string        `json:"owner"`
	Checks []storedCheck `json:"checks"`

	// Set once the run is decided; the verdict is recorded, the rollback
	// requested and the key deleted after it, by whoever holds the run
	// then.
	Verdict string                  `json:"verdict"`
	Kind    string                  `json:"kind,omitempty"`
	Reason  string                  `json:"reason,omitempty"`
	Detail  map[string]any          `json:"detail,omitempty"`
	Request *events.RollbackRequest `json:"request,omitempty"`
	Ended   time.Time               `json:"ended,omitzero"`
	// VerifyChecks are the checks a decided run's rollback verification
	// measures again (rollback.verify).
	VerifyChecks []string `json:"verify_checks,omitempty"`

	// Verify is set on a verification of a rollback (verify.go): its
	// Policy is its run's whole policy, from which Verify.Checks are
	// measured; Start is when the rollback completed.
	Verify *verifyState `json:"verify,omitempty"`
}

// storedCheck is a checkState as stored.
type storedCheck struct {
	Check    string             `json:"check"`
	Tally    policy.Tally       `json:"tally"`
	Baseline []storedSeries     `json:"baseline,omitempty"`
	Last     *MeasurementStatus `json:"last,omitempty"`
	Judged   string             `json:"judged,omitempty"`
}

// storedSeries keeps a value as text: a baseline may be NaN or infinite,
// which JSON numbers cannot hold.
type storedSeries struct {
	Labels string `json:"labels"`
	Value  string `json:"value"`
}

// state is r as stored. The caller holds r.mu.
func (r *Run) state() runState {
	st := runState{
		ID: r.ID, Seq: r.seq, Deploy: r.Deploy, Format: r.Deploy.Format, Policy: r.Policy.Snapshot(),
		Start: r.Start, Next: r.next, Owner: r.owner,
		Verdict: r.verdict, Reason: r.reason, Kind: r.kind, Detail: r.detail, Request: r.request, Ended: r.ended,
		VerifyChecks: r.verifyChecks, Verify: r.verify,
	}
	for _, cs := range r.checks {
		st.Checks = append(st.Checks, storedCheck{Check: cs.check.Name, Tally: cs.tally, Last: cs.last, Judged: cs.judged, Baseline: storedBaseline(cs.baseline)})
	}
	return st
}

// restoreRun rebuilds a run from its stored state, with the policy it
// started with.
func restoreRun(st runState, rev uint64) (*Run, error) {
	p, err := st.Policy.Policy()
	if err != nil {
		return nil, err
	}
	if st.Verify != nil {
		if p, err = verifyPolicy(p, st.Verify.Checks); err != nil {
			return nil, fmt.Errorf("run %s: %w", st.ID, err)
		}
	}
	d := st.Deploy
	d.Format = st.Format
	r, err := newRun(st.ID, d, p, st.Start)
	if err != nil {
		return nil, err
	}
	r.seq, r.owner, r.rev = st.Seq, st.Owner, rev
	// Taken up now: a run resumed with measurements already due has a
	// query timeout per missed measurement from here to catch up
	// (catchUpDeadline).
	r.since = time.Now()
	if !st.Next.IsZero() {
		r.next = st.Next
	}
	r.dueThen = r.next
	r.verdict, r.reason, r.kind, r.detail, r.request, r.ended = st.Verdict, st.Reason, st.Kind, st.Detail, st.Request, st.Ended
	r.verifyChecks, r.verify = st.VerifyChecks, st.Verify
	if r.verdict == "" {
		r.verdict = VerdictPending
	}
	if len(st.Checks) != len(r.checks) {
		return nil, fmt.Errorf("run %s: stored state has %d checks, its policy %d", st.ID, len(st.Checks), len(r.checks))
	}
	for i, c := range st.Checks {
		cs := r.checks[i]
		if c.Check != cs.check.Name {
			return nil, fmt.Errorf("run %s: stored check %q where its policy has %q", st.ID, c.Check, cs.check.Name)
		}
		cs.tally, cs.last, cs.judged = c.Tally, c.Last, c.Judged
		for _, s := range c.Baseline {
			v, err := strconv.ParseFloat(s.Value, 64)
			if err != nil {
				return nil, fmt.Errorf("run %s: stored baseline %q: %w", st.ID, s.Value, err)
			}
			cs.baseline = append(cs.baseline, policy.Series{Labels: s.Labels, Value: v})
		}
	}
	return r, nil
}

// errRunLost says another replica holds the run now.
var errRunLost = errors.New("run taken over by another replica")

// create stores a new run. It returns jetstream.ErrKeyExists when the run
// is stored already (the event was redelivered).
func (w *Watcher) create(ctx context.Context, r *Run) error {
	r.mu.Lock()
	b, err := json.Marshal(r.state())
	r.mu.Unlock()
	if err != nil {
		return err
	}
	rev, err := w.runs.Create(ctx, r.ID, b)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.rev = rev
	r.mu.Unlock()
	return nil
}

// save writes r's state over the revision this process last wrote or read.
// errRunLost means another replica took the run over.
//
// A failed compare-and-set is not always a takeover: a write of ours that
// timed out on the client (NATS was down) may have been applied later,
// after reconnecting, leaving r.rev behind. When the stored run is still
// ours, the write is made again over what is stored.
func (w *Watcher) save(ctx context.Context, r *Run) error {
	r.mu.Lock()
	st, rev := r.state(), r.rev
	r.mu.Unlock()
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		newRev, err := w.runs.Update(ctx, r.ID, b, rev)
		if err == nil {
			r.mu.Lock()
			r.rev = newRev
			r.mu.Unlock()
			return nil
		}
		cur, stored, gerr := w.load(ctx, r.ID)
		switch {
		case errors.Is(gerr, jetstream.ErrKeyNotFound):
			return errRunLost // decided and removed elsewhere
		case gerr != nil:
			// NATS unreachable: worth another try at the next step.
			return fmt.Errorf("saving run %s: %w", r.ID, err)
		case cur.Owner != w.Replica:
			return errRunLost
		case stored == rev || attempt > 0:
			return fmt.Errorf("saving run %s: %w", r.ID, err)
		}
		rev = stored // our own late write: write again over it
	}
}

// load reads a stored run.
func (w *Watcher) load(ctx context.Context, id string) (runState, uint64, error) {
	e, err := w.runs.Get(ctx, id)
	if err != nil {
		return runState{}, 0, err
	}
	var st runState
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return runState{}, 0, fmt.Errorf("run %s: stored state: %w", id, err)
	}
	return st, e.Revision(), nil
}

// drop deletes a decided run's state: its outcome is in the audit. Like
// save, it looks again when its revision is stale from a late write of its
// own.
func (w *Watcher) drop(ctx context.Context, r *Run) {
	r.mu.Lock()
	rev := r.rev
	r.mu.Unlock()
	err := w.runs.Purge(ctx, r.ID, jetstream.LastRevision(rev))
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		if cur, stored, gerr := w.load(ctx, r.ID); gerr == nil && cur.Owner == w.Replica && stored != rev {
			err = w.runs.Purge(ctx, r.ID, jetstream.LastRevision(stored))
		}
	}
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		w.logger.Warn("decided run not removed from the store", "run", r.ID, "err", err)
	}
}
