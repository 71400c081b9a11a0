package web

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/rollback-watcher/watcher/internal/bus"
)

// Health is what the banners at the top of the status page say is wrong
// with what the watcher depends on (README "HTTP").
type Health struct {
	// Prometheus is set while Prometheus does not answer.
	Prometheus *PrometheusDown
	// Storage lists the JetStream limits nearly reached or reached.
	Storage []bus.Limit
	// StorageError is the embedded server's failure to write its
	// storage (a full disk).
	StorageError error
	// StorageUnread says which limits could not be read.
	StorageUnread error
}

// PrometheusDown is why and since when Prometheus does not answer.
type PrometheusDown struct {
	URL   string
	Since time.Time
	Err   string
}

// Health says what is wrong with Prometheus and with JetStream's storage.
func (p StreamPage) Health(ctx context.Context) Health {
	var h Health
	if p.Prometheus != nil {
		h.Prometheus = p.Prometheus()
	}
	h.Storage, h.StorageUnread = bus.StorageLimits(ctx, p.JS)
	if p.Server != nil {
		h.StorageError = p.Server.StorageError()
		h.Storage = append(p.Server.StorageLimit(), h.Storage...)
	}
	return h
}

// bannerView is one banner: what is wrong, what it means for the watcher
// and what to do, with where the README says more.
type bannerView struct {
	Class         string // bad or warn
	What, Why, Do string
}

// The README sections the banners send people to.
const (
	readmePrometheus = `README.md, "HTTP": Prometheus unreachable`
	readmeStorage    = `README.md, "HTTP": Storage full`
)

func banners(h Health) []bannerView {
	var out []bannerView
	if d := h.Prometheus; d != nil {
		out = append(out, bannerView{Class: "bad",
			What: fmt.Sprintf("Prometheus %s unreachable since %s: %s", d.URL, d.Since.UTC().Format(time.RFC3339), d.Err),
			Why:  "Runs record their queries as errors, judged as each check says, until it answers; rollbacks by alert and by hand still run.",
			Do:   "Check --prometheus.url (or prometheus.url and http_client in --config.file) and that Prometheus runs. See " + readmePrometheus + ".",
		})
	}
	if err := h.StorageError; err != nil {
		// The error says what is refused and what to do.
		out = append(out, bannerView{Class: "bad", What: "Storage not writable: " + err.Error(), Do: "See " + readmeStorage + "."})
	}
	for _, l := range h.Storage {
		out = append(out, limitBanner(l))
	}
	if err := h.StorageUnread; err != nil {
		out = append(out, bannerView{Class: "warn",
			What: err.Error(),
			Why:  "Whether the streams have room is not known.",
			Do:   "Check the NATS connection and the user's permissions on the JetStream API. See " + readmeStorage + ".",
		})
	}
	return out
}

// limitBanner says which limit is (nearly) reached and what stops then.
func limitBanner(l bus.Limit) bannerView {
	b := bannerView{Class: "bad"}
	state := "Storage full"
	if !l.Full {
		b.Class, state = "warn", "Storage nearly full"
	}
	used := fmt.Sprintf("%s of its %s %s (%d%%)", amount(l, l.Used), l.Setting, amount(l, l.Max), l.Used*100/l.Max)
	switch l.Scope {
	case "stream":
		b.What = fmt.Sprintf("%s: stream %s holds %s, discard: new", state, l.Stream, used)
		b.Why = "At its limit it refuses " + refused(l.Stream) + "."
		b.Do = fmt.Sprintf("Raise the limit (nats stream edit %s --%s=...), or let the stream drop its oldest messages (--discard=old). See %s.",
			l.Stream, map[bool]string{true: "max-bytes", false: "max-msgs"}[l.Bytes()], readmeStorage)
	case "account":
		tier := ""
		if l.Tier != "" {
			tier = " (tier " + l.Tier + ")"
		}
		b.What = fmt.Sprintf("%s: the JetStream account%s uses %s", state, tier, used)
		b.Why = "At its limit every stream refuses new messages: deploy events, rollback requests and audit records."
		b.Do = "Raise the account's JetStream storage limit, or make room in its streams (lower their max_age or max_bytes). See " + readmeStorage + "."
	default:
		b.What = fmt.Sprintf("%s: the embedded NATS server's JetStream uses %s", state, used)
		b.Why = "At its limit every stream refuses new messages (\"insufficient resources\"): deploy events, rollback requests and audit records."
		b.Do = "Free space under --storage.path and restart the watcher (the limit is 75% of the free space when it starts), or run NATS yourself with --nats.url. See " + readmeStorage + "."
	}
	return b
}

func refused(stream string) string {
	switch stream {
	case bus.DeploysStream:
		return "deploy events: publishers get an error and the deploys are not validated"
	case bus.RollbacksStream:
		return "rollback requests: failed validations, alerts and watcher rollback cannot roll back"
	case bus.AuditStream:
		return "audit records: what the watcher measures and decides goes unrecorded"
	}
	return "new messages"
}

// amount is a limit's quantity for people: bytes in KiB, MiB, GiB.
func amount(l bus.Limit, n int64) string {
	if !l.Bytes() {
		return strconv.FormatInt(n, 10) + " messages"
	}
	const k = 1024
	switch {
	case n >= k*k*k:
		return strconv.FormatFloat(float64(n)/(k*k*k), 'f', 1, 64) + " GiB"
	case n >= k*k:
		return strconv.FormatFloat(float64(n)/(k*k), 'f', 1, 64) + " MiB"
	case n >= k:
		return strconv.FormatFloat(float64(n)/k, 'f', 1, 64) + " KiB"
	}
	return strconv.FormatInt(n, 10) + " B"
}
