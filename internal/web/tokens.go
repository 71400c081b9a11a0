package web

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"path"
	"strings"
)

// Bearer tokens scoped to services and environments, as `ingest.tokens`
// (README "Send deploy events from your tool") and `decisions.tokens`
// (README "Who may decide on what") name them in --config.file.

// ScopedSecret is a named secret read from its file (a bearer token,
// GitHub's webhook secret or GitLab's webhook token) and what its holder
// may act on: path.Match globs of services and environments.
type ScopedSecret struct {
	Name                   string
	Secret                 string
	Services, Environments []string
}

// scope is what a caller may act on.
type scope struct {
	services, environments []string
}

func (s scope) allows(service, environment string) bool {
	return anyGlob(s.services, service) && anyGlob(s.environments, environment)
}

// String says the scope as README and the refusals write it.
func (s scope) String() string {
	return fmt.Sprintf("services %q, environments %q", s.services, s.environments)
}

func anyGlob(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok || p == name {
			return true
		}
	}
	return false
}

// bearerToken is one configured token. Only the token's SHA-256 is kept:
// comparing hashes of equal length takes the same time whatever the
// presented token's length, so timing tells a client nothing.
type bearerToken struct {
	name  string
	sum   [sha256.Size]byte
	scope scope
}

// bearerTokens are the tokens of one section of --config.file.
type bearerTokens []bearerToken

// newBearerTokens keeps the tokens of section ("ingest.tokens"). Two
// tokens holding one secret are an error: the audit would name the wrong
// holder. No error holds a secret.
func newBearerTokens(section string, in []ScopedSecret) (bearerTokens, error) {
	var ts bearerTokens
	seen := map[[sha256.Size]byte]string{}
	for _, t := range in {
		if t.Secret == "" {
			return nil, fmt.Errorf("%s %s: the token is empty", section, t.Name)
		}
		b := bearerToken{name: t.Name, sum: sha256.Sum256([]byte(t.Secret)), scope: scope{t.Services, t.Environments}}
		if other, ok := seen[b.sum]; ok {
			return nil, fmt.Errorf("%s %s holds the same token as %s: give each its own, so that the audit can say who sent what", section, t.Name, other)
		}
		seen[b.sum] = t.Name
		ts = append(ts, b)
	}
	return ts, nil
}

// find is the token an Authorization header presents, of those of
// section. Every token is compared, so the time taken does not say which
// one, if any, was near. why says what is wrong, without the token.
func (ts bearerTokens) find(authorization, section string) (t *bearerToken, why string) {
	if authorization == "" {
		return nil, fmt.Sprintf("no Authorization header: send \"Authorization: Bearer <token>\" with a token from %s in the watcher's --config.file", section)
	}
	scheme, token, _ := strings.Cut(authorization, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return nil, fmt.Sprintf("the Authorization header uses scheme %.20q: send \"Authorization: Bearer <token>\"", scheme)
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	for i := range ts {
		if subtle.ConstantTimeCompare(sum[:], ts[i].sum[:]) == 1 {
			t = &ts[i]
		}
	}
	if t == nil {
		return nil, fmt.Sprintf("the bearer token is not one of %s in the watcher's --config.file", section)
	}
	return t, ""
}

func (ts bearerTokens) names() []string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.name
	}
	return names
}
