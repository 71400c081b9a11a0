package events

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// RollbackDecision is a person's answer to a held rollback request
// (`watcher cancel`, `watcher approve`, or the HTTP endpoints that do the
// same). It travels on the request's own subject,
// rollbacks.<environment>.<service>, so that the NATS permissions that say
// who may roll a service back also say who may stop or approve its
// rollbacks. It is told apart from a request by its "action" member, which
// no request has.
type RollbackDecision struct {
	// ID names this decision (a ULID); it is its Nats-Msg-Id.
	ID          string `json:"id"`
	Action      string `json:"action"`
	RequestID   string `json:"request_id"`
	Service     string `json:"service"`
	Environment string `json:"environment"`
	Reason      string `json:"reason"`
	// By is who sent it, as the sender says (a login name); Via is how.
	By   string    `json:"by"`
	Via  string    `json:"via"`
	Time time.Time `json:"time"`
}

// Decision actions.
const (
	ActionCancel  = "cancel"
	ActionApprove = "approve"
)

// How a decision was made (RollbackDecision.Via). ViaDeadline is the
// executor's own, when an unanswered ask ends with its ask_default: a
// message on ROLLBACKS never carries it.
const (
	ViaCLI      = "cli"
	ViaHTTP     = "http"
	ViaLink     = "link"
	ViaDeadline = "deadline"
)

// Limits of a decision: it is a few short strings.
const (
	MaxDecisionSize = 16 << 10 // bytes
	MaxByLen        = 128      // runes
)

// Validate checks d as DecodeRollbackDecision does, apart from the subject.
func (d RollbackDecision) Validate() error {
	if err := checkID("id", d.ID); err != nil {
		return err
	}
	switch d.Action {
	case ActionCancel, ActionApprove:
	case "":
		return &RejectError{Field: "action", Reason: "is required (cancel or approve)"}
	default:
		return reject("action", d.Action, "is not one of cancel, approve")
	}
	if err := checkID("request_id", d.RequestID); err != nil {
		return err
	}
	if err := checkName("service", d.Service); err != nil {
		return err
	}
	if err := checkName("environment", d.Environment); err != nil {
		return err
	}
	if d.Reason == "" {
		return &RejectError{Field: "reason", Reason: "is required: say why, for the audit"}
	}
	if err := checkText("reason", d.Reason, MaxReasonLen, true); err != nil {
		return err
	}
	if d.By == "" {
		return &RejectError{Field: "by", Reason: "is required: who decides"}
	}
	if err := checkText("by", d.By, MaxByLen, false); err != nil {
		return err
	}
	switch d.Via {
	case ViaCLI, ViaHTTP, ViaLink:
	case "":
		return &RejectError{Field: "via", Reason: "is required (cli, http or link)"}
	default:
		return reject("via", d.Via, "is not one of cli, http, link")
	}
	return nil
}

// EncodeRollbackDecision validates d and writes it as JSON, to be published
// on Subject(RollbacksPrefix, d.Environment, d.Service).
func EncodeRollbackDecision(d RollbackDecision) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("rollback decision: %w", err)
	}
	return json.Marshal(d)
}

// IsRollbackDecision reports whether data, a message on ROLLBACKS, means
// to be a decision rather than a request: a JSON object with an "action"
// member. Whether it is a valid one is DecodeRollbackDecision's to say.
func IsRollbackDecision(data []byte) bool {
	if len(data) > MaxEventSize || checkDocument(data) != nil {
		return false
	}
	ms, err := members("json", data)
	if err != nil {
		return false
	}
	for _, m := range ms {
		if m.name == "action" {
			return true
		}
	}
	return false
}

// DecodeRollbackDecision decodes and validates a decision that arrived on
// subject, which must be rollbacks.<environment>.<service> of the payload.
// Unknown fields are rejected.
func DecodeRollbackDecision(subject string, data []byte) (RollbackDecision, error) {
	if len(data) > MaxDecisionSize {
		return RollbackDecision{}, &RejectError{Field: "size", Value: strconv.Itoa(len(data)) + " bytes",
			Reason: "is over the limit of " + strconv.Itoa(MaxDecisionSize) + " bytes for a decision"}
	}
	if err := checkDocument(data); err != nil {
		return RollbackDecision{}, err
	}
	m, err := object("json", data, "id", "action", "request_id", "service", "environment", "reason", "by", "via", "time")
	if err != nil {
		return RollbackDecision{}, err
	}
	var d RollbackDecision
	for _, f := range []struct {
		name string
		dst  *string
	}{
		{"id", &d.ID}, {"action", &d.Action}, {"request_id", &d.RequestID}, {"service", &d.Service},
		{"environment", &d.Environment}, {"reason", &d.Reason}, {"by", &d.By}, {"via", &d.Via},
	} {
		if *f.dst, err = str(f.name, m[f.name]); err != nil {
			return RollbackDecision{}, err
		}
	}
	if d.Time, err = optionalTime("time", m); err != nil {
		return RollbackDecision{}, err
	}
	if err := d.Validate(); err != nil {
		return RollbackDecision{}, err
	}
	if err := checkSubject(subject, RollbacksPrefix, d.Environment, d.Service); err != nil {
		return RollbackDecision{}, err
	}
	return d, nil
}
