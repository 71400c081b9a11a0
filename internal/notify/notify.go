// Package notify sends audit records to people and systems (README
// "Notifications"): a durable consumer of the AUDIT stream posts each
// record a target subscribes to, as Slack incoming-webhook JSON or as the
// record itself signed with a secret, retried with backoff. It runs beside
// the watcher and the executor, never in their way: they only write the
// audit trail, and a slow or dead receiver delays nothing but its own
// notifications.
package notify

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/config"
	"github.com/rollback-watcher/watcher/internal/events"
)

// Results for watcher_notifications_total: a notification sent, one
// finally failed (recorded as notify.failed), an attempt to be retried.
const (
	ResultSent    = "sent"
	ResultFailed  = "failed"
	ResultRetried = "retried"
)

// Defaults: five attempts over about two minutes (8s, 16s, 32s, 64s
// apart).
const (
	DefaultConsumer = "watcher-notify"
	DefaultBucket   = "watcher-notify"
	DefaultAttempts = 5
	DefaultBackoff  = 8 * time.Second
	DefaultTimeout  = 10 * time.Second
	DefaultAckWait  = 30 * time.Second
)

// Auditor records a notification that finally failed; *audit.Publisher is
// one.
type Auditor interface {
	Record(ctx context.Context, r audit.Record) error
}

// Notifier consumes the AUDIT stream and notifies Targets.
type Notifier struct {
	JS      jetstream.JetStream
	Targets []*Target
	Audit   Auditor
	Logger  *slog.Logger
	// ExternalURL is --web.external-url: Slack messages link to the status
	// page under it. Empty: no links.
	ExternalURL string
	// Replicas of the KV bucket that notes what was sent.
	Replicas int

	// Consumer and Bucket name the durable consumer and the KV bucket;
	// Attempts, Backoff (the first wait, doubled after each attempt),
	// Timeout (per attempt) and AckWait tune delivery (tests shorten them).
	Consumer, Bucket string
	Attempts         int
	Backoff, Timeout time.Duration
	AckWait          time.Duration
	// Workers bounds the records being notified at once.
	Workers int

	initOnce sync.Once
	logger   *slog.Logger
	client   *http.Client
	counts   *prometheus.CounterVec
	sent     jetstream.KeyValue
	wg       sync.WaitGroup
}

// Register adds watcher_notifications_total{target,result} to reg.
func (n *Notifier) Register(reg prometheus.Registerer) {
	n.init()
	reg.MustRegister(n.counts)
}

func (n *Notifier) init() { n.initOnce.Do(n.setup) }

func (n *Notifier) setup() {
	n.logger = n.Logger
	if n.logger == nil {
		n.logger = slog.New(slog.DiscardHandler)
	}
	n.logger = n.logger.With("component", "notify")
	if n.Consumer == "" {
		n.Consumer = DefaultConsumer
	}
	if n.Bucket == "" {
		n.Bucket = DefaultBucket
	}
	if n.Attempts <= 0 {
		n.Attempts = DefaultAttempts
	}
	if n.Backoff <= 0 {
		n.Backoff = DefaultBackoff
	}
	if n.Timeout <= 0 {
		n.Timeout = DefaultTimeout
	}
	if n.AckWait <= 0 {
		n.AckWait = DefaultAckWait
	}
	if n.Workers <= 0 {
		n.Workers = 32
	}
	n.client = &http.Client{
		// A redirect would take the body, signature included, to another
		// URL than the one configured.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	n.counts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "watcher_notifications_total",
		Help: "Notifications by target and result: sent, failed (every attempt failed: recorded as notify.failed), retried (an attempt failed and is retried).",
	}, []string{"target", "result"})
	for _, t := range n.Targets {
		for _, r := range []string{ResultSent, ResultFailed, ResultRetried} {
			n.counts.WithLabelValues(t.Name, r)
		}
	}
}

// Start creates the consumer and the bucket and notifies in the background
// until ctx ends; Wait waits for it to stop. A record is acknowledged once
// every target it is for has been sent it or has finally failed, so a
// notifier stopped (or killed) before that leaves it to the next one,
// which skips the targets noted as done.
func (n *Notifier) Start(ctx context.Context) error {
	n.init()
	kv, err := bus.EnsureKeyValue(ctx, n.JS, jetstream.KeyValueConfig{
		Bucket:      n.Bucket,
		Description: "notifications sent or finally failed, by record and target (rollback watcher)",
		TTL:         7 * 24 * time.Hour,
		Storage:     jetstream.FileStorage,
		Replicas:    max(n.Replicas, 1),
	})
	if err != nil {
		return err
	}
	n.sent = kv
	cons, err := bus.EnsureConsumer(ctx, n.JS, bus.AuditStream, jetstream.ConsumerConfig{
		Durable:       n.Consumer,
		Description:   "notifications (rollback watcher)",
		FilterSubject: events.AuditPrefix + ".>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       n.AckWait,
		MaxAckPending: 1024,
		// The first start notifies from then on, not a year of history;
		// after that the consumer resumes where it was.
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return err
	}
	if err := bus.ConsumeBounded(ctx, cons, n.Workers, &n.wg, bus.AuditStream+" for notifications", n.handle); err != nil {
		return err
	}
	n.logger.Info("notifying", "targets", len(n.Targets))
	return nil
}

// Wait blocks until the consumer and every notification in progress
// stopped.
func (n *Notifier) Wait() { n.wg.Wait() }

// DeliveryID identifies a record among all notifications: its stream
// sequence, and a digest of its content so that a recreated stream's
// sequences do not repeat an id.
func DeliveryID(seq uint64, data []byte) string {
	sum := sha256.Sum256(data)
	return fmt.Sprintf("%d-%x", seq, sum[:6])
}

// handle notifies one record to the targets that want it.
func (n *Notifier) handle(ctx context.Context, msg jetstream.Msg) {
	var rec audit.Record
	if err := json.Unmarshal(msg.Data(), &rec); err != nil || rec.Kind == audit.NotifyFailed {
		_ = msg.Ack() // not a record, or one never notified
		return
	}
	var targets []*Target
	for _, t := range n.Targets {
		if t.Wants(rec.Kind, rec.Service, rec.Environment) {
			targets = append(targets, t)
		}
	}
	if len(targets) == 0 {
		_ = msg.Ack()
		return
	}
	meta, err := msg.Metadata()
	if err != nil {
		n.logger.Error("audit record without metadata; not notified", "kind", rec.Kind, "err", err)
		_ = msg.Term()
		return
	}
	delivery := DeliveryID(meta.Sequence.Stream, msg.Data())

	// Retries take minutes: keep the record this notifier's meanwhile.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(n.AckWait / 3)
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

	done := make([]bool, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() { done[i] = n.notify(ctx, t, rec, msg.Data(), delivery) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // stopping: the next notifier gets the record again
	}
	for _, d := range done {
		if !d {
			_ = msg.NakWithDelay(n.Backoff)
			return
		}
	}
	_ = msg.Ack()
}

// notify delivers rec to t unless that was done before, and reports
// whether t is done with rec: sent, or finally failed and recorded.
func (n *Notifier) notify(ctx context.Context, t *Target, rec audit.Record, raw []byte, delivery string) bool {
	key := delivery + "." + t.Name
	if _, err := n.sent.Get(ctx, key); err == nil {
		return true // sent (or failed for good) before a restart
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		n.logger.Error("cannot tell whether a notification was sent; will retry", "target", t, "delivery", delivery, "err", err)
		return false
	}
	body := raw
	if t.Kind == config.NotifySlack {
		var err error
		if body, err = slackBody(rec, n.ExternalURL); err != nil {
			n.logger.Error("cannot encode the Slack message", "target", t, "kind", rec.Kind, "err", err)
			return false
		}
	}
	attempts, err := n.deliver(ctx, t, rec.Kind, delivery, body)
	if errors.Is(err, errAborted) {
		return false
	}
	outcome := ResultSent
	if err != nil {
		outcome = ResultFailed
		if aerr := n.recordFailure(ctx, t, rec, delivery, attempts, err); aerr != nil {
			n.logger.Error("notification failed and the failure is not recorded; will retry", "target", t,
				"kind", rec.Kind, "delivery", delivery, "err", err, "audit_err", aerr)
			return false
		}
		n.logger.Error("notification failed", "target", t, "kind", rec.Kind, "delivery", delivery, "attempts", attempts, "err", err)
	}
	n.counts.WithLabelValues(t.Name, outcome).Inc()
	if _, perr := n.sent.Put(ctx, key, []byte(outcome)); perr != nil {
		// Acked anyway: only a redelivery, which the ack prevents, would
		// send it again.
		n.logger.Warn("notification not noted as done", "target", t, "delivery", delivery, "err", perr)
	}
	return true
}

// recordFailure writes notify.failed for rec and t. Its message id makes a
// second write (a restart between the record and the note) a duplicate.
func (n *Notifier) recordFailure(ctx context.Context, t *Target, rec audit.Record, delivery string, attempts int, err error) error {
	r := audit.Record{
		Kind: audit.NotifyFailed, RunID: rec.RunID, DeployID: rec.DeployID, RequestID: rec.RequestID,
		Service: rec.Service, Environment: rec.Environment, Version: rec.Version, Policy: rec.Policy,
		Message: fmt.Sprintf("notification %s of %s not delivered after %d attempts: %v", t.Name, rec.Kind, attempts, err),
		MsgID:   "notify.failed." + delivery + "." + t.Name,
	}
	if serr := r.SetDetail(audit.NotifyFailedDetail{
		Target: t.Name, TargetKind: t.Kind, RecordKind: rec.Kind, Delivery: delivery,
		RunID: rec.RunID, RequestID: rec.RequestID, Attempts: attempts, LastError: err.Error(),
	}); serr != nil {
		return serr
	}
	return n.Audit.Record(ctx, r)
}
