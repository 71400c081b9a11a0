package watch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// Did the rollback help? (README "Did the rollback help?") A run that fails
// and asks for a rollback, under a policy with rollback.verify, leaves what
// to verify in VerifyBucket, keyed by its request. When the rollback
// completes, the executor announces it on DEPLOYS (service.rolledback,
// carrying the request id); the one replica the durable consumer hands
// that announcement to starts a verification: a run of its own (stored in
// RunsBucket, resumed by another replica like any run) that measures the
// checks which failed the run, from the completion for rollback.verify.
// within, against the run's baselines, and ends in rollback.verified or
// rollback.unhelpful. A rollback that fails, is cancelled, or is never
// executed (--dry-run) announces nothing: nothing is verified, and its
// entry expires.

// VerifyBucket holds, per rollback request of a run whose policy verifies
// its rollbacks, the verification that starts once the rollback completes:
// its stored state (runState) before it started.
const VerifyBucket = "WATCHER_VERIFY"

// verifyTTL is how long a rollback may take, from the run's verdict to its
// completion, holds and approvals included, and still be verified.
const verifyTTL = 7 * 24 * time.Hour

// verifyState is what a verification knows besides a run: which run and
// rollback it verifies, and the run's deploy time, for the same pre_deploy
// baselines.
type verifyState struct {
	RunID      string    `json:"run_id"`
	RequestID  string    `json:"request_id"`
	Checks     []string  `json:"checks"`
	DeployTime time.Time `json:"deploy_time"`
	// From and To are the versions the rollback went from and to, as it
	// announced them.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// Started is set in VerifyBucket once the verification is stored in
	// RunsBucket: an announcement delivered again finds it there.
	Started bool `json:"started,omitempty"`
}

// verifyID is the id of run id's verification in RunsBucket.
func verifyID(runID string) string { return runID + "-verify" }

// verifyKey is request id's key in VerifyBucket: request ids may hold
// characters a key may not.
func verifyKey(requestID string) string {
	sum := sha256.Sum256([]byte(requestID))
	return hex.EncodeToString(sum[:16])
}

// verifyPolicy is what a verification of a run of p measures: the checks
// named, every interval from the rollback's completion until
// rollback.verify.within has passed, after p's initial_delay (at most
// within: the rollback is a deploy of the previous release, whose
// processes start again as the deploy's did). A score does not apply:
// each check must pass. The copy keeps p's snapshot, so a verification is
// stored with its run's whole policy.
func verifyPolicy(p *policy.Policy, checks []string) (*policy.Policy, error) {
	if p.Rollback.Verify == nil {
		return nil, fmt.Errorf("policy %s has no rollback.verify", p.Name)
	}
	v := *p
	v.Window = p.Rollback.Verify.Within
	v.InitialDelay = min(p.InitialDelay, v.Window)
	v.Score = nil
	v.Checks = nil
	for _, name := range checks {
		var found *policy.Check
		for _, c := range p.Checks {
			if c.Name == name {
				found = c
			}
		}
		if found == nil {
			return nil, fmt.Errorf("policy %s has no check %q to verify", p.Name, name)
		}
		v.Checks = append(v.Checks, found)
	}
	if len(v.Checks) == 0 {
		return nil, fmt.Errorf("policy %s: no check to verify", p.Name)
	}
	return &v, nil
}

// afterFrom is where a comparison's after side starts when it is not the
// deploy: a verification's is the rollback's completion.
func (r *Run) afterFrom() time.Time {
	if r.verify != nil {
		return r.Start
	}
	return time.Time{}
}

// describe is a verification's measurement record's message.
func (v *verifyState) describe(c *policy.Check, j policy.Judgement) string {
	return "after rollback " + v.RequestID + ": " + c.DescribeOne(j)
}

// awaitRollback stores what to verify of r's rollback req, when r's policy
// verifies its rollbacks. A failure is logged: the rollback matters more
// than its verification, and goes out regardless.
func (w *Watcher) awaitRollback(ctx context.Context, r *Run, req events.RollbackRequest) {
	if r.Policy.Rollback.Verify == nil {
		return
	}
	r.mu.Lock()
	st := runState{
		ID: verifyID(r.ID), Seq: r.seq, Deploy: r.Deploy, Format: r.Deploy.Format, Policy: r.Policy.Snapshot(),
		Verify: &verifyState{RunID: r.ID, RequestID: req.ID, Checks: r.verifyChecks, DeployTime: r.deployTime()},
	}
	for _, name := range r.verifyChecks {
		for _, cs := range r.checks {
			if cs.check.Name == name {
				// The run's pre_deploy baseline is the verification's.
				st.Checks = append(st.Checks, storedCheck{Check: name, Baseline: storedBaseline(cs.baseline)})
			}
		}
	}
	r.mu.Unlock()
	if len(st.Checks) == 0 {
		return
	}
	b, err := json.Marshal(st)
	if err == nil {
		_, err = w.verifies.Create(ctx, verifyKey(req.ID), b)
	}
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		w.logger.Error("rollback.verify: what to verify not stored; this rollback will not be verified", "run", r.ID, "request", req.ID, "err", err)
	}
}

// storedBaseline is a baseline as stored.
func storedBaseline(series []policy.Series) []storedSeries {
	var out []storedSeries
	for _, s := range series {
		out = append(out, storedSeries{Labels: s.Labels, Value: strconv.FormatFloat(s.Value, 'g', -1, 64)})
	}
	return out
}

// rolledBack handles the executor's service.rolledback announcement on
// subject: the rollback of a run whose policy verifies it completed, and
// its verification starts here. An error is worth another delivery (NATS
// did not answer); an announcement with nothing to verify is passed over.
func (w *Watcher) rolledBack(ctx context.Context, subject string, data []byte) error {
	rb, err := events.DecodeRolledBack(subject, data)
	if err != nil {
		w.logger.Warn("own service.rolledback announcement unreadable; its rollback is not verified", "subject", subject, "err", err)
		return nil
	}
	if rb.RequestID == "" {
		return nil
	}
	key := verifyKey(rb.RequestID)
	e, err := w.verifies.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil // its policy does not verify, or it is verified already
	case err != nil:
		return fmt.Errorf("reading what to verify of rollback %s: %w", rb.RequestID, err)
	}
	var st runState
	if err := json.Unmarshal(e.Value(), &st); err != nil || st.Verify == nil {
		w.logger.Error("what to verify of a rollback is unreadable; it is not verified", "request", rb.RequestID, "err", err)
		return nil
	}
	if st.Verify.Started {
		// Delivered again: whoever holds the verification goes on with
		// it; a dead replica's is taken over here.
		return w.adoptID(ctx, st.ID, true)
	}
	now := time.Now()
	st.Start = rb.Time
	if st.Start.IsZero() || st.Start.After(now) {
		st.Start = now // another host's clock ahead of this one
	}
	st.Owner = w.Replica
	st.Verify.From, st.Verify.To = rb.FromVersion, rb.Version
	r, err := restoreRun(st, 0)
	if err != nil {
		w.logger.Error("rollback verification cannot start", "request", rb.RequestID, "run", st.Verify.RunID, "err", err)
		return nil
	}
	if w.hasRun(r.ID) {
		return nil
	}
	switch err := w.create(ctx, r); {
	case errors.Is(err, jetstream.ErrKeyExists):
		if err := w.adoptID(ctx, r.ID, true); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("storing the verification of rollback %s: %w", rb.RequestID, err)
	default:
		_, interval, end := r.schedule()
		w.logger.Info("verifying rollback", "request", rb.RequestID, "run", st.Verify.RunID, "service", r.Deploy.Service,
			"environment", r.Deploy.Environment, "checks", st.Verify.Checks, "every", interval, "until", end)
		w.start(ctx, r)
	}
	st.Verify.Started = true
	b, err := json.Marshal(st)
	if err == nil {
		_, err = w.verifies.Update(ctx, key, b, e.Revision())
	}
	if err != nil {
		w.logger.Debug("verification not marked started", "request", rb.RequestID, "err", err)
	}
	return nil
}

// settleVerify carries out a verification's decision: verified or
// unhelpful, with each check's last measurement.
func (w *Watcher) settleVerify(ctx context.Context, r *Run, mv move) {
	v := r.verify
	d := audit.VerifyDetail{
		RequestID: v.RequestID, Outcome: mv.outcome, From: v.From, To: v.To,
		RolledBackAt: r.Start.UTC(), WithinSeconds: time.Duration(r.Policy.Window).Seconds(),
		SkippedMeasurements: mv.detail.SkippedMeasurements,
	}
	r.mu.Lock()
	for _, cs := range r.checks {
		c := audit.VerifyCheck{Check: cs.check.Name, Query: cs.query, Counts: countsOf(cs.tally)}
		if l := cs.last; l != nil {
			c.EvalTime, c.Value, c.Threshold, c.Outcome, c.Reason = l.Time.UTC(), l.Value, l.Threshold, l.Outcome, l.Reason
		}
		d.Checks = append(d.Checks, c)
	}
	r.mu.Unlock()
	w.decide(ctx, r, decision{verdict: mv.verdict, kind: mv.record, reason: mv.reason, detail: d.Map()})
}

// concludeVerify ends a verification whose verdict is recorded: its state
// and what was waiting for the rollback go.
func (w *Watcher) concludeVerify(ctx context.Context, r *Run, verdict, reason string) {
	v := r.verify
	w.drop(ctx, r)
	if err := w.verifies.Purge(ctx, verifyKey(v.RequestID)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		w.logger.Debug("verified rollback not removed from "+VerifyBucket+"; it expires", "request", v.RequestID, "err", err)
	}
	w.metrics.verifications.WithLabelValues(r.Deploy.Service, r.Deploy.Environment, verdict).Inc()
	log := w.logger.Info
	if verdict == verdictUnhelpful {
		log = w.logger.Warn
	}
	log("rollback verification ended", "request", v.RequestID, "run", v.RunID, "service", r.Deploy.Service,
		"environment", r.Deploy.Environment, "verdict", verdict, "reason", reason)
	w.mu.Lock()
	w.removeActiveLocked(r)
	w.mu.Unlock()
}
