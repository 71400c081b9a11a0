// Package audit writes and reads the audit trail: one JSON record per
// decision on audit.<environment>.<service> (README, "How it works").
package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/events"
)

// Record kinds.
const (
	EventRejected     = "event.rejected"
	RunSkipped        = "run.skipped"
	RunStarted        = "run.started"
	Measurement       = "measurement"
	RunPassed         = "run.passed"
	RunFailed         = "run.failed"
	RunInconclusive   = "run.inconclusive"
	RunMarginal       = "run.marginal"   // a scored run that ended between score.marginal and score.pass
	RunSuperseded     = "run.superseded" // a newer deploy of the same service and environment took over
	RollbackRequested = "rollback.requested"
	RollbackHost      = "rollback.host"
	RollbackCompleted = "rollback.completed"
	RollbackFailed    = "rollback.failed"
	AlertReceived     = "alert.received"
	// Holds, approvals and verification (README "Notifications, holds and
	// verification").
	RollbackHeld      = "rollback.held"      // announced; executes at execute_at unless cancelled, or waits for an answer
	RollbackApproved  = "rollback.approved"  // a person (or ask_default) let a held request go ahead
	RollbackCancelled = "rollback.cancelled" // a person (or ask_default) stopped a held request
	RollbackVerified  = "rollback.verified"  // the run's failed checks recovered after the rollback
	RollbackUnhelpful = "rollback.unhelpful" // they did not: the problem is elsewhere
	NotifyFailed      = "notify.failed"      // a notification that every attempt failed to deliver
)

// Record is one audit entry.
type Record struct {
	Time        time.Time      `json:"time"`
	Kind        string         `json:"kind"`
	RunID       string         `json:"run_id,omitempty"`
	DeployID    string         `json:"deploy_id,omitempty"`
	RequestID   string         `json:"request_id,omitempty"`
	Service     string         `json:"service"`
	Environment string         `json:"environment"`
	Version     string         `json:"version,omitempty"`
	Policy      string         `json:"policy,omitempty"`
	Message     string         `json:"message"`
	Detail      map[string]any `json:"detail"`

	// MsgID, when set, is the record's Nats-Msg-Id: a record written again
	// with the same id within the stream's duplicate window (a run resumed
	// by another replica repeating its last step) is stored once.
	MsgID string `json:"-"`
}

// Invalid is the subject token used for a service or environment that cannot
// be a subject token (it came from a rejected event).
const Invalid = "_invalid"

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// Subject is where a record is published. Rejected events may carry names
// that are not valid tokens; their records go to audit._invalid.* so that
// they are still kept.
func Subject(environment, service string) string {
	return events.Subject(events.AuditPrefix, token(environment), token(service))
}

// token is name as it appears in an audit subject: itself, or Invalid.
func token(name string) string {
	// tokenRE lets through "a..b" and "shop.", whose empty subject tokens
	// NATS cannot store: the record would be lost ("no response from
	// stream") instead of kept under _invalid.
	if !tokenRE.MatchString(name) || strings.Contains(name, "..") || strings.HasSuffix(name, ".") {
		return Invalid
	}
	return name
}

// Publisher writes records to the AUDIT stream.
type Publisher struct {
	JS jetstream.JetStream
	// Now stamps records that have no time (tests set it).
	Now func() time.Time
}

// Record publishes r and waits for the stream to store it, so that a caller
// acks its input only once its outcome is durable.
func (p *Publisher) Record(ctx context.Context, r Record) error {
	if r.Time.IsZero() {
		if p.Now != nil {
			r.Time = p.Now()
		} else {
			r.Time = time.Now().UTC()
		}
	}
	if r.Detail == nil {
		r.Detail = map[string]any{}
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding audit record %s: %w", r.Kind, err)
	}
	var opts []jetstream.PublishOpt
	if r.MsgID != "" {
		opts = append(opts, jetstream.WithMsgID(r.MsgID))
	}
	if _, err := p.JS.Publish(ctx, Subject(r.Environment, r.Service), b, opts...); err != nil {
		return fmt.Errorf("writing audit record %s: %w", r.Kind, err)
	}
	return nil
}

// Filter selects records to read.
type Filter struct {
	Service     string
	Environment string
	RunID       string
	// Kinds keeps only records of these kinds, each a kind or a glob of
	// kinds ("rollback.*"); none keeps every kind.
	Kinds []string
	// Limit keeps only the newest N matching records; 0 keeps all.
	Limit int
}

// keeps reports whether f keeps r, beyond the subject it reads.
func (f Filter) keeps(r Record) bool {
	if f.RunID != "" && r.RunID != f.RunID {
		return false
	}
	if (renamed(f.Service) && r.Service != f.Service) || (renamed(f.Environment) && r.Environment != f.Environment) {
		return false // another invalid name under _invalid
	}
	if len(f.Kinds) == 0 {
		return true
	}
	for _, k := range f.Kinds {
		if ok, _ := path.Match(k, r.Kind); ok {
			return true
		}
	}
	return false
}

// ValidKinds checks f's kinds: each must be a kind glob that can match.
func (f Filter) ValidKinds() error {
	for _, k := range f.Kinds {
		if _, err := path.Match(k, ""); err != nil {
			return fmt.Errorf("--kind %q is not a kind or a glob of kinds such as rollback.*", k)
		}
	}
	return nil
}

func (f Filter) subject() string {
	env, svc := "*", "*"
	// Names that are not subject tokens are read where Record put them,
	// under _invalid (Read then compares the names themselves); used raw
	// they made an invalid filter subject and a confusing NATS error.
	if f.Environment != "" {
		env = token(f.Environment)
	}
	if f.Service != "" {
		svc = token(f.Service)
	}
	if svc == "*" {
		// A service name may contain dots (several tokens).
		return events.AuditPrefix + "." + env + ".>"
	}
	return events.Subject(events.AuditPrefix, env, svc)
}

// renamed reports whether a filter name is read under _invalid and must be
// compared with the records' names ("_invalid" itself selects them all).
func renamed(name string) bool {
	return name != "" && name != Invalid && token(name) == Invalid
}

// Read returns the records matching f, oldest first.
func Read(ctx context.Context, js jetstream.JetStream, f Filter) ([]Record, error) {
	for attempt := 1; ; attempt++ {
		recs, err := read(ctx, js, f)
		// In a cluster, a consumer just created may have no leader to
		// answer for a moment: "no responders". Worth a few more tries.
		if err == nil || !errors.Is(err, nats.ErrNoResponders) || attempt == 5 {
			return recs, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
		}
	}
}

func read(ctx context.Context, js jetstream.JetStream, f Filter) ([]Record, error) {
	cons, err := js.OrderedConsumer(ctx, "AUDIT", jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{f.subject()},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		// The server keeps an idle consumer for InactiveThreshold (5m by
		// default) and caps consumers per stream: a script polling
		// `watcher history` would hit that cap. A reader fetches without
		// pause, so a short threshold loses nothing.
		InactiveThreshold: 5 * time.Second,
	})
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("no AUDIT stream on this server: has a watcher run against it?")
		}
		return nil, fmt.Errorf("reading the audit stream: %w", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the audit stream: %w", err)
	}
	pending := info.NumPending
	var out []Record
	for pending > 0 {
		n := 256
		if pending < uint64(n) {
			n = int(pending)
		}
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("reading the audit stream: %w", err)
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			var r Record
			if err := json.Unmarshal(msg.Data(), &r); err != nil {
				continue // not ours; the stream may be shared
			}
			if !f.keeps(r) {
				continue
			}
			out = append(out, r)
			if f.Limit > 0 && len(out) > 2*f.Limit {
				out = append(out[:0], out[len(out)-f.Limit:]...)
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("reading the audit stream: %w", err)
		}
		if got == 0 || uint64(got) >= pending {
			break
		}
		pending -= uint64(got)
	}
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[len(out)-f.Limit:]
	}
	return out, nil
}
