package watch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
)

// Taking deploy events off DEPLOYS: lanes, decoding, one run per deploy id.

// DedupBucket remembers deploy event ids, so that the same event id starts
// one run however often, and by whichever tool, it is published.
const DedupBucket = "WATCHER_DEPLOY_IDS"

// ingestLanes is how many deploy events are handled at once.
const ingestLanes = 128

// laneOf picks the lane of a subject (FNV-1a).
func laneOf(subject string, n int) int {
	h := uint32(2166136261)
	for i := 0; i < len(subject); i++ {
		h ^= uint32(subject[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

// handle gives one message its outcome. It acks only once that outcome is
// in the audit stream; if the audit cannot be written the message is
// redelivered, so that nothing is lost.
func (w *Watcher) handle(ctx context.Context, msg jetstream.Msg) {
	result, err := w.handleDeploy(ctx, msg.Subject(), msg.Headers(), msg.Data(), msgSeq(msg))
	if err != nil {
		w.logger.Error("deploy event not handled; will retry", "subject", msg.Subject(), "err", err)
		_ = msg.NakWithDelay(2 * time.Second)
		return
	}
	w.metrics.events.WithLabelValues(result).Inc()
	if err := msg.Ack(); err != nil {
		w.logger.Warn("ack failed", "subject", msg.Subject(), "err", err)
	}
}

func msgSeq(msg jetstream.Msg) uint64 {
	md, err := msg.Metadata()
	if err != nil {
		return 0
	}
	return md.Sequence.Stream
}

// handleDeploy decodes and validates one event and starts its run. It
// returns the result for watcher_deploy_events_total.
func (w *Watcher) handleDeploy(ctx context.Context, subject string, hdr nats.Header, data []byte, seq uint64) (string, error) {
	now := time.Now().UTC()
	d, err := events.DecodeDeploy(subject, hdr, data)
	var notDeploy *events.NotDeployError
	var reject *events.RejectError
	switch {
	case errors.As(err, &notDeploy) && hdr.Get(events.HeaderAnnouncement) != "" && notDeploy.RolledBack():
		// Our own announcement of a rollback, already recorded as
		// rollback.completed: counted, not recorded again. It starts the
		// rollback's verification when its run asked for one.
		w.logger.Debug("own service.rolledback announcement", "subject", subject)
		return "ignored", w.rolledBack(ctx, subject, data)
	case errors.As(err, &notDeploy):
		env, svc := events.SubjectNames(subject)
		return "ignored", w.Audit.Record(ctx, audit.Record{
			Kind: audit.RunSkipped, Service: svc, Environment: env,
			Message: err.Error(),
			Detail:  audit.RunSkippedDetail{Subject: subject, Type: notDeploy.Type, Reason: "not a deploy event"}.Map(),
		})
	case errors.As(err, &reject):
		env, svc := events.SubjectNames(subject)
		w.logger.Warn("deploy event rejected", "subject", subject, "field", reject.Field, "err", err)
		return "rejected", w.Audit.Record(ctx, audit.Record{
			Kind: audit.EventRejected, Service: svc, Environment: env,
			Message: "deploy event rejected: " + err.Error(),
			Detail: audit.EventRejectedDetail{Subject: subject, Field: reject.Field,
				DecodeRejection: &audit.DecodeRejection{Reason: reject.Reason, Size: len(data), StreamSeq: seq}}.Map(),
		})
	case err != nil:
		return "", err
	}
	if d.Time.IsZero() {
		d.Time = now
	}

	p := w.Policies().Match(d.Service, d.Environment)
	base := audit.Record{DeployID: d.ID, Service: d.Service, Environment: d.Environment, Version: d.Version}
	if p == nil {
		r := base
		r.Kind = audit.RunSkipped
		r.Message = fmt.Sprintf("no policy matches service %s in environment %s: deploy %s not validated", d.Service, d.Environment, d.Version)
		r.Detail = audit.RunSkippedDetail{Subject: subject, Format: d.Format}.Map()
		return "skipped", w.Audit.Record(ctx, r)
	}

	runID, dup, done, err := w.claim(ctx, d, seq)
	if err != nil {
		return "", err
	}
	if done {
		// The event came again after its run was decided (the ack was
		// lost in a crash): its outcome is in the audit already.
		w.logger.Info("deploy event redelivered after its run ended", "run", runID, "deploy", d.ID, "stream_seq", seq)
		return "started", nil
	}
	if dup {
		r := base
		r.Kind = audit.RunSkipped
		r.RunID = runID
		r.Policy = p.Name
		r.Message = fmt.Sprintf("duplicate deploy event id %s: run %s already validates it", d.ID, runID)
		r.Detail = audit.RunSkippedDetail{Subject: subject, Reason: "duplicate"}.Map()
		return "duplicate", w.Audit.Record(ctx, r)
	}
	// A redelivery of the claiming message (its ack was lost or timed out)
	// while this process still has the run must not start a second loop
	// under the same run id: two loops would record every measurement and
	// the verdict twice, count the run twice, and the first to end would
	// drop the run from the active list while the other still ran. Only a
	// process without the run (a restart) starts it again.
	if w.hasRun(runID) {
		w.logger.Info("deploy event redelivered; its run is already here", "run", runID, "deploy", d.ID, "stream_seq", seq)
		return "started", nil
	}

	run, err := newRun(runID, d, p, now)
	if err != nil {
		// The policy loaded, so its templates are sound; a failure here is
		// a value from the event that a template rejects (a path, say).
		r := base
		r.Kind = audit.EventRejected
		r.Policy = p.Name
		r.Message = "deploy event rejected: " + err.Error()
		r.Detail = audit.EventRejectedDetail{Subject: subject, Field: "policy template"}.Map()
		return "rejected", w.Audit.Record(ctx, r)
	}
	run.seq, run.owner = seq, w.Replica
	// The run is stored and its run.started recorded at once: two round
	// trips in parallel, not one after the other. Both must be done before
	// the event is acked; a failure of either redelivers it, and the
	// record's message id keeps a second run.started out.
	started := make(chan error, 1)
	go func() { started <- w.recordStarted(ctx, run) }()
	err = w.create(ctx, run)
	serr := <-started
	switch {
	case errors.Is(err, jetstream.ErrKeyExists):
		// Stored before: the event came again after a crash between
		// storing the run and acking. Whoever holds the run goes on with
		// it; a dead owner's run is taken over here.
		if err := w.adoptID(ctx, runID, true); err != nil {
			return "", err
		}
		return "started", serr
	case err != nil:
		return "", fmt.Errorf("storing run %s: %w", runID, err)
	case serr != nil:
		// Stored but not recorded: the redelivery takes the run up again
		// (adoptID) and records it.
		return "", serr
	}
	w.start(ctx, run)
	w.metrics.started(run)
	return "started", nil
}

// recordStarted writes r's run.started record; its message id makes a
// repeat (a redelivered event) a no-op.
func (w *Watcher) recordStarted(ctx context.Context, run *Run) error {
	d, p := run.Deploy, run.Policy
	first, interval, end := run.schedule()
	return w.recordID(ctx, run, run.ID+".started", audit.RunStarted,
		fmt.Sprintf("validating %s %s in %s with policy %s: %d checks every %s until %s",
			d.Service, d.Version, d.Environment, p.Name, len(run.checks), interval, end.Format(time.RFC3339)),
		audit.RunStartedDetail{
			Format: d.Format, PreviousVersion: d.PreviousVersion, Hosts: d.Hosts, Labels: d.Labels,
			DeployTime: d.Time, Start: run.Start.UTC(), FirstMeasurement: first, WindowEnd: end, PolicyFile: fmt.Sprintf("%s:%d", p.File, p.Line),
			Replica: run.owner,
		}.Map())
}

// claim records the event id, so that the same id twice starts one run. A
// redelivery of the message that made the claim (the watcher died before
// acking) is not a duplicate; done says its run was decided already.
func (w *Watcher) claim(ctx context.Context, d events.Deploy, seq uint64) (runID string, dup, done bool, err error) {
	key := claimKey(d.ID)
	runID = events.NewID()
	b, _ := json.Marshal(deployClaim{RunID: runID, Seq: seq})
	_, err = w.ids.Create(ctx, key, b)
	if err == nil {
		return runID, false, false, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return "", false, false, fmt.Errorf("recording deploy id %s: %w", d.ID, err)
	}
	e, err := w.ids.Get(ctx, key)
	if err != nil {
		return "", false, false, fmt.Errorf("reading deploy id %s: %w", d.ID, err)
	}
	var c deployClaim
	_ = json.Unmarshal(e.Value(), &c)
	redelivered := seq != 0 && c.Seq == seq
	return c.RunID, !redelivered, redelivered && c.Done, nil
}

type deployClaim struct {
	RunID string `json:"run_id"`
	Seq   uint64 `json:"seq"`
	Done  bool   `json:"done,omitempty"`
}

func claimKey(deployID string) string {
	sum := sha256.Sum256([]byte(deployID))
	return hex.EncodeToString(sum[:16])
}

// claimDone marks r's deploy id as decided, before r's stored state goes.
func (w *Watcher) claimDone(ctx context.Context, r *Run) error {
	r.mu.Lock()
	c := deployClaim{RunID: r.ID, Seq: r.seq, Done: true}
	r.mu.Unlock()
	b, _ := json.Marshal(c)
	_, err := w.ids.Put(ctx, claimKey(r.Deploy.ID), b)
	return err
}
