package config

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Ingest is `ingest:`, who may send deploy events over HTTP (README "Send
// deploy events from your tool"). Each sender reads its secret from a file
// named here, never from this file, and is scoped to service and
// environment globs: the HTTP twin of NATS subject permissions. Without
// any of them the HTTP endpoints are off.
type Ingest struct {
	// Tokens may POST /api/v1/events with "Authorization: Bearer <token>".
	Tokens []IngestToken `yaml:"tokens"`
	// GitHub signs POST /api/v1/hooks/github (X-Hub-Signature-256).
	GitHub *GitHubIngest `yaml:"github"`
	// GitLab authenticates POST /api/v1/hooks/gitlab (X-Gitlab-Token).
	GitLab *GitLabIngest `yaml:"gitlab"`
}

// IngestToken is one bearer token of `ingest.tokens`.
type IngestToken struct {
	// Name says who sent an event in the audit and the logs; the token
	// itself never appears anywhere.
	Name        string `yaml:"name"`
	TokenFile   string `yaml:"token_file"`
	IngestScope `yaml:",inline"`
}

// GitHubIngest is `ingest.github`: the webhook secret GitHub signs its
// deliveries with.
type GitHubIngest struct {
	SecretFile  string `yaml:"secret_file"`
	IngestScope `yaml:",inline"`
}

// GitLabIngest is `ingest.gitlab`: the secret token GitLab sends in
// X-Gitlab-Token.
type GitLabIngest struct {
	TokenFile   string `yaml:"token_file"`
	IngestScope `yaml:",inline"`
}

// IngestScope is what a sender may deploy: path.Match globs ("shop-*", "*"),
// like a policy's match; the endpoints match them (internal/web). Both
// lists are required, so that a sender's reach is always written down.
type IngestScope struct {
	Services     []string `yaml:"services"`
	Environments []string `yaml:"environments"`
}

// MinSecretLen is the shortest token or webhook secret accepted: a short
// one can be guessed by a client that tries many.
const MinSecretLen = 16

// ReadSecret reads a token or secret from file, without surrounding
// whitespace (an editor's final newline is no part of it). An empty file,
// or one shorter than MinSecretLen, is an error naming the file, never its
// content.
func ReadSecret(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err // names the file, not its content
	}
	s := strings.TrimSpace(string(b))
	switch {
	case s == "":
		return "", fmt.Errorf("%s is empty", file)
	case len(s) < MinSecretLen:
		return "", fmt.Errorf("%s holds %d characters, fewer than %d: use a random one, such as the output of `openssl rand -hex 32`", file, len(s), MinSecretLen)
	}
	return s, nil
}

// validateIngest checks `ingest:`, resolves its files against dir and
// returns one "file:line: message" per problem.
func validateIngest(file, dir string, src []byte, in *Ingest) []string {
	root := documentRoot(src)
	var problems []string
	add := func(keys []any, format string, args ...any) {
		where := "ingest"
		for _, k := range keys {
			switch k := k.(type) {
			case int:
				where += fmt.Sprintf("[%d]", k)
			default:
				where += fmt.Sprintf(".%v", k)
			}
		}
		line := lineOf(root, append([]any{"ingest"}, keys...)...)
		problems = append(problems, fmt.Sprintf("%s:%d: %s: %s", file, line, where, fmt.Sprintf(format, args...)))
	}
	scope := func(keys []any, s IngestScope) {
		for _, l := range []struct {
			key      string
			patterns []string
			example  string
		}{{"services", s.Services, `["shop-*"]`}, {"environments", s.Environments, "[production]"}} {
			k := append(keys[:len(keys):len(keys)], l.key)
			if len(l.patterns) == 0 {
				add(keys, "%s is required: the %s this sender may deploy, such as %s, or [\"*\"] for all", l.key, l.key, l.example)
			}
			for j, p := range l.patterns {
				if p == "" {
					add(append(k, j), "an empty pattern matches nothing")
				} else if _, err := path.Match(p, ""); err != nil {
					add(append(k, j), "%q: %v", p, err)
				}
			}
		}
	}
	seen := map[string]int{}
	for i := range in.Tokens {
		t := &in.Tokens[i]
		keys := []any{"tokens", i}
		switch {
		case t.Name == "":
			add(keys, "name is required: it names the sender in the audit and the logs")
		case !notifyNameRE.MatchString(t.Name):
			add(append(keys, "name"), "name %q: use letters, digits, '_' and '-' (at most 63), starting with a letter or digit", t.Name)
		default:
			if first, ok := seen[t.Name]; ok {
				add(append(keys, "name"), "name %s is used by ingest.tokens[%d] too", t.Name, first)
			} else {
				seen[t.Name] = i
			}
		}
		if t.TokenFile == "" {
			add(keys, "token_file is required: the file holding the bearer token (a token is never written in this file)")
		}
		scope(keys, t.IngestScope)
		t.TokenFile = join(dir, t.TokenFile)
	}
	if g := in.GitHub; g != nil {
		keys := []any{"github"}
		if g.SecretFile == "" {
			add(keys, "secret_file is required: the file holding the webhook's secret, which GitHub signs every delivery with")
		}
		scope(keys, g.IngestScope)
		g.SecretFile = join(dir, g.SecretFile)
	}
	if g := in.GitLab; g != nil {
		keys := []any{"gitlab"}
		if g.TokenFile == "" {
			add(keys, "token_file is required: the file holding the webhook's secret token, which GitLab sends in X-Gitlab-Token")
		}
		scope(keys, g.IngestScope)
		g.TokenFile = join(dir, g.TokenFile)
	}
	return problems
}

// documentRoot is the top mapping of a YAML document that decoded already,
// or nil.
func documentRoot(src []byte) *yaml.Node {
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(src)).Decode(&doc); err != nil || len(doc.Content) == 0 {
		return nil
	}
	return doc.Content[0]
}

// lineOf is the line of the node at keys (mapping keys as strings,
// sequence indexes as ints) under root: of the key itself for a mapping
// member, of the element for a sequence index. When the path stops early
// (a key not written) it is the line of the deepest node found.
func lineOf(root *yaml.Node, keys ...any) int {
	n, line := root, 0
	if n != nil {
		line = n.Line
	}
	for _, k := range keys {
		if n == nil {
			break
		}
		var next *yaml.Node
		switch k := k.(type) {
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == k {
						line, next = n.Content[i].Line, n.Content[i+1]
					}
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && k < len(n.Content) {
				next = n.Content[k]
				line = next.Line
			}
		}
		n = next
	}
	return line
}
