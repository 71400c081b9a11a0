package rollback

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// startExecutor consumes ROLLBACKS as one replica would, with a short
// AckWait so that a request left unacknowledged by a dead executor comes
// back within the test. cancel is its death: nothing is acked on the way
// out.
func startExecutor(t *testing.T, n *testutil.NATS, rules func() *policy.Set, name string) context.CancelFunc {
	t.Helper()
	e := &Executor{JS: n.JS, Policies: rules, Audit: &audit.Publisher{JS: n.JS}, AnnounceSource: "test", Replica: name, AckWait: time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); e.Wait() })
	return cancel
}

func publishRequest(t *testing.T, n *testutil.NATS, id, msgID string) {
	t.Helper()
	b, err := json.Marshal(request(id))
	if err != nil {
		t.Fatal(err)
	}
	msg := &nats.Msg{Subject: "rollbacks.production.shop", Data: b, Header: nats.Header{}}
	msg.Header.Set(nats.MsgIdHdr, msgID)
	if _, err := n.JS.PublishMsg(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
}

func auditOf(t *testing.T, n *testutil.NATS) []audit.Record {
	t.Helper()
	recs, err := audit.Read(t.Context(), n.JS, audit.Filter{Service: "shop", Environment: "production"})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestRequestExecutedOnceAcrossCrash: an executor dies in the middle of a
// rollback (here in the after command, the link switched and the
// before_code data step done); the request comes back to another executor,
// which finishes it without switching the host again or running the data
// step a second time, runs the after command that the crash cut short to
// its end, and the audit stream holds one record of each step.
func TestRequestExecutedOnceAcrossCrash(t *testing.T) {
	n := testutil.StartNATS(t)
	h := deployed(t)
	dataRuns := filepath.Join(t.TempDir(), "data-runs")
	afterGate := filepath.Join(t.TempDir(), "after-may-finish")
	afterRuns := filepath.Join(t.TempDir(), "after-runs")
	rules := loadRules(t, policyYAML("shop", "shop", h,
		"data: {command: "+yamlList("sh", "-c", `echo "$1" >> "$2"`, "sh", "{{ .PreviousVersion }}", dataRuns)+", run_on: local, order: before_code, timeout: 30s}",
		// The first executor hangs here, after its switch, until killed;
		// the second finds the host rolled back and marked, but no record
		// that the after command finished: it runs it again, to its end.
		"after: "+yamlList("sh", "-c", `while [ ! -e "$1" ]; do sleep 0.05; done; echo ran >> "$2"`, "sh", afterGate, afterRuns),
	))

	die := startExecutor(t, n, rules, "a")
	publishRequest(t, n, "rb-crash", "rb-crash")
	testutil.Eventually(t, 10*time.Second, "the first executor to switch the link", func() bool {
		s, _ := os.Readlink(h.link)
		return s == "releases/v1" && exists(t, filepath.Join(h.rel("v2"), MarkerFile))
	})
	time.Sleep(100 * time.Millisecond) // into the after command
	die()
	writeFile(t, afterGate, "")

	startExecutor(t, n, rules, "b")
	var recs []audit.Record
	testutil.Eventually(t, 15*time.Second, "rollback.completed after the redelivery", func() bool {
		recs = auditOf(t, n)
		return len(recs) > 0 && recs[len(recs)-1].Kind == audit.RollbackCompleted
	})
	if got := kinds(recs); strings.Join(got, " ") != "rollback.requested rollback.host rollback.completed" {
		t.Errorf("audit kinds %v, want one of each step", got)
	}
	if s := readlink(t, h.link); s != "releases/v1" {
		t.Errorf("link -> %s, want releases/v1", s)
	}
	if got := readFile(t, dataRuns); got != "v1\n" {
		t.Errorf("data step ran %q, want once (v1)", got)
	}
	if got := readFile(t, afterRuns); got != "ran\n" {
		t.Errorf("after command finished %d times, want once", strings.Count(got, "ran"))
	}
	done := recs[len(recs)-1]
	if d, _ := json.Marshal(done.Detail["data"]); !strings.Contains(string(d), "earlier attempt") {
		t.Errorf("rollback.completed data %s does not say the data step ran in an earlier attempt", d)
	}

	// Published again, past the stream's duplicate window (another
	// message id): executed already, so nothing happens.
	publishRequest(t, n, "rb-crash", "rb-crash-again")
	time.Sleep(1500 * time.Millisecond)
	if got := len(auditOf(t, n)); got != len(recs) {
		t.Errorf("the request published again wrote %d more audit records", got-len(recs))
	}
	if got := readFile(t, dataRuns); got != "v1\n" {
		t.Errorf("data step ran %q after the request came again", got)
	}
}
