package config

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/rollback-watcher/watcher/internal/events"
)

// Decisions is `decisions:`, who may cancel and approve held rollbacks
// over the HTTP API, on which services and environments (README "Who may
// decide on what"): the HTTP twin of the NATS subject permissions
// that scope `watcher cancel` and `watcher approve`. Without the section
// every basic-auth user of --web.config.file decides on every service; with
// it only the users and tokens listed here decide, each within its scope.
// The signed links of rollback.held are not scoped here: each is the
// credential for one request.
type Decisions struct {
	// Users are basic-auth users of --web.config.file (the watcher checks
	// their passwords, internal/web basicauth.go), by name.
	Users []DecisionUser `yaml:"users"`
	// Tokens may decide with "Authorization: Bearer <token>", for chat
	// bots and scripts that do not do basic auth.
	Tokens []Token `yaml:"tokens"`
}

// DecisionUser is one of `decisions.users`.
type DecisionUser struct {
	// Name is the user's name in --web.config.file's basic_auth_users;
	// it is who decides in rollback.cancelled and rollback.approved.
	Name  string `yaml:"name"`
	Scope `yaml:",inline"`
}

// validateDecisions checks `decisions:` and resolves its files against
// dir. A user or token name is who decides in the audit, so no name is
// both a user and a token. Whether a user is in --web.config.file is not
// known here: `watcher run` warns of those that are not.
func validateDecisions(file, dir string, src []byte, d *Decisions) []string {
	s := newSection(file, "decisions", src)
	if d == nil {
		// Written as `decisions:` with nothing under it (or everything
		// commented out): not the same as no section, which lets every
		// basic-auth user decide on every service.
		if hasKey(s.root, "decisions") {
			s.add(nil, "the section is empty: list users and tokens under it, write `decisions: {}` to let nobody decide over the HTTP API, "+
				"or remove it to let every user of --web.config.file decide on every service")
		}
		return s.problems
	}
	const may = "this caller may decide on"
	tokens := map[string]int{}
	for i, t := range d.Tokens {
		if _, ok := tokens[t.Name]; !ok {
			tokens[t.Name] = i
		}
	}
	seen := map[string]int{}
	for i, u := range d.Users {
		keys := []any{"users", i}
		switch {
		case u.Name == "":
			s.add(keys, "name is required: a user of basic_auth_users in --web.config.file")
		case strings.Contains(u.Name, ":") || !printable(u.Name):
			s.add(append(keys, "name"), "name %q: a basic-auth user name has no ':' and no control characters", u.Name)
		case utf8.RuneCountInString(u.Name) > events.MaxByLen:
			s.add(append(keys, "name"), "name is %d characters long, more than %d", utf8.RuneCountInString(u.Name), events.MaxByLen)
		default:
			if first, ok := seen[u.Name]; ok {
				s.add(append(keys, "name"), "name %s is listed at decisions.users[%d] too: give each user one scope", u.Name, first)
			} else if t, ok := tokens[u.Name]; ok {
				s.add(append(keys, "name"), "name %s is the name of decisions.tokens[%d] too: the audit could not tell them apart", u.Name, t)
			} else {
				seen[u.Name] = i
			}
		}
		s.scope(keys, u.Scope, may)
	}
	s.tokens(dir, d.Tokens, "who decides", may)
	return s.problems
}

// hasKey reports whether the mapping root has key.
func hasKey(root *yaml.Node, key string) bool {
	if root == nil || root.Kind != yaml.MappingNode {
		return false
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == key {
			return true
		}
	}
	return false
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}
