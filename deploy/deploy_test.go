// Package deploy is the operations kit: a systemd unit, a compose file,
// Kubernetes manifests, Prometheus alerts, an Alertmanager route and a
// Grafana dashboard. It has no Go code; this test checks the kit against the
// real tools (promtool, amtool, systemd-analyze) and against the watcher
// itself: its flags (from `watcher run --help`), its config and policy
// decoders, and the metric names its sources register.
package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"

	"github.com/rollback-watcher/watcher/internal/config"
	"github.com/rollback-watcher/watcher/internal/policy"
)

// Files of the kit, relative to this directory.
const (
	unitFile       = "systemd/rollback-watcher.service"
	envFile        = "systemd/rollback-watcher.env"
	systemdConfig  = "systemd/config.yml"
	composeFile    = "compose/compose.yaml"
	composeConfig  = "compose/config.yml"
	dockerfile     = "compose/Dockerfile"
	kubeDir        = "kubernetes"
	alertsFile     = "prometheus/watcher-alerts.yml"
	alertTestsFile = "prometheus/watcher-alerts.test.yml"
	// doraTestsFile tests the recording rules, evaluated hourly.
	doraTestsFile = "prometheus/watcher-dora.test.yml"
	promConfig    = "prometheus/prometheus.yml"
	amConfig      = "alertmanager/alertmanager.yml"
	dashboardFile = "grafana/rollback-watcher.json"
	readme        = "README.md"

	// watcherJob is the scrape job the alerts and the dashboard expect.
	watcherJob = "rollback-watcher"
	// unitBinary is where the unit (and deploy/README.md) installs the watcher.
	unitBinary = "/usr/local/bin/watcher"
)

// tool finds a command the checks need. A missing tool is a failure naming
// the fix, never a skip, as everywhere in this repository: `make test`
// installs them (scripts/deps.sh).
func tool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run scripts/deps.sh (or `make deps`), which installs the Debian package %s", name, pkg)
	}
	return p
}

// run runs a command and fails the test with its output if it fails.
func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// watcherBinary builds ./cmd/watcher once for all tests.
func watcherBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "watcher-deploy-test-"); buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "watcher")
		cmd := exec.Command("go", "build", "-o", buildBin, "./cmd/watcher")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/watcher: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

var (
	helpFlagRE    = regexp.MustCompile(`(?m)^ {2,6}(?:-\w, )?--(\[no-\])?([a-z0-9][a-z0-9.-]*[a-z0-9])(?:="([^"]*)")?`)
	runHelpOnce   sync.Once
	runHelpFlags  map[string]bool
	runHelpDefval map[string]string
)

// runFlags returns the flags `watcher run --help` lists, and their defaults.
func runFlags(t *testing.T) (flags map[string]bool, defaults map[string]string) {
	t.Helper()
	bin := watcherBinary(t)
	runHelpOnce.Do(func() {
		out, _ := exec.Command(bin, "run", "--help").CombinedOutput()
		runHelpFlags, runHelpDefval = map[string]bool{}, map[string]string{}
		for _, m := range helpFlagRE.FindAllStringSubmatch(string(out), -1) {
			runHelpFlags[m[2]] = true
			if m[1] != "" {
				runHelpFlags["no-"+m[2]] = true
			}
			if m[3] != "" {
				runHelpDefval[m[2]] = m[3]
			}
		}
	})
	for _, f := range []string{"config.file", "nats.url", "web.listen-address", "storage.path"} {
		if !runHelpFlags[f] {
			t.Fatalf("`watcher run --help` does not list --%s; the help parser in this test is out of date (flags seen: %v)", f, slices.Sorted(maps.Keys(runHelpFlags)))
		}
	}
	return runHelpFlags, runHelpDefval
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decodeYAML(t *testing.T, name string, v any) {
	t.Helper()
	if err := yaml.Unmarshal(readFile(t, name), v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// decodeDocs decodes every document of a YAML stream.
func decodeDocs(name string, data []byte) ([]*yaml.Node, error) {
	var docs []*yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		docs = append(docs, &n)
	}
}

// TestFilesParse parses every YAML and JSON file of the kit.
func TestFilesParse(t *testing.T) {
	n := 0
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch filepath.Ext(p) {
		case ".yml", ".yaml":
			docs, err := decodeDocs(p, readFile(t, p))
			if err != nil {
				t.Error(err)
			} else if len(docs) == 0 {
				t.Errorf("%s: no YAML document", p)
			}
			n++
		case ".json":
			var v any
			if err := json.Unmarshal(readFile(t, p), &v); err != nil {
				t.Errorf("%s: %v", p, err)
			}
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Errorf("parsed only %d YAML/JSON files under deploy/", n)
	}
}

// --- Prometheus and Alertmanager ---

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type ruleTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		InputSeries []struct {
			Series string `yaml:"series"`
		} `yaml:"input_series"`
		PromQLExprTest []struct {
			Expr string `yaml:"expr"`
		} `yaml:"promql_expr_test"`
		AlertRuleTest []struct {
			EvalTime  string `yaml:"eval_time"`
			Alertname string `yaml:"alertname"`
			ExpAlerts []struct {
				ExpLabels map[string]string `yaml:"exp_labels"`
			} `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// wantAlerts are the alerts deploy/README.md promises.
var wantAlerts = []string{"WatcherDown", "WatcherRollbackFailed", "WatcherDeployEventsRejected", "WatcherMeasurementErrors", "WatcherRunsStuck", "WatcherNotificationsFailing"}

// wantRecords are the recording rules the dashboard's DORA figures and
// deploy/README.md name.
var wantRecords = []string{
	"service_environment:watcher_deploys:increase7d",
	"service_environment:watcher_rollbacks:increase7d",
	"service_environment:watcher_change_failure_rate:ratio7d",
	"service_environment:watcher_restore_seconds:p50_7d",
	"service_environment:watcher_restore_seconds:p90_7d",
	"verdict:watcher_decision_seconds:p90_7d",
}

func TestPromtoolRules(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	run(t, ".", promtool, "check", "rules", alertsFile)
	run(t, filepath.Dir(alertTestsFile), promtool, "test", "rules", filepath.Base(alertTestsFile), filepath.Base(doraTestsFile))
	run(t, ".", promtool, "check", "config", promConfig)
}

// TestAlertsCovered checks that every alert is tested both firing and not
// firing, is explained in the README, and says what to do.
func TestAlertsCovered(t *testing.T) {
	var rules ruleFile
	decodeYAML(t, alertsFile, &rules)
	var tests ruleTests
	decodeYAML(t, alertTestsFile, &tests)
	doc := string(readFile(t, readme))

	alerts := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts[r.Alert] = true
			if r.Labels["severity"] == "" {
				t.Errorf("alert %s has no severity label", r.Alert)
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if r.Annotations[a] == "" {
					t.Errorf("alert %s has no %s annotation", r.Alert, a)
				}
			}
			anchor := strings.ToLower(r.Alert)
			if !strings.HasSuffix(r.Annotations["runbook_url"], "deploy/README.md#"+anchor) {
				t.Errorf("alert %s: runbook_url %q should point at deploy/README.md#%s", r.Alert, r.Annotations["runbook_url"], anchor)
			}
			if !regexp.MustCompile(`(?m)^#+ ` + r.Alert + `\s*$`).MatchString(doc) {
				t.Errorf("alert %s: deploy/README.md has no heading %q (the runbook_url anchor)", r.Alert, r.Alert)
			}
		}
	}
	for _, a := range wantAlerts {
		if !alerts[a] {
			t.Errorf("%s: alert %s is missing", alertsFile, a)
		}
	}

	if !slices.Contains(tests.RuleFiles, filepath.Base(alertsFile)) {
		t.Errorf("%s does not load %s (rule_files: %v)", alertTestsFile, filepath.Base(alertsFile), tests.RuleFiles)
	}
	firing, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, at := range tc.AlertRuleTest {
			if !alerts[at.Alertname] {
				t.Errorf("%s tests alert %q, which %s does not define", alertTestsFile, at.Alertname, alertsFile)
			}
			if len(at.ExpAlerts) > 0 {
				firing[at.Alertname] = true
			} else {
				quiet[at.Alertname] = true
			}
		}
	}
	// Every recording rule is checked by a promql_expr_test of its own.
	var dora ruleTests
	decodeYAML(t, doraTestsFile, &dora)
	if !slices.Contains(dora.RuleFiles, filepath.Base(alertsFile)) {
		t.Errorf("%s does not load %s (rule_files: %v)", doraTestsFile, filepath.Base(alertsFile), dora.RuleFiles)
	}
	tested := map[string]bool{}
	for _, tc := range dora.Tests {
		for _, et := range tc.PromQLExprTest {
			tested[strings.TrimSpace(et.Expr)] = true
		}
	}
	records := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Record == "" {
				continue
			}
			records[r.Record] = true
			if !tested[r.Record] {
				t.Errorf("%s: no promql_expr_test of %s", doraTestsFile, r.Record)
			}
		}
	}
	for _, r := range wantRecords {
		if !records[r] {
			t.Errorf("%s: recording rule %s is missing", alertsFile, r)
		}
	}
	for a := range alerts {
		if !firing[a] {
			t.Errorf("%s: no test where %s fires", alertTestsFile, a)
		}
		if !quiet[a] {
			t.Errorf("%s: no test where %s does not fire", alertTestsFile, a)
		}
	}
}

func TestAlertmanagerConfig(t *testing.T) {
	amtool := tool(t, "amtool", "prometheus-alertmanager")
	run(t, ".", amtool, "check-config", amConfig)

	var c struct {
		Route     amRoute `yaml:"route"`
		Receivers []struct {
			Name     string `yaml:"name"`
			Webhooks []struct {
				URL          string `yaml:"url"`
				SendResolved *bool  `yaml:"send_resolved"`
			} `yaml:"webhook_configs"`
		} `yaml:"receivers"`
	}
	decodeYAML(t, amConfig, &c)
	receiver := ""
	for _, r := range c.Receivers {
		for _, w := range r.Webhooks {
			u, err := url.Parse(w.URL)
			if err != nil {
				t.Fatalf("%s: receiver %s: %v", amConfig, r.Name, err)
			}
			if u.Path == "/api/v1/alerts" {
				receiver = r.Name
				checkWatcherAddress(t, amConfig, u.Host)
			}
		}
	}
	if receiver == "" {
		t.Fatalf("%s: no webhook receiver posts to the watcher's /api/v1/alerts", amConfig)
	}
	found := false
	var walk func(r amRoute)
	walk = func(r amRoute) {
		if r.Receiver == receiver && slices.ContainsFunc(r.Matchers, func(m string) bool { return strings.HasPrefix(m, "service") }) {
			found = true
			if !r.Continue {
				t.Errorf("%s: the route to %s should `continue: true`, so that people still get the alert", amConfig, receiver)
			}
		}
		for _, sub := range r.Routes {
			walk(sub)
		}
	}
	walk(c.Route)
	if !found {
		t.Errorf("%s: no route sends alerts with a service label to receiver %s", amConfig, receiver)
	}
}

type amRoute struct {
	Receiver string    `yaml:"receiver"`
	Matchers []string  `yaml:"matchers"`
	Continue bool      `yaml:"continue"`
	Routes   []amRoute `yaml:"routes"`
}

// checkWatcherAddress checks that an address other services use to reach
// the watcher in compose.yaml is its service name and web port.
func checkWatcherAddress(t *testing.T, where, hostport string) {
	t.Helper()
	c := loadCompose(t)
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Errorf("%s: watcher address %q: %v", where, hostport, err)
		return
	}
	_, webPort, _ := net.SplitHostPort(flagValue(c.Services["watcher"].Command, "web.listen-address"))
	if host != "watcher" || port != webPort {
		t.Errorf("%s: the watcher is at %q; compose.yaml runs it as watcher:%s", where, hostport, webPort)
	}
}

// --- metric names ---

// exportedMetrics lists the metric names the watcher registers, from its
// sources: every `Name: "watcher_..."` in internal/ and cmd/, and for a
// histogram the _bucket, _sum and _count series Prometheus stores.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	re := regexp.MustCompile(`Name: *"(watcher_[a-z_]+)"`)
	histRE := regexp.MustCompile(`HistogramOpts\{\s*Name: *"(watcher_[a-z_]+)"`)
	names := map[string]bool{}
	for _, dir := range []string{"../internal", "../cmd"} {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return err
			}
			src := readFile(t, p)
			for _, m := range re.FindAllSubmatch(src, -1) {
				names[string(m[1])] = true
			}
			for _, m := range histRE.FindAllSubmatch(src, -1) {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					names[string(m[1])+suffix] = true
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// The names the README promises ("HTTP", /metrics): if one is not
	// found, the regexp above does not match how metrics are declared.
	for _, n := range []string{"watcher_runs_active", "watcher_runs_total", "watcher_rollbacks_total", "watcher_deploy_events_total", "watcher_measurements_total", "watcher_build_info", "watcher_restore_seconds_bucket"} {
		if !names[n] {
			t.Fatalf("metric %s not found in internal/ or cmd/ (found %v)", n, slices.Sorted(maps.Keys(names)))
		}
	}
	names["up"] = true // written by Prometheus for every target
	return names
}

// metricLabels are the labels (besides the target's job and instance) and
// values of each metric, as the README describes them ("HTTP").
var metricLabels = map[string]map[string][]string{
	"up":                                   {},
	"watcher_runs_active":                  {},
	"watcher_runs_total":                   {"verdict": {"passed", "failed", "inconclusive", "superseded"}},
	"watcher_rollbacks_total":              {"result": {"completed", "failed", "skipped"}},
	"watcher_deploy_events_total":          {"result": {"started", "rejected", "skipped", "duplicate", "ignored"}},
	"watcher_measurements_total":           {"outcome": {"pass", "fail", "inconclusive", "error"}},
	"watcher_build_info":                   {"version": nil, "revision": nil, "goversion": nil},
	"watcher_deploys_total":                {"service": nil, "environment": nil},
	"watcher_verdicts_total":               {"service": nil, "environment": nil, "verdict": verdicts},
	"watcher_rollbacks_by_service_total":   {"service": nil, "environment": nil, "result": {"completed", "failed", "skipped"}},
	"watcher_notifications_total":          {"target": nil, "result": {"sent", "failed", "retried"}},
	"watcher_rollback_holds_total":         {"result": {"held", "approved", "cancelled", "deadline_keep", "deadline_rollback", "executed", "refused"}},
	"watcher_rollback_verifications_total": {"service": nil, "environment": nil, "result": {"verified", "unhelpful"}},

	// Recorded by watcher-alerts.yml (group rollback-watcher-dora).
	"service_environment:watcher_deploys:increase7d":          {"service": nil, "environment": nil},
	"service_environment:watcher_rollbacks:increase7d":        {"service": nil, "environment": nil},
	"service_environment:watcher_change_failure_rate:ratio7d": {"service": nil, "environment": nil},
	"service_environment:watcher_restore_seconds:p50_7d":      {"service": nil, "environment": nil},
	"service_environment:watcher_restore_seconds:p90_7d":      {"service": nil, "environment": nil},
	"verdict:watcher_decision_seconds:p90_7d":                 {"verdict": verdicts},
}

var verdicts = []string{"passed", "failed", "inconclusive", "marginal", "superseded"}

// histogramLabels are the labels of each histogram; its _bucket series
// have le besides.
var histogramLabels = map[string]map[string][]string{
	"watcher_decision_seconds": {"verdict": verdicts},
	"watcher_restore_seconds":  {"service": nil, "environment": nil},
}

func init() {
	for name, ls := range histogramLabels {
		bucket := maps.Clone(ls)
		bucket["le"] = nil
		metricLabels[name+"_bucket"] = bucket
		metricLabels[name+"_sum"] = ls
		metricLabels[name+"_count"] = ls
	}
}

var promql = parser.NewParser(parser.Options{})

// checkExpr parses a PromQL expression and checks that it only selects
// metrics the watcher exports (or up), with labels and values they have. It
// returns the metric names.
func checkExpr(t *testing.T, where, expr string, exported map[string]bool) []string {
	t.Helper()
	e, err := promql.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %q: %v", where, expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel {
				name = m.Value
			}
		}
		names = append(names, name)
		if !exported[name] {
			t.Errorf("%s: %q selects %q, which the watcher does not export (it exports %v)", where, expr, name, slices.Sorted(maps.Keys(exported)))
			return nil
		}
		known := metricLabels[name]
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel || m.Name == "job" || m.Name == "instance" {
				continue
			}
			values, ok := known[m.Name]
			if !ok {
				t.Errorf("%s: %q: %s has no label %q", where, expr, name, m.Name)
			} else if m.Type == labels.MatchEqual && values != nil && !slices.Contains(values, m.Value) {
				t.Errorf("%s: %q: %s{%s} is never %q (values: %v)", where, expr, name, m.Name, m.Value, values)
			}
		}
		return nil
	})
	return names
}

func TestAlertMetricNames(t *testing.T) {
	exported := exportedMetrics(t)
	var rules ruleFile
	decodeYAML(t, alertsFile, &rules)
	// A recorded series may be used by the rules after it, and by the tests.
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				exported[r.Record] = true
			}
		}
	}
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			checkExpr(t, alertsFile+": "+r.Alert+r.Record, r.Expr, exported)
			n++
		}
	}
	if n == 0 {
		t.Fatalf("%s: no rules", alertsFile)
	}
	// The tests' input series must be real metrics too, or they test nothing.
	for _, f := range []string{alertTestsFile, doraTestsFile} {
		var tests ruleTests
		decodeYAML(t, f, &tests)
		for _, tc := range tests.Tests {
			for _, s := range tc.InputSeries {
				checkExpr(t, f, s.Series, exported)
			}
		}
	}
}

// grafanaVarRE matches Grafana's variables in a query.
var grafanaVarRE = regexp.MustCompile(`\$\{[^}]+\}|\$[A-Za-z_]\w*`)

// grafanaToPromQL replaces Grafana's variables with something PromQL parses:
// a duration for the interval variables, a word elsewhere.
func grafanaToPromQL(q string) string {
	return grafanaVarRE.ReplaceAllStringFunc(q, func(v string) string {
		switch strings.Trim(v, "${}") {
		case "__rate_interval", "__interval", "__range":
			return "5m"
		}
		return "x"
	})
}

type grafanaPanel struct {
	Title      string         `json:"title"`
	Type       string         `json:"type"`
	Datasource map[string]any `json:"datasource"`
	Targets    []struct {
		Expr       string         `json:"expr"`
		Datasource map[string]any `json:"datasource"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

func TestGrafanaDashboard(t *testing.T) {
	exported := exportedMetrics(t)
	var d struct {
		Title         string         `json:"title"`
		UID           string         `json:"uid"`
		SchemaVersion int            `json:"schemaVersion"`
		Panels        []grafanaPanel `json:"panels"`
		Templating    struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(readFile(t, dashboardFile), &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("%s: title %q, uid %q: both are needed", dashboardFile, d.Title, d.UID)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("%s: schemaVersion %d; want a recent one (36 or later)", dashboardFile, d.SchemaVersion)
	}

	dsVar := ""
	labelValuesRE := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	for _, v := range d.Templating.List {
		switch v.Type {
		case "datasource":
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil || q != "prometheus" {
				t.Errorf("%s: datasource variable %s: query %s, want \"prometheus\"", dashboardFile, v.Name, v.Query)
			}
			dsVar = v.Name
		case "query":
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				if err := json.Unmarshal(v.Query, &q.Query); err != nil {
					t.Errorf("%s: variable %s: query %s: %v", dashboardFile, v.Name, v.Query, err)
					continue
				}
			}
			m := labelValuesRE.FindStringSubmatch(q.Query)
			if m == nil {
				t.Errorf("%s: variable %s: query %q is not label_values(selector, label)", dashboardFile, v.Name, q.Query)
				continue
			}
			checkExpr(t, dashboardFile+": variable "+v.Name, grafanaToPromQL(m[1]), exported)
		}
	}
	if dsVar == "" {
		t.Fatalf("%s: no Prometheus datasource variable", dashboardFile)
	}
	wantDS := "${" + dsVar + "}"

	used := map[string]bool{}
	var walk func(ps []grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			where := fmt.Sprintf("%s: panel %q", dashboardFile, p.Title)
			if p.Datasource["uid"] != wantDS {
				t.Errorf("%s: datasource uid %v, want %s", where, p.Datasource["uid"], wantDS)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no queries", where)
			}
			for _, tg := range p.Targets {
				if tg.Datasource != nil && tg.Datasource["uid"] != wantDS {
					t.Errorf("%s: query datasource uid %v, want %s", where, tg.Datasource["uid"], wantDS)
				}
				for _, n := range checkExpr(t, where, grafanaToPromQL(tg.Expr), exported) {
					used[n] = true
				}
			}
		}
	}
	walk(d.Panels)
	// Runs active, run verdicts, rollbacks, deploy events, measurements;
	// per service, change-failure rate and time to restore; time to
	// decision; notifications.
	for _, n := range []string{"watcher_runs_active", "watcher_runs_total", "watcher_rollbacks_total", "watcher_deploy_events_total", "watcher_measurements_total",
		"watcher_deploys_total", "watcher_rollbacks_by_service_total", "watcher_restore_seconds_bucket", "watcher_decision_seconds_bucket", "watcher_notifications_total"} {
		if !used[n] {
			t.Errorf("%s: no panel shows %s", dashboardFile, n)
		}
	}
}

// --- systemd ---

// unitDirectives reads a unit file: continuation lines joined, comments
// dropped, every value of every key in order.
func unitDirectives(t *testing.T, name string) map[string][]string {
	t.Helper()
	d := map[string][]string{}
	var line strings.Builder
	for raw := range strings.Lines(string(readFile(t, name))) {
		s := strings.TrimSpace(raw)
		if line.Len() == 0 && (s == "" || s[0] == '#' || s[0] == ';' || s[0] == '[') {
			continue
		}
		if line.Len() > 0 && (strings.HasPrefix(s, "#") || strings.HasPrefix(s, ";")) {
			continue // a comment inside a continued line
		}
		if cont, ok := strings.CutSuffix(s, `\`); ok {
			line.WriteString(cont + " ")
			continue
		}
		line.WriteString(s)
		k, v, ok := strings.Cut(line.String(), "=")
		if !ok {
			t.Fatalf("%s: not a directive: %q", name, line.String())
		}
		d[k] = append(d[k], strings.Join(strings.Fields(v), " "))
		line.Reset()
	}
	return d
}

func TestSystemdUnit(t *testing.T) {
	analyze := tool(t, "systemd-analyze", "systemd")
	d := unitDirectives(t, unitFile)

	// The hardening deploy/README.md describes.
	want := map[string]string{
		"User":                    "rollback-watcher",
		"Group":                   "rollback-watcher",
		"DynamicUser":             "no",
		"StateDirectory":          "rollback-watcher",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"NoNewPrivileges":         "yes",
		"CapabilityBoundingSet":   "",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"SystemCallFilter":        "@system-service",
		"Restart":                 "on-failure",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"EnvironmentFile":         "-/etc/default/rollback-watcher",
	}
	for k, v := range want {
		if !slices.Contains(d[k], v) {
			t.Errorf("%s: want %s=%s, have %q", unitFile, k, v, d[k])
		}
	}
	if len(d["ExecStart"]) != 1 {
		t.Fatalf("%s: want one ExecStart, have %q", unitFile, d["ExecStart"])
	}
	args := strings.Fields(d["ExecStart"][0])
	if args[0] != unitBinary || args[1] != "run" {
		t.Errorf("%s: ExecStart should run %s run, not %q", unitFile, unitBinary, args[:2])
	}
	if v := flagValue(args, "storage.path"); !strings.HasPrefix(v, "/var/lib/rollback-watcher") {
		t.Errorf("%s: --storage.path=%q is outside the StateDirectory /var/lib/rollback-watcher, the only writable path", unitFile, v)
	}
	if v := flagValue(args, "config.file"); v != "/etc/rollback-watcher/config.yml" {
		t.Errorf("%s: --config.file=%q, want /etc/rollback-watcher/config.yml", unitFile, v)
	}

	// systemd-analyze verify checks that ExecStart's binary exists: verify
	// a copy of the unit, with the same name, that runs a freshly built
	// watcher instead of /usr/local/bin/watcher.
	bin := watcherBinary(t)
	unit := string(readFile(t, unitFile))
	if strings.Count(unit, "ExecStart="+unitBinary+" ") != 1 {
		t.Fatalf("%s: ExecStart=%s not found once", unitFile, unitBinary)
	}
	dir := t.TempDir()
	copyPath := filepath.Join(dir, filepath.Base(unitFile))
	if err := os.WriteFile(copyPath, []byte(strings.Replace(unit, "ExecStart="+unitBinary+" ", "ExecStart="+bin+" ", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", "--man=no", copyPath)
	out, err := cmd.CombinedOutput()
	// verify exits 0 on warnings such as unknown keys: its output must not
	// mention the unit at all.
	if err != nil || strings.Contains(string(out), filepath.Base(unitFile)) {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitFile, err, out)
	}

	// An exposure level of at most 2.0 (of 10, "OK"): the sandbox holds.
	cmd = exec.Command(analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", copyPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze security --offline=yes --threshold=20 %s: %v\n%s", unitFile, err, out)
	}
}

// --- the watcher's flags and config ---

// flagValue returns the value of --name=value in args ("" if absent).
func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

type invocation struct {
	where string
	args  []string // starting with "run", or only flags when extra is true
	extra bool     // flags appended to another invocation (WATCHER_ARGS, the README)
}

// invocations collects every `watcher run` the kit spells out.
func invocations(t *testing.T) []invocation {
	t.Helper()
	var inv []invocation

	d := unitDirectives(t, unitFile)
	var unitArgs []string
	for _, a := range strings.Fields(d["ExecStart"][0])[1:] {
		if !strings.HasPrefix(a, "$") { // $WATCHER_ARGS: from the environment file
			unitArgs = append(unitArgs, a)
		}
	}
	inv = append(inv, invocation{where: unitFile + " ExecStart", args: unitArgs})

	// WATCHER_ARGS, the examples in comments included.
	envRE := regexp.MustCompile(`WATCHER_ARGS="([^"]*)"`)
	for _, m := range envRE.FindAllStringSubmatch(string(readFile(t, envFile)), -1) {
		inv = append(inv, invocation{where: envFile + " WATCHER_ARGS", args: strings.Fields(m[1]), extra: true})
	}

	c := loadCompose(t)
	inv = append(inv, invocation{where: composeFile + " watcher command", args: c.Services["watcher"].Command})

	for _, ctr := range loadKube(t).deployment.Spec.Template.Spec.Containers {
		inv = append(inv, invocation{where: kubeDir + " container " + ctr.Name, args: ctr.Args})
	}

	inv = append(inv, invocation{where: dockerfile + " CMD", args: dockerfileCmd(t)})

	// `watcher run ...` in the README, continuation lines joined.
	text := strings.ReplaceAll(string(readFile(t, readme)), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		_, rest, ok := strings.Cut(line, "watcher run ")
		if !ok {
			continue
		}
		var flags []string
		for _, f := range strings.Fields(rest) {
			if strings.HasPrefix(f, "--") {
				flags = append(flags, strings.Trim(f, "`'\"),"))
			}
		}
		inv = append(inv, invocation{where: readme + ": " + strings.TrimSpace(line), args: flags, extra: true})
	}
	return inv
}

// dockerfileCmd is the Dockerfile's CMD, in its exec (JSON) form.
func dockerfileCmd(t *testing.T) []string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^CMD (\[.*\])$`).FindSubmatch(readFile(t, dockerfile))
	if m == nil {
		t.Fatalf("%s: no CMD [...]", dockerfile)
	}
	var args []string
	if err := json.Unmarshal(m[1], &args); err != nil {
		t.Fatalf("%s: CMD: %v", dockerfile, err)
	}
	return args
}

// TestRunFlags checks that every `watcher run` of the kit uses flags that
// `watcher run --help` lists, and that the watcher's own parser takes them.
func TestRunFlags(t *testing.T) {
	bin := watcherBinary(t)
	known, _ := runFlags(t)
	for _, inv := range invocations(t) {
		args := inv.args
		if !inv.extra {
			if len(args) == 0 || args[0] != "run" {
				t.Errorf("%s: %q does not start with the run command", inv.where, args)
				continue
			}
			args = args[1:]
		}
		for _, a := range args {
			if !strings.HasPrefix(a, "--") {
				t.Errorf("%s: %q is not a flag; `watcher run` takes no arguments", inv.where, a)
				continue
			}
			name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			if !known[name] {
				t.Errorf("%s: --%s is not a flag of `watcher run` (it has %v)", inv.where, name, slices.Sorted(maps.Keys(known)))
			}
		}
		// kingpin parses every flag before it acts on --help: an unknown
		// flag or a missing value fails here with exit status 2.
		out, err := exec.Command(bin, append(append([]string{"run"}, args...), "--help")...).CombinedOutput()
		if err != nil {
			t.Errorf("%s: watcher run %s --help: %v\n%s", inv.where, strings.Join(args, " "), err, out)
		}
	}
}

// TestConfigFiles loads the example config files with the watcher's own
// strict decoder.
func TestConfigFiles(t *testing.T) {
	for _, f := range []string{systemdConfig, composeConfig} {
		c, err := config.Load(f)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if len(c.RuleFiles) == 0 {
			t.Errorf("%s: no rule_files", f)
		}
	}
}

// --- compose ---

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Command []string `yaml:"command"`
	Volumes []string `yaml:"volumes"`
	Ports   []string `yaml:"ports"`
}

type composeProject struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

func loadCompose(t *testing.T) composeProject {
	t.Helper()
	var c composeProject
	decodeYAML(t, composeFile, &c)
	for _, s := range []string{"watcher", "nats", "prometheus", "alertmanager"} {
		if _, ok := c.Services[s]; !ok {
			t.Fatalf("%s: no service %s", composeFile, s)
		}
	}
	return c
}

// mountTarget returns where a compose service mounts a host path (relative
// to the compose file), or "".
func (s composeService) mountTarget(src string) string {
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && path.Clean(parts[0]) == path.Clean(src) {
			return parts[1]
		}
	}
	return ""
}

func TestCompose(t *testing.T) {
	c := loadCompose(t)
	dir := filepath.Dir(composeFile)

	// Every bind-mounted file and the build exist.
	for name, s := range c.Services {
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") {
				if _, ok := c.Volumes[src]; !ok {
					t.Errorf("%s: service %s mounts volume %q, which is not declared", composeFile, name, src)
				}
				continue
			}
			if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
				t.Errorf("%s: service %s mounts %s: %v", composeFile, name, src, err)
			}
		}
		if s.Build != nil {
			df := filepath.Join(dir, s.Build.Context, s.Build.Dockerfile)
			if _, err := os.Stat(df); err != nil {
				t.Errorf("%s: service %s builds with %v", composeFile, name, err)
			}
		}
	}

	nats := c.Services["nats"]
	if !strings.HasPrefix(nats.Image, "nats:2") || !slices.Contains(nats.Command, "-js") {
		t.Errorf("%s: nats should run image nats:2 with -js (JetStream), not %q %q", composeFile, nats.Image, nats.Command)
	}

	w := c.Services["watcher"]
	for flag, service := range map[string]string{"nats.url": "nats", "prometheus.url": "prometheus"} {
		u, err := url.Parse(flagValue(w.Command, flag))
		if err != nil || u.Hostname() != service {
			t.Errorf("%s: the watcher's --%s=%q should name the %s service", composeFile, flag, flagValue(w.Command, flag), service)
		}
	}
	if host, _, err := net.SplitHostPort(flagValue(w.Command, "web.listen-address")); err != nil || (host != "" && host != "0.0.0.0") {
		t.Errorf("%s: --web.listen-address=%q: Prometheus and Alertmanager cannot reach it from their containers", composeFile, flagValue(w.Command, "web.listen-address"))
	}

	// The config file's rule_files land in the mounted rules/.
	cfgTarget := w.mountTarget("./config.yml")
	rulesTarget := w.mountTarget("../../rules")
	if cfgTarget == "" || rulesTarget == "" || flagValue(w.Command, "config.file") != cfgTarget {
		t.Fatalf("%s: the watcher should mount ./config.yml (%q) as its --config.file (%q) and ../../rules (%q)", composeFile, cfgTarget, flagValue(w.Command, "config.file"), rulesTarget)
	}
	cfg, err := config.Load(composeConfig)
	if err != nil {
		t.Fatal(err)
	}
	absDir, _ := filepath.Abs(dir)
	for _, r := range cfg.RuleFiles { // resolved against this directory: move into the container
		rel, _ := filepath.Rel(absDir, r)
		if inContainer := path.Join(path.Dir(cfgTarget), filepath.ToSlash(rel)); path.Dir(inContainer) != rulesTarget {
			t.Errorf("%s: rule_files %q is %s in the container, outside the mounted rules %s", composeConfig, rel, inContainer, rulesTarget)
		}
	}

	// Prometheus scrapes the watcher where compose runs it, and loads the alerts.
	var prom struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	decodeYAML(t, promConfig, &prom)
	if !slices.Contains(prom.RuleFiles, filepath.Base(alertsFile)) {
		t.Errorf("%s: rule_files %q does not load %s", promConfig, prom.RuleFiles, filepath.Base(alertsFile))
	}
	scraped := false
	for _, sc := range prom.ScrapeConfigs {
		if sc.JobName != watcherJob {
			continue
		}
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				checkWatcherAddress(t, promConfig, tg)
				scraped = true
			}
		}
	}
	if !scraped {
		t.Errorf("%s: no job %q scraping the watcher (the alerts expect that job name)", promConfig, watcherJob)
	}
	p := c.Services["prometheus"]
	for _, f := range []string{promConfig, alertsFile} {
		if tg := p.mountTarget("../" + f); tg == "" {
			t.Errorf("%s: prometheus does not mount %s", composeFile, f)
		}
	}
	if c.Services["alertmanager"].mountTarget("../"+amConfig) == "" {
		t.Errorf("%s: alertmanager does not mount %s", composeFile, amConfig)
	}

	// `docker compose config` when it is installed; it is not a test dependency.
	if exec.Command("docker", "compose", "version").Run() != nil {
		t.Log("docker compose not available: `docker compose config` not run")
		return
	}
	run(t, dir, "docker", "compose", "-f", filepath.Base(composeFile), "config", "--quiet")
}

// TestDockerfile checks the two ways the Dockerfile builds (deploy/README.md
// "The image"): its Go stage and `make image` both run image-context.sh,
// and the stage that `make image` replaces with its directory is the one
// the final stage copies from. TestImage builds and runs the image.
func TestDockerfile(t *testing.T) {
	df := string(readFile(t, dockerfile))
	froms := regexp.MustCompile(`(?m)^FROM (\S+)(?: AS (\S+))?$`).FindAllStringSubmatch(df, -1)
	if len(froms) < 2 {
		t.Fatalf("%s: %d stages; want a Go stage and a final one", dockerfile, len(froms))
	}
	if final := froms[len(froms)-1]; final[1] != "scratch" {
		t.Errorf("%s: the final stage is FROM %s; want scratch, which needs no image pulled", dockerfile, final[1])
	}
	if !strings.Contains(df, "deploy/compose/image-context.sh /out") {
		t.Errorf("%s: the Go stage does not run deploy/compose/image-context.sh, as `make image` does", dockerfile)
	}
	if !regexp.MustCompile(`(?m)^USER \S+`).MatchString(df) {
		t.Errorf("%s: no USER: the image would run as root", dockerfile)
	}

	m := regexp.MustCompile(`--build-context (\w+)=\$\(IMAGE_CONTEXT\)`).FindStringSubmatch(string(readFile(t, "../Makefile")))
	if m == nil {
		t.Fatalf("../Makefile: the image target passes no --build-context NAME=$(IMAGE_CONTEXT)")
	}
	stage := -1
	for i, f := range froms {
		if f[2] == m[1] {
			stage = i
		}
	}
	if stage < 0 || stage == len(froms)-1 {
		t.Fatalf("%s: no stage %q before the final one, for `make image` to replace", dockerfile, m[1])
	}
	if !strings.Contains(df, "COPY --from="+m[1]+" ") {
		t.Errorf("%s: the final stage copies nothing from stage %q", dockerfile, m[1])
	}
	// image-context.sh writes each path the final stage takes from that stage.
	script := string(readFile(t, "compose/image-context.sh"))
	for _, c := range regexp.MustCompile(`(?m)^COPY --from=`+m[1]+`(?: --chown=\S+)? /(\S*) `).FindAllStringSubmatch(df, -1) {
		if p := strings.TrimSuffix(c[1], "/"); !strings.Contains(script, `"$out/`+p+`"`) {
			t.Errorf("%s copies /%s from stage %s, which compose/image-context.sh does not write", dockerfile, c[1], m[1])
		}
	}
}

// --- Kubernetes ---

type kubeMeta struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

type kubeProbe struct {
	HTTPGet *struct {
		Path string    `yaml:"path"`
		Port yaml.Node `yaml:"port"`
	} `yaml:"httpGet"`
}

type kubeContainer struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe  *kubeProbe `yaml:"livenessProbe"`
	ReadinessProbe *kubeProbe `yaml:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext kubeSecurity `yaml:"securityContext"`
	VolumeMounts    []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type kubeSecurity struct {
	RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
	ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
}

type kubeDeployment struct {
	Spec struct {
		Replicas int `yaml:"replicas"`
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata kubeMeta `yaml:"metadata"`
			Spec     struct {
				SecurityContext kubeSecurity    `yaml:"securityContext"`
				Containers      []kubeContainer `yaml:"containers"`
				Volumes         []struct {
					Name   string `yaml:"name"`
					Secret *struct {
						SecretName string `yaml:"secretName"`
						Optional   bool   `yaml:"optional"`
					} `yaml:"secret"`
					ConfigMap *struct {
						Name     string `yaml:"name"`
						Optional bool   `yaml:"optional"`
					} `yaml:"configMap"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type kubeService struct {
	Spec struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string    `yaml:"name"`
			Port       int       `yaml:"port"`
			TargetPort yaml.Node `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type kubePDB struct {
	Spec struct {
		MinAvailable   any `yaml:"minAvailable"`
		MaxUnavailable any `yaml:"maxUnavailable"`
		Selector       struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
	} `yaml:"spec"`
}

type kubeManifests struct {
	deployment kubeDeployment
	services   []kubeService
	pdbs       []kubePDB
	configMaps map[string]map[string]string // name -> data
	secrets    map[string]map[string]string // name -> stringData
	kinds      map[string]int
	files      []string
}

func loadKube(t *testing.T) *kubeManifests {
	t.Helper()
	k := &kubeManifests{configMaps: map[string]map[string]string{}, secrets: map[string]map[string]string{}, kinds: map[string]int{}}
	entries, err := os.ReadDir(kubeDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name := filepath.Join(kubeDir, e.Name())
		if filepath.Ext(name) != ".yaml" && filepath.Ext(name) != ".yml" {
			continue
		}
		k.files = append(k.files, e.Name())
		docs, err := decodeDocs(name, readFile(t, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range docs {
			var h struct {
				APIVersion string            `yaml:"apiVersion"`
				Kind       string            `yaml:"kind"`
				Metadata   kubeMeta          `yaml:"metadata"`
				Data       map[string]string `yaml:"data"`
				StringData map[string]string `yaml:"stringData"`
			}
			if err := doc.Decode(&h); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if h.APIVersion == "" || h.Kind == "" {
				t.Errorf("%s: a document without apiVersion and kind", name)
			}
			if h.Metadata.Namespace != "" || h.Kind == "Namespace" {
				t.Errorf("%s: %s %s sets a namespace; the manifests are namespace-less", name, h.Kind, h.Metadata.Name)
			}
			k.kinds[h.Kind]++
			switch h.Kind {
			case "Deployment":
				err = doc.Decode(&k.deployment)
			case "Service":
				var svc kubeService
				err = doc.Decode(&svc)
				k.services = append(k.services, svc)
			case "PodDisruptionBudget":
				var pdb kubePDB
				err = doc.Decode(&pdb)
				k.pdbs = append(k.pdbs, pdb)
			case "ConfigMap":
				k.configMaps[h.Metadata.Name] = h.Data
			case "Secret":
				k.secrets[h.Metadata.Name] = h.StringData
			}
			if err != nil {
				t.Fatalf("%s: %s: %v", name, h.Kind, err)
			}
		}
	}
	if k.kinds["Deployment"] != 1 || len(k.deployment.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("%s: want one Deployment with one container", kubeDir)
	}
	return k
}

// subset reports whether every label of sel is in labels, and sel is not empty.
func subset(sel, have map[string]string) bool {
	for k, v := range sel {
		if have[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

func TestKubernetes(t *testing.T) {
	k := loadKube(t)
	_, defaults := runFlags(t)
	for _, kind := range []string{"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"} {
		if k.kinds[kind] == 0 {
			t.Errorf("%s: no %s", kubeDir, kind)
		}
	}

	// kustomization.yaml lists every manifest.
	var kust struct {
		Resources []string `yaml:"resources"`
	}
	decodeYAML(t, filepath.Join(kubeDir, "kustomization.yaml"), &kust)
	manifests := slices.DeleteFunc(slices.Clone(k.files), func(f string) bool { return f == "kustomization.yaml" })
	if !slices.Equal(slices.Sorted(slices.Values(kust.Resources)), slices.Sorted(slices.Values(manifests))) {
		t.Errorf("%s/kustomization.yaml: resources %v, want the manifests %v", kubeDir, kust.Resources, manifests)
	}

	dep := k.deployment.Spec
	pod := dep.Template
	ctr := pod.Spec.Containers[0]
	if dep.Replicas != 3 {
		t.Errorf("Deployment: replicas %d, want 3", dep.Replicas)
	}
	if !subset(dep.Selector.MatchLabels, pod.Metadata.Labels) {
		t.Errorf("Deployment: selector %v does not select its pods %v", dep.Selector.MatchLabels, pod.Metadata.Labels)
	}

	// An external NATS cluster, streams replicated three times.
	if u := flagValue(ctr.Args, "nats.url"); u == "" {
		t.Errorf("Deployment: no --nats.url: three replicas would each embed a NATS server")
	}
	if r := flagValue(ctr.Args, "nats.replicas"); r != "3" {
		t.Errorf("Deployment: --nats.replicas=%q, want 3", r)
	}

	// Probes on the web port: the one `watcher run` defaults to, on every
	// interface so that the kubelet reaches it.
	_, defPort, err := net.SplitHostPort(defaults["web.listen-address"])
	if err != nil {
		t.Fatalf("default --web.listen-address %q: %v", defaults["web.listen-address"], err)
	}
	host, port, err := net.SplitHostPort(flagValue(ctr.Args, "web.listen-address"))
	if err != nil || (host != "" && host != "0.0.0.0") || port != defPort {
		t.Errorf("Deployment: --web.listen-address=%q; want :%s (all interfaces, the default port)", flagValue(ctr.Args, "web.listen-address"), defPort)
	}
	resolve := func(n yaml.Node) string { // a port by number or by name
		for _, p := range ctr.Ports {
			if n.Value == p.Name || n.Value == fmt.Sprint(p.ContainerPort) {
				return fmt.Sprint(p.ContainerPort)
			}
		}
		return ""
	}
	for _, p := range []struct {
		name  string
		probe *kubeProbe
		path  string
	}{{"livenessProbe", ctr.LivenessProbe, "/-/healthy"}, {"readinessProbe", ctr.ReadinessProbe, "/-/ready"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("Deployment: no %s httpGet", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || resolve(p.probe.HTTPGet.Port) != port {
			t.Errorf("Deployment: %s is %s on port %q; want %s on the web port %s", p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.Value, p.path, port)
		}
	}

	if ctr.Resources.Requests["cpu"] == "" || ctr.Resources.Requests["memory"] == "" || ctr.Resources.Limits["memory"] == "" {
		t.Errorf("Deployment: resources %+v; want cpu and memory requests and a memory limit", ctr.Resources)
	}
	isTrue := func(b *bool) bool { return b != nil && *b }
	if !isTrue(ctr.SecurityContext.RunAsNonRoot) && !isTrue(pod.Spec.SecurityContext.RunAsNonRoot) {
		t.Errorf("Deployment: runAsNonRoot is not set")
	}
	if !isTrue(ctr.SecurityContext.ReadOnlyRootFilesystem) {
		t.Errorf("Deployment: readOnlyRootFilesystem is not set")
	}
	if ctr.SecurityContext.AllowPrivilegeEscalation == nil || *ctr.SecurityContext.AllowPrivilegeEscalation {
		t.Errorf("Deployment: allowPrivilegeEscalation should be false")
	}

	// Every volume's ConfigMap or Secret exists here (or is optional).
	mounts := map[string]string{} // mount path -> ConfigMap/Secret name
	for _, v := range pod.Spec.Volumes {
		src := ""
		switch {
		case v.Secret != nil:
			src = v.Secret.SecretName
			if _, ok := k.secrets[src]; !ok && !v.Secret.Optional {
				t.Errorf("Deployment: volume %s: Secret %s is not in %s and not optional", v.Name, src, kubeDir)
			}
		case v.ConfigMap != nil:
			src = v.ConfigMap.Name
			if _, ok := k.configMaps[src]; !ok && !v.ConfigMap.Optional {
				t.Errorf("Deployment: volume %s: ConfigMap %s is not in %s and not optional", v.Name, src, kubeDir)
			}
		}
		for _, m := range ctr.VolumeMounts {
			if m.Name == v.Name && src != "" {
				mounts[m.MountPath] = src
			}
		}
	}

	// --config.file comes from a Secret; its relative paths (the NATS
	// password) name keys of that Secret; its rule_files are a ConfigMap,
	// whose policies are valid.
	cfgPath := flagValue(ctr.Args, "config.file")
	secret, ok := k.secrets[mounts[path.Dir(cfgPath)]]
	if !ok || secret[path.Base(cfgPath)] == "" {
		t.Fatalf("Deployment: --config.file=%s is not a key of a Secret mounted at %s", cfgPath, path.Dir(cfgPath))
	}
	secretDir := t.TempDir()
	for key, v := range secret {
		if err := os.WriteFile(filepath.Join(secretDir, key), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(filepath.Join(secretDir, path.Base(cfgPath)))
	if err != nil {
		t.Fatalf("Secret %s: %v", mounts[path.Dir(cfgPath)], err)
	}
	n := cfg.NATS
	if n.PasswordFile == "" && n.CredentialsFile == "" && n.TokenFile == "" && n.NKeyFile == "" {
		t.Errorf("Secret %s: config.yml names no NATS credentials (password_file, credentials_file, token_file, nkey_file)", mounts[path.Dir(cfgPath)])
	}
	for _, f := range []string{n.PasswordFile, n.CredentialsFile, n.TokenFile, n.NKeyFile} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			t.Errorf("Secret %s: config.yml names %s, which is not a key of the Secret (relative paths resolve against %s)", mounts[path.Dir(cfgPath)], filepath.Base(f), path.Dir(cfgPath))
		}
	}
	if len(cfg.RuleFiles) == 0 {
		t.Fatalf("Secret %s: config.yml has no rule_files", mounts[path.Dir(cfgPath)])
	}
	rulesDir := t.TempDir()
	for _, glob := range cfg.RuleFiles {
		cm, ok := k.configMaps[mounts[path.Dir(glob)]]
		if !ok {
			t.Errorf("rule_files %s: no ConfigMap is mounted at %s", glob, path.Dir(glob))
			continue
		}
		for key, v := range cm {
			if m, _ := path.Match(path.Base(glob), key); !m {
				continue
			}
			if err := os.WriteFile(filepath.Join(rulesDir, key), []byte(v), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := policy.Load(filepath.Join(rulesDir, "*")); err != nil {
		t.Errorf("ConfigMap policies: %v", err)
	}

	for _, s := range k.services {
		if !subset(s.Spec.Selector, pod.Metadata.Labels) {
			t.Errorf("Service: selector %v does not select the pods %v", s.Spec.Selector, pod.Metadata.Labels)
		}
		for _, p := range s.Spec.Ports {
			if resolve(p.TargetPort) != port {
				t.Errorf("Service: port %s targets %q, not the web port %s", p.Name, p.TargetPort.Value, port)
			}
		}
	}
	for _, p := range k.pdbs {
		if !subset(p.Spec.Selector.MatchLabels, pod.Metadata.Labels) {
			t.Errorf("PodDisruptionBudget: selector %v does not select the pods %v", p.Spec.Selector.MatchLabels, pod.Metadata.Labels)
		}
		if (p.Spec.MinAvailable == nil) == (p.Spec.MaxUnavailable == nil) {
			t.Errorf("PodDisruptionBudget: set one of minAvailable and maxUnavailable")
		}
	}

	// `kubectl kustomize` when it is installed; it is not a test dependency.
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Log("kubectl not available: `kubectl kustomize` not run")
		return
	}
	run(t, kubeDir, "kubectl", "kustomize", ".")
}

// TestReadme checks that deploy/README.md covers each way to run the watcher.
func TestReadme(t *testing.T) {
	doc := string(readFile(t, readme))
	for _, s := range []string{"useradd", "systemctl reload rollback-watcher", "docker compose", "make image", "kubectl apply", "scripts/deps.sh"} {
		if !strings.Contains(doc, s) {
			t.Errorf("%s does not mention %q", readme, s)
		}
	}
}
