package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/watch"
)

// StreamPage is the PageSource of a running watcher: its runs, the AUDIT
// stream on JS, and the health of what it depends on.
type StreamPage struct {
	Watcher interface {
		Runs() (active, recent []watch.RunStatus)
	}
	JS jetstream.JetStream
	// Prometheus, when set, says whether Prometheus answers.
	Prometheus func() *PrometheusDown
	// Server is the embedded NATS server; nil with --nats.url.
	Server *bus.Embedded
}

// Runs lists the watcher's active and recent runs.
func (p StreamPage) Runs() (active, recent []watch.RunStatus) { return p.Watcher.Runs() }

// Records reads the audit stream with audit.Read, except that a filter with
// only a Limit reads just the stream's last Limit messages instead of the
// whole stream: the page asks for the newest records every few seconds.
func (p StreamPage) Records(ctx context.Context, f audit.Filter) ([]audit.Record, error) {
	if f.Service == "" && f.Environment == "" && f.RunID == "" && f.Limit > 0 {
		return readTail(ctx, p.JS, f.Limit)
	}
	return audit.Read(ctx, p.JS, f)
}

// readTail returns the records among the last n messages of the AUDIT
// stream, oldest first.
func readTail(ctx context.Context, js jetstream.JetStream, n int) ([]audit.Record, error) {
	st, err := js.Stream(ctx, bus.AuditStream)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("no %s stream on this server", bus.AuditStream)
		}
		return nil, fmt.Errorf("reading the audit stream: %w", err)
	}
	state := st.CachedInfo().State
	if state.Msgs == 0 {
		return nil, nil
	}
	start := state.FirstSeq
	if state.LastSeq >= uint64(n) && state.LastSeq-uint64(n)+1 > start {
		start = state.LastSeq - uint64(n) + 1
	}
	cons, err := js.OrderedConsumer(ctx, bus.AuditStream, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{events.AuditPrefix + ".>"},
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       start,
		InactiveThreshold: 5 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("reading the audit stream: %w", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the audit stream: %w", err)
	}
	pending := info.NumPending
	if pending > uint64(n) {
		pending = uint64(n) // records written since: the next page shows them
	}
	var out []audit.Record
	for pending > 0 {
		batch, err := cons.Fetch(int(min(pending, 256)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("reading the audit stream: %w", err)
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			var r audit.Record
			if err := json.Unmarshal(msg.Data(), &r); err != nil {
				continue // not ours; the stream may be shared
			}
			out = append(out, r)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("reading the audit stream: %w", err)
		}
		if got == 0 || uint64(got) >= pending {
			break
		}
		pending -= uint64(got)
	}
	return out, nil
}
