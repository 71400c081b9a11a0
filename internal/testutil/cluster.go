package testutil

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/bus"
)

// Cluster is a JetStream cluster of nats-servers on loopback, in the test
// process.
type Cluster struct {
	Servers []*server.Server
	// URL lists every server's client URL, comma-separated, as --nats.url
	// takes it.
	URL string
	JS  jetstream.JetStream
}

// StartCluster starts n clustered nats-servers with JetStream under
// t.TempDir() and creates the watcher's streams at replication factor n.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := StartFreshCluster(t, n)
	// The meta leader is elected after the routes are up; until then
	// stream creation fails.
	var last error
	Eventually(t, 30*time.Second, "JetStream cluster ready", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		last = bus.EnsureStreams(ctx, c.JS, n)
		return last == nil
	})
	return c
}

// StartFreshCluster starts n clustered nats-servers with JetStream under
// t.TempDir() and returns at once: no stream exists yet and the meta
// leader may still be in election, as when a cluster and its watchers
// start together.
func StartFreshCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	routes := make([]string, n)
	clusterPorts := make([]int, n)
	for i := range n {
		_, p, _ := net.SplitHostPort(FreeAddr(t))
		clusterPorts[i], _ = strconv.Atoi(p)
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", clusterPorts[i])
	}
	var routeURLs []*url.URL
	for _, r := range routes {
		u, _ := url.Parse(r)
		routeURLs = append(routeURLs, u)
	}
	c := &Cluster{}
	var urls []string
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			MaxPayload: bus.MaxPayload,
			NoSigs:     true,
			Cluster: server.ClusterOpts{
				Name: "watcher-test",
				Host: "127.0.0.1",
				Port: clusterPorts[i],
			},
			Routes: routeURLs,
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("nats-server n%d: %v", i+1, err)
		}
		s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		if !s.ReadyForConnections(15 * time.Second) {
			t.Fatalf("nats-server n%d not ready", i+1)
		}
		c.Servers = append(c.Servers, s)
		urls = append(urls, s.ClientURL())
	}
	c.URL = strings.Join(urls, ",")
	nc, err := nats.Connect(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if c.JS, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return c
}
