package bus

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/nats-io/nats.go/jetstream"
)

// NearlyFull is the share of a storage limit from which it is reported as
// nearly reached (README "HTTP", "Storage full").
const NearlyFull = 0.9

// typicalMessage stands for the size of the next message where no stream
// says better: about an audit record's.
const typicalMessage = 1024

// Limit is a JetStream storage limit at which new messages are refused,
// and how much of it is used. Only limits that refuse are reported: a
// stream with discard: old drops its oldest messages at its limits and
// takes the new one.
type Limit struct {
	// Scope is "stream", "account" or "server"; Stream names the stream.
	Scope, Stream string
	// Setting is the limit as NATS configures it: max_bytes, max_msgs
	// (a stream's), max_storage (an account's), max_file_store (a
	// server's).
	Setting string
	// Tier is the account's tier (R1, R3) when its limits are per tier.
	Tier      string
	Used, Max int64
	// Full says that a message of the usual size is refused now: one of
	// the stream's average size for a stream's bytes, any one for
	// messages and for the server.
	Full bool
}

// Bytes says whether the limit counts bytes (else messages).
func (l Limit) Bytes() bool { return l.Setting != "max_msgs" }

// reached returns l when used is at least NearlyFull of max, with Full set
// when next more would pass max; else nothing.
func reached(l Limit, next int64) []Limit {
	if l.Max <= 0 || float64(l.Used) < NearlyFull*float64(l.Max) {
		return nil
	}
	l.Full = l.Used+next > l.Max
	return []Limit{l}
}

// StorageLimits reads the watcher's streams (DEPLOYS, ROLLBACKS, AUDIT)
// and the account's JetStream limits and returns those nearly reached or
// reached, full ones first. A stream that does not exist is skipped; the
// error says what could not be read, with what was.
func StorageLimits(ctx context.Context, js jetstream.JetStream) ([]Limit, error) {
	var out []Limit
	var errs []error
	var bytes, msgs int64
	for _, name := range []string{DeploysStream, RollbacksStream, AuditStream} {
		s, err := js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("stream %s: %w", name, err))
			continue
		}
		info := s.CachedInfo()
		st, cfg := info.State, info.Config
		bytes, msgs = bytes+int64(st.Bytes), msgs+int64(st.Msgs)
		if cfg.Discard != jetstream.DiscardNew {
			continue
		}
		next := int64(typicalMessage)
		if st.Msgs > 0 {
			next = int64(st.Bytes / st.Msgs)
		}
		out = append(out, reached(Limit{Scope: "stream", Stream: name, Setting: "max_bytes", Used: int64(st.Bytes), Max: cfg.MaxBytes}, next)...)
		out = append(out, reached(Limit{Scope: "stream", Stream: name, Setting: "max_msgs", Used: int64(st.Msgs), Max: cfg.MaxMsgs}, 1)...)
	}
	next := int64(typicalMessage)
	if msgs > 0 {
		next = bytes / msgs
	}
	ai, err := js.AccountInfo(ctx)
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("account: %w", err))
	case len(ai.Tiers) > 0:
		tiers := make([]string, 0, len(ai.Tiers))
		for t := range ai.Tiers {
			tiers = append(tiers, t)
		}
		sort.Strings(tiers)
		for _, t := range tiers {
			tier := ai.Tiers[t]
			out = append(out, reached(Limit{Scope: "account", Setting: "max_storage", Tier: t, Used: int64(tier.Store), Max: tier.Limits.MaxStore}, next)...)
		}
	default:
		out = append(out, reached(Limit{Scope: "account", Setting: "max_storage", Used: int64(ai.Store), Max: ai.Limits.MaxStore}, next)...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Full && !out[j].Full })
	if len(errs) > 0 {
		return out, fmt.Errorf("JetStream storage limits not read: %w", errors.Join(errs...))
	}
	return out, nil
}

// StorageLimit is the embedded server's own JetStream storage limit
// (max_file_store: 75% of the free space on --storage.path when it
// started) when it is nearly reached or reached. Once past it (the last
// message it took may pass it) JetStream refuses new messages with
// "insufficient resources".
func (e *Embedded) StorageLimit() []Limit {
	info, err := e.Jsz(nil)
	if err != nil || info.Disabled {
		return nil
	}
	return reached(Limit{Scope: "server", Setting: "max_file_store", Used: int64(info.Store), Max: info.Config.MaxStore}, 0)
}
