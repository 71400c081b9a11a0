package events

import (
	"encoding/json"
	"fmt"
)

// rolledBackEvent is the part of the structured-mode CloudEvent that
// EncodeRolledBack writes which DecodeRolledBack reads back.
type rolledBackEvent struct {
	Data struct {
		Context struct {
			ID        string `json:"id"`
			Type      string `json:"type"`
			Timestamp string `json:"timestamp"`
		} `json:"context"`
		Subject struct {
			ID      string `json:"id"`
			Content struct {
				Environment struct {
					ID string `json:"id"`
				} `json:"environment"`
				ArtifactID string `json:"artifactId"`
			} `json:"content"`
		} `json:"subject"`
		CustomData *rolledBackData `json:"customData"`
	} `json:"data"`
}

// DecodeRolledBack reads a service.rolledback announcement as
// EncodeRolledBack wrote it, published on subject (deploys.<environment>.
// <service> of the payload). The watcher reads its own announcements to
// learn that a rollback it requested completed; any other document is an
// error.
func DecodeRolledBack(subject string, data []byte) (RolledBack, error) {
	if len(data) > MaxEventSize {
		return RolledBack{}, fmt.Errorf("service.rolledback of %d bytes is over the limit of %d", len(data), MaxEventSize)
	}
	var ev rolledBackEvent
	if err := json.Unmarshal(data, &ev); err != nil {
		return RolledBack{}, fmt.Errorf("service.rolledback is not the JSON of a structured-mode CloudEvent: %w", err)
	}
	d := ev.Data
	if d.Context.Type != TypeServiceRolledBack {
		return RolledBack{}, fmt.Errorf("CDEvent type %q is not %s", d.Context.Type, TypeServiceRolledBack)
	}
	t, err := parseTime("context.timestamp", d.Context.Timestamp)
	if err != nil {
		return RolledBack{}, err
	}
	version, err := rawPurlVersion("subject.content.artifactId", d.Subject.Content.ArtifactID)
	if err != nil {
		return RolledBack{}, err
	}
	r := RolledBack{
		ID: d.Context.ID, Service: d.Subject.ID, Environment: d.Subject.Content.Environment.ID,
		Version: version, Time: t,
	}
	if c := d.CustomData; c != nil {
		r.FromVersion, r.RequestID, r.Reason = c.FromVersion, c.RequestID, c.Reason
	}
	if err := r.Validate(); err != nil {
		return RolledBack{}, err
	}
	if err := checkSubject(subject, DeploysPrefix, r.Environment, r.Service); err != nil {
		return RolledBack{}, err
	}
	return r, nil
}
