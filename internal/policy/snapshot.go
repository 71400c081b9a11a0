package policy

import (
	"fmt"

	"go.yaml.in/yaml/v3"
)

// Snapshot is a policy as a run keeps it while it lasts: the policy's own
// YAML (anchors it borrowed from elsewhere in its file written out in full)
// and where it was defined. A run resumed after a restart, or by another
// replica, is judged by the policy it started with, whatever the rules
// files say by then.
type Snapshot struct {
	File   string `json:"file"`
	Line   int    `json:"line"`
	Source string `json:"source"`
}

// Snapshot returns p's snapshot; p must come from Load.
func (p *Policy) Snapshot() Snapshot {
	return Snapshot{File: p.File, Line: p.Line, Source: p.source}
}

// Policy decodes and checks the snapshot's policy again, as Load did.
func (s Snapshot) Policy() (*Policy, error) {
	if s.Source == "" {
		return nil, fmt.Errorf("policy snapshot from %s:%d is empty", s.File, s.Line)
	}
	policies, problems := decodeFile(s.File, []byte(s.Source))
	if len(problems) > 0 {
		return nil, fmt.Errorf("policy snapshot from %s:%d: %w", s.File, s.Line, &LoadError{Problems: problems})
	}
	if len(policies) != 1 {
		return nil, fmt.Errorf("policy snapshot from %s:%d holds %d policies, want 1", s.File, s.Line, len(policies))
	}
	p := policies[0]
	p.Line = s.Line
	return p, nil
}

// policyNodes are the nodes of the policies in a rules file's root node.
func policyNodes(root *yaml.Node) []*yaml.Node {
	if root == nil || len(root.Content) == 0 {
		return nil
	}
	m := resolve(root.Content[0])
	if m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == "policies" {
			if seq := resolve(m.Content[i+1]); seq.Kind == yaml.SequenceNode {
				return seq.Content
			}
		}
	}
	return nil
}

// snapshotSource writes one policy node as a rules file of its own.
func snapshotSource(n *yaml.Node) string {
	doc := &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{
		Kind: yaml.MappingNode, Tag: "!!map",
		Content: []*yaml.Node{
			{Kind: yaml.ScalarNode, Tag: "!!str", Value: "policies"},
			{Kind: yaml.SequenceNode, Tag: "!!seq", Content: []*yaml.Node{expandAliases(n, 0)}},
		},
	}}}
	b, err := yaml.Marshal(doc)
	if err != nil {
		return ""
	}
	return string(b)
}

// expandAliases copies n with every alias replaced by a copy of what it
// names and no anchors left, so that the copy stands on its own. Only
// files that decoded without problems get here, and the decoder's budget
// (decoder.spend) has refused what would expand too far.
func expandAliases(n *yaml.Node, depth int) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	c := *n
	c.Anchor, c.Alias = "", nil
	c.HeadComment, c.LineComment, c.FootComment = "", "", ""
	if depth > 100 {
		c.Content = nil
		return &c
	}
	c.Content = make([]*yaml.Node, len(n.Content))
	for i, e := range n.Content {
		c.Content[i] = expandAliases(e, depth+1)
	}
	return &c
}
