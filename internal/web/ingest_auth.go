package web

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"log/slog"
	"path"
	"strings"
)

// IngestSender is one sender of `ingest:` (README "Send deploy events from
// your tool") with its secret read from its file: a bearer token, GitHub's
// webhook secret or GitLab's webhook token. Services and Environments are
// path.Match globs of what it may deploy.
type IngestSender struct {
	Name                   string
	Secret                 string
	Services, Environments []string
}

// IngestSenders are the senders of `ingest:`.
type IngestSenders struct {
	Tokens         []IngestSender
	GitHub, GitLab *IngestSender
}

// IngestCredentials are the senders' secrets and scopes as the endpoints
// check them. None is ever printed: String and LogValue say only who is
// configured.
type IngestCredentials struct {
	tokens []bearerToken
	github *hookSecret
	gitlab *hookSecret
}

// scope is what a sender may deploy.
type scope struct {
	services, environments []string
}

func (s scope) allows(service, environment string) bool {
	return anyGlob(s.services, service) && anyGlob(s.environments, environment)
}

func anyGlob(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok || p == name {
			return true
		}
	}
	return false
}

// bearerToken is one of ingest.tokens. Only the token's SHA-256 is kept:
// comparing hashes of equal length takes the same time whatever the
// presented token's length, so timing tells a client nothing.
type bearerToken struct {
	name  string
	sum   [sha256.Size]byte
	scope scope
}

// hookSecret is a provider's webhook secret: GitHub's HMAC key, or the
// token GitLab sends as it is (compared by hash, as a bearer token).
type hookSecret struct {
	secret []byte
	sum    [sha256.Size]byte
	scope  scope
}

// NewIngestCredentials keeps the senders' secrets for the endpoints. Two
// senders sharing one secret are an error: the audit would name the
// wrong one. No error holds a secret.
func NewIngestCredentials(s IngestSenders) (*IngestCredentials, error) {
	c := &IngestCredentials{}
	seen := map[[sha256.Size]byte]string{}
	for _, t := range s.Tokens {
		if t.Secret == "" {
			return nil, fmt.Errorf("ingest.tokens %s: the token is empty", t.Name)
		}
		b := bearerToken{name: t.Name, sum: sha256.Sum256([]byte(t.Secret)), scope: scope{t.Services, t.Environments}}
		if other, ok := seen[b.sum]; ok {
			return nil, fmt.Errorf("ingest.tokens %s holds the same token as %s: give each sender its own, so that the audit can say who sent what", t.Name, other)
		}
		seen[b.sum] = t.Name
		c.tokens = append(c.tokens, b)
	}
	hook := func(h *IngestSender, what string) (*hookSecret, error) {
		if h == nil {
			return nil, nil
		}
		if h.Secret == "" {
			return nil, fmt.Errorf("ingest.%s: the secret is empty", what)
		}
		return &hookSecret{secret: []byte(h.Secret), sum: sha256.Sum256([]byte(h.Secret)), scope: scope{h.Services, h.Environments}}, nil
	}
	var err error
	if c.github, err = hook(s.GitHub, "github"); err != nil {
		return nil, err
	}
	if c.gitlab, err = hook(s.GitLab, "gitlab"); err != nil {
		return nil, err
	}
	return c, nil
}

// String says which senders are configured, never their secrets.
func (c *IngestCredentials) String() string {
	if c == nil {
		return "none"
	}
	var parts []string
	for _, t := range c.tokens {
		parts = append(parts, "token "+t.name)
	}
	if c.github != nil {
		parts = append(parts, "github")
	}
	if c.gitlab != nil {
		parts = append(parts, "gitlab")
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// LogValue keeps the secrets out of logs.
func (c *IngestCredentials) LogValue() slog.Value { return slog.StringValue(c.String()) }

// bearer finds the token an Authorization header presents. Every
// configured token is compared, so the time taken does not say which
// one, if any, was near. why says what is wrong, without the token.
func (c *IngestCredentials) bearer(authorization string) (t *bearerToken, why string) {
	if authorization == "" {
		return nil, "no Authorization header: send \"Authorization: Bearer <token>\" with a token from ingest.tokens in the watcher's --config.file"
	}
	scheme, token, _ := strings.Cut(authorization, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return nil, fmt.Sprintf("the Authorization header uses scheme %.20q: send \"Authorization: Bearer <token>\"", scheme)
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	for i := range c.tokens {
		if subtle.ConstantTimeCompare(sum[:], c.tokens[i].sum[:]) == 1 {
			t = &c.tokens[i]
		}
	}
	if t == nil {
		return nil, "the bearer token is not one of ingest.tokens in the watcher's --config.file"
	}
	return t, ""
}

// githubSignature checks X-Hub-Signature-256, "sha256=" and the hex
// HMAC-SHA256 of the raw body keyed with the webhook's secret. why says
// what is wrong.
func (h *hookSecret) githubSignature(header string, body []byte) (why string) {
	if header == "" {
		return "no X-Hub-Signature-256 header: give the GitHub webhook a secret, the content of ingest.github.secret_file"
	}
	hexSum, ok := strings.CutPrefix(header, "sha256=")
	got, err := hex.DecodeString(hexSum)
	if !ok || err != nil {
		return "X-Hub-Signature-256 is not \"sha256=\" and a hex HMAC"
	}
	mac := hmac.New(sha256.New, h.secret)
	mac.Write(body)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return "X-Hub-Signature-256 does not match the body: the GitHub webhook's secret is not the one in ingest.github.secret_file, or the body was changed on the way"
	}
	return ""
}

// gitlabToken checks X-Gitlab-Token against the configured token, by
// hash as bearer does. why says what is wrong.
func (h *hookSecret) gitlabToken(header string) (why string) {
	if header == "" {
		return "no X-Gitlab-Token header: give the GitLab webhook a secret token, the content of ingest.gitlab.token_file"
	}
	sum := sha256.Sum256([]byte(header))
	if subtle.ConstantTimeCompare(sum[:], h.sum[:]) != 1 {
		return "X-Gitlab-Token is not the token in ingest.gitlab.token_file"
	}
	return ""
}
