package config

import (
	"path/filepath"
	"testing"
)

const decisionsConfig = `decisions:
  users:
    - name: oncall
      services: ["*"]
      environments: ["*"]
    - name: shop-team
      services: ["shop-*"]
      environments: [production, staging]
  tokens:
    - name: chatops
      token_file: secrets/chatops-token
      services: [cart]
      environments: [production]
`

func TestLoadDecisions(t *testing.T) {
	dir := t.TempDir()
	c, err := Load(writeConfig(t, dir, decisionsConfig))
	if err != nil {
		t.Fatal(err)
	}
	d := c.Decisions
	if d == nil || len(d.Users) != 2 || len(d.Tokens) != 1 {
		t.Fatalf("decisions = %+v", d)
	}
	if u := d.Users[1]; u.Name != "shop-team" || len(u.Services) != 1 || u.Services[0] != "shop-*" || len(u.Environments) != 2 {
		t.Errorf("users[1] = %+v", u)
	}
	if tok := d.Tokens[0]; tok.Name != "chatops" || tok.TokenFile != filepath.Join(dir, "secrets/chatops-token") || tok.Services[0] != "cart" {
		t.Errorf("tokens[0] = %+v, want its token_file resolved against the config's directory", tok)
	}

	// No section: every basic-auth user decides on every service.
	if c, err := Load(writeConfig(t, t.TempDir(), "rule_files: [x.yml]\n")); err != nil || c.Decisions != nil {
		t.Errorf("no decisions section: %+v, err %v; want nil", c.Decisions, err)
	}
	// An empty one: nobody decides over the API.
	if c, err := Load(writeConfig(t, t.TempDir(), "decisions: {}\n")); err != nil || c.Decisions == nil || len(c.Decisions.Users)+len(c.Decisions.Tokens) != 0 {
		t.Errorf("decisions: {}: %+v, err %v; want an empty section", c.Decisions, err)
	}
}

func TestLoadDecisionsBad(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    []string // one "line: message" per problem, in order
	}{
		{
			name:    "nothing under it",
			content: "rule_files: [x.yml]\ndecisions:\n#  users:\n#    - {name: oncall, services: [\"*\"], environments: [\"*\"]}\n",
			want:    []string{"2: decisions: the section is empty: list users and tokens under it, write `decisions: {}` to let nobody decide over the HTTP API, or remove it"},
		},
		{
			name:    "user without a scope",
			content: "decisions:\n  users:\n    - name: oncall\n",
			want: []string{
				`3: decisions.users[0]: services is required: the services this caller may decide on, such as ["shop-*"], or ["*"] for all`,
				`3: decisions.users[0]: environments is required: the environments this caller may decide on`,
			},
		},
		{
			name:    "user without a name",
			content: "decisions:\n  users:\n    - {services: [shop], environments: [production]}\n",
			want:    []string{`3: decisions.users[0]: name is required: a user of basic_auth_users in --web.config.file`},
		},
		{
			name:    "a user name basic auth cannot carry",
			content: "decisions:\n  users:\n    - name: \"on:call\"\n      services: [shop]\n      environments: [production]\n",
			want:    []string{`3: decisions.users[0].name: name "on:call": a basic-auth user name has no ':'`},
		},
		{
			name:    "a user twice",
			content: "decisions:\n  users:\n    - {name: oncall, services: [shop], environments: [production]}\n    - {name: oncall, services: [cart], environments: [production]}\n",
			want:    []string{`4: decisions.users[1].name: name oncall is listed at decisions.users[0] too: give each user one scope`},
		},
		{
			name: "a user and a token of one name",
			content: "decisions:\n  users:\n    - {name: bot, services: [shop], environments: [production]}\n" +
				"  tokens:\n    - {name: bot, token_file: t, services: [shop], environments: [production]}\n",
			want: []string{`3: decisions.users[0].name: name bot is the name of decisions.tokens[0] too: the audit could not tell them apart`},
		},
		{
			name:    "bad glob",
			content: "decisions:\n  users:\n    - name: oncall\n      services: [shop]\n      environments:\n        - \"prod[\"\n",
			want:    []string{`6: decisions.users[0].environments[0]: "prod[": syntax error in pattern`},
		},
		{
			name:    "token without a file",
			content: "decisions:\n  tokens:\n    - {name: chatops, services: [shop], environments: [production]}\n",
			want:    []string{`3: decisions.tokens[0]: token_file is required`},
		},
		{
			name:    "token with a bad name",
			content: "decisions:\n  tokens:\n    - {name: chat ops, token_file: t, services: [shop], environments: [production]}\n",
			want:    []string{`3: decisions.tokens[0].name: name "chat ops": use letters`},
		},
		{
			name:    "token twice",
			content: "decisions:\n  tokens:\n    - {name: bot, token_file: a, services: [shop], environments: [production]}\n    - {name: bot, token_file: b, services: [shop], environments: [production]}\n",
			want:    []string{`4: decisions.tokens[1].name: name bot is used by decisions.tokens[0] too`},
		},
		{
			name:    "token without a scope names who decides",
			content: "decisions:\n  tokens:\n    - {token_file: a}\n",
			want: []string{
				`3: decisions.tokens[0]: name is required: it names who decides in the audit and the logs`,
				`3: decisions.tokens[0]: services is required`,
				`3: decisions.tokens[0]: environments is required`,
			},
		},
		{
			name: "problems in the order written",
			content: "decisions:\n  users:\n    - {name: shopper, services: [\"shop-[\"], environments: [production]}\n" +
				"  tokens:\n    - {name: chatops, token_file: t, services: [cart]}\n",
			want: []string{
				`3: decisions.users[0].services[0]: "shop-[": syntax error in pattern`,
				`5: decisions.tokens[0]: environments is required`,
			},
		},
		{
			name:    "a token written in the file",
			content: "decisions:\n  tokens:\n    - name: bot\n      token: s3cret\n",
			want:    []string{`4: unknown key token`},
		},
		{
			name:    "a password written in the file",
			content: "decisions:\n  users:\n    - name: oncall\n      password: s3cret\n",
			want:    []string{`4: unknown key password`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assertLoadErrors(t, tc.content, tc.want)
		})
	}
}
