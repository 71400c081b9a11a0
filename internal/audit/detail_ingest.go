package audit

// IngestRequest is the HTTP request that brought a refused deploy event
// (README "Send deploy events from your tool"). It never holds a token,
// a signature or any other header a sender authenticates with.
type IngestRequest struct {
	// Endpoint is the path posted to, such as /api/v1/events.
	Endpoint string `json:"endpoint"`
	// Remote is the client's address as the watcher saw it.
	Remote    string `json:"remote"`
	UserAgent string `json:"user_agent,omitempty"`
	// Sender is who the request authenticated as: a token's name,
	// "github" or "gitlab"; empty when it did not.
	Sender string `json:"sender,omitempty"`
	// Status is the HTTP status the request was answered with.
	Status int `json:"status"`
}
