package bus

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// ServerOptions secure the embedded server (`nats.server` in
// --config.file). Without users anyone who can reach --nats.listen may
// publish deploy events and rollback requests; with users, connections
// without valid credentials are refused and each user may publish and
// subscribe only where its permissions say.
type ServerOptions struct {
	TLS   ServerTLS    `yaml:"tls"`
	Users []ServerUser `yaml:"users"`
}

// ServerTLS makes the embedded server require TLS. With ClientCAFile,
// clients must also present a certificate signed by it.
type ServerTLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// ServerUser is one user of the embedded server: a name with a password
// read from a file, or an nkey (its public key: the seed stays with the
// client). Publish and Subscribe list the subjects it may use (wildcards
// allowed); an empty list allows nothing.
type ServerUser struct {
	User         string   `yaml:"user"`
	PasswordFile string   `yaml:"password_file"`
	NKey         string   `yaml:"nkey"`
	Publish      []string `yaml:"publish"`
	Subscribe    []string `yaml:"subscribe"`
}

// internalUser is the watcher's own connection to its embedded server. It
// may connect in-process only, so its password, random per start, is of
// no use to anyone even if it leaked.
const internalUser = "_watcher"

// internalInbox is the inbox prefix of the watcher's own connection.
const internalInbox = "_WATCHER_INBOX"

// Enabled says whether any of the options is set.
func (o ServerOptions) Enabled() bool {
	return len(o.Users) > 0 || o.TLS != (ServerTLS{})
}

// Validate checks the options without reading any file. Every problem is
// reported, each naming the key (under nats.server) that is wrong.
func (o ServerOptions) Validate() error {
	var errs []error
	t := o.TLS
	if (t.CertFile == "") != (t.KeyFile == "") {
		errs = append(errs, errors.New("tls: cert_file and key_file go together"))
	}
	if t.ClientCAFile != "" && t.CertFile == "" {
		errs = append(errs, errors.New("tls: client_ca_file needs cert_file and key_file (the server's own certificate)"))
	}
	seen := map[string]bool{}
	for i, u := range o.Users {
		at := fmt.Sprintf("users[%d]", i)
		switch {
		case u.NKey != "" && (u.User != "" || u.PasswordFile != ""):
			errs = append(errs, fmt.Errorf("%s: nkey %s, or user with password_file, not both", at, u.NKey))
		case u.NKey != "":
			if !nkeys.IsValidPublicUserKey(u.NKey) {
				errs = append(errs, fmt.Errorf("%s: nkey %q is not a public user nkey (U...): put the public key here and the seed in the client's nkey_file", at, u.NKey))
			}
		case u.User == "":
			errs = append(errs, fmt.Errorf("%s: user (with password_file) or nkey is required", at))
		case u.PasswordFile == "":
			errs = append(errs, fmt.Errorf("%s: user %s has no password_file (passwords are read from files only)", at, u.User))
		case u.User == internalUser:
			errs = append(errs, fmt.Errorf("%s: user name %s is reserved for the watcher's own connection", at, internalUser))
		}
		name := u.User + u.NKey
		if name != "" && seen[name] {
			errs = append(errs, fmt.Errorf("%s: %s is listed twice", at, name))
		}
		seen[name] = true
		for _, l := range []struct {
			key  string
			subj []string
		}{{"publish", u.Publish}, {"subscribe", u.Subscribe}} {
			for _, s := range l.subj {
				if !server.IsValidSubject(s) {
					errs = append(errs, fmt.Errorf("%s: %s: %q is not a valid subject", at, l.key, s))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// apply sets users and TLS on the server's options, reading password files
// and certificates. It returns the password of internalUser, or "" when
// there are no users.
func (o ServerOptions) apply(opts *server.Options) (string, error) {
	if err := o.Validate(); err != nil {
		return "", err
	}
	if t := o.TLS; t.CertFile != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
			CertFile: t.CertFile, KeyFile: t.KeyFile, CaFile: t.ClientCAFile, Verify: t.ClientCAFile != "",
		})
		if err != nil {
			return "", fmt.Errorf("nats.server.tls: %w", err)
		}
		opts.TLS, opts.TLSConfig, opts.TLSVerify = true, tc, t.ClientCAFile != ""
		opts.TLSTimeout = 2 // seconds; the default 0.5 is tight on a busy host
	}
	if len(o.Users) == 0 {
		return "", nil
	}
	standard := map[string]struct{}{jwt.ConnectionTypeStandard: {}}
	for _, u := range o.Users {
		perms := permissions(u)
		if u.NKey != "" {
			opts.Nkeys = append(opts.Nkeys, &server.NkeyUser{Nkey: u.NKey, Permissions: perms, AllowedConnectionTypes: standard})
			continue
		}
		// The file may hold the password or its bcrypt hash (`nats
		// server passwd`); the server tells them apart.
		pw, err := readSecret(u.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("nats.server.users: user %s: %w", u.User, err)
		}
		if pw == "" {
			return "", fmt.Errorf("nats.server.users: user %s: password_file %s is empty", u.User, u.PasswordFile)
		}
		opts.Users = append(opts.Users, &server.User{Username: u.User, Password: pw, Permissions: perms, AllowedConnectionTypes: standard})
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	pw := hex.EncodeToString(b)
	opts.Users = append(opts.Users, &server.User{
		Username:               internalUser,
		Password:               pw,
		AllowedConnectionTypes: map[string]struct{}{jwt.ConnectionTypeInProcess: {}},
	})
	return pw, nil
}

// permissions allows what the user lists and nothing else: nats-server
// allows everything when a direction has no allow list, so an empty list
// becomes a deny of all.
func permissions(u ServerUser) *server.Permissions {
	dir := func(allow []string) *server.SubjectPermission {
		if len(allow) == 0 {
			return &server.SubjectPermission{Deny: []string{">"}}
		}
		return &server.SubjectPermission{Allow: allow}
	}
	return &server.Permissions{Publish: dir(u.Publish), Subscribe: dir(u.Subscribe)}
}

// ClientOptions connect the watcher to its own embedded server, in-process
// and, when users are configured, as its internal user.
func (e *Embedded) ClientOptions() []nats.Option {
	opts := []nats.Option{nats.InProcessServer(e)}
	if e.internalPassword != "" {
		// Tools are granted "_INBOX.>" to get their acks; the answers to
		// the watcher (deploy events, rollback requests it consumes) go
		// elsewhere, out of their sight.
		opts = append(opts, nats.UserInfo(internalUser, e.internalPassword), nats.CustomInboxPrefix(internalInbox))
	}
	return opts
}

// describe says how the embedded server is secured, for the start-up log:
// never a secret.
func (o ServerOptions) describe() string {
	var parts []string
	if len(o.Users) == 0 {
		parts = append(parts, "no authentication")
	} else {
		names := make([]string, len(o.Users))
		for i, u := range o.Users {
			names[i] = u.User + u.NKey
		}
		parts = append(parts, "users "+strings.Join(names, ","))
	}
	switch {
	case o.TLS.ClientCAFile != "":
		parts = append(parts, "TLS with client certificates")
	case o.TLS.CertFile != "":
		parts = append(parts, "TLS")
	}
	return strings.Join(parts, ", ")
}
