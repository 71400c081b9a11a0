// Package watch owns validation runs: it turns deploy events into runs,
// measures each run's checks on schedule, and publishes a rollback request
// when a run fails.
package watch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

// Auditor records decisions; *audit.Publisher is one.
type Auditor interface {
	Record(ctx context.Context, r audit.Record) error
}

// Watcher consumes deploy events and runs validations.
type Watcher struct {
	JS       jetstream.JetStream
	Policies func() *policy.Set
	Querier  Querier
	Audit    Auditor
	Logger   *slog.Logger
	// QueryTimeout is prometheus.timeout, how long one query may take. A
	// policy's queries get at most its interval (zero: the interval).
	QueryTimeout time.Duration
	// Consumer is the durable consumer name on DEPLOYS; replicas sharing it
	// share the work.
	Consumer string
	// Recent is how many finished runs /api/v1/runs keeps.
	Recent int
	// Warmer, when set, keeps connections to a deploy's hosts open while
	// its run is in its window, so that a rollback does not pay for them.
	Warmer Warmer
	// Replica names this process among the watchers sharing one NATS
	// (default: host name and a random suffix). Lease is how long its runs
	// stay its own after its last heartbeat (default DefaultLease).
	// Replicas is the replication factor of the buckets it creates.
	Replica  string
	Lease    time.Duration
	Replicas int

	metrics *metrics
	logger  *slog.Logger
	querier *sharedQuerier
	sched   *scheduler
	ctx     context.Context // Start's
	ids     jetstream.KeyValue
	runs    jetstream.KeyValue
	alive   jetstream.KeyValue
	// startLive are the replicas live at start, for tend to notice one
	// going.
	startLive map[string]bool
	wg        sync.WaitGroup

	mu     sync.Mutex
	active map[string]*Run
	// byService indexes active runs by environment and service, for
	// superseding without a scan of every run.
	byService map[string]map[string]*Run
	recent    []*Run
}

func serviceKey(r *Run) string { return r.Deploy.Environment + "\x00" + r.Deploy.Service }

func (w *Watcher) addActiveLocked(r *Run) {
	w.active[r.ID] = r
	k := serviceKey(r)
	if w.byService[k] == nil {
		w.byService[k] = map[string]*Run{}
	}
	w.byService[k][r.ID] = r
}

func (w *Watcher) removeActiveLocked(r *Run) {
	delete(w.active, r.ID)
	k := serviceKey(r)
	delete(w.byService[k], r.ID)
	if len(w.byService[k]) == 0 {
		delete(w.byService, k)
	}
}

// Warmer opens and releases connections to rollback hosts;
// *rollback.Warmer is one.
type Warmer interface {
	Warm(ctx context.Context, hosts []string, cfg policy.SSH)
	Cool(hosts []string, cfg policy.SSH)
}

// coolAfterRollback is how long connections stay warm after a run asked
// for a rollback: the executor is about to use them.
const coolAfterRollback = 5 * time.Minute

// warm opens connections to the hosts r would roll back, if it would roll
// back remote hosts at all.
func (w *Watcher) warm(ctx context.Context, r *Run) {
	if w.Warmer == nil || r.Policy.Rollback.Mode == policy.ModePublish {
		return
	}
	hosts := r.Policy.Rollback.Hosts
	if len(hosts) == 0 {
		hosts = r.Deploy.Hosts
	}
	if len(hosts) == 0 {
		return
	}
	r.warmed = hosts
	w.Warmer.Warm(ctx, hosts, r.Policy.Rollback.SSH)
}

// cool releases r's connections: now, or once the rollback it requested has
// had them.
func (w *Watcher) cool(r *Run, rollbackRequested bool) {
	if len(r.warmed) == 0 {
		return
	}
	hosts, cfg := r.warmed, r.Policy.Rollback.SSH
	if rollbackRequested {
		time.AfterFunc(coolAfterRollback, func() { w.Warmer.Cool(hosts, cfg) })
		return
	}
	w.Warmer.Cool(hosts, cfg)
}

// DedupBucket remembers deploy event ids, so that the same event id starts
// one run however often, and by whichever tool, it is published.
const DedupBucket = "WATCHER_DEPLOY_IDS"

type metrics struct {
	active       prometheus.GaugeFunc
	runs         *prometheus.CounterVec
	byPolicy     *prometheus.CounterVec
	events       *prometheus.CounterVec
	measurements *prometheus.CounterVec
	queries      *prometheus.HistogramVec
}

// Register adds the watcher's metrics to reg. Call it once before Run.
func (w *Watcher) Register(reg prometheus.Registerer) {
	w.init()
	reg.MustRegister(w.metrics.active, w.metrics.runs, w.metrics.byPolicy, w.metrics.events, w.metrics.measurements, w.metrics.queries)
}

func (w *Watcher) init() {
	if w.metrics != nil {
		return
	}
	w.active = map[string]*Run{}
	w.byService = map[string]map[string]*Run{}
	w.sched = newScheduler()
	w.ctx = context.Background()
	w.querier = newSharedQuerier(w.Querier)
	w.querier.observe = func(d time.Duration, err error) {
		result := "ok"
		if err != nil {
			result = "error"
		}
		w.metrics.queries.WithLabelValues(result).Observe(d.Seconds())
	}
	w.logger = w.Logger
	if w.logger == nil {
		w.logger = slog.New(slog.DiscardHandler)
	}
	w.logger = w.logger.With("component", "watch")
	if w.Consumer == "" {
		w.Consumer = "watcher"
	}
	if w.Recent == 0 {
		w.Recent = 200
	}
	if w.Replica == "" {
		w.Replica = DefaultReplica()
	}
	if w.Lease <= 0 {
		w.Lease = DefaultLease
	}
	w.metrics = &metrics{
		active: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "watcher_runs_active", Help: "Validation runs in their window.",
		}, func() float64 {
			w.mu.Lock()
			defer w.mu.Unlock()
			return float64(len(w.active))
		}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watcher_runs_total", Help: "Validation runs ended, by verdict.",
		}, []string{"verdict"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watcher_deploy_events_total", Help: "Deploy events received, by result (started, rejected, skipped, duplicate, ignored).",
		}, []string{"result"}),
		measurements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watcher_measurements_total", Help: "Measurements taken, by outcome.",
		}, []string{"outcome"}),
		byPolicy: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watcher_policy_runs_total", Help: "Validation runs ended, by policy and verdict.",
		}, []string{"policy", "verdict"}),
		queries: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "watcher_query_duration_seconds", Help: "Requests to Prometheus (shared by the runs that ask the same query at the same time), by result.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}, []string{"result"}),
	}
	for _, v := range []string{VerdictPassed, VerdictFailed, VerdictInconclusive, VerdictSuperseded} {
		w.metrics.runs.WithLabelValues(v)
	}
	for _, v := range []string{"started", "rejected", "skipped", "duplicate", "ignored"} {
		w.metrics.events.WithLabelValues(v)
	}
}

// Start creates what the watcher needs on the server and consumes deploy
// events in the background until ctx ends. Wait waits for it to stop.
func (w *Watcher) Start(ctx context.Context) error {
	w.init()
	kv, err := bus.EnsureKeyValue(ctx, w.JS, jetstream.KeyValueConfig{
		Bucket:  DedupBucket,
		TTL:     30 * 24 * time.Hour,
		Storage: jetstream.FileStorage,
	})
	if err != nil {
		return err
	}
	w.ids = kv
	if err := w.openStore(ctx); err != nil {
		return err
	}
	w.ctx = ctx
	w.querier.base = ctx
	w.sched.run(ctx, &w.wg, w.step)
	if err := w.adoptAtStart(ctx); err != nil {
		return err
	}
	cons, err := bus.EnsureConsumer(ctx, w.JS, bus.DeploysStream, jetstream.ConsumerConfig{
		Durable:       w.Consumer,
		FilterSubject: events.DeploysPrefix + ".>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		// Handling an event takes a few writes; one left unacknowledged
		// by a replica that died comes back to another within a few
		// leases, as its runs do.
		AckWait:       3 * w.Lease,
		MaxAckPending: 4096,
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return err
	}
	// Events are handled in lanes, one goroutine each: a few writes per
	// event are round trips to the server, which one lane would pay one
	// after another. Events of one service and environment share a lane
	// (by subject), so they are handled in the order they arrived, which
	// decides which deploy supersedes which.
	lanes := make([]chan jetstream.Msg, ingestLanes)
	for i := range lanes {
		lanes[i] = make(chan jetstream.Msg, 64)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for {
				select {
				case <-ctx.Done():
					return // what is left is redelivered after AckWait
				case msg := <-lanes[i]:
					w.handle(ctx, msg)
				}
			}
		}()
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		select {
		case lanes[laneOf(msg.Subject(), len(lanes))] <- msg:
		case <-ctx.Done():
		}
	})
	if err != nil {
		return fmt.Errorf("consuming %s: %w", bus.DeploysStream, err)
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		w.tend(ctx)
	}()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		<-ctx.Done()
		cc.Stop()
		// Callbacks may still run until the subscription is closed; holding
		// the wait group until then keeps Wait from returning under them.
		<-cc.Closed()
	}()
	return nil
}

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

// Wait blocks until the consumer and every run have stopped.
func (w *Watcher) Wait() { w.wg.Wait() }

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
	case errors.As(err, &notDeploy):
		env, svc := events.SubjectNames(subject)
		return "ignored", w.Audit.Record(ctx, audit.Record{
			Kind: audit.RunSkipped, Service: svc, Environment: env,
			Message: err.Error(),
			Detail:  map[string]any{"subject": subject, "type": notDeploy.Type, "reason": "not a deploy event"},
		})
	case errors.As(err, &reject):
		env, svc := events.SubjectNames(subject)
		w.logger.Warn("deploy event rejected", "subject", subject, "field", reject.Field, "err", err)
		return "rejected", w.Audit.Record(ctx, audit.Record{
			Kind: audit.EventRejected, Service: svc, Environment: env,
			Message: "deploy event rejected: " + err.Error(),
			Detail:  map[string]any{"subject": subject, "field": reject.Field, "reason": reject.Reason, "size": len(data), "stream_seq": seq},
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
		r.Detail = map[string]any{"subject": subject, "format": d.Format}
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
		r.Detail = map[string]any{"subject": subject, "reason": "duplicate"}
		return "duplicate", w.Audit.Record(ctx, r)
	}
	// A redelivery of the claiming message (its ack was lost or timed out)
	// while this process still has the run must not start a second loop
	// under the same run id: that recorded every measurement and the
	// verdict twice, counted the run twice, and let the first loop to end
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
		r.Detail = map[string]any{"subject": subject, "field": "policy template"}
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
		map[string]any{
			"format": d.Format, "previous_version": d.PreviousVersion, "hosts": d.Hosts, "labels": d.Labels,
			"deploy_time": d.Time, "first_measurement": first, "window_end": end, "policy_file": fmt.Sprintf("%s:%d", p.File, p.Line),
			"replica": run.owner,
		})
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

// hasRun reports whether run id is active or recent in this process.
func (w *Watcher) hasRun(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.active[id]; ok {
		return true
	}
	for _, r := range w.recent {
		if r.ID == id {
			return true
		}
	}
	return false
}

// start schedules r, and supersedes the older runs of the same service and
// environment: what they validate is no longer what is deployed.
func (w *Watcher) start(ctx context.Context, r *Run) {
	r.ctx, r.cancel = context.WithCancel(ctx)
	var older []*Run
	w.mu.Lock()
	for _, o := range w.byService[serviceKey(r)] {
		older = append(older, o)
	}
	w.addActiveLocked(r)
	w.mu.Unlock()
	for _, o := range older {
		o.mu.Lock()
		if o.supersededBy == nil {
			d := r.Deploy
			o.supersededBy = &d
		}
		o.mu.Unlock()
		o.cancel()
		// Queued: end it here. Being measured: the worker ends it when
		// its step returns.
		if w.sched.remove(o) {
			w.superseded(ctx, o)
		}
	}
	w.warm(ctx, r)
	r.mu.Lock()
	next := r.next
	r.mu.Unlock()
	w.sched.add(r, next)
}

// superseded ends a run stopped by a newer deploy, naming that deploy.
func (w *Watcher) superseded(ctx context.Context, r *Run) {
	r.mu.Lock()
	by := r.supersededBy
	r.mu.Unlock()
	if by == nil {
		return
	}
	w.finish(ctx, r, VerdictSuperseded, audit.RunSuperseded,
		fmt.Sprintf("superseded by deploy %s of version %s: its own run validates what is deployed now", by.ID, by.Version),
		map[string]any{"superseded_by": map[string]any{"deploy_id": by.ID, "version": by.Version}})
}

// step takes r's next step: one measurement of every check, or, once the
// window has closed, the verdict. It runs on a scheduler worker.
//
// Measurements happen at their scheduled times and are evaluated there: a
// run resumed late (after a crash, by another replica) catches up on the
// ones it missed, from Prometheus's history, instead of restarting its
// window or skipping them.
func (w *Watcher) step(r *Run) {
	ctx := r.ctx
	stopped := func() bool {
		if ctx.Err() == nil {
			return false
		}
		if w.ctx.Err() == nil {
			w.superseded(w.ctx, r)
		}
		r.cancel()
		return true
	}
	if stopped() {
		return
	}
	_, interval, end := r.schedule()
	r.mu.Lock()
	next, ending, since, dueThen := r.next, r.ending, r.since, r.dueThen
	r.mu.Unlock()
	timeout := queryTimeout(w.QueryTimeout, interval)
	deadline, missed := catchUpDeadline(end, since, dueThen, interval, timeout)
	// why says why measurements are skipped, should the run run out of
	// time: a resumed run whose deadline its catch-up set had missed
	// measurements while its watcher was down.
	why := fmt.Sprintf("Prometheus answered too slowly to catch up within one query timeout (%s) of the window's end", timeout)
	if deadline.After(end.Add(timeout)) {
		why = fmt.Sprintf("the watcher was down until %s, and Prometheus answered too slowly to catch up the %d measurements it missed within %s (the query timeout, %s, per missed measurement, at most %s)",
			since.UTC().Format(time.RFC3339Nano), missed, deadline.Sub(since).Round(time.Millisecond), timeout, maxCatchUp)
	}
	budget, skip := catchUp(time.Now(), next, end, deadline, interval, timeout)
	if ending || next.After(end) || skip > 0 {
		w.close(ctx, r, skipped{n: skip, from: next, why: why})
		r.cancel()
		return
	}
	failed, blind, cut, err := w.measure(ctx, r, next, budget, timeout)
	if stopped() {
		return
	}
	if err != nil {
		w.logger.Error("measurement not recorded", "run", r.ID, "err", err)
	}
	next = next.Add(interval)
	r.mu.Lock()
	r.next = next
	r.mu.Unlock()
	// A check past its consecutive_error_limit decides the run at once,
	// as the README says: measuring on would hammer a Prometheus that is
	// down, and a pass after the streak would reset the count it is
	// judged by. Past an inconclusive limit, a policy that rolls back on
	// doubt does so now; one that keeps goes on measuring, since a
	// failure later in the window still fails the run.
	// A query cut by the run's deadline (not by the query timeout) leaves
	// this measurement, and the ones after it, untaken: the run is out of
	// time and decided now.
	decided := len(failed) > 0 || cut || len(blind) > 0 && (r.Policy.OnInconclusive == policy.OnInconclusiveRollback || pastErrorLimit(blind))
	if !decided {
		if err := w.save(ctx, r); errors.Is(err, errRunLost) {
			w.lost(r)
			r.cancel()
			return
		} else if err != nil {
			w.logger.Warn("run state not saved; a restart would repeat this measurement", "run", r.ID, "err", err)
		}
	}
	switch {
	case len(failed) > 0:
		w.fail(ctx, r, failed)
		r.cancel()
		return
	case cut:
		skipFrom := next.Add(-interval)
		w.close(ctx, r, skipped{n: int(end.Sub(skipFrom)/interval) + 1, from: skipFrom, why: why})
		r.cancel()
		return
	case decided:
		w.inconclusive(ctx, r, blindReason(blind), blind, nil)
		r.cancel()
		return
	}
	if next.After(end) {
		// Wait for the window to close: a last measurement may come
		// before it.
		r.mu.Lock()
		r.ending = true
		r.mu.Unlock()
		w.sched.add(r, end)
		return
	}
	w.sched.add(r, next)
}

// close decides r at its window's end, or out of time with s.n
// measurements skipped.
func (w *Watcher) close(ctx context.Context, r *Run, s skipped) {
	verdict, reason, blind, detail := closeVerdict(r, s)
	if verdict == VerdictInconclusive {
		w.inconclusive(ctx, r, reason, blind, detail)
		return
	}
	w.finish(ctx, r, verdict, audit.RunPassed, reason, detail)
}

// fail ends r as failed and requests the rollback, at once: not at the
// window's end.
func (w *Watcher) fail(ctx context.Context, r *Run, failed []*checkState) {
	reason := events.ClampReason(failReason(failed))
	w.requestRollback(ctx, r, VerdictFailed, audit.RunFailed, reason, "checks", checkDetails(failed), nil)
}

// inconclusive ends r as inconclusive; the policy's on_inconclusive says
// whether that rolls back (keep, the default, does not: doubt alone is no
// reason to undo a deploy unless the policy says so).
//
// extra is more detail for the verdict record (skipped_measurements).
func (w *Watcher) inconclusive(ctx context.Context, r *Run, reason string, blind []*checkState, extra map[string]any) {
	if r.Policy.OnInconclusive != policy.OnInconclusiveRollback {
		detail := map[string]any{"checks": checkDetails(blind), "on_inconclusive": policy.OnInconclusiveKeep}
		maps.Copy(detail, extra)
		w.finish(ctx, r, VerdictInconclusive, audit.RunInconclusive, reason+"; on_inconclusive: keep, nothing rolled back", detail)
		return
	}
	w.requestRollback(ctx, r, VerdictInconclusive, audit.RunInconclusive,
		events.ClampReason(reason+"; on_inconclusive: rollback"), "checks", checkDetails(blind), extra)
}

func checkDetails(css []*checkState) []map[string]any {
	out := make([]map[string]any, 0, len(css))
	for _, cs := range css {
		m := map[string]any{
			"check": cs.check.Name, "query": cs.query, "limits": cs.check.Limits(),
			"counts": map[string]int{"pass": cs.tally.Pass, "fail": cs.tally.Fail, "inconclusive": cs.tally.Inconclusive,
				"error": cs.tally.Error, "consecutive_errors": cs.tally.ConsecutiveErrors},
			"failures": cs.tally.Fail, "failure_limit": cs.check.FailureLimit,
		}
		if cs.last != nil {
			m["reason"] = cs.last.Reason
			m["value"] = cs.last.Value
		}
		out = append(out, m)
	}
	return out
}

// requestRollback records the verdict and publishes the rollback request.
// The request id derives from the run, so a retried publish is dropped by
// the stream's duplicate window instead of rolling back twice.
func (w *Watcher) requestRollback(ctx context.Context, r *Run, verdict, kind, reason, key string, checks []map[string]any, extra map[string]any) {
	req := rollbackreq.FromRun(r.ID, r.Deploy, r.seq, r.Policy.Name, reason, time.Now())
	detail := map[string]any{key: checks, "request_id": req.ID}
	maps.Copy(detail, extra)
	w.decide(ctx, r, verdict, kind, reason+"; rollback requested ("+req.ID+")", detail, &req)
}

// finish records r's verdict; a run is decided once, whatever ends it
// first. It reports whether this call decided it.
func (w *Watcher) finish(ctx context.Context, r *Run, verdict, kind, reason string, detail map[string]any) bool {
	return w.decide(ctx, r, verdict, kind, reason, detail, nil)
}

// decide stores r's verdict (and the rollback it asks for, if any), then
// concludes it. The verdict is stored first so that a process dying
// half-way leaves a decided run, which whoever resumes it concludes
// instead of judging again. It reports whether this call decided r.
func (w *Watcher) decide(ctx context.Context, r *Run, verdict, kind, reason string, detail map[string]any, req *events.RollbackRequest) bool {
	r.mu.Lock()
	if r.verdict != VerdictPending {
		r.mu.Unlock()
		return false
	}
	if detail == nil {
		detail = map[string]any{}
	}
	r.verdict, r.reason, r.kind, r.detail, r.request, r.ended = verdict, reason, kind, detail, req, time.Now().UTC()
	r.mu.Unlock()
	switch err := w.save(ctx, r); {
	case errors.Is(err, errRunLost):
		w.lost(r)
		return false
	case err != nil:
		// Deciding matters more than storing the decision: a rollback
		// must not wait for NATS to come back. A replica that resumes
		// the stored run later decides it again, from the same
		// measurements, and the message ids keep the records single.
		w.logger.Warn("verdict not stored before concluding", "run", r.ID, "err", err)
	}
	w.conclude(ctx, r)
	return true
}

// conclude records a decided run's verdict, publishes its rollback
// request, and removes its stored state. Each step is idempotent (message
// ids), so a resumed run concludes again without doubling anything.
func (w *Watcher) conclude(ctx context.Context, r *Run) {
	r.mu.Lock()
	verdict, kind, reason, detail, req := r.verdict, r.kind, r.reason, r.detail, r.request
	r.mu.Unlock()
	if err := w.recordID(ctx, r, r.ID+".verdict", kind, reason, detail); err != nil {
		w.logger.Error("verdict not recorded", "run", r.ID, "verdict", verdict, "err", err)
	}
	if req != nil {
		if err := rollbackreq.Publish(ctx, w.JS, *req); err != nil {
			w.logger.Error("rollback request not published", "run", r.ID, "err", err)
		}
	}
	if err := w.claimDone(ctx, r); err != nil {
		// Keep the stored state: a redelivered event must find the run.
		w.logger.Warn("deploy id not marked decided; keeping the run's state", "run", r.ID, "err", err)
	} else {
		w.drop(ctx, r)
	}
	w.metrics.runs.WithLabelValues(verdict).Inc()
	w.metrics.byPolicy.WithLabelValues(r.Policy.Name, verdict).Inc()
	w.logger.Info("run ended", "run", r.ID, "service", r.Deploy.Service, "environment", r.Deploy.Environment,
		"version", r.Deploy.Version, "verdict", verdict, "reason", reason)
	w.mu.Lock()
	w.removeActiveLocked(r)
	w.recent = append(w.recent, r)
	if len(w.recent) > w.Recent {
		w.recent = w.recent[len(w.recent)-w.Recent:]
	}
	w.mu.Unlock()
	w.cool(r, req != nil)
}

// lost forgets a run another replica took over: it is theirs to measure
// and decide.
func (w *Watcher) lost(r *Run) {
	w.logger.Warn("run taken over by another replica; stopping here", "run", r.ID)
	w.mu.Lock()
	w.removeActiveLocked(r)
	w.mu.Unlock()
	w.cool(r, false)
}

func (w *Watcher) record(ctx context.Context, r *Run, kind, msg string, detail map[string]any) error {
	return w.recordID(ctx, r, "", kind, msg, detail)
}

// recordID is record with a message id: the same step repeated by a
// resumed run is stored once.
func (w *Watcher) recordID(ctx context.Context, r *Run, msgID, kind, msg string, detail map[string]any) error {
	return w.Audit.Record(ctx, audit.Record{
		Kind: kind, RunID: r.ID, DeployID: r.Deploy.ID, Service: r.Deploy.Service,
		Environment: r.Deploy.Environment, Version: r.Deploy.Version, Policy: r.Policy.Name,
		Message: msg, Detail: detail, MsgID: msgID,
	})
}

// RunStatus is a run as /api/v1/runs shows it.
type RunStatus struct {
	ID           string               `json:"id"`
	DeployID     string               `json:"deploy_id"`
	Service      string               `json:"service"`
	Environment  string               `json:"environment"`
	Version      string               `json:"version"`
	Policy       string               `json:"policy"`
	Started      time.Time            `json:"started"`
	WindowEnd    time.Time            `json:"window_end"`
	Ended        *time.Time           `json:"ended,omitempty"`
	Verdict      string               `json:"verdict"`
	Reason       string               `json:"reason,omitempty"`
	Measurements []*MeasurementStatus `json:"measurements"`
}

// MeasurementStatus is a check's latest measurement.
type MeasurementStatus struct {
	Check     string    `json:"check"`
	Time      time.Time `json:"time"`
	Value     *float64  `json:"value"`
	Outcome   string    `json:"outcome"`
	Threshold string    `json:"threshold"`
	Reason    string    `json:"reason"`
	DryRun    bool      `json:"dry_run,omitempty"`
}

// Runs lists active runs (newest first), then recent ones (newest first).
func (w *Watcher) Runs() (active, recent []RunStatus) {
	w.init()
	w.mu.Lock()
	act := make([]*Run, 0, len(w.active))
	for _, r := range w.active {
		act = append(act, r)
	}
	rec := append([]*Run(nil), w.recent...)
	w.mu.Unlock()
	sort.Slice(act, func(i, j int) bool { return act[i].Start.After(act[j].Start) })
	for _, r := range act {
		active = append(active, r.status())
	}
	for i := len(rec) - 1; i >= 0; i-- {
		recent = append(recent, rec[i].status())
	}
	return active, recent
}

func (r *Run) status() RunStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _, end := r.schedule()
	s := RunStatus{
		ID: r.ID, DeployID: r.Deploy.ID, Service: r.Deploy.Service, Environment: r.Deploy.Environment,
		Version: r.Deploy.Version, Policy: r.Policy.Name, Started: r.Start, WindowEnd: end,
		Verdict: r.verdict, Reason: r.reason, Measurements: []*MeasurementStatus{},
	}
	if !r.ended.IsZero() {
		e := r.ended
		s.Ended = &e
	}
	for _, cs := range r.checks {
		if cs.last != nil {
			m := *cs.last
			s.Measurements = append(s.Measurements, &m)
		}
	}
	return s
}
