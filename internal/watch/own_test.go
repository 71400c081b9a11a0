package watch

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
)

// TestOwnAnnouncementsAreNotRecordedAgain: the executor's own
// service.rolledback, which comes back on DEPLOYS after every rollback, is
// counted but gets no run.skipped record (rollback.completed recorded the
// rollback); another tool's service.rolledback still does.
func TestOwnAnnouncementsAreNotRecordedAgain(t *testing.T) {
	h := newHarness(t, "policies: []\n", always(1))
	rb, err := events.EncodeRolledBack(events.RolledBack{
		ID: "rolledback-own", Service: "shop", Environment: "production", Version: "1", FromVersion: "2",
		RequestID: "rb-own", Reason: "orders dropped",
	}, "rollback-watcher/test")
	if err != nil {
		t.Fatal(err)
	}
	h.publishRaw("deploys.production.shop", nats.Header{"Content-Type": []string{events.ContentTypeCloudEvents},
		events.HeaderAnnouncement: []string{"service.rolledback"}}, rb)
	h.waitMetric(1, "watcher_deploy_events_total", "result", "ignored")

	other, err := events.EncodeRolledBack(events.RolledBack{
		ID: "rolledback-other", Service: "shop", Environment: "production", Version: "1", FromVersion: "2",
		RequestID: "rb-other", Reason: "by hand",
	}, "/some/other/tool")
	if err != nil {
		t.Fatal(err)
	}
	h.publishRaw("deploys.production.shop", nats.Header{"Content-Type": []string{events.ContentTypeCloudEvents}}, other)
	h.waitMetric(2, "watcher_deploy_events_total", "result", "ignored")
	time.Sleep(200 * time.Millisecond)
	skipped := h.rec.where(func(r audit.Record) bool { return r.Kind == audit.RunSkipped })
	if len(skipped) != 1 {
		t.Fatalf("%d run.skipped records, want 1 (the other tool's announcement only)", len(skipped))
	}
}
