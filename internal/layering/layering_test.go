// Package layering_test guards the walls between the watcher's packages:
// it reads the import list of every non-test Go file of the module and fails
// when an import breaks the layering written down in the table below.
//
// Two kinds of rule, both data:
//
//   - Direction. Each package has a layer; a package imports only packages
//     of lower layers (a package and its subpackages count as one). Go
//     forbids cycles; this forbids the quieter fault of a package reaching
//     up, or sideways to a sibling, such as the deciding side (watch)
//     importing the executing side (rollback).
//   - Walls. Each package lists what it must never depend on, in the
//     module or outside it, with the reason. These are checked through the
//     module's own packages, so policy importing a module package that
//     imports NATS breaks policy's wall too, and the failure prints the
//     chain. Third-party packages' own imports are not followed.
//
// A package the table does not name fails the test: a new package gets a
// layer and its walls when it is created, not later. A table entry naming
// no package, or an exception no import needs any more, fails it too, so
// the table never guards less than it says.
package layering_test

import (
	"bufio"
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// rule places one package of the module (a path relative to the module,
// covering its subpackages unless one of them has a rule of its own).
type rule struct {
	pkg   string
	layer int
	// role says what the package is, for failure messages.
	role string
	// forbid lists what the package must not depend on: module packages
	// relative to the module ("internal/bus"), others by import path, a
	// trailing "/..." for a path and everything below it.
	forbid []wall
}

type wall struct {
	path string
	why  string
}

// walls builds the walls sharing one reason.
func walls(why string, paths ...string) []wall {
	w := make([]wall, len(paths))
	for i, p := range paths {
		w[i] = wall{path: p, why: why}
	}
	return w
}

func join(ws ...[]wall) []wall { return slices.Concat(ws...) }

// Walls shared by several packages.
var (
	// noNetworkIO: packages that decide or describe do not talk to NATS,
	// Prometheus, hosts or the network themselves.
	noNetworkIO = []string{
		"net", "net/http", "os/exec",
		"github.com/nats-io/...",
		"github.com/prometheus/client_golang/...",
		"github.com/pkg/sftp", "golang.org/x/crypto/ssh/...",
	}
	// noRemoteExec: only the executor runs commands and opens SSH and SFTP
	// sessions on hosts.
	noRemoteExec = []string{"os/exec", "github.com/pkg/sftp", "golang.org/x/crypto/ssh/..."}
	// testsOnly: the test helpers import "testing" and start servers; the
	// watcher binary must never carry them. sshkit is shared by the tests
	// and the fleet benchmark only.
	testsOnly = walls("test helpers belong to _test.go files (sshkit also to bench/fleet), never to the watcher",
		"internal/testutil", "internal/sshkit")
)

// layers is the intended layering, from the README's "How it works": an
// event comes in (events), a run measures it against its policy (policy,
// metrics) and decides (watch); a failed run publishes a rollback request
// that the executor consumes and carries out (rollback); both record into
// the audit trail (audit) over NATS (bus). Alertmanager's webhook (alerts)
// and the status pages (web) sit on top, the programs above everything.
var layers = []rule{
	// Layer 0: leaves. They import no package of the module.
	{pkg: "internal/events", layer: 0, role: "wire formats (decode/encode events, subjects)",
		forbid: join(
			walls("wire formats know no policies, runs, rollbacks or transports",
				"internal/policy", "internal/promclient", "internal/bus", "internal/audit", "internal/deploys",
				"internal/config", "internal/watch", "internal/rollback", "internal/alerts", "internal/web"),
			walls("wire formats describe messages; they neither send nor receive them", noNetworkIO...),
			testsOnly)},
	{pkg: "internal/stats", layer: 0, role: "statistics of the verdicts: pure arithmetic",
		forbid: join(
			walls("the statistics are arithmetic on the numbers they are given: they import no package of the module",
				"internal/...", "cmd/..."),
			walls("the statistics do no I/O", noNetworkIO...),
			testsOnly)},
	{pkg: "internal/promclient", layer: 0, role: "the Prometheus query client",
		forbid: join(
			walls("the query client knows nothing of runs, rollbacks or NATS",
				"internal/bus", "internal/watch", "internal/rollback", "github.com/nats-io/..."),
			testsOnly)},
	{pkg: "internal/sshkit", layer: 0, role: "sshd keys and processes for tests and bench/fleet"},
	{pkg: "examples", layer: 0, role: "sample services, standing alone as a user's would",
		forbid: walls("an example is a user's program: it cannot import the watcher's internals",
			"internal/...", "cmd/...")},

	// Layer 1: plumbing over the leaves, and the policies (which use the
	// statistics).
	{pkg: "internal/policy", layer: 1, role: "policies, templates and the verdict arithmetic",
		forbid: join(
			walls("verdict arithmetic does no I/O: it is given the measurements",
				"internal/promclient", "internal/bus", "internal/audit", "internal/deploys", "internal/config",
				"internal/watch", "internal/rollback", "internal/alerts", "internal/web"),
			walls("verdict arithmetic does no I/O: it is given the measurements", noNetworkIO...),
			testsOnly)},
	{pkg: "internal/bus", layer: 1, role: "NATS connection and streams",
		forbid: join(
			walls("the transport knows subjects, not policies or measurements", "internal/policy", "internal/promclient"),
			testsOnly)},
	{pkg: "internal/rollbackreq", layer: 1, role: "the rollback request: build, validate, publish, decode",
		forbid: join(
			walls("the request is a message between deciding and executing; it belongs to neither and measures nothing",
				"internal/policy", "internal/promclient", "internal/watch", "internal/rollback"),
			testsOnly)},
	{pkg: "internal/audit", layer: 1, role: "the audit trail",
		forbid: join(
			walls("the audit trail records decisions; it takes no measurements", "internal/promclient"),
			testsOnly)},

	// Layer 2: reading the deploy history, the configuration file.
	{pkg: "internal/links", layer: 2, role: "the signed cancel and approve links of held rollbacks",
		forbid: join(
			walls("a link is signed and checked; the code that signs it neither decides nor executes",
				"internal/watch", "internal/rollback", "internal/policy", "internal/promclient"),
			walls("signing runs nothing on hosts", noRemoteExec...),
			testsOnly)},
	{pkg: "internal/deploys", layer: 2, role: "the deploy history on DEPLOYS",
		forbid: join(walls("reading deploys measures nothing", "internal/promclient"), testsOnly)},
	{pkg: "internal/config", layer: 2, role: "the configuration file", forbid: testsOnly},
	{pkg: "internal/testutil", layer: 2, role: "test helpers (imported from _test.go files only)"},

	// Layer 3: deciding and executing, which meet only on the ROLLBACKS
	// stream: neither imports the other (direction forbids it too; the
	// walls say why).
	{pkg: "internal/watch", layer: 3, role: "deciding: validation runs and verdicts",
		forbid: join(
			walls("deciding never imports executing: the two meet only on the ROLLBACKS stream", "internal/rollback"),
			walls("deciding runs nothing on hosts", noRemoteExec...),
			testsOnly)},
	{pkg: "internal/rollback", layer: 3, role: "executing: release layout, switch, SSH, data step",
		forbid: join(
			walls("executing never imports deciding: the two meet only on the ROLLBACKS stream", "internal/watch"),
			walls("the executor carries out requests; it measures nothing", "internal/promclient"),
			testsOnly)},

	// Layer 3 too: telling people, from the audit trail alone.
	{pkg: "internal/notify", layer: 3, role: "notifications: the audit stream to Slack and webhooks",
		forbid: join(
			walls("notifications read the audit trail; they neither decide nor execute, and never stand in their way",
				"internal/watch", "internal/rollback", "internal/policy", "internal/rollbackreq"),
			walls("notifications post over HTTP; they run nothing on hosts", noRemoteExec...),
			testsOnly)},

	// Layer 4: Alertmanager's webhook turns alerts into rollback requests.
	{pkg: "internal/alerts", layer: 4, role: "Alertmanager webhook into rollback requests",
		forbid: join(
			walls("alerts request rollbacks; they neither run validations nor execute rollbacks",
				"internal/watch", "internal/rollback"),
			walls("alerts request rollbacks; they run nothing on hosts", noRemoteExec...),
			testsOnly)},
	// Layer 4 too: replaying past deploys with the deciding side's own
	// code, never the executing side's.
	{pkg: "internal/backtest", layer: 4, role: "backtest: replaying the policies over past deploys",
		forbid: join(
			walls("a backtest says what the policies would have done; it never executes a rollback", "internal/rollback"),
			walls("a backtest replays decisions; it runs nothing on hosts", noRemoteExec...),
			testsOnly)},

	// Layer 5: the HTTP surface reads runs and the audit, and hands the
	// webhook to alerts.
	{pkg: "internal/web", layer: 5, role: "HTTP endpoints and the status page",
		forbid: join(
			walls("the web surface shows state; it never executes rollbacks or queries Prometheus",
				"internal/rollback", "internal/promclient"),
			walls("the web surface runs nothing on hosts", noRemoteExec...),
			testsOnly)},

	// Layer 6: programs, which wire everything.
	{pkg: "cmd", layer: 6, role: "the watcher command", forbid: testsOnly},
	{pkg: "bench", layer: 6, role: "benchmarks",
		forbid: walls("test helpers import \"testing\"; benchmarks are programs", "internal/testutil")},
}

// exceptions are imports that break a wall today, each with what ends it.
// An exception no file needs any more fails the test: remove it then.
var exceptions = []struct{ from, to, until string }{}

// pkgInfo is one package of the module: its non-test files' imports.
type pkgInfo struct {
	path    string                    // relative to the module
	imports map[string]token.Position // import path -> first place it is imported
}

func TestLayering(t *testing.T) {
	root, module := moduleRoot(t)
	pkgs := parsePackages(t, root, module)
	if len(pkgs) < 10 {
		t.Fatalf("found only %d packages under %s; the walk is broken, not the layering", len(pkgs), root)
	}
	rel := func(p string) (string, bool) {
		if p == module {
			return ".", true
		}
		if r, ok := strings.CutPrefix(p, module+"/"); ok {
			return r, true
		}
		return p, false
	}

	// Every package has a rule, and every rule a package.
	ruleOf := map[string]*rule{}
	used := map[string]bool{}
	for _, p := range sortedKeys(pkgs) {
		r := findRule(p)
		if r == nil {
			t.Errorf("package %s has no place in the layering table: add it to layers in internal/layering/layering_test.go with its layer and walls", p)
			continue
		}
		ruleOf[p] = r
		used[r.pkg] = true
	}
	for _, r := range layers {
		if !used[r.pkg] {
			t.Errorf("the layering table names %s, which is no package of the module (with non-test Go files): rename or remove its entry", r.pkg)
		}
	}
	excepted := map[[2]string]string{}
	for _, e := range exceptions {
		excepted[[2]string{e.from, e.to}] = e.until
	}
	exceptionUsed := map[[2]string]bool{}

	// Direction: direct imports of module packages go down.
	for _, p := range sortedKeys(pkgs) {
		from := ruleOf[p]
		if from == nil {
			continue
		}
		for _, imp := range sortedKeys(pkgs[p].imports) {
			q, inModule := rel(imp)
			if !inModule {
				continue
			}
			to := findRule(q)
			if to == nil || to == from {
				continue
			}
			if _, ok := excepted[[2]string{p, q}]; ok {
				exceptionUsed[[2]string{p, q}] = true
				continue
			}
			if to.layer >= from.layer {
				t.Errorf("%s: %s (layer %d, %s) imports %s (layer %d, %s): a package imports only lower layers; move the code, or the table if the layering itself changed",
					pkgs[p].imports[imp], p, from.layer, from.role, q, to.layer, to.role)
			}
		}
	}

	// Walls, through the module's packages: the shortest chain from each
	// package to anything it must not depend on.
	for _, p := range sortedKeys(pkgs) {
		r := ruleOf[p]
		if r == nil || len(r.forbid) == 0 {
			continue
		}
		prev := map[string]string{p: ""}     // module package -> the one that imported it first
		where := map[string]token.Position{} // module package or outside import -> where it was imported
		queue := []string{p}
		reported := map[string]bool{} // by wall: its shortest chain is enough
		for len(queue) > 0 {
			cur := queue[0]
			queue = queue[1:]
			for _, imp := range sortedKeys(pkgs[cur].imports) {
				q, inModule := rel(imp)
				target := imp
				if inModule {
					target = q
				}
				// An excepted import is not reported, but what it brings
				// along still is.
				_, isException := excepted[[2]string{p, q}]
				if cur == p && isException {
					exceptionUsed[[2]string{p, q}] = true
				}
				if w, ok := forbidden(r, target); ok && !reported[w.path] && !(cur == p && isException) {
					reported[w.path] = true
					chain := []string{fmt.Sprintf("%s (%s)", target, pkgs[cur].imports[imp])}
					for at := cur; at != ""; at = prev[at] {
						if at != p {
							chain = append(chain, fmt.Sprintf("%s (%s)", at, where[at]))
						} else {
							chain = append(chain, at)
						}
					}
					slices.Reverse(chain)
					t.Errorf("%s must not depend on %s: %s\n\timport chain: %s", p, w.path, w.why, strings.Join(chain, "\n\t  -> "))
				}
				if inModule {
					if _, seen := prev[q]; !seen && pkgs[q] != nil {
						prev[q] = cur
						where[q] = pkgs[cur].imports[imp]
						queue = append(queue, q)
					}
				}
			}
		}
	}

	for _, e := range exceptions {
		if !exceptionUsed[[2]string{e.from, e.to}] {
			t.Errorf("the exception %s -> %s (%s) is no longer needed: no file of %s imports %s; remove it from exceptions in internal/layering/layering_test.go",
				e.from, e.to, e.until, e.from, e.to)
		}
	}
}

// findRule returns the rule of the longest table path that is p or a
// directory above it.
func findRule(p string) *rule {
	var best *rule
	for i := range layers {
		r := &layers[i]
		if under(p, r.pkg) && (best == nil || len(r.pkg) > len(best.pkg)) {
			best = r
		}
	}
	return best
}

// forbidden reports the wall of r that target (module-relative for module
// packages) runs into.
func forbidden(r *rule, target string) (wall, bool) {
	for _, w := range r.forbid {
		if base, ok := strings.CutSuffix(w.path, "/..."); ok {
			if under(target, base) {
				return w, true
			}
		} else if target == w.path || under(target, w.path) && strings.HasPrefix(w.path, "internal/") {
			// A module package's wall covers its subpackages too
			// (internal/rollback/ssh is still executing).
			return w, true
		}
	}
	return wall{}, false
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// moduleRoot finds go.mod above the test's directory and reads the module
// path from it.
func moduleRoot(t *testing.T) (root, module string) {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		f, err := os.Open(filepath.Join(dir, "go.mod"))
		if err == nil {
			defer f.Close()
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if m, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
					if uq, err := strconv.Unquote(strings.TrimSpace(m)); err == nil {
						m = uq
					}
					return dir, strings.TrimSpace(m)
				}
			}
			t.Fatalf("%s/go.mod has no module line", dir)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory: run the test from inside the module")
		}
		dir = parent
	}
}

// parsePackages reads the imports of every non-test .go file of the module,
// by directory; testdata, hidden and _-prefixed directories and nested
// modules are not part of it, as for the go command.
func parsePackages(t *testing.T, root, module string) map[string]*pkgInfo {
	t.Helper()
	pkgs := map[string]*pkgInfo{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root {
				if name == "testdata" || name == "vendor" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
					return filepath.SkipDir
				}
				if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
					return filepath.SkipDir
				}
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") ||
			strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		dir, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		dir = filepath.ToSlash(dir)
		pi := pkgs[dir]
		if pi == nil {
			pi = &pkgInfo{path: dir, imports: map[string]token.Position{}}
			pkgs[dir] = pi
		}
		for _, spec := range f.Imports {
			imp, err := strconv.Unquote(spec.Path.Value)
			if err != nil {
				return fmt.Errorf("%s: %w", fset.Position(spec.Pos()), err)
			}
			if _, ok := pi.imports[imp]; !ok {
				pos := fset.Position(spec.Pos())
				if r, err := filepath.Rel(root, pos.Filename); err == nil {
					pos.Filename = filepath.ToSlash(r)
				}
				pi.imports[imp] = pos
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading the module's imports: %v", err)
	}
	return pkgs
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
