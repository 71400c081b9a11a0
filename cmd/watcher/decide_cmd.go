package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

// decideTimeout bounds how long `watcher cancel`/`approve` wait for the
// executor to apply the decision.
const decideTimeout = 15 * time.Second

// addDecide adds `watcher cancel` and `watcher approve`: a person's answer
// to a held rollback (README "Notifications, holds and verification").
func addDecide(app *kingpin.Application, cmds map[string]func(context.Context, *env) error) {
	for _, c := range []struct{ action, help string }{
		{events.ActionCancel, "Cancel a held rollback request before it executes; exit 1 when it is no longer held."},
		{events.ActionApprove, "Approve a held rollback request (one waiting for an answer, or on hold): it executes now; exit 1 when it is no longer held."},
	} {
		cmd := app.Command(c.action, c.help)
		f := addClientFlags(cmd)
		d := events.RollbackDecision{Action: c.action, Via: events.ViaCLI}
		cmd.Flag("request", "The request id, as rollback.held names it.").Required().StringVar(&d.RequestID)
		cmd.Flag("reason", "Why; recorded in the audit.").Required().StringVar(&d.Reason)
		cmd.Flag("by", "Who decides, for the audit (default: the login name). NATS subject permissions, not this, say who may.").
			Default(loginName()).StringVar(&d.By)
		cmds[c.action] = func(ctx context.Context, e *env) error { return decideCmd(ctx, e, f, d) }
	}
}

func decideCmd(ctx context.Context, e *env, f *clientFlags, d events.RollbackDecision) error {
	// Checked here first with the rules the executor applies; the
	// service and environment come from the request, found later.
	probe := d
	probe.ID, probe.Service, probe.Environment = "x", "x", "x"
	if err := probe.Validate(); err != nil {
		return usageErr("invalid %s: %v", d.Action, flagNames(err))
	}
	ctx, js, closeNC, err := f.connect(ctx, e, "watcher "+d.Action)
	if err != nil {
		return err
	}
	defer closeNC()
	dctx, cancel := context.WithTimeout(ctx, decideTimeout)
	defer cancel()
	h, err := rollbackreq.Decide(dctx, js, d)
	if err != nil {
		if perr := permissionErr(ctx, d.Action+" of "+d.RequestID); perr != nil {
			return perr
		}
		return err
	}
	r := h.Request
	switch d.Action {
	case events.ActionCancel:
		fmt.Fprintf(e.stdout, "cancelled rollback request %s of %s in %s (held since %s, it would have executed at %s)\n",
			r.ID, r.Service, r.Environment, h.Since.Format(time.RFC3339), h.ExecuteAt.Format(time.RFC3339))
	default:
		fmt.Fprintf(e.stdout, "approved rollback request %s of %s in %s: executing now; `watcher history --service=%s --environment=%s --kind='rollback.*'` follows it\n",
			r.ID, r.Service, r.Environment, r.Service, r.Environment)
	}
	return nil
}

// flagNames words a rejection of the decision by the flags that set it.
func flagNames(err error) error {
	var re *events.RejectError
	if !errors.As(err, &re) {
		return err
	}
	switch re.Field {
	case "request_id":
		return fmt.Errorf("--request=%q is not a request id: it %s", re.Value, re.Reason)
	case "reason", "by":
		return fmt.Errorf("--%s %s", re.Field, re.Reason)
	}
	return err
}

// loginName is who runs the command, for the audit.
func loginName() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return "unknown"
}
