package links

import (
	"bytes"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/testutil"
)

func mustSigner(t *testing.T, key, ext string) *Signer {
	t.Helper()
	s, err := New([]byte(key), ext)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// parse splits a link into what a request to it carries.
func parse(t *testing.T, link string) (path, expires, sig string) {
	t.Helper()
	u, err := url.Parse(link)
	if err != nil {
		t.Fatal(err)
	}
	return u.Path, u.Query().Get(ParamExpires), u.Query().Get(ParamSignature)
}

func TestLinkVerifies(t *testing.T) {
	key := strings.Repeat("k", KeySize)
	s := mustSigner(t, key, "https://watcher.example.com/ops/")
	now := time.Date(2026, 12, 4, 12, 50, 0, 0, time.UTC)
	exec := now.Add(2 * time.Minute)
	cancel, approve := s.Links("rb-01JRUNB", exec, true)
	path, exp, sig := parse(t, cancel)
	if !strings.HasPrefix(cancel, "https://watcher.example.com/ops/rollbacks/rb-01JRUNB/cancel?") || path != "/ops/rollbacks/rb-01JRUNB/cancel" {
		t.Errorf("cancel link %s", cancel)
	}
	if at, err := s.Verify("rb-01JRUNB", "cancel", exp, sig, now); err != nil || !at.Equal(exec.Truncate(time.Second)) {
		t.Fatalf("Verify = %v, %v; want nil, %s", at, err, exec)
	}
	if _, _, asig := parse(t, approve); asig == sig || !strings.Contains(approve, "/rollbacks/rb-01JRUNB/approve?") {
		t.Errorf("approve link %s shares the cancel link's signature or path", approve)
	}
	if _, noAsk := s.Links("rb-01JRUNB", exec, false); noAsk != "" {
		t.Errorf("a plain hold got an approve link %s", noAsk)
	}

	other := mustSigner(t, strings.Repeat("x", KeySize), "https://watcher.example.com/")
	flip := []byte(sig)
	flip[3] ^= 1
	for _, tc := range []struct {
		name                     string
		s                        *Signer
		id, action, expires, sig string
		at                       time.Time
		want                     error
	}{
		{"another request", s, "rb-01JRUNC", "cancel", exp, sig, now, ErrForged},
		{"approve with a cancel link's signature", s, "rb-01JRUNB", "approve", exp, sig, now, ErrForged},
		{"a later expiry", s, "rb-01JRUNB", "cancel", "9999999999", sig, now, ErrForged},
		{"a bit flipped", s, "rb-01JRUNB", "cancel", exp, string(flip), now, ErrForged},
		{"truncated", s, "rb-01JRUNB", "cancel", exp, sig[:20], now, ErrForged},
		{"no signature", s, "rb-01JRUNB", "cancel", exp, "", now, ErrForged},
		{"no expiry", s, "rb-01JRUNB", "cancel", "", sig, now, ErrForged},
		{"another key", other, "rb-01JRUNB", "cancel", exp, sig, now, ErrForged},
		{"at its expiry", s, "rb-01JRUNB", "cancel", exp, sig, exec.Truncate(time.Second), ErrExpired},
		{"after it", s, "rb-01JRUNB", "cancel", exp, sig, exec.Add(time.Hour), ErrExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.s.Verify(tc.id, tc.action, tc.expires, tc.sig, tc.at); !errors.Is(err, tc.want) {
				t.Errorf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestNewRefuses(t *testing.T) {
	if _, err := New([]byte("short"), "https://w.example.com"); err == nil {
		t.Error("a 5-byte key was taken")
	}
	for _, ext := range []string{"", "watcher.example.com", "ftp://w.example.com/"} {
		if _, err := New(bytes.Repeat([]byte{1}, KeySize), ext); err == nil {
			t.Errorf("external URL %q was taken", ext)
		}
	}
}

// Replicas starting at once on one NATS agree on one key, and a watcher
// started later reads it: a link minted by one verifies on every other.
func TestOpenSharesTheKey(t *testing.T) {
	n := testutil.StartNATS(t)
	signers := make([]*Signer, 4)
	var wg sync.WaitGroup
	for i := range signers {
		wg.Go(func() {
			s, err := Open(t.Context(), n.JS, 1, "http://127.0.0.1:9797")
			if err != nil {
				t.Error(err)
			}
			signers[i] = s
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	later, err := Open(t.Context(), n.JS, 1, "http://127.0.0.1:9797/")
	if err != nil {
		t.Fatal(err)
	}
	exec := time.Now().Add(time.Minute)
	_, exp, sig := parse(t, signers[0].URL("rb-1", "cancel", exec))
	for i, s := range append(signers[1:], later) {
		if _, err := s.Verify("rb-1", "cancel", exp, sig, time.Now()); err != nil {
			t.Errorf("signer %d: %v", i+1, err)
		}
	}
	if bytes.Equal(signers[0].key, make([]byte, KeySize)) {
		t.Error("the key is all zeroes")
	}
}
