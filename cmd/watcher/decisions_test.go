package main

import "testing"

// TestDecisionsConfigErrors: a token file of decisions: that is missing or
// short stops `watcher run` before anything starts, with one line naming
// the token and the file (never its content); `watcher check` reports a
// bad scope as file:line.
func TestDecisionsConfigErrors(t *testing.T) {
	testSecretConfigErrors(t, "decisions", []secretConfigCase{
		{"missing token file", "  tokens:\n    - {name: chatops, token_file: nowhere, services: [shop], environments: [production]}\n",
			"decisions.tokens chatops: token_file: open %DIR%/nowhere: no such file or directory"},
		{"short token", "  tokens:\n    - {name: chatops, token_file: short, services: [shop], environments: [production]}\n",
			"decisions.tokens chatops: token_file: %DIR%/short holds 7 characters, fewer than 16"},
	}, "  users:\n    - name: oncall\n      services: [\"shop-[\"]\n      environments: [production]\n",
		`:5: decisions.users[0].services[0]: "shop-[": syntax error in pattern`)
}
