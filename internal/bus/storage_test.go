package bus

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The embedded server's own storage limit is reported full exactly when
// JetStream refuses the next message with "insufficient resources".
func TestEmbeddedStorageLimit(t *testing.T) {
	dir := t.TempDir()
	e, err := StartEmbedded("127.0.0.1:0", dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Stop()
	if l := e.StorageLimit(); l != nil {
		t.Fatalf("fresh server: %+v, want no limit reached", l)
	}
	// The same server with 64 KiB for JetStream instead of 75% of the disk.
	if err := e.ShutdownJetStream(); err != nil {
		t.Fatal(err)
	}
	if err := e.EnableJetStream(&server.JetStreamConfig{StoreDir: e.log.dir, MaxStore: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(e.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}}); err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 900)
	var refused error
	var before, took []Limit // the limits before the refused message, and before the last one taken
	for i := 0; refused == nil && i < 200; i++ {
		took, before = before, e.StorageLimit()
		_, refused = js.Publish(ctx, "s", msg)
	}
	if refused == nil || !strings.Contains(refused.Error(), "insufficient resources") {
		t.Fatalf("64 KiB of 900-byte messages: %v, want insufficient resources", refused)
	}
	if len(before) != 1 || !before[0].Full || before[0].Scope != "server" || before[0].Max != 64<<10 {
		t.Errorf("limit before the refused message: %+v, want the server's 64 KiB, full", before)
	}
	if len(took) != 1 || took[0].Full {
		t.Errorf("limit before the last message taken: %+v, want nearly full, not full", took)
	}
	t.Logf("taken at %d, refused at %d of %d bytes", took[0].Used, before[0].Used, before[0].Max)
}
