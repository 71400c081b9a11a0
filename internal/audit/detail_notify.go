package audit

// NotifyFailedDetail is the detail of a notify.failed record: a
// notification of another record that every attempt failed to deliver. It
// names the target, never its URL (a credential).
type NotifyFailedDetail struct {
	Target     string `json:"target"`
	TargetKind string `json:"target_kind"`
	// RecordKind is the kind of the record that was not delivered, and
	// Delivery its X-Watcher-Delivery id.
	RecordKind string `json:"record_kind"`
	Delivery   string `json:"delivery"`
	RunID      string `json:"run_id,omitempty"`
	RequestID  string `json:"request_id,omitempty"`
	Attempts   int    `json:"attempts"`
	LastError  string `json:"last_error"`
}

// NotifyFailed is r's detail when r is a notify.failed record.
func (r Record) NotifyFailed() (NotifyFailedDetail, bool) {
	var d NotifyFailedDetail
	return d, r.decode(NotifyFailed, &d)
}
