package notify

import (
	"fmt"
	"strconv"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
)

// Slack lines of holds, decisions and verifications (README
// "Notifications, holds and verification"): when a held rollback executes
// and how to stop it, who decided and why, and whether the rollback
// helped, check by check.

// stamp is t as the messages show it.
func stamp(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") }

// heldLines say when a held rollback executes, why it is held, and how to
// cancel (or approve) it: the signed links when the record has them, and
// the commands.
func heldLines(d audit.RollbackHeldDetail) []string {
	var lines []string
	switch d.Why {
	case "cooldown":
		line := fmt.Sprintf("*Not executed automatically*: in cooldown. Left to a person until *%s*, then kept (ask_default: %s)", stamp(d.ExecuteAt), esc(d.AskDefault))
		if e := d.Earlier; e != nil {
			line += fmt.Sprintf("\nEarlier automatic rollback: request %s, completed %s; cooldown until %s", esc(e.RequestID), stamp(e.CompletedAt), stamp(e.CooldownEnds))
		}
		lines = append(lines, line)
	case "ask":
		lines = append(lines, fmt.Sprintf("*Waits for an answer* until *%s*; without one, ask_default: *%s*", stamp(d.ExecuteAt), esc(d.AskDefault)))
	default:
		lines = append(lines, fmt.Sprintf("*Executes at %s* unless cancelled (rollback.hold: %s)", stamp(d.ExecuteAt), esc(d.Hold)))
	}
	lines = append(lines, fmt.Sprintf("Requested by %s: %s", esc(d.Source), esc(d.Reason)))
	var act string
	if d.CancelURL != "" {
		act = "<" + esc(d.CancelURL) + "|:octagonal_sign: Cancel this rollback>"
	}
	if d.ApproveURL != "" {
		if act != "" {
			act += " · "
		}
		act += "<" + esc(d.ApproveURL) + "|:ballot_box_with_check: Approve it now>"
	}
	if act != "" {
		lines = append(lines, act+" (links valid until "+stamp(d.ExecuteAt)+")")
	}
	cmds := "`" + esc(d.Cancel) + "`"
	if d.Ask && d.Approve != "" {
		cmds = "`" + esc(d.Approve) + "` or " + cmds
	}
	return append(lines, "Or: "+cmds)
}

// decisionLines say who decided on a held rollback, how and why.
func decisionLines(kind string, d audit.RollbackDecisionDetail) []string {
	verb := "Approved"
	if kind == audit.RollbackCancelled {
		verb = "Cancelled"
	}
	lines := []string{fmt.Sprintf("%s by *%s* (via %s): %s", verb, esc(d.By), esc(d.Via), esc(d.Reason))}
	if d.Via == "deadline" {
		lines[0] = fmt.Sprintf("Nobody answered: %s", esc(d.Reason))
	}
	return append(lines, fmt.Sprintf("Held (%s) since %s; it was to execute at %s", esc(d.Why), stamp(d.HeldAt), stamp(d.ExecuteAt)))
}

// verifyLines say what the checks measured after the rollback: each
// check's last value against its threshold. An unhelpful rollback says so
// first, loudly.
func verifyLines(kind string, d audit.VerifyDetail) []string {
	var lines []string
	within := (time.Duration(d.WithinSeconds * float64(time.Second))).String()
	if kind == audit.RollbackUnhelpful {
		what := "the checks that failed the run still fail"
		if d.Outcome == audit.VerifyUnverified {
			what = "no measurement could say that the checks recovered"
		}
		lines = append(lines, fmt.Sprintf(":rotating_light: *The rollback did not help*: %s %s after it. *The problem is elsewhere*: look beyond this deploy.", what, within))
	} else {
		lines = append(lines, "The checks that failed the run recovered within "+within+" of the rollback.")
	}
	if d.From != "" || d.To != "" {
		lines = append(lines, fmt.Sprintf("Rolled back %s → %s at %s", esc(d.From), esc(d.To), stamp(d.RolledBackAt)))
	}
	for _, c := range d.Checks {
		icon := ":white_check_mark:"
		if c.Outcome != "pass" {
			icon = ":x:"
		}
		value := "no value"
		if c.Value != nil {
			value = strconv.FormatFloat(*c.Value, 'g', 6, 64)
		}
		line := fmt.Sprintf("• %s *%s*: %s (threshold %s): %s", icon, esc(c.Check), value, esc(c.Threshold), esc(c.Outcome))
		if c.Reason != "" {
			line += ": " + esc(c.Reason)
		}
		n := c.Counts.Pass + c.Counts.Fail + c.Counts.Inconclusive + c.Counts.Error
		plural := "s"
		if n == 1 {
			plural = ""
		}
		lines = append(lines, line+fmt.Sprintf(" (%d measurement%s: %d pass, %d fail)", n, plural, c.Counts.Pass, c.Counts.Fail))
	}
	return lines
}
