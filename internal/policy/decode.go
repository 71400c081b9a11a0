package policy

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// decoder turns a YAML node tree into the policy types, field by field.
//
// yaml.v3 only enforces known fields in Decoder.Decode, not in Node.Decode,
// and it stops at the first error that is not a type mismatch (a bad
// duration, say). A rules file should report every problem with its line in
// one go, so the decoder walks mapping nodes against the structs' yaml tags
// itself and records each problem instead of stopping.
type decoder struct {
	file     string
	problems []Problem

	// keys maps the address of every field the YAML set (a *model.Duration,
	// a **float64, a *Check, ...) to the line of its key, or for a struct
	// or list element to the line where it starts. Validation uses it for
	// the line of a message, and to tell "not set" (take the default) from
	// "set to zero" (an error).
	keys map[any]int

	// failed holds the fields whose value was reported as wrong, so that
	// validation does not also complain that they are missing.
	failed map[any]bool

	// budget bounds the work on a document whose aliases expand to far more
	// values than it spells out ("billion laughs"), or that refers to itself.
	budget int
}

// maxValues is far more values than a real rules file holds.
const maxValues = 100_000

func newDecoder(file string) *decoder {
	return &decoder{file: file, keys: map[any]int{}, failed: map[any]bool{}, budget: maxValues}
}

func (d *decoder) errorf(line int, format string, args ...any) {
	d.problems = append(d.problems, Problem{File: d.file, Line: line, Message: fmt.Sprintf(format, args...)})
}

// set reports whether the YAML gave the field at ptr a value, and the line.
func (d *decoder) set(ptr any) (int, bool) {
	line, ok := d.keys[ptr]
	return line, ok
}

// given reports whether the YAML gave the field at ptr a value, right or
// wrong.
func (d *decoder) given(ptr any) bool {
	_, ok := d.keys[ptr]
	return ok || d.failed[ptr]
}

// line returns the line of the first field in ptrs that the YAML set, or
// else def.
func (d *decoder) line(def int, ptrs ...any) int {
	for _, p := range ptrs {
		if l, ok := d.keys[p]; ok {
			return l
		}
	}
	return def
}

// nodeError is an error with the line it is about, for UnmarshalYAML
// methods whose problem is deeper in the node than the value's first line.
type nodeError struct {
	line int
	msg  string
}

func (e *nodeError) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.msg) }

var durationType = reflect.TypeFor[model.Duration]()

func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names a value for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return strconv.Quote(n.Value)
	}
}

// prefix is "path: " for messages about the value at path, or "" at the top.
func prefix(path string) string {
	if path == "" {
		return ""
	}
	return path + ": "
}

// decode stores n into v, which must be addressable. path names the value
// in messages ("window", "rollback.data.timeout"); it starts afresh in each
// list element that is an object of its own (a policy, a check), because
// the line already says which one.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if !d.spend(n) {
		return
	}
	n = resolve(n)
	if isNull(n) {
		return
	}
	if u, ok := v.Addr().Interface().(yaml.Unmarshaler); ok {
		if err := u.UnmarshalYAML(n); err != nil {
			line, msg := n.Line, err.Error()
			if ne, ok := errors.AsType[*nodeError](err); ok {
				line, msg = ne.line, ne.msg
			}
			d.errorf(line, "%s%s", prefix(path), msg)
		}
		return
	}
	if v.Type() == durationType {
		if dur, ok := d.duration(n, path); ok {
			v.Set(reflect.ValueOf(dur))
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		before := len(d.problems)
		d.decode(n, p.Elem(), path)
		if len(d.problems) == before || keepPartial(v.Type(), n) {
			v.Set(p)
		}
	case reflect.Struct:
		d.mapping(n, v, path)
	case reflect.Slice:
		d.sequence(n, v, path)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.errorf(n.Line, "%sexpected a string, got %s", prefix(path), describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Int:
		// yaml.v3 would truncate 1.5 to 1; an integer field takes integers.
		var i int
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil {
			d.errorf(n.Line, "%sexpected an integer, got %s", prefix(path), describe(n))
			return
		}
		v.SetInt(int64(i))
	case reflect.Bool:
		// yaml.v3 would take "yes" and "on" too; a flag takes true or false.
		var b bool
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
			d.errorf(n.Line, "%sexpected true or false, got %s", prefix(path), describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Float64:
		var f float64
		if n.Kind != yaml.ScalarNode || n.Decode(&f) != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			d.errorf(n.Line, "%sexpected a number, got %s", prefix(path), describe(n))
			return
		}
		v.SetFloat(f)
	default:
		// Only reachable if someone adds a field of a new kind to types.go.
		d.errorf(n.Line, "%scannot decode into %s", prefix(path), v.Type())
	}
}

// duration parses Prometheus duration syntax ("500ms", "30s", "10m", "1d").
func (d *decoder) duration(n *yaml.Node, path string) (model.Duration, bool) {
	if n.Kind != yaml.ScalarNode {
		d.errorf(n.Line, "%sexpected a duration, got %s", prefix(path), describe(n))
		return 0, false
	}
	dur, err := model.ParseDurationAllowNegative(n.Value)
	switch {
	case err != nil:
		d.errorf(n.Line, "%sinvalid duration %q (use Prometheus syntax such as 500ms, 30s, 10m, 1h)", prefix(path), n.Value)
		return 0, false
	case dur < 0:
		d.errorf(n.Line, "%sduration must not be negative, got %s", prefix(path), n.Value)
		return 0, false
	}
	return dur, true
}

// spend counts one more value decoded, and reports whether that is still
// within the budget.
func (d *decoder) spend(n *yaml.Node) bool {
	if d.budget--; d.budget < 0 {
		if d.budget == -1 {
			d.errorf(n.Line, "document too large: aliases expand to more than %d values", maxValues)
		}
		return false
	}
	return true
}

// mapping decodes a mapping node into struct v, rejecting keys that are not
// one of its yaml tags.
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n.Line, "%sexpected a mapping, got %s", prefix(path), describe(n))
		return
	}
	if !d.spend(n) {
		return
	}
	fields := yamlFields(v.Type())
	if _, ok := d.keys[v.Addr().Interface()]; !ok {
		d.keys[v.Addr().Interface()] = n.Line
	}

	// YAML merge keys ("<<: *defaults") give values that the mapping's own
	// keys override, so they go first whatever their position.
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].ShortTag() == "!!merge" {
			d.merge(n.Content[i+1], v, path)
		}
	}

	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.ShortTag() == "!!merge" {
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.errorf(k.Line, "%sexpected a key, got %s", prefix(path), describe(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.errorf(k.Line, "duplicate key %q (first at line %d)", k.Value, first)
			continue
		}
		seen[k.Value] = k.Line
		idx, ok := fields[k.Value]
		if !ok {
			d.errorf(k.Line, "unknown key %q", k.Value)
			continue
		}
		if isNull(resolve(val)) {
			continue // "window:" or "window: ~" means not set
		}
		f := v.Field(idx)
		ptr := f.Addr().Interface()
		d.keys[ptr] = k.Line
		before := len(d.problems)
		d.decode(val, f, join(path, k.Value))
		if len(d.problems) > before && !keepPartial(f.Type(), resolve(val)) {
			delete(d.keys, ptr)
			d.failed[ptr] = true
		}
	}
}

func (d *decoder) merge(n *yaml.Node, v reflect.Value, path string) {
	n = resolve(n)
	switch n.Kind {
	case yaml.MappingNode:
		d.mapping(n, v, path)
	case yaml.SequenceNode:
		// Earlier mappings in the list win, so apply them last.
		for i := len(n.Content) - 1; i >= 0; i-- {
			if m := resolve(n.Content[i]); m.Kind == yaml.MappingNode {
				d.mapping(m, v, path)
			} else {
				d.errorf(m.Line, "%smerge (<<) expects mappings, got %s", prefix(path), describe(m))
			}
		}
	default:
		d.errorf(n.Line, "%smerge (<<) expects a mapping, got %s", prefix(path), describe(n))
	}
}

func (d *decoder) sequence(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n.Line, "%sexpected a list, got %s", prefix(path), describe(n))
		return
	}
	elem := v.Type().Elem()
	object := elem.Kind() == reflect.Struct || elem.Kind() == reflect.Pointer && elem.Elem().Kind() == reflect.Struct
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	before := len(d.problems)
	for i, c := range n.Content {
		e := s.Index(i)
		ptr := e.Addr().Interface()
		d.keys[ptr] = resolve(c).Line
		p := fmt.Sprintf("%s[%d]", path, i)
		if object {
			p = ""
		}
		had := len(d.problems)
		d.decode(c, e, p)
		if len(d.problems) > had && !keepPartial(elem, resolve(c)) {
			d.failed[ptr] = true
		}
	}
	if len(d.problems) == before || object {
		v.Set(s)
	}
}

// keepPartial reports whether a value of type t from node n that had a
// problem is still worth keeping: an object (or a list of objects) in the
// right shape, whose other fields validation should still check. Anything
// else with a problem counts as not set, so that one mistake makes one
// message and not also "x is required".
func keepPartial(t reflect.Type, n *yaml.Node) bool {
	want := yaml.MappingNode
	switch t.Kind() {
	case reflect.Slice:
		want = yaml.SequenceNode
		t = t.Elem()
		if t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
	case reflect.Pointer:
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t == durationType || n.Kind != want {
		return false
	}
	_, custom := reflect.New(t).Interface().(yaml.Unmarshaler)
	return !custom
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// yamlFields maps the yaml key of each decodable field of t to its index.
func yamlFields(t reflect.Type) map[string]int {
	m := map[string]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = i
	}
	return m
}

// UnmarshalYAML accepts `pre_deploy` or `{offset: <duration>}`.
func (b *Baseline) UnmarshalYAML(n *yaml.Node) error {
	n = resolve(n)
	const want = "want pre_deploy or {offset: <duration>}"
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Value != BaselinePreDeploy {
			return fmt.Errorf("%s, got %q", want, n.Value)
		}
		*b = Baseline{Kind: BaselinePreDeploy}
		return nil
	case yaml.MappingNode:
		var offset *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			switch {
			case k.Value != BaselineOffset:
				return &nodeError{k.Line, fmt.Sprintf("unknown key %q (%s)", k.Value, want)}
			case offset != nil:
				return &nodeError{k.Line, fmt.Sprintf("duplicate key %q", k.Value)}
			}
			offset = resolve(n.Content[i+1])
		}
		if offset == nil {
			return fmt.Errorf("%s, got an empty mapping", want)
		}
		dur, err := model.ParseDuration(offset.Value)
		if offset.Kind != yaml.ScalarNode || err != nil || dur <= 0 {
			return &nodeError{offset.Line, fmt.Sprintf("offset must be a positive duration such as 1d or 7d, got %s", describe(offset))}
		}
		*b = Baseline{Kind: BaselineOffset, Offset: dur}
		return nil
	default:
		return fmt.Errorf("%s, got %s", want, describe(n))
	}
}

// MaxCompareWeeks is the most weeks back `with: {weeks: N}` pools: two
// months of the same hour, beyond which the service has changed more than
// the deploy.
const MaxCompareWeeks = 8

// UnmarshalYAML accepts `pre_deploy`, `canary`, `{offset: <duration>}` or
// `{weeks: <1..8>}`.
func (w *CompareWith) UnmarshalYAML(n *yaml.Node) error {
	n = resolve(n)
	want := fmt.Sprintf("want pre_deploy, canary, {offset: <duration>} or {weeks: <1..%d>}", MaxCompareWeeks)
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Value != WithPreDeploy && n.Value != WithCanary {
			return fmt.Errorf("%s, got %q", want, n.Value)
		}
		*w = CompareWith{Kind: n.Value}
		return nil
	case yaml.MappingNode:
		if len(n.Content) == 0 {
			return fmt.Errorf("%s, got an empty mapping", want)
		}
		if len(n.Content) > 2 {
			k := n.Content[2]
			return &nodeError{k.Line, fmt.Sprintf("one key only, offset or weeks, got %q as well (%s)", k.Value, want)}
		}
		k, v := n.Content[0], resolve(n.Content[1])
		switch k.Value {
		case WithOffset:
			dur, err := model.ParseDuration(v.Value)
			if v.Kind != yaml.ScalarNode || err != nil || dur <= 0 {
				return &nodeError{v.Line, fmt.Sprintf("offset must be a positive duration such as 1d or 7d, got %s", describe(v))}
			}
			*w = CompareWith{Kind: WithOffset, Offset: dur}
		case WithWeeks:
			var weeks int
			if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!int" || v.Decode(&weeks) != nil || weeks < 1 || weeks > MaxCompareWeeks {
				return &nodeError{v.Line, fmt.Sprintf("weeks must be a whole number from 1 to %d, got %s", MaxCompareWeeks, describe(v))}
			}
			*w = CompareWith{Kind: WithWeeks, Weeks: weeks}
		default:
			return &nodeError{k.Line, fmt.Sprintf("unknown key %q (%s)", k.Value, want)}
		}
		return nil
	default:
		return fmt.Errorf("%s, got %s", want, describe(n))
	}
}
