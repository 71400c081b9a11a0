package web

import (
	"fmt"
	"net/url"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
)

// The status page's rollbacks, grouped by request with their cause.

type rollbackGroup struct {
	rollbackView
	at        time.Time
	deployKey string
}

// rollbacksOf groups the rollback records by request, newest first, each
// with its cause: the checks of the run that failed, the alert, or the
// reason a person gave.
func rollbacksOf(recs []audit.Record, now time.Time) []rollbackGroup {
	verdicts := map[string]audit.Record{} // run id -> run.failed / run.inconclusive
	for _, r := range recs {
		if r.Kind == audit.RunFailed || r.Kind == audit.RunInconclusive {
			verdicts[r.RunID] = r
		}
	}
	groups := map[string]*rollbackGroup{}
	var order []*rollbackGroup
	done := map[string]bool{}
	for _, r := range recs {
		switch r.Kind {
		case audit.RollbackRequested, audit.RollbackHost, audit.RollbackCompleted, audit.RollbackFailed,
			audit.RollbackHeld, audit.RollbackApproved, audit.RollbackCancelled:
		default:
			continue
		}
		if r.RequestID == "" {
			continue
		}
		g := groups[r.RequestID]
		if g == nil {
			g = &rollbackGroup{rollbackView: rollbackView{RequestID: r.RequestID, Status: "rolling back", StatusClass: "info"}, at: r.Time}
			groups[r.RequestID] = g
			order = append(order, g)
		}
		if g.RunID == "" {
			g.RunID = r.RunID
		}
		if g.Service == "" {
			g.Service, g.Environment, g.Version = r.Service, r.Environment, r.Version
			if r.DeployID != "" {
				g.deployKey = r.Environment + "\x00" + r.Service + "\x00" + r.DeployID
			}
		}
		switch r.Kind {
		case audit.RollbackHeld:
			d, _ := r.RollbackHeld()
			g.at = r.Time
			g.Source, g.Reason = d.Source, d.Reason
			if !done[r.RequestID] {
				g.Status, g.StatusClass, g.Note = "held", "warn", ""
				g.Held = heldOf(d, now)
			}
		case audit.RollbackApproved, audit.RollbackCancelled:
			d, _ := r.RollbackDecision()
			g.Held = nil
			if r.Kind == audit.RollbackCancelled {
				g.Status, g.StatusClass = "cancelled", "muted"
				g.Note = fmt.Sprintf("cancelled by %s (%s): %s", d.By, d.Via, d.Reason)
			} else if !done[r.RequestID] {
				g.Status, g.StatusClass = "approved", "info"
				g.Note = fmt.Sprintf("approved by %s (%s): %s", d.By, d.Via, d.Reason)
			}
			if d.Via == events.ViaDeadline {
				g.Note = "nobody answered: " + d.Reason
			}
		case audit.RollbackRequested:
			req, _ := r.RollbackRequested()
			if g.Held == nil && g.Status != "approved" {
				g.at = r.Time
			}
			g.Held = nil
			g.Source, g.Reason = req.Source, req.Reason
			if req.Alert != nil {
				g.Alert = alertOf(*req.Alert, now)
			}
			switch {
			case !req.Executed && !done[r.RequestID]:
				g.Status, g.StatusClass = "not executed", "muted"
				g.Note = "not executed: " + req.NotExecuted(r.Policy)
			case !done[r.RequestID]:
				g.Status, g.StatusClass = "rolling back", "info"
			}
		case audit.RollbackHost:
			h, _ := r.RollbackHost()
			g.Hosts = append(g.Hosts, hostOf(h))
		case audit.RollbackCompleted, audit.RollbackFailed:
			res, _ := r.RollbackResult()
			done[r.RequestID] = true
			if r.Kind == audit.RollbackCompleted {
				g.Status, g.StatusClass = "rolled back", "ok"
				if res.From != "" || res.To != "" {
					g.FromTo = res.From + " → " + res.To
				}
			} else {
				g.Status, g.StatusClass = "rollback failed", "bad"
				g.Error = res.Error
			}
			if len(g.Hosts) == 0 {
				for _, h := range res.Hosts {
					g.Hosts = append(g.Hosts, hostResultOf(h))
				}
			}
		}
	}
	out := make([]rollbackGroup, 0, len(order))
	for _, g := range order {
		if v, ok := verdicts[g.RunID]; ok {
			d, _ := v.Verdict()
			for _, c := range d.Checks {
				g.Checks = append(g.Checks, causeCheck{Name: c.Check, Reason: c.LastReason()})
			}
			if g.Reason == "" {
				g.Reason = v.Message
			}
		}
		if g.Source == "" {
			g.Source = "unknown"
		}
		g.Time, g.Ago = clock(g.at, now), relative(g.at, now)
		out = append(out, *g)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].at.After(out[j].at) })
	return out
}

func hostOf(d audit.RollbackHostDetail) hostView {
	h := hostView{Host: d.Host, FromPath: d.From, ToPath: d.To, Error: d.Error, Switched: d.Switched}
	h.From, h.To = base(h.FromPath), base(h.ToPath)
	h.Duration = formatSeconds(d.DurationSeconds)
	return h
}

// hostResultOf reads a host of a rollback.completed or rollback.failed
// record.
func hostResultOf(d audit.HostOutcome) hostView {
	h := hostView{Host: d.Host, FromPath: d.From, ToPath: d.To, Error: d.Error, Switched: d.Switched}
	h.From, h.To = base(h.FromPath), base(h.ToPath)
	h.Duration = formatSeconds(d.Duration.Seconds())
	return h
}

func base(p string) string {
	if p == "" {
		return ""
	}
	return path.Base(p)
}

func formatSeconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func alertOf(a events.AlertRef, now time.Time) *alertView {
	v := &alertView{Name: a.Name, Fingerprint: a.Fingerprint}
	if t := a.StartsAt; !t.IsZero() {
		v.StartsAt = clock(t, now) + " (" + relative(t, now) + ")"
	}
	if g := a.GeneratorURL; g != "" {
		if u, err := url.Parse(g); err == nil && (strings.EqualFold(u.Scheme, "http") || strings.EqualFold(u.Scheme, "https")) && u.Host != "" {
			v.URL = g
		} else {
			v.Text = g
		}
	}
	for k, val := range a.Labels {
		v.Labels = append(v.Labels, labelView{Name: k, Value: val})
	}
	sort.Slice(v.Labels, func(i, j int) bool { return v.Labels[i].Name < v.Labels[j].Name })
	return v
}

// heldView is a held rollback on the status page: when it executes (or
// its ask_default applies), why it is held, and the commands that decide
// it. Never the signed links of rollback.held: the page needs no
// credentials, and a link is one.
type heldView struct {
	What, At, In, Why string
	Cancel, Approve   string
}

func heldOf(d audit.RollbackHeldDetail, now time.Time) *heldView {
	h := &heldView{What: "executes at", At: clock(d.ExecuteAt, now) + " UTC", In: countdown(d.ExecuteAt, now), Cancel: d.Cancel}
	switch d.Why {
	case "cooldown":
		h.What, h.Why = "left to a person until", "cooldown after an automatic rollback; kept unless approved"
		if e := d.Earlier; e != nil {
			h.Why = fmt.Sprintf("cooldown after the automatic rollback %s (completed %s); kept unless approved", e.RequestID, clock(e.CompletedAt, now))
		}
	case "ask":
		h.What, h.Why = "waits for an answer until", "the policy asks; without an answer, ask_default: "+d.AskDefault
	default:
		h.Why = "rollback.hold " + d.Hold + ": it executes unless cancelled"
	}
	if d.Ask {
		h.Approve = d.Approve
	}
	return h
}
