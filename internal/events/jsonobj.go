package events

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// member is one name/value pair of a JSON object, in document order.
type member struct {
	name  string
	value json.RawMessage
}

// checkDocument rejects what no decoder below should have to think about:
// invalid UTF-8 (encoding/json would silently turn it into U+FFFD), syntax
// errors, trailing data after the value, and nesting deeper than
// encoding/json's limit. After it, every slice of data is valid JSON.
func checkDocument(data []byte) error {
	if !utf8.Valid(data) {
		return &RejectError{Field: "json", Reason: "is not valid UTF-8"}
	}
	var v json.RawMessage
	if err := json.Unmarshal(data, &v); err != nil {
		return &RejectError{Field: "json", Reason: "is not valid JSON: " + printable(err.Error(), 200)}
	}
	return nil
}

// members splits the JSON object raw (already known to be valid JSON) into
// its members. field names raw in rejections.
//
// Duplicate names are rejected: JSON decoders disagree on which one wins
// (first, last, or an error), and a payload that means one thing to the
// watcher and another to whatever else reads the stream is how a subject
// permission or a review gets bypassed.
func members(field string, raw json.RawMessage) ([]member, error) {
	if k := kind(raw); k != "an object" {
		return nil, &RejectError{Field: field, Reason: "must be a JSON object, not " + k}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil { // '{'
		return nil, &RejectError{Field: field, Reason: "is not valid JSON: " + err.Error()}
	}
	var out []member
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, &RejectError{Field: field, Reason: "is not valid JSON: " + err.Error()}
		}
		name, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, &RejectError{Field: field, Reason: "is not valid JSON: " + err.Error()}
		}
		if seen[name] {
			return nil, &RejectError{Field: join(field, name), Reason: "appears twice in the object"}
		}
		seen[name] = true
		out = append(out, member{name: name, value: v})
	}
	return out, nil
}

// object is members plus a check of the names against the allowed ones
// (exact, case-sensitive: encoding/json would also match "Service" to
// "service"). It returns the values by name; absent and null members are
// missing from the map.
func object(field string, raw json.RawMessage, allowed ...string) (map[string]json.RawMessage, error) {
	ms, err := members(field, raw)
	if err != nil {
		return nil, err
	}
	out := make(map[string]json.RawMessage, len(ms))
	for _, m := range ms {
		known := false
		for _, a := range allowed {
			if m.name == a {
				known = true
				break
			}
		}
		if !known {
			return nil, &RejectError{Field: join(field, m.name), Reason: "is not a known field" + didYouMean(m.name, allowed)}
		}
		if kind(m.value) != "null" {
			out[m.name] = m.value
		}
	}
	return out, nil
}

// didYouMean points at the intended field when the only difference is case
// (a common slip between snake_case, camelCase and Go field names).
func didYouMean(name string, allowed []string) string {
	for _, a := range allowed {
		if strings.EqualFold(strings.ReplaceAll(a, "_", ""), strings.ReplaceAll(name, "_", "")) {
			return " (did you mean " + strconv.Quote(a) + "?)"
		}
	}
	return ""
}

// join builds a field path; the top-level document is "json", which is not
// repeated in the paths below it.
func join(parent, name string) string {
	name = printable(name, 64)
	if name == "" {
		name = `""` // a member may be named ""; a field path must not be empty
	}
	if parent == "" || parent == "json" {
		return name
	}
	return parent + "." + name
}

func index(parent string, i int) string {
	return parent + "[" + strconv.Itoa(i) + "]"
}

// kind names the JSON type of raw for error messages.
func kind(raw json.RawMessage) string {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return "empty"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

// str decodes a JSON string member; a missing member (or null) is "".
func str(field string, raw json.RawMessage) (string, error) {
	if raw == nil {
		return "", nil
	}
	if k := kind(raw); k != "a string" {
		return "", &RejectError{Field: field, Reason: "must be a string, not " + k}
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", &RejectError{Field: field, Reason: "is not a valid JSON string: " + err.Error()}
	}
	return s, nil
}

// boolean decodes a JSON true or false; a missing member is false.
func boolean(field string, raw json.RawMessage) (bool, error) {
	if raw == nil {
		return false, nil
	}
	if k := kind(raw); k != "a boolean" {
		return false, &RejectError{Field: field, Reason: "must be true or false, not " + k}
	}
	return string(bytes.TrimSpace(raw)) == "true", nil
}

// sequence decodes a JSON member holding a stream sequence (a whole
// number from 1 up); a missing member (or null) is 0.
func sequence(field string, raw json.RawMessage) (uint64, error) {
	if raw == nil || string(raw) == "null" {
		return 0, nil
	}
	var n uint64
	if err := json.Unmarshal(raw, &n); err != nil || n == 0 {
		return 0, &RejectError{Field: field, Value: printable(string(raw), 40), Reason: "must be a stream sequence, a whole number from 1 up"}
	}
	return n, nil
}

// stringList decodes an array of at most limit strings; it stops reading
// at the first entry over the limit, so a huge array costs little.
func stringList(field string, raw json.RawMessage, limit int) ([]string, error) {
	if raw == nil {
		return nil, nil
	}
	if k := kind(raw); k != "an array" {
		return nil, &RejectError{Field: field, Reason: "must be an array of strings, not " + k}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil { // '['
		return nil, &RejectError{Field: field, Reason: "is not a valid JSON array: " + err.Error()}
	}
	var out []string // nil for [], so that [] and a missing list are the same
	for i := 0; dec.More(); i++ {
		if i == limit {
			return nil, &RejectError{Field: field, Reason: "has more than the limit of " + strconv.Itoa(limit) + " entries"}
		}
		var it json.RawMessage
		if err := dec.Decode(&it); err != nil {
			return nil, &RejectError{Field: field, Reason: "is not a valid JSON array: " + err.Error()}
		}
		if kind(it) == "null" {
			return nil, &RejectError{Field: index(field, i), Reason: "must be a string, not null"}
		}
		s, err := str(index(field, i), it)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// stringMap decodes an object whose values are all strings.
func stringMap(field string, raw json.RawMessage, limit int) (map[string]string, error) {
	if raw == nil {
		return nil, nil
	}
	ms, err := members(field, raw)
	if err != nil {
		return nil, err
	}
	if len(ms) > limit {
		return nil, &RejectError{Field: field, Reason: "has " + strconv.Itoa(len(ms)) + " entries, more than the limit of " + strconv.Itoa(limit)}
	}
	if len(ms) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(ms))
	for _, m := range ms {
		if err := checkLabelKey(field, m.name); err != nil {
			return nil, err
		}
		if kind(m.value) == "null" {
			return nil, &RejectError{Field: join(field, m.name), Reason: "must be a string, not null"}
		}
		v, err := str(join(field, m.name), m.value)
		if err != nil {
			return nil, err
		}
		out[m.name] = v
	}
	return out, nil
}

// printable makes s safe to put in a log line or an audit record: runes
// that are not printable become '?', and it is cut to max runes.
func printable(s string, max int) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == max {
			b.WriteString("...")
			break
		}
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			r = '?'
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}
