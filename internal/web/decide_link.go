package web

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"html/template"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/links"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

// The signed links of rollback.held (see decide.go). A GET shows the
// request and a form; only the form's POST, to the same link, decides.

// linkPageData is what the link's page shows. Every string is plain text
// that html/template escapes.
type linkPageData struct {
	Title, Badge, Class string
	Message             string
	Facts               []fact
	// Form, when set, is the form that decides; Error says what was wrong
	// with the last one sent, whose values are kept.
	Form *linkForm
	Hint string
}

type fact struct{ Name, Value string }

type linkForm struct {
	Button, Reason, By, Error string
	MaxReason, MaxBy          int
}

// linkPage is GET on a link: it shows what the link decides, and changes
// nothing.
func (s *Server) linkPage(w http.ResponseWriter, r *http.Request, c *decisionCall) {
	if !s.checkLink(w, r, c) {
		return
	}
	h, ok := s.heldFor(w, r, c)
	if !ok {
		return
	}
	s.renderLink(w, http.StatusOK, heldPage(h, c.action, &linkForm{}, s.clock()))
}

// linkDecide is POST on a link: the form's answer.
func (s *Server) linkDecide(w http.ResponseWriter, r *http.Request, c *decisionCall) {
	d := s.Decisions
	if !s.checkLink(w, r, c) {
		return
	}
	h, ok := s.heldFor(w, r, c)
	if !ok {
		return
	}
	form := &linkForm{}
	refuse := func(status int, field, why string) {
		s.refuse(quietWriter{}, r, status, d.refusal(c, status, field), why)
		form.Error = why
		s.renderLink(w, status, heldPage(h, c.action, form, s.clock()))
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		refuse(http.StatusUnsupportedMediaType, "content_type", fmt.Sprintf(
			"send the page's form (application/x-www-form-urlencoded), not %.100q", r.Header.Get("Content-Type")))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxDecisionBody)
	if err := r.ParseForm(); err != nil {
		refuse(http.StatusBadRequest, "body", fmt.Sprintf("the form could not be read (at most %d bytes): %v", maxDecisionBody, err))
		return
	}
	form.Reason, form.By = strings.TrimSpace(r.PostForm.Get("reason")), strings.TrimSpace(r.PostForm.Get("by"))
	if form.By == "" {
		refuse(http.StatusBadRequest, "by", "say who you are: your name goes into the audit with the reason")
		return
	}
	dd := events.RollbackDecision{Action: c.action, RequestID: h.Request.ID, Reason: form.Reason, By: form.By, Via: events.ViaLink}
	if field, err := checkDecision(dd); err != nil {
		refuse(http.StatusBadRequest, field, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), d.timeout())
	defer cancel()
	got, err := rollbackreq.Decide(ctx, d.JS, dd)
	if got != nil {
		c.hold = got
	}
	if status, field := decideStatus(err); err != nil {
		s.decideFailed(r, c, status, field, err)
		p := &linkPageData{Title: "Not decided", Badge: http.StatusText(status), Class: "bad", Message: err.Error(),
			Facts: holdFacts(c.hold, s.clock()), Hint: historyHint(c.hold)}
		if status == http.StatusGatewayTimeout {
			p.Title, p.Class = "Sent, not applied yet", "warn"
		}
		s.renderLink(w, status, p)
		return
	}
	d.requests.WithLabelValues(c.via, decisionDecided).Inc()
	d.Logger.Info("held rollback decided by its link", "request", dd.RequestID, "action", c.action, "by", dd.By)
	req := got.Request
	p := &linkPageData{Badge: got.State, Facts: holdFacts(got, s.clock()), Hint: historyHint(got)}
	if c.action == events.ActionCancel {
		p.Title, p.Class = "Rollback cancelled", "ok"
		p.Message = fmt.Sprintf("The rollback of %s in %s will not execute: version %s stays. Recorded as rollback.cancelled by %s (link): %s",
			req.Service, req.Environment, req.Version, dd.By, dd.Reason)
	} else {
		p.Title, p.Class = "Rollback approved", "warn"
		p.Message = fmt.Sprintf("The rollback of %s in %s from version %s executes now. Recorded as rollback.approved by %s (link): %s",
			req.Service, req.Environment, req.Version, dd.By, dd.Reason)
	}
	s.renderLink(w, http.StatusOK, p)
}

// checkLink verifies the link's signature and expiry. A link that does not
// verify gets a page saying so, and its refusal is recorded.
func (s *Server) checkLink(w http.ResponseWriter, r *http.Request, c *decisionCall) bool {
	d := s.Decisions
	q := r.URL.Query()
	_, err := d.Links.Verify(r.PathValue("id"), c.action, q.Get(links.ParamExpires), q.Get(links.ParamSignature), s.clock())
	switch {
	case err == nil:
		return true
	case errors.Is(err, links.ErrExpired):
		// Say what became of the request, if it can be read.
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		h, lerr := rollbackreq.Lookup(ctx, d.JS, r.PathValue("id"))
		c.hold = h
		msg := "This link " + strings.TrimPrefix(err.Error(), "link ") + ", when the request's hold ended"
		switch {
		case h != nil && h.State != rollbackreq.HoldHeld:
			msg += ": the rollback was " + h.Describe()
		case h != nil:
			msg += "; the rollback is " + h.Describe() + " (it was held again: the new rollback.held has a new link)"
		case lerr != nil && !errors.Is(lerr, rollbackreq.ErrUnknownRequest):
			msg += "; what became of it could not be read: " + lerr.Error()
		}
		s.refuseLink(r, c, http.StatusGone, "expires", err.Error())
		s.renderLink(w, http.StatusGone, &linkPageData{Title: "Link expired", Badge: "expired", Class: "muted", Message: msg,
			Facts: holdFacts(h, s.clock()), Hint: historyHint(h)})
	default:
		s.refuseLink(r, c, http.StatusForbidden, "signature", "link signature does not match")
		s.renderLink(w, http.StatusForbidden, &linkPageData{Title: "Link not valid", Badge: "refused", Class: "bad",
			Message: "This link's signature does not match: it was altered, cut short when it was copied, or signed by another watcher. " +
				"Open the link from the rollback.held notification as it came, or use `watcher " + c.action + " --request=ID --reason=TEXT`."})
	}
	return false
}

// heldFor reads the request the link names. One that is not held (any
// more) gets a page saying what became of it.
func (s *Server) heldFor(w http.ResponseWriter, r *http.Request, c *decisionCall) (*rollbackreq.Hold, bool) {
	d := s.Decisions
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	h, err := rollbackreq.Lookup(ctx, d.JS, r.PathValue("id"))
	c.hold = h
	if err == nil {
		return h, true
	}
	status, field := decideStatus(err)
	s.refuseLink(r, c, status, field, err.Error())
	p := &linkPageData{Title: "Nothing to decide", Badge: "not held", Class: "muted", Message: err.Error(), Facts: holdFacts(h, s.clock()), Hint: historyHint(h)}
	switch {
	case errors.Is(err, rollbackreq.ErrDecided) && h != nil:
		p.Badge, p.Message = h.State, "This rollback was "+h.Describe()+"."
	case status == http.StatusNotFound:
		p.Badge = "unknown"
	case status == http.StatusServiceUnavailable:
		p.Title, p.Badge, p.Class = "Not available", "error", "bad"
	}
	s.renderLink(w, status, p)
	return nil, false
}

// refuseLink records and counts a link request that decides nothing. A
// GET asks for no decision: it is recorded only when its signature does
// not match (someone tried a link of their own), not when it finds an
// old link or a decided request, which unfurlers and scanners fetch.
func (s *Server) refuseLink(r *http.Request, c *decisionCall, status int, field, why string) {
	if r.Method == http.MethodGet && field != "signature" {
		return
	}
	s.refuse(quietWriter{}, r, status, s.Decisions.refusal(c, status, field), why)
}

// heldPage is the page of a held request, with the form that decides it.
func heldPage(h *rollbackreq.Hold, action string, form *linkForm, now time.Time) *linkPageData {
	req := h.Request
	form.MaxReason, form.MaxBy = events.MaxReasonLen, events.MaxByLen
	p := &linkPageData{Badge: "held", Class: "warn", Facts: holdFacts(h, now), Form: form}
	if action == events.ActionCancel {
		p.Title = fmt.Sprintf("Cancel the rollback of %s in %s?", req.Service, req.Environment)
		p.Message = "Cancelling keeps version " + req.Version + " deployed; the rollback never executes."
		form.Button = "Cancel the rollback"
	} else {
		p.Title = fmt.Sprintf("Approve the rollback of %s in %s?", req.Service, req.Environment)
		p.Message = "Approving rolls " + req.Service + " in " + req.Environment + " back from version " + req.Version + " now."
		form.Button = "Approve: roll back now"
	}
	p.Message += " Opening this page changed nothing: only the button below decides."
	return p
}

// holdFacts are what a page says of a request and its hold.
func holdFacts(h *rollbackreq.Hold, now time.Time) []fact {
	if h == nil {
		return nil
	}
	req := h.Request
	at := h.ExecuteAt.UTC().Format("2006-01-02 15:04:05 UTC")
	if h.State == rollbackreq.HoldHeld {
		at += " (" + countdown(h.ExecuteAt, now) + ")"
	}
	facts := []fact{
		{"Service", req.Service}, {"Environment", req.Environment}, {"Version", req.Version},
		{"Requested by", req.Source + ": " + req.Reason},
	}
	switch h.Why {
	case rollbackreq.WhyCooldown:
		why := "cooldown: left to a person, kept unless approved"
		if e := h.Earlier; e != nil {
			why = fmt.Sprintf("cooldown: %s in %s was rolled back automatically at %s (request %s); kept unless approved",
				req.Service, req.Environment, e.CompletedAt.UTC().Format(time.RFC3339), e.RequestID)
		}
		facts = append(facts, fact{"Held because", why}, fact{"Answer by", at})
	case rollbackreq.WhyAsk:
		facts = append(facts, fact{"Held because", "the policy asks for an answer; without one, ask_default: " + h.AskDefault},
			fact{"Answer by", at})
	default:
		facts = append(facts, fact{"Held because", "rollback.hold: it executes unless cancelled"}, fact{"Executes at", at})
	}
	facts = append(facts, fact{"Held since", h.Since.UTC().Format("2006-01-02 15:04:05 UTC")})
	if h.State != rollbackreq.HoldHeld {
		facts = append(facts, fact{"State", h.Describe()})
	}
	return append(facts, fact{"Request", req.ID})
}

// countdown is t from now for a person: "in 1m20s", "due now".
func countdown(t, now time.Time) string {
	d := t.Sub(now).Round(time.Second)
	if d <= 0 {
		return "due now"
	}
	return "in " + d.String()
}

func historyHint(h *rollbackreq.Hold) string {
	if h == nil {
		return "`watcher history --kind='rollback.*'` lists held rollbacks and what became of them."
	}
	return fmt.Sprintf("`watcher history --service=%s --environment=%s --kind='rollback.*'` shows what became of it.", h.Request.Service, h.Request.Environment)
}

func (s *Server) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

func (s *Server) renderLink(w http.ResponseWriter, status int, p *linkPageData) {
	var buf bytes.Buffer
	if err := linkTemplate.Execute(&buf, p); err != nil {
		http.Error(w, "page not rendered: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	// The link is a credential: it leaves through no Referer, is indexed
	// nowhere, and the page runs no script and posts only to itself.
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Robots-Tag", "noindex, nofollow")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

var linkTemplate = template.Must(template.New("link").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{{.Title}} · Rollback Watcher</title>
<style>
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; background: #f6f8fa; margin: 0; padding: 24px; }
main { max-width: 720px; margin: 0 auto; background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 20px 24px; }
h1 { font-size: 20px; margin: 0 0 8px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; color: #fff; background: #6e7781; }
.ok .badge { background: #1a7f37; } .warn .badge { background: #9a6700; } .bad .badge { background: #cf222e; }
table { border-collapse: collapse; margin: 12px 0; width: 100%; }
th { text-align: left; color: #57606a; font-weight: 500; padding: 4px 12px 4px 0; vertical-align: top; white-space: nowrap; }
td { padding: 4px 0; overflow-wrap: anywhere; }
label { display: block; margin: 12px 0 4px; font-weight: 600; }
input, textarea { width: 100%; box-sizing: border-box; font: inherit; padding: 6px 8px; border: 1px solid #d0d7de; border-radius: 6px; }
button { margin-top: 14px; font: inherit; font-weight: 600; padding: 8px 16px; border: 0; border-radius: 6px; color: #fff; background: #cf222e; cursor: pointer; }
.err { color: #cf222e; margin-top: 8px; }
.hint { color: #57606a; font-size: 13px; margin-top: 16px; }
</style>
</head>
<body>
<main class="{{.Class}}">
<span class="badge">{{.Badge}}</span>
<h1>{{.Title}}</h1>
{{if .Message}}<p>{{.Message}}</p>{{end}}
{{if .Facts}}<table>{{range .Facts}}<tr><th>{{.Name}}</th><td>{{.Value}}</td></tr>{{end}}</table>{{end}}
{{with .Form}}<form method="post">
{{if .Error}}<div class="err">{{.Error}}</div>{{end}}
<label for="by">Your name</label>
<input id="by" name="by" required maxlength="{{.MaxBy}}" autocomplete="name" value="{{.By}}">
<label for="reason">Why</label>
<textarea id="reason" name="reason" required maxlength="{{.MaxReason}}" rows="3">{{.Reason}}</textarea>
<button type="submit">{{.Button}}</button>
</form>{{end}}
{{if .Hint}}<p class="hint">{{.Hint}}</p>{{end}}
</main>
</body>
</html>
`))
