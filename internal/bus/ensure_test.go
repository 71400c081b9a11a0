package bus

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"request timed out", context.DeadlineExceeded, true},
		{"nats timeout", nats.ErrTimeout, true},
		{"no responders", nats.ErrNoResponders, true},
		{"concurrent creator", jetstream.ErrStreamNameAlreadyInUse, true},
		{"cluster not available", &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{"insufficient resources while peers join", &jetstream.APIError{Code: 503, ErrorCode: 10023, Description: "insufficient resources"}, true},
		{"wrapped timeout", fmt.Errorf("x: %w", context.DeadlineExceeded), true},
		{"no JetStream", jetstream.ErrJetStreamNotEnabled, false},
		{"no JetStream for the account", jetstream.ErrJetStreamNotEnabledForAccount, false},
		{"bad request", &jetstream.APIError{Code: 400, ErrorCode: 10003, Description: "bad request"}, false},
		{"replicas on a single server", &jetstream.APIError{Code: 500, ErrorCode: replicasNotSupported, Description: "replicas > 1 not supported in non-clustered mode"}, false},
		{"bad bucket name", jetstream.ErrInvalidBucketName, false},
		{"connection closed", nats.ErrConnectionClosed, false},
	} {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("%s: retryable(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// A server that will never do what is asked fails the setup at once,
// not after SetupTimeout.
func TestEnsureFailsAtOnceWhenRetryingCannotHelp(t *testing.T) {
	noJS := runServer(t, func(o *server.Options) { o.JetStream = false })
	single := startEmbedded(t)
	for _, tc := range []struct {
		name string
		url  string
		cfg  jetstream.KeyValueConfig
	}{
		{"no JetStream", noJS.ClientURL(), jetstream.KeyValueConfig{Bucket: "B"}},
		{"3 replicas on one server", single.ClientURL(), jetstream.KeyValueConfig{Bucket: "B", Replicas: 3}},
	} {
		js := jetStream(t, tc.url)
		ctx, cancel := context.WithTimeout(context.Background(), SetupTimeout)
		start := time.Now()
		_, err := EnsureKeyValue(ctx, js, tc.cfg)
		cancel()
		if err == nil {
			t.Errorf("%s: EnsureKeyValue succeeded", tc.name)
			continue
		}
		if errors.Is(err, context.DeadlineExceeded) || time.Since(start) > SetupTimeout/2 {
			t.Errorf("%s: retried until the deadline: %v", tc.name, err)
		}
		t.Logf("%s: %v", tc.name, err)
	}
}
