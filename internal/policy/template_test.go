package policy

import (
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

func loadOne(t *testing.T, text string) *Policy {
	t.Helper()
	return mustLoad(t, writeFile(t, t.TempDir(), "p.yml", text)).Policies[0]
}

var deploy = TemplateData{
	Service:         "shop",
	Environment:     "production",
	Version:         "2026.11.25-1",
	PreviousVersion: "2026.11.24-3",
	Labels:          map[string]string{"team": "payments", "note": "two words; rm -rf /"},
	Host:            "web1.example.com",
}

func TestRender(t *testing.T) {
	p := loadOne(t, `
policies:
  - name: p
    checks:
      - name: orders
        query: sum(rate(orders_total{service="{{ .Service }}", env="{{ .Environment }}", team="{{ .Labels.team }}"}[5m]))
        min: 1
    rollback:
      link: /srv/{{ .Service }}/{{ .Host }}/current
      after: [logger, "{{ .Labels.note }}", "{{ .Version }}"]
      data:
        command: [bin/migrate, down, --to, "{{ .PreviousVersion }}"]
`)
	q, err := p.Checks[0].RenderQuery(deploy)
	if want := `sum(rate(orders_total{service="shop", env="production", team="payments"}[5m]))`; err != nil || q != want {
		t.Errorf("RenderQuery = %q, %v; want %q", q, err, want)
	}
	r := &p.Rollback
	link, err := r.RenderLink(deploy)
	if want := "/srv/shop/web1.example.com/current"; err != nil || link != want {
		t.Errorf("RenderLink = %q, %v; want %q", link, err, want)
	}
	dir, err := r.RenderReleasesDir(deploy)
	if want := "/srv/shop/web1.example.com/releases"; err != nil || dir != want {
		t.Errorf("RenderReleasesDir = %q, %v; want %q", dir, err, want)
	}
	// A word is one argv element, spaces, semicolons and all.
	after, err := r.RenderAfter(deploy)
	if want := []string{"logger", "two words; rm -rf /", "2026.11.25-1"}; err != nil || !slices.Equal(after, want) {
		t.Errorf("RenderAfter = %q, %v; want %q", after, err, want)
	}
	cmd, err := r.Data.RenderCommand(deploy)
	if want := []string{"bin/migrate", "down", "--to", "2026.11.24-3"}; err != nil || !slices.Equal(cmd, want) {
		t.Errorf("RenderCommand = %q, %v; want %q", cmd, err, want)
	}
}

func TestRenderErrors(t *testing.T) {
	p := loadOne(t, `
policies:
  - name: p
    checks:
      - name: orders
        query: sum(rate(orders_total{region="{{ .Labels.region }}"}[5m]))
        min: 1
    rollback:
      link: /srv/{{ .Host }}/current
      releases_dir: /srv/{{ .Labels.team }}/releases
      data:
        command: [bin/migrate, down, --to, "{{ .PreviousVersion }}"]
`)
	noPrevious := deploy
	noPrevious.PreviousVersion = ""
	dotdot := deploy
	dotdot.Host = ".."
	slash := deploy
	slash.Labels = map[string]string{"team": "a/"}
	for _, tc := range []struct {
		name string
		do   func() (any, error)
		want string
	}{
		{"missing label", func() (any, error) { return p.Checks[0].RenderQuery(deploy) },
			`check "orders": template: query:1:40: executing "query" at <.Labels.region>: map has no entry for key "region"`},
		{"dotdot in link", func() (any, error) { return p.Rollback.RenderLink(dotdot) },
			`rollback.link renders to "/srv/../current", which is not an absolute, clean path`},
		{"dotdot in default releases_dir", func() (any, error) { return (&Rollback{Link: "/srv/{{ .Host }}/current"}).RenderReleasesDir(dotdot) },
			`rollback.link renders to "/srv/../current", which is not an absolute, clean path`},
		{"trailing slash", func() (any, error) { return p.Rollback.RenderReleasesDir(slash) },
			`rollback.releases_dir renders to "/srv/a//releases", which is not an absolute, clean path`},
		{"empty word", func() (any, error) { return p.Rollback.Data.RenderCommand(noPrevious) },
			`rollback.data.command[3] "{{ .PreviousVersion }}" renders to an empty word`},
		{"no link", func() (any, error) { return (&Rollback{Mode: ModePublish}).RenderLink(deploy) },
			`rollback.link is not set`},
	} {
		got, err := tc.do()
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: got %q, %v; want error %s", tc.name, got, err, tc.want)
		}
	}
}

// Other packages build policies in their tests without Load.
func TestRenderWithoutLoad(t *testing.T) {
	c := &Check{Name: "up", Query: `up{job="{{ .Service }}"}`}
	if q, err := c.RenderQuery(deploy); err != nil || q != `up{job="shop"}` {
		t.Errorf("RenderQuery = %q, %v", q, err)
	}
	r := &Rollback{Link: "/srv/{{ .Service }}/current", After: []string{"systemctl", "reload", "{{ .Service }}"}}
	if l, err := r.RenderLink(deploy); err != nil || l != "/srv/shop/current" {
		t.Errorf("RenderLink = %q, %v", l, err)
	}
	if a, err := r.RenderAfter(deploy); err != nil || !slices.Equal(a, []string{"systemctl", "reload", "shop"}) {
		t.Errorf("RenderAfter = %q, %v", a, err)
	}
	if a, err := (&Rollback{}).RenderAfter(deploy); err != nil || a != nil {
		t.Errorf("RenderAfter with no after = %q, %v; want nil", a, err)
	}
	ds := &DataStep{Command: []string{"migrate", "{{ .Nope }}"}}
	if _, err := ds.RenderCommand(deploy); err == nil || !strings.Contains(err.Error(), "can't evaluate field Nope") {
		t.Errorf("RenderCommand = %v", err)
	}
}

func TestFieldsUsed(t *testing.T) {
	for _, tc := range []struct {
		text   string
		labels []string
		host   bool
	}{
		{`up`, nil, false},
		{`{{ .Labels.team }}-{{ .Labels.region }}-{{ .Labels.team }}`, []string{"team", "region"}, false},
		{`{{ if .Labels.canary }}{{ .Host }}{{ else }}{{ $.Labels.tier }}{{ end }}`, []string{"canary", "tier"}, true},
		{`{{ range $k, $v := .Labels }}{{ $k }}{{ end }}{{ with .Service }}{{ . }}{{ end }}`, nil, false},
		{`{{ index .Labels "x" | printf "%s" }}`, nil, false},
	} {
		tt, err := newTemplate("t", tc.text)
		if err != nil {
			t.Fatal(err)
		}
		f := fieldsUsed(tt)
		if !slices.Equal(f.labels, tc.labels) || f.host != tc.host {
			t.Errorf("fieldsUsed(%q) = %q, %v; want %q, %v", tc.text, f.labels, f.host, tc.labels, tc.host)
		}
	}
}

func TestCleanAbs(t *testing.T) {
	for p, want := range map[string]bool{
		"/srv/shop/current": true,
		"/srv/shop/":        false,
		"/srv//shop":        false,
		"/srv/./shop":       false,
		"/srv/../shop":      false,
		"srv/shop":          false,
		"":                  false,
		"/":                 false,
	} {
		if got := cleanAbs(p); got != want {
			t.Errorf("cleanAbs(%q) = %v", p, got)
		}
	}
}

// A template runs at load time and for every measurement: nothing in it may
// make rendering take unbounded time or memory (found writing hostile seeds
// for FuzzDecodeFile: {{range 1000000000000}} hung `watcher check`).
func TestTemplatesAreBounded(t *testing.T) {
	for _, tc := range []struct{ query, want string }{
		{`up{{range 1000000000000}}{{end}}`, "range works only over a field of the data"},
		{`up{{$n := 5}}{{range $n}}{{end}}`, "range works only over a field of the data"},
		{`up{{with 5}}{{range .}}{{end}}{{end}}`, "range works only over a field of the data"},
		{`up{{range len "xxxx"}}{{end}}`, "range works only over a field of the data"},
		{`up{{range .Labels}}{{range $.Labels}}{{end}}{{end}}`, "a range inside a range is not supported"},
		{`up{{range .Labels}}{{else}}{{range $.Labels}}{{end}}{{end}}`, "a range inside a range is not supported"},
		{`{{define "a"}}{{template "a"}}{{template "a"}}{{end}}up`, "{{define}} and {{block}} are not supported"},
		{`{{block "a" .}}up{{end}}`, "{{define}} and {{block}} are not supported"},
		{`up{{template "a"}}`, "{{template}} is not supported"},
		{`up{x="{{range .Labels}}{{printf "%999999d" 0}}{{end}}"}`, "renders to more than 65536 bytes"},
	} {
		c := &Check{Name: "c", Query: tc.query}
		if q, err := c.RenderQuery(deploy); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("RenderQuery(%s) = %.40q, %v; want an error saying %q", tc.query, q, err, tc.want)
		}
	}
	// One range over the labels is fine.
	c := &Check{Name: "c", Query: `up{labels="{{ range $k, $v := $.Labels }}{{ $k }}={{ $v }};{{ end }}"}`}
	if q, err := c.RenderQuery(deploy); err != nil || q != `up{labels="note=two words; rm -rf /;team=payments;"}` {
		t.Errorf("RenderQuery = %q, %v", q, err)
	}
}

// TestQueryValuesStayStringLiterals: whoever can publish a deploy chooses
// its labels, and a label that could end the string literal it is put in,
// such as `x"} or vector(1) #`, would rewrite the check's query so that
// their own bad deploy passes. What a query's template prints is escaped
// for the literal it is in, so PromQL reads back exactly the value.
func TestQueryValuesStayStringLiterals(t *testing.T) {
	values := []string{
		`x"} or vector(1) #`,
		`x'} or vector(1) #`,
		`back\slash`, `trailing\`, `\"`, `\\"`,
		"line\nbreak\r\n", "tab\there", "nul\x00", "bell\a\b\f\v",
		"é ü 日本 🚀", "line\u2028separator", "replacement \uFFFD char", "zero\u200bwidth",
		"`raw`", "#comment", "{{ .Service }}", "",
	}
	for _, tmpl := range []string{
		`up{v="{{ .Labels.v }}"}`,
		`up{v='{{ .Labels.v }}'}`,
		`up{v="{{ .Labels.v | printf "%s" }}"}`,
		`up{v="{{ with .Labels.v }}{{ . }}{{ end }}"}`,
		`up{v="{{ range $k, $v := .Labels }}{{ $v }}{{ end }}"}`,
		`label_replace(up, "v", "{{ .Labels.v }}", "", "")`, // a function's string argument
	} {
		c := &Check{Name: "c", Query: tmpl}
		for _, v := range values {
			d := deploy
			d.Labels = map[string]string{"v": v}
			q, err := c.RenderQuery(d)
			if err != nil {
				t.Errorf("%s with %q: %v", tmpl, v, err)
				continue
			}
			expr, err := promql.ParseExpr(q)
			if err != nil {
				t.Errorf("%s with %q renders %s, which is not PromQL: %v", tmpl, v, q, err)
				continue
			}
			if got := stringsIn(expr); !slices.Contains(got, v) {
				t.Errorf("%s with %q renders %s, whose strings are %q", tmpl, v, q, got)
			}
		}
	}

	// Decisions inside the template see the value as it is.
	c := &Check{Name: "c", Query: `up{v="{{ if eq .Labels.v "a\"b" }}quote{{ else }}{{ .Labels.v }}{{ end }}"}`}
	d := deploy
	d.Labels = map[string]string{"v": `a"b`}
	if q, err := c.RenderQuery(d); err != nil || q != `up{v="quote"}` {
		t.Errorf("RenderQuery = %q, %v; want the comparison to see the raw value", q, err)
	}
	// What the template writes itself is escaped too.
	c = &Check{Name: "c", Query: `up{v="{{ printf "%s\"} or vector(1) #" .Service }}"}`}
	if q, err := c.RenderQuery(deploy); err != nil || q != `up{v="shop\"} or vector(1) #"}` {
		t.Errorf("RenderQuery = %q, %v", q, err)
	}
}

// stringsIn is every string in a PromQL expression: string literals and
// label matcher values.
func stringsIn(expr parser.Expr) []string {
	var out []string
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.StringLiteral:
			out = append(out, n.Val)
		case *parser.VectorSelector:
			for _, m := range n.LabelMatchers {
				if m.Name != "__name__" {
					out = append(out, m.Value)
				}
			}
		}
		return nil
	})
	return out
}

// TestQueryActionsOutsideStrings: a template action in a query outside a
// "..." or '...' literal could put a deploy's value into PromQL syntax,
// where no escaping helps; such a query is refused, naming the action.
func TestQueryActionsOutsideStrings(t *testing.T) {
	for _, tc := range []struct{ query, want string }{
		{`up{service={{ .Service }}}`, `query:1:14: {{.Service}}: prints outside a string literal`},
		{`{{ .Labels.team }}_total`, `query:1:3: {{.Labels.team}}: prints outside a string literal`},
		{"up{team=`{{ .Labels.team }}`}", "query:1:12: {{.Labels.team}}: prints inside a `...` string"},
		{"up # {{ .Labels.team }}", `query:1:8: {{.Labels.team}}: prints inside a # comment`},
		{`up{team="\{{ .Labels.team }}"}`, `query:1:13: {{.Labels.team}}: prints just after a backslash`},
		{`up offset {{ "5m" }}`, `query:1:13: {{"5m"}}: prints outside a string literal`},
		{`up{team="{{ if .Labels.team }}x"{{ end }}}`, `branches of {{if}} end in different places`},
		{`up{team="{{ range .Labels }}x"{{ end }}}`, `the body of {{range}} does not end where it starts`},
	} {
		c := &Check{Name: "c", Query: tc.query}
		q, err := c.RenderQuery(deploy)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("RenderQuery(%s) = %q, %v; want an error saying %q", tc.query, q, err, tc.want)
		}
	}
}

// TestQueryRegexValuesMatchThemselves: inside a regex matcher (=~, !~) a
// string literal is a regular expression, so a team label `.*` put into
// team=~"{{ .Labels.team }}" would select every team. A value printed
// after =~ or !~ is quoted for the regex first: it matches itself and
// nothing else, while the template's own regex around it stays a regex.
func TestQueryRegexValuesMatchThemselves(t *testing.T) {
	matcher := func(t *testing.T, q, name string) *labels.Matcher {
		t.Helper()
		expr, err := promql.ParseExpr(q)
		if err != nil {
			t.Fatalf("renders %s, which is not PromQL: %v", q, err)
		}
		var m *labels.Matcher
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				for _, lm := range vs.LabelMatchers {
					if lm.Name == name {
						m = lm
					}
				}
			}
			return nil
		})
		if m == nil {
			t.Fatalf("renders %s, with no matcher on %s", q, name)
		}
		return m
	}
	values := []string{".*", ".+", "payments|.*", "pay.ents", "(", `\d+`, `a\`, `x"} or vector(1) #`, "^$", "", "[a-z]*", "payments"}
	for _, tmpl := range []string{
		`up{team=~"{{ .Labels.team }}"}`,
		`up{team =~ '{{ .Labels.team }}'}`,
		"up{team=~\n\t\"{{ .Labels.team }}\"}",
		`up{team=~"{{ if .Labels.team }}{{ .Labels.team }}{{ end }}"}`,
		`up{team!~"{{ .Labels.team }}"}`,
		`up{team!~ "{{ .Labels.team }}"}`,
	} {
		for _, v := range values {
			d := deploy
			d.Labels = map[string]string{"team": v}
			q, err := (&Check{Name: "c", Query: tmpl}).RenderQuery(d)
			if err != nil {
				t.Errorf("%s with %q: %v", tmpl, v, err)
				continue
			}
			m := matcher(t, q, "team")
			// A negative matcher selects what the positive one does not.
			pos := m.Type == labels.MatchRegexp
			for _, other := range []string{"payments", "other", "", ".*", "pay.ents", "payXents"} {
				if got := m.Matches(other); (got == pos) != (other == v) {
					t.Errorf("%s with %q renders %s, whose matcher %s says %v to team %q", tmpl, v, q, m, got, other)
				}
			}
		}
	}

	// The value sits inside the template's own regex: only it is quoted.
	for _, tc := range []struct {
		tmpl, service string
		match, not    []string
	}{
		{`up{job=~"prefix-{{ .Service }}.*"}`, "a.b", []string{"prefix-a.b", "prefix-a.b-canary"}, []string{"prefix-aXb", "other", "prefix-"}},
		{`up{job=~"({{ .Service }}|{{ .Environment }})-api"}`, "shop|.*", []string{"shop|.*-api", "production-api"}, []string{"shop-api", "x-api"}},
		{`up{job="{{ .Service }}", team=~"{{ .Labels.team }}"}`, ".*", []string{}, []string{}},
	} {
		d := deploy
		d.Service = tc.service
		q, err := (&Check{Name: "c", Query: tc.tmpl}).RenderQuery(d)
		if err != nil {
			t.Errorf("%s: %v", tc.tmpl, err)
			continue
		}
		m := matcher(t, q, "job")
		for _, s := range tc.match {
			if !m.Matches(s) {
				t.Errorf("%s with service %q renders %s, which does not match %q", tc.tmpl, tc.service, q, s)
			}
		}
		for _, s := range tc.not {
			if m.Matches(s) {
				t.Errorf("%s with service %q renders %s, which matches %q", tc.tmpl, tc.service, q, s)
			}
		}
		// An equality matcher's value is not regex-quoted.
		if m.Type == labels.MatchEqual && m.Value != tc.service {
			t.Errorf("%s with service %q renders %s: job=%q, want the value as it is", tc.tmpl, tc.service, q, m.Value)
		}
	}

	// Whether a value is in a regex must not depend on the data.
	_, err := (&Check{Name: "c", Query: `up{team{{ if .Labels.x }}={{ else }}=~{{ end }}"{{ .Labels.team }}"}`}).RenderQuery(deploy)
	if want := "branches of {{if}} end in different places"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a matcher that is =~ or = by the data: %v, want an error saying %q", err, want)
	}
}

// TestQueryRange: {{ .Range }} is the one value a query prints outside a
// string literal, and only as all of the duration of a range selector or
// subquery; everywhere else it is refused like any other action.
func TestQueryRange(t *testing.T) {
	d := deploy
	d.Range = "1h5m30s"
	for _, tc := range []struct{ query, want string }{
		{`sum(increase(errors_total{service="{{ .Service }}"}[{{ .Range }}]))`, `sum(increase(errors_total{service="shop"}[1h5m30s]))`},
		{`sum(increase(errors_total[ {{ .Range }} ]))`, `sum(increase(errors_total[ 1h5m30s ]))`},
		{`max_over_time(up[{{ $.Range }}:1m])`, `max_over_time(up[1h5m30s:1m])`},
		{`max_over_time(rate(up[5m])[1h:{{ .Range }}])`, `max_over_time(rate(up[5m])[1h:1h5m30s])`},
		{`up{range="{{ .Range }}"}`, `up{range="1h5m30s"}`}, // in a literal it is a string like any other
		{`{{ if .Labels.team }}increase(x[{{ .Range }}]){{ else }}increase(y[{{ .Range }}]){{ end }}`, `increase(x[1h5m30s])`},
	} {
		q, err := (&Check{Name: "c", Query: tc.query}).RenderQuery(d)
		if err != nil || q != tc.want {
			t.Errorf("RenderQuery(%s) = %q, %v; want %q", tc.query, q, err, tc.want)
			continue
		}
		if _, err := promql.ParseExpr(q); err != nil {
			t.Errorf("%s renders %s, which is not PromQL: %v", tc.query, q, err)
		}
	}

	const where = "{{ .Range }} goes only where a duration goes"
	for _, tc := range []struct{ query, want string }{
		{`increase(x[5m] offset {{ .Range }})`, where},
		{`increase(x[5m]) > {{ .Range }}`, where},
		{`{{ .Range }}`, where},
		{`increase(x[{{ .Range }}{{ .Range }}])`, where},
		{`increase(x[5m{{ .Range }}])`, where},
		{`increase(x[{{ .Range }}5m])`, "follows {{ .Range }} in the same duration"},
		{`increase(x[{{ .Range }} or vector(1)])`, "follows {{ .Range }} in the same duration"},
		{`increase(x[{{ .Range }}]) or up:{{ .Range }}`, where}, // ":" outside [...] starts no duration
		{`increase(x[{{ .Range | printf "%s" }}])`, "prints outside a string literal"},
		{`increase(x[{{ with .Range }}{{ . }}{{ end }}])`, "prints outside a string literal"},
		{`increase(x[{{ .Labels.team }}])`, "prints outside a string literal"},
		{`increase(x[{{ .Service }}])`, "prints outside a string literal"},
		{`{{ if .Labels.team }}increase(x[{{ .Range }}]){{ else }}increase(x[{{ end }}5m])`, "end in different places of a range selector's [...]"},
	} {
		q, err := (&Check{Name: "c", Query: tc.query}).RenderQuery(d)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("RenderQuery(%s) = %q, %v; want an error saying %q", tc.query, q, err, tc.want)
		}
	}
}

// TestRenderCounts: a count comparison's errors and total render with the
// span, and a Range that is not a Prometheus duration is refused when it
// is printed, whoever filled it in.
func TestRenderCounts(t *testing.T) {
	p := loadOne(t, `
policies:
  - name: p
    checks:
      - name: errors
        compare:
          with: pre_deploy
          errors: sum(increase(errors_total{service="{{ .Service }}"}[{{ .Range }}]))
          total: sum(increase(requests_total{service="{{ .Service }}"}[{{ .Range }}]))
          margin: 0.5
      - {name: up, query: up, min: 1}
    rollback: {mode: publish}
`)
	c := p.Checks[0]
	d := deploy
	d.Range = "30m"
	if q, err := c.RenderErrors(d); err != nil || q != `sum(increase(errors_total{service="shop"}[30m]))` {
		t.Errorf("RenderErrors = %q, %v", q, err)
	}
	if q, err := c.RenderTotal(d); err != nil || q != `sum(increase(requests_total{service="shop"}[30m]))` {
		t.Errorf("RenderTotal = %q, %v", q, err)
	}
	for _, r := range []string{"", "0s", "-5m", "5", "5 m", "30m]) or vector(1) #", "30m\n", "1h30m]", "5m:1m", "1e3s", "{{ .Service }}", "99999999999999999999y"} {
		d.Range = r
		for name, render := range map[string]func(TemplateData) (string, error){"errors": c.RenderErrors, "total": c.RenderTotal} {
			q, err := render(d)
			if err == nil || !strings.Contains(err.Error(), "is not a positive Prometheus duration") {
				t.Errorf("%s with Range %q = %q, %v; want it refused", name, r, q, err)
			}
		}
	}
	if _, err := p.Checks[1].RenderErrors(d); err == nil || err.Error() != `check "up" has no compare.errors` {
		t.Errorf("RenderErrors of a check without counts: %v", err)
	}
	// Without Load, the same template and the same guard.
	bare := &Check{Name: "bare", Compare: &Compare{Errors: `sum(increase(e[{{ .Range }}]))`, Total: `sum(increase(r[{{ .Range }}]))`}}
	d.Range = "1h"
	if q, err := bare.RenderTotal(d); err != nil || q != `sum(increase(r[1h]))` {
		t.Errorf("RenderTotal without Load = %q, %v", q, err)
	}
	d.Range = "1h] or vector(1)"
	if q, err := bare.RenderErrors(d); err == nil {
		t.Errorf("RenderErrors without Load took Range %q: %q", d.Range, q)
	}
}
