package watch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/events"
)

// RunResumed records that a replica took over a run whose owner had died
// (or that a restarted process picked up its own).
const RunResumed = audit.RunResumed

var notKeyChars = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// DefaultReplica names a replica when nothing else does: the host name and
// a random suffix, so that two processes on one host never share a name
// (a shared name would let both believe they own the same runs).
func DefaultReplica() string {
	host, _ := os.Hostname()
	return replicaName(host) + "-" + strings.ToLower(events.NewID()[20:])
}

// ValidReplica checks a replica name given by the operator: it is a KV key.
func ValidReplica(name string) error {
	if name == "" || notKeyChars.MatchString(name) {
		return fmt.Errorf("replica name %q: use letters, digits, '-' and '_'", name)
	}
	return nil
}

// replicaName makes a host name usable as a KV key.
func replicaName(host string) string {
	s := strings.Trim(notKeyChars.ReplaceAllString(host, "-"), "-")
	if s == "" {
		s = "watcher"
	}
	return s
}

// openStore creates the run and replica buckets and announces this
// replica.
func (w *Watcher) openStore(ctx context.Context) error {
	replicas := max(w.Replicas, 1)
	runs, err := bus.EnsureKeyValue(ctx, w.JS, jetstream.KeyValueConfig{
		Bucket:      RunsBucket,
		Description: "validation runs in progress (rollback watcher)",
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return err
	}
	alive, err := bus.EnsureKeyValue(ctx, w.JS, jetstream.KeyValueConfig{
		Bucket:      ReplicasBucket,
		Description: "live rollback watcher replicas, one key each, kept by heartbeats",
		TTL:         w.Lease,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return err
	}
	verifies, err := bus.EnsureKeyValue(ctx, w.JS, jetstream.KeyValueConfig{
		Bucket:      VerifyBucket,
		Description: "rollbacks waiting to be verified once they complete, by request id (rollback watcher)",
		TTL:         verifyTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return err
	}
	w.runs, w.alive, w.verifies = runs, alive, verifies
	return w.heartbeat(ctx)
}

func (w *Watcher) heartbeat(ctx context.Context) error {
	if _, err := w.alive.PutString(ctx, w.Replica, time.Now().UTC().Format(time.RFC3339Nano)); err != nil {
		return fmt.Errorf("announcing replica %s in %s: %w", w.Replica, ReplicasBucket, err)
	}
	return nil
}

// tend keeps this replica alive in ReplicasBucket and takes over the runs
// of replicas that are not: at start (runs left by a crashed process),
// whenever a replica disappears, and once in a while in case a scan was
// missed.
func (w *Watcher) tend(ctx context.Context) {
	t := time.NewTicker(w.Lease / 3)
	defer t.Stop()
	known := w.startLive
	for tick := 1; ; tick++ {
		select {
		case <-ctx.Done():
			w.retire()
			return
		case <-t.C:
		}
		if err := w.heartbeat(ctx); err != nil && ctx.Err() == nil {
			w.logger.Warn("heartbeat", "err", err)
		}
		live, err := w.liveReplicas(ctx)
		if err != nil {
			if ctx.Err() == nil {
				w.logger.Warn("listing live replicas", "err", err)
			}
			continue
		}
		gone := tick%30 == 0
		for r := range known {
			gone = gone || !live[r]
		}
		known = live
		if gone {
			w.adoptOrphans(ctx, live, false)
		}
	}
}

// retire removes this replica's heartbeat on the way out, so that the
// other replicas take its runs over at once instead of after the lease.
// The runs themselves stay stored as they are. A run loop still finishing
// its step writes with compare-and-set and loses to a taker.
func (w *Watcher) retire() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := w.alive.Delete(ctx, w.Replica); err != nil {
		w.logger.Debug("heartbeat not removed", "err", err)
	}
}

// adoptAtStart takes over, before any event is consumed, the runs left by
// dead replicas and by an earlier process of this replica's name.
func (w *Watcher) adoptAtStart(ctx context.Context) error {
	live, err := w.liveReplicas(ctx)
	if err != nil {
		return fmt.Errorf("listing live replicas in %s: %w", ReplicasBucket, err)
	}
	w.startLive = live
	w.adoptOrphans(ctx, live, true)
	return nil
}

func (w *Watcher) liveReplicas(ctx context.Context) (map[string]bool, error) {
	keys, err := w.alive.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	live := map[string]bool{w.Replica: true}
	for k := range keys.Keys() {
		live[k] = true
	}
	return live, nil
}

// adoptOrphans takes over every stored run whose owner is not live. Runs
// under this replica's own name are taken only at startup (mine): they were
// left by an earlier process of the same name; later, they are this
// process's own runs being started.
func (w *Watcher) adoptOrphans(ctx context.Context, live map[string]bool, mine bool) {
	keys, err := w.runs.ListKeys(ctx)
	if err != nil {
		if !errors.Is(err, jetstream.ErrNoKeysFound) && ctx.Err() == nil {
			w.logger.Warn("listing stored runs", "err", err)
		}
		return
	}
	for id := range keys.Keys() {
		if w.hasRun(id) {
			continue
		}
		st, rev, err := w.load(ctx, id)
		if err != nil {
			continue // decided and removed meanwhile
		}
		if st.Owner == w.Replica && !mine || st.Owner != w.Replica && live[st.Owner] {
			continue
		}
		if err := w.adopt(ctx, st, rev); err != nil && ctx.Err() == nil {
			w.logger.Warn("taking over run", "run", id, "err", err)
		}
	}
}

// adoptID takes run id over, unless a live replica other than this one
// holds it (checked when checkLive), and resumes it here. Of replicas
// racing for one run, the compare-and-set lets one win.
func (w *Watcher) adoptID(ctx context.Context, id string, checkLive bool) error {
	if w.hasRun(id) {
		return nil
	}
	st, rev, err := w.load(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil // decided and removed
	}
	if err != nil {
		return err
	}
	if checkLive && st.Owner != w.Replica {
		live, err := w.liveReplicas(ctx)
		if err != nil {
			return err
		}
		if live[st.Owner] {
			return nil // its owner goes on with it
		}
	}
	return w.adopt(ctx, st, rev)
}

// adopt takes over the run stored as st at revision rev and resumes it
// here; the compare-and-set on rev lets one of several racing replicas win.
func (w *Watcher) adopt(ctx context.Context, st runState, rev uint64) error {
	id := st.ID
	r, err := restoreRun(st, rev)
	if err != nil {
		return err
	}
	from := r.owner
	r.owner = w.Replica
	if err := w.save(ctx, r); err != nil {
		if errors.Is(err, errRunLost) {
			return nil // another replica was quicker
		}
		return err
	}
	w.logger.Info("run taken over", "run", id, "from", from, "service", r.Deploy.Service, "version", r.Deploy.Version, "verdict", r.verdict)
	r.mu.Lock()
	next, rev := r.next, r.rev
	r.mu.Unlock()
	what := "run"
	if r.verify != nil {
		what = "verification of rollback " + r.verify.RequestID
	}
	if err := w.recordID(ctx, r, fmt.Sprintf("%s.resumed.%d", r.ID, rev), RunResumed,
		fmt.Sprintf("%s resumed by replica %s (was %s); next measurement due %s", what, w.Replica, from, next.Format(time.RFC3339Nano)),
		audit.RunResumedDetail{Replica: w.Replica, PreviousOwner: from, NextMeasurement: next, Verdict: r.verdict}.Map()); err != nil {
		w.logger.Warn("run.resumed not recorded", "run", id, "err", err)
	}
	if r.verdict != VerdictPending {
		w.mu.Lock()
		w.addActiveLocked(r)
		w.mu.Unlock()
		w.conclude(ctx, r)
		return nil
	}
	w.start(ctx, r)
	return nil
}
