package notify

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/config"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestMain runs the child process of TestNoDuplicatesAcrossKill when the
// test binary is started as one.
func TestMain(m *testing.M) {
	if cfg := os.Getenv("NOTIFY_TEST_CONFIG"); cfg != "" {
		if err := runChild(cfg, os.Getenv("NOTIFY_TEST_NATS")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		select {} // notifying until SIGKILL
	}
	os.Exit(m.Run())
}

// runChild starts a notifier as `watcher run` would, from a config file.
func runChild(cfgFile, natsURL string) error {
	targets, err := loadTargets(cfgFile)
	if err != nil {
		return err
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	n := &Notifier{JS: js, Targets: targets, Audit: &audit.Publisher{JS: js}}
	fast(n)
	return n.Start(context.Background())
}

// A notifier killed with records half notified (some targets sent, one
// request in flight) and started again sends every record to every target
// exactly once: the receivers, counting by X-Watcher-Delivery, see no
// duplicate and miss nothing.
func TestNoDuplicatesAcrossKill(t *testing.T) {
	nt := testutil.StartNATS(t)
	flaky, steady := newReceiver(t, "k1"), newReceiver(t, "k2")
	const firstAccepted, total = 3, 8
	flaky.hangAfter = firstAccepted

	dir := t.TempDir()
	for name, content := range map[string]string{"flaky-url": flaky.URL, "steady-url": steady.URL, "k1": "k1", "k2": "k2"} {
		if err := writeFile(filepath.Join(dir, name), content); err != nil {
			t.Fatal(err)
		}
	}
	cfgFile := filepath.Join(dir, "watcher.yml")
	if err := writeFile(cfgFile, `notify:
  - {name: flaky, kind: webhook, url_file: flaky-url, secret_file: k1, on: [run.failed]}
  - {name: steady, kind: webhook, url_file: steady-url, secret_file: k2, on: [run.failed]}
`); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "NOTIFY_TEST_CONFIG="+cfgFile, "NOTIFY_TEST_NATS="+nt.URL)
	out := &logBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	testutil.Eventually(t, 60*time.Second, "the child's consumer", func() bool {
		_, err := nt.JS.Consumer(context.Background(), bus.AuditStream, DefaultConsumer)
		return err == nil
	})
	for i := range total {
		publish(t, nt.JS, failedRun("shop", "production", "r"+strconv.Itoa(i)))
	}
	kv, err := nt.JS.KeyValue(context.Background(), DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	// Every record sent to steady and noted, three to flaky, and flaky
	// holding the others' requests open when the child dies.
	testutil.Eventually(t, 30*time.Second, "the child to be half way", func() bool {
		keys, _ := kv.Keys(context.Background())
		return len(keys) == total+firstAccepted && flaky.hanging.Load() > 0
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed = true
	testutil.Eventually(t, 10*time.Second, "the killed child's requests to end", func() bool { return flaky.hanging.Load() == 0 })
	if got := len(flaky.deliveries()); got != firstAccepted {
		t.Fatalf("flaky had %d deliveries before the kill, want %d; child output:\n%s", got, firstAccepted, out.String())
	}
	flaky.mu.Lock()
	flaky.hangAfter = 0
	flaky.mu.Unlock()

	targets, err := loadTargets(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	start(t, nt.JS, targets, nil)
	testutil.Eventually(t, 30*time.Second, "every record delivered to flaky", func() bool { return len(flaky.deliveries()) == total })
	idle(t, nt.JS, DefaultConsumer)

	for name, rc := range map[string]*receiver{"flaky": flaky, "steady": steady} {
		d := rc.deliveries()
		if len(d) != total {
			t.Errorf("%s: %d distinct deliveries, want %d", name, len(d), total)
		}
		for id, n := range d {
			if n != 1 {
				t.Errorf("%s: delivery %s received %d times", name, id, n)
			}
		}
		for _, req := range rc.requests() {
			if !req.signedOK {
				t.Errorf("%s: a request with a bad signature", name)
			}
		}
	}
}

func loadTargets(file string) ([]*Target, error) {
	cfg, err := config.Load(file)
	if err != nil {
		return nil, err
	}
	return Targets(cfg.Notify)
}
