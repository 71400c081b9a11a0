// Package config reads the watcher's configuration file (--config.file):
// where the rules are and how to reach Prometheus and NATS, including the
// credentials that must never be passed as flags.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/promclient"
)

// Config is the file's content. Every field is optional; flags override it.
type Config struct {
	RuleFiles  []string           `yaml:"rule_files"`
	Prometheus promclient.Options `yaml:"prometheus"`
	NATS       bus.Options        `yaml:"nats"`
	// Notify lists where audit records are sent (README "Notifications").
	Notify []NotifyTarget `yaml:"notify"`
	// Ingest says who may send deploy events over HTTP (README "Send
	// deploy events from your tool").
	Ingest Ingest `yaml:"ingest"`
	// Decisions, when present, says who may cancel and approve held
	// rollbacks over HTTP, on what (README "Who may decide on what");
	// nil is every basic-auth user on every service.
	Decisions *Decisions `yaml:"decisions"`
}

// Load reads a config file strictly (unknown keys are errors) and resolves
// relative paths against the file's directory.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config file: %w", err)
	}
	c := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlError(path, err)
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	for i, r := range c.RuleFiles {
		c.RuleFiles[i] = join(dir, r)
	}
	c.Prometheus.HTTP.SetDirectory(dir)
	n := &c.NATS
	n.PasswordFile = join(dir, n.PasswordFile)
	n.TokenFile = join(dir, n.TokenFile)
	n.CredentialsFile = join(dir, n.CredentialsFile)
	n.NKeyFile = join(dir, n.NKeyFile)
	n.TLS.SetDirectory(dir)
	st := &n.Server.TLS
	st.CertFile, st.KeyFile, st.ClientCAFile = join(dir, st.CertFile), join(dir, st.KeyFile), join(dir, st.ClientCAFile)
	for i := range n.Server.Users {
		u := &n.Server.Users[i]
		u.PasswordFile = join(dir, u.PasswordFile)
	}
	if err := c.Prometheus.HTTP.Validate(); err != nil {
		return nil, fmt.Errorf("%s: prometheus.http_client: %w", path, err)
	}
	if err := n.Server.Validate(); err != nil {
		var lines []string
		for _, l := range strings.Split(err.Error(), "\n") {
			lines = append(lines, path+": nats.server."+l)
		}
		return nil, errors.New(strings.Join(lines, "\n"))
	}
	problems := validateNotify(path, dir, b, c.Notify)
	problems = append(problems, validateIngest(path, dir, b, &c.Ingest)...)
	problems = append(problems, validateDecisions(path, dir, b, c.Decisions)...)
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "\n"))
	}
	return c, nil
}

var (
	yamlLineRE     = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	unknownFieldRE = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
)

// yamlError reports a decoding error as "file:line: message", one line per
// problem, as the house style and `watcher check` do. yaml's own text
// ("yaml: unmarshal errors:\n  line 3: ...") puts the file name and the
// line on different lines.
func yamlError(path string, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
			return fmt.Errorf("%s:%s: %s", path, m[1], m[2])
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	lines := make([]string, len(te.Errors))
	for i, e := range te.Errors {
		if m := yamlLineRE.FindStringSubmatch(e); m != nil {
			// "field x not found in type config.plain" names a Go type.
			msg := unknownFieldRE.ReplaceAllString(m[2], "unknown key $1")
			lines[i] = fmt.Sprintf("%s:%s: %s", path, m[1], msg)
		} else {
			lines[i] = path + ": " + e
		}
	}
	return errors.New(strings.Join(lines, "\n"))
}

func join(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}
