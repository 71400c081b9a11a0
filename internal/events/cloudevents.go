package events

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
)

// ContentTypeCloudEvents is the content type of a structured-mode CloudEvent
// in JSON; publishers set it as the Content-Type header.
const ContentTypeCloudEvents = "application/cloudevents+json"

// stringAttributes are the CloudEvents 1.0 attributes whose JSON form is a
// string. data_base64 is one too: the SDK slices its raw text between the
// quotes and would panic on a bare number.
var stringAttributes = []string{"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data_base64"}

// extensionName is what the SDK accepts as an extension attribute name.
var extensionName = regexp.MustCompile(`^[a-zA-Z0-9]{1,64}$`)

// decodeStructured reads a structured-mode CloudEvent (data is valid JSON,
// an object whose members are top) carrying a CDEvent in data.
//
// The envelope is checked here before the SDK sees it, for two reasons:
// every rejection names its attribute, and the SDK's parser is not hardened
// (a non-string data_base64 panics it, extension values of the wrong type
// surface as unnamed errors).
func decodeStructured(data []byte, top []member) (Deploy, error) {
	hasData, hasBase64 := false, false
	for _, m := range top {
		switch {
		case slices.Contains(stringAttributes, m.name):
			if k := kind(m.value); k != "a string" {
				return Deploy{}, &RejectError{Field: m.name, Reason: "must be a string, not " + k}
			}
			if m.name == "data_base64" {
				hasBase64 = true
				s, _ := str(m.name, m.value)
				if _, err := base64.StdEncoding.DecodeString(s); err != nil {
					return Deploy{}, &RejectError{Field: m.name, Reason: "is not valid base64: " + err.Error()}
				}
			}
		case m.name == "data":
			hasData = true
		default:
			if !extensionName.MatchString(m.name) {
				return Deploy{}, &RejectError{Field: join("", m.name), Reason: "is not a valid CloudEvents attribute name"}
			}
			if why := extensionValueProblem(m.value); why != "" {
				return Deploy{}, &RejectError{Field: m.name, Reason: why}
			}
		}
	}
	if hasData && hasBase64 {
		return Deploy{}, &RejectError{Field: "data", Reason: "and data_base64 are both present; give one"}
	}
	attr := func(name string) string {
		for _, m := range top {
			if m.name == name {
				s, _ := str(name, m.value)
				return s
			}
		}
		return ""
	}
	if err := checkCloudEventAttributes(attr("specversion"), attr("source"), attr("time"), attr("datacontenttype")); err != nil {
		return Deploy{}, err
	}

	var ev event.Event
	if err := unmarshalCloudEvent(&ev, data); err != nil {
		return Deploy{}, err
	}
	if err := ev.Validate(); err != nil {
		return Deploy{}, cloudEventError(err)
	}
	if !hasData && !hasBase64 {
		return Deploy{}, &RejectError{Field: "data", Reason: "is required: the CDEvent goes in data"}
	}
	return decodeCloudEventData(ev.Type(), ev.Data(), FormatCloudEventStructured)
}

// unmarshalCloudEvent runs the SDK's parser, turning a panic in it into a
// rejection: one hostile message must not take the watcher down.
func unmarshalCloudEvent(ev *event.Event, data []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &RejectError{Field: "json", Reason: "is not a CloudEvent the SDK can parse"}
		}
	}()
	if err := ev.UnmarshalJSON(data); err != nil {
		var ve event.ValidationError
		if errors.As(err, &ve) {
			return cloudEventError(ve)
		}
		return &RejectError{Field: "json", Reason: "is not a valid CloudEvent: " + printable(err.Error(), 200)}
	}
	return nil
}

// extensionValueProblem admits the JSON forms of CloudEvents attribute
// types: string, boolean, and integer in int32 range.
func extensionValueProblem(raw json.RawMessage) string {
	switch k := kind(raw); k {
	case "a string", "a boolean", "null":
		return ""
	case "a number":
		if _, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 32); err != nil {
			return "must be an integer in the int32 range"
		}
		return ""
	default:
		return "must be a string, boolean or integer, not " + k
	}
}

// decodeBinary reads a binary-mode CloudEvent: the context in ce-* headers,
// the CDEvent as the body.
func decodeBinary(header map[string][]string, data []byte) (Deploy, error) {
	var vals [6]string
	for i, h := range [][2]string{
		{"specversion", "ce-specversion"}, {"id", "ce-id"}, {"source", "ce-source"},
		{"type", "ce-type"}, {"time", "ce-time"}, {"datacontenttype", "Content-Type"},
	} {
		v, _, err := headerValue(header, h[1], h[0])
		if err != nil {
			return Deploy{}, err
		}
		vals[i] = v
	}
	spec, id, source, typ, tm, ct := vals[0], vals[1], vals[2], vals[3], vals[4], vals[5]
	if err := checkCloudEventAttributes(spec, source, tm, ct); err != nil {
		return Deploy{}, err
	}
	ev := event.New(spec)
	ev.SetID(id)
	ev.SetSource(source)
	ev.SetType(typ)
	if tm != "" {
		t, _ := types.ParseTimestamp(tm) // checked above
		ev.SetTime(t.Time)
	}
	if ct != "" {
		ev.SetDataContentType(ct)
	}
	if err := ev.Validate(); err != nil {
		return Deploy{}, cloudEventError(err)
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return Deploy{}, &RejectError{Field: "data", Reason: "is required: the CDEvent goes in the message body"}
	}
	return decodeCloudEventData(typ, data, FormatCloudEventBinary)
}

// checkCloudEventAttributes checks what the SDK would otherwise accept
// silently or report without naming the attribute.
func checkCloudEventAttributes(spec, source, tm, ct string) error {
	// The CDEvents binding requires 1.0; the SDK would also take 0.3.
	if spec != event.CloudEventsVersionV1 {
		if spec == "" {
			return &RejectError{Field: "specversion", Reason: "is required"}
		}
		return reject("specversion", spec, `is not "1.0"`)
	}
	if source == "" {
		return &RejectError{Field: "source", Reason: "is required"}
	}
	if types.ParseURIRef(source) == nil {
		return reject("source", source, "is not a URI reference")
	}
	if tm != "" {
		if _, err := types.ParseTimestamp(tm); err != nil {
			return reject("time", tm, "is not an RFC 3339 time")
		}
	}
	if ct != "" && !isJSONMediaType(ct) {
		return reject("datacontenttype", ct, "is not application/json: a CDEvent is JSON")
	}
	return nil
}

// decodeCloudEventData checks the CloudEvent's type and maps its data.
func decodeCloudEventData(ceType string, data []byte, format string) (Deploy, error) {
	if _, err := classifyType("type", ceType); err != nil {
		var rej *RejectError
		if errors.As(err, &rej) {
			return Deploy{}, rej
		}
	}
	if err := checkDocument(data); err != nil {
		var rej *RejectError
		if errors.As(err, &rej) {
			rej.Field = "data"
		}
		return Deploy{}, err
	}
	d, err := decodeCDEvent("data", data, ceType)
	if err != nil {
		return Deploy{}, err
	}
	d.Format = format
	return d, nil
}

// cloudEventError turns an SDK validation error into a rejection naming
// the first attribute (in name order, so the result is stable).
func cloudEventError(err error) error {
	var ve event.ValidationError
	if !errors.As(err, &ve) || len(ve) == 0 {
		return &RejectError{Field: "json", Reason: "is not a valid CloudEvent: " + printable(err.Error(), 200)}
	}
	names := make([]string, 0, len(ve))
	for k := range ve {
		names = append(names, k)
	}
	slices.Sort(names)
	return &RejectError{Field: printable(names[0], 64), Reason: printable(ve[names[0]].Error(), 200)}
}

// headerValue returns the value of the header name, compared
// case-insensitively (NATS headers are case-sensitive; senders are not
// consistent). Repeats that disagree are rejected on attr: taking the first
// or the last would be a guess another reader may not share.
func headerValue(header map[string][]string, name, attr string) (value string, present bool, err error) {
	for k, vs := range header {
		if !strings.EqualFold(k, name) {
			continue
		}
		for _, v := range vs {
			if present && v != value {
				return "", false, &RejectError{Field: attr, Reason: "header " + name + " is given twice with different values"}
			}
			value, present = v, true
		}
	}
	return value, present, nil
}

// cloudEvent builds a structured-mode CloudEvent whose data is a CDEvent.
// The attributes follow cloudevents-binding.md: id, source, type and time
// are the CDEvent's, subject is its subject id.
func cloudEvent(cd cdEvent, t time.Time) ([]byte, error) {
	ev := event.New()
	ev.SetID(cd.Context.ID)
	ev.SetSource(cd.Context.Source)
	ev.SetType(cd.Context.Type)
	ev.SetSubject(cd.Subject.ID)
	ev.SetTime(t)
	if err := ev.SetData(event.ApplicationJSON, cd); err != nil {
		return nil, err
	}
	if err := ev.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(ev)
}
