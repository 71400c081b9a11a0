package policy

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"
)

// newTemplate parses a policy template. missingkey=error makes a deploy
// without a label that the template reads an error, not an empty string in
// a query or a path.
//
// Templates are executed at load time (with sample data) and for every
// measurement and rollback, so a template must not be able to run without
// end: checkBounded refuses the constructs that could.
func newTemplate(name, text string) (*template.Template, error) {
	t, err := template.New(name).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	if err := checkBounded(t); err != nil {
		return nil, err
	}
	return t, nil
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
	}
}

type fields struct {
	labels []string // keys read as .Labels.key
	host   bool     // reads .Host
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
		if t, err = newTemplate("query", c.Query); err != nil {
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
