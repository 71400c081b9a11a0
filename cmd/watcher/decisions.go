package main

import (
	"fmt"

	"github.com/rollback-watcher/watcher/internal/config"
	"github.com/rollback-watcher/watcher/internal/web"
)

// decisionCredentials reads the token files of `decisions:` (README
// "Who may decide on what") before anything starts, as
// ingestCredentials does for `ingest:`. Without the section it is nil:
// every basic-auth user decides on every service. No error shows a token.
func decisionCredentials(cfg *config.Decisions) (*web.DecisionCredentials, error) {
	if cfg == nil {
		return nil, nil
	}
	var c web.DecisionCallers
	for _, u := range cfg.Users {
		c.Users = append(c.Users, web.DecisionUser{Name: u.Name, Services: u.Services, Environments: u.Environments})
	}
	for _, t := range cfg.Tokens {
		secret, err := config.ReadSecret(t.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("decisions.tokens %s: token_file: %w", t.Name, err)
		}
		c.Tokens = append(c.Tokens, web.ScopedSecret{Name: t.Name, Secret: secret, Services: t.Services, Environments: t.Environments})
	}
	return web.NewDecisionCredentials(c)
}
