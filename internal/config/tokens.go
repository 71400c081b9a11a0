package config

import (
	"fmt"
	"path"

	"go.yaml.in/yaml/v3"
)

// Scope is what a sender or a caller may act on: path.Match globs ("shop-*",
// "*"), like a policy's match; the endpoints match them (internal/web).
// Both lists are required, so that a reach is always written down.
type Scope struct {
	Services     []string `yaml:"services"`
	Environments []string `yaml:"environments"`
}

// Token is one bearer token of `ingest.tokens` or `decisions.tokens`.
type Token struct {
	// Name says who sent or decided in the audit and the logs; the token
	// itself never appears anywhere.
	Name      string `yaml:"name"`
	TokenFile string `yaml:"token_file"`
	Scope     `yaml:",inline"`
}

// section collects the problems of one top-level section of the file, as
// "file:line: section.key[i]: message".
type section struct {
	file, name string
	root       *yaml.Node
	problems   []string
}

func newSection(file, name string, src []byte) *section {
	return &section{file: file, name: name, root: documentRoot(src)}
}

// add records a problem at keys under the section (mapping keys as
// strings, sequence indexes as ints).
func (s *section) add(keys []any, format string, args ...any) {
	where := s.name
	for _, k := range keys {
		switch k := k.(type) {
		case int:
			where += fmt.Sprintf("[%d]", k)
		default:
			where += fmt.Sprintf(".%v", k)
		}
	}
	line := lineOf(s.root, append([]any{s.name}, keys...)...)
	s.problems = append(s.problems, fmt.Sprintf("%s:%d: %s: %s", s.file, line, where, fmt.Sprintf(format, args...)))
}

// scope checks sc at keys; may says what it grants ("this sender may
// deploy").
func (s *section) scope(keys []any, sc Scope, may string) {
	for _, l := range []struct {
		key      string
		patterns []string
		example  string
	}{{"services", sc.Services, `["shop-*"]`}, {"environments", sc.Environments, "[production]"}} {
		k := append(keys[:len(keys):len(keys)], l.key)
		if len(l.patterns) == 0 {
			s.add(keys, "%s is required: the %s %s, such as %s, or [\"*\"] for all", l.key, l.key, may, l.example)
		}
		for j, p := range l.patterns {
			if p == "" {
				s.add(append(k, j), "an empty pattern matches nothing")
			} else if _, err := path.Match(p, ""); err != nil {
				s.add(append(k, j), "%q: %v", p, err)
			}
		}
	}
}

// tokens checks the section's `tokens:` and resolves their files against
// dir; holder says what a token names ("the sender"), may what its scope
// grants.
func (s *section) tokens(dir string, ts []Token, holder, may string) {
	seen := map[string]int{}
	for i := range ts {
		t := &ts[i]
		keys := []any{"tokens", i}
		switch {
		case t.Name == "":
			s.add(keys, "name is required: it names %s in the audit and the logs", holder)
		case !notifyNameRE.MatchString(t.Name):
			s.add(append(keys, "name"), "name %q: use letters, digits, '_' and '-' (at most 63), starting with a letter or digit", t.Name)
		default:
			if first, ok := seen[t.Name]; ok {
				s.add(append(keys, "name"), "name %s is used by %s.tokens[%d] too", t.Name, s.name, first)
			} else {
				seen[t.Name] = i
			}
		}
		if t.TokenFile == "" {
			s.add(keys, "token_file is required: the file holding the bearer token (a token is never written in this file)")
		}
		s.scope(keys, t.Scope, may)
		t.TokenFile = join(dir, t.TokenFile)
	}
}
