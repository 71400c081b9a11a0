package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// Defaults for what a policy leaves out.
var (
	DefaultWindow            = model.Duration(10 * time.Minute)
	DefaultInterval          = model.Duration(30 * time.Second)
	DefaultInitialDelay      = model.Duration(0)
	DefaultOnInconclusive    = OnInconclusiveKeep
	DefaultNoData            = NoDataInconclusive
	DefaultFailureLimit      = 0
	DefaultMode              = ModeExecute
	DefaultParallelism       = 32
	DefaultDataRunOn         = RunOnLocal
	DefaultDataOrder         = OrderAfterCode
	DefaultDataTimeout       = model.Duration(5 * time.Minute)
	DefaultSSHConnectTimeout = model.Duration(10 * time.Second)
	DefaultSSHCommandTimeout = model.Duration(time.Minute)
	DefaultOnMarginal        = OnMarginalKeep
	DefaultAskDefault        = AskKeep
	DefaultCooldown          = model.Duration(30 * time.Minute)
	DefaultWeight            = 1.0

	// A comparison's lookback defaults to the policy's window: as much
	// before as the run will see after. Its step defaults to
	// DefaultCompareStep, or the interval when that is shorter.
	DefaultCompareStep = model.Duration(15 * time.Second)
	// DefaultCountStep is a count comparison's step: each step's errors
	// and requests are increase() over the step, which needs two scrapes
	// of the counters inside it (30s covers a 15s scrape interval).
	DefaultCountStep   = model.Duration(30 * time.Second)
	DefaultConfidence  = 0.95
	DefaultMinSamples  = 10
	DefaultMinTotal    = 100
	DefaultCanaryLabel = "version"
)

// Where a data step runs (DataStep.RunOn).
const (
	RunOnLocal = "local" // on the watcher's machine
	RunOnFirst = "first" // on the first host of the rollback
	RunOnAll   = "all"   // on every host of the rollback
)

// When a data step runs (DataStep.Order).
const (
	OrderBeforeCode = "before_code"
	OrderAfterCode  = "after_code"
)

// Set is the policies of a group of rules files, in the order they apply:
// files by name, then order in the file.
type Set struct {
	Policies []*Policy
	Files    []string
}

// Problem is one thing wrong in a rules file. Line is 0 when the problem is
// with the file as a whole (it cannot be read), and File is empty when it is
// with a pattern.
type Problem struct {
	File    string
	Line    int
	Message string
}

func (p Problem) String() string {
	switch {
	case p.File == "":
		return p.Message
	case p.Line == 0:
		return p.File + ": " + p.Message
	}
	return p.File + ":" + strconv.Itoa(p.Line) + ": " + p.Message
}

// LoadError lists every problem Load found, so that one run of
// `watcher check` shows them all.
type LoadError struct {
	Problems []Problem
}

// Error is the problems, one "file:line: message" per line.
func (e *LoadError) Error() string {
	s := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		s[i] = p.String()
	}
	return strings.Join(s, "\n")
}

// Load reads the rules files that the glob patterns name (a plain file name
// is a pattern too) and checks them. On any problem it returns a *LoadError.
func Load(patterns ...string) (*Set, error) {
	var problems []Problem
	if len(patterns) == 0 {
		problems = append(problems, Problem{Message: "no rules files given"})
	}
	var files []string
	seen := map[string]bool{}
	for _, pat := range patterns {
		matches, err := filepath.Glob(pat)
		if err != nil {
			problems = append(problems, Problem{Message: fmt.Sprintf("bad pattern %q: %v", pat, err)})
			continue
		}
		if len(matches) == 0 {
			problems = append(problems, Problem{Message: fmt.Sprintf("pattern %q matches no files", pat)})
			continue
		}
		for _, m := range matches {
			if c := filepath.Clean(m); !seen[c] {
				seen[c] = true
				files = append(files, m)
			}
		}
	}
	slices.Sort(files)

	set := &Set{Files: files}
	first := map[string]*Policy{} // by name, across files
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			if pe, ok := errors.AsType[*fs.PathError](err); ok {
				err = pe.Err
			}
			problems = append(problems, Problem{File: f, Message: "cannot read: " + err.Error()})
			continue
		}
		policies, probs := decodeFile(f, data)
		for _, p := range policies {
			if p.Name == "" {
				continue
			}
			if q, dup := first[p.Name]; dup {
				probs = append(probs, Problem{File: f, Line: p.nameLine,
					Message: fmt.Sprintf("duplicate policy name %q (first defined at %s:%d)", p.Name, q.File, q.nameLine)})
				continue
			}
			first[p.Name] = p
		}
		slices.SortStableFunc(probs, func(a, b Problem) int { return a.Line - b.Line })
		problems = append(problems, probs...)
		set.Policies = append(set.Policies, policies...)
	}
	if len(problems) > 0 {
		return nil, &LoadError{Problems: problems}
	}
	return set, nil
}

// decodeFile decodes and checks one rules file. It returns what it could
// decode even when there are problems, so that Load can still look for
// duplicate names across files.
func decodeFile(file string, data []byte) ([]*Policy, []Problem) {
	d := newDecoder(file)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // an empty file has no policies
		}
		line, msg := syntaxError(err, data)
		d.errorf(line, "%s", msg)
		return nil, d.problems
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		d.errorf(extra.Line, "a rules file holds one YAML document, found another")
	} else if !errors.Is(err, io.EOF) {
		line, msg := syntaxError(err, data)
		d.errorf(line, "%s", msg)
	}
	if len(d.problems) > 0 {
		return nil, d.problems
	}

	var f File
	if len(root.Content) > 0 {
		d.decode(root.Content[0], reflect.ValueOf(&f).Elem(), "")
	}
	var policies []*Policy
	for i, p := range f.Policies {
		if p == nil {
			if !d.failed[&f.Policies[i]] {
				d.errorf(d.line(0, &f.Policies[i]), "empty policy")
			}
			continue
		}
		d.checkPolicy(p)
		policies = append(policies, p)
	}
	if len(d.problems) == 0 {
		// Only a file without problems: its aliases were checked (spend)
		// and cannot blow up when written out in full.
		nodes := policyNodes(&root)
		for i, p := range f.Policies {
			if p != nil && i < len(nodes) {
				p.source = snapshotSource(nodes[i])
			}
		}
	}
	return policies, d.problems
}

var (
	yamlLine   = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	yamlAnchor = regexp.MustCompile(`^yaml: unknown anchor '(.*)' referenced$`)
)

// syntaxError gets the line out of a yaml.v3 syntax error. yaml.v3 has it
// only in the text, and leaves it out when the problem is on the first line
// (its marks count from 0) or has no position at all (an unknown anchor,
// which is found in the text instead).
func syntaxError(err error, data []byte) (int, string) {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return line, "invalid YAML: " + m[2]
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	line := 1
	if m := yamlAnchor.FindStringSubmatch(err.Error()); m != nil {
		for i, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, "*"+m[1]) {
				line = i + 1
				break
			}
		}
	}
	return line, "invalid YAML: " + msg
}

// resolvePath makes a path from a rules file absolute or relative to the
// working directory, as the file meant it: "~/" is the home directory and
// a relative path is relative to the rules file.
func resolvePath(file, p string) (string, error) {
	switch {
	case p == "":
		return "", nil
	case p == "~" || strings.HasPrefix(p, "~/"):
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("cannot expand %q: %w", p, err)
		}
		return filepath.Join(home, p[1:]), nil
	case strings.HasPrefix(p, "~"):
		return "", fmt.Errorf("cannot expand %q: only ~/ (your own home directory) is supported", p)
	case filepath.IsAbs(p):
		return filepath.Clean(p), nil
	}
	return filepath.Join(filepath.Dir(file), p), nil
}
