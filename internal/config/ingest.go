package config

import (
	"bytes"
	"fmt"
	"os"
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
	Tokens []Token `yaml:"tokens"`
	// GitHub signs POST /api/v1/hooks/github (X-Hub-Signature-256).
	GitHub *GitHubIngest `yaml:"github"`
	// GitLab authenticates POST /api/v1/hooks/gitlab (X-Gitlab-Token).
	GitLab *GitLabIngest `yaml:"gitlab"`
}

// GitHubIngest is `ingest.github`: the webhook secret GitHub signs its
// deliveries with.
type GitHubIngest struct {
	SecretFile string `yaml:"secret_file"`
	Scope      `yaml:",inline"`
}

// GitLabIngest is `ingest.gitlab`: the secret token GitLab sends in
// X-Gitlab-Token.
type GitLabIngest struct {
	TokenFile string `yaml:"token_file"`
	Scope     `yaml:",inline"`
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
	s := newSection(file, "ingest", src)
	const may = "this sender may deploy"
	s.tokens(dir, in.Tokens, "the sender", may)
	if g := in.GitHub; g != nil {
		keys := []any{"github"}
		if g.SecretFile == "" {
			s.add(keys, "secret_file is required: the file holding the webhook's secret, which GitHub signs every delivery with")
		}
		s.scope(keys, g.Scope, may)
		g.SecretFile = join(dir, g.SecretFile)
	}
	if g := in.GitLab; g != nil {
		keys := []any{"gitlab"}
		if g.TokenFile == "" {
			s.add(keys, "token_file is required: the file holding the webhook's secret token, which GitLab sends in X-Gitlab-Token")
		}
		s.scope(keys, g.Scope, may)
		g.TokenFile = join(dir, g.TokenFile)
	}
	return s.problems
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
