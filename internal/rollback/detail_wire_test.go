package rollback

import (
	"reflect"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
)

func viaJSON(t *testing.T, v any) map[string]any {
	t.Helper()
	m, err := audit.Wire(v)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// rollback.completed and rollback.failed put on the wire what the maps the
// executor built before their detail was typed put there (the old maps
// below: hosts as []HostResult, the data step as a map), and read back.
func TestRollbackResultDetailWire(t *testing.T) {
	hosts := []HostResult{
		{HostOutcome: audit.HostOutcome{Host: "web1", Link: "/srv/shop/current", From: "/r/v2", To: "/r/v1", Source: "previousVersion", Switched: true,
			Duration: 1500 * time.Microsecond, AfterOutput: "ok", Attempts: 2, Earlier: "switched", AfterRan: "yes"}},
		{HostOutcome: audit.HostOutcome{Host: "web2", Link: "/srv/shop/current", From: "/r/v2", Error: "no previous release", LinkNow: "v2"}, standing: "on v2"},
	}
	runs := map[string]any{"local": map[string]any{"command": []string{"migrate", "down"}, "output": "boom", "duration_seconds": 0.25, "error": "exit status 4"}}
	data := audit.DataStep{Runs: map[string]audit.DataRun{"local": {Command: []string{"migrate", "down"}, Output: "boom", DurationSeconds: 0.25, Error: "exit status 4"}}}
	skipped := "ran in an earlier attempt of this request"
	for _, tc := range []struct {
		name  string
		kind  string
		typed audit.RollbackResultDetail
		old   map[string]any
	}{
		{"completed", audit.RollbackCompleted, audit.RollbackResultDetail{Hosts: hostOutcomes(hosts[:1]), From: "v2", To: "v1"},
			map[string]any{"hosts": hosts[:1], "from": "v2", "to": "v1"}},
		{"completed with data", audit.RollbackCompleted, audit.RollbackResultDetail{Hosts: hostOutcomes(hosts[:1]), From: "v2", To: "v1", Data: data},
			map[string]any{"hosts": hosts[:1], "from": "v2", "to": "v1", "data": runs}},
		{"nothing to do", audit.RollbackCompleted, audit.RollbackResultDetail{Hosts: hostOutcomes(hosts[:1]), From: "v2", To: "v1", Noop: true},
			map[string]any{"hosts": hosts[:1], "from": "v2", "to": "v1", "noop": true}},
		{"failed, no hosts", audit.RollbackFailed, audit.RollbackResultDetail{Error: "no policy"},
			map[string]any{"error": "no policy", "hosts": []HostResult(nil)}},
		{"failed on hosts, data skipped", audit.RollbackFailed, audit.RollbackResultDetail{Error: "1 of 2 hosts failed", Hosts: hostOutcomes(hosts), Data: audit.DataStep{Skipped: skipped}},
			map[string]any{"error": "1 of 2 hosts failed", "hosts": hosts, "data": map[string]any{"skipped": skipped}}},
		{"failed before data ran", audit.RollbackFailed, audit.RollbackResultDetail{Error: "render", Hosts: hostOutcomes(hosts), Data: audit.DataStep{Runs: map[string]audit.DataRun{}}},
			map[string]any{"error": "render", "hosts": hosts, "data": map[string]any{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := audit.Record{Kind: tc.kind}
			if err := r.SetDetail(tc.typed); err != nil {
				t.Fatal(err)
			}
			if got, want := viaJSON(t, r.Detail), viaJSON(t, tc.old); !reflect.DeepEqual(got, want) {
				t.Errorf("detail on the wire changed:\n got %v\nwant %v", got, want)
			}
			back, ok := audit.Record{Kind: tc.kind, Detail: viaJSON(t, tc.old)}.RollbackResult()
			if !ok || !reflect.DeepEqual(back, tc.typed) {
				t.Errorf("read back %+v (%v), want %+v", back, ok, tc.typed)
			}
		})
	}
}
