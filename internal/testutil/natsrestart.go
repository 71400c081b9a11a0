package testutil

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/bus"
)

// RestartableNATS is a nats-server with JetStream on a fixed loopback port
// and a fixed store directory, which a test can stop (an outage: clients
// lose their connection, nothing listens on the port) and start again on
// the same port with the same directory, as a restarted nats-server would
// come back. Its client connection reconnects by itself.
type RestartableNATS struct {
	// Addr is host:port, the same across restarts; URL is nats://Addr.
	Addr string
	URL  string
	// Dir is the JetStream store directory, the same across restarts.
	Dir string
	// Conn and JS are the test's own client, which reconnects forever.
	Conn *nats.Conn
	JS   jetstream.JetStream

	t   testing.TB
	mu  sync.Mutex
	srv *bus.Embedded
}

// StartRestartableNATS starts the server on a free port with its store in
// t.TempDir() and creates the watcher's streams.
func StartRestartableNATS(t testing.TB) *RestartableNATS {
	t.Helper()
	n := &RestartableNATS{Addr: FreeAddr(t), Dir: t.TempDir(), t: t}
	n.URL = "nats://" + n.Addr
	n.Start()
	t.Cleanup(n.Stop)
	nc, err := nats.Connect(n.URL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connecting to NATS at %s: %v", n.URL, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	n.Conn, n.JS = nc, js
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	return n
}

// Start starts the server on Addr with its store in Dir. It fails the test
// if the port cannot be bound again within 10s.
func (n *RestartableNATS) Start() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		return
	}
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		n.srv, err = bus.StartEmbedded(n.Addr, n.Dir, slog.New(slog.DiscardHandler))
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("restarting NATS on %s with store %s: %v", n.Addr, n.Dir, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop shuts the server down and waits until it has; it is safe to call
// when it is stopped already.
func (n *RestartableNATS) Stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv == nil {
		return
	}
	n.srv.Stop()
	n.srv = nil
}

// WaitConnected waits until the test's own client is connected again
// after a restart.
func (n *RestartableNATS) WaitConnected(d time.Duration) {
	n.t.Helper()
	Eventually(n.t, d, "the test's NATS client reconnected", func() bool { return n.Conn.Status() == nats.CONNECTED })
}
