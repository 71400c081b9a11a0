package audit

import "time"

// RollbackHeldDetail is the detail of a rollback.held record: a rollback
// request announced before it executes (README "Notifications, holds and
// verification").
type RollbackHeldDetail struct {
	RequestID string `json:"request_id"`
	// Source and Reason are the request's.
	Source string `json:"source"`
	Reason string `json:"reason"`
	// Why it is held: hold (rollback.hold), ask (mode: ask or on_marginal:
	// ask) or cooldown (an automatic rollback of the same service and
	// environment completed within rollback.cooldown).
	Why string `json:"why"`
	// Hold is the policy's rollback.hold ("2m"; "0s" when it has none).
	Hold   string    `json:"hold"`
	HeldAt time.Time `json:"held_at"`
	// ExecuteAt is when the request executes unless cancelled first; when
	// Ask, when AskDefault applies if nobody answered.
	ExecuteAt  time.Time `json:"execute_at"`
	Ask        bool      `json:"ask"`
	AskDefault string    `json:"ask_default,omitempty"`
	// Cancel and Approve are the commands that decide it.
	Cancel  string `json:"cancel"`
	Approve string `json:"approve"`
	// CancelURL and ApproveURL are signed links that decide it without
	// other credentials until ExecuteAt, there when the watcher has
	// --web.external-url (ApproveURL only when Ask).
	CancelURL  string `json:"cancel_url,omitempty"`
	ApproveURL string `json:"approve_url,omitempty"`
	// Earlier is the rollback that a cooldown hold follows.
	Earlier *EarlierRollback `json:"earlier,omitempty"`
}

// EarlierRollback is the automatic rollback that put a service and
// environment in cooldown.
type EarlierRollback struct {
	RequestID    string    `json:"request_id"`
	CompletedAt  time.Time `json:"completed_at"`
	CooldownEnds time.Time `json:"cooldown_ends"`
}

// RollbackHeld is r's detail when r is a rollback.held record.
func (r Record) RollbackHeld() (RollbackHeldDetail, bool) {
	var d RollbackHeldDetail
	return d, r.decode(RollbackHeld, &d)
}

// RollbackDecisionDetail is the detail of a rollback.approved or
// rollback.cancelled record: who decided on a held request, how and why.
type RollbackDecisionDetail struct {
	RequestID  string `json:"request_id"`
	DecisionID string `json:"decision_id"`
	Action     string `json:"action"` // cancel | approve
	// By is who decided, as the sender said ("watcher" for a deadline);
	// Via is how: cli, http, link, or deadline (an unanswered ask ended
	// with its ask_default).
	By     string `json:"by"`
	Via    string `json:"via"`
	Reason string `json:"reason"`
	// Why, HeldAt and ExecuteAt are the hold's, as rollback.held said.
	Why       string    `json:"why"`
	HeldAt    time.Time `json:"held_at"`
	ExecuteAt time.Time `json:"execute_at"`
}

// RollbackDecision is r's detail when r is a rollback.approved or
// rollback.cancelled record.
func (r Record) RollbackDecision() (RollbackDecisionDetail, bool) {
	var d RollbackDecisionDetail
	if r.Kind == RollbackCancelled {
		return d, r.decode(RollbackCancelled, &d)
	}
	return d, r.decode(RollbackApproved, &d)
}
