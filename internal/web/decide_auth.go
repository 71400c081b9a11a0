package web

import (
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// Who may decide over POST /api/v1/rollbacks/{id}/{action}, on what
// (README "Who may decide on what"). Without `decisions:` in --config.file
// every basic-auth user of --web.config.file decides on every service, so
// that set-ups without the section keep working. With it, a caller decides
// only when it authenticated (a basic-auth user, or a bearer token of
// decisions.tokens) and is listed there with a scope that matches the held
// request's service and environment: the HTTP twin of the NATS subject
// permissions that scope `watcher cancel` and `watcher approve`. The signed
// links are not scoped: each is the credential for one request and action.

// DecisionUser is one of `decisions.users`: a basic-auth user of
// --web.config.file and the path.Match globs of what it may decide on.
type DecisionUser struct {
	Name                   string
	Services, Environments []string
}

// DecisionCallers are the callers of `decisions:`.
type DecisionCallers struct {
	Users  []DecisionUser
	Tokens []ScopedSecret
}

// DecisionCredentials are the callers' scopes and the tokens' hashes, as
// the API checks them. No token is ever printed: String and LogValue say
// only who is configured.
type DecisionCredentials struct {
	users  map[string]scope
	tokens bearerTokens
}

// NewDecisionCredentials keeps the callers of `decisions:`. A name that
// is both a user and a token is an error: the audit could not say which
// decided. No error holds a token.
func NewDecisionCredentials(c DecisionCallers) (*DecisionCredentials, error) {
	tokens, err := newBearerTokens("decisions.tokens", c.Tokens)
	if err != nil {
		return nil, err
	}
	dc := &DecisionCredentials{users: map[string]scope{}, tokens: tokens}
	for _, u := range c.Users {
		if _, ok := dc.users[u.Name]; ok {
			return nil, fmt.Errorf("decisions.users %s is listed twice: give each user one scope", u.Name)
		}
		dc.users[u.Name] = scope{u.Services, u.Environments}
	}
	for _, name := range tokens.names() {
		if _, ok := dc.users[name]; ok {
			return nil, fmt.Errorf("decisions: %s is both a user and a token: the audit could not tell them apart", name)
		}
	}
	return dc, nil
}

// String says who may decide, never a token.
func (c *DecisionCredentials) String() string {
	if c == nil {
		return "every basic-auth user, every service"
	}
	var parts []string
	for _, name := range c.userNames() {
		parts = append(parts, "user "+name)
	}
	for _, name := range c.tokens.names() {
		parts = append(parts, "token "+name)
	}
	if len(parts) == 0 {
		return "nobody"
	}
	return strings.Join(parts, ", ")
}

// LogValue keeps the tokens out of logs.
func (c *DecisionCredentials) LogValue() slog.Value { return slog.StringValue(c.String()) }

func (c *DecisionCredentials) userNames() []string {
	names := make([]string, 0, len(c.users))
	for name := range c.users {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Warnings say which callers of `decisions:` can never authenticate with
// --web.config.file as it is now: a listed user that is not one of its
// basic_auth_users. Tokens authenticate with or without those users: a
// request with a bearer token skips basic auth (basicauth.go).
func (d *Decisions) Warnings() []string {
	c := d.Credentials
	if c == nil {
		return nil
	}
	users, err := basicAuthUsers(d.WebConfigFile)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, name := range c.userNames() {
		if _, ok := users[name]; !ok {
			out = append(out, fmt.Sprintf("decisions.users %s is not one of basic_auth_users in --web.config.file: it cannot authenticate, so it decides nothing", name))
		}
	}
	return out
}

// caller is who a request to the API authenticated as.
type caller struct {
	// kind is "user" (basic auth) or "token"; name is the user's or the
	// token's, who decides in the audit.
	kind, name string
	// scope is what it may decide on; nil is everything (no decisions:).
	scope *scope
}

func (c *caller) String() string { return c.kind + " " + c.name }

// mayNot says why the caller may not decide on service in environment,
// "" when it may.
func (c *caller) mayNot(service, environment string) string {
	if c.scope == nil || c.scope.allows(service, environment) {
		return ""
	}
	return fmt.Sprintf("%s may not decide on service %s in environment %s: its scope in decisions: is %s", c, service, environment, c.scope)
}

// authenticate finds who the request comes from. It answers and records
// any request it refuses (refuse), and then returns nil.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, c *decisionCall, refuse func(status int, field, why string)) *caller {
	d := s.Decisions
	creds := d.Credentials
	users, err := basicAuthUsers(d.WebConfigFile)
	if err != nil {
		refuse(http.StatusServiceUnavailable, "web_config", err.Error())
		return nil
	}
	var tokens bearerTokens
	if creds != nil {
		tokens = creds.tokens
	}
	if len(users) == 0 && len(tokens) == 0 {
		how := "list them under basic_auth_users in --web.config.file"
		if creds != nil {
			how += " and decisions.users in --config.file, or tokens under decisions.tokens"
		}
		refuse(http.StatusForbidden, "authorization", fmt.Sprintf(
			"%s %s takes authenticated callers only, and this watcher has none: %s "+
				"(or decide with `watcher %s --request=ID --reason=TEXT` over NATS, or the signed link of rollback.held)",
			r.Method, apiPattern(c.action), how, c.action))
		return nil
	}
	authorization := r.Header.Get("Authorization")
	scheme, _, _ := strings.Cut(authorization, " ")
	if len(tokens) > 0 && (len(users) == 0 || strings.EqualFold(scheme, "Bearer")) {
		t, why := tokens.find(authorization, "decisions.tokens")
		if t == nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="rollback-watcher"`)
			refuse(http.StatusUnauthorized, "authorization", why)
			return nil
		}
		c.user = t.name
		return &caller{kind: "token", name: t.name, scope: &t.scope}
	}
	// The basic-auth middleware (basicauth.go) has checked the password
	// before this handler ran. Checked again against the file as read
	// now: the middleware reads it at each request too, and a request
	// that came in while the file had no users must not pass once it has
	// some.
	user, pass, ok := r.BasicAuth()
	if hash, known := users[user]; !ok || !known || bcrypt.CompareHashAndPassword([]byte(hash), []byte(pass)) != nil {
		w.Header().Set("WWW-Authenticate", `Basic realm="rollback watcher"`)
		refuse(http.StatusUnauthorized, "authorization", "a user of --web.config.file's basic_auth_users and their password are required")
		return nil
	}
	c.user = user
	if creds == nil {
		return &caller{kind: "user", name: user}
	}
	sc, listed := creds.users[user]
	if !listed {
		refuse(http.StatusForbidden, "scope", fmt.Sprintf(
			"user %s may decide on nothing over the HTTP API: it is not listed under decisions.users in the watcher's --config.file "+
				"(or decide with `watcher %s --request=ID --reason=TEXT` over NATS, or the signed link of rollback.held)", user, c.action))
		return nil
	}
	return &caller{kind: "user", name: user, scope: &sc}
}
