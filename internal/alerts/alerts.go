// Package alerts takes Alertmanager's webhook (version 4) and turns a
// firing alert that a policy lets roll back a deploy into a rollback
// request, linked to the alert in the audit.
package alerts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/deploys"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
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

// Auditor records each alert's outcome; *audit.Publisher is one.
type Auditor interface {
	Record(ctx context.Context, r audit.Record) error
}

// Receiver handles webhook messages.
type Receiver struct {
	JS       jetstream.JetStream
	Policies func() *policy.Set
	Audit    Auditor
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
	rec := audit.Record{Kind: audit.AlertReceived, Message: "webhook request " + outcome}
	err := rec.SetDetail(audit.AlertReceivedDetail{Outcome: outcome})
	if err == nil {
		err = rc.Audit.Record(ctx, rec)
	}
	if err != nil && rc.Logger != nil {
		rc.Logger.Error("recording a refused webhook request", "err", err)
	}
}

// CountRefused counts a refused request to the webhook without recording
// it: past the web server's per-address limit, a page firing requests at
// the watcher must not flood the audit stream.
func (rc *Receiver) CountRefused(context.Context, string) {
	rc.init()
	rc.counts.WithLabelValues("refused").Inc()
}

// handle gives one alert its outcome.
func (rc *Receiver) handle(ctx context.Context, m Message, a Alert) error {
	ref := events.AlertRef{Name: a.Labels["alertname"], Fingerprint: a.Fingerprint, StartsAt: a.StartsAt.UTC(),
		GeneratorURL: a.GeneratorURL, Labels: a.Labels}
	svc, env := a.Labels[ServiceLabel], a.Labels[EnvironmentLabel]
	rec := audit.Record{Kind: audit.AlertReceived, Service: svc, Environment: env}
	detail := audit.AlertReceivedDetail{ReceivedAlert: &audit.ReceivedAlert{Alert: ref, Status: a.Status, GroupKey: m.GroupKey, Receiver: m.Receiver}}
	rc.init()
	outcome := func(format string, args ...any) error {
		rec.Message = fmt.Sprintf("alert %s (%s): ", ref.Name, a.Status) + fmt.Sprintf(format, args...)
		detail.Outcome = fmt.Sprintf(format, args...)
		if err := rec.SetDetail(detail); err != nil {
			return err
		}
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

	// The newest valid deploy decides: a stray message after a bad deploy
	// must not stop an alert from rolling it back. The watcher's own
	// service.rolledback, met before any deploy, means there is nothing
	// left to roll back.
	found, err := deploys.Find(ctx, rc.JS, deploys.Query{Environment: env, Service: svc, StopAtRolledBack: true})
	d, at, skipped := found.Deploy, found.Time, found.Skipped
	subject := events.Subject(events.DeploysPrefix, env, svc)
	passed := ""
	if skipped > 0 {
		detail.SkippedMessages = skipped
		passed = fmt.Sprintf(" (passing over %d newer messages on %s that are no valid deploy)", skipped, subject)
	}
	switch {
	case errors.Is(err, deploys.ErrNotFound):
		return outcome("ignored: no deploy of %s in %s to roll back%s", svc, env, passed)
	case errors.Is(err, deploys.ErrRolledBack):
		return outcome("ignored: the last deploy of %s in %s was rolled back already%s", svc, env, passed)
	case errors.Is(err, deploys.ErrTooFar):
		return outcome("ignored: none of the last %d messages on %s is a valid deploy, so the deploy to roll back is unknown; "+
			"find it with `watcher history` and roll it back with `watcher rollback`", deploys.DefaultLimit, subject)
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
	// The request's id is the stream's message id, and the executor runs
	// an id once: Alertmanager's repeats of a firing group roll back once.
	req := rollbackreq.FromAlert(ref, d, found.Seq, p.Name, now)
	rec.RequestID = req.ID
	detail.RequestID = req.ID
	rec.MsgID = req.ID + ".alert." + a.StartsAt.UTC().Format(time.RFC3339Nano)
	if err := outcome("rolls back deploy %s (version %s of %s in %s)%s: rollback requested (%s)", d.ID, d.Version, svc, env, passed, req.ID); err != nil {
		return err // not requested without its record; Alertmanager sends again
	}
	return rollbackreq.Publish(ctx, rc.JS, req)
}
