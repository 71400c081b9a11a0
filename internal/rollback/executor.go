package rollback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
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
	// AnnounceSource is the CloudEvents source of the service.rolledback
	// events that announce its rollbacks.
	AnnounceSource string
	Consumer       string
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
	// Links, when set, mints the signed links that cancel (and, when ask,
	// approve) a held request until its execute_at, for its rollback.held
	// (README "Notifications, holds and verification").
	Links func(requestID string, executeAt time.Time, ask bool) (cancelURL, approveURL string)

	requests jetstream.KeyValue

	initOnce     sync.Once
	logger       *slog.Logger
	results      *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	hostFailures *prometheus.CounterVec
	byService    *prometheus.CounterVec
	restore      *prometheus.HistogramVec
	holds        *prometheus.CounterVec
	keys         sync.Map // "env/service" -> *sync.Mutex
	wg           sync.WaitGroup
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
	reg.MustRegister(e.results, e.duration, e.hostFailures, e.byService, e.restore, e.holds)
}

// init fills in the defaults once, under a sync.Once: Execute may be called
// from several goroutines at once on an executor that Register and Start
// never set up, and the first calls must not race to fill the fields.
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
	if e.AnnounceSource == "" {
		e.AnnounceSource = "rollback-watcher"
	}
	if e.Workers <= 0 {
		e.Workers = 16
	}
	if e.AckWait <= 0 {
		e.AckWait = 2 * time.Minute
	}
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
	// Service and environment come from validated requests, which keeps
	// these label sets bounded.
	e.byService = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "watcher_rollbacks_by_service_total", Help: "Rollback requests handled, by service, environment and result (a request tried again later is counted once, by its final result).",
	}, []string{"service", "environment", "result"})
	e.restore = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "watcher_restore_seconds", Help: "Time from a rollback's request (the decision) to all its hosts switched, by service and environment.",
		Buckets: []float64{1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200},
	}, []string{"service", "environment"})
	e.holds = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "watcher_rollback_holds_total",
		Help: "Held rollback requests, by what happened: held (announced), approved and cancelled (by a person), deadline_keep and deadline_rollback (an unanswered ask ended with its ask_default), executed (after a hold), refused (a decision that came too late or named no held request).",
	}, []string{"result"})
	for _, r := range []string{ResultCompleted, ResultFailed, ResultSkipped} {
		e.results.WithLabelValues(r)
		e.duration.WithLabelValues(r)
	}
	for _, r := range []string{holdHeld, holdApproved, holdCancelled, holdDeadlineKeep, holdDeadlineRollback, holdExecuted, holdRefused} {
		e.holds.WithLabelValues(r)
	}
}

// HostResult is how one target's rollback went: what its result record
// lists (audit.HostOutcome, the one definition of those fields), and where
// its link stands for a failure's message.
type HostResult struct {
	audit.HostOutcome
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
	return e.executeLocked(ctx, req, tr)
}

// executeLocked is executeTracked with the service's lock held.
func (e *Executor) executeLocked(ctx context.Context, req events.RollbackRequest, tr *tracker) Result {
	start := time.Now()
	res := e.execute(ctx, req, tr)
	e.results.WithLabelValues(res.Status).Inc()
	e.duration.WithLabelValues(res.Status).Observe(time.Since(start).Seconds())
	if !res.Retry {
		e.byService.WithLabelValues(req.Service, req.Environment, res.Status).Inc()
	}
	if res.Status == ResultCompleted && !req.Time.IsZero() {
		if d := time.Since(req.Time); d >= 0 {
			e.restore.WithLabelValues(req.Service, req.Environment).Observe(d.Seconds())
		}
	}
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
	detail := audit.RollbackRequestedDetail{
		Source: req.Source, Reason: req.Reason, ToVersion: req.ToVersion, Hosts: req.Hosts,
		RequestedAt: req.Time, Executed: true,
		// The alert that asked for it, as alert.received named it.
		Alert: req.Alert,
	}
	if req.Alert != nil {
		requested.Message += fmt.Sprintf(" (alert %s, fingerprint %s)", req.Alert.Name, req.Alert.Fingerprint)
	}
	if h := tr.hold(); h != nil {
		requested.Message += "; " + heldNote(h)
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
		mode := p.Rollback.Mode
		detail.Executed, detail.DryRun, detail.Mode = false, &e.DryRun, &mode
	}
	err := requested.SetDetail(detail)
	if err == nil {
		err = e.Audit.Record(ctx, requested)
	}
	if err != nil {
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
		return e.failedOn(ctx, base, p, plans, hostResults(plans), err, audit.DataStep{})
	}
	if rolledBackBefore(plans) {
		return e.nothingToDo(ctx, req, p, base, plans)
	}
	data := p.Rollback.Data
	var dataOut audit.DataStep
	if data != nil && data.Order == "before_code" {
		if tr.has(stepDataBefore) {
			dataOut = audit.DataStep{Skipped: "ran in an earlier attempt of this request"}
		} else {
			dataOut, err = e.runData(ctx, req, p, plans)
			if err != nil {
				return e.failedOn(ctx, base, p, plans, hostResults(plans), fmt.Errorf("data step failed before the code switch, no host switched: %w", err), dataOut)
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
			dataOut = audit.DataStep{Skipped: "ran in an earlier attempt of this request"}
		} else {
			dataOut, err = e.runData(ctx, req, p, plans)
			if err != nil {
				return e.failedOn(ctx, base, p, plans, results, fmt.Errorf("code rolled back on every host, but the data step failed: %w", err), dataOut)
			}
			e.mark(ctx, tr, req, stepDataAfter)
		}
	}
	if len(bad) > 0 {
		return e.failedOn(ctx, base, p, plans, results, fmt.Errorf("%d of %d hosts failed: %s", len(bad), len(results), strings.Join(bad, "; ")), dataOut)
	}

	to := filepath.Base(plans[0].release.Previous)
	from := filepath.Base(plans[0].release.Current)
	done := base
	done.Kind = audit.RollbackCompleted
	done.MsgID = req.ID + ".result"
	done.Message = fmt.Sprintf("%s in %s rolled back from %s to %s on %d host(s)", req.Service, req.Environment, from, to, len(results))
	err = done.SetDetail(audit.RollbackResultDetail{Hosts: hostOutcomes(results), From: from, To: to, Data: dataOut})
	if err == nil {
		err = e.Audit.Record(ctx, done)
	}
	if err != nil {
		e.logger.Error("rollback.completed not recorded", "request", req.ID, "err", err)
	}
	e.publishRolledBack(ctx, req, from, to)
	e.logger.Info("rollback completed", "request", req.ID, "service", req.Service, "environment", req.Environment, "from", from, "to", to)
	return Result{Status: ResultCompleted, Hosts: results}
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
	err := done.SetDetail(audit.RollbackResultDetail{Hosts: hostOutcomes(results), From: from, To: to, Noop: true})
	if err == nil {
		err = e.Audit.Record(ctx, done)
	}
	if err != nil {
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
