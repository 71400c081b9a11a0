package main

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestPinDeploy: a manual rollback names the release it rolls back, from
// --version or from the newest valid deploy recorded on DEPLOYS (not a
// stray message published after it), with that deploy's id, hosts and
// previous version.
func TestPinDeploy(t *testing.T) {
	n := testutil.StartNATS(t)
	pub := func(subject string, data []byte) {
		t.Helper()
		if _, err := n.JS.Publish(t.Context(), subject, data); err != nil {
			t.Fatal(err)
		}
	}
	deploy := func(id, version, prev string, hosts ...string) {
		t.Helper()
		b, err := events.EncodeNative(events.Deploy{ID: id, Service: "shop", Environment: "production",
			Version: version, PreviousVersion: prev, Hosts: hosts, Time: time.Now().UTC()})
		if err != nil {
			t.Fatal(err)
		}
		pub("deploys.production.shop", b)
	}
	req := func(version string) events.RollbackRequest {
		return events.RollbackRequest{Service: "shop", Environment: "production", Version: version}
	}

	r := req("")
	var ee *exitError
	if err := pinDeploy(t.Context(), n.JS, &r); !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("no deploy recorded: %v, want exit 1 asking for --version", err)
	}
	r = req("v9")
	if err := pinDeploy(t.Context(), n.JS, &r); err != nil || r.Version != "v9" || r.DeployID != "" || r.Hosts != nil {
		t.Fatalf("--version of a release deployed without an event: %v %+v, want it as given", err, r)
	}

	deploy("d-2", "v2", "v1", "web1:22")
	deploy("d-3", "v3", "v2", "web1:22", "web2:22")
	pub("deploys.production.shop", []byte(`{"id": "x", "service": "shop"`)) // not a deploy

	r = req("")
	if err := pinDeploy(t.Context(), n.JS, &r); err != nil {
		t.Fatal(err)
	}
	if r.Version != "v3" || r.DeployID != "d-3" || r.ToVersion != "v2" || !slices.Equal(r.Hosts, []string{"web1:22", "web2:22"}) {
		t.Errorf("newest deploy pinned as %+v, want v3 (d-3) to v2 on web1, web2", r)
	}
	r = req("v2")
	r.ToVersion = "v0"
	if err := pinDeploy(t.Context(), n.JS, &r); err != nil {
		t.Fatal(err)
	}
	if r.Version != "v2" || r.DeployID != "d-2" || r.ToVersion != "v0" || !slices.Equal(r.Hosts, []string{"web1:22"}) {
		t.Errorf("--version=v2 pinned as %+v, want d-2 on web1 keeping --to-version v0", r)
	}
}
