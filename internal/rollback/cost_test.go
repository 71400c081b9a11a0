package rollback

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// sftpCost is what each Target call costs an SSHTarget in SFTP requests
// (ssh.go), for a small file on a server with fsync@openssh.com.
var sftpCost = map[string]int{"ReadFile": 4, "WriteFile": 9, "ReplaceFile": 5, "Rename": 4}

// counting counts the calls made to a Target, by method.
type counting struct {
	Target
	mu sync.Mutex
	n  map[string]int
}

func (c *counting) add(op string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[op]++
}

func (c *counting) requests() (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0
	var parts []string
	for _, op := range slices.Sorted(maps.Keys(c.n)) {
		total += c.n[op] * max(sftpCost[op], 1)
		parts = append(parts, fmt.Sprintf("%s %d", op, c.n[op]))
	}
	return total, strings.Join(parts, ", ")
}

func (c *counting) Readlink(name string) (string, error) {
	c.add("Readlink")
	return c.Target.Readlink(name)
}

func (c *counting) Stat(name string) (fs.FileInfo, error) {
	c.add("Stat")
	return c.Target.Stat(name)
}

func (c *counting) Lstat(name string) (fs.FileInfo, error) {
	c.add("Lstat")
	return c.Target.Lstat(name)
}

func (c *counting) ReadFile(name string) ([]byte, error) {
	c.add("ReadFile")
	return c.Target.ReadFile(name)
}

func (c *counting) ReadDir(name string) ([]fs.FileInfo, error) {
	c.add("ReadDir")
	return c.Target.ReadDir(name)
}

func (c *counting) Symlink(oldname, newname string) error {
	c.add("Symlink")
	return c.Target.Symlink(oldname, newname)
}

func (c *counting) Rename(oldname, newname string) error {
	c.add("Rename")
	return c.Target.Rename(oldname, newname)
}

func (c *counting) WriteFile(name string, data []byte, perm fs.FileMode) error {
	c.add("WriteFile")
	return c.Target.WriteFile(name, data, perm)
}

func (c *counting) ReplaceFile(name string, data []byte) error {
	c.add("ReplaceFile")
	return c.Target.ReplaceFile(name, data)
}

func (c *counting) Remove(name string) error {
	c.add("Remove")
	return c.Target.Remove(name)
}

func (c *counting) Run(ctx context.Context, argv, env []string) ([]byte, error) {
	c.add("Run")
	return c.Target.Run(ctx, argv, env)
}

// TestExecuteRoundTrips pins what a plain rollback of one host costs over
// SSH, where every call is a round trip through the host's sshd and the
// fleet's wall time is bound by the hosts' CPU (BENCHMARKS.md): read the
// link, previousVersion and what the two releases are (7 requests), switch
// and read back (7), mark the release rolled back (5). A change that asks
// the host more questions fails here before it shows in the benchmark.
func TestExecuteRoundTrips(t *testing.T) {
	tests := []struct {
		name   string
		layout func(t *testing.T, h host)
		max    int
	}{
		{name: "previousVersion file, relative link", max: 19},
		{name: "previous release is a symlink", max: 27, layout: func(t *testing.T, h host) {
			// A release kept in a store and linked in: telling it from the
			// current release, and that it is inside the releases
			// directory, takes a walk of the paths from "/".
			store := h.rel(".store")
			mkdir(t, store)
			if err := os.Rename(h.rel("v1"), filepath.Join(store, "v1")); err != nil {
				t.Fatal(err)
			}
			symlink(t, filepath.Join(store, "v1"), h.rel("v1"))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := deployed(t)
			if tc.layout != nil {
				tc.layout(t, h)
			}
			c := &counting{Target: named{name: "web1"}}
			rules := loadRules(t, policyYAML("shop", "shop", h, `hosts: ["web1"]`))
			rec := &recorder{}
			e := &Executor{Policies: rules, Audit: rec, AnnounceSource: "test",
				Dial: func(context.Context, string, policy.SSH) (Target, error) { return c, nil }}

			res := e.Execute(ctxFor(t), request("rb-cost"))

			if res.Status != ResultCompleted {
				t.Fatalf("result %s: %v", res.Status, res.Err)
			}
			if got := readlink(t, h.link); got != "releases/v1" {
				t.Fatalf("link -> %s, want releases/v1", got)
			}
			n, calls := c.requests()
			t.Logf("%s = %d SFTP requests", calls, n)
			if n > tc.max {
				t.Errorf("one host's rollback makes %s = %d SFTP requests, want at most %d", calls, n, tc.max)
			}
		})
	}
}

// TestSwitchFromMoved: a link that no longer names the release the switch
// was planned from is left alone.
func TestSwitchFromMoved(t *testing.T) {
	h := deployed(t)
	mkdir(t, h.rel("v3"))
	before := snapshot(t, h.root)

	from, err := SwitchFrom(Local{}, h.link, h.rel("v3"), h.rel("v1"))

	if !errors.Is(err, ErrLinkMoved) {
		t.Fatalf("SwitchFrom = %v, want ErrLinkMoved", err)
	}
	if from != h.rel("v2") {
		t.Errorf("from = %s, want %s", from, h.rel("v2"))
	}
	for _, want := range []string{"names " + h.rel("v2") + " now, not " + h.rel("v3"), "nothing changed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	assertUnchanged(t, before, h.root)

	// Planned from where it stands: switched.
	if _, err := SwitchFrom(Local{}, h.link, h.rel("v2"), h.rel("v1")); err != nil {
		t.Fatal(err)
	}
	if got := readlink(t, h.link); got != "releases/v1" {
		t.Errorf("link -> %s, want releases/v1", got)
	}
}

// TestExecuteLinkMovedAfterPlan: a deploy that lands between planning and
// switching (here run by a before_code data step) is not undone: the host
// keeps the new release and the rollback fails saying why.
func TestExecuteLinkMovedAfterPlan(t *testing.T) {
	n := testutil.StartNATS(t)
	h := deployed(t)
	mkdir(t, h.rel("v3"))
	rules := loadRules(t, policyYAML("shop", "shop", h,
		"data: {command: "+yamlList("ln", "-sfn", "releases/v3", h.link)+", run_on: local, order: before_code, timeout: 30s}"))
	e, rec, _ := newExecutor(t, n, rules)

	res := e.Execute(ctxFor(t), request("rb-moved"))

	if res.Status != ResultFailed {
		t.Fatalf("result %s, want %s", res.Status, ResultFailed)
	}
	if got := readlink(t, h.link); got != "releases/v3" {
		t.Errorf("link -> %s, want releases/v3 (the deploy that came in between)", got)
	}
	if exists(t, h.rel("v2")+"/"+MarkerFile) {
		t.Error("v2 marked rolled back although the host never left it through this rollback")
	}
	host := one(t, rec.all(), audit.RollbackHost)
	if msg := host.Message; !strings.Contains(msg, "not "+h.rel("v2")+" as it did when the rollback was planned") {
		t.Errorf("rollback.host %q does not say the link moved", msg)
	}
	if sw, _ := host.Detail["switched"].(bool); sw {
		t.Error("rollback.host says switched")
	}
	failed := one(t, rec.all(), audit.RollbackFailed)
	if !strings.Contains(failed.Message, "v3") {
		t.Errorf("rollback.failed %q does not say where the link stands", failed.Message)
	}
}
