package bus

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// SetupTimeout bounds how long EnsureStreams, EnsureKeyValue and
// EnsureConsumer keep trying: long enough for a cluster that starts with
// its watchers to elect its leaders, short enough that a watcher pointed at
// the wrong server says so.
const SetupTimeout = 60 * time.Second

// attemptTimeout bounds one request to the JetStream API. A cluster still
// electing its meta leader, or handling the same create from another
// replica, may never answer a request: the next attempt asks again.
const attemptTimeout = 5 * time.Second

// replicasNotSupported is nats-server's "replicas > 1 not supported in
// non-clustered mode" (JSStreamReplicasNotSupportedErr), which nats.go has
// no error value for.
const replicasNotSupported jetstream.ErrorCode = 10074

// EnsureKeyValue creates bucket cfg.Bucket, or updates it to cfg when it
// exists. Replicas that start together all do this at once, on a cluster
// that may still be electing its leaders: a request that times out (even
// one the server carried out), a concurrent creator and a cluster not
// available yet are retried with backoff until SetupTimeout or ctx ends.
// A retry is create-or-update again, which finds the bucket that a timed
// out attempt created and leaves it as it is when its config is cfg.
func EnsureKeyValue(ctx context.Context, js jetstream.KeyValueManager, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return retry(ctx, "creating KV bucket "+cfg.Bucket, func(ctx context.Context) (jetstream.KeyValue, error) {
		return js.CreateOrUpdateKeyValue(ctx, cfg)
	})
}

// EnsureConsumer creates or updates consumer cfg.Durable on stream, retrying
// as EnsureKeyValue does.
func EnsureConsumer(ctx context.Context, js jetstream.StreamConsumerManager, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	return retry(ctx, fmt.Sprintf("creating consumer %s on %s", cfg.Durable, stream), func(ctx context.Context) (jetstream.Consumer, error) {
		return js.CreateOrUpdateConsumer(ctx, stream, cfg)
	})
}

// ensureStream creates stream cfg.Name when it is missing and checks that
// an existing one captures the subjects the watcher uses, retrying as
// EnsureKeyValue does. An existing stream is left as the operator
// configured it.
func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	_, err := retry(ctx, "creating stream "+cfg.Name, func(ctx context.Context) (struct{}, error) {
		s, err := js.Stream(ctx, cfg.Name)
		if errors.Is(err, nats.ErrNoResponders) {
			// A server without JetStream has no responder for a stream
			// look-up, but says so for the account info (as
			// CreateOrUpdateKeyValue asks first): no use retrying then.
			if _, aerr := js.AccountInfo(ctx); aerr != nil && !retryable(aerr) {
				return struct{}{}, aerr
			}
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			// "Already in use" means another replica created it since
			// the look-up, perhaps with other settings: look it up again.
			_, err = js.CreateStream(ctx, cfg)
			return struct{}{}, err
		}
		if err != nil {
			return struct{}{}, err
		}
		if !coversSubject(s.CachedInfo().Config.Subjects, cfg.Subjects[0]) {
			return struct{}{}, permanent{fmt.Errorf("stream %s exists but does not capture %s (it has %v): add the subject to it or delete it", cfg.Name, cfg.Subjects[0], s.CachedInfo().Config.Subjects)}
		}
		return struct{}{}, nil
	})
	return err
}

// permanent marks an error that no retry can cure.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// retry calls f, each time with attemptTimeout, until it succeeds, fails
// for good, or SetupTimeout or ctx ends. The error says what was being
// done, the last failure and how often it was tried.
func retry[T any](ctx context.Context, what string, f func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, SetupTimeout)
	defer cancel()
	start := time.Now()
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, cancelAttempt := context.WithTimeout(ctx, attemptTimeout)
		v, err := f(actx)
		cancelAttempt()
		if err == nil {
			return v, nil
		}
		var p permanent
		if errors.As(err, &p) {
			return v, fmt.Errorf("%s: %w", what, p.error)
		}
		if !retryable(err) {
			return v, fmt.Errorf("%s: %w%s", what, err, setupHint(err))
		}
		// Jitter keeps replicas that started together from asking again
		// together.
		d := wait/2 + rand.N(wait)
		select {
		case <-ctx.Done():
			return v, fmt.Errorf("%s: %w (tried %d times in %s; is the JetStream cluster up, with a leader, and reachable?)",
				what, err, attempt, time.Since(start).Round(time.Millisecond))
		case <-time.After(d):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// retryable says whether asking again may succeed: requests that went
// unanswered, a cluster not available yet, a concurrent creator. A
// request the server rejected as bad, or a server without JetStream, will
// be rejected again.
func retryable(err error) bool {
	switch {
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount),
		errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrBadSubject),
		errors.Is(err, jetstream.ErrInvalidBucketName), errors.Is(err, jetstream.ErrInvalidStreamName),
		errors.Is(err, jetstream.ErrHistoryTooLarge):
		return false
	case errors.Is(err, jetstream.ErrStreamNameAlreadyInUse):
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		if apiErr.ErrorCode == replicasNotSupported {
			return false
		}
		// 503 "JetStream system temporarily unavailable", 500 "leader
		// gone", 408 request timeout: the cluster is settling.
		return apiErr.Code >= 500 || apiErr.Code == 408
	}
	return true // timeouts, no responders, a lost connection being restored
}

func setupHint(err error) string {
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return " (enable JetStream on the NATS server, or for this user's account)"
	}
	return ""
}
