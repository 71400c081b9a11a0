package web

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
)

// IngestSenders are the senders of `ingest:`: bearer tokens, GitHub's
// webhook secret and GitLab's webhook token.
type IngestSenders struct {
	Tokens         []ScopedSecret
	GitHub, GitLab *ScopedSecret
}

// IngestCredentials are the senders' secrets and scopes as the endpoints
// check them. None is ever printed: String and LogValue say only who is
// configured.
type IngestCredentials struct {
	tokens bearerTokens
	github *hookSecret
	gitlab *hookSecret
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
	tokens, err := newBearerTokens("ingest.tokens", s.Tokens)
	if err != nil {
		return nil, err
	}
	c := &IngestCredentials{tokens: tokens}
	hook := func(h *ScopedSecret, what string) (*hookSecret, error) {
		if h == nil {
			return nil, nil
		}
		if h.Secret == "" {
			return nil, fmt.Errorf("ingest.%s: the secret is empty", what)
		}
		return &hookSecret{secret: []byte(h.Secret), sum: sha256.Sum256([]byte(h.Secret)), scope: scope{h.Services, h.Environments}}, nil
	}
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
	for _, name := range c.tokens.names() {
		parts = append(parts, "token "+name)
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

// bearer finds the token of ingest.tokens an Authorization header
// presents; why says what is wrong, without the token.
func (c *IngestCredentials) bearer(authorization string) (t *bearerToken, why string) {
	return c.tokens.find(authorization, "ingest.tokens")
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
