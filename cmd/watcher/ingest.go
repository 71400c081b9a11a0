package main

import (
	"fmt"

	"github.com/rollback-watcher/watcher/internal/config"
	"github.com/rollback-watcher/watcher/internal/web"
)

// ingestCredentials reads the secret files of `ingest:` (README "Send
// deploy events from your tool") before anything starts: a missing or
// empty file is a bad configuration. No error shows a secret.
func ingestCredentials(cfg config.Ingest) (*web.IngestCredentials, error) {
	var s web.IngestSenders
	for _, t := range cfg.Tokens {
		secret, err := config.ReadSecret(t.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("ingest.tokens %s: token_file: %w", t.Name, err)
		}
		s.Tokens = append(s.Tokens, web.ScopedSecret{Name: t.Name, Secret: secret, Services: t.Services, Environments: t.Environments})
	}
	if g := cfg.GitHub; g != nil {
		secret, err := config.ReadSecret(g.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("ingest.github: secret_file: %w", err)
		}
		s.GitHub = &web.ScopedSecret{Name: "github", Secret: secret, Services: g.Services, Environments: g.Environments}
	}
	if g := cfg.GitLab; g != nil {
		secret, err := config.ReadSecret(g.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("ingest.gitlab: token_file: %w", err)
		}
		s.GitLab = &web.ScopedSecret{Name: "gitlab", Secret: secret, Services: g.Services, Environments: g.Environments}
	}
	return web.NewIngestCredentials(s)
}
