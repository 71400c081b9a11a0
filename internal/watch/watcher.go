// Package watch owns validation runs: it turns deploy events into runs,
// measures each run's checks on schedule, and publishes a rollback request
// when a run fails.
package watch

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

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
	steps   *stepStores // the comparisons' step data, shared by the runs measuring the same resolved query
	sched   *scheduler
	ctx     context.Context // Start's
	ids     jetstream.KeyValue
	runs    jetstream.KeyValue
	alive   jetstream.KeyValue
	// verifies holds the rollbacks to verify once they complete
	// (verify.go).
	verifies jetstream.KeyValue
	// startLive are the replicas live at start, for tend to notice one
	// going.
	startLive map[string]bool
	wg        sync.WaitGroup

	mu     sync.Mutex
	active map[string]*Run
	// byService indexes active runs by environment and service, for
	// superseding without a scan of every run. A service rarely has more
	// than one: a slice costs a pointer a run where a map costs hundreds
	// of bytes (10,000 runs of as many services).
	byService map[string][]*Run
	recent    []*Run
	// verifying counts the active runs that verify a rollback: they are
	// in active (and byService, for a deploy to supersede them), and
	// are not validation runs in their window.
	verifying int
}

func serviceKey(r *Run) string { return r.Deploy.Environment + "\x00" + r.Deploy.Service }

func (w *Watcher) addActiveLocked(r *Run) {
	if _, ok := w.active[r.ID]; !ok && r.verify != nil {
		w.verifying++
	}
	w.active[r.ID] = r
	k := serviceKey(r)
	runs := w.byService[k]
	if i := slices.IndexFunc(runs, func(o *Run) bool { return o.ID == r.ID }); i >= 0 {
		runs[i] = r
		return
	}
	w.byService[k] = append(runs, r)
}

func (w *Watcher) removeActiveLocked(r *Run) {
	if _, ok := w.active[r.ID]; ok && r.verify != nil {
		w.verifying--
	}
	delete(w.active, r.ID)
	k := serviceKey(r)
	runs := slices.DeleteFunc(w.byService[k], func(o *Run) bool { return o.ID == r.ID })
	if len(runs) == 0 {
		delete(w.byService, k)
	} else {
		w.byService[k] = runs
	}
}

func (w *Watcher) init() {
	if w.metrics != nil {
		return
	}
	w.active = map[string]*Run{}
	w.byService = map[string][]*Run{}
	w.sched = newScheduler()
	w.ctx = context.Background()
	w.querier = newSharedQuerier(w.Querier)
	w.steps = newStepStores()
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
			return float64(len(w.active) - w.verifying)
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
		deploys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watcher_deploys_total", Help: "Deploy events that started a validation run, by service and environment.",
		}, []string{"service", "environment"}),
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watcher_verdicts_total", Help: "Validation runs ended, by service, environment and verdict.",
		}, []string{"service", "environment", "verdict"}),
		decision: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "watcher_decision_seconds", Help: "Time from a deploy to its run's verdict, by verdict.",
			Buckets: decisionBuckets,
		}, []string{"verdict"}),
		verifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watcher_rollback_verifications_total", Help: "Rollbacks measured again after they completed (rollback.verify), by service, environment and result (verified, unhelpful).",
		}, []string{"service", "environment", "result"}),
	}
	for _, v := range []string{VerdictPassed, VerdictFailed, VerdictInconclusive, VerdictMarginal, VerdictSuperseded} {
		w.metrics.runs.WithLabelValues(v)
		w.metrics.decision.WithLabelValues(v)
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

// Wait blocks until the consumer and every run have stopped.
func (w *Watcher) Wait() { w.wg.Wait() }

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
// environment: what they validate is no longer what is deployed. A
// verification supersedes nothing (a rollback is no deploy), and is
// superseded by the next deploy like a run.
func (w *Watcher) start(ctx context.Context, r *Run) {
	r.ctx, r.cancel = context.WithCancel(ctx)
	var older []*Run
	w.mu.Lock()
	for _, o := range w.byService[serviceKey(r)] {
		if r.verify == nil {
			older = append(older, o)
		}
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
	if r.verify == nil {
		w.warm(ctx, r)
	}
	r.mu.Lock()
	next := r.next
	r.mu.Unlock()
	w.sched.add(r, next)
}

// requestRollback records the verdict and publishes the rollback request.
// The request id derives from the run, so a retried publish is dropped by
// the stream's duplicate window instead of rolling back twice. ask makes
// the executor hold it for a person's answer (on_marginal: ask).
func (w *Watcher) requestRollback(ctx context.Context, r *Run, verdict, kind, reason string, detail audit.VerdictDetail, ask bool) {
	req := rollbackreq.FromRun(r.ID, r.Deploy, r.seq, r.Policy.Name, reason, time.Now())
	req.Ask = ask
	detail.RequestID = req.ID
	verify := make([]string, len(detail.Checks))
	for i, c := range detail.Checks {
		verify[i] = c.Check
	}
	w.decide(ctx, r, decision{verdict: verdict, kind: kind, reason: reason + "; rollback requested (" + req.ID + ")",
		detail: detail.Map(), request: &req, verify: verify})
}

func (w *Watcher) record(ctx context.Context, r *Run, kind, msg string, detail map[string]any) error {
	return w.recordID(ctx, r, "", kind, msg, detail)
}

// recordID is record with a message id: the same step repeated by a
// resumed run is stored once.
//
// A verification's records carry its run's id and its rollback request's:
// `watcher history --run` shows the run, its rollback and whether that
// helped, in one table.
func (w *Watcher) recordID(ctx context.Context, r *Run, msgID, kind, msg string, detail map[string]any) error {
	rec := audit.Record{
		Kind: kind, RunID: r.ID, DeployID: r.Deploy.ID, Service: r.Deploy.Service,
		Environment: r.Deploy.Environment, Version: r.Deploy.Version, Policy: r.Policy.Name,
		Message: msg, Detail: detail, MsgID: msgID,
	}
	if v := r.verify; v != nil {
		rec.RunID, rec.RequestID = v.RunID, v.RequestID
	}
	return w.Audit.Record(ctx, rec)
}
