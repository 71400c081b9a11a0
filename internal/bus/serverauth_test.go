package bus

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// securedServer starts the embedded server with a deploy tool's user
// (ci-shop: deploys.prod.shop only, by password) and an operator's
// (rollbacks.>, by nkey), logging at debug level into the returned buffer.
func securedServer(t *testing.T) (e *Embedded, ciPassword string, opsSeed string, log *lockedBuffer) {
	t.Helper()
	dir := t.TempDir()
	ciPassword = "ci-shop-s3cret-" + strings.Repeat("x", 8)
	ops, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := ops.PublicKey()
	seed, _ := ops.Seed()
	log = &lockedBuffer{}
	sec := ServerOptions{Users: []ServerUser{
		{User: "ci-shop", PasswordFile: writeFile(t, dir, "ci-shop.pass", ciPassword+"\n"),
			Publish: []string{"deploys.prod.shop"}, Subscribe: []string{"_INBOX.>"}},
		{NKey: pub, Publish: []string{"rollbacks.>"}, Subscribe: []string{"_INBOX.>"}},
	}}
	e, err = StartEmbeddedWith("127.0.0.1:0", t.TempDir(), sec, slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatalf("StartEmbeddedWith: %v", err)
	}
	t.Cleanup(e.Stop)
	// The watcher's own connection needs no credential from the file.
	nc, err := Connect(Options{URL: e.ClientURL()}, "watcher run", e.ClientOptions()...)
	if err != nil {
		t.Fatalf("the watcher's own connection: %v", err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := EnsureStreams(ctx, js, 1); err != nil {
		t.Fatalf("the watcher creating its streams: %v", err)
	}
	return e, ciPassword, string(seed), log
}

// connectAs connects with o and records the permission violations the
// server reports.
func connectAs(t *testing.T, o Options) (jetstream.JetStream, chan error, error) {
	t.Helper()
	violations := make(chan error, 10)
	nc, err := Connect(o, "test", nats.MaxReconnects(0), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			violations <- err
		}
	}))
	if err != nil {
		return nil, nil, err
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return js, violations, nil
}

// publishDenied publishes on subj and expects the server to refuse it as
// a permission violation.
func publishDenied(t *testing.T, who string, js jetstream.JetStream, violations chan error, subj string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, subj, []byte("{}")); err == nil {
		t.Errorf("%s published on %s", who, subj)
		return
	}
	select {
	case err := <-violations:
		if !strings.Contains(err.Error(), subj) {
			t.Errorf("%s on %s: violation %q does not name the subject", who, subj, err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("%s on %s: no permission violation reported", who, subj)
	}
}

func TestEmbeddedUsersAndPermissions(t *testing.T) {
	e, ciPassword, opsSeed, log := securedServer(t)
	url := e.ClientURL()
	dir := t.TempDir()

	// Anonymous clients are refused once users are configured: nobody
	// reaches rollbacks.> around the HTTP API's basic auth.
	if _, _, err := connectAs(t, Options{URL: url}); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("anonymous connection: %v, want an authorization error", err)
	}
	if _, _, err := connectAs(t, Options{URL: url, User: "ci-shop", PasswordFile: writeFile(t, dir, "wrong", "guess")}); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("wrong password: %v, want an authorization error", err)
	}

	ci, ciViolations, err := connectAs(t, Options{URL: url, User: "ci-shop", PasswordFile: writeFile(t, dir, "ci", ciPassword)})
	if err != nil {
		t.Fatalf("ci-shop: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := ci.Publish(ctx, "deploys.prod.shop", []byte("{}")); err != nil {
		t.Errorf("ci-shop publishing on deploys.prod.shop with an ack: %v", err)
	}
	publishDenied(t, "ci-shop", ci, ciViolations, "deploys.prod.other")
	publishDenied(t, "ci-shop", ci, ciViolations, "rollbacks.prod.shop")
	// Nor may it read the streams or change them through the API.
	publishDenied(t, "ci-shop", ci, ciViolations, "$JS.API.STREAM.DELETE.DEPLOYS")

	ops, opsViolations, err := connectAs(t, Options{URL: url, NKeyFile: writeFile(t, dir, "ops.nk", opsSeed)})
	if err != nil {
		t.Fatalf("ops by nkey: %v", err)
	}
	if _, err := ops.Publish(ctx, "rollbacks.prod.shop", []byte("{}")); err != nil {
		t.Errorf("ops publishing on rollbacks.prod.shop: %v", err)
	}
	publishDenied(t, "ops", ops, opsViolations, "deploys.prod.shop")

	// ci-shop may listen on _INBOX.> for its acks, but the answers to the
	// watcher's own requests are not there.
	snoop, err := ci.Conn().SubscribeSync("_INBOX.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := ci.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	// Only the allowed messages were stored.
	nc, err := Connect(Options{URL: url}, "watcher run", e.ClientOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	defer func() {
		if m, err := snoop.NextMsg(500 * time.Millisecond); err == nil {
			t.Errorf("ci-shop saw an answer to the watcher on %s", m.Subject)
		}
	}()
	for stream, want := range map[string]uint64{DeploysStream: 1, RollbacksStream: 1} {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		if n := s.CachedInfo().State.Msgs; n != want {
			t.Errorf("stream %s holds %d messages, want %d", stream, n, want)
		}
	}

	// The watcher's internal user may only connect in-process: its
	// password is no key to the TCP port.
	if _, _, err := connectAs(t, Options{URL: url, User: internalUser, PasswordFile: writeFile(t, dir, "internal", e.internalPassword)}); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("internal user over TCP: %v, want an authorization error", err)
	}

	for name, secret := range map[string]string{"ci-shop's password": ciPassword, "the internal password": e.internalPassword, "the ops seed": opsSeed} {
		if strings.Contains(log.String(), secret) {
			t.Errorf("the log holds %s", name)
		}
	}
	if !strings.Contains(e.Security(), "ci-shop") || strings.Contains(e.Security(), ciPassword) {
		t.Errorf("Security() = %q", e.Security())
	}
}

// Without users the embedded server stays open, as before: `make run`
// and the quick start need no credentials.
func TestEmbeddedWithoutUsersIsOpen(t *testing.T) {
	e := startEmbedded(t)
	if _, _, err := connectAs(t, Options{URL: e.ClientURL()}); err != nil {
		t.Errorf("anonymous connection to an embedded server without users: %v", err)
	}
}

func TestEmbeddedPasswordFileProblems(t *testing.T) {
	dir := t.TempDir()
	empty := writeFile(t, dir, "empty", "\n")
	for _, tc := range []struct {
		file, want string
	}{
		{filepath.Join(dir, "absent"), "user ci: reading secret"},
		{empty, "user ci: password_file " + empty + " is empty"},
	} {
		_, err := StartEmbeddedWith("127.0.0.1:0", t.TempDir(), ServerOptions{Users: []ServerUser{{User: "ci", PasswordFile: tc.file}}}, slog.New(slog.DiscardHandler))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("password_file %s: %v, want %q", tc.file, err, tc.want)
		}
		if err != nil && errors.Is(err, os.ErrNotExist) != strings.Contains(tc.file, "absent") {
			t.Errorf("password_file %s: %v", tc.file, err)
		}
	}
}
