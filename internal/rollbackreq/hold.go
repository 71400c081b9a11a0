package rollbackreq

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/rollback-watcher/watcher/internal/events"
)

// RequestsBucket records, per rollback request id, how far its execution
// got, and the hold of a held request. A request delivered again (its
// executor died mid-way, or it was published again) is executed at most
// once: a finished one is not touched again, and an unfinished one resumes
// after the steps already done. The executor writes it; Decide reads it to
// find a held request and to learn what became of a decision.
const RequestsBucket = "WATCHER_ROLLBACK_REQUESTS"

// Key is request id's key in RequestsBucket: a digest, since an id may
// hold characters a key may not.
func Key(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16])
}

// Progress is a request's entry in RequestsBucket.
type Progress struct {
	Steps   []string  `json:"steps"`
	Result  string    `json:"result,omitempty"`
	Replica string    `json:"replica,omitempty"`
	Updated time.Time `json:"updated"`
	// Hold is there for a request that was held (README "Notifications,
	// holds and verification").
	Hold *Hold `json:"hold,omitempty"`
}

// Has reports whether step is recorded as done.
func (p *Progress) Has(step string) bool {
	return p != nil && slices.Contains(p.Steps, step)
}

// States of a hold. A request is held until a decision or its execute_at
// moves it on, once: held -> approved -> executing, held -> executing, or
// held -> cancelled. The executor changes it only by compare-and-set on
// the entry's revision, so a decision and the deadline (or two replicas)
// never both win.
const (
	HoldHeld      = "held"
	HoldApproved  = "approved"
	HoldCancelled = "cancelled"
	HoldExecuting = "executing"
)

// Why a request is held.
const (
	WhyHold     = "hold"     // rollback.hold: executes at execute_at unless cancelled
	WhyAsk      = "ask"      // mode: ask, or on_marginal: ask: waits for an answer
	WhyCooldown = "cooldown" // an automatic rollback of the service completed within rollback.cooldown
)

// Hold is where a held request stands.
type Hold struct {
	State string `json:"state"`
	Why   string `json:"why"`
	// Since is when it was held; ExecuteAt when it executes unless
	// cancelled or, asking, when AskDefault applies. Wait is the policy's
	// rollback.hold it was held for.
	Since     time.Time     `json:"since"`
	ExecuteAt time.Time     `json:"execute_at"`
	Wait      time.Duration `json:"wait"`
	// Ask says it waits for an answer; AskDefault (keep or rollback) is
	// what happens without one.
	Ask        bool   `json:"ask,omitempty"`
	AskDefault string `json:"ask_default,omitempty"`
	// Earlier is the automatic rollback that a cooldown hold follows.
	Earlier *Earlier `json:"earlier,omitempty"`
	// Request is the request itself, to execute it on approval.
	Request events.RollbackRequest `json:"request"`
	// Announced says rollback.held is recorded (Round counts the holds of
	// the request, each announced once); Recorded says the same of the
	// decision's rollback.approved or rollback.cancelled.
	Announced bool `json:"announced,omitempty"`
	Round     int  `json:"round,omitempty"`
	Recorded  bool `json:"recorded,omitempty"`
	// Decision is the answer that moved it on, when one did.
	Decision *events.RollbackDecision `json:"decision,omitempty"`
	// Owner is the stream sequence of the ROLLBACKS message that
	// executes it: only that message (delivered again after a crash)
	// resumes the execution; any other copy of the request is dropped.
	Owner uint64 `json:"owner,omitempty"`
}

// Earlier names the automatic rollback that put a service and environment
// in cooldown.
type Earlier struct {
	RequestID    string    `json:"request_id"`
	CompletedAt  time.Time `json:"completed_at"`
	CooldownEnds time.Time `json:"cooldown_ends"`
}

// Describe says where h stands, for people: "held until 18:12:00Z",
// "cancelled by alice (cli) at 18:11:00Z: not us".
func (h *Hold) Describe() string {
	at := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	d := h.Decision
	switch {
	case h.State == HoldHeld && h.Ask:
		return fmt.Sprintf("waiting for an answer until %s (then ask_default: %s)", at(h.ExecuteAt), h.AskDefault)
	case h.State == HoldHeld:
		return "held until " + at(h.ExecuteAt)
	case d != nil && h.State == HoldCancelled:
		return fmt.Sprintf("cancelled by %s (%s) at %s: %s", d.By, d.Via, at(d.Time), d.Reason)
	case d != nil && h.State == HoldApproved:
		return fmt.Sprintf("approved by %s (%s) at %s; it executes now", d.By, d.Via, at(d.Time))
	case d != nil:
		return fmt.Sprintf("approved by %s (%s) at %s, and executed", d.By, d.Via, at(d.Time))
	default:
		return "executed at its execute_at " + at(h.ExecuteAt)
	}
}
