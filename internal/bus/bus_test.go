package bus

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/common/config"

	"github.com/rollback-watcher/watcher/internal/events"
)

// runServer starts a real nats-server on a free loopback port with
// JetStream in t.TempDir(); mutate adds auth or TLS.
func runServer(t *testing.T, mutate func(*server.Options)) *server.Server {
	t.Helper()
	opts := &server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	}
	if mutate != nil {
		mutate(opts)
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready after 10s")
	}
	return s
}

func startEmbedded(t *testing.T) *Embedded {
	t.Helper()
	e, err := StartEmbedded("127.0.0.1:0", t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(e.Stop)
	return e
}

func jetStream(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := Connect(Options{URL: url}, "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// selfSigned makes a self-signed ECDSA certificate for 127.0.0.1 and
// localhost, and writes its PEM to dir/name.
func selfSigned(t *testing.T, dir, name string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "watcher test " + name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert, writeFile(t, dir, name, string(certPEM))
}

// freePort returns a loopback address on which nothing listens.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestConnectAuth(t *testing.T) {
	const (
		password = "pw-s3cret-9f2"
		token    = "tok-s3cret-77a"
	)
	dir := t.TempDir()
	// Trailing newlines, as editors and `echo` leave them, are trimmed.
	pwFile := writeFile(t, dir, "password", password+"\n")
	wrongPwFile := writeFile(t, dir, "wrong-password", "not-it\n")
	tokFile := writeFile(t, dir, "token", token+"\n")
	serverCert, caFile := selfSigned(t, dir, "ca.pem")
	_, otherCAFile := selfSigned(t, dir, "other-ca.pem")

	userSrv := runServer(t, func(o *server.Options) { o.Username, o.Password = "watcher", password })
	tokenSrv := runServer(t, func(o *server.Options) { o.Authorization = token })
	tlsSrv := runServer(t, func(o *server.Options) {
		o.TLS = true
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12}
	})
	// nats:// on purpose: the client must upgrade because the server
	// requires TLS; the tls:// case below asks for it.
	tlsURL := strings.Replace(tlsSrv.ClientURL(), "tls://", "nats://", 1)

	tests := []struct {
		name    string
		opts    Options
		wantErr []string // substrings of the error; nil: must connect
	}{
		{
			name: "user and password_file",
			opts: Options{URL: userSrv.ClientURL(), User: "watcher", PasswordFile: pwFile},
		},
		{
			name:    "user server without credentials",
			opts:    Options{URL: userSrv.ClientURL()},
			wantErr: []string{userSrv.ClientURL(), "authorization violation", "password_file"},
		},
		{
			name:    "wrong password",
			opts:    Options{URL: userSrv.ClientURL(), User: "watcher", PasswordFile: wrongPwFile},
			wantErr: []string{"authorization violation"},
		},
		{
			name:    "missing password_file",
			opts:    Options{URL: userSrv.ClientURL(), User: "watcher", PasswordFile: filepath.Join(dir, "nope")},
			wantErr: []string{"nope", "no such file"},
		},
		{
			name: "token_file",
			opts: Options{URL: tokenSrv.ClientURL(), TokenFile: tokFile},
		},
		{
			name:    "token server without token",
			opts:    Options{URL: tokenSrv.ClientURL()},
			wantErr: []string{"authorization violation", "token_file"},
		},
		{
			name: "TLS with ca_file",
			opts: Options{URL: tlsURL, TLS: tlsConfig(caFile)},
		},
		{
			name: "tls:// URL with ca_file",
			opts: Options{URL: strings.Replace(tlsURL, "nats://", "tls://", 1), TLS: tlsConfig(caFile)},
		},
		{
			name:    "TLS without ca_file",
			opts:    Options{URL: tlsURL},
			wantErr: []string{tlsURL, "certificate", "ca_file"},
		},
		{
			name:    "TLS with the wrong CA",
			opts:    Options{URL: tlsURL, TLS: tlsConfig(otherCAFile)},
			wantErr: []string{"certificate", "ca_file"},
		},
		{
			name:    "missing ca_file",
			opts:    Options{URL: tlsURL, TLS: tlsConfig(filepath.Join(dir, "absent.pem"))},
			wantErr: []string{"tls_config", "absent.pem"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := Connect(tc.opts, "test", nats.Timeout(5*time.Second))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Connect: %v", err)
				}
				defer nc.Close()
				// The connection works, not just the handshake.
				if _, err := nc.Request("$JS.API.INFO", nil, 5*time.Second); err != nil {
					t.Fatalf("JetStream info over the connection: %v", err)
				}
				return
			}
			if err == nil {
				nc.Close()
				t.Fatal("Connect succeeded, want an error")
			}
			msg := err.Error()
			for _, want := range tc.wantErr {
				if !strings.Contains(strings.ToLower(msg), strings.ToLower(want)) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
			for _, secret := range []string{password, token} {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q leaks a secret", msg)
				}
			}
		})
	}
}

func tlsConfig(ca string) (c config.TLSConfig) {
	c.CAFile = ca
	return c
}

func TestConnectPasswordInURLIsRedacted(t *testing.T) {
	const password = "url-s3cret-4c1"
	srv := runServer(t, func(o *server.Options) { o.Username, o.Password = "watcher", "the-real-one" })
	addr := strings.TrimPrefix(srv.ClientURL(), "nats://")
	for _, url := range []string{
		"nats://watcher:" + password + "@" + addr, // wrong password: auth fails
		"nats://watcher:" + password + "@" + freePort(t),
		"watcher:" + password + "@" + freePort(t), // nats.go adds nats://
		"nats://watcher:" + password + "@" + addr + ",nats://watcher:" + password + "@" + freePort(t),
	} {
		_, err := Connect(Options{URL: url}, "test", nats.Timeout(5*time.Second))
		if err == nil {
			t.Fatalf("Connect(%q) succeeded, want an error", url)
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("Connect(%q): error leaks the password: %v", url, err)
		}
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://u:p@h:4222", "nats://xxxxx@h:4222"},
		{"tls://tok@h:4222", "tls://xxxxx@h:4222"},
		{"nats://a:1@h1:4222,nats://b:2@h2:4222", "nats://xxxxx@h1:4222,nats://xxxxx@h2:4222"},
		{"nats://h1:4222,nats://u:p@h2:4222", "nats://h1:4222,nats://xxxxx@h2:4222"},
		// A password with an unescaped @: Go's URL parser (and nats.go)
		// split the user info at the last @, so must the redaction.
		{"nats://u:p@ss@h:4222", "nats://xxxxx@h:4222"},
		// No scheme: nats.go adds nats:// and still sends the password.
		{"u:p@h:4222", "xxxxx@h:4222"},
		{"", ""},
	}
	for _, tc := range tests {
		if got := redactURL(tc.in); got != tc.want {
			t.Errorf("redactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestConnectClosedPort(t *testing.T) {
	url := "nats://" + freePort(t)
	start := time.Now()
	_, err := Connect(Options{URL: url}, "test")
	if err == nil {
		t.Fatal("Connect to a closed port succeeded")
	}
	// A generous deadline that only catches a retry loop.
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Connect took %s to fail", d)
	}
	for _, want := range []string{url, "--nats.url", "running"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestStartEmbeddedBadListen(t *testing.T) {
	for _, listen := range []string{"nonsense", "127.0.0.1", "127.0.0.1:abc", "127.0.0.1:70000", "127.0.0.1:-5", ""} {
		t.Run(listen, func(t *testing.T) {
			e, err := StartEmbedded(listen, t.TempDir(), slog.New(slog.DiscardHandler))
			if err == nil {
				e.Stop()
				t.Fatalf("StartEmbedded(%q) succeeded", listen)
			}
			if !strings.Contains(err.Error(), "--nats.listen") || !strings.Contains(err.Error(), `"`+listen+`"`) {
				t.Errorf("error %q does not name --nats.listen %q", err, listen)
			}
		})
	}
}

func TestStartEmbeddedPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	listen := ln.Addr().String()
	start := time.Now()
	e, err := StartEmbedded(listen, t.TempDir(), slog.New(slog.DiscardHandler))
	if err == nil {
		e.Stop()
		t.Fatal("StartEmbedded on a port in use succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("StartEmbedded took %s to report the port in use", d)
	}
	for _, want := range []string{listen, "--nats.listen", "in use"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

func TestEnsureStreams(t *testing.T) {
	e := startEmbedded(t)
	js := jetStream(t, e.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	want := map[string]string{
		DeploysStream:   events.DeploysPrefix + ".>",
		RollbacksStream: events.RollbacksPrefix + ".>",
		AuditStream:     events.AuditPrefix + ".>",
	}
	for round := 1; round <= 2; round++ { // the second round finds them all
		if err := EnsureStreams(ctx, js, 1); err != nil {
			t.Fatalf("EnsureStreams, round %d: %v", round, err)
		}
		var names []string
		for n := range js.StreamNames(ctx).Name() {
			names = append(names, n)
		}
		slices.Sort(names)
		if !slices.Equal(names, []string{AuditStream, DeploysStream, RollbacksStream}) {
			t.Fatalf("round %d: streams %v", round, names)
		}
		for name, subj := range want {
			s, err := js.Stream(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			cfg := s.CachedInfo().Config
			if !slices.Equal(cfg.Subjects, []string{subj}) {
				t.Errorf("stream %s subjects %v, want [%s]", name, cfg.Subjects, subj)
			}
			if cfg.Storage != jetstream.FileStorage || cfg.Duplicates != 10*time.Minute || cfg.MaxAge == 0 {
				t.Errorf("stream %s: storage %v, duplicates %s, max age %s", name, cfg.Storage, cfg.Duplicates, cfg.MaxAge)
			}
		}
	}
	// The subjects the rest of the watcher publishes on are captured.
	for _, subj := range []string{
		events.Subject(events.DeploysPrefix, "production", "shop.api"),
		events.Subject(events.RollbacksPrefix, "production", "shop"),
		events.Subject(events.AuditPrefix, "_invalid", "_invalid"),
	} {
		if _, err := js.Publish(ctx, subj, []byte("{}")); err != nil {
			t.Errorf("publishing on %s: %v", subj, err)
		}
	}
}

func TestEnsureStreamsKeepsOperatorSettings(t *testing.T) {
	e := startEmbedded(t)
	js := jetStream(t, e.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     DeploysStream,
		Subjects: []string{"deploys.>"},
		MaxAge:   time.Hour,
		MaxBytes: 1 << 30,
		Storage:  jetstream.FileStorage,
	}); err != nil {
		t.Fatal(err)
	}
	if err := EnsureStreams(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, DeploysStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if cfg.MaxAge != time.Hour || cfg.MaxBytes != 1<<30 {
		t.Errorf("operator's DEPLOYS settings changed: max age %s, max bytes %d", cfg.MaxAge, cfg.MaxBytes)
	}
	// The others were still created.
	for _, name := range []string{RollbacksStream, AuditStream} {
		if _, err := js.Stream(ctx, name); err != nil {
			t.Errorf("stream %s: %v", name, err)
		}
	}
}

func TestEnsureStreamsWrongSubjects(t *testing.T) {
	e := startEmbedded(t)
	js := jetStream(t, e.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     DeploysStream,
		Subjects: []string{"deploys.production.>"},
	}); err != nil {
		t.Fatal(err)
	}
	err := EnsureStreams(ctx, js, 1)
	if err == nil {
		t.Fatal("EnsureStreams accepted a DEPLOYS stream that does not capture deploys.>")
	}
	for _, want := range []string{DeploysStream, "deploys.>", "deploys.production.>"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestEnsureStreamsWithoutJetStream(t *testing.T) {
	srv := runServer(t, func(o *server.Options) { o.JetStream = false })
	js := jetStream(t, srv.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := EnsureStreams(ctx, js, 1)
	if err == nil {
		t.Fatal("EnsureStreams succeeded on a server without JetStream")
	}
	if !errors.Is(err, jetstream.ErrJetStreamNotEnabled) || !strings.Contains(err.Error(), "enable JetStream") {
		t.Errorf("error %q does not say JetStream is missing", err)
	}
}

// An event over events.MaxEventSize must reach the watcher (which rejects
// it with an audit record), so the embedded server must carry it.
func TestEmbeddedCarriesOversizeEvents(t *testing.T) {
	e := startEmbedded(t)
	nc, err := Connect(Options{URL: e.ClientURL()}, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	size := events.MaxEventSize + events.MaxEventSize/2 // 1.5 MiB
	if nc.MaxPayload() < int64(size) {
		t.Fatalf("server max payload %d < %d", nc.MaxPayload(), size)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := EnsureStreams(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), size)
	subj := events.Subject(events.DeploysPrefix, "production", "shop")
	ack, err := js.Publish(ctx, subj, big)
	if err != nil {
		t.Fatalf("publishing %d bytes: %v", size, err)
	}
	s, err := js.Stream(ctx, DeploysStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(ctx, ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Data) != size || m.Subject != subj {
		t.Errorf("stored %d bytes on %s, want %d on %s", len(m.Data), m.Subject, size, subj)
	}
}

func TestConnectErrorsWrap(t *testing.T) {
	_, err := Connect(Options{URL: "nats://" + freePort(t)}, "test")
	if !errors.Is(err, nats.ErrNoServers) {
		t.Errorf("error %v does not wrap nats.ErrNoServers", err)
	}
}
