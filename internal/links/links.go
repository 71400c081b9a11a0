// Package links signs and checks the cancel and approve links of held
// rollbacks (README "Notifications, holds and verification"): a link in a
// notification that decides one request, once, before the request's
// execute_at, without other credentials. The signature is an HMAC-SHA256
// over the request id, the action and the expiry, keyed with a secret that
// every replica shares through a NATS KV bucket.
package links

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/bus"
)

// Bucket holds the signing key, created by the first watcher that starts
// with --web.external-url. Whoever can read it can mint links: grant its
// subjects to no tool.
const Bucket = "WATCHER_LINKS"

// keyName is the signing key's key in Bucket.
const keyName = "hmac-sha256"

// KeySize is the signing key's length in bytes.
const KeySize = 32

// Query parameters of a link.
const (
	ParamExpires   = "expires"
	ParamSignature = "sig"
)

// Errors of Verify.
var (
	// ErrForged: the signature does not match (altered, truncated, or
	// signed with another key).
	ErrForged = errors.New("link signature does not match")
	// ErrExpired: the link's expiry has passed.
	ErrExpired = errors.New("link expired")
)

// Signer mints and checks links under one external URL.
type Signer struct {
	key  []byte
	base string // the external URL without its trailing slash
}

// New is a Signer with key for links under externalURL, the URL the
// watcher is reached at (--web.external-url).
func New(key []byte, externalURL string) (*Signer, error) {
	if len(key) < KeySize {
		return nil, fmt.Errorf("link signing key of %d bytes: want at least %d", len(key), KeySize)
	}
	u, err := url.Parse(externalURL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("external URL %q: want an absolute http(s) URL", externalURL)
	}
	return &Signer{key: append([]byte(nil), key...), base: strings.TrimSuffix(externalURL, "/")}, nil
}

// Open reads the signing key from Bucket, creating the bucket and a key of
// KeySize random bytes when there are none. Replicas that start at once
// agree on one key: only one create of it succeeds, and the others read
// that one.
func Open(ctx context.Context, js jetstream.KeyValueManager, replicas int, externalURL string) (*Signer, error) {
	kv, err := bus.EnsureKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "the key that signs the cancel and approve links of held rollbacks (rollback watcher)",
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, err
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if _, err := kv.Create(ctx, keyName, key); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("storing the link signing key in %s: %w", Bucket, err)
		}
		entry, err := kv.Get(ctx, keyName)
		if err != nil {
			return nil, fmt.Errorf("reading the link signing key in %s: %w", Bucket, err)
		}
		key = entry.Value()
	}
	s, err := New(key, externalURL)
	if err != nil {
		return nil, fmt.Errorf("the link signing key in %s: %w (delete the key %q to have a new one made)", Bucket, err, keyName)
	}
	return s, nil
}

// Path is the path of the link that decides request id with action
// (cancel or approve), relative to the external URL.
func Path(requestID, action string) string {
	return "/rollbacks/" + url.PathEscape(requestID) + "/" + url.PathEscape(action)
}

// URL is the link that decides request id with action until expires.
func (s *Signer) URL(requestID, action string, expires time.Time) string {
	exp := expires.Unix()
	q := url.Values{ParamExpires: {strconv.FormatInt(exp, 10)}, ParamSignature: {s.sign(requestID, action, exp)}}
	return s.base + Path(requestID, action) + "?" + q.Encode()
}

// Links are the links of a held request: cancel, and approve when it asks
// for an answer, both valid until it executes (or its ask_default
// applies). A plain hold gets no approve link: approving it executes it
// at once, which only a person with credentials should do early.
func (s *Signer) Links(requestID string, executeAt time.Time, ask bool) (cancelURL, approveURL string) {
	cancelURL = s.URL(requestID, "cancel", executeAt)
	if ask {
		approveURL = s.URL(requestID, "approve", executeAt)
	}
	return cancelURL, approveURL
}

// Verify checks a link's expiry and signature (the query parameters as
// received) for request id and action at now. It returns when the link
// expires. The signature is compared in constant time; it is checked
// before the expiry, so that a forged link never learns whether its
// expiry would have passed.
func (s *Signer) Verify(requestID, action, expires, signature string, now time.Time) (time.Time, error) {
	exp, err := strconv.ParseInt(expires, 10, 64)
	if err != nil || exp <= 0 {
		return time.Time{}, fmt.Errorf("%w: %s=%.40q is not a time", ErrForged, ParamExpires, expires)
	}
	want := s.sign(requestID, action, exp)
	if !hmac.Equal([]byte(signature), []byte(want)) {
		return time.Time{}, ErrForged
	}
	at := time.Unix(exp, 0).UTC()
	if !now.Before(at) {
		return at, fmt.Errorf("%w at %s", ErrExpired, at.Format(time.RFC3339))
	}
	return at, nil
}

// sign is the signature of a link: HMAC-SHA256 over a version tag, the
// request id, the action and the expiry, separated by a byte none of them
// can hold, base64url without padding.
func (s *Signer) sign(requestID, action string, expires int64) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("rollback-watcher link v1\n" + requestID + "\n" + action + "\n" + strconv.FormatInt(expires, 10)))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}
