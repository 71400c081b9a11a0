package policy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// policyJSON is what a policy says, for comparing a policy with the one its
// snapshot gives back: line numbers of checks within the snapshot differ
// from those in the rules file.
func policyJSON(t *testing.T, p *Policy) string {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	for _, c := range v["Checks"].([]any) {
		delete(c.(map[string]any), "Line")
	}
	b, _ = json.Marshal(v)
	return string(b)
}

// TestSnapshotRoundTrip: every policy of the example rules and of the test
// rules comes back from its snapshot saying the same thing, and renders
// its templates the same way.
func TestSnapshotRoundTrip(t *testing.T) {
	var all []*Policy
	for _, pattern := range []string{"../../rules/*.yml", "testdata/good.yml", "testdata/good-compare.yml"} {
		all = append(all, mustLoad(t, pattern).Policies...)
	}
	if len(all) < 3 {
		t.Fatalf("only %d policies", len(all))
	}
	data := TemplateData{Service: "shop", Environment: "production", Version: "v2", PreviousVersion: "v1", Host: "web1", Range: "30m"}
	for _, p := range all {
		t.Run(p.Name, func(t *testing.T) {
			s := p.Snapshot()
			b, err := json.Marshal(s)
			if err != nil {
				t.Fatal(err)
			}
			var back Snapshot
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			q, err := back.Policy()
			if err != nil {
				t.Fatalf("%v\nsource:\n%s", err, s.Source)
			}
			if got, want := policyJSON(t, q), policyJSON(t, p); got != want {
				t.Errorf("snapshot gives\n%s\nwant\n%s", got, want)
			}
			for i, c := range p.Checks {
				want, _ := c.RenderQuery(data)
				got, _ := q.Checks[i].RenderQuery(data)
				if got != want {
					t.Errorf("check %s renders %q, want %q", c.Name, got, want)
				}
				if c.Compare == nil || !c.Compare.Counts() {
					continue
				}
				for _, r := range []struct {
					name      string
					want, got func(TemplateData) (string, error)
				}{{"errors", c.RenderErrors, q.Checks[i].RenderErrors}, {"total", c.RenderTotal, q.Checks[i].RenderTotal}} {
					want, werr := r.want(data)
					got, gerr := r.got(data)
					if werr != nil || gerr != nil || got != want {
						t.Errorf("check %s: %s renders %q, %v; want %q, %v", c.Name, r.name, got, gerr, want, werr)
					}
				}
			}
			if p.Score != nil && (q.Score == nil || *q.Score != *p.Score || q.OnMarginal != p.OnMarginal) {
				t.Errorf("score %v, on_marginal %q; want %v, %q", q.Score, q.OnMarginal, *p.Score, p.OnMarginal)
			}
			wantLink, _ := p.Rollback.RenderLink(data)
			gotLink, _ := q.Rollback.RenderLink(data)
			if gotLink != wantLink {
				t.Errorf("link renders %q, want %q", gotLink, wantLink)
			}
		})
	}
}

// TestSnapshotAnchors: a policy that borrows from another through an
// anchor and a merge key stands on its own in its snapshot, and later edits
// of the rules file do not reach it.
func TestSnapshotAnchors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "rules.yml")
	rules := `policies:
  - name: base
    match: {service: cart}
    window: 10m
    interval: 30s
    checks: &checks
      - {name: orders, query: 'sum(rate(orders_total{service="{{ .Service }}"}[1m]))', min: 5}
    rollback: &rb
      link: /srv/{{ .Service }}/current
  - name: shop
    <<: {window: 20m, interval: 1m}
    match: {service: shop}
    checks: *checks
    rollback: *rb
`
	if err := os.WriteFile(file, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	set := mustLoad(t, file)
	p := set.Match("shop", "production")
	s := p.Snapshot()
	if strings.Contains(s.Source, "*") || strings.Contains(s.Source, "&") || strings.Contains(s.Source, "name: base") {
		t.Errorf("snapshot is not on its own:\n%s", s.Source)
	}
	if err := os.WriteFile(file, []byte("policies: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	q, err := s.Policy()
	if err != nil {
		t.Fatalf("%v\n%s", err, s.Source)
	}
	if got, want := policyJSON(t, q), policyJSON(t, p); got != want {
		t.Errorf("snapshot gives\n%s\nwant\n%s", got, want)
	}
	if q.Window.String() != "20m" || q.Checks[0].Name != "orders" {
		t.Errorf("window %s, checks %v", q.Window, q.Checks[0].Name)
	}
}

func TestSnapshotEmpty(t *testing.T) {
	if _, err := (Snapshot{File: "rules/x.yml", Line: 3}).Policy(); err == nil || !strings.Contains(err.Error(), "rules/x.yml:3") {
		t.Errorf("empty snapshot: %v", err)
	}
}
