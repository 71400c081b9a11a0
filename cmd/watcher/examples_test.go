package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// The examples/ directory (README "Send deploy events from your tool"):
// what of each example can run here runs: the exact `watcher publish`
// command lines against an embedded NATS, the curl bodies and the Argo CD
// template through the decoder POST /api/v1/events uses.

const examplesDir = "../../examples"

// ciEnv is what a CI runner would have in its environment when the
// examples' scripts run.
var ciEnv = map[string]string{
	"SERVICE":            "shop-api",
	"VERSION":            "9b2c1f0e4d5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c",
	"PREVIOUS_VERSION":   "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
	"GITHUB_RUN_ID":      "12345678901",
	"GITHUB_RUN_ATTEMPT": "2",
	"GITHUB_REPOSITORY":  "shop/shop-api",
	"CI_PIPELINE_ID":     "4711",
	"CI_JOB_ID":          "98765",
	"CI_PROJECT_PATH":    "shop/shop-api",
	"CI_JOB_URL":         "https://gitlab.example.com/shop/shop-api/-/jobs/98765",
	"WATCHER_URL":        "https://watcher.example.com",
	"WATCHER_TOKEN":      "not-used-by-the-decoder",
}

func readYAML(t *testing.T, name string, v any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(examplesDir, name))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// expand is the shell's $VAR and ${VAR} for the variables of env; a
// variable the test did not foresee fails it.
func expand(t *testing.T, s string, env map[string]string) string {
	t.Helper()
	return os.Expand(s, func(name string) string {
		v, ok := env[name]
		if !ok {
			t.Errorf("the example uses $%s, which the test does not set", name)
		}
		return v
	})
}

// shellWords splits the command of script that starts with prefix into
// the words the shell passes it: continuation lines joined, quotes
// removed, variables expanded. Enough shell for the examples, which use
// nothing else.
func shellWords(t *testing.T, script, prefix string, env map[string]string) []string {
	t.Helper()
	script = strings.ReplaceAll(script, "\\\n", " ")
	var line string
	for _, l := range strings.Split(script, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), prefix) {
			line = strings.TrimSpace(l)
			break
		}
	}
	if line == "" {
		t.Fatalf("no command starting with %q in:\n%s", prefix, script)
	}
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			end := strings.IndexByte(line[i+1:], '\'')
			if end < 0 {
				t.Fatalf("unterminated ' in %s", line)
			}
			cur.WriteString(line[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case c == '"':
			end := strings.IndexByte(line[i+1:], '"')
			if end < 0 {
				t.Fatalf("unterminated \" in %s", line)
			}
			cur.WriteString(expand(t, line[i+1:i+1+end], env))
			i += end + 1
			inWord = true
		default:
			j := i
			for j < len(line) && !strings.ContainsRune(" \t'\"", rune(line[j])) {
				j++
			}
			cur.WriteString(expand(t, line[i:j], env))
			i = j - 1
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// heredoc is the body of the script's `<<EOF` document, expanded.
func heredoc(t *testing.T, script string, env map[string]string) []byte {
	t.Helper()
	_, rest, ok := strings.Cut(script, "<<EOF\n")
	if !ok {
		t.Fatalf("no <<EOF document in:\n%s", script)
	}
	body, _, ok := strings.Cut(rest, "\nEOF\n")
	if !ok {
		t.Fatalf("unterminated <<EOF document in:\n%s", script)
	}
	return []byte(expand(t, body, env))
}

// decodeHTTP decodes body as POST /api/v1/events does, with the
// examples' Content-Type.
func decodeHTTP(t *testing.T, body []byte) events.Deploy {
	t.Helper()
	d, err := events.DecodeDeployPayload(map[string][]string{"Content-Type": {"application/json"}}, body)
	if err != nil {
		t.Fatalf("POST /api/v1/events would refuse the body: %v\n%s", err, body)
	}
	return d
}

// publishExample runs the example's `watcher publish` words against an
// embedded NATS, its --nats.url replaced and its --wait shortened (no
// watcher runs here to give a verdict: the wait ends with exit 6, having
// parsed every flag and published), and returns the event DEPLOYS stored.
func publishExample(t *testing.T, words []string) events.Deploy {
	t.Helper()
	if len(words) < 2 || words[0] != "watcher" || words[1] != "publish" {
		t.Fatalf("not a watcher publish command: %q", words)
	}
	n := testutil.StartNATS(t)
	args := []string{"publish"}
	var wait, natsURL bool
	for _, w := range words[2:] {
		switch {
		case strings.HasPrefix(w, "--nats.url="):
			w, natsURL = "--nats.url="+n.URL, true
		case strings.HasPrefix(w, "--wait="):
			var d time.Duration
			if err := (waitFlag{&d}).Set(strings.TrimPrefix(w, "--wait=")); err != nil {
				t.Errorf("the example's %s: %v", w, err)
			}
			w, wait = "--wait=1s", true
		}
		args = append(args, w)
	}
	if !natsURL {
		t.Errorf("the command gives no --nats.url: %q", words)
	}
	code, out, errOut := cliWithin(t, 30*time.Second, args...)
	if wait {
		if code != 6 || !strings.Contains(errOut, "no verdict") {
			t.Fatalf("exit %d, want 6 (no verdict within the shortened wait); stderr:\n%s", code, errOut)
		}
	} else if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	id := strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := n.JS.Stream(ctx, "DEPLOYS")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.GetLastMsgForSubject(ctx, "deploys.>")
	if err != nil {
		t.Fatalf("nothing stored on DEPLOYS: %v", err)
	}
	d, err := events.DecodeDeploy(msg.Subject, msg.Header, msg.Data)
	if err != nil {
		t.Fatalf("the stored event does not decode: %v", err)
	}
	if d.ID != id {
		t.Errorf("stored id %q, publish printed %q", d.ID, id)
	}
	return d
}

func checkDeploy(t *testing.T, d events.Deploy, id, environment string, labels map[string]string) {
	t.Helper()
	if d.ID != id || d.Service != "shop-api" || d.Environment != environment ||
		d.Version != ciEnv["VERSION"] || d.PreviousVersion != ciEnv["PREVIOUS_VERSION"] {
		t.Errorf("deploy = %+v, want id %s, shop-api in %s, version %s after %s",
			d, id, environment, ciEnv["VERSION"], ciEnv["PREVIOUS_VERSION"])
	}
	for k, v := range labels {
		if d.Labels[k] != v {
			t.Errorf("label %s = %q, want %q (labels %v)", k, d.Labels[k], v, d.Labels)
		}
	}
}

type ghWorkflow struct {
	Jobs map[string]struct {
		Env   map[string]string `yaml:"env"`
		Steps []struct {
			Name string            `yaml:"name"`
			Env  map[string]string `yaml:"env"`
			Run  string            `yaml:"run"`
		} `yaml:"steps"`
	} `yaml:"jobs"`
}

// script is the run: of the job's step named name, with the job's env
// merged into base.
func (w ghWorkflow) script(t *testing.T, job, step string, base map[string]string) (string, map[string]string) {
	t.Helper()
	j, ok := w.Jobs[job]
	if !ok {
		t.Fatalf("no job %s", job)
	}
	env := map[string]string{}
	for k, v := range base {
		env[k] = v
	}
	for k := range j.Env {
		if _, ok := env[k]; !ok {
			env[k] = j.Env[k]
		}
	}
	for _, s := range j.Steps {
		if s.Name == step {
			return s.Run, env
		}
	}
	t.Fatalf("no step %q in job %s", step, job)
	return "", nil
}

func TestExampleGitHubActions(t *testing.T) {
	var w ghWorkflow
	readYAML(t, "github-actions/deploy.yml", &w)

	t.Run("publish --wait", func(t *testing.T) {
		script, env := w.script(t, "deploy", "Validate with Rollback Watcher", ciEnv)
		env["ENVIRONMENT"] = w.Jobs["deploy"].Env["ENVIRONMENT"]
		env["WATCHER_NATS_URL"] = "nats://replaced-by-the-test:4222"
		d := publishExample(t, shellWords(t, script, "watcher publish", env))
		checkDeploy(t, d, "github-12345678901-2", "production",
			map[string]string{"repository": "shop/shop-api", "run": "12345678901"})
	})
	t.Run("curl", func(t *testing.T) {
		script, env := w.script(t, "deploy-http", "Tell Rollback Watcher", ciEnv)
		env["ENVIRONMENT"] = w.Jobs["deploy-http"].Env["ENVIRONMENT"]
		checkDeploy(t, decodeHTTP(t, heredoc(t, script, env)), "github-12345678901-2", "staging",
			map[string]string{"repository": "shop/shop-api", "run": "12345678901"})
		checkCurl(t, shellWords(t, script, "curl", env))
	})
}

// checkCurl: the curl posts the body to /api/v1/events with the bearer
// token and fails the job on an error answer.
func checkCurl(t *testing.T, words []string) {
	t.Helper()
	cmd := strings.Join(words, " ")
	for _, want := range []string{
		"https://watcher.example.com/api/v1/events", "--fail-with-body", "--data-binary @deploy-event.json",
		"-H Authorization: Bearer not-used-by-the-decoder", "-H Content-Type: application/json",
	} {
		if !strings.Contains(cmd, want) {
			t.Errorf("curl command lacks %q: %s", want, cmd)
		}
	}
}

func TestExampleGitLabCI(t *testing.T) {
	type job struct {
		Variables map[string]string `yaml:"variables"`
		Script    []string          `yaml:"script"`
	}
	var ci map[string]yaml.Node
	readYAML(t, "gitlab-ci/.gitlab-ci.yml", &ci)
	load := func(name string) (string, map[string]string) {
		t.Helper()
		var j job
		node, ok := ci[name]
		if !ok {
			t.Fatalf("no job %s", name)
		}
		if err := node.Decode(&j); err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		for k, v := range ciEnv {
			env[k] = v
		}
		env["ENVIRONMENT"] = j.Variables["ENVIRONMENT"]
		return strings.Join(j.Script, "\n"), env
	}

	t.Run("publish --wait", func(t *testing.T) {
		script, env := load("deploy-production")
		env["WATCHER_NATS_URL"] = "nats://replaced-by-the-test:4222"
		d := publishExample(t, shellWords(t, script, "watcher publish", env))
		checkDeploy(t, d, "gitlab-4711-98765", "production",
			map[string]string{"project": "shop/shop-api", "job_url": ciEnv["CI_JOB_URL"]})
	})
	t.Run("curl", func(t *testing.T) {
		script, env := load("deploy-staging")
		checkDeploy(t, decodeHTTP(t, heredoc(t, script, env)), "gitlab-4711-98765", "staging",
			map[string]string{"project": "shop/shop-api", "job_url": ciEnv["CI_JOB_URL"]})
		checkCurl(t, shellWords(t, script, "curl", env))
	})
}

// argoApp is the Application as Argo CD's notifications pass it to
// templates: the object as unstructured JSON, integers as int64.
func argoApp(t *testing.T) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(examplesDir, "argocd/testdata/application.json"))
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var app map[string]any
	if err := dec.Decode(&app); err != nil {
		t.Fatal(err)
	}
	return unstructured(app).(map[string]any)
}

func unstructured(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = unstructured(e)
		}
	case []any:
		for i, e := range v {
			v[i] = unstructured(e)
		}
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		f, _ := v.Float64()
		return f
	}
	return v
}

func TestExampleArgoCD(t *testing.T) {
	var cm struct {
		Kind     string                `yaml:"kind"`
		Metadata struct{ Name string } `yaml:"metadata"`
		Data     map[string]string     `yaml:"data"`
	}
	readYAML(t, "argocd/argocd-notifications-cm.yaml", &cm)
	if cm.Kind != "ConfigMap" || cm.Metadata.Name != "argocd-notifications-cm" {
		t.Errorf("kind %s name %s, want the ConfigMap argocd-notifications-cm", cm.Kind, cm.Metadata.Name)
	}
	var svc struct {
		URL     string `yaml:"url"`
		Headers []struct{ Name, Value string }
	}
	if err := yaml.Unmarshal([]byte(cm.Data["service.webhook.watcher"]), &svc); err != nil {
		t.Fatalf("service.webhook.watcher: %v", err)
	}
	headers := map[string]string{}
	for _, h := range svc.Headers {
		headers[h.Name] = h.Value
	}
	if headers["Authorization"] != "Bearer $watcher-token" || headers["Content-Type"] != "application/json" {
		t.Errorf("service.webhook.watcher headers = %v, want the bearer token from the secret and JSON", headers)
	}
	var trig []struct{ Send []string }
	if err := yaml.Unmarshal([]byte(cm.Data["trigger.on-deployed-watcher"]), &trig); err != nil || len(trig) != 1 ||
		len(trig[0].Send) != 1 || trig[0].Send[0] != "watcher-deploy-event" {
		t.Fatalf("trigger.on-deployed-watcher does not send template watcher-deploy-event: %v %+v", err, trig)
	}
	var tmpl struct {
		Webhook map[string]struct{ Method, Path, Body string }
	}
	if err := yaml.Unmarshal([]byte(cm.Data["template.watcher-deploy-event"]), &tmpl); err != nil {
		t.Fatalf("template.watcher-deploy-event: %v", err)
	}
	hook := tmpl.Webhook["watcher"]
	if hook.Method != "POST" || hook.Path != "/api/v1/events" {
		t.Errorf("webhook %s %s, want POST /api/v1/events", hook.Method, hook.Path)
	}
	// Argo CD parses the body with text/template (with sprig's functions;
	// the template uses only text/template's own) and executes it with
	// the Application as .app.
	body := template.Must(template.New("watcher-deploy-event").Parse(hook.Body))
	render := func(app map[string]any) []byte {
		t.Helper()
		var b bytes.Buffer
		if err := body.Execute(&b, map[string]any{"app": app, "context": map[string]any{}}); err != nil {
			t.Fatalf("rendering: %v", err)
		}
		return b.Bytes()
	}

	t.Run("annotated", func(t *testing.T) {
		b := render(argoApp(t))
		t.Logf("rendered:\n%s", b)
		d := decodeHTTP(t, b)
		if d.ID != "argocd-shop-api-production-7" || d.Service != "shop-api" || d.Environment != "production" ||
			d.Version != ciEnv["VERSION"] || d.PreviousVersion != ciEnv["PREVIOUS_VERSION"] ||
			!d.Time.Equal(time.Date(2026, 12, 4, 13, 12, 0, 0, time.UTC)) ||
			d.Labels["argocd_app"] != "shop-api" || d.Labels["namespace"] != "shop-prod" {
			t.Errorf("deploy = %+v", d)
		}
	})
	t.Run("first sync, no annotations", func(t *testing.T) {
		app := argoApp(t)
		meta := app["metadata"].(map[string]any)
		delete(meta, "annotations")
		st := app["status"].(map[string]any)
		st["history"] = st["history"].([]any)[1:]
		d := decodeHTTP(t, render(app))
		// The environment is the destination namespace; nothing deployed
		// before, so no previous version.
		if d.ID != "argocd-shop-api-shop-prod-7" || d.Environment != "shop-prod" || d.PreviousVersion != "" ||
			d.Version != ciEnv["VERSION"] {
			t.Errorf("deploy = %+v", d)
		}
	})
	t.Run("service annotation", func(t *testing.T) {
		app := argoApp(t)
		app["metadata"].(map[string]any)["annotations"] = map[string]any{"rollback-watcher.io/service": "shop"}
		if d := decodeHTTP(t, render(app)); d.Service != "shop" || d.Environment != "shop-prod" {
			t.Errorf("deploy = %+v", d)
		}
	})
}

// k8sExpand is Kubernetes' $(VAR) in a container's args.
func k8sExpand(s string, env map[string]string) string {
	return regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`).ReplaceAllStringFunc(s, func(m string) string {
		if v, ok := env[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

func TestExampleFlux(t *testing.T) {
	t.Run("job", func(t *testing.T) {
		var job struct {
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Args []string
							Env  []struct{ Name, Value string }
						}
					}
				}
			}
		}
		readYAML(t, "flux/deploy-event-job.yaml", &job)
		c := job.Spec.Template.Spec.Containers
		if len(c) != 1 {
			t.Fatalf("%d containers, want 1", len(c))
		}
		env := map[string]string{}
		for _, e := range c[0].Env {
			env[e.Name] = e.Value
		}
		conf := filepath.Join(t.TempDir(), "config.yml")
		if err := os.WriteFile(conf, []byte("{}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		words := []string{"watcher"}
		for _, a := range c[0].Args {
			a = k8sExpand(a, env)
			if strings.HasPrefix(a, "--config.file=") {
				a = "--config.file=" + conf
			}
			words = append(words, a)
		}
		d := publishExample(t, words)
		if d.ID != "flux-shop-api-production-2026.12.04-1" || d.Service != "shop-api" || d.Environment != "production" ||
			d.Version != "2026.12.04-1" || d.Labels["deployed_by"] != "flux" {
			t.Errorf("deploy = %+v", d)
		}
	})
	// Flux's generic provider posts Flux's own event, which is no deploy
	// event: the watcher refuses it (400), which is why the example
	// publishes from a Job instead (examples/flux/README.md).
	t.Run("generic provider payload", func(t *testing.T) {
		data, err := os.ReadFile(filepath.Join(examplesDir, "flux/testdata/flux-event.json"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = events.DecodeDeployPayload(map[string][]string{"Content-Type": {"application/json"}}, data)
		var re *events.RejectError
		if !errors.As(err, &re) {
			t.Fatalf("err = %v, want a rejection", err)
		}
		t.Logf("refused: %v", err)
	})
}

// argoBody is the Argo CD template's body rendered for the test's
// Application.
func argoBody(t *testing.T) []byte {
	t.Helper()
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	readYAML(t, "argocd/argocd-notifications-cm.yaml", &cm)
	var tmpl struct {
		Webhook map[string]struct{ Body string }
	}
	if err := yaml.Unmarshal([]byte(cm.Data["template.watcher-deploy-event"]), &tmpl); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	body := template.Must(template.New("watcher-deploy-event").Parse(tmpl.Webhook["watcher"].Body))
	if err := body.Execute(&b, map[string]any{"app": argoApp(t)}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestExampleREADMESnippets: every snippet of README "Examples per tool"
// is what an example runs (or, for Argo CD, what its template renders),
// so that the README shows what the tests check.
func TestExampleREADMESnippets(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n#### Examples per tool\n")
	if !ok {
		t.Fatal("README has no \"Examples per tool\"")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	flat := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	var sources []string
	for _, f := range []string{"github-actions/deploy.yml", "gitlab-ci/.gitlab-ci.yml"} {
		b, err := os.ReadFile(filepath.Join(examplesDir, f))
		if err != nil {
			t.Fatal(err)
		}
		sources = append(sources, flat(string(b)))
	}
	sources = append(sources, flat(string(argoBody(t))))
	blocks := regexp.MustCompile("(?s)```[a-z]*\n(.*?)\n *```").FindAllStringSubmatch(section, -1)
	if len(blocks) != 3 {
		t.Fatalf("%d snippets in README \"Examples per tool\", want 3", len(blocks))
	}
	for _, b := range blocks {
		found := false
		for _, s := range sources {
			found = found || strings.Contains(s, flat(b[1]))
		}
		if !found {
			t.Errorf("README snippet is in no example (nor the rendered Argo CD body):\n%s", b[1])
		}
	}
}

// TestExampleGateExitCodes runs the gating scripts of the workflow and
// the pipeline with bash as the runners do (bash -eo pipefail), a
// `watcher` on PATH that exits with each code of README "Gating a
// pipeline": the job must fail on 1 (the deploy was rolled back) and on
// every code that is no verdict, and pass on 0 and 5.
func TestExampleGateExitCodes(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash: %v", err)
	}
	var w ghWorkflow
	readYAML(t, "github-actions/deploy.yml", &w)
	gh, _ := w.script(t, "deploy", "Validate with Rollback Watcher", ciEnv)
	var ci map[string]yaml.Node
	readYAML(t, "gitlab-ci/.gitlab-ci.yml", &ci)
	var job struct {
		Script []string `yaml:"script"`
	}
	node := ci["deploy-production"]
	if err := node.Decode(&job); err != nil {
		t.Fatal(err)
	}
	var gl string
	for _, s := range job.Script {
		if strings.Contains(s, "watcher publish") {
			gl = s
		}
	}
	if gl == "" {
		t.Fatal("no watcher publish in deploy-production's script")
	}
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "watcher"), []byte("#!/bin/sh\nexit \"$WATCHER_EXIT\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, script := range map[string]string{"github-actions": gh, "gitlab-ci": gl} {
		for code, want := range map[int]int{0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 0, 6: 6} {
			cmd := exec.Command(bash, "--noprofile", "--norc", "-eo", "pipefail", "-c", script)
			cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin", "WATCHER_EXIT=" + strconv.Itoa(code)}
			out, err := cmd.CombinedOutput()
			got := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				got = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("%s: watcher publish exit %d: the job exits %d, want %d; output:\n%s", name, code, got, want, out)
			}
		}
	}
}
