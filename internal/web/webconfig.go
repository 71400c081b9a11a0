package web

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"go.yaml.in/yaml/v3"
)

// WebConfig splits --web.config.file between exporter-toolkit and the
// watcher (README "HTTP"). The toolkit keeps TLS, the response headers and
// the rate limit, read from a derived copy of the file without
// basic_auth_users; the watcher asks for basic auth itself (basicauth.go),
// so that the endpoints that carry their own credential (a bearer token, a
// webhook signature, a signed link) take it from clients that cannot also
// send basic auth. The toolkit asks every request for basic auth before
// any handler runs, and has no way to leave a route out.
//
// Deriving a file, rather than serving TLS with the toolkit's exported
// ConfigToTLSConfig, keeps everything else the toolkit does as it does it:
// certificates re-read at each handshake, HTTP/2 on or off, the headers
// and the rate limiter, with no copy of that code to keep in step.
type WebConfig struct {
	// File is --web.config.file as the user wrote it.
	File string
	// derived is the copy handed to the toolkit: 0600, in a directory of
	// the watcher's own.
	derived string

	mu    sync.Mutex
	last  []byte // File's content when derived was last written
	users map[string]string
}

// NewWebConfig derives the toolkit's copy of file into dir, which the
// watcher owns (it is written 0600 there).
func NewWebConfig(file, dir string) (*WebConfig, error) {
	c := &WebConfig{File: file, derived: filepath.Join(dir, "web-config.yml")}
	if _, err := c.Users(); err != nil {
		return nil, err
	}
	return c, nil
}

// Derived is the path of the copy without basic_auth_users, for the
// toolkit's --web.config.file.
func (c *WebConfig) Derived() string { return c.derived }

// Users reads File as it is now: user name -> bcrypt hash. The toolkit
// read it at each request, so that an edit applies without a restart;
// this does too, and rewrites the derived copy when the file changed, so
// that TLS and header edits reach the toolkit at the next request (or
// reload) as well.
func (c *WebConfig) Users() (map[string]string, error) {
	b, err := os.ReadFile(c.File)
	if err != nil {
		return nil, fmt.Errorf("reading --web.config.file: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last != nil && bytes.Equal(b, c.last) {
		return c.users, nil
	}
	dir, err := filepath.Abs(filepath.Dir(c.File))
	if err != nil {
		return nil, fmt.Errorf("--web.config.file %s: %w", c.File, err)
	}
	out, users, err := deriveWebConfig(b, dir)
	if err != nil {
		return nil, fmt.Errorf("--web.config.file %s: %w", c.File, err)
	}
	if err := writeFileAtomic(c.derived, out); err != nil {
		return nil, fmt.Errorf("writing the TLS part of --web.config.file to %s: %w", c.derived, err)
	}
	c.last, c.users = b, users
	return users, nil
}

// tlsFileKeys are the keys of tls_server_config that name files. The
// toolkit resolves a relative one against its file's directory, which
// for the derived copy is not the user's: they are made absolute.
var tlsFileKeys = map[string]bool{"cert_file": true, "key_file": true, "client_ca_file": true}

// deriveWebConfig returns b without basic_auth_users, with the relative
// file names of tls_server_config joined to dir, and the users it held.
// It edits the YAML tree rather than the toolkit's Config: marshalling
// that would write "<secret>" for an inline key.
func deriveWebConfig(b []byte, dir string) ([]byte, map[string]string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	if len(doc.Content) == 0 {
		return []byte{}, nil, nil // an empty file: no TLS, no users
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, nil, fmt.Errorf("line %d: want a mapping of tls_server_config, http_server_config, rate_limit and basic_auth_users", root.Line)
	}
	var users map[string]string
	kept := root.Content[:0:0]
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		switch k.Value {
		case "basic_auth_users":
			if err := v.Decode(&users); err != nil {
				return nil, nil, fmt.Errorf("basic_auth_users: %w", err)
			}
			continue
		case "tls_server_config":
			if v.Kind == yaml.MappingNode {
				for j := 0; j+1 < len(v.Content); j += 2 {
					if f := v.Content[j+1]; tlsFileKeys[v.Content[j].Value] && f.Kind == yaml.ScalarNode && f.Value != "" && !filepath.IsAbs(f.Value) {
						f.Value = filepath.Join(dir, f.Value)
					}
				}
			}
		}
		kept = append(kept, k, v)
	}
	root.Content = kept
	out, err := yaml.Marshal(&doc)
	if err != nil {
		return nil, nil, err
	}
	return out, users, nil
}

// writeFileAtomic writes b to name, 0600, through a rename: the toolkit
// reads the file at each request and handshake, and must never see half
// of it.
func writeFileAtomic(name string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(name), ".web-config-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a failure; a no-op after the rename
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), name)
}
