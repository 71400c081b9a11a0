// Package alerts takes Alertmanager's webhook (version 4) and turns a
// firing alert that a policy lets roll back a deploy into a rollback
// request, linked to the alert in the audit.
package alerts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/watch"
)

// MaxPayload bounds a webhook body: Alertmanager sends groups of alerts,
// and a group is capped by max_alerts in its route anyway.
const MaxPayload = 1 << 20

// The labels that say which deploy an alert is about.
const (
	ServiceLabel     = "service"
	EnvironmentLabel = "environment"
)

// Message is Alertmanager's webhook payload, version 4.
type Message struct {
	Version     string            `json:"version"`
	GroupKey    string            `json:"groupKey"`
	Status      string            `json:"status"`
	Receiver    string            `json:"receiver"`
	GroupLabels map[string]string `json:"groupLabels"`
	ExternalURL string            `json:"externalURL"`
	Alerts      []Alert           `json:"alerts"`
}

// Alert is one alert of a webhook message.
type Alert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

// BadRequest is a payload the receiver refuses as a whole (HTTP 400).
type BadRequest struct{ Err error }

func (e *BadRequest) Error() string { return e.Err.Error() }

// Receiver handles webhook messages.
type Receiver struct {
	JS       jetstream.JetStream
	Policies func() *policy.Set
	Audit    watch.Auditor
	Logger   *slog.Logger
	Now      func() time.Time

	once   sync.Once
	counts *prometheus.CounterVec
}

// Register adds watcher_alerts_total{result} (requested, ignored,
// resolved, refused) to reg.
func (rc *Receiver) Register(reg prometheus.Registerer) {
	rc.init()
	reg.MustRegister(rc.counts)
}

func (rc *Receiver) init() {
	rc.once.Do(func() {
		rc.counts = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watcher_alerts_total", Help: "Alerts received on POST /api/v1/alerts, by result (requested, ignored, resolved; refused counts requests refused unread: cross-origin or not JSON).",
		}, []string{"result"})
		for _, r := range []string{"requested", "ignored", "resolved", "refused"} {
			rc.counts.WithLabelValues(r)
		}
	})
}

// Handle decodes one webhook body and gives each alert its outcome, each
// recorded as alert.received: a rollback requested, or why not. An error
// means the message should be sent again (Alertmanager retries on 5xx),
// except *BadRequest.
func (rc *Receiver) Handle(ctx context.Context, body io.Reader) error {
	data, err := io.ReadAll(io.LimitReader(body, MaxPayload+1))
	if err != nil {
		return fmt.Errorf("reading the webhook: %w", err)
	}
	if len(data) > MaxPayload {
		return &BadRequest{fmt.Errorf("webhook body over %d bytes", MaxPayload)}
	}
	var m Message
	if err := json.Unmarshal(data, &m); err != nil {
		return &BadRequest{fmt.Errorf("not an Alertmanager webhook message: %v", err)}
	}
	if m.Version != "4" {
		return &BadRequest{fmt.Errorf("webhook version %q: only version 4 (Alertmanager's) is understood", m.Version)}
	}
	var errs []error
	for _, a := range m.Alerts {
		if err := rc.handle(ctx, m, a); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Refused records a request to the webhook that was refused before its
// body was read (a cross-origin request from a browser, a body that is not
// JSON), as alert.received with no service: whoever tried to roll back a
// deploy from a web page shows up in the audit. An error writing the record
// is logged; the request is refused either way.
func (rc *Receiver) Refused(ctx context.Context, why string) {
	rc.init()
	rc.counts.WithLabelValues("refused").Inc()
	outcome := "refused: " + why
	rec := audit.Record{Kind: audit.AlertReceived, Message: "webhook request " + outcome, Detail: map[string]any{"outcome": outcome}}
	if err := rc.Audit.Record(ctx, rec); err != nil && rc.Logger != nil {
		rc.Logger.Error("recording a refused webhook request", "err", err)
	}
}

// handle gives one alert its outcome.
func (rc *Receiver) handle(ctx context.Context, m Message, a Alert) error {
	ref := events.AlertRef{Name: a.Labels["alertname"], Fingerprint: a.Fingerprint, StartsAt: a.StartsAt.UTC(),
		GeneratorURL: a.GeneratorURL, Labels: a.Labels}
	svc, env := a.Labels[ServiceLabel], a.Labels[EnvironmentLabel]
	rec := audit.Record{Kind: audit.AlertReceived, Service: svc, Environment: env,
		Detail: map[string]any{"alert": ref, "status": a.Status, "group_key": m.GroupKey, "receiver": m.Receiver}}
	rc.init()
	outcome := func(format string, args ...any) error {
		rec.Message = fmt.Sprintf("alert %s (%s): ", ref.Name, a.Status) + fmt.Sprintf(format, args...)
		rec.Detail["outcome"] = fmt.Sprintf(format, args...)
		result := "ignored"
		switch {
		case rec.RequestID != "":
			result = "requested"
		case a.Status != "firing":
			result = "resolved"
		}
		rc.counts.WithLabelValues(result).Inc()
		return rc.Audit.Record(ctx, rec)
	}
	if err := ref.Validate(); err != nil {
		return outcome("ignored: %v", err)
	}
	if a.Status != "firing" {
		return outcome("resolved; nothing to do")
	}
	if events.CheckNames(svc, env) != nil {
		return outcome("ignored: it has no valid %s and %s labels to say which deploy it is about", ServiceLabel, EnvironmentLabel)
	}
	p := rc.Policies().Match(svc, env)
	switch {
	case p == nil:
		return outcome("ignored: no policy matches service %s in environment %s", svc, env)
	case p.Alerts == nil:
		return outcome("ignored: policy %s has no alerts section, so no alert may roll it back", p.Name)
	case !p.Alerts.Matches(a.Labels):
		return outcome("ignored: policy %s's alert matchers %v do not match it", p.Name, p.Alerts.Matchers)
	}
	rec.Policy = p.Name

	d, at, skipped, err := rc.lastDeploy(ctx, svc, env)
	subject := events.Subject(events.DeploysPrefix, env, svc)
	passed := ""
	if skipped > 0 {
		rec.Detail["skipped_messages"] = skipped
		passed = fmt.Sprintf(" (passing over %d newer messages on %s that are no valid deploy)", skipped, subject)
	}
	switch {
	case errors.Is(err, errNoDeploy):
		return outcome("ignored: no deploy of %s in %s to roll back%s", svc, env, passed)
	case errors.Is(err, errRolledBack):
		return outcome("ignored: the last deploy of %s in %s was rolled back already%s", svc, env, passed)
	case errors.Is(err, errTooFar):
		return outcome("ignored: none of the last %d messages on %s is a valid deploy, so the deploy to roll back is unknown; "+
			"find it with `watcher history` and roll it back with `watcher rollback`", maxDeployLookback, subject)
	case err != nil:
		return err
	}
	rec.DeployID, rec.Version = d.ID, d.Version
	now := time.Now()
	if rc.Now != nil {
		now = rc.Now()
	}
	if since := now.Sub(at); since > time.Duration(p.Alerts.Within) {
		return outcome("ignored: the last deploy (%s, version %s) was %s ago, longer than the policy's within %s",
			d.ID, d.Version, since.Round(time.Second), p.Alerts.Within)
	}
	// One rollback per alert and deploy: Alertmanager repeats a firing
	// group every repeat_interval, and each repeat must not roll back
	// again (the id is the stream's message id, and the executor runs an
	// id once).
	sum := sha256.Sum256([]byte(a.Fingerprint + "\x00" + d.ID))
	req := events.RollbackRequest{
		ID: "alert-" + hex.EncodeToString(sum[:12]), Service: svc, Environment: env,
		Version: d.Version, ToVersion: d.PreviousVersion, Hosts: d.Hosts, Labels: d.Labels,
		Reason:   events.ClampReason(fmt.Sprintf("alert %s firing since %s", ref.Name, ref.StartsAt.Format(time.RFC3339))),
		Source:   events.SourceAlert,
		DeployID: d.ID, Policy: p.Name, Time: now.UTC(), Alert: &ref,
	}
	rec.RequestID = req.ID
	rec.Detail["request_id"] = req.ID
	rec.MsgID = req.ID + ".alert." + a.StartsAt.UTC().Format(time.RFC3339Nano)
	if err := outcome("rolls back deploy %s (version %s of %s in %s)%s: rollback requested (%s)", d.ID, d.Version, svc, env, passed, req.ID); err != nil {
		return err // not requested without its record; Alertmanager sends again
	}
	return watch.PublishRollback(ctx, rc.JS, req)
}

var (
	errNoDeploy   = errors.New("no deploy")
	errRolledBack = errors.New("rolled back")
	errTooFar     = errors.New("no deploy among the newest messages")
)

// maxDeployLookback bounds how many messages on deploys.<env>.<svc> an
// alert looks through for the deploy it rolls back: far more than a burst
// of stray messages after a deploy, few enough that a flood of them costs
// an alert little.
const maxDeployLookback = 100

// lastDeploy is the newest valid deploy event on deploys.<env>.<svc>, when
// the stream got it, and how many newer messages there were that are no
// deploy: whoever may publish on the subject can put anything there, and a
// stray message after a bad deploy must not stop an alert from rolling it
// back. The watcher itself publishes service.rolledback there after a
// rollback, so that event, met before any deploy, means there is nothing
// left to roll back.
func (rc *Receiver) lastDeploy(ctx context.Context, svc, env string) (d events.Deploy, at time.Time, skipped int, err error) {
	s, err := rc.JS.Stream(ctx, bus.DeploysStream)
	if err != nil {
		return events.Deploy{}, time.Time{}, 0, fmt.Errorf("DEPLOYS stream: %w", err)
	}
	subject := events.Subject(events.DeploysPrefix, env, svc)
	err = newestFirst(ctx, s, subject, func(msg *jetstream.RawStreamMsg) (bool, error) {
		dd, derr := events.DecodeDeploy(subject, msg.Header, msg.Data)
		var notDeploy *events.NotDeployError
		switch {
		case derr == nil:
			d, at = dd, msg.Time
			return false, nil
		case errors.As(derr, &notDeploy) && strings.Contains(notDeploy.Type, ".service.rolledback."):
			return false, errRolledBack
		}
		skipped++
		if skipped >= maxDeployLookback {
			return false, errTooFar
		}
		return true, nil
	})
	switch {
	case err != nil:
		return events.Deploy{}, time.Time{}, skipped, err
	case d.ID == "":
		return events.Deploy{}, time.Time{}, skipped, errNoDeploy
	}
	return d, at, skipped, nil
}

// newestFirst gives visit the messages on subject, newest first, until it
// returns false or an error. JetStream reads a subject only forwards (the
// first message on it at or after a sequence), so it reads windows of
// sequences backwards from the newest, each twice as wide as the one
// before: few requests whether the subject is most of the stream or a
// sliver of it.
func newestFirst(ctx context.Context, s jetstream.Stream, subject string, visit func(*jetstream.RawStreamMsg) (bool, error)) error {
	last, err := s.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the last message on %s: %w", subject, err)
	}
	if more, err := visit(last); !more || err != nil {
		return err
	}
	hi := last.Sequence // messages at hi and above have been visited
	for width := uint64(16); hi > 1; width *= 2 {
		lo := uint64(1)
		if hi > width {
			lo = hi - width
		}
		var window []*jetstream.RawStreamMsg
		for seq := lo; ; {
			m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				return fmt.Errorf("reading %s at sequence %d: %w", subject, seq, err)
			}
			if m.Sequence >= hi {
				break
			}
			window = append(window, m)
			seq = m.Sequence + 1
		}
		for i := len(window) - 1; i >= 0; i-- {
			if more, err := visit(window[i]); !more || err != nil {
				return err
			}
		}
		hi = lo
	}
	return nil
}
