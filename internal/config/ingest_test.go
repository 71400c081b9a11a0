package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const ingestConfig = `ingest:
  tokens:
    - name: ci
      token_file: secrets/ci-token
      services: ["shop-*"]
      environments: [production]
    - name: deployer
      token_file: /etc/watcher/deployer-token
      services: ["*"]
      environments: [staging, "qa-*"]
  github:
    secret_file: ../shared/github-secret
    services: [Hello-World]
    environments: ["*"]
  gitlab:
    token_file: gitlab-token
    services: ["test-deployment-webhooks"]
    environments: [staging]
`

func TestLoadIngest(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "etc")
	c, err := Load(writeConfig(t, dir, ingestConfig))
	if err != nil {
		t.Fatal(err)
	}
	in := c.Ingest
	if len(in.Tokens) != 2 || in.GitHub == nil || in.GitLab == nil {
		t.Fatalf("ingest = %+v", in)
	}
	if got := in.Tokens[0].TokenFile; got != filepath.Join(dir, "secrets/ci-token") {
		t.Errorf("tokens[0].token_file = %s, want it resolved against the config's directory", got)
	}
	if got := in.Tokens[1].TokenFile; got != "/etc/watcher/deployer-token" {
		t.Errorf("tokens[1].token_file = %s, want the absolute path kept", got)
	}
	if in.GitHub.SecretFile != filepath.Join(root, "shared/github-secret") || in.GitLab.TokenFile != filepath.Join(dir, "gitlab-token") {
		t.Errorf("github %s, gitlab %s", in.GitHub.SecretFile, in.GitLab.TokenFile)
	}
	if s := in.Tokens[1].Scope; len(s.Services) != 1 || s.Services[0] != "*" || len(s.Environments) != 2 || s.Environments[1] != "qa-*" {
		t.Errorf("tokens[1] scope %+v", s)
	}
	if c, err := Load(writeConfig(t, t.TempDir(), "rule_files: [x.yml]\n")); err != nil || len(c.Ingest.Tokens) > 0 || c.Ingest.GitHub != nil || c.Ingest.GitLab != nil {
		t.Errorf("no ingest section: %+v, err %v", c, err)
	}
}

func TestLoadIngestBad(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    []string // one "line: message" per problem, in order
	}{
		{
			name:    "no token_file",
			content: "ingest:\n  tokens:\n    - name: ci\n      services: [shop]\n      environments: [production]\n",
			want:    []string{`3: ingest.tokens[0]: token_file is required`},
		},
		{
			name:    "no scope",
			content: "ingest:\n  tokens:\n    - name: ci\n      token_file: t\n",
			want: []string{
				`3: ingest.tokens[0]: services is required: the services this sender may deploy, such as ["shop-*"], or ["*"] for all`,
				`3: ingest.tokens[0]: environments is required`,
			},
		},
		{
			name:    "bad glob",
			content: "ingest:\n  tokens:\n    - name: ci\n      token_file: t\n      services:\n        - shop\n        - \"shop-[\"\n      environments: [production]\n",
			want:    []string{`7: ingest.tokens[0].services[1]: "shop-[": syntax error in pattern`},
		},
		{
			name:    "empty pattern",
			content: "ingest:\n  gitlab:\n    token_file: t\n    services: [\"\"]\n    environments: [production]\n",
			want:    []string{`4: ingest.gitlab.services[0]: an empty pattern matches nothing`},
		},
		{
			name: "a name twice",
			content: "ingest:\n  tokens:\n    - {name: ci, token_file: a, services: [a], environments: [b]}\n" +
				"    - name: ci\n      token_file: b\n      services: [a]\n      environments: [b]\n",
			want: []string{`4: ingest.tokens[1].name: name ci is used by ingest.tokens[0] too`},
		},
		{
			name:    "bad name",
			content: "ingest:\n  tokens:\n    - name: the ci\n      token_file: a\n      services: [a]\n      environments: [b]\n",
			want:    []string{`3: ingest.tokens[0].name: name "the ci": use letters`},
		},
		{
			name:    "no name",
			content: "ingest:\n  tokens:\n    - token_file: a\n      services: [a]\n      environments: [b]\n",
			want:    []string{`3: ingest.tokens[0]: name is required`},
		},
		{
			name:    "github without a secret",
			content: "ingest:\n  github:\n    services: [\"*\"]\n    environments: [production]\n",
			want:    []string{`2: ingest.github: secret_file is required`},
		},
		{
			name:    "github takes secret_file, not token_file",
			content: "ingest:\n  github:\n    token_file: s\n    services: [\"*\"]\n    environments: [production]\n",
			want:    []string{`3: unknown key token_file`},
		},
		{
			name:    "gitlab without a token",
			content: "ingest:\n  gitlab:\n    services: [\"*\"]\n    environments: [production]\n",
			want:    []string{`2: ingest.gitlab: token_file is required`},
		},
		{
			name:    "a token written in the file",
			content: "ingest:\n  tokens:\n    - name: ci\n      token: s3cret\n",
			want:    []string{`4: unknown key token`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assertLoadErrors(t, tc.content, tc.want)
		})
	}
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const secret = "0123456789abcdef0123"
	if s, err := ReadSecret(write("good", "  "+secret+"\n")); err != nil || s != secret {
		t.Errorf("ReadSecret = %q, %v; want it trimmed", s, err)
	}
	for _, tc := range []struct{ file, want string }{
		{write("empty", "\n"), "is empty"},
		{write("short", "hunter2\n"), "holds 7 characters, fewer than 16"},
		{filepath.Join(dir, "missing"), "no such file"},
	} {
		_, err := ReadSecret(tc.file)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.file) {
			t.Errorf("ReadSecret(%s) = %v, want an error naming the file and saying %q", tc.file, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("the error shows the secret: %v", err)
		}
	}
}
