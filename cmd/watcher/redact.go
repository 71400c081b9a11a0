package main

import (
	"io"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/rollback-watcher/watcher/internal/config"
)

// redacted stands for a hidden secret, as in url.URL.Redacted.
const redacted = "xxxxx"

// minSecret is the shortest secret scrubbed from free text: replacing every
// "ab" in the output would hide nothing and wreck every line.
const minSecret = 4

// urlUserinfo finds the user info of one URL of a list, as Go's URL
// parser (and so nats.go and the Prometheus client) reads it: it starts
// after "scheme://", or at the start for a NATS "host:port" without a
// scheme, and ends at the last "@" of the authority, which ends at the
// first "/", "?" or "#" (a password may hold an unescaped "@"; an "@" in
// a query such as ?m=a@b is no user info).
//
// A URL whose authority holds no "@" and that does not parse either gets
// the last "@" of the whole URL: an unescaped "/", "?" or "#" in a
// password (base64 has "/") is what cuts such an authority short, and
// hiding too much is better than printing the password.
func urlUserinfo(u string) (start, end int, ok bool) {
	if i := strings.Index(u, "://"); i >= 0 {
		start = i + 3
	}
	authority := u[start:]
	if i := strings.IndexAny(authority, "/?#"); i >= 0 {
		authority = authority[:i]
	}
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		return start, start + i, true
	}
	if _, err := url.Parse(u); err == nil && strings.Contains(u, "://") {
		return 0, 0, false
	}
	end = strings.LastIndex(u, "@")
	if end < start {
		return 0, 0, false
	}
	return start, end, true
}

// splitSecret says which part of a URL's user info is secret: the password,
// or, for NATS (a user with no password is a token), the whole user info.
// An http user name alone is not a secret, as url.URL.Redacted has it.
func splitSecret(u, info string) (keep, secret string) {
	if user, pw, ok := strings.Cut(info, ":"); ok {
		return user + ":", pw
	}
	if s := strings.ToLower(u); strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") {
		return info, ""
	}
	return "", info
}

// redactURLs returns a comma-separated URL list (--nats.url takes one) fit
// to print: each password, and each NATS token, is replaced by "xxxxx".
// It works on the text, so that a URL that does not even parse is hidden
// too, and never re-encodes what it keeps.
func redactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, u := range parts {
		start, end, ok := urlUserinfo(u)
		if !ok {
			continue
		}
		if keep, secret := splitSecret(u, u[start:end]); secret != "" {
			parts[i] = u[:start] + keep + redacted + u[end:]
		}
	}
	return strings.Join(parts, ",")
}

// urlSecrets lists the secrets in a URL list as they may appear in other
// programs' messages: as written, percent-decoded, and quoted the way log
// formats and JSON escape them.
func urlSecrets(list string) []string {
	var out []string
	for _, u := range strings.Split(list, ",") {
		start, end, ok := urlUserinfo(u)
		if !ok {
			continue
		}
		_, secret := splitSecret(u, u[start:end])
		if secret == "" {
			continue
		}
		forms := []string{secret}
		if dec, err := url.PathUnescape(secret); err == nil {
			forms = append(forms, dec)
		}
		for _, f := range forms[:len(forms):len(forms)] {
			q := strconv.Quote(f)
			forms = append(forms, q[1:len(q)-1])
		}
		for _, f := range forms {
			if len(f) >= minSecret {
				out = append(out, f)
			}
		}
	}
	return out
}

// secrets holds the passwords and tokens of the URLs a command was given,
// so that nothing it prints shows them: not the log, not an error that
// another library built with the URL in it (url.Parse's errors quote the
// whole URL). The URLs this program prints itself go through redactURLs,
// which keeps them readable.
type secrets struct {
	mu   sync.Mutex
	list []string
	r    atomic.Pointer[strings.Replacer]
}

// add registers the secrets in the URL lists.
func (s *secrets) add(lists ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range lists {
		for _, sec := range urlSecrets(l) {
			if !slices.Contains(s.list, sec) {
				s.list = append(s.list, sec)
			}
		}
	}
	// Longest first: a secret that contains another is replaced whole.
	sort.Slice(s.list, func(i, j int) bool { return len(s.list[i]) > len(s.list[j]) })
	var pairs []string
	for _, sec := range s.list {
		pairs = append(pairs, sec, redacted)
	}
	s.r.Store(strings.NewReplacer(pairs...))
}

// scrub replaces every known secret in text.
func (s *secrets) scrub(text string) string {
	if r := s.r.Load(); r != nil {
		return r.Replace(text)
	}
	return text
}

// scrubErr is err with every known secret hidden in its message; errors.Is
// and errors.As still see the original.
func (s *secrets) scrubErr(err error) error {
	if err == nil {
		return nil
	}
	if msg := s.scrub(err.Error()); msg != err.Error() {
		return &scrubbedError{msg: msg, err: err}
	}
	return err
}

type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

// writer scrubs what goes to w. Every line the program prints (the log
// included: a slog handler writes each record with one Write) passes
// through one Write call whole, so a secret is never split between two.
func (s *secrets) writer(w io.Writer) io.Writer { return &scrubWriter{s: s, w: w} }

type scrubWriter struct {
	s *secrets
	w io.Writer
}

func (w *scrubWriter) Write(p []byte) (int, error) {
	if w.s.r.Load() == nil {
		return w.w.Write(p)
	}
	if _, err := io.WriteString(w.w, w.s.scrub(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// load reads the command's configuration and registers the secrets in its
// URLs before anything can print them.
func (e *env) load(f *configFlags) (*config.Config, error) {
	// The flags first: a config file that fails to load may still have
	// been named next to a --nats.url with a password.
	e.secrets.add(f.natsURL, f.promURL)
	c, err := f.load()
	if err != nil {
		return nil, e.secrets.scrubErr(err)
	}
	e.secrets.add(c.NATS.URL, c.Prometheus.URL)
	return c, nil
}
