package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Follow calls fn with the records matching f, oldest first: those already
// stored (the newest f.Limit of them when Limit is set), then each new one
// as it is written, until ctx ends or fn fails. It is `tail -f` for the
// audit stream.
func Follow(ctx context.Context, js jetstream.JetStream, f Filter, fn func(Record) error) error {
	return FollowFrom(ctx, js, f, Start{}, fn)
}

// Start is where FollowFrom begins reading: at stream sequence Seq when it
// is set, else at the first record stored at or after Time when that is
// set, else at the first record of the stream.
type Start struct {
	Seq  uint64
	Time time.Time
}

// FollowFrom is Follow from start: the records already stored from there
// on, then each new one.
func FollowFrom(ctx context.Context, js jetstream.JetStream, f Filter, start Start, fn func(Record) error) error {
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{f.subject()},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	switch {
	case start.Seq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start.Seq
	case !start.Time.IsZero():
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start.Time
	}
	cons, err := js.OrderedConsumer(ctx, "AUDIT", cfg)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("no AUDIT stream on this server: has a watcher run against it?")
		}
		return fmt.Errorf("following the audit stream: %w", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("following the audit stream: %w", err)
	}
	// Until caught up with what was stored when it started, records are
	// kept back, so that Limit can keep only the newest.
	catchingUp := info.NumPending > 0
	var backlog []Record
	flush := func() error {
		for _, r := range backlog {
			if err := fn(r); err != nil {
				return err
			}
		}
		backlog = nil
		catchingUp = false
		return nil
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("following the audit stream: %w", err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return flush()
			}
			return fmt.Errorf("following the audit stream: %w", err)
		}
		var r Record
		keep := json.Unmarshal(msg.Data(), &r) == nil && f.keeps(r)
		md, _ := msg.Metadata()
		if catchingUp {
			if keep {
				backlog = append(backlog, r)
				if f.Limit > 0 && len(backlog) > f.Limit {
					backlog = backlog[1:]
				}
			}
			if md == nil || md.NumPending == 0 {
				if err := flush(); err != nil {
					return err
				}
			}
			continue
		}
		if keep {
			if err := fn(r); err != nil {
				return err
			}
		}
	}
}

// LastSeq is the stream sequence of the newest record in the audit stream,
// 0 when it holds none: FollowFrom at LastSeq+1 reads exactly the records
// written after the call.
func LastSeq(ctx context.Context, js jetstream.StreamManager) (uint64, error) {
	s, err := js.Stream(ctx, "AUDIT")
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return 0, fmt.Errorf("no AUDIT stream on this server: has a watcher run against it?")
		}
		return 0, fmt.Errorf("reading the audit stream: %w", err)
	}
	return s.CachedInfo().State.LastSeq, nil
}
