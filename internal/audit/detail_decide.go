package audit

// DecisionRequest is an HTTP request to cancel or approve a held rollback
// (README "HTTP") that decided nothing: refused before it reached the
// executor, or naming a request that is not held. It is the HTTPDecision
// of an event.rejected record. It never holds a password or a link's
// signature.
type DecisionRequest struct {
	Action    string `json:"action"`
	RequestID string `json:"request_id,omitempty"`
	// Via is http (POST /api/v1/rollbacks/{id}/{action}) or link (a
	// signed link).
	Via string `json:"via"`
	// Method and Path are the request's, without the query (a link's
	// signature is in it).
	Method string `json:"method"`
	Path   string `json:"path"`
	// Remote is the client's address as the watcher saw it.
	Remote    string `json:"remote"`
	UserAgent string `json:"user_agent,omitempty"`
	// User is who the request authenticated as, if anyone: a basic-auth
	// user, or the name of a bearer token of decisions.tokens.
	User string `json:"user,omitempty"`
	// Status is the HTTP status it was answered with.
	Status int `json:"status"`
}
