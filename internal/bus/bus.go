// Package bus connects the watcher to NATS JetStream: an embedded server when
// no URL is given, the client connection with auth and TLS, and the streams
// the watcher needs.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/common/config"

	"github.com/rollback-watcher/watcher/internal/events"
)

// Stream names (README, "How it works").
const (
	DeploysStream   = "DEPLOYS"
	RollbacksStream = "ROLLBACKS"
	AuditStream     = "AUDIT"
)

// MaxPayload of the embedded server. It is above events.MaxEventSize on
// purpose: an oversized event must reach the watcher so that it is rejected
// with an audit record, instead of bouncing off the server unseen.
const MaxPayload = 8 << 20

// Options says how to reach NATS. Secrets are read from files so that they
// never show up in flags, process listings or --help.
type Options struct {
	// Server secures the server that `watcher run` embeds when no URL is
	// given; the client options above do not apply to the watcher's own
	// connection to it.
	Server          ServerOptions    `yaml:"server"`
	URL             string           `yaml:"url"`
	User            string           `yaml:"user"`
	PasswordFile    string           `yaml:"password_file"`
	TokenFile       string           `yaml:"token_file"`
	CredentialsFile string           `yaml:"credentials_file"`
	NKeyFile        string           `yaml:"nkey_file"`
	TLS             config.TLSConfig `yaml:"tls_config"`
	// Replicas is the replication factor of the streams the watcher creates.
	Replicas int `yaml:"replicas"`
}

// Connect dials NATS with the options' auth and TLS. name is the client name
// shown by the server ("watcher run", "watcher publish").
func Connect(o Options, name string, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(500 * time.Millisecond)}
	if o.User != "" || o.PasswordFile != "" {
		pw, err := readSecret(o.PasswordFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserInfo(o.User, pw))
	}
	if o.TokenFile != "" {
		tok, err := readSecret(o.TokenFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Token(tok))
	}
	if o.CredentialsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredentialsFile))
	}
	if o.NKeyFile != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats nkey_file %s: %w", o.NKeyFile, err)
		}
		opts = append(opts, opt)
	}
	if o.TLS.CAFile != "" || o.TLS.CertFile != "" || o.TLS.InsecureSkipVerify || strings.HasPrefix(o.URL, "tls://") {
		tc, err := config.NewTLSConfig(&o.TLS)
		if err != nil {
			return nil, fmt.Errorf("nats tls_config: %w", err)
		}
		opts = append(opts, nats.Secure(tc))
	}
	opts = append(opts, extra...)
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s: %w (%s)", redactURL(o.URL), err, connectHint(err))
	}
	return nc, nil
}

// connectHint says what to check after a failed connect. The server was
// reached when auth or TLS failed, so "is it running?" would mislead there.
func connectHint(err error) string {
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired),
		errors.Is(err, nats.ErrAuthRevoked), errors.Is(err, nats.ErrAccountAuthExpired):
		return "check the nats user and password_file, token_file, credentials_file or nkey_file"
	case errors.Is(err, nats.ErrTLS), errors.Is(err, nats.ErrSecureConnRequired), errors.Is(err, nats.ErrSecureConnWanted):
		return "check the nats tls_config: ca_file, cert_file, key_file, server_name"
	default:
		return "is the watcher or nats-server running? see --nats.url"
	}
}

func readSecret(file string) (string, error) {
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("reading secret: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// redactURL hides a password in a URL so that errors can print it.
// The user info ends at the last "@" (as Go's URL parser, and so nats.go,
// split it: a password may hold an unescaped "@"), and nats.go accepts a URL
// without a scheme ("user:pass@host:4222"), so both must be redacted too.
func redactURL(u string) string {
	var out []string
	for _, part := range strings.Split(u, ",") {
		if i := strings.LastIndex(part, "@"); i >= 0 {
			start := 0
			if j := strings.Index(part, "://"); j >= 0 && j < i {
				start = j + 3
			}
			part = part[:start] + "xxxxx" + part[i:]
		}
		out = append(out, part)
	}
	return strings.Join(out, ",")
}

// Embedded is a nats-server with JetStream running inside the watcher.
type Embedded struct {
	*server.Server
	log              *serverLogger
	internalPassword string // of internalUser; "" without users
	security         string // how it is secured, for the log
}

// Security says how the server is secured (users, TLS), without secrets.
func (e *Embedded) Security() string { return e.security }

// minFreeToRecover is the free space on the storage path at which Recover
// restarts JetStream after a storage failure.
const minFreeToRecover = 1 << 20

// Recover restarts JetStream once its storage has room again after a
// StorageError: nats-server keeps refusing writes to a stream that failed
// one until JetStream restarts, and reloads every stream, consumer and
// bucket from disk when it does. It reports whether it restarted.
func (e *Embedded) Recover() (bool, error) {
	if e.StorageError() == nil {
		return false, nil
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(e.log.dir, &st); err != nil {
		return false, err
	}
	if free := st.Bavail * uint64(st.Bsize); free < minFreeToRecover {
		return false, nil
	}
	if e.JetStreamEnabled() {
		if err := e.ShutdownJetStream(); err != nil {
			return false, fmt.Errorf("stopping JetStream: %w", err)
		}
	}
	if err := e.EnableJetStream(&server.JetStreamConfig{StoreDir: e.log.dir}); err != nil {
		return false, fmt.Errorf("restarting JetStream on %s: %w", e.log.dir, err)
	}
	e.log.storageErr = atomic.Value{}
	e.log.logger.Info("storage writable again: JetStream restarted on it", "storage", e.log.dir)
	return true, nil
}

// StorageError is the first failure to write JetStream's storage (a full
// disk, say) that the server reported, or nil. nats-server keeps refusing
// writes to a stream after such an error until it restarts, so the watcher
// is not ready from then on.
func (e *Embedded) StorageError() error {
	if v := e.log.storageErr.Load(); v != nil {
		return v.(error)
	}
	return nil
}

// StartEmbedded starts a nats-server listening on listen ("127.0.0.1:4222";
// port 0 picks a free one) with JetStream stored under storeDir, open to
// any client.
func StartEmbedded(listen, storeDir string, logger *slog.Logger) (*Embedded, error) {
	return StartEmbeddedWith(listen, storeDir, ServerOptions{}, logger)
}

// StartEmbeddedWith is StartEmbedded with users, permissions and TLS as sec
// says. Connect to it with ClientOptions.
func StartEmbeddedWith(listen, storeDir string, sec ServerOptions, logger *slog.Logger) (*Embedded, error) {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("--nats.listen %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("--nats.listen %q: bad port", listen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	} else {
		// nats-server only logs a failed listen, and ReadyForConnections
		// then waits out its whole timeout: try the address first, so that
		// a port in use is reported at once and with the real cause.
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return nil, fmt.Errorf("--nats.listen %q: %w (is the port in use by another watcher or nats-server?)", listen, err)
		}
		ln.Close()
	}
	// nats-server adds its own "jetstream" directory under StoreDir.
	dir, err := filepath.Abs(storeDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("creating JetStream storage: %w", err)
	}
	opts := &server.Options{
		ServerName: "watcher",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   dir,
		MaxPayload: MaxPayload,
		NoSigs:     true,
	}
	internalPassword, err := sec.apply(opts)
	if err != nil {
		return nil, err
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	sl := &serverLogger{l: logger.With("component", "nats-server"), dir: dir, logger: logger}
	s.SetLoggerV2(sl, false, false, false)
	s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not start listening on %s (is the port in use? see --nats.listen)", listen)
	}
	return &Embedded{Server: s, log: sl, internalPassword: internalPassword, security: sec.describe()}, nil
}

// Stop shuts the server down and waits for it.
func (e *Embedded) Stop() {
	e.Shutdown()
	e.WaitForShutdown()
}

type serverLogger struct {
	l          *slog.Logger
	logger     *slog.Logger // the watcher's, for the storage message
	dir        string
	storageErr atomic.Value // error
}

func (s *serverLogger) Noticef(f string, v ...any) { s.l.Debug(fmt.Sprintf(f, v...)) }
func (s *serverLogger) Warnf(f string, v ...any)   { s.warnOrError(slog.LevelWarn, fmt.Sprintf(f, v...)) }
func (s *serverLogger) Fatalf(f string, v ...any) {
	s.warnOrError(slog.LevelError, fmt.Sprintf(f, v...))
}
func (s *serverLogger) Errorf(f string, v ...any) {
	s.warnOrError(slog.LevelError, fmt.Sprintf(f, v...))
}

// warnOrError logs a server message, and turns the first storage write
// failure into an error of the watcher's own that says what to do.
func (s *serverLogger) warnOrError(level slog.Level, msg string) {
	s.l.Log(context.Background(), level, msg)
	if !strings.Contains(msg, "no space left on device") && !strings.Contains(msg, "Critical write error") {
		return
	}
	err := fmt.Errorf("JetStream cannot write to its storage in %s (%s): free space there (or give --storage.path more room); the watcher restarts JetStream once there is room, and until then deploy events and audit records are refused, not lost: publishers get an error", s.dir, msg)
	if s.storageErr.CompareAndSwap(nil, err) {
		s.logger.Error("storage failed", "err", err)
	}
}
func (s *serverLogger) Debugf(f string, v ...any) {}
func (s *serverLogger) Tracef(f string, v ...any) {}

// StreamConfigs are the streams the watcher uses, at the given replication
// factor. Duplicates is the window in which JetStream drops a message whose
// Nats-Msg-Id it has seen: a publisher retrying after a lost ack cannot
// create a second request.
func StreamConfigs(replicas int) []jetstream.StreamConfig {
	if replicas < 1 {
		replicas = 1
	}
	mk := func(name, prefix string, maxAge time.Duration) jetstream.StreamConfig {
		return jetstream.StreamConfig{
			Name:       name,
			Subjects:   []string{prefix + ".>"},
			Storage:    jetstream.FileStorage,
			Replicas:   replicas,
			MaxAge:     maxAge,
			Duplicates: 10 * time.Minute,
		}
	}
	return []jetstream.StreamConfig{
		mk(DeploysStream, events.DeploysPrefix, 30*24*time.Hour),
		mk(RollbacksStream, events.RollbacksPrefix, 90*24*time.Hour),
		mk(AuditStream, events.AuditPrefix, 365*24*time.Hour),
	}
}

// EnsureStreams creates the streams that are missing. Existing streams are
// left as the operator configured them (retention, limits), provided they
// still capture the subjects the watcher uses. Like EnsureKeyValue it
// tolerates replicas creating them at the same time and a cluster still
// electing its leaders.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, replicas int) error {
	for _, cfg := range StreamConfigs(replicas) {
		if err := ensureStream(ctx, js, cfg); err != nil {
			return err
		}
	}
	return nil
}

func coversSubject(have []string, want string) bool {
	for _, h := range have {
		if h == want || h == ">" {
			return true
		}
	}
	return false
}
