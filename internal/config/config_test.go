package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, dir, content string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "watcher.yml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// assertLoadErrors loads content as a --config.file: Load must refuse it
// with exactly the lines of want, each "<line>: <message>" after the
// file's name.
func assertLoadErrors(t *testing.T, content string, want []string) {
	t.Helper()
	p := writeConfig(t, t.TempDir(), content)
	_, err := Load(p)
	if err == nil {
		t.Fatalf("Load accepted:\n%s", content)
	}
	got := strings.Split(err.Error(), "\n")
	if len(got) != len(want) {
		t.Fatalf("error:\n%s\nwant %d lines", err, len(want))
	}
	for i, w := range want {
		if prefix := fmt.Sprintf("%s:%s", p, w); !strings.HasPrefix(got[i], prefix) {
			t.Errorf("line %d: %q\nwant it to start %q", i, got[i], prefix)
		}
	}
}

const fullConfig = `# every path below is relative to this file's directory
rule_files:
  - rules/*.yml
  - /etc/watcher/extra.yml
prometheus:
  url: https://prometheus.example.com:9090
  timeout: 15s
  max_response_bytes: 16MiB
  max_series: 20000
  http_client:
    basic_auth:
      username: watcher
      password_file: secrets/prometheus-password
    tls_config:
      ca_file: certs/prometheus-ca.pem
nats:
  url: tls://nats.example.com:4222
  user: watcher
  password_file: secrets/nats-password
  token_file: ../shared/nats-token
  credentials_file: /abs/watcher.creds
  nkey_file: nkeys/watcher.nk
  tls_config:
    ca_file: certs/nats-ca.pem
    cert_file: certs/client.pem
    key_file: certs/client-key.pem
  replicas: 3
  server:
    tls:
      cert_file: certs/server.pem
      key_file: certs/server-key.pem
      client_ca_file: /etc/watcher/client-ca.pem
    users:
      - user: ci-shop
        password_file: secrets/ci-shop
        publish: [deploys.prod.shop]
        subscribe: ["_INBOX.>"]
      - nkey: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4
        publish: ["rollbacks.>"]
`

func TestLoadResolvesPathsAgainstTheFile(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "etc")
	writeConfig(t, dir, fullConfig)
	// Load with a relative path from elsewhere: the paths still resolve
	// against the file's directory, not the working directory.
	t.Chdir(root)
	c, err := Load(filepath.Join("etc", "watcher.yml"))
	if err != nil {
		t.Fatal(err)
	}
	in := func(p string) string { return filepath.Join(dir, p) }

	if want := []string{in("rules/*.yml"), "/etc/watcher/extra.yml"}; !slices.Equal(c.RuleFiles, want) {
		t.Errorf("rule_files = %q, want %q", c.RuleFiles, want)
	}
	p := c.Prometheus
	if p.URL != "https://prometheus.example.com:9090" || time.Duration(p.Timeout) != 15*time.Second {
		t.Errorf("prometheus url %q timeout %s", p.URL, p.Timeout)
	}
	if p.MaxResponseBytes != 16<<20 || p.MaxSeries != 20000 {
		t.Errorf("prometheus max_response_bytes %d max_series %d, want 16MiB and 20000", p.MaxResponseBytes, p.MaxSeries)
	}
	if p.HTTP.BasicAuth == nil || p.HTTP.BasicAuth.Username != "watcher" ||
		p.HTTP.BasicAuth.PasswordFile != in("secrets/prometheus-password") {
		t.Errorf("prometheus basic_auth = %+v", p.HTTP.BasicAuth)
	}
	if got := p.HTTP.TLSConfig.CAFile; got != in("certs/prometheus-ca.pem") {
		t.Errorf("prometheus tls ca_file = %q", got)
	}
	n := c.NATS
	checks := []struct{ name, got, want string }{
		{"url", n.URL, "tls://nats.example.com:4222"},
		{"user", n.User, "watcher"},
		{"password_file", n.PasswordFile, in("secrets/nats-password")},
		{"token_file", n.TokenFile, filepath.Join(root, "shared/nats-token")},
		{"credentials_file", n.CredentialsFile, "/abs/watcher.creds"},
		{"nkey_file", n.NKeyFile, in("nkeys/watcher.nk")},
		{"tls ca_file", n.TLS.CAFile, in("certs/nats-ca.pem")},
		{"tls cert_file", n.TLS.CertFile, in("certs/client.pem")},
		{"tls key_file", n.TLS.KeyFile, in("certs/client-key.pem")},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("nats %s = %q, want %q", ch.name, ch.got, ch.want)
		}
	}
	if n.Replicas != 3 {
		t.Errorf("nats replicas = %d", n.Replicas)
	}
	st := n.Server.TLS
	for _, ch := range []struct{ name, got, want string }{
		{"server tls cert_file", st.CertFile, in("certs/server.pem")},
		{"server tls key_file", st.KeyFile, in("certs/server-key.pem")},
		{"server tls client_ca_file", st.ClientCAFile, "/etc/watcher/client-ca.pem"},
	} {
		if ch.got != ch.want {
			t.Errorf("nats %s = %q, want %q", ch.name, ch.got, ch.want)
		}
	}
	if u := n.Server.Users; len(u) != 2 || u[0].User != "ci-shop" || u[0].PasswordFile != in("secrets/ci-shop") ||
		!slices.Equal(u[0].Publish, []string{"deploys.prod.shop"}) || !slices.Equal(u[0].Subscribe, []string{"_INBOX.>"}) ||
		u[1].NKey != "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4" || !slices.Equal(u[1].Publish, []string{"rollbacks.>"}) {
		t.Errorf("nats server users = %+v", u)
	}
}

func TestLoadEmpty(t *testing.T) {
	for name, content := range map[string]string{
		"empty":         "",
		"only comments": "# nothing configured yet\n\n",
		"empty map":     "{}\n",
	} {
		t.Run(name, func(t *testing.T) {
			c, err := Load(writeConfig(t, t.TempDir(), content))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(c.RuleFiles) != 0 || c.NATS.URL != "" || c.NATS.PasswordFile != "" || c.Prometheus.URL != "" {
				t.Errorf("an empty file set something: %+v", c)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "absent.yml")
	_, err := Load(p)
	if err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v does not wrap fs.ErrNotExist", err)
	}
	for _, want := range []string{"config file", p, "no such file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

func TestLoadBad(t *testing.T) {
	tests := []struct {
		name    string
		content string
		line    int      // the error starts "file:line: "; 0: no line known
		want    []string // further substrings of the error
	}{
		{
			name:    "unknown top-level key",
			content: "rule_files: [a.yml]\nrules: [b.yml]\n",
			line:    2,
			want:    []string{"unknown key rules"},
		},
		{
			name:    "unknown nats key",
			content: "nats:\n  url: nats://localhost:4222\n  passwd_file: pw\n",
			line:    3,
			want:    []string{"unknown key passwd_file"},
		},
		{
			name:    "an inline nats password is not a key (secrets come from files)",
			content: "nats:\n  password: hunter2\n",
			line:    2,
			want:    []string{"unknown key password"},
		},
		{
			name:    "unknown key in nats tls_config",
			content: "nats:\n  tls_config:\n    cafile: ca.pem\n",
			line:    3,
			want:    []string{"unknown key cafile"},
		},
		{
			name:    "unknown key in prometheus http_client",
			content: "prometheus:\n  url: http://localhost:9090\n  http_client:\n    basic_auth:\n      user: x\n",
			line:    5,
			want:    []string{"unknown key user"},
		},
		{
			name:    "wrong type",
			content: "rule_files: 5\n",
			line:    1,
		},
		{
			name:    "syntax error",
			content: "rule_files: [a]\nnats:\n\turl: x\n", // a tab
			line:    3,
		},
		{
			name:    "duplicate key",
			content: "rule_files: [a]\nrule_files: [b]\n",
			line:    2,
			want:    []string{"already defined at line 1"},
		},
		{
			name:    "bad duration",
			content: "prometheus:\n  timeout: soon\n",
			want:    []string{"soon"},
		},
		{
			name:    "an inline password for a server user is not a key",
			content: "nats:\n  server:\n    users:\n      - user: ci\n        password: hunter2\n",
			line:    5,
			want:    []string{"unknown key password"},
		},
		{
			name:    "server user without password_file",
			content: "nats:\n  server:\n    users:\n      - user: ci\n        publish: [deploys.prod.shop]\n",
			want:    []string{"nats.server.users[0]: user ci has no password_file"},
		},
		{
			name:    "server user with neither user nor nkey",
			content: "nats:\n  server:\n    users:\n      - publish: [deploys.prod.shop]\n",
			want:    []string{"nats.server.users[0]: user (with password_file) or nkey is required"},
		},
		{
			name:    "an nkey seed where the public key goes",
			content: "nats:\n  server:\n    users:\n      - nkey: SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY\n",
			want:    []string{"nats.server.users[0]: nkey", "is not a public user nkey"},
		},
		{
			name:    "the watcher's own user name",
			content: "nats:\n  server:\n    users:\n      - {user: _watcher, password_file: pw}\n",
			want:    []string{"reserved"},
		},
		{
			name:    "a user twice",
			content: "nats:\n  server:\n    users:\n      - {user: ci, password_file: a}\n      - {user: ci, password_file: b}\n",
			want:    []string{"nats.server.users[1]: ci is listed twice"},
		},
		{
			name:    "bad subject",
			content: "nats:\n  server:\n    users:\n      - {user: ci, password_file: a, publish: [\"deploys..shop\"]}\n",
			want:    []string{"nats.server.users[0]: publish: \"deploys..shop\" is not a valid subject"},
		},
		{
			name:    "server cert without key",
			content: "nats:\n  server:\n    tls: {cert_file: c.pem}\n",
			want:    []string{"nats.server.tls: cert_file and key_file go together"},
		},
		{
			name:    "client CA without a server certificate",
			content: "nats:\n  server:\n    tls: {client_ca_file: ca.pem}\n",
			want:    []string{"nats.server.tls: client_ca_file needs cert_file and key_file"},
		},
		{
			name:    "bad size",
			content: "prometheus:\n  max_response_bytes: lots\n",
			want:    []string{"lots"},
		},
		{
			name:    "invalid http_client",
			content: "prometheus:\n  http_client:\n    basic_auth:\n      username: u\n      password: p\n      password_file: f\n",
			want:    []string{"basic_auth"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := writeConfig(t, t.TempDir(), tc.content)
			_, err := Load(p)
			if err == nil {
				t.Fatalf("Load accepted:\n%s", tc.content)
			}
			msg := err.Error()
			prefix := p + ": "
			if tc.line > 0 {
				prefix = fmt.Sprintf("%s:%d: ", p, tc.line)
			}
			if !strings.HasPrefix(msg, prefix) {
				t.Errorf("error %q does not start with %q", msg, prefix)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error %q is not one line", msg)
			}
			for _, want := range tc.want {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
		})
	}
}

// Every unknown key is reported, each on its own line with its own number.
func TestLoadReportsEveryUnknownKey(t *testing.T) {
	p := writeConfig(t, t.TempDir(), "rulefiles: [a]\nnats:\n  urls: x\n")
	_, err := Load(p)
	if err == nil {
		t.Fatal("Load accepted two unknown keys")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], p+":1: ") || !strings.HasPrefix(lines[1], p+":3: ") ||
		!strings.HasSuffix(lines[0], "unknown key rulefiles") || !strings.HasSuffix(lines[1], "unknown key urls") {
		t.Errorf("error:\n%s\nwant %s:1: ... rulefiles, then %s:3: ... urls", err, p, p)
	}
}
