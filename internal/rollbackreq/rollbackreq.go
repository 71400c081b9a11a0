// Package rollbackreq owns the rollback request, the one message by which
// deciding (a failed validation, an alert, `watcher rollback`) asks
// executing to roll a service back: it builds a request for each source,
// validates it, publishes it on ROLLBACKS with its id as the message id,
// and decodes it on the executor's side.
//
// The wire format (events.RollbackRequest, its encoder and decoder) stays
// in package events with the other wire formats; everyone else goes
// through this package.
package rollbackreq

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/events"
)

// FromRun is the request of a validation run that decided to roll its
// deploy back. The id derives from the run, so a run concluded twice (a
// retried publish, a replica resuming it) asks for one rollback: the
// stream's duplicate window, and after it the executor, drop the repeat.
// seq is the deploy event's sequence in DEPLOYS (0 when unknown); reason
// should already be clamped with events.ClampReason, since the run's
// verdict quotes it too.
func FromRun(runID string, d events.Deploy, seq uint64, policy, reason string, at time.Time) events.RollbackRequest {
	r := events.RollbackRequest{
		ID:          "rb-" + runID,
		Service:     d.Service,
		Environment: d.Environment,
		Reason:      reason,
		Source:      events.SourceValidation,
		RunID:       runID,
		Policy:      policy,
		Time:        at.UTC(),
	}
	Pin(&r, d, seq)
	return r
}

// FromAlert is the request of a firing alert that a policy lets roll back
// d, the newest deploy of the alert's service. One request per alert and
// deploy: Alertmanager repeats a firing group every repeat_interval, and
// each repeat must not roll back again, so the id derives from the alert's
// fingerprint and the deploy id.
func FromAlert(alert events.AlertRef, d events.Deploy, seq uint64, policy string, at time.Time) events.RollbackRequest {
	sum := sha256.Sum256([]byte(alert.Fingerprint + "\x00" + d.ID))
	r := events.RollbackRequest{
		ID:          "alert-" + hex.EncodeToString(sum[:12]),
		Service:     d.Service,
		Environment: d.Environment,
		Reason:      events.ClampReason(fmt.Sprintf("alert %s firing since %s", alert.Name, alert.StartsAt.Format(time.RFC3339))),
		Source:      events.SourceAlert,
		Policy:      policy,
		Time:        at.UTC(),
		Alert:       &alert,
	}
	Pin(&r, d, seq)
	return r
}

// Manual is the request of `watcher rollback`, with a fresh id: each
// command asks anew. version and toVersion may be empty; Pin fills them
// in from the deploy found on DEPLOYS. The reason is taken as given (not
// clamped): Validate refuses one a person has to rewrite.
func Manual(service, environment, version, toVersion, reason string, at time.Time) events.RollbackRequest {
	return events.RollbackRequest{
		ID:          events.NewID(),
		Service:     service,
		Environment: environment,
		Version:     version,
		ToVersion:   toVersion,
		Reason:      reason,
		Source:      events.SourceManual,
		Time:        at.UTC(),
	}
}

// Pin names in r the deploy it rolls back, read from DEPLOYS at sequence
// seq: its version, id, hosts and labels, and its previous version unless
// r already names the release to roll back to. The executor checks the
// hosts against that event, so a request cannot name hosts the deploy did
// not go to.
func Pin(r *events.RollbackRequest, d events.Deploy, seq uint64) {
	r.Version, r.DeployID, r.DeploySeq, r.Hosts, r.Labels = d.Version, d.ID, seq, d.Hosts, d.Labels
	if r.ToVersion == "" {
		r.ToVersion = d.PreviousVersion
	}
}

// Validate checks r by the rules the executor decodes it with; the error
// is an *events.RejectError naming the field.
func Validate(r events.RollbackRequest) error {
	return r.Validate()
}

// Subject is where r is published: rollbacks.<environment>.<service>.
func Subject(r events.RollbackRequest) string {
	return events.Subject(events.RollbacksPrefix, r.Environment, r.Service)
}

// Publisher is the part of jetstream.JetStream that Publish uses.
type Publisher interface {
	Publish(ctx context.Context, subject string, payload []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// Publish validates r and sends it to ROLLBACKS, trying five times over
// about three seconds. The request id is the message id: JetStream drops a
// resend within its duplicate window, so retrying (here, or by a caller
// that concludes again) never asks for a second rollback.
func Publish(ctx context.Context, js Publisher, r events.RollbackRequest) error {
	return publish(ctx, js, r, r.ID)
}

// Resend sends held request r again, for the executor to take it up now
// rather than at the end of its hold: on approval. The copy has its own
// message id (the request id plus why), so the duplicate window does not
// drop it; RequestsBucket keeps the two copies from executing twice.
func Resend(ctx context.Context, js Publisher, r events.RollbackRequest, why string) error {
	return publish(ctx, js, r, r.ID+"."+why)
}

func publish(ctx context.Context, js Publisher, r events.RollbackRequest, msgID string) error {
	b, err := events.EncodeRollbackRequest(r)
	if err != nil {
		return err
	}
	subj := Subject(r)
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		if _, lastErr = js.Publish(ctx, subj, b, jetstream.WithMsgID(msgID)); lastErr == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 200 * time.Millisecond):
		}
	}
	return fmt.Errorf("publishing rollback request %s on %s: %w", r.ID, subj, lastErr)
}

// Rejection says why a message on ROLLBACKS is no rollback request, in the
// terms the audit records it with.
type Rejection struct {
	Subject string
	// Environment and Service are read from the subject, the payload
	// being untrusted; empty when the subject has no such parts.
	Environment, Service string
	// Field names the offending part ("service", "hosts[1]", "subject",
	// "size", ...).
	Field string
	Err   error
	// Decision says the message meant to be a decision on a held request.
	Decision bool
}

// Message is what arrived on ROLLBACKS: a request or a decision on a held
// one, never both.
type Message struct {
	Request  *events.RollbackRequest
	Decision *events.RollbackDecision
}

// DecodeMessage reads a message on ROLLBACKS: a decision when it has an
// "action" member (README "Notifications, holds and verification"), else a
// request, each by its own rules; or the rejection to record.
func DecodeMessage(subject string, data []byte) (Message, *Rejection) {
	if !events.IsRollbackDecision(data) {
		r, rej := Decode(subject, data)
		if rej != nil {
			return Message{}, rej
		}
		return Message{Request: &r}, nil
	}
	d, err := events.DecodeRollbackDecision(subject, data)
	if err != nil {
		return Message{}, rejection(subject, err, true)
	}
	return Message{Decision: &d}, nil
}

// Decode reads the request that arrived on subject: the payload must pass
// the same rules Publish validates with, and the subject must be the
// payload's own, so that NATS permissions on subjects decide who may roll
// back what. Otherwise it returns the rejection to record.
func Decode(subject string, data []byte) (events.RollbackRequest, *Rejection) {
	r, err := events.DecodeRollbackRequest(subject, data)
	if err == nil {
		return r, nil
	}
	return events.RollbackRequest{}, rejection(subject, err, false)
}

func rejection(subject string, err error, decision bool) *Rejection {
	rej := &Rejection{Subject: subject, Err: err, Decision: decision}
	rej.Environment, rej.Service = events.SubjectNames(subject)
	var re *events.RejectError
	if errors.As(err, &re) {
		rej.Field = re.Field
	}
	return rej
}
