package events

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"
)

// nativeDeploy is the wire form of native JSON: Deploy's own tags would
// write a zero time as "0001-01-01T00:00:00Z" instead of leaving it out.
type nativeDeploy struct {
	ID              string            `json:"id"`
	Service         string            `json:"service"`
	Environment     string            `json:"environment"`
	Version         string            `json:"version"`
	PreviousVersion string            `json:"previous_version,omitempty"`
	Hosts           []string          `json:"hosts,omitempty"`
	Time            string            `json:"time,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
}

// EncodeNative validates d and writes it as native JSON (README, "Deploy
// event"), to be published on Subject(DeploysPrefix, d.Environment, d.Service).
func EncodeNative(d Deploy) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("deploy event: %w", err)
	}
	n := nativeDeploy{
		ID: d.ID, Service: d.Service, Environment: d.Environment, Version: d.Version,
		PreviousVersion: d.PreviousVersion, Hosts: d.Hosts, Labels: d.Labels,
	}
	if !d.Time.IsZero() {
		n.Time = d.Time.UTC().Format(time.RFC3339Nano)
	}
	return json.Marshal(n)
}

// EncodeRollbackRequest validates r and writes it as JSON, to be published
// on Subject(RollbacksPrefix, r.Environment, r.Service).
func EncodeRollbackRequest(r RollbackRequest) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("rollback request: %w", err)
	}
	return json.Marshal(r)
}

// deployedData is the customData of the service.deployed events this
// package writes: what a CDEvent has no field for.
type deployedData struct {
	PreviousVersion string            `json:"previousVersion,omitempty"`
	Hosts           []string          `json:"hosts,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
}

// EncodeCDEvent validates d and writes it as a structured-mode CloudEvent
// (Content-Type ContentTypeCloudEvents) carrying a CDEvents 0.5
// service.deployed event. source is the CDEvent and CloudEvent source, a
// URI reference such as "/rollback-watcher/publish". The release is named
// by the purl pkg:generic/<service>@<version>. A zero d.Time is stamped
// with the current time, since a CDEvent timestamp is required.
func EncodeCDEvent(d Deploy, source string) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("deploy event: %w", err)
	}
	if err := checkSource(source); err != nil {
		return nil, err
	}
	t := d.Time
	if t.IsZero() {
		t = time.Now()
	}
	cd := newServiceEvent(TypeServiceDeployed, d.ID, source, t, d.Service, d.Environment, d.Version)
	if d.PreviousVersion != "" || len(d.Hosts) > 0 || len(d.Labels) > 0 {
		cd.CustomData = deployedData{PreviousVersion: d.PreviousVersion, Hosts: d.Hosts, Labels: d.Labels}
		cd.CustomDataContentType = "application/json"
	}
	return cloudEvent(cd, t)
}

// RolledBack says that a service was rolled back; the watcher publishes it
// on the DEPLOYS stream as a CDEvents service.rolledback event, which
// DecodeDeploy reads as a *NotDeployError (it starts no run).
type RolledBack struct {
	ID          string
	Service     string
	Environment string
	Version     string // the release rolled back to
	FromVersion string // the release rolled away from, if known
	RequestID   string // the RollbackRequest that caused it, if any
	Reason      string
	Time        time.Time
}

// Validate checks r with the rules of deploy events.
func (r RolledBack) Validate() error {
	if err := checkID("id", r.ID); err != nil {
		return err
	}
	if err := checkName("service", r.Service); err != nil {
		return err
	}
	if err := checkName("environment", r.Environment); err != nil {
		return err
	}
	if err := checkVersion("version", r.Version, true); err != nil {
		return err
	}
	if err := checkVersion("from_version", r.FromVersion, false); err != nil {
		return err
	}
	if r.RequestID != "" {
		if err := checkID("request_id", r.RequestID); err != nil {
			return err
		}
	}
	return checkText("reason", r.Reason, MaxReasonLen, true)
}

type rolledBackData struct {
	FromVersion string `json:"fromVersion,omitempty"`
	RequestID   string `json:"requestId,omitempty"`
	Reason      string `json:"reason,omitempty"`
}

// EncodeRolledBack validates r and writes it as a structured-mode
// CloudEvent carrying a CDEvents 0.5 service.rolledback event whose
// artifactId names the release rolled back to. A zero r.Time is stamped
// with the current time.
func EncodeRolledBack(r RolledBack, source string) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("rolledback event: %w", err)
	}
	if err := checkSource(source); err != nil {
		return nil, err
	}
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	cd := newServiceEvent(TypeServiceRolledBack, r.ID, source, t, r.Service, r.Environment, r.Version)
	if r.FromVersion != "" || r.RequestID != "" || r.Reason != "" {
		cd.CustomData = rolledBackData{FromVersion: r.FromVersion, RequestID: r.RequestID, Reason: r.Reason}
		cd.CustomDataContentType = "application/json"
	}
	return cloudEvent(cd, t)
}

// crockford is the ULID alphabet: no I, L, O or U, nothing a subject, a
// path or a shell treats specially.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// NewID returns a new ULID (github.com/ulid/spec): 26 characters, a
// millisecond timestamp then 80 random bits, so ids sort by creation time
// (to the millisecond) and never collide in practice. It matches IDPattern.
func NewID() string {
	var b [16]byte
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(time.Now().UnixMilli()))
	copy(b[:6], ms[2:])
	_, _ = rand.Read(b[6:]) // never fails (crypto/rand, Go 1.24+)
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	var out [26]byte
	for i := 25; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}
