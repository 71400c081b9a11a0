package web

import (
	"crypto/sha256"
	"net/http"
	"path"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"

	"github.com/rollback-watcher/watcher/internal/events"
)

// Basic auth in front of the routes, as exporter-toolkit did it for the
// whole server (README "HTTP"): bcrypt, a fixed hash for unknown users so
// that timing does not tell which users exist, a cache of results so that
// a scraper does not pay bcrypt at each request, `WWW-Authenticate: Basic`,
// and the users re-read from --web.config.file at each request. Left out
// are the routes that authenticate a request by a credential of their own
// and refuse, audit and count it themselves: a deploy tool or a chat bot
// often cannot send basic auth and a bearer token at once, and a link in
// a chat message carries no password.

// selfAuthenticated are the mux patterns whose handlers check a credential
// of their own.
var selfAuthenticated = map[string]bool{
	"POST /api/v1/events":       true, // ingest.tokens
	"POST /api/v1/hooks/github": true, // X-Hub-Signature-256
	"POST /api/v1/hooks/gitlab": true, // X-Gitlab-Token
}

func init() {
	for _, action := range []string{events.ActionCancel, events.ActionApprove} {
		// The signed links: the link is the credential.
		selfAuthenticated["GET /rollbacks/{id}/"+action] = true
		selfAuthenticated["POST /rollbacks/{id}/"+action] = true
	}
}

// bearerOnly are the patterns that check a bearer token of their own
// (decisions.tokens) and otherwise take basic-auth users: a request with
// a bearer token skips basic auth, any other still needs it.
var bearerOnly = map[string]bool{
	"POST " + apiPattern(events.ActionCancel):  true,
	"POST " + apiPattern(events.ActionApprove): true,
}

// fakeHash is compared for an unknown user, as the toolkit does: bcrypt of
// "fakepassword", at the cost of a real one.
const fakeHash = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"

// authCacheSize bounds the cached results, as the toolkit's cache does.
const authCacheSize = 100

// basicAuth asks for a user of cfg's basic_auth_users before mux serves a
// request, unless mux would route it to a self-authenticated pattern.
type basicAuth struct {
	cfg    *WebConfig
	mux    *http.ServeMux
	server *Server

	// bcryptMu runs one bcrypt at a time: it is CPU-heavy by design, and
	// a flood of wrong passwords must not take every core.
	bcryptMu sync.Mutex
	mu       sync.Mutex
	// cache maps a digest of user, hash and password to the result, so
	// that no password is kept as it came.
	cache map[[sha256.Size]byte]bool
}

func (s *Server) withBasicAuth(mux *http.ServeMux) http.Handler {
	if s.WebConfig == nil {
		return mux
	}
	return &basicAuth{cfg: s.WebConfig, mux: mux, server: s, cache: map[[sha256.Size]byte]bool{}}
}

func (b *basicAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	users, err := b.cfg.Users()
	if err != nil {
		// The toolkit answered 500 to every request then; so does this,
		// with the reason in the log only (the file holds hashes).
		if l := b.server.Logger; l != nil {
			l.Error("--web.config.file cannot be read: every request is refused until it is fixed", "err", err)
		}
		http.Error(w, "Internal Server Error: the watcher cannot read its --web.config.file (see its log)", http.StatusInternalServerError)
		return
	}
	if len(users) == 0 || exempt(b.mux, r) || b.allowed(users, r) {
		b.mux.ServeHTTP(w, r)
		return
	}
	w.Header().Set("WWW-Authenticate", "Basic")
	http.Error(w, http.StatusText(http.StatusUnauthorized), http.StatusUnauthorized)
}

// exempt reports whether mux would serve r with a self-authenticated
// route. It asks the mux which pattern r matches rather than looking at
// the path, and takes only a path that the mux serves as it is: for a
// path such as /api/v1/events/../metrics the mux answers with a redirect
// to the cleaned path (and names that path's pattern), which then comes
// back here as a request of its own.
func exempt(mux *http.ServeMux, r *http.Request) bool {
	p := r.URL.EscapedPath()
	if r.Method == http.MethodConnect || p != path.Clean(p) {
		return false
	}
	_, pattern := mux.Handler(r)
	if selfAuthenticated[pattern] {
		return true
	}
	scheme, _, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	return bearerOnly[pattern] && strings.EqualFold(scheme, "Bearer")
}

// allowed checks r's basic auth against users.
func (b *basicAuth) allowed(users map[string]string, r *http.Request) bool {
	user, pass, ok := r.BasicAuth()
	if !ok {
		return false
	}
	hash, known := users[user]
	if !known {
		hash = fakeHash
	}
	key := sha256.Sum256([]byte(strings.Join([]string{user, hash, pass}, "\x00")))
	b.mu.Lock()
	result, cached := b.cache[key]
	b.mu.Unlock()
	if !cached {
		b.bcryptMu.Lock()
		err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(pass))
		b.bcryptMu.Unlock()
		result = known && err == nil
		b.mu.Lock()
		if len(b.cache) >= authCacheSize {
			// Drop about a tenth, in map order (which Go randomises).
			n := 0
			for k := range b.cache {
				delete(b.cache, k)
				if n++; n > authCacheSize/10 {
					break
				}
			}
		}
		b.cache[key] = result
		b.mu.Unlock()
	}
	return result && known
}
