package notify

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
)

// Slack incoming-webhook messages: a text (the notification's own line, and
// what clients show when blocks cannot be) and blocks with the record's
// numbers.

type slackMessage struct {
	Text   string       `json:"text"`
	Blocks []slackBlock `json:"blocks"`
}

type slackBlock struct {
	Type     string      `json:"type"`
	Text     *slackText  `json:"text,omitempty"`
	Fields   []slackText `json:"fields,omitempty"`
	Elements []slackText `json:"elements,omitempty"`
}

type slackText struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

func mrkdwn(s string) slackText { return slackText{Type: "mrkdwn", Text: clip(s, 3000)} }

// headlines says what a kind means to the people reading: an emoji and a
// few words.
var headlines = map[string]string{
	audit.RunFailed:         ":x: Deploy failed validation",
	audit.RunMarginal:       ":warning: Deploy marginal",
	audit.RunInconclusive:   ":grey_question: Validation inconclusive",
	audit.RunPassed:         ":white_check_mark: Deploy passed validation",
	audit.RunStarted:        ":mag: Validating a deploy",
	audit.RunSkipped:        ":fast_forward: Deploy not validated",
	audit.RunSuperseded:     ":fast_forward: Validation superseded",
	audit.Measurement:       ":straight_ruler: Measurement",
	audit.RollbackRequested: ":rewind: Rollback requested",
	audit.RollbackHost:      ":rewind: Host rolled back",
	audit.RollbackCompleted: ":rewind: Rollback completed",
	audit.RollbackFailed:    ":rotating_light: Rollback FAILED",
	audit.AlertReceived:     ":bell: Alert received",
	audit.EventRejected:     ":no_entry: Deploy event rejected",
	"rollback.held":         ":hourglass: Rollback held",
	"rollback.approved":     ":ballot_box_with_check: Rollback approved",
	"rollback.cancelled":    ":octagonal_sign: Rollback cancelled",
	"rollback.verified":     ":white_check_mark: Rollback helped",
	"rollback.unhelpful":    ":rotating_light: Rollback did NOT help: the problem is elsewhere",
}

// slackBody is rec as a Slack message. externalURL, when set, adds a link
// to the status page (to the run's card when the record has a run).
func slackBody(rec audit.Record, externalURL string) ([]byte, error) {
	head := headlines[rec.Kind]
	if head == "" {
		head = rec.Kind
	}
	where := rec.Service + " in " + rec.Environment
	if rec.Version != "" {
		where += ", version " + rec.Version
	}
	msg := slackMessage{Text: fmt.Sprintf("%s: %s: %s", head, where, rec.Message)}

	msg.Blocks = append(msg.Blocks, slackBlock{Type: "section",
		Text: ptr(mrkdwn("*" + esc(head) + "*: " + esc(where) + "\n" + esc(rec.Message)))})
	var fields []slackText
	for _, f := range []struct{ name, value string }{
		{"Service", rec.Service}, {"Environment", rec.Environment}, {"Version", rec.Version},
		{"Policy", rec.Policy}, {"Record", rec.Kind}, {"Run", rec.RunID}, {"Request", rec.RequestID},
	} {
		if f.value != "" {
			fields = append(fields, mrkdwn("*"+f.name+"*\n"+esc(f.value)))
		}
	}
	if len(fields) > 0 {
		msg.Blocks = append(msg.Blocks, slackBlock{Type: "section", Fields: fields})
	}
	if lines := detailLines(rec); len(lines) > 0 {
		msg.Blocks = append(msg.Blocks, slackBlock{Type: "section", Text: ptr(mrkdwn(strings.Join(lines, "\n")))})
	}
	if link := statusLink(externalURL, rec.RunID); link != "" {
		msg.Blocks = append(msg.Blocks, slackBlock{Type: "context",
			Elements: []slackText{mrkdwn("<" + link + "|Status page> · " + rec.Time.UTC().Format(time.RFC3339))}})
	}
	return json.Marshal(msg)
}

// maxHosts bounds the hosts listed: a fleet's rollback would exceed a
// block's 3000 characters.
const maxHosts = 20

// detailLines are the numbers behind a record, from its typed detail.
func detailLines(rec audit.Record) []string {
	var lines []string
	if d, ok := rec.Verdict(); ok {
		if d.Score != nil {
			lines = append(lines, fmt.Sprintf("Score *%.1f* (pass %.0f, marginal %.0f)", d.Score.Score, d.Score.Pass, d.Score.Marginal))
		}
		for _, c := range d.Checks {
			line := fmt.Sprintf("• *%s*: %d failed of limit %d", esc(c.Check), c.Counts.Fail, c.Limits.FailureLimit)
			if r := c.LastReason(); r != "" {
				line += ": " + esc(r)
			}
			lines = append(lines, line)
		}
		return lines
	}
	if d, ok := rec.Measurement(); ok {
		line := fmt.Sprintf("• *%s*: %s", esc(d.Check), esc(d.Outcome))
		if d.Reason != "" {
			line += ": " + esc(d.Reason)
		}
		return append(lines, line)
	}
	if d, ok := rec.RollbackRequested(); ok {
		if d.Reason != "" {
			lines = append(lines, "Reason: "+esc(d.Reason))
		}
		if why := d.NotExecuted(rec.Policy); why != "" {
			lines = append(lines, "Not executed: "+esc(why))
		}
		return lines
	}
	if d, ok := rec.RollbackResult(); ok {
		if d.From != "" || d.To != "" {
			lines = append(lines, fmt.Sprintf("%s → %s", esc(d.From), esc(d.To)))
		}
		if d.Error != "" {
			lines = append(lines, "Error: "+esc(d.Error))
		}
		for i, h := range d.Hosts {
			if i == maxHosts {
				lines = append(lines, fmt.Sprintf("… and %d more hosts", len(d.Hosts)-maxHosts))
				break
			}
			lines = append(lines, hostLine(h))
		}
		return lines
	}
	if d, ok := rec.RollbackHeld(); ok {
		return heldLines(d)
	}
	if d, ok := rec.RollbackDecision(); ok {
		return decisionLines(rec.Kind, d)
	}
	if d, ok := rec.Verification(); ok {
		return verifyLines(rec.Kind, d)
	}
	return nil
}

func hostLine(h audit.HostOutcome) string {
	name := h.Host
	if name == "" {
		name = "local"
	}
	if h.Error != "" {
		return fmt.Sprintf("• :x: *%s*: %s", esc(name), esc(h.Error))
	}
	state := "already on " + h.To
	if h.Switched {
		state = h.From + " → " + h.To
	}
	return fmt.Sprintf("• :white_check_mark: *%s*: %s (%s)", esc(name), esc(state), h.Duration.Round(time.Millisecond))
}

// statusLink is the status page under externalURL, at the run's card.
func statusLink(externalURL, runID string) string {
	if externalURL == "" {
		return ""
	}
	link := strings.TrimSuffix(externalURL, "/") + "/"
	if runID != "" {
		link += "#" + url.PathEscape("run-"+runID)
	}
	return link
}

// esc escapes what Slack's mrkdwn treats as markup delimiters of links and
// mentions.
func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n-3], "") + "..."
}

func ptr[T any](v T) *T { return &v }
