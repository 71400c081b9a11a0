// Package deploys reads the deploy history that the DEPLOYS stream keeps:
// which deploy of a service is the newest, and what a given deploy
// announced. Alerts, manual rollbacks and the executor ask it which deploy
// a rollback is about, so that none of them trusts the newest message on a
// subject that anyone allowed to publish there can write to.
package deploys

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/events"
)

var (
	// ErrNotFound: no deploy on the subject is the one looked for.
	ErrNotFound = errors.New("no deploy found")
	// ErrRolledBack: the watcher's own service.rolledback came before any
	// deploy that matched (Query.StopAtRolledBack).
	ErrRolledBack = errors.New("rolled back already")
	// ErrTooFar: Query.Limit messages were looked at without finding it.
	ErrTooFar = errors.New("not among the newest messages")
)

// DefaultLimit bounds how many messages a search looks through: far more
// than a burst of stray messages after a deploy, few enough that a flood of
// them costs little.
const DefaultLimit = 100

// Query says which deploy of a service and environment to find.
type Query struct {
	Environment, Service string
	// Match picks the deploy among the valid ones, newest first; nil takes
	// the newest.
	Match func(events.Deploy) bool
	// StopAtRolledBack ends the search with ErrRolledBack at a
	// service.rolledback newer than any matching deploy.
	StopAtRolledBack bool
	// Limit bounds the messages looked at that are not the deploy wanted
	// (0: DefaultLimit).
	Limit int
	// Before, when set, passes over the messages at this stream sequence
	// and after it, uncounted: the search is among older ones.
	Before uint64
}

// Found is a deploy as the stream holds it.
type Found struct {
	Deploy events.Deploy
	// Time is when the stream got it; Seq is its sequence in the stream.
	Time time.Time
	Seq  uint64
	// Skipped counts the newer messages on the subject passed over: not a
	// valid deploy, or not the one matched.
	Skipped int
}

// Find looks for q's deploy on deploys.<environment>.<service>, newest
// first. Invalid messages and other CDEvents are passed over: whoever may
// publish on the subject can put anything there.
func Find(ctx context.Context, js jetstream.StreamManager, q Query) (Found, error) {
	s, err := js.Stream(ctx, bus.DeploysStream)
	if err != nil {
		return Found{}, fmt.Errorf("%s stream: %w", bus.DeploysStream, err)
	}
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultLimit
	}
	subject := events.Subject(events.DeploysPrefix, q.Environment, q.Service)
	var f Found
	found := false
	err = newestFirst(ctx, s, subject, func(msg *jetstream.RawStreamMsg) (bool, error) {
		if q.Before > 0 && msg.Sequence >= q.Before {
			return true, nil
		}
		d, derr := events.DecodeDeploy(subject, msg.Header, msg.Data)
		var notDeploy *events.NotDeployError
		switch {
		case derr == nil && (q.Match == nil || q.Match(d)):
			f.Deploy, f.Time, f.Seq, found = d, msg.Time, msg.Sequence, true
			return false, nil
		case q.StopAtRolledBack && errors.As(derr, &notDeploy) && notDeploy.RolledBack():
			return false, ErrRolledBack
		}
		f.Skipped++
		if f.Skipped >= limit {
			return false, ErrTooFar
		}
		return true, nil
	})
	switch {
	case err != nil:
		return f, err
	case !found:
		return f, ErrNotFound
	}
	return f, nil
}

// At reads the deploy at stream sequence seq, which must be a valid deploy
// on deploys.<environment>.<service>: a request that names its deploy by
// sequence is checked in one read, however many messages came after it.
func At(ctx context.Context, js jetstream.StreamManager, environment, service string, seq uint64) (Found, error) {
	s, err := js.Stream(ctx, bus.DeploysStream)
	if err != nil {
		return Found{}, fmt.Errorf("%s stream: %w", bus.DeploysStream, err)
	}
	subject := events.Subject(events.DeploysPrefix, environment, service)
	msg, err := s.GetMsg(ctx, seq)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return Found{}, fmt.Errorf("%w: no message at sequence %d of %s", ErrNotFound, seq, bus.DeploysStream)
	case err != nil:
		return Found{}, fmt.Errorf("reading %s at sequence %d: %w", bus.DeploysStream, seq, err)
	case msg.Subject != subject:
		return Found{}, fmt.Errorf("%w: sequence %d of %s is on %s, not %s", ErrNotFound, seq, bus.DeploysStream, msg.Subject, subject)
	}
	d, err := events.DecodeDeploy(subject, msg.Header, msg.Data)
	if err != nil {
		return Found{}, fmt.Errorf("%w: sequence %d of %s is no valid deploy: %v", ErrNotFound, seq, bus.DeploysStream, err)
	}
	return Found{Deploy: d, Time: msg.Time, Seq: msg.Sequence}, nil
}

// newestFirst gives visit the messages on subject, newest first, until it
// returns false or an error. JetStream reads a subject only forwards (the
// first message on it at or after a sequence), so it reads windows of
// sequences backwards from the newest, each twice as wide as the one
// before: few requests whether the subject is most of the stream or a
// sliver of it.
func newestFirst(ctx context.Context, s jetstream.Stream, subject string, visit func(*jetstream.RawStreamMsg) (bool, error)) error {
	last, err := s.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the last message on %s: %w", subject, err)
	}
	if more, err := visit(last); !more || err != nil {
		return err
	}
	hi := last.Sequence // messages at hi and above have been visited
	for width := uint64(16); hi > 1; width *= 2 {
		lo := uint64(1)
		if hi > width {
			lo = hi - width
		}
		var window []*jetstream.RawStreamMsg
		for seq := lo; ; {
			m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				return fmt.Errorf("reading %s at sequence %d: %w", subject, seq, err)
			}
			if m.Sequence >= hi {
				break
			}
			window = append(window, m)
			seq = m.Sequence + 1
		}
		for i := len(window) - 1; i >= 0; i-- {
			if more, err := visit(window[i]); !more || err != nil {
				return err
			}
		}
		hi = lo
	}
	return nil
}
