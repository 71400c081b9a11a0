package policy

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"
	"unicode"
	"unicode/utf8"

	"github.com/prometheus/common/model"
)

// newTemplate parses a policy template. missingkey=error makes a deploy
// without a label that the template reads an error, not an empty string in
// a query or a path.
//
// Templates are executed at load time (with sample data) and for every
// measurement and rollback, so a template must not be able to run without
// end: checkBounded refuses the constructs that could.
func newTemplate(name, text string) (*template.Template, error) {
	return parseTemplate(name, text, nil)
}

func parseTemplate(name, text string, funcs template.FuncMap) (*template.Template, error) {
	t, err := template.New(name).Option("missingkey=error").Funcs(funcs).Parse(text)
	if err != nil {
		return nil, err
	}
	if err := checkBounded(t); err != nil {
		return nil, err
	}
	return t, nil
}

// newQueryTemplate parses a check's query template. Whoever can publish a
// deploy chooses its labels (and, within their patterns, its names and
// versions), so what a query prints from the deploy must never become
// PromQL syntax: a label `x"} or vector(1) #` put into team="..." would
// otherwise end the literal and make the check pass whatever the service
// does. So, as html/template does for HTML, every action that prints must
// sit inside a "..." or '...' string literal, and what it prints is escaped
// for that literal: PromQL reads back exactly the value. In the literal of
// a regex matcher (team=~"...", !~) the value is also quoted for the
// regex, so that a team `.*` selects the team named `.*`, not every team.
// Decisions inside the template ({{if eq .Labels.team "x"}}) still see the
// raw values.
func newQueryTemplate(name, text string) (*template.Template, error) {
	t, err := parseTemplate(name, text, queryFuncs)
	if err != nil {
		return nil, err
	}
	if err := escapeQuery(t); err != nil {
		return nil, err
	}
	return t, nil
}

// The escapers escapeQuery appends to the actions of a query.
const (
	escDouble      = "_watcher_promql_double_quoted"
	escSingle      = "_watcher_promql_single_quoted"
	escDoubleRegex = "_watcher_promql_double_quoted_regex"
	escSingleRegex = "_watcher_promql_single_quoted_regex"
	escDuration    = "_watcher_promql_duration"
)

var queryFuncs = template.FuncMap{
	escDouble: func(v any) string { return promqlEscape(fmt.Sprint(v), '"') },
	escSingle: func(v any) string { return promqlEscape(fmt.Sprint(v), '\'') },
	// The regex escaping comes first: PromQL unescapes the literal, then
	// compiles what it reads as a regex, which QuoteMeta made match itself.
	escDoubleRegex: func(v any) string { return promqlEscape(regexp.QuoteMeta(fmt.Sprint(v)), '"') },
	escSingleRegex: func(v any) string { return promqlEscape(regexp.QuoteMeta(fmt.Sprint(v)), '\'') },
	escDuration:    promqlDuration,
}

// promqlDuration lets v through only if it is a positive Prometheus
// duration ("30m", "1h5m30s"): nothing else can stand where a duration
// goes without changing the query.
func promqlDuration(v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf(".Range must be a duration string, got a %T", v)
	}
	if d, err := model.ParseDuration(s); err != nil || d <= 0 {
		return "", fmt.Errorf(".Range %q is not a positive Prometheus duration such as 30m or 1h5m30s", s)
	}
	return s, nil
}

// promqlEscape escapes s for the inside of a PromQL string literal opened
// by quote (" or '), so that PromQL reads back exactly s: a backslash and
// the quote are escaped, and so is everything the lexer refuses inside a
// literal (a newline, U+FFFD, which it takes for invalid UTF-8) or that
// could hide in a query shown to people (other control and format
// characters).
func promqlEscape(s string, quote byte) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\' || r == rune(quote):
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == utf8.RuneError || !unicode.IsPrint(r):
			if r > 0xFFFF {
				fmt.Fprintf(&b, `\U%08x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteRune(r)
		}
		i += size
	}
	return b.String()
}

// quoting is where PromQL's lexer is at a point of a query's text.
type quoting int

const (
	inCode quoting = iota
	inDouble
	inDoubleEscape // just after a backslash in "..."
	inSingle
	inSingleEscape
	inRaw     // `...`: no escapes at all
	inComment // # to the end of the line
)

// matchOp is what the code just before a string literal says about it.
type matchOp int

const (
	opNone   matchOp = iota
	opEq             // "=" or "!": "~" would make a regex matcher
	opRegex          // "=~" or "!~", maybe followed by blanks: a literal now is a regex
	opDur            // "[", or ":" inside one, maybe followed by blanks: a duration may start here
	opDurEnd         // a {{ .Range }} just printed: only blanks, "]" or ":" may follow
)

// lexState is where PromQL's lexer is at a point of a query's text, and
// whether a literal there is a regex matcher's.
type lexState struct {
	q       quoting
	op      matchOp // in code
	regex   bool    // in a literal: it follows =~ or !~
	bracket bool    // in code: inside the [...] of a range selector or subquery
}

// same reports whether what an action prints at a and at b is escaped the
// same way, and stays so whatever text follows.
func (a lexState) same(b lexState) bool {
	kept := func(op matchOp) matchOp {
		if op == opRegex || op == opDur || op == opDurEnd {
			return op
		}
		return opNone
	}
	return a.q == b.q && a.regex == b.regex && a.bracket == b.bracket && kept(a.op) == kept(b.op)
}

// after is where the lexer is after text, starting at st.
func (st lexState) after(text []byte) lexState {
	q := st.q
	for _, c := range text { // every character that matters is ASCII
		switch q {
		case inCode:
			switch c {
			case '"', '\'', '`':
				q = inDouble
				if c == '\'' {
					q = inSingle
				} else if c == '`' {
					q = inRaw
				}
				st.regex = st.op == opRegex
				st.op = opNone
			case '#':
				q = inComment // the lexer skips it: st.op stays
			case ' ', '\t', '\n', '\r':
			case '[':
				st.op, st.bracket = opDur, true
			case ']':
				st.op, st.bracket = opNone, false
			case ':':
				st.op = opNone
				if st.bracket {
					st.op = opDur
				}
			case '=', '!':
				st.op = opEq
			case '~':
				if st.op == opEq {
					st.op = opRegex
				} else {
					st.op = opNone
				}
			default:
				st.op = opNone
			}
		case inDouble, inSingle:
			switch {
			case c == '\\':
				q++ // the matching escape state
			case q == inDouble && c == '"', q == inSingle && c == '\'':
				q = inCode
				st.regex = false
			}
		case inDoubleEscape, inSingleEscape:
			q--
		case inRaw:
			if c == '`' {
				q = inCode
				st.regex = false
			}
		case inComment:
			if c == '\n' || c == '\r' {
				q = inCode
			}
		}
	}
	st.q = q
	return st
}

// escapeQuery makes every action of t that prints escape its output for
// the string literal it is in, and refuses an action outside one. Like
// html/template, it follows the template's text as PromQL's lexer would,
// and requires both branches of an if or with to end in the same place, and
// a range's body to end where it started, so that the place of every
// action is known whatever the data.
func escapeQuery(t *template.Template) error {
	if t.Tree == nil {
		return nil
	}
	// where says where n is, before its actions get their escapers.
	where := func(n parse.Node) string {
		loc, context := t.ErrorContext(n)
		return loc + ": " + context
	}
	fail := func(n parse.Node, msg string) error {
		return fmt.Errorf("template: %s: %s", where(n), msg)
	}
	var walk func(n parse.Node, q, loop lexState) (lexState, error)
	branches := func(n parse.Node, b *parse.BranchNode, q, loop lexState, what string) (lexState, error) {
		at := where(n)
		q1, err := walk(b.List, q, loop)
		if err != nil {
			return q, err
		}
		q2 := q
		if b.ElseList != nil {
			if q2, err = walk(b.ElseList, q, loop); err != nil {
				return q, err
			}
		}
		switch {
		case q1.q != q2.q:
			return q, fmt.Errorf("template: %s: %s", at, "the branches of {{"+what+"}} end in different places of the query (one inside a string literal, one outside): "+
				"open and close each literal in the same branch")
		case q1.regex != q2.regex || (q1.op == opRegex) != (q2.op == opRegex):
			return q, fmt.Errorf("template: %s: %s", at, "the branches of {{"+what+"}} end in different places of the query (one in or before a regex matcher's literal, =~ or !~, one not), "+
				"so whether a value is quoted for a regex would depend on the data: write the whole matcher in each branch")
		case !q1.same(q2):
			return q, fmt.Errorf("template: %s: %s", at, "the branches of {{"+what+"}} end in different places of a range selector's [...]: write the whole [...] in each branch")
		}
		return q1, nil
	}
	walk = func(n parse.Node, q, loop lexState) (lexState, error) {
		switch n := n.(type) {
		case *parse.ListNode:
			if n == nil {
				return q, nil
			}
			for _, c := range n.Nodes {
				var err error
				if q, err = walk(c, q, loop); err != nil {
					return q, err
				}
			}
		case *parse.TextNode:
			if q.q == inCode && q.op == opDurEnd {
				if rest := bytes.TrimLeft(n.Text, " \t\r\n"); len(rest) > 0 && rest[0] != ']' && (rest[0] != ':' || !q.bracket) {
					return q, fail(n, "follows {{ .Range }} in the same duration: {{ .Range }} must be all of it, such as [{{ .Range }}]")
				}
			}
			return q.after(n.Text), nil
		case *parse.ActionNode:
			if len(n.Pipe.Decl) > 0 {
				return q, nil // {{ $x := ... }} prints nothing
			}
			if q.q == inCode && isRange(n.Pipe) {
				if q.op != opDur {
					return q, fail(n, "{{ .Range }} goes only where a duration goes, as all of it: in the [...] of a range selector "+
						"or subquery, such as rate(x[{{ .Range }}])")
				}
				n.Pipe.Cmds = append(n.Pipe.Cmds, &parse.CommandNode{NodeType: parse.NodeCommand, Pos: n.Pos,
					Args: []parse.Node{parse.NewIdentifier(escDuration).SetTree(t.Tree).SetPos(n.Pos)}})
				q.op = opDurEnd
				return q, nil
			}
			var esc string
			switch q.q {
			case inDouble:
				esc = escDouble
				if q.regex {
					esc = escDoubleRegex
				}
			case inSingle:
				esc = escSingle
				if q.regex {
					esc = escSingleRegex
				}
			case inCode:
				return q, fail(n, `prints outside a string literal: in a query, what a template prints must be inside "..." or '...', `+
					`such as team="{{ .Labels.team }}", where it is escaped; elsewhere a deploy's value could rewrite the query`)
			case inRaw:
				return q, fail(n, "prints inside a `...` string, where nothing can be escaped: use \"...\" instead")
			case inComment:
				return q, fail(n, "prints inside a # comment, which a newline in the value would end: take it out of the comment")
			default:
				return q, fail(n, "prints just after a backslash in a string literal, which would take its first character for an escape")
			}
			n.Pipe.Cmds = append(n.Pipe.Cmds, &parse.CommandNode{NodeType: parse.NodeCommand, Pos: n.Pos,
				Args: []parse.Node{parse.NewIdentifier(esc).SetTree(t.Tree).SetPos(n.Pos)}})
		case *parse.IfNode:
			return branches(n, &n.BranchNode, q, loop, "if")
		case *parse.WithNode:
			return branches(n, &n.BranchNode, q, loop, "with")
		case *parse.RangeNode:
			at := where(n)
			body, err := walk(n.List, q, q)
			if err != nil {
				return q, err
			}
			after := q
			if n.ElseList != nil {
				if after, err = walk(n.ElseList, q, loop); err != nil {
					return q, err
				}
			}
			if !body.same(q) || !after.same(q) {
				return q, fmt.Errorf("template: %s: %s", at, "the body of {{range}} does not end where it starts (inside or outside a string literal), so its actions' places depend on the labels: "+
					"open and close each literal inside the body, or around the whole range")
			}
		case *parse.BreakNode, *parse.ContinueNode:
			if !q.same(loop) {
				return q, fail(n, "leaves the range at another place of the query (inside or outside a string literal) than where it started")
			}
		}
		return q, nil
	}
	_, err := walk(t.Root, lexState{}, lexState{})
	return err
}

// isRange reports whether a pipeline is just .Range or $.Range.
func isRange(p *parse.PipeNode) bool {
	if p == nil || len(p.Decl) > 0 || len(p.Cmds) != 1 || len(p.Cmds[0].Args) != 1 {
		return false
	}
	switch a := p.Cmds[0].Args[0].(type) {
	case *parse.FieldNode:
		return len(a.Ident) == 1 && a.Ident[0] == "Range"
	case *parse.VariableNode:
		return len(a.Ident) == 2 && a.Ident[0] == "$" && a.Ident[1] == "Range"
	}
	return false
}

// checkBounded refuses what would make executing t take unbounded time:
// sub-templates ({{define}}, {{block}}, {{template}}), which can call each
// other exponentially often; a range over anything but a field of the data
// (.Labels, $.Labels), since a range over a number, such as
// {{range 1000000000000}}, loops that many times; and a range inside a
// range, which multiplies. A range over the labels of a deploy is bounded
// by the number of labels an event may carry.
func checkBounded(t *template.Template) error {
	if len(t.Templates()) > 1 {
		return fmt.Errorf("template: %s: {{define}} and {{block}} are not supported", t.Name())
	}
	fail := func(n parse.Node, msg string) error {
		loc, context := t.ErrorContext(n)
		return fmt.Errorf("template: %s: %s: %s", loc, context, msg)
	}
	var walk func(n parse.Node, inRange bool) error
	branch := func(b *parse.BranchNode, inRange bool) error {
		if err := walk(b.List, inRange); err != nil {
			return err
		}
		if b.ElseList != nil {
			return walk(b.ElseList, inRange)
		}
		return nil
	}
	walk = func(n parse.Node, inRange bool) error {
		switch n := n.(type) {
		case *parse.ListNode:
			if n == nil {
				return nil
			}
			for _, c := range n.Nodes {
				if err := walk(c, inRange); err != nil {
					return err
				}
			}
		case *parse.IfNode:
			return branch(&n.BranchNode, inRange)
		case *parse.WithNode:
			return branch(&n.BranchNode, inRange)
		case *parse.RangeNode:
			if inRange {
				return fail(n, "a range inside a range is not supported")
			}
			if !overField(n.Pipe) {
				return fail(n, "range works only over a field of the data, such as .Labels")
			}
			return branch(&n.BranchNode, true)
		case *parse.TemplateNode:
			return fail(n, "{{template}} is not supported")
		}
		return nil
	}
	if t.Tree == nil {
		return nil
	}
	return walk(t.Root, false)
}

// overField reports whether a pipeline is just a field of the data: .X.Y
// or $.X.Y.
func overField(p *parse.PipeNode) bool {
	if p == nil || len(p.Cmds) != 1 || len(p.Cmds[0].Args) != 1 {
		return false
	}
	switch a := p.Cmds[0].Args[0].(type) {
	case *parse.FieldNode:
		return true
	case *parse.VariableNode:
		return len(a.Ident) > 1 && a.Ident[0] == "$"
	}
	return false
}

// maxRendered bounds what a template may render: far more than any query,
// path or word needs, far less than would hurt (printf "%999999d" renders
// a megabyte at a time).
const maxRendered = 64 << 10

var errTooLong = fmt.Errorf("renders to more than %d bytes", maxRendered)

// limitedBuilder is a strings.Builder that refuses to grow past maxRendered.
type limitedBuilder struct{ strings.Builder }

func (b *limitedBuilder) Write(p []byte) (int, error) {
	if b.Len()+len(p) > maxRendered {
		return 0, errTooLong
	}
	return b.Builder.Write(p)
}

func execute(t *template.Template, d TemplateData) (string, error) {
	var b limitedBuilder
	if err := t.Execute(&b, d); err != nil {
		return "", err
	}
	return b.String(), nil
}

// templateMessage drops the "template: " that text/template puts before
// every error, since our messages say which field it is already.
func templateMessage(err error) string {
	return strings.TrimPrefix(err.Error(), "template: ")
}

// sampleData is what templates are tried with at load time. Labels holds
// every label the template reads, so that a policy for deploys that carry
// a "region" label is not rejected because the sample has none.
func sampleData(t *template.Template, host string) TemplateData {
	labels := map[string]string{"team": "t"}
	for _, k := range fieldsUsed(t).labels {
		if _, ok := labels[k]; !ok {
			labels[k] = "value"
		}
	}
	return TemplateData{
		Service:         "svc",
		Environment:     "env",
		Version:         "1.0.0",
		PreviousVersion: "0.9.0",
		Labels:          labels,
		Host:            host,
		Range:           "5m",
	}
}

type fields struct {
	labels []string // keys read as .Labels.key
	host   bool     // reads .Host
	rng    bool     // reads .Range
}

// fieldsUsed finds the fields of TemplateData that a template reads from
// its top-level dot (or $).
func fieldsUsed(t *template.Template) fields {
	var f fields
	note := func(ident []string) {
		switch {
		case len(ident) >= 2 && ident[0] == "Labels":
			if !slices.Contains(f.labels, ident[1]) {
				f.labels = append(f.labels, ident[1])
			}
		case len(ident) >= 1 && ident[0] == "Host":
			f.host = true
		case len(ident) >= 1 && ident[0] == "Range":
			f.rng = true
		}
	}
	var walk func(n parse.Node)
	walk = func(n parse.Node) {
		switch n := n.(type) {
		case *parse.ListNode:
			if n != nil {
				for _, c := range n.Nodes {
					walk(c)
				}
			}
		case *parse.ActionNode:
			walk(n.Pipe)
		case *parse.PipeNode:
			if n != nil {
				for _, c := range n.Cmds {
					walk(c)
				}
			}
		case *parse.CommandNode:
			for _, a := range n.Args {
				walk(a)
			}
		case *parse.FieldNode:
			note(n.Ident)
		case *parse.VariableNode:
			if len(n.Ident) > 0 && n.Ident[0] == "$" {
				note(n.Ident[1:])
			}
		case *parse.ChainNode:
			walk(n.Node)
		case *parse.IfNode:
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		case *parse.RangeNode:
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		case *parse.WithNode:
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		case *parse.TemplateNode:
			walk(n.Pipe)
		}
	}
	for _, tt := range t.Templates() {
		if tt.Tree != nil {
			walk(tt.Root)
		}
	}
	return f
}

// cleanAbs reports whether p is an absolute path with nothing to clean
// (no "..", ".", "//" or trailing slash) and is not the root. Paths are on
// the targets, which are POSIX, whatever the watcher runs on.
func cleanAbs(p string) bool {
	return path.IsAbs(p) && path.Clean(p) == p && p != "/"
}

var errNoLink = errors.New("rollback.link is not set")

// RenderQuery renders the check's PromQL query for a deploy.
func (c *Check) RenderQuery(d TemplateData) (string, error) {
	t := c.query
	if t == nil { // a Check not made by Load
		var err error
		if t, err = newQueryTemplate("query", c.Query); err != nil {
			return "", fmt.Errorf("check %q: %w", c.Name, err)
		}
	}
	q, err := execute(t, d)
	if err != nil {
		return "", fmt.Errorf("check %q: %w", c.Name, err)
	}
	return q, nil
}

// RenderErrors renders a count comparison's errors query for a deploy;
// d.Range is the span it counts.
func (c *Check) RenderErrors(d TemplateData) (string, error) {
	if c.Compare == nil || c.Compare.Errors == "" {
		return "", fmt.Errorf("check %q has no compare.errors", c.Name)
	}
	return c.renderCount("compare.errors", c.Compare.errors, c.Compare.Errors, d)
}

// RenderTotal renders a count comparison's total query for a deploy, like
// RenderErrors.
func (c *Check) RenderTotal(d TemplateData) (string, error) {
	if c.Compare == nil || c.Compare.Total == "" {
		return "", fmt.Errorf("check %q has no compare.total", c.Name)
	}
	return c.renderCount("compare.total", c.Compare.total, c.Compare.Total, d)
}

func (c *Check) renderCount(name string, t *template.Template, text string, d TemplateData) (string, error) {
	if t == nil { // a Check not made by Load
		var err error
		if t, err = newQueryTemplate(name, text); err != nil {
			return "", fmt.Errorf("check %q: %w", c.Name, err)
		}
	}
	q, err := execute(t, d)
	if err != nil {
		return "", fmt.Errorf("check %q: %w", c.Name, err)
	}
	return q, nil
}

// RenderLink renders the path of the link that points to the current
// release, which must be absolute and clean.
func (r *Rollback) RenderLink(d TemplateData) (string, error) {
	if r.Link == "" {
		return "", errNoLink
	}
	return renderPath("rollback.link", r.link, r.Link, d)
}

// RenderReleasesDir renders the directory that holds the releases: the
// configured releases_dir, or else "releases" next to the link.
func (r *Rollback) RenderReleasesDir(d TemplateData) (string, error) {
	if r.ReleasesDir != "" {
		return renderPath("rollback.releases_dir", r.releasesDir, r.ReleasesDir, d)
	}
	link, err := r.RenderLink(d)
	if err != nil {
		return "", err
	}
	return path.Join(path.Dir(link), "releases"), nil
}

func renderPath(name string, t *template.Template, text string, d TemplateData) (string, error) {
	if t == nil {
		var err error
		if t, err = newTemplate(name, text); err != nil {
			return "", err
		}
	}
	p, err := execute(t, d)
	if err != nil {
		return "", err
	}
	if !cleanAbs(p) {
		return "", fmt.Errorf("%s renders to %q, which is not an absolute, clean path", name, p)
	}
	return p, nil
}

// RenderAfter renders the command to run on each host after the switch,
// one argv word per word of the policy: a word is never split, and the
// command is never given to a shell. It returns nil when there is none.
func (r *Rollback) RenderAfter(d TemplateData) ([]string, error) {
	return renderArgv("rollback.after", r.after, r.After, d)
}

// RenderCommand renders the data step's command, like RenderAfter.
func (ds *DataStep) RenderCommand(d TemplateData) ([]string, error) {
	return renderArgv("rollback.data.command", ds.command, ds.Command, d)
}

func renderArgv(name string, ts []*template.Template, words []string, d TemplateData) ([]string, error) {
	if len(words) == 0 {
		return nil, nil
	}
	argv := make([]string, len(words))
	for i, w := range words {
		wname := fmt.Sprintf("%s[%d]", name, i)
		var t *template.Template
		if len(ts) == len(words) {
			t = ts[i]
		} else { // not made by Load
			var err error
			if t, err = newTemplate(wname, w); err != nil {
				return nil, err
			}
		}
		s, err := execute(t, d)
		if err != nil {
			return nil, err
		}
		// "--to {{ .PreviousVersion }}" with no previous version would
		// ask for a migration to nothing; refuse rather than guess.
		if s == "" && w != "" {
			return nil, fmt.Errorf("%s %q renders to an empty word", wname, w)
		}
		argv[i] = s
	}
	return argv, nil
}
