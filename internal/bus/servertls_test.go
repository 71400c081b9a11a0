package bus_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/common/config"

	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

func TestEmbeddedTLS(t *testing.T) {
	pki := testutil.NewPKI(t)
	cert, key := pki.Server(t, "server")
	clientCert, clientKey := pki.Client(t, "ci-shop")
	for _, tc := range []struct {
		name          string
		clientCA      string
		withClientCrt bool
	}{
		{"server certificate", "", false},
		{"client certificates required", pki.CAFile, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := bus.StartEmbeddedWith("127.0.0.1:0", t.TempDir(), bus.ServerOptions{
				TLS: bus.ServerTLS{CertFile: cert, KeyFile: key, ClientCAFile: tc.clientCA},
			}, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(e.Stop)
			url := e.ClientURL()
			if !strings.HasPrefix(url, "tls://") {
				t.Errorf("client URL %s, want tls://", url)
			}
			plain := "nats://" + strings.TrimPrefix(url, "tls://")
			connect := func(o bus.Options) error {
				nc, err := bus.Connect(o, "test", nats.MaxReconnects(0))
				if err == nil {
					nc.Close()
				}
				return err
			}
			// A client without TLS is refused.
			if err := connect(bus.Options{URL: plain}); err == nil {
				t.Error("a plain client connected to a server that requires TLS")
			} else if !strings.Contains(err.Error(), "tls_config") {
				t.Errorf("plain client: %v, want the hint to check tls_config", err)
			}
			// One that trusts the CA gets in (with its certificate when
			// the server asks for one).
			tlsCfg := config.TLSConfig{CAFile: pki.CAFile}
			if tc.withClientCrt {
				if err := connect(bus.Options{URL: url, TLS: tlsCfg}); err == nil {
					t.Error("a client without a certificate connected to a server that requires one")
				}
				tlsCfg.CertFile, tlsCfg.KeyFile = clientCert, clientKey
			}
			if err := connect(bus.Options{URL: url, TLS: tlsCfg}); err != nil {
				t.Errorf("TLS client with the CA: %v", err)
			}
			// One that does not trust it refuses the server.
			if err := connect(bus.Options{URL: url}); err == nil {
				t.Error("a client without the CA accepted the server's certificate")
			}
			// The watcher's own in-process connection needs none of it.
			nc, err := bus.Connect(bus.Options{URL: plain}, "watcher run", e.ClientOptions()...)
			if err != nil {
				t.Fatalf("in-process connection: %v", err)
			}
			nc.Close()
		})
	}
}
