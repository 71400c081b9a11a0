package watch

import (
	"context"
	"time"

	"github.com/rollback-watcher/watcher/internal/policy"
)

// Keeping a deploy's hosts connected while its run may roll it back.

// Warmer opens and releases connections to rollback hosts;
// *rollback.Warmer is one.
type Warmer interface {
	Warm(ctx context.Context, hosts []string, cfg policy.SSH)
	Cool(hosts []string, cfg policy.SSH)
}

// coolAfterRollback is how long connections stay warm after a run asked
// for a rollback: the executor is about to use them.
const coolAfterRollback = 5 * time.Minute

// warm opens connections to the hosts r would roll back, if it would roll
// back remote hosts at all.
func (w *Watcher) warm(ctx context.Context, r *Run) {
	if w.Warmer == nil || r.Policy.Rollback.Mode == policy.ModePublish {
		return
	}
	hosts := r.Policy.Rollback.Hosts
	if len(hosts) == 0 {
		hosts = r.Deploy.Hosts
	}
	if len(hosts) == 0 {
		return
	}
	r.warmed = hosts
	w.Warmer.Warm(ctx, hosts, r.Policy.Rollback.SSH)
}

// cool releases r's connections: now, or once the rollback it requested has
// had them.
func (w *Watcher) cool(r *Run, rollbackRequested bool) {
	if len(r.warmed) == 0 {
		return
	}
	hosts, cfg := r.warmed, r.Policy.Rollback.SSH
	if rollbackRequested {
		time.AfterFunc(coolAfterRollback, func() { w.Warmer.Cool(hosts, cfg) })
		return
	}
	w.Warmer.Cool(hosts, cfg)
}
