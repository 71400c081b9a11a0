package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// holdRules is a policy per service: shop holds its rollbacks for an hour
// (cancel them), cart asks for an answer (approve it).
func holdRules(t *testing.T, dir string) string {
	t.Helper()
	rules := filepath.Join(dir, "rules.yml")
	policy := func(service, extra string) string {
		return fmt.Sprintf(`  - name: %s
    match: {service: %s, environment: production}
    checks:
      - {name: up, query: up, min: 1}
    rollback:
      link: %s/%s/current
%s`, service, service, dir, service, extra)
	}
	writeFile(t, rules, "policies:\n"+
		policy("shop", "      hold: 1h\n")+
		policy("cart", "      mode: ask\n      hold: 1h\n"))
	return rules
}

// heldRequest asks for a manual rollback of service and waits for its
// rollback.held; it returns the request id.
func heldRequest(t *testing.T, natsURL, service, version string) string {
	t.Helper()
	code, out, errOut := cli(t, "rollback", "--nats.url="+natsURL, "--service="+service, "--environment=production",
		"--version="+version, "--reason=checkout is broken")
	if code != 0 {
		t.Fatalf("watcher rollback: exit %d: %s", code, errOut)
	}
	id := strings.TrimSpace(out)
	testutil.Eventually(t, 10*time.Second, "rollback.held of "+id, func() bool {
		return hasKind(byRequest(historyURL(t, natsURL, "--service="+service), id), audit.RollbackHeld)
	})
	return id
}

// TestCancelAndApprove: `watcher cancel` and `watcher approve` against a
// running watcher: a cancelled rollback never executes, an approved one
// executes at once, and deciding again, or on an unknown request, exits 1
// with one line saying why.
func TestCancelAndApprove(t *testing.T) {
	dir := t.TempDir()
	shop := release(t, filepath.Join(dir, "shop"), "v1", "v2")
	cart := release(t, filepath.Join(dir, "cart"), "v1", "v2")
	w := startWatcher(t, "--rules="+holdRules(t, dir), "--prometheus.url=http://127.0.0.1:1")
	url := "nats://" + w.nats

	id := heldRequest(t, url, "shop", "v2")
	code, out, errOut := cli(t, "cancel", "--nats.url="+url, "--request="+id, "--reason=false alarm: the dip is the provider", "--by=alice")
	if code != 0 || !strings.HasPrefix(out, "cancelled rollback request "+id+" of shop in production (held since ") {
		t.Fatalf("watcher cancel: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	recs := byRequest(history(t, w.nats, "--service=shop"), id)
	if got := strings.Join(kinds(recs), " "); got != "rollback.held rollback.cancelled" {
		t.Errorf("audit of the cancelled request: %s", got)
	}
	for _, r := range recs {
		if d, ok := r.RollbackDecision(); ok && (d.By != "alice" || d.Via != "cli" || d.Reason != "false alarm: the dip is the provider") {
			t.Errorf("rollback.cancelled detail %+v", d)
		}
	}
	if got := readlink(t, shop); got != "v2" {
		t.Errorf("shop's link on %s after the cancel, want v2", got)
	}

	id2 := heldRequest(t, url, "cart", "v2")
	code, out, errOut = cli(t, "approve", "--nats.url="+url, "--request="+id2, "--reason=yes, roll it back")
	if code != 0 || !strings.HasPrefix(out, "approved rollback request "+id2+" of cart in production: executing now") {
		t.Fatalf("watcher approve: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	testutil.Eventually(t, 10*time.Second, "cart rolled back", func() bool { return readlink(t, cart) == "v1" })

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"cancel again", []string{"cancel", "--request=" + id, "--reason=again"}, "rollback request no longer held: " + id + " was cancelled by alice (cli) at "},
		{"cancel an approved one", []string{"cancel", "--request=" + id2, "--reason=too late"}, "rollback request no longer held: " + id2 + " was approved by "},
		{"approve an unknown one", []string{"approve", "--request=rb-nope", "--reason=?"}, "unknown rollback request rb-nope: no such request has been held"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := cli(t, append(tc.args, "--nats.url="+url)...)
			if code != 1 || out != "" || !strings.HasPrefix(errOut, "watcher "+tc.args[0]+": "+tc.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want 1 and %q", code, out, errOut, tc.want)
			}
			assertOneLine(t, errOut)
		})
	}
}

// TestKilledMidHoldExecutesOnce: the watcher (with its embedded NATS) is
// SIGKILLed while a rollback is held, and started again on the same
// storage. The request executes once, at the execute_at it was announced
// with, and rollback.held is not recorded again.
func TestKilledMidHoldExecutesOnce(t *testing.T) {
	dir := t.TempDir()
	link := release(t, filepath.Join(dir, "shop"), "v1", "v2")
	rules := filepath.Join(dir, "rules.yml")
	writeFile(t, rules, fmt.Sprintf(`policies:
  - name: shop
    match: {service: shop, environment: production}
    checks:
      - {name: up, query: up, min: 1}
    rollback:
      link: %s/shop/current
      hold: 4s
`, dir))
	natsAddr := testutil.FreeAddr(t)
	url := "nats://" + natsAddr
	args := []string{"--nats.listen=" + natsAddr, "--storage.path=" + filepath.Join(dir, "data"), "--rules=" + rules, "--prometheus.url=http://127.0.0.1:1"}
	first := startProc(t, args...)
	id := heldRequest(t, url, "shop", "v2")
	var held audit.RollbackHeldDetail
	for _, r := range byRequest(historyURL(t, url, "--service=shop"), id) {
		held, _ = r.RollbackHeld()
	}
	first.kill(t)
	<-first.exited

	startProc(t, args...)
	var recs []audit.Record
	testutil.Eventually(t, 20*time.Second, "rollback.completed after the restart", func() bool {
		recs = byRequest(historyURL(t, url, "--service=shop"), id)
		return hasKind(recs, audit.RollbackCompleted)
	})
	if got := strings.Join(kinds(recs), " "); got != "rollback.held rollback.requested rollback.host rollback.completed" {
		t.Errorf("audit of the request: %s", got)
	}
	done := recs[len(recs)-1]
	// Late by an AckWait (30s here) is what a restarted server's own
	// redelivery would give.
	if done.Time.Before(held.ExecuteAt) || done.Time.After(held.ExecuteAt.Add(8*time.Second)) {
		t.Errorf("executed at %s, want at its execute_at %s", done.Time, held.ExecuteAt)
	}
	if got := readlink(t, link); got != "v1" {
		t.Errorf("link on %s, want v1", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "shop", "releases", "v2", "ROLLED_BACK")); err != nil {
		t.Errorf("v2 not marked rolled back: %v", err)
	}
}
