package policy

import (
	"path/filepath"
	"testing"
)

func TestMatch(t *testing.T) {
	dir := t.TempDir()
	// b.yml is written first, but files go by name.
	writeFile(t, dir, "b.yml", `
policies:
  - name: any-staging
    match: {environment: staging}
    checks: [{name: c, query: up, min: 1}]
    rollback: {link: /srv/x/current}
  - name: catch-all
    checks: [{name: c, query: up, min: 1}]
    rollback: {link: /srv/x/current}
`)
	writeFile(t, dir, "a.yml", `
policies:
  - name: shop-production
    match: {service: shop, environment: production}
    checks: [{name: c, query: up, min: 1}]
    rollback: {link: /srv/x/current}
  - name: shop-family
    match: {service: "shop-*", environment: "prod*"}
    checks: [{name: c, query: up, min: 1}]
    rollback: {link: /srv/x/current}
  - name: shop-staging-later-in-file
    match: {service: shop, environment: staging}
    checks: [{name: c, query: up, min: 1}]
    rollback: {link: /srv/x/current}
`)
	s := mustLoad(t, filepath.Join(dir, "*.yml"))
	for _, tc := range []struct{ service, env, want string }{
		{"shop", "production", "shop-production"},
		{"shop-api", "production", "shop-family"},
		{"shop-api", "prod-eu", "shop-family"},
		{"shop", "staging", "shop-staging-later-in-file"}, // a.yml before b.yml
		{"billing", "staging", "any-staging"},
		{"billing", "production", "catch-all"},
		{"shop-api", "staging", "any-staging"},
	} {
		p := s.Match(tc.service, tc.env)
		if p == nil || p.Name != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %s", tc.service, tc.env, p, tc.want)
		}
	}

	only := &Set{Policies: []*Policy{{Name: "shop", Match: Match{Service: "shop"}}}}
	if p := only.Match("billing", "production"); p != nil {
		t.Errorf("Match(billing) = %s, want nil", p.Name)
	}
	if p := (*Set)(nil).Match("shop", "production"); p != nil {
		t.Errorf("nil Set matched %s", p.Name)
	}
}

func TestMatchMatches(t *testing.T) {
	for _, tc := range []struct {
		m            Match
		service, env string
		want         bool
	}{
		{Match{}, "anything", "anywhere", true},
		{Match{Service: "shop"}, "shop", "x", true},
		{Match{Service: "shop"}, "shop-api", "x", false},
		{Match{Service: "shop*"}, "shop-api", "x", true},
		{Match{Service: "sh?p"}, "shop", "x", true},
		{Match{Service: "[st]hop"}, "thop", "x", true},
		{Match{Environment: "prod"}, "shop", "production", false},
		{Match{Service: "[", Environment: ""}, "[", "x", true}, // exact match needs no glob
	} {
		if got := tc.m.Matches(tc.service, tc.env); got != tc.want {
			t.Errorf("%+v.Matches(%q, %q) = %v", tc.m, tc.service, tc.env, got)
		}
	}
}
