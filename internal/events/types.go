// Package events decodes the deploy events that start validation runs and
// encodes what the watcher publishes: rollback requests and CDEvents.
//
// Everything here treats its input as hostile: a value that does not match the
// README's patterns is rejected with a *RejectError naming the field, so that
// nothing from an event reaches a path, a subject or a command unvalidated.
package events

import (
	"fmt"
	"strings"
	"time"
)

// MaxEventSize is the largest deploy event accepted, in bytes.
const MaxEventSize = 1 << 20

// Subject prefixes; the full subject is "<prefix>.<environment>.<service>".
const (
	DeploysPrefix   = "deploys"
	RollbacksPrefix = "rollbacks"
	AuditPrefix     = "audit"
)

// Formats a deploy event can arrive in (Deploy.Format).
const (
	FormatJSON                 = "json"
	FormatCDEvent              = "cdevent"               // bare CDEvent JSON
	FormatCloudEventStructured = "cloudevent-structured" // application/cloudevents+json, CDEvent in data
	FormatCloudEventBinary     = "cloudevent-binary"     // ce-* headers, CDEvent as body
)

// Deploy is a validated deploy-completed event, whatever format it came in.
type Deploy struct {
	ID              string            `json:"id"`
	Service         string            `json:"service"`
	Environment     string            `json:"environment"`
	Version         string            `json:"version"`
	PreviousVersion string            `json:"previous_version,omitempty"`
	Hosts           []string          `json:"hosts,omitempty"`
	Time            time.Time         `json:"time"`
	Labels          map[string]string `json:"labels,omitempty"`
	// Format records how the event arrived; it is not read from native JSON.
	Format string `json:"-"`
}

// Rollback request sources.
const (
	SourceValidation = "validation"
	SourceManual     = "manual"
	SourceAlert      = "alert"
)

// RollbackRequest asks the executor to roll a service back. Decisions (a failed
// validation, `watcher rollback`, an alert) and execution meet only through
// these requests on the ROLLBACKS stream.
type RollbackRequest struct {
	ID          string `json:"id"`
	Service     string `json:"service"`
	Environment string `json:"environment"`
	// Version is the release being rolled away from, when the requester knows it.
	Version string `json:"version,omitempty"`
	// ToVersion forces the release to roll back to (the deploy's
	// previous_version, or `watcher rollback --to-version`).
	ToVersion string            `json:"to_version,omitempty"`
	Hosts     []string          `json:"hosts,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Reason    string            `json:"reason"`
	Source    string            `json:"source"`
	RunID     string            `json:"run_id,omitempty"`
	DeployID  string            `json:"deploy_id,omitempty"`
	// DeploySeq is the deploy event's sequence in the DEPLOYS stream, when
	// the requester read it from there: the executor checks the hosts the
	// request names against that event in one read.
	DeploySeq uint64    `json:"deploy_seq,omitempty"`
	Policy    string    `json:"policy,omitempty"`
	Time      time.Time `json:"time"`
	// Alert names the alert that asked for the rollback (source alert).
	Alert *AlertRef `json:"alert,omitempty"`
	// Ask says the requester wants a person's answer first: the run ended
	// marginal under on_marginal: ask. The executor holds the request for
	// `watcher approve` or `watcher cancel` until rollback.hold ends
	// (README "Notifications, holds and verification").
	Ask bool `json:"ask,omitempty"`
}

// AlertRef names an Alertmanager alert, as the audit of the rollback it
// caused shows it.
type AlertRef struct {
	Name         string            `json:"name"`
	Fingerprint  string            `json:"fingerprint"`
	StartsAt     time.Time         `json:"starts_at"`
	GeneratorURL string            `json:"generator_url,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
}

// RejectError says which field of an event is invalid and why.
type RejectError struct {
	Field  string // e.g. "service", "hosts[1]", "subject", "subject.content.artifactId", "size"
	Value  string // the offending value, shortened and printable; may be empty
	Reason string
}

func (e *RejectError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("field %q: %s", e.Field, e.Reason)
	}
	return fmt.Sprintf("field %q: value %q %s", e.Field, e.Value, e.Reason)
}

// NotDeployError is returned for a well-formed CDEvent of a type that starts no
// run (service.rolledback, service.removed, ...).
type NotDeployError struct {
	Type string
}

// RolledBack reports whether the event is a service.rolledback, of any
// version.
func (e *NotDeployError) RolledBack() bool {
	return strings.HasPrefix(e.Type, "dev.cdevents.service.rolledback.")
}

func (e *NotDeployError) Error() string {
	return fmt.Sprintf("CDEvent type %q is not a deploy and starts no run", e.Type)
}

// HeaderAnnouncement marks the watcher's own announcements on DEPLOYS
// (its service.rolledback after a rollback): the watcher passes over them
// without a run.skipped record each time, since rollback.completed already
// recorded the rollback. Another tool's service.rolledback, without it, is
// recorded as usual.
const HeaderAnnouncement = "Rollback-Watcher-Announcement"

// Subject returns "<prefix>.<environment>.<service>".
func Subject(prefix, environment, service string) string {
	return prefix + "." + environment + "." + service
}
