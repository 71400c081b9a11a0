package config

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const notifyConfig = `notify:
  - name: oncall
    kind: slack
    url_file: secrets/slack-url
    match: {service: "shop-*", environment: production}
    on: [run.failed, run.marginal, run.inconclusive, rollback.held, rollback.completed,
         rollback.failed, rollback.cancelled, rollback.verified, rollback.unhelpful]
  - name: audit-sink
    kind: webhook
    url_file: /etc/watcher/hook-url
    secret_file: ../shared/hook-secret
    on: [rollback.completed]
`

func TestLoadNotify(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "etc")
	c, err := Load(writeConfig(t, dir, notifyConfig))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Notify) != 2 {
		t.Fatalf("notify = %+v, want 2 targets", c.Notify)
	}
	slack, hook := c.Notify[0], c.Notify[1]
	if slack.Name != "oncall" || slack.Kind != NotifySlack || slack.URLFile != filepath.Join(dir, "secrets/slack-url") || slack.SecretFile != "" {
		t.Errorf("slack target = %+v", slack)
	}
	if slack.Match != (NotifyMatch{Service: "shop-*", Environment: "production"}) || len(slack.On) != 9 {
		t.Errorf("slack match %+v on %q", slack.Match, slack.On)
	}
	if hook.URLFile != "/etc/watcher/hook-url" || hook.SecretFile != filepath.Join(root, "shared/hook-secret") {
		t.Errorf("webhook files %q %q: want the absolute one kept and the relative one resolved against the config's directory", hook.URLFile, hook.SecretFile)
	}
}

func TestNotifyTargetWants(t *testing.T) {
	target := NotifyTarget{Match: NotifyMatch{Service: "shop-*", Environment: "production"}, On: []string{"run.failed", "rollback.held"}}
	tests := []struct {
		kind, service, env string
		want               bool
	}{
		{"run.failed", "shop-api", "production", true},
		{"rollback.held", "shop-web", "production", true},
		{"run.passed", "shop-api", "production", false}, // kind not subscribed
		{"run.failed", "billing", "production", false},  // service glob
		{"run.failed", "shop-api", "staging", false},    // environment exact
		{"run.failed", "shop", "production", false},     // "shop-*" needs the dash
		{"run.failed", "shop-a.b", "production", true},  // a glob's * takes dots
	}
	for _, tc := range tests {
		if got := target.Wants(tc.kind, tc.service, tc.env); got != tc.want {
			t.Errorf("Wants(%s, %s, %s) = %v, want %v", tc.kind, tc.service, tc.env, got, tc.want)
		}
	}
	if !(NotifyTarget{On: []string{"run.failed"}}).Wants("run.failed", "any", "where") {
		t.Error("an empty match does not match everything")
	}
}

func TestLoadNotifyBad(t *testing.T) {
	entry := func(lines ...string) string {
		return "notify:\n  - " + strings.Join(lines, "\n    ") + "\n"
	}
	tests := []struct {
		name    string
		content string
		want    []string // one "line: message" per problem, in order
	}{
		{
			name:    "unknown kind",
			content: entry("name: a", "kind: email", "url_file: u", "on: [run.failed]"),
			want:    []string{`3: notify[0] (a): unknown kind "email": want slack or webhook`},
		},
		{
			name:    "no kind",
			content: entry("name: a", "url_file: u", "on: [run.failed]"),
			want:    []string{`2: notify[0] (a): kind is required`},
		},
		{
			name:    "missing url_file",
			content: entry("name: a", "kind: slack", "on: [run.failed]"),
			want:    []string{`2: notify[0] (a): url_file is required`},
		},
		{
			name:    "webhook without secret",
			content: entry("name: a", "kind: webhook", "url_file: u", "on: [run.failed]"),
			want:    []string{`2: notify[0] (a): kind webhook needs secret_file`},
		},
		{
			name:    "slack with a secret",
			content: entry("name: a", "kind: slack", "url_file: u", "secret_file: s", "on: [run.failed]"),
			want:    []string{`5: notify[0] (a): secret_file is for kind webhook`},
		},
		{
			name:    "a kind that is no audit kind",
			content: entry("name: a", "kind: slack", "url_file: u", "on:", "  - run.failed", "  - run.exploded"),
			want:    []string{`7: notify[0] (a): on: unknown record kind "run.exploded"`},
		},
		{
			name:    "notify.failed cannot be subscribed",
			content: entry("name: a", "kind: slack", "url_file: u", "on: [rollback.failed, notify.failed]"),
			want:    []string{`5: notify[0] (a): on: notify.failed cannot be notified`},
		},
		{
			name:    "no kinds",
			content: entry("name: a", "kind: slack", "url_file: u"),
			want:    []string{`2: notify[0] (a): on is required`},
		},
		{
			name:    "no name",
			content: entry("kind: slack", "url_file: u", "on: [run.failed]"),
			want:    []string{`2: notify[0]: name is required`},
		},
		{
			name:    "bad name",
			content: entry("name: on call", "kind: slack", "url_file: u", "on: [run.failed]"),
			want:    []string{`2: notify[0] (on call): name "on call": use letters`},
		},
		{
			name: "a name twice",
			content: entry("name: a", "kind: slack", "url_file: u", "on: [run.failed]") +
				"  - name: a\n    kind: slack\n    url_file: v\n    on: [run.failed]\n",
			want: []string{`6: notify[1] (a): name a is used by notify[0] too`},
		},
		{
			name:    "bad glob",
			content: entry("name: a", "kind: slack", "url_file: u", "match:", "  environment: prod", "  service: \"shop-[\"", "on: [run.failed]"),
			want:    []string{`7: notify[0] (a): match.service "shop-[": syntax error in pattern`},
		},
		{
			name:    "every problem at once",
			content: entry("name: a", "kind: pager", "on: [nope]"),
			want: []string{
				`3: notify[0] (a): unknown kind "pager"`,
				`2: notify[0] (a): url_file is required`,
				`4: notify[0] (a): on: unknown record kind "nope"`,
			},
		},
		{
			name:    "unknown key",
			content: entry("name: a", "kind: slack", "url: https://hooks.slack.com/x", "on: [run.failed]"),
			want:    []string{`4: unknown key url`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assertLoadErrors(t, tc.content, tc.want)
		})
	}
}

// Every kind README "Audit records" names may be subscribed, the section 9
// kinds included, which other parts of the watcher write.
func TestNotifyKindsAreTheContracts(t *testing.T) {
	contract := []string{"event.rejected", "run.skipped", "run.started", "measurement", "run.passed",
		"run.failed", "run.inconclusive", "rollback.requested", "rollback.host", "rollback.completed",
		"rollback.failed", "alert.received", "run.marginal", "rollback.held",
		"rollback.approved", "rollback.cancelled", "rollback.verified", "rollback.unhelpful"}
	for _, k := range contract {
		if !slices.Contains(NotifyKinds, k) {
			t.Errorf("kind %s cannot be subscribed", k)
		}
	}
	if slices.Contains(NotifyKinds, "notify.failed") {
		t.Error("notify.failed can be subscribed")
	}
}
