package backtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/watch"
)

// VerdictSkipped is the verdict of a deploy that was not replayed: no
// policy matches it, its window has not closed yet, or its run could not
// start (Result.Reason says which).
const VerdictSkipped = "skipped"

// DefaultWorkers is how many deploys are replayed at once. Each replay
// waits on Prometheus most of the time; more at once mostly queues there.
const DefaultWorkers = 8

// DefaultKeep is how many answers the replays' shared querier keeps for
// later replays.
const DefaultKeep = 20000

// Options are what a backtest replays against.
type Options struct {
	Policies *policy.Set
	Querier  watch.Querier
	// Timeout is prometheus.timeout (0: each policy's interval), as the
	// live runs have it.
	Timeout time.Duration
	// Now is the present: a window still open at Now is not replayed.
	Now time.Time
	// Workers and Keep default to DefaultWorkers and DefaultKeep.
	Workers, Keep int
}

// Result is what one deploy would have got.
type Result struct {
	Deploy Deploy
	Policy string // the matching policy's name; "" when none matched
	// Verdict is watch's (passed, failed, inconclusive, marginal) or
	// VerdictSkipped.
	Verdict string
	// Rollback says the verdict would have requested a rollback.
	Rollback bool
	// Check is the deciding check ("" for a passed or skipped run) and
	// Message its measurement that decided, with its numbers, as the
	// audit would have recorded it.
	Check, Message string
	// Reason is the verdict's reason, or why the deploy was skipped.
	Reason string
	// Decided is when the run would have been decided (zero for a
	// skipped one).
	Decided time.Time
	// Replayed is the whole replay, measurements included (nil for a
	// skipped deploy).
	Replayed *watch.Replayed
}

// DecidedAfter is the time from the deploy to the decision, and whether
// there was one.
func (r Result) DecidedAfter() (time.Duration, bool) {
	if r.Decided.IsZero() {
		return 0, false
	}
	return r.Decided.Sub(r.Deploy.Time()), true
}

// Mistake says how the verdict disagrees with the deploy's expectation:
// "false rollback" for a good deploy it would have rolled back, "miss"
// for a bad one it would have kept; "" when it agrees, or nothing can be
// said (no expectation, or not judged: Counted).
func (r Result) Mistake() string {
	switch {
	case !r.Counted():
		return ""
	case r.Deploy.Expect == Good && r.Rollback:
		return "false rollback"
	case r.Deploy.Expect == Bad && !r.Rollback:
		return "miss"
	}
	return ""
}

// Counted says whether the result counts in the summary: it has an
// expectation, and a verdict, or no policy to give it one (a bad deploy
// no policy covers is a miss). A deploy whose window was still open, or
// whose run could not start, says nothing about the policies.
func (r Result) Counted() bool {
	return r.Deploy.Expect != "" && (r.Verdict != VerdictSkipped || r.Policy == "")
}

// Stats are how many queries the replays asked, and how many requests
// reached Prometheus for them (the rest shared an answer).
type Stats struct {
	Asked, Requests int
}

// Run replays each deploy against its policy, as watch.Replay does, a few
// at a time, and returns the results in the deploys' order. Only a
// cancelled ctx stops it early.
func Run(ctx context.Context, o Options, deploys []Deploy) ([]Result, Stats, error) {
	workers, keep := o.Workers, o.Keep
	if workers <= 0 {
		workers = DefaultWorkers
	}
	if keep <= 0 {
		keep = DefaultKeep
	}
	q := newSharing(o.Querier, keep)
	results := make([]Result, len(deploys))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, max(len(deploys), 1)) {
		wg.Go(func() {
			for i := range next {
				results[i] = replay(ctx, o, q, deploys[i])
			}
		})
	}
feed:
	for i := range deploys {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	asked, requests := q.stats()
	if err := ctx.Err(); err != nil {
		return nil, Stats{}, err
	}
	return results, Stats{Asked: asked, Requests: requests}, nil
}

func replay(ctx context.Context, o Options, q watch.Querier, d Deploy) Result {
	res := Result{Deploy: d, Verdict: VerdictSkipped}
	e := d.Event
	p := o.Policies.Match(e.Service, e.Environment)
	if p == nil {
		res.Reason = fmt.Sprintf("no policy matches service %s in environment %s", e.Service, e.Environment)
		if d.skipped != "" {
			res.Reason += " (nor did one when the watcher saw it)"
		}
		return res
	}
	res.Policy = p.Name
	start := d.Start
	// The live run started a moment before its run.started record: its
	// window's end places it to the millisecond, so that its measurements
	// fall on the same grid times, while the policy's window is the same.
	if w := time.Duration(p.Window); !d.liveStart && !d.liveWindowEnd.IsZero() {
		if s := d.liveWindowEnd.Add(-w); !s.After(d.Start) && d.Start.Sub(s) < time.Minute {
			start = s
		}
	}
	rp, err := watch.Replay(ctx, q, p, e, start, o.Timeout, o.Now)
	switch {
	case errors.Is(err, watch.ErrWindowOpen):
		end := start.Add(time.Duration(p.Window))
		res.Reason = fmt.Sprintf("not replayed: the validation window is still open (it closes at %s)", end.UTC().Format(time.RFC3339))
		return res
	case err != nil && ctx.Err() == nil:
		res.Reason = "not replayed: " + err.Error()
		return res
	case err != nil:
		return res
	}
	res.Verdict, res.Rollback, res.Check, res.Reason, res.Decided, res.Replayed = rp.Verdict, rp.Rollback, rp.Check, rp.Reason, rp.Decided, &rp
	res.Message = decidingMessage(rp)
	return res
}

// decidingMessage is the message of the deciding check's measurement that
// decided the run: its last one at or before the decision.
func decidingMessage(rp watch.Replayed) string {
	if rp.Check == "" {
		return ""
	}
	msg := ""
	for _, m := range rp.Measurements {
		if m.Check == rp.Check && !m.Time.After(rp.Decided) {
			msg = m.Message
		}
	}
	return msg
}
