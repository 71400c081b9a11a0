package rollback

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// Recording the outcome: failures, where links stand, the service.rolledback
// announcement.

func (e *Executor) failed(ctx context.Context, base audit.Record, hosts []HostResult, err error) Result {
	return e.failedWith(ctx, base, hosts, err, audit.DataStep{})
}

// failedOn records a failure after the targets were planned, saying where
// each link stands now.
func (e *Executor) failedOn(ctx context.Context, base audit.Record, p *policy.Policy, plans []*plan, hosts []HostResult, err error, data audit.DataStep) Result {
	standing(plans, hosts, parallelism(p))
	return e.failedWith(ctx, base, hosts, err, data)
}

func (e *Executor) failedWith(ctx context.Context, base audit.Record, hosts []HostResult, err error, data audit.DataStep) Result {
	rec := base
	rec.Kind = audit.RollbackFailed
	rec.MsgID = base.RequestID + ".result"
	rec.Message = fmt.Sprintf("rollback of %s in %s failed: %v", base.Service, base.Environment, err)
	rec.Message += whereLinksStand(hosts)
	aerr := rec.SetDetail(audit.RollbackResultDetail{Error: err.Error(), Hosts: hostOutcomes(hosts), Data: data})
	if aerr == nil {
		aerr = e.Audit.Record(ctx, rec)
	}
	if aerr != nil {
		e.logger.Error("rollback.failed not recorded", "request", base.RequestID, "err", aerr)
	}
	e.logger.Error("rollback failed", "request", base.RequestID, "service", base.Service, "environment", base.Environment, "err", err)
	return Result{Status: ResultFailed, Hosts: hosts, Err: err}
}

// whereLinksStand sums up where the links stand for a failure message:
// "; links now: every host on v2", or the hosts grouped by where their link
// stands when they differ ("; links now: on v1: web1, web2; on v2: web3").
// The audit record's detail has each host's link_now.
func whereLinksStand(hosts []HostResult) string {
	var order []string
	groups := map[string][]string{}
	for _, h := range hosts {
		if h.standing == "" {
			continue
		}
		if _, ok := groups[h.standing]; !ok {
			order = append(order, h.standing)
		}
		groups[h.standing] = append(groups[h.standing], h.Host)
	}
	switch {
	case len(order) == 0:
		return ""
	case len(order) == 1 && len(hosts) == 1:
		return "; link now " + order[0]
	case len(order) == 1:
		return "; links now: every host " + order[0]
	}
	parts := make([]string, len(order))
	for i, w := range order {
		parts[i] = w + ": " + strings.Join(groups[w], ", ")
	}
	return "; links now: " + strings.Join(parts, "; ")
}

// hostOutcomes is hosts as a rollback's result record lists them.
func hostOutcomes(hosts []HostResult) []audit.HostOutcome {
	if hosts == nil {
		return nil
	}
	out := make([]audit.HostOutcome, len(hosts))
	for i, h := range hosts {
		out[i] = h.HostOutcome
	}
	return out
}

// publishRolledBack announces the rollback as a CDEvents service.rolledback
// on the deploy subject, where deploy tooling listens; it starts no run.
func (e *Executor) publishRolledBack(ctx context.Context, req events.RollbackRequest, from, to string) {
	if e.JS == nil {
		return // a drill: nothing to announce
	}
	b, err := events.EncodeRolledBack(events.RolledBack{
		ID: rolledBackID(req.ID), Service: req.Service, Environment: req.Environment,
		Version: to, FromVersion: from, RequestID: req.ID, Reason: req.Reason, Time: time.Now().UTC(),
	}, e.AnnounceSource)
	if err != nil {
		e.logger.Error("service.rolledback not encoded", "err", err)
		return
	}
	msg := &nats.Msg{
		Subject: events.Subject(events.DeploysPrefix, req.Environment, req.Service),
		Data:    b,
		Header: nats.Header{"Content-Type": []string{events.ContentTypeCloudEvents},
			events.HeaderAnnouncement: []string{"service.rolledback"}},
	}
	if _, err := e.JS.PublishMsg(ctx, msg, jetstream.WithMsgID(rolledBackID(req.ID))); err != nil {
		e.logger.Error("service.rolledback not published", "request", req.ID, "err", err)
	}
}

// rolledBackID derives the event id from the request, so that a retry
// announces the same event; a long request id is hashed to stay within the
// id limit.
func rolledBackID(requestID string) string {
	id := "rolledback-" + requestID
	if len(id) <= 200 {
		return id
	}
	sum := sha256.Sum256([]byte(requestID))
	return "rolledback-" + hex.EncodeToString(sum[:16])
}

// joinErrs joins errors on one line ("a; b") and keeps them for errors.Is.
func joinErrs(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return joinedErr(errs)
}

type joinedErr []error

func (j joinedErr) Error() string {
	s := make([]string, len(j))
	for i, e := range j {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func (j joinedErr) Unwrap() []error { return j }
