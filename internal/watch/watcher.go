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
	case errors.As(err, &notDeploy) && hdr.Get(events.HeaderAnnouncement) != "" && notDeploy.RolledBack():
		// Our own announcement of a rollback, already recorded as
		// rollback.completed: counted, not recorded again.
		w.logger.Debug("own service.rolledback announcement passed over", "subject", subject)
		return "ignored", nil
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

// requestRollback records the verdict and publishes the rollback request.
// The request id derives from the run, so a retried publish is dropped by
// the stream's duplicate window instead of rolling back twice.
func (w *Watcher) requestRollback(ctx context.Context, r *Run, verdict, kind, reason, key string, checks []map[string]any, extra map[string]any) {
	req := rollbackreq.FromRun(r.ID, r.Deploy, r.seq, r.Policy.Name, reason, time.Now())
	detail := map[string]any{key: checks, "request_id": req.ID}
	maps.Copy(detail, extra)
	w.decide(ctx, r, verdict, kind, reason+"; rollback requested ("+req.ID+")", detail, &req)
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
