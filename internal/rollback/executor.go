package rollback

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/deploys"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

// Auditor records decisions; *audit.Publisher is one.
type Auditor interface {
	Record(ctx context.Context, r audit.Record) error
}

// Dialer opens a Target on a remote host ("web1" or "web1:2222").
type Dialer func(ctx context.Context, host string, cfg policy.SSH) (Target, error)

// Executor consumes rollback requests, whoever sent them, and executes them
// with the policy that matches the service. It knows nothing of runs.
type Executor struct {
	JS       jetstream.JetStream
	Policies func() *policy.Set
	Audit    Auditor
	Logger   *slog.Logger
	// DryRun records each request and executes nothing.
	DryRun bool
	// Dial reaches remote hosts; nil means only the local filesystem.
	Dial Dialer
	// Local is the watcher's own filesystem (tests may wrap it).
	Local Target
	// Source is the CloudEvents source of the service.rolledback events.
	Source   string
	Consumer string
	// Workers bounds how many requests execute at once (different services;
	// one service and environment never has two at once).
	Workers int
	// AckWait is how long a request being executed by a replica that stopped
	// answering waits before another replica gets it (default 2m; the
	// executor marks progress every quarter of it). Replicas is the
	// replication factor of RequestsBucket; Replica names this process in
	// it.
	AckWait  time.Duration
	Replicas int
	Replica  string
	// HostAttempts bounds how often one host's rollback is tried when its
	// connection drops (default 5); RetryBackoff is the wait before the
	// second attempt (default 1s), doubling after each, up to 10s.
	HostAttempts int
	RetryBackoff time.Duration

	requests jetstream.KeyValue

	initOnce     sync.Once
	logger       *slog.Logger
	results      *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	hostFailures *prometheus.CounterVec
	keys         sync.Map // "env/service" -> *sync.Mutex
	wg           sync.WaitGroup
	sem          chan struct{}
}

// Rollback results for watcher_rollbacks_total.
const (
	ResultCompleted = "completed"
	ResultFailed    = "failed"
	ResultSkipped   = "skipped" // dry-run or mode: publish
)

// Register adds the executor's metrics to reg.
func (e *Executor) Register(reg prometheus.Registerer) {
	e.init()
	reg.MustRegister(e.results, e.duration, e.hostFailures)
}

// init fills in the defaults once. Execute is safe to call from several
// goroutines (it takes a per-service lock), including on an executor that
// Register and Start never set up; a plain "if e.results != nil" check let
// two first calls write these fields at once (a data race under -race).
func (e *Executor) init() { e.initOnce.Do(e.setup) }

func (e *Executor) setup() {
	e.logger = e.Logger
	if e.logger == nil {
		e.logger = slog.New(slog.DiscardHandler)
	}
	e.logger = e.logger.With("component", "rollback")
	if e.Local == nil {
		e.Local = Local{}
	}
	if e.Consumer == "" {
		e.Consumer = "watcher-rollbacks"
	}
	if e.Source == "" {
		e.Source = "rollback-watcher"
	}
	if e.Workers <= 0 {
		e.Workers = 16
	}
	if e.AckWait <= 0 {
		e.AckWait = 2 * time.Minute
	}
	e.sem = make(chan struct{}, e.Workers)
	e.results = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "watcher_rollbacks_total", Help: "Rollback requests handled, by result (completed, failed, skipped: dry-run, mode publish, or the release was rolled back already).",
	}, []string{"result"})
	e.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "watcher_rollback_duration_seconds", Help: "Time from a rollback request's execution start to its result, by result.",
		Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300},
	}, []string{"result"})
	e.hostFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "watcher_rollback_host_failures_total", Help: "Hosts that a rollback could not switch (or run the after command on), by host.",
	}, []string{"host"})
	for _, r := range []string{ResultCompleted, ResultFailed, ResultSkipped} {
		e.results.WithLabelValues(r)
		e.duration.WithLabelValues(r)
	}
}

// Start consumes ROLLBACKS in the background until ctx ends.
func (e *Executor) Start(ctx context.Context) error {
	e.init()
	if err := e.openRequests(ctx); err != nil {
		return err
	}
	cons, err := bus.EnsureConsumer(ctx, e.JS, bus.RollbacksStream, jetstream.ConsumerConfig{
		Durable:       e.Consumer,
		FilterSubject: events.RollbacksPrefix + ".>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		// A fleet rollback with a data step can take minutes; the handler
		// also marks progress so a slow one is not redelivered.
		AckWait:       e.AckWait,
		MaxAckPending: 256,
		// A new consumer must not replay old requests from the stream.
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return err
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		e.sem <- struct{}{}
		e.wg.Add(1)
		go func() {
			defer func() { <-e.sem; e.wg.Done() }()
			e.handle(ctx, msg)
		}()
	})
	if err != nil {
		return fmt.Errorf("consuming %s: %w", bus.RollbacksStream, err)
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		<-ctx.Done()
		cc.Stop()
		// Callbacks may still run until the subscription is closed; holding
		// the wait group until then keeps Wait from returning under them.
		<-cc.Closed()
	}()
	return nil
}

// Wait blocks until the consumer and every rollback in progress stopped.
func (e *Executor) Wait() { e.wg.Wait() }

func (e *Executor) handle(ctx context.Context, msg jetstream.Msg) {
	req, rej := rollbackreq.Decode(msg.Subject(), msg.Data())
	if rej != nil {
		if aerr := e.Audit.Record(ctx, audit.Record{
			Kind: audit.EventRejected, Service: rej.Service, Environment: rej.Environment,
			Message: "rollback request rejected: " + rej.Err.Error(),
			Detail:  map[string]any{"subject": rej.Subject, "field": rej.Field},
		}); aerr != nil {
			e.logger.Error("rejection not recorded; will retry", "err", aerr)
			_ = msg.NakWithDelay(2 * time.Second)
			return
		}
		_ = msg.Ack()
		return
	}
	tr, err := e.track(ctx, req.ID)
	if err != nil {
		e.logger.Error("rollback request not handled; will retry", "request", req.ID, "err", err)
		_ = msg.NakWithDelay(2 * time.Second)
		return
	}
	if tr.has(stepDone) {
		// Executed already: delivered again (an ack lost in a crash) or
		// published again with the same id after the duplicate window.
		e.logger.Info("rollback request executed already; not again", "request", req.ID, "result", tr.prog.Result)
		_ = msg.Ack()
		return
	}
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(e.AckWait / 4)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	res := e.executeTracked(ctx, req, tr)
	close(stop)
	if res.Err != nil && ctx.Err() != nil {
		// Shutting down mid-way: leave the request for the next start.
		return
	}
	if res.Retry {
		e.logger.Error("rollback request not handled; will retry", "request", req.ID, "err", res.Err)
		_ = msg.NakWithDelay(2 * time.Second)
		return
	}
	if err := tr.mark(ctx, stepDone, res.Status); err != nil {
		e.logger.Warn("rollback request not marked done; a redelivery will find every host rolled back", "request", req.ID, "err", err)
	}
	_ = msg.Ack()
}

// HostResult is how one target's rollback went.
type HostResult struct {
	Host     string        `json:"host"`
	Link     string        `json:"link"`
	From     string        `json:"from"`
	To       string        `json:"to"`
	Source   string        `json:"source,omitempty"`
	Switched bool          `json:"switched"`
	Duration time.Duration `json:"duration_ns"`
	After    string        `json:"after_output,omitempty"`
	Error    string        `json:"error,omitempty"`
	// Attempts is how many tries the host took (more than one when its
	// connection dropped); Earlier says what an earlier attempt or request
	// had done there already; AfterRan is "yes" when this execution ran the
	// after command, "earlier" when an earlier attempt had.
	Attempts int    `json:"attempts,omitempty"`
	Earlier  string `json:"earlier,omitempty"`
	AfterRan string `json:"after_ran,omitempty"`
	// LinkNow is the release the link names when the rollback failed,
	// read back from the host ("" when it could not be read; the failure
	// message says why).
	LinkNow string `json:"link_now,omitempty"`

	standing string // where the link stands, for the rollback.failed message
}

// Result is what Execute did.
type Result struct {
	Status string // ResultCompleted, ResultFailed, ResultSkipped
	Hosts  []HostResult
	Err    error
	// Retry says the request was not acted on and may be tried again.
	Retry bool
}

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

// Execute handles one request and records every step in the audit.
func (e *Executor) Execute(ctx context.Context, req events.RollbackRequest) Result {
	return e.executeTracked(ctx, req, nil)
}

// executeTracked is Execute, skipping the data steps that tr says ran in
// an earlier attempt and recording those it runs.
func (e *Executor) executeTracked(ctx context.Context, req events.RollbackRequest, tr *tracker) Result {
	e.init()
	lock := e.lockFor(req.Environment + "/" + req.Service)
	lock.Lock()
	defer lock.Unlock()

	start := time.Now()
	res := e.execute(ctx, req, tr)
	e.results.WithLabelValues(res.Status).Inc()
	e.duration.WithLabelValues(res.Status).Observe(time.Since(start).Seconds())
	for _, h := range res.Hosts {
		if h.Error != "" {
			e.hostFailures.WithLabelValues(h.Host).Inc()
		}
	}
	return res
}

// mark records a step of tr's request. It is best effort: a step whose
// record is lost is repeated if this execution is cut short, which the
// switch tolerates and a data script should (the README asks data scripts
// to be idempotent).
func (e *Executor) mark(ctx context.Context, tr *tracker, req events.RollbackRequest, step string) {
	if err := tr.mark(ctx, step, ""); err != nil {
		e.logger.Warn("rollback step not recorded", "request", req.ID, "step", step, "err", err)
	}
}

func (e *Executor) lockFor(key string) *sync.Mutex {
	m, _ := e.keys.LoadOrStore(key, &sync.Mutex{})
	return m.(*sync.Mutex)
}

func (e *Executor) execute(ctx context.Context, req events.RollbackRequest, tr *tracker) Result {
	p := e.policyFor(req)
	base := audit.Record{
		RequestID: req.ID, RunID: req.RunID, DeployID: req.DeployID, Service: req.Service,
		Environment: req.Environment, Version: req.Version,
	}
	if p != nil {
		base.Policy = p.Name
	}
	requested := base
	requested.Kind = audit.RollbackRequested
	// Message ids keep the records of a request executed again after a
	// crash (tracker) single in the audit stream.
	requested.MsgID = req.ID + ".requested"
	requested.Message = fmt.Sprintf("rollback of %s in %s requested by %s: %s", req.Service, req.Environment, req.Source, req.Reason)
	requested.Detail = map[string]any{
		"source": req.Source, "reason": req.Reason, "to_version": req.ToVersion, "hosts": req.Hosts,
		"requested_at": req.Time, "executed": true,
	}
	if req.Alert != nil {
		// The alert that asked for it, as alert.received named it.
		requested.Detail["alert"] = req.Alert
		requested.Message += fmt.Sprintf(" (alert %s, fingerprint %s)", req.Alert.Name, req.Alert.Fingerprint)
	}
	skip := ""
	switch {
	case p == nil:
	case e.DryRun:
		skip = "--dry-run"
	case p.Rollback.Mode == policy.ModePublish:
		skip = "policy " + p.Name + " has mode: publish"
	}
	if skip != "" {
		requested.Message += "; not executed: " + skip
		requested.Detail["executed"] = false
		requested.Detail["dry_run"] = e.DryRun
		requested.Detail["mode"] = p.Rollback.Mode
	}
	if err := e.Audit.Record(ctx, requested); err != nil {
		// Nothing was done: worth retrying once the audit is back, since
		// nothing may execute without its record.
		return Result{Status: ResultFailed, Err: err, Retry: true}
	}
	if skip != "" {
		return Result{Status: ResultSkipped}
	}
	if p == nil {
		return e.failed(ctx, base, nil, fmt.Errorf("no policy matches service %s in environment %s: nothing says how to roll it back", req.Service, req.Environment))
	}

	if len(p.Rollback.Hosts) == 0 && len(req.Hosts) > 0 && e.JS != nil {
		if err := e.checkHosts(ctx, req); err != nil {
			if errors.Is(err, errHostsNotAnnounced) {
				return e.failed(ctx, base, nil, err)
			}
			return Result{Status: ResultFailed, Err: err, Retry: true}
		}
	}
	plans, err := e.plan(ctx, req, p)
	if err != nil {
		return e.failedOn(ctx, base, p, plans, hostResults(plans), err, nil)
	}
	if rolledBackBefore(plans) {
		return e.nothingToDo(ctx, req, p, base, plans)
	}
	data := p.Rollback.Data
	var dataOut map[string]any
	if data != nil && data.Order == "before_code" {
		if tr.has(stepDataBefore) {
			dataOut = map[string]any{"skipped": "ran in an earlier attempt of this request"}
		} else {
			dataOut, err = e.runData(ctx, req, p, plans)
			if err != nil {
				return e.failedOn(ctx, base, p, plans, hostResults(plans), fmt.Errorf("data step failed before the code switch, no host switched: %w", err), map[string]any{"data": dataOut})
			}
			e.mark(ctx, tr, req, stepDataBefore)
		}
	}
	results := e.switchAll(ctx, req, p, plans)
	var bad []string
	for _, r := range results {
		if r.Error != "" {
			bad = append(bad, r.Host+": "+r.Error)
		}
	}
	if len(bad) == 0 {
		e.mark(ctx, tr, req, stepSwitched)
	}
	if data != nil && data.Order != "before_code" && len(bad) == 0 {
		if tr.has(stepDataAfter) {
			dataOut = map[string]any{"skipped": "ran in an earlier attempt of this request"}
		} else {
			dataOut, err = e.runData(ctx, req, p, plans)
			if err != nil {
				return e.failedOn(ctx, base, p, plans, results, fmt.Errorf("code rolled back on every host, but the data step failed: %w", err), map[string]any{"data": dataOut})
			}
			e.mark(ctx, tr, req, stepDataAfter)
		}
	}
	if len(bad) > 0 {
		return e.failedOn(ctx, base, p, plans, results, fmt.Errorf("%d of %d hosts failed: %s", len(bad), len(results), strings.Join(bad, "; ")), map[string]any{"data": dataOut})
	}

	to := filepath.Base(plans[0].release.Previous)
	from := filepath.Base(plans[0].release.Current)
	done := base
	done.Kind = audit.RollbackCompleted
	done.MsgID = req.ID + ".result"
	done.Message = fmt.Sprintf("%s in %s rolled back from %s to %s on %d host(s)", req.Service, req.Environment, from, to, len(results))
	done.Detail = map[string]any{"hosts": results, "from": from, "to": to}
	if dataOut != nil {
		done.Detail["data"] = dataOut
	}
	if err := e.Audit.Record(ctx, done); err != nil {
		e.logger.Error("rollback.completed not recorded", "request", req.ID, "err", err)
	}
	e.publishRolledBack(ctx, req, from, to)
	e.logger.Info("rollback completed", "request", req.ID, "service", req.Service, "environment", req.Environment, "from", from, "to", to)
	return Result{Status: ResultCompleted, Hosts: results}
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

// rolledBackBefore reports whether another request rolled back the
// release on every host already: a repeated manual rollback, or one after
// an automatic rollback of the same deploy.
func rolledBackBefore(plans []*plan) bool {
	for _, pl := range plans {
		if !pl.doneBefore {
			return false
		}
	}
	return true
}

// nothingToDo records a request that finds its release rolled back on
// every host by an earlier request: each host's standing, then a
// rollback.completed that says nothing changed. No data step runs and no
// service.rolledback is announced again.
func (e *Executor) nothingToDo(ctx context.Context, req events.RollbackRequest, p *policy.Policy, base audit.Record, plans []*plan) Result {
	results := e.switchAll(ctx, req, p, plans)
	from, to := filepath.Base(plans[0].release.Current), filepath.Base(plans[0].release.Previous)
	done := base
	done.Kind = audit.RollbackCompleted
	done.MsgID = req.ID + ".result"
	done.Message = fmt.Sprintf("nothing to do: %s in %s was rolled back from %s to %s already (%s); no host changed",
		req.Service, req.Environment, from, to, plans[0].earlier)
	done.Detail = map[string]any{"hosts": results, "from": from, "to": to, "noop": true}
	if err := e.Audit.Record(ctx, done); err != nil {
		e.logger.Error("rollback.completed not recorded", "request", req.ID, "err", err)
	}
	e.logger.Info("rollback request found its release rolled back already", "request", req.ID, "service", req.Service, "environment", req.Environment, "from", from)
	return Result{Status: ResultSkipped, Hosts: results}
}

func (e *Executor) policyFor(req events.RollbackRequest) *policy.Policy {
	set := e.Policies()
	if set == nil {
		return nil
	}
	if req.Policy != "" {
		for _, p := range set.Policies {
			// The named policy must still match the request's service and
			// environment: otherwise whoever may publish on
			// rollbacks.<env>.billing could roll back shop's link by naming
			// shop's policy, defeating per-subject permissions.
			if p.Name == req.Policy && p.Match.Matches(req.Service, req.Environment) {
				return p
			}
		}
	}
	return set.Match(req.Service, req.Environment)
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
			filepath.Base(pl.release.Current), filepath.Base(pl.release.Previous), pl.release.Source)
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
	// Every path is read from the host once (see readOnce).
	t := newReadOnce(pl.target)
	pl.view = t
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
	if rel.Source == SourceRequested && req.Source == events.SourceValidation {
		rel.Source = SourceEvent // the deploy event's previous_version
	}
	pl.release = rel
	// Resolve returns Previous == Current when the host is already on the
	// requested to_version (a retried request without a version). That is
	// the same situation as the already-rolled-back case above: nothing to
	// switch, mark or run after. Without this, a retry reported
	// switched: true and ran the after command a second time.
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
	pl.release = Release{Link: link, Current: from, Previous: cur, ReleasesDir: relDir, Source: "already rolled back"}
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
	if want.Source == SourceNewest {
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
	var prog requestProgress
	if err := json.Unmarshal(entry.Value(), &prog); err != nil {
		return false, fmt.Errorf("progress of rollback request %s: %w", id, err)
	}
	return prog.has(stepDone) && prog.Result == ResultCompleted, nil
}

func hostResults(plans []*plan) []HostResult {
	out := make([]HostResult, 0, len(plans))
	for _, pl := range plans {
		name := pl.addr
		if pl.target != nil {
			name = pl.target.Name()
		}
		r := HostResult{Host: name, Link: pl.link, From: pl.release.Current, To: pl.release.Previous, Source: pl.release.Source}
		if pl.err != nil {
			r.Error = pl.err.Error()
		}
		out = append(out, r)
	}
	return out
}

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
	r := HostResult{Host: pl.target.Name(), Link: pl.link, From: pl.release.Current, To: pl.release.Previous, Source: pl.release.Source, Earlier: pl.earlier}
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
		Detail: map[string]any{"host": r.Host, "link": r.Link, "from": r.From, "to": r.To, "source": r.Source,
			"switched": r.Switched, "duration_seconds": r.Duration.Seconds(), "error": r.Error, "after_output": r.After,
			"attempts": r.Attempts, "earlier": r.Earlier, "after_ran": r.AfterRan},
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
		if !st.switched {
			if _, err := SwitchFrom(view, pl.link, pl.release.Current, pl.release.Previous); err != nil {
				return err
			}
			st.switched, r.Switched = true, true
		}
	}
	if pl.mark && !st.marked {
		if st.retried {
			removeTemps(view, pl.release.Current, "."+MarkerFile+".tmp-")
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
	r.After = string(out)
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

// lastLine is the last non-empty line of a command's output, shortened.
func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > 300 {
		l = l[:300] + "…"
	}
	if l == "" {
		return "no output"
	}
	return l
}

// maxDataOutput bounds the data step's output kept in the audit.
const maxDataOutput = 16 << 10

// runData runs the policy's data step where run_on says.
func (e *Executor) runData(ctx context.Context, req events.RollbackRequest, p *policy.Policy, plans []*plan) (map[string]any, error) {
	ds := p.Rollback.Data
	var targets []*plan
	switch ds.RunOn {
	case "all":
		targets = plans
	case "first":
		targets = plans[:1]
	default:
		local := *plans[0]
		local.target = e.Local
		local.host = "local"
		local.data.Host = "local"
		targets = []*plan{&local}
	}
	out := map[string]any{}
	for _, pl := range targets {
		argv, err := ds.RenderCommand(pl.data)
		if err != nil {
			return out, err
		}
		tctx, cancel := context.WithTimeout(ctx, time.Duration(ds.Timeout))
		start := time.Now()
		b, err := pl.target.Run(tctx, argv, rollbackEnv(req, pl))
		cancel()
		if len(b) > maxDataOutput {
			b = append(b[:maxDataOutput:maxDataOutput], "\n[output truncated]"...)
		}
		entry := map[string]any{"command": argv, "output": string(b), "duration_seconds": time.Since(start).Seconds()}
		out[pl.target.Name()] = entry
		if err != nil {
			entry["error"] = err.Error()
			// The command's own last words usually say why (psql's
			// "ERROR: table ... does not exist"): put them in the message.
			return out, fmt.Errorf("%s: %q: %w: %s", pl.target.Name(), strings.Join(argv, " "), err, lastLine(b))
		}
	}
	return out, nil
}

func (e *Executor) failed(ctx context.Context, base audit.Record, hosts []HostResult, err error) Result {
	return e.failedWith(ctx, base, hosts, err, nil)
}

// failedOn records a failure after the targets were planned, saying where
// each link stands now.
func (e *Executor) failedOn(ctx context.Context, base audit.Record, p *policy.Policy, plans []*plan, hosts []HostResult, err error, extra map[string]any) Result {
	standing(plans, hosts, parallelism(p))
	return e.failedWith(ctx, base, hosts, err, extra)
}

func (e *Executor) failedWith(ctx context.Context, base audit.Record, hosts []HostResult, err error, extra map[string]any) Result {
	rec := base
	rec.Kind = audit.RollbackFailed
	rec.MsgID = base.RequestID + ".result"
	rec.Message = fmt.Sprintf("rollback of %s in %s failed: %v", base.Service, base.Environment, err)
	rec.Message += whereLinksStand(hosts)
	rec.Detail = map[string]any{"error": err.Error(), "hosts": hosts}
	for k, v := range extra {
		if v != nil && !isNilMap(v) {
			rec.Detail[k] = v
		}
	}
	if aerr := e.Audit.Record(ctx, rec); aerr != nil {
		e.logger.Error("rollback.failed not recorded", "request", base.RequestID, "err", aerr)
	}
	e.logger.Error("rollback failed", "request", base.RequestID, "service", base.Service, "environment", base.Environment, "err", err)
	return Result{Status: ResultFailed, Hosts: hosts, Err: err}
}

// whereLinksStand sums up where the links stand for a failure message:
// "; links now: every host on v2", or the hosts grouped by where their link
// stands when they differ ("; links now: on v1: web1, web2; on v2: web3").
// The audit record's detail has each host's link_now.
func whereLinksStand(hosts []HostResult) string {
	var order []string
	groups := map[string][]string{}
	for _, h := range hosts {
		if h.standing == "" {
			continue
		}
		if _, ok := groups[h.standing]; !ok {
			order = append(order, h.standing)
		}
		groups[h.standing] = append(groups[h.standing], h.Host)
	}
	switch {
	case len(order) == 0:
		return ""
	case len(order) == 1 && len(hosts) == 1:
		return "; link now " + order[0]
	case len(order) == 1:
		return "; links now: every host " + order[0]
	}
	parts := make([]string, len(order))
	for i, w := range order {
		parts[i] = w + ": " + strings.Join(groups[w], ", ")
	}
	return "; links now: " + strings.Join(parts, "; ")
}

func isNilMap(v any) bool {
	m, ok := v.(map[string]any)
	return ok && m == nil
}

// publishRolledBack announces the rollback as a CDEvents service.rolledback
// on the deploy subject, where deploy tooling listens; it starts no run.
func (e *Executor) publishRolledBack(ctx context.Context, req events.RollbackRequest, from, to string) {
	if e.JS == nil {
		return // a drill: nothing to announce
	}
	b, err := events.EncodeRolledBack(events.RolledBack{
		ID: rolledBackID(req.ID), Service: req.Service, Environment: req.Environment,
		Version: to, FromVersion: from, RequestID: req.ID, Reason: req.Reason, Time: time.Now().UTC(),
	}, e.Source)
	if err != nil {
		e.logger.Error("service.rolledback not encoded", "err", err)
		return
	}
	msg := &nats.Msg{
		Subject: events.Subject(events.DeploysPrefix, req.Environment, req.Service),
		Data:    b,
		Header: nats.Header{"Content-Type": []string{events.ContentTypeCloudEvents},
			events.HeaderAnnouncement: []string{"service.rolledback"}},
	}
	if _, err := e.JS.PublishMsg(ctx, msg, jetstream.WithMsgID(rolledBackID(req.ID))); err != nil {
		e.logger.Error("service.rolledback not published", "request", req.ID, "err", err)
	}
}

// rolledBackID derives the event id from the request, so that a retry
// announces the same event; a long request id is hashed to stay within the
// id limit.
func rolledBackID(requestID string) string {
	id := "rolledback-" + requestID
	if len(id) <= 200 {
		return id
	}
	sum := sha256.Sum256([]byte(requestID))
	return "rolledback-" + hex.EncodeToString(sum[:16])
}

// joinErrs joins errors on one line ("a; b") and keeps them for errors.Is.
func joinErrs(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return joinedErr(errs)
}

type joinedErr []error

func (j joinedErr) Error() string {
	s := make([]string, len(j))
	for i, e := range j {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func (j joinedErr) Unwrap() []error { return j }

// readOnce is a view of a target for one host's rollback in which each path
// is read from the target once: the first answer to Lstat, Stat or Readlink
// of a path is kept and given again, until a change made through the view
// (Symlink, Rename, WriteFile, ReplaceFile, Remove, Run) forgets them all, so
// that a read after a change, such as Switch's read-back of the link, goes
// to the target. Errors are not kept.
//
// Over SSH every read is a round trip through the host's sshd, and the
// layout code asks the same questions more than once: the executor reads
// the link before Resolve reads it again, samePath and checkPrevious both
// look at the previous release, and switching asks again what resolving
// learnt of the release directories. The switch step reuses the plan's view
// with the link forgotten (forgetPath): the link is what a deploy changes
// in between, while a release directory does not turn into a symlink
// during a rollback. A view serves one goroutine at a time.
type readOnce struct {
	Target
	lstat, stat map[string]fs.FileInfo
	link        map[string]string
}

func newReadOnce(t Target) *readOnce { return &readOnce{Target: t} }

func (r *readOnce) forget() { r.lstat, r.stat, r.link = nil, nil, nil }

func remember[V any](m *map[string]V, name string, read func(string) (V, error)) (V, error) {
	if v, ok := (*m)[name]; ok {
		return v, nil
	}
	v, err := read(name)
	if err == nil {
		if *m == nil {
			*m = map[string]V{}
		}
		(*m)[name] = v
	}
	return v, err
}

func (r *readOnce) Lstat(name string) (fs.FileInfo, error) {
	return remember(&r.lstat, name, r.Target.Lstat)
}

// Stat answers from an Lstat of name already made when it found no
// symlink there: Stat and Lstat agree then.
func (r *readOnce) Stat(name string) (fs.FileInfo, error) {
	if fi, ok := r.lstat[name]; ok && fi.Mode()&fs.ModeSymlink == 0 {
		return fi, nil
	}
	return remember(&r.stat, name, r.Target.Stat)
}

// forgetPath drops what was read of name.
func (r *readOnce) forgetPath(name string) {
	delete(r.lstat, name)
	delete(r.stat, name)
	delete(r.link, name)
}

func (r *readOnce) Readlink(name string) (string, error) {
	return remember(&r.link, name, r.Target.Readlink)
}

func (r *readOnce) Symlink(oldname, newname string) error {
	r.forget()
	return r.Target.Symlink(oldname, newname)
}

func (r *readOnce) Rename(oldname, newname string) error {
	r.forget()
	return r.Target.Rename(oldname, newname)
}

func (r *readOnce) WriteFile(name string, data []byte, perm fs.FileMode) error {
	r.forget()
	return r.Target.WriteFile(name, data, perm)
}

func (r *readOnce) ReplaceFile(name string, data []byte) error {
	r.forget()
	return r.Target.ReplaceFile(name, data)
}

func (r *readOnce) Remove(name string) error {
	r.forget()
	return r.Target.Remove(name)
}

func (r *readOnce) Run(ctx context.Context, argv []string, env []string) ([]byte, error) {
	r.forget()
	return r.Target.Run(ctx, argv, env)
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
