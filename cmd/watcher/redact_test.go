package main

import (
	"net/url"
	"slices"
	"testing"
)

// TestURLSecrets: the secret of a URL is its password (or NATS token) as
// net/url reads it where the URL parses: an "@" in the path, query or
// fragment does not belong to it. A URL that does not parse (an unescaped
// "/" or "#" in the password makes the user info look like a host) still
// has its password hidden.
func TestURLSecrets(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string // the secret as written first
	}{
		{"http://u:password@host/?m=a@b", []string{"password"}},
		{"http://u:password@host/p@th#frag@x", []string{"password"}},
		{"http://prom:9090/?m=user@example.com", nil},
		{"nats://s3cret-tok@n1:4222?x=@", []string{"s3cret-tok"}},
		{"nats://u:p%40ssword@n1:4222/a@b", []string{"p%40ssword", "p@ssword"}},
		{"nats://u:pass@word@n1:4222", []string{"pass@word"}},
		{"s3cret-tok@n1:4222/a@b", []string{"s3cret-tok"}},
		// Do not parse: the password is hidden all the same.
		{"http://u:pass%zz@host/?m=a@b", []string{"pass%zz"}},
		{"http://u:ab/cdef@prom:9090", []string{"ab/cdef"}},
		{"nats://u:pw#1234@n1:4222", []string{"pw#1234"}},
	} {
		got := urlSecrets(tc.in)
		if len(tc.want) == 0 {
			if len(got) != 0 {
				t.Errorf("urlSecrets(%q) = %q, want none", tc.in, got)
			}
			continue
		}
		for _, w := range tc.want {
			if !slices.Contains(got, w) {
				t.Errorf("urlSecrets(%q) = %q, want %q among them", tc.in, got, w)
			}
		}
		if got[0] != tc.want[0] {
			t.Errorf("urlSecrets(%q) = %q, want %q first", tc.in, got, tc.want[0])
		}
		if u, err := url.Parse(tc.in); err == nil && u.User != nil {
			pw, ok := u.User.Password()
			if !ok {
				pw = u.User.Username()
			}
			if !slices.Contains(got, pw) {
				t.Errorf("urlSecrets(%q) = %q, lacks net/url's password %q", tc.in, got, pw)
			}
		}
	}
}
