package config

import (
	"bytes"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/rollback-watcher/watcher/internal/audit"
)

// Notification kinds (README "Notifications").
const (
	NotifySlack   = "slack"   // a Slack incoming webhook
	NotifyWebhook = "webhook" // the audit record as JSON, signed
)

// NotifyTarget is one entry of `notify:`: where to send which audit
// records. The URL and the secret are read from their files when the
// watcher starts, never from this file, so that the configuration can be
// shown and versioned without them.
type NotifyTarget struct {
	Name string `yaml:"name"`
	Kind string `yaml:"kind"`
	// URLFile holds the URL to POST to; a Slack webhook URL is itself a
	// credential.
	URLFile string `yaml:"url_file"`
	// SecretFile holds the HMAC key of a webhook's X-Watcher-Signature.
	SecretFile string      `yaml:"secret_file"`
	Match      NotifyMatch `yaml:"match"`
	// On lists the audit record kinds to send.
	On []string `yaml:"on"`
}

// NotifyMatch selects records by service and environment: exact names or
// path.Match globs, like a policy's match; empty matches everything.
type NotifyMatch struct {
	Service     string `yaml:"service"`
	Environment string `yaml:"environment"`
}

// Matches reports whether a record of service in environment fits m.
func (m NotifyMatch) Matches(service, environment string) bool {
	return globMatches(m.Service, service) && globMatches(m.Environment, environment)
}

// Wants reports whether t is to be sent a record of kind about service in
// environment.
func (t NotifyTarget) Wants(kind, service, environment string) bool {
	return slices.Contains(t.On, kind) && t.Match.Matches(service, environment)
}

func globMatches(pattern, name string) bool {
	if pattern == "" || pattern == name {
		return true
	}
	ok, _ := path.Match(pattern, name) // validation rejects bad patterns
	return ok
}

// NotifyKinds are the audit record kinds a target may subscribe to: those
// of README "Audit records". notify.failed is not one: a failed
// notification of a failed notification would feed itself.
var NotifyKinds = []string{
	audit.EventRejected, audit.RunSkipped, audit.RunStarted, audit.Measurement,
	audit.RunPassed, audit.RunFailed, audit.RunInconclusive, audit.RunMarginal, audit.RunSuperseded,
	audit.RunResumed, audit.RunPolicyKept,
	audit.RollbackRequested, audit.RollbackHost, audit.RollbackCompleted, audit.RollbackFailed,
	audit.AlertReceived,
	audit.RollbackHeld, audit.RollbackApproved, audit.RollbackCancelled, audit.RollbackVerified, audit.RollbackUnhelpful,
}

// notifyNameRE keeps a target's name fit for a metric label, a log line
// and one token of a KV key.
var notifyNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

// notifyLines are where the parts of each `notify:` entry are written.
type notifyLines struct {
	entry int
	keys  map[string]int // key -> its line
	on    []int          // line of each `on` element
}

// line is the line of key, or of the entry when key is not written.
func (l notifyLines) line(key string) int {
	if n, ok := l.keys[key]; ok {
		return n
	}
	return l.entry
}

// findNotifyLines reads where each `notify:` entry and its keys are
// written. The document decoded already, so its shape is known good.
func findNotifyLines(src []byte) []notifyLines {
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(src)).Decode(&doc); err != nil || len(doc.Content) == 0 {
		return nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil
	}
	var seq *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "notify" {
			seq = root.Content[i+1]
		}
	}
	if seq == nil || seq.Kind != yaml.SequenceNode {
		return nil
	}
	out := make([]notifyLines, len(seq.Content))
	for i, item := range seq.Content {
		l := notifyLines{entry: item.Line, keys: map[string]int{}}
		for j := 0; j+1 < len(item.Content); j += 2 {
			k, v := item.Content[j], item.Content[j+1]
			l.keys[k.Value] = k.Line
			if k.Value == "match" {
				for m := 0; m+1 < len(v.Content); m += 2 {
					l.keys["match."+v.Content[m].Value] = v.Content[m].Line
				}
			}
			if k.Value == "on" {
				for _, e := range v.Content {
					l.on = append(l.on, e.Line)
				}
			}
		}
		out[i] = l
	}
	return out
}

// validateNotify checks every target, resolves its files against dir and
// returns one "file:line: message" per problem.
func validateNotify(file, dir string, src []byte, targets []NotifyTarget) []string {
	lines := findNotifyLines(src)
	var problems []string
	seen := map[string]int{}
	for i := range targets {
		t := &targets[i]
		l := notifyLines{keys: map[string]int{}}
		if i < len(lines) {
			l = lines[i]
		}
		where := fmt.Sprintf("notify[%d]", i)
		if t.Name != "" {
			where += " (" + t.Name + ")"
		}
		add := func(line int, format string, args ...any) {
			problems = append(problems, fmt.Sprintf("%s:%d: %s: %s", file, line, where, fmt.Sprintf(format, args...)))
		}
		switch {
		case t.Name == "":
			add(l.entry, "name is required")
		case !notifyNameRE.MatchString(t.Name):
			add(l.line("name"), "name %q: use letters, digits, '_' and '-' (at most 63), starting with a letter or digit", t.Name)
		default:
			if first, ok := seen[t.Name]; ok {
				add(l.line("name"), "name %s is used by notify[%d] too", t.Name, first)
			} else {
				seen[t.Name] = i
			}
		}
		switch t.Kind {
		case NotifySlack:
			if t.SecretFile != "" {
				add(l.line("secret_file"), "secret_file is for kind webhook (X-Watcher-Signature); Slack's incoming webhooks take no signature")
			}
		case NotifyWebhook:
			if t.SecretFile == "" {
				add(l.entry, "kind webhook needs secret_file: the key of the X-Watcher-Signature HMAC that receivers check")
			}
		case "":
			add(l.entry, "kind is required: slack or webhook")
		default:
			add(l.line("kind"), "unknown kind %q: want slack or webhook", t.Kind)
		}
		if t.URLFile == "" {
			add(l.entry, "url_file is required: the file holding the URL to POST to (a URL is a secret: it is never written in this file)")
		}
		for _, m := range []struct{ key, pattern string }{{"service", t.Match.Service}, {"environment", t.Match.Environment}} {
			if _, err := path.Match(m.pattern, ""); err != nil {
				add(l.line("match."+m.key), "match.%s %q: %v", m.key, m.pattern, err)
			}
		}
		if len(t.On) == 0 {
			add(l.line("on"), "on is required: the record kinds to send, such as [run.failed, rollback.completed, rollback.failed]")
		}
		for j, kind := range t.On {
			line := l.line("on")
			if j < len(l.on) {
				line = l.on[j]
			}
			switch {
			case kind == audit.NotifyFailed:
				add(line, "on: %s cannot be notified (it would notify the failure to notify itself); watch watcher_notifications_total{result=\"failed\"} instead", kind)
			case !slices.Contains(NotifyKinds, kind):
				add(line, "on: unknown record kind %q (kinds: %s)", kind, strings.Join(NotifyKinds, ", "))
			}
		}
		t.URLFile = join(dir, t.URLFile)
		t.SecretFile = join(dir, t.SecretFile)
	}
	return problems
}
