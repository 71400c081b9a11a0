package events

import (
	"encoding/json"
	"mime"
	"strconv"
	"time"
)

// DecodeDeploy decodes and validates a deploy event that arrived on subject
// with the given headers (a nats.Header; names are matched
// case-insensitively). It returns a *RejectError naming the offending field,
// or a *NotDeployError for a valid CDEvent of a type that starts no run.
//
// The format is decided in this order:
//   - a ce-specversion header: a binary-mode CloudEvent, context in ce-*
//     headers and the CDEvent as the body;
//   - Content-Type application/cloudevents+json, or a top-level
//     "specversion": a structured-mode CloudEvent with the CDEvent in data;
//   - a top-level "context": a bare CDEvent;
//   - otherwise the native JSON of README's "Deploy event".
//
// A CloudEvent's own id is not the deploy id: the CDEvent's context.id is.
// A zero Time means the event gave none; the caller fills in arrival time.
// Finally the subject must be deploys.<environment>.<service> of the
// payload, so that NATS permissions on subjects decide who may deploy what.
func DecodeDeploy(subject string, header map[string][]string, data []byte) (Deploy, error) {
	if len(data) > MaxEventSize {
		return Deploy{}, &RejectError{Field: "size", Value: strconv.Itoa(len(data)) + " bytes",
			Reason: "is over the limit of " + strconv.Itoa(MaxEventSize) + " bytes"}
	}
	d, err := decodeDeploy(header, data)
	if err != nil {
		return Deploy{}, err
	}
	if err := checkSubject(subject, DeploysPrefix, d.Environment, d.Service); err != nil {
		return Deploy{}, err
	}
	return d, nil
}

// DecodeDeployPayload is DecodeDeploy for an event that arrives without a
// subject (over HTTP): everything but the subject check. The caller
// publishes it on Subject(DeploysPrefix, d.Environment, d.Service), where
// DecodeDeploy reads it the same way.
func DecodeDeployPayload(header map[string][]string, data []byte) (Deploy, error) {
	if len(data) > MaxEventSize {
		return Deploy{}, &RejectError{Field: "size", Value: strconv.Itoa(len(data)) + " bytes",
			Reason: "is over the limit of " + strconv.Itoa(MaxEventSize) + " bytes"}
	}
	return decodeDeploy(header, data)
}

func decodeDeploy(header map[string][]string, data []byte) (Deploy, error) {
	if _, binary, err := headerValue(header, "ce-specversion", "specversion"); err != nil {
		return Deploy{}, err
	} else if binary {
		return decodeBinary(header, data)
	}
	if err := checkDocument(data); err != nil {
		return Deploy{}, err
	}
	top, err := members("json", data)
	if err != nil {
		return Deploy{}, err
	}
	ct, _, err := headerValue(header, "Content-Type", "datacontenttype")
	if err != nil {
		return Deploy{}, err
	}
	has := func(name string) bool {
		for _, m := range top {
			if m.name == name {
				return true
			}
		}
		return false
	}
	switch mt, _, _ := mime.ParseMediaType(ct); {
	case mt == ContentTypeCloudEvents || has("specversion"):
		return decodeStructured(data, top)
	case has("context"):
		d, err := decodeCDEvent("json", data, "")
		if err != nil {
			return Deploy{}, err
		}
		d.Format = FormatCDEvent
		return d, nil
	default:
		return decodeNative(data)
	}
}

var nativeDeployFields = []string{"id", "service", "environment", "version", "previous_version", "hosts", "time", "labels"}

func decodeNative(data []byte) (Deploy, error) {
	m, err := object("json", data, nativeDeployFields...)
	if err != nil {
		return Deploy{}, err
	}
	d := Deploy{Format: FormatJSON}
	for _, f := range []struct {
		name string
		dst  *string
	}{
		{"id", &d.ID}, {"service", &d.Service}, {"environment", &d.Environment},
		{"version", &d.Version}, {"previous_version", &d.PreviousVersion},
	} {
		if *f.dst, err = str(f.name, m[f.name]); err != nil {
			return Deploy{}, err
		}
	}
	if d.Hosts, err = stringList("hosts", m["hosts"], MaxHosts); err != nil {
		return Deploy{}, err
	}
	if d.Labels, err = stringMap("labels", m["labels"], MaxLabels); err != nil {
		return Deploy{}, err
	}
	if d.Time, err = optionalTime("time", m); err != nil {
		return Deploy{}, err
	}
	if err := d.Validate(); err != nil {
		return Deploy{}, err
	}
	return d, nil
}

// DecodeRollbackRequest decodes and validates a rollback request that
// arrived on subject, which must be rollbacks.<environment>.<service> of
// the payload. Unknown fields are rejected, as in native deploy events.
func DecodeRollbackRequest(subject string, data []byte) (RollbackRequest, error) {
	if len(data) > MaxEventSize {
		return RollbackRequest{}, &RejectError{Field: "size", Value: strconv.Itoa(len(data)) + " bytes",
			Reason: "is over the limit of " + strconv.Itoa(MaxEventSize) + " bytes"}
	}
	if err := checkDocument(data); err != nil {
		return RollbackRequest{}, err
	}
	m, err := object("json", data, "id", "service", "environment", "version", "to_version", "hosts",
		"labels", "reason", "source", "run_id", "deploy_id", "deploy_seq", "policy", "time", "alert", "ask")
	if err != nil {
		return RollbackRequest{}, err
	}
	var r RollbackRequest
	for _, f := range []struct {
		name string
		dst  *string
	}{
		{"id", &r.ID}, {"service", &r.Service}, {"environment", &r.Environment},
		{"version", &r.Version}, {"to_version", &r.ToVersion}, {"reason", &r.Reason},
		{"source", &r.Source}, {"run_id", &r.RunID}, {"deploy_id", &r.DeployID}, {"policy", &r.Policy},
	} {
		if *f.dst, err = str(f.name, m[f.name]); err != nil {
			return RollbackRequest{}, err
		}
	}
	if r.Hosts, err = stringList("hosts", m["hosts"], MaxHosts); err != nil {
		return RollbackRequest{}, err
	}
	if r.DeploySeq, err = sequence("deploy_seq", m["deploy_seq"]); err != nil {
		return RollbackRequest{}, err
	}
	if r.Labels, err = stringMap("labels", m["labels"], MaxLabels); err != nil {
		return RollbackRequest{}, err
	}
	if r.Time, err = optionalTime("time", m); err != nil {
		return RollbackRequest{}, err
	}
	if r.Alert, err = decodeAlertRef(m["alert"]); err != nil {
		return RollbackRequest{}, err
	}
	if r.Ask, err = boolean("ask", m["ask"]); err != nil {
		return RollbackRequest{}, err
	}
	if err := r.Validate(); err != nil {
		return RollbackRequest{}, err
	}
	if err := checkSubject(subject, RollbacksPrefix, r.Environment, r.Service); err != nil {
		return RollbackRequest{}, err
	}
	return r, nil
}

func checkSubject(subject, prefix, environment, service string) error {
	if want := Subject(prefix, environment, service); subject != want {
		return &RejectError{Field: "subject", Value: printable(subject, 200),
			Reason: "disagrees with the payload: environment " + strconv.Quote(environment) +
				" and service " + strconv.Quote(service) + " belong on " + strconv.Quote(want)}
	}
	return nil
}

// optionalTime reads an RFC 3339 time; absent or null is the zero time.
func optionalTime(field string, m map[string]json.RawMessage) (time.Time, error) {
	raw, ok := m[field]
	if !ok {
		return time.Time{}, nil
	}
	s, err := str(field, raw)
	if err != nil {
		return time.Time{}, err
	}
	return parseTime(field, s)
}

func decodeAlertRef(raw json.RawMessage) (*AlertRef, error) {
	if raw == nil || kind(raw) == "null" {
		return nil, nil
	}
	m, err := object("alert", raw, "name", "fingerprint", "starts_at", "generator_url", "labels")
	if err != nil {
		return nil, err
	}
	a := &AlertRef{}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"name", &a.Name}, {"fingerprint", &a.Fingerprint}, {"generator_url", &a.GeneratorURL}} {
		if *f.dst, err = str("alert."+f.name, m[f.name]); err != nil {
			return nil, err
		}
	}
	if a.StartsAt, err = optionalTime("starts_at", m); err != nil {
		return nil, err
	}
	if a.Labels, err = stringMap("alert.labels", m["labels"], MaxLabels); err != nil {
		return nil, err
	}
	return a, nil
}
