package watch

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// RunPolicyKept records that a reload changed the policy of a run in
// progress, which keeps the version it started with.
const RunPolicyKept = audit.RunPolicyKept

// Reloaded tells the runs in progress that the policies were reloaded. Runs
// keep the policy they started with, so that a verdict is judged by one set
// of rules; where the new set differs for a run, its audit says so.
func (w *Watcher) Reloaded(ctx context.Context, set *policy.Set) {
	w.init()
	w.mu.Lock()
	runs := make([]*Run, 0, len(w.active))
	for _, r := range w.active {
		runs = append(runs, r)
	}
	w.mu.Unlock()
	for _, r := range runs {
		if r.verify != nil {
			continue // measures checks of its run's policy, which it keeps too
		}
		now := set.Match(r.Deploy.Service, r.Deploy.Environment)
		var msg string
		detail := audit.PolicyKeptDetail{StartedWith: fmt.Sprintf("%s:%d", r.Policy.File, r.Policy.Line)}
		switch {
		case now == nil:
			msg = fmt.Sprintf("after the reload no policy matches %s in %s; this run keeps policy %s until its window closes",
				r.Deploy.Service, r.Deploy.Environment, r.Policy.Name)
		case now.Name != r.Policy.Name:
			msg = fmt.Sprintf("after the reload policy %s matches instead; this run keeps policy %s until its window closes", now.Name, r.Policy.Name)
			detail.NowMatching = fmt.Sprintf("%s:%d", now.File, now.Line)
		case digest(now) != digest(r.Policy):
			msg = fmt.Sprintf("policy %s changed on reload; this run keeps the version it started with", r.Policy.Name)
			detail.NowMatching = fmt.Sprintf("%s:%d", now.File, now.Line)
		default:
			continue
		}
		if err := w.record(ctx, r, RunPolicyKept, msg, detail.Map()); err != nil {
			w.logger.Warn("reload note not recorded", "run", r.ID, "err", err)
		}
	}
}

// digest identifies what a policy says, not where it is written: moving it
// within its file is no change.
func digest(p *policy.Policy) [32]byte {
	b, _ := json.Marshal(p)
	var v any
	_ = json.Unmarshal(b, &v)
	stripPositions(v)
	b, _ = json.Marshal(v)
	return sha256.Sum256(b)
}

func stripPositions(v any) {
	switch x := v.(type) {
	case map[string]any:
		delete(x, "File")
		delete(x, "Line")
		for _, e := range x {
			stripPositions(e)
		}
	case []any:
		for _, e := range x {
			stripPositions(e)
		}
	}
}
