package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestDecisionsConfigErrors: a token file of decisions: that is missing or
// short stops `watcher run` before anything starts, with one line naming
// the token and the file (never its content); `watcher check` reports a
// bad scope as file:line.
func TestDecisionsConfigErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "rules.yml"), "policies: []\n")
	writeFile(t, filepath.Join(dir, "short"), "hunter2\n")
	for _, tc := range []struct {
		name, decisions, want string
	}{
		{"missing token file", "  tokens:\n    - {name: chatops, token_file: nowhere, services: [shop], environments: [production]}\n",
			"decisions.tokens chatops: token_file: open " + filepath.Join(dir, "nowhere") + ": no such file or directory"},
		{"short token", "  tokens:\n    - {name: chatops, token_file: short, services: [shop], environments: [production]}\n",
			"decisions.tokens chatops: token_file: " + filepath.Join(dir, "short") + " holds 7 characters, fewer than 16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(dir, "watcher.yml")
			writeFile(t, cfg, "rule_files: [rules.yml]\ndecisions:\n"+tc.decisions)
			code, _, errOut := cliWithin(t, 20*time.Second, "run", "--config.file="+cfg, "--storage.path="+t.TempDir(),
				"--nats.listen="+testutil.FreeAddr(t), "--web.listen-address="+testutil.FreeAddr(t))
			if code == 0 || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, "hunter2") {
				t.Errorf("exit %d, stderr %q; want it to say %q", code, errOut, tc.want)
			}
			assertOneLine(t, errOut)
		})
	}
	cfg := filepath.Join(dir, "bad.yml")
	writeFile(t, cfg, "rule_files: [rules.yml]\ndecisions:\n  users:\n    - name: oncall\n      services: [\"shop-[\"]\n      environments: [production]\n")
	code, _, errOut := cli(t, "check", "--config.file="+cfg)
	if want := cfg + `:5: decisions.users[0].services[0]: "shop-[": syntax error in pattern`; code == 0 || !strings.Contains(errOut, want) {
		t.Errorf("check: exit %d, stderr %q; want %q", code, errOut, want)
	}
}
