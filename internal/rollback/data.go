package rollback

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// The data rollback step.

// lastLine is the last non-empty line of a command's output, shortened.
func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > 300 {
		l = l[:300] + "…"
	}
	if l == "" {
		return "no output"
	}
	return l
}

// maxDataOutput bounds the data step's output kept in the audit.
const maxDataOutput = 16 << 10

// runData runs the policy's data step where run_on says.
func (e *Executor) runData(ctx context.Context, req events.RollbackRequest, p *policy.Policy, plans []*plan) (audit.DataStep, error) {
	ds := p.Rollback.Data
	var targets []*plan
	switch ds.RunOn {
	case "all":
		targets = plans
	case "first":
		targets = plans[:1]
	default:
		local := *plans[0]
		local.target = e.Local
		local.host = "local"
		local.data.Host = "local"
		targets = []*plan{&local}
	}
	out := audit.DataStep{Runs: map[string]audit.DataRun{}}
	for _, pl := range targets {
		argv, err := ds.RenderCommand(pl.data)
		if err != nil {
			return out, err
		}
		tctx, cancel := context.WithTimeout(ctx, time.Duration(ds.Timeout))
		start := time.Now()
		b, err := pl.target.Run(tctx, argv, rollbackEnv(req, pl))
		cancel()
		if len(b) > maxDataOutput {
			b = append(b[:maxDataOutput:maxDataOutput], "\n[output truncated]"...)
		}
		entry := audit.DataRun{Command: argv, Output: string(b), DurationSeconds: time.Since(start).Seconds()}
		if err != nil {
			entry.Error = err.Error()
		}
		out.Runs[pl.target.Name()] = entry
		if err != nil {
			// The command's own last words usually say why (psql's
			// "ERROR: table ... does not exist"): put them in the message.
			return out, fmt.Errorf("%s: %q: %w: %s", pl.target.Name(), strings.Join(argv, " "), err, lastLine(b))
		}
	}
	return out, nil
}
