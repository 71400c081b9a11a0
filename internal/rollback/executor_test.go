package rollback

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// recorder is an Auditor that keeps what it is given (through JSON, as the
// AUDIT stream would hold it).
type recorder struct{ audit.Memory }

func (r *recorder) all() []audit.Record { return r.All() }

func (r *recorder) kinds() []string { return kinds(r.all()) }

func kinds(recs []audit.Record) []string {
	out := make([]string, len(recs))
	for i, rec := range recs {
		out[i] = rec.Kind
	}
	return out
}

// one returns the only record of kind.
func one(t *testing.T, recs []audit.Record, kind string) audit.Record {
	t.Helper()
	var found []audit.Record
	for _, r := range recs {
		if r.Kind == kind {
			found = append(found, r)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d %s records, want 1; kinds: %v", len(found), kind, kinds(recs))
	}
	return found[0]
}

// dig walks a decoded JSON value by map keys and slice indexes.
func dig(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("%v: not an object at %q: %#v", path, k, v)
			}
			v = m[k]
		case int:
			s, ok := v.([]any)
			if !ok || k >= len(s) {
				t.Fatalf("%v: no element %d in %#v", path, k, v)
			}
			v = s[k]
		}
	}
	return v
}

// deployed is a host on which v0, v1 and v2 were deployed in that order:
// current -> releases/v2 (relative, as deploy tools write it) and
// v2/previousVersion naming v1.
func deployed(t *testing.T) host {
	t.Helper()
	h := newHost(t)
	h.release(t, "v0", -2*time.Hour)
	h.release(t, "v1", -time.Hour)
	h.release(t, "v2", 0, PreviousVersionFile, "v1\n")
	symlink(t, "releases/v2", h.link)
	return h
}

// yamlList writes words as a YAML flow sequence of double-quoted strings.
func yamlList(words ...string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = fmt.Sprintf("%q", w)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// policyYAML is one policy for service in production, rolling back the link
// and releases directory of h; each of extra is one more line under
// rollback: (mode, after, data, hosts).
func policyYAML(name, service string, h host, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `  - name: %s
    match: {service: %s, environment: production}
    checks:
      - {name: up, query: up, min: 1}
    rollback:
      link: %q
      releases_dir: %q
`, name, service, h.link, h.releases)
	for _, l := range extra {
		b.WriteString("      " + l + "\n")
	}
	return b.String()
}

// loadRules writes the policies to a rules file and loads it as the watcher
// does, so that templates are parsed and defaults filled in by policy.Load.
func loadRules(t *testing.T, policies ...string) func() *policy.Set {
	t.Helper()
	file := filepath.Join(t.TempDir(), "rules.yml")
	writeFile(t, file, "policies:\n"+strings.Join(policies, ""))
	set, err := policy.Load(file)
	if err != nil {
		t.Fatalf("loading rules:\n%v\n%s", err, readFile(t, file))
	}
	return func() *policy.Set { return set }
}

// newExecutor returns an executor on n with its metrics in a fresh registry
// and its audit in a recorder.
func newExecutor(t *testing.T, n *testutil.NATS, rules func() *policy.Set) (*Executor, *recorder, *prometheus.Registry) {
	t.Helper()
	rec := &recorder{}
	e := &Executor{JS: n.JS, Policies: rules, Audit: rec, AnnounceSource: "rollback-watcher/test"}
	reg := prometheus.NewRegistry()
	e.Register(reg)
	return e, rec, reg
}

// rollbacks gathers watcher_rollbacks_total{result="<result>"} from reg.
// (prometheus/testutil would need a require line in go.mod that the module
// does not have: github.com/kylelemons/godebug.)
func rollbacks(t *testing.T, reg prometheus.Gatherer, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "watcher_rollbacks_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no watcher_rollbacks_total{result=%q} in the registry", result)
	return 0
}

// request is a rollback of shop v2 in production after a failed validation.
func request(id string) events.RollbackRequest {
	return events.RollbackRequest{
		ID: id, Service: "shop", Environment: "production", Version: "v2",
		Reason: "error ratio 0.07 > max 0.05", Source: events.SourceValidation,
		RunID: "run-" + id, DeployID: "d-42", Time: t0,
	}
}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func readMarker(t *testing.T, release string) Marker {
	t.Helper()
	var m Marker
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(release, MarkerFile))), &m); err != nil {
		t.Fatalf("%s/%s: %v", release, MarkerFile, err)
	}
	return m
}

func TestExecute(t *testing.T) {
	n := testutil.StartNATS(t)
	tests := []struct {
		name   string
		layout func(t *testing.T, h host)
		req    func(r *events.RollbackRequest)
		to     string // release rolled back to
		source string // HostResult.Source
		link   string // link content afterwards; "" for the absolute path of to
	}{
		{
			name: "previousVersion file", to: "v1", source: SourcePreviousVersion, link: "releases/v1",
		},
		{
			name: "to_version of a validation is the deploy's previous_version",
			req:  func(r *events.RollbackRequest) { r.ToVersion = "v0" },
			to:   "v0", source: SourceEvent, link: "releases/v0",
		},
		{
			name: "to_version of a manual request",
			req:  func(r *events.RollbackRequest) { r.ToVersion = "v0"; r.Source = events.SourceManual },
			to:   "v0", source: SourceRequested, link: "releases/v0",
		},
		{
			name: "newest release when nothing names one",
			layout: func(t *testing.T, h host) {
				if err := os.Remove(filepath.Join(h.rel("v2"), PreviousVersionFile)); err != nil {
					t.Fatal(err)
				}
			},
			to: "v1", source: SourceNewest, link: "releases/v1",
		},
		{
			name: "absolute link stays absolute",
			layout: func(t *testing.T, h host) {
				if err := os.Remove(h.link); err != nil {
					t.Fatal(err)
				}
				symlink(t, h.rel("v2"), h.link)
			},
			to: "v1", source: SourcePreviousVersion,
		},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxFor(t)
			h := deployed(t)
			if tc.layout != nil {
				tc.layout(t, h)
			}
			// /usr/bin/env prints the environment the after command gets,
			// and its argument shows the template data it was rendered with.
			rules := loadRules(t, policyYAML("shop", "shop", h,
				"after: "+yamlList("env", "RENDERED={{ .Service }}/{{ .Environment }}@{{ .Host }}: {{ .Version }} -> {{ .PreviousVersion }}")))
			e, rec, reg := newExecutor(t, n, rules)
			req := request(fmt.Sprintf("rb-%d", i))
			if tc.req != nil {
				tc.req(&req)
			}

			res := e.Execute(ctx, req)

			if res.Status != ResultCompleted || res.Err != nil {
				t.Fatalf("result %s, %v; audit: %+v", res.Status, res.Err, rec.all())
			}
			to := h.rel(tc.to)
			want := tc.link
			if want == "" {
				want = to
			}
			if got := readlink(t, h.link); got != want {
				t.Errorf("link -> %s, want %s", got, want)
			}

			m := readMarker(t, h.rel("v2"))
			if m.RequestID != req.ID || m.RunID != req.RunID || m.Reason != req.Reason ||
				m.From != h.rel("v2") || m.To != to || m.Time.IsZero() {
				t.Errorf("marker %+v", m)
			}
			for _, r := range []string{"v0", "v1"} {
				if exists(t, filepath.Join(h.rel(r), MarkerFile)) {
					t.Errorf("%s marked rolled back", r)
				}
			}

			if len(res.Hosts) != 1 {
				t.Fatalf("hosts %+v", res.Hosts)
			}
			hr := res.Hosts[0]
			if hr.Host != "local" || hr.Link != h.link || hr.From != h.rel("v2") || hr.To != to ||
				hr.Source != tc.source || !hr.Switched || hr.Error != "" {
				t.Errorf("host result %+v", hr)
			}
			for _, kv := range []string{
				"WATCHER_SERVICE=shop", "WATCHER_ENVIRONMENT=production",
				"WATCHER_VERSION=v2", "WATCHER_PREVIOUS_VERSION=" + tc.to,
				"WATCHER_FROM=" + h.rel("v2"), "WATCHER_TO=" + to, "WATCHER_HOST=local",
				"WATCHER_REQUEST_ID=" + req.ID, "WATCHER_RUN_ID=" + req.RunID,
				"WATCHER_REASON=" + req.Reason,
				"RENDERED=shop/production@local: v2 -> " + tc.to,
			} {
				if !slices.Contains(strings.Split(hr.AfterOutput, "\n"), kv) {
					t.Errorf("after command did not see %s; its output:\n%s", kv, hr.AfterOutput)
				}
			}

			recs := rec.all()
			if got, want := kinds(recs), []string{audit.RollbackRequested, audit.RollbackHost, audit.RollbackCompleted}; !slices.Equal(got, want) {
				t.Fatalf("audit kinds %v, want %v", got, want)
			}
			for _, r := range recs {
				if r.RequestID != req.ID || r.RunID != req.RunID || r.DeployID != req.DeployID ||
					r.Service != "shop" || r.Environment != "production" || r.Version != "v2" || r.Policy != "shop" {
					t.Errorf("%s record does not identify the request: %+v", r.Kind, r)
				}
			}
			if got := dig(t, recs[0].Detail, "executed"); got != true {
				t.Errorf("requested: executed = %v", got)
			}
			hostRec := recs[1]
			for k, want := range map[string]any{
				"host": "local", "link": h.link, "from": h.rel("v2"), "to": to,
				"source": tc.source, "switched": true, "error": "",
			} {
				if got := dig(t, hostRec.Detail, k); got != want {
					t.Errorf("rollback.host detail %s = %#v, want %#v", k, got, want)
				}
			}
			if !strings.Contains(hostRec.Message, "v2 -> "+tc.to) {
				t.Errorf("rollback.host message %q", hostRec.Message)
			}
			done := recs[2]
			if dig(t, done.Detail, "from") != "v2" || dig(t, done.Detail, "to") != tc.to ||
				dig(t, done.Detail, "hosts", 0, "switched") != true {
				t.Errorf("rollback.completed detail %v", done.Detail)
			}
			if want := "shop in production rolled back from v2 to " + tc.to + " on 1 host(s)"; done.Message != want {
				t.Errorf("rollback.completed message %q, want %q", done.Message, want)
			}

			// The service.rolledback CloudEvent, on the deploy subject.
			subject := "deploys.production.shop"
			stream, err := n.JS.Stream(ctx, bus.DeploysStream)
			if err != nil {
				t.Fatal(err)
			}
			msg, err := stream.GetLastMsgForSubject(ctx, subject)
			if err != nil {
				t.Fatalf("no service.rolledback on %s: %v", subject, err)
			}
			if ct := msg.Header.Get("Content-Type"); ct != events.ContentTypeCloudEvents {
				t.Errorf("Content-Type %q", ct)
			}
			var notDeploy *events.NotDeployError
			if _, err := events.DecodeDeploy(subject, msg.Header, msg.Data); !errors.As(err, &notDeploy) || notDeploy.Type != events.TypeServiceRolledBack {
				t.Errorf("the watcher would read its own event as %v, want a %s that starts no run", err, events.TypeServiceRolledBack)
			}
			var ce map[string]any
			if err := json.Unmarshal(msg.Data, &ce); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				path []any
				want any
			}{
				{[]any{"id"}, "rolledback-" + req.ID},
				{[]any{"source"}, "rollback-watcher/test"},
				{[]any{"type"}, events.TypeServiceRolledBack},
				{[]any{"subject"}, "shop"},
				{[]any{"data", "subject", "content", "environment", "id"}, "production"},
				{[]any{"data", "subject", "content", "artifactId"}, "pkg:generic/shop@" + tc.to},
				{[]any{"data", "customData", "fromVersion"}, "v2"},
				{[]any{"data", "customData", "requestId"}, req.ID},
				{[]any{"data", "customData", "reason"}, req.Reason},
			} {
				if got := dig(t, ce, c.path...); got != c.want {
					t.Errorf("service.rolledback %v = %#v, want %#v", c.path, got, c.want)
				}
			}

			for result, want := range map[string]float64{ResultCompleted: 1, ResultFailed: 0, ResultSkipped: 0} {
				if got := rollbacks(t, reg, result); got != want {
					t.Errorf("watcher_rollbacks_total{result=%q} = %v, want %v", result, got, want)
				}
			}
		})
	}
}

// staticDial is a Dialer that reaches "remote" hosts on the local
// filesystem, under their own names, or fails for the hosts in fail.
func staticDial(fail map[string]error) Dialer {
	return func(_ context.Context, host string, _ policy.SSH) (Target, error) {
		if err := fail[host]; err != nil {
			return nil, err
		}
		return named{name: host}, nil
	}
}

type named struct {
	Local
	name string
}

func (n named) Name() string { return n.name }

// TestExecuteFailsTouchingNothing covers requests that must fail before
// anything changes: the link, the releases and their files stay as they
// were, and no after command runs.
func TestExecuteFailsTouchingNothing(t *testing.T) {
	n := testutil.StartNATS(t)
	tests := []struct {
		name   string
		layout func(t *testing.T, h host)
		rules  func(h host, after string) []string // policies; nil for the shop policy
		req    func(r *events.RollbackRequest)
		dial   Dialer
		want   []string // in the rollback.failed message
	}{
		{
			name: "previousVersion names a missing release",
			layout: func(t *testing.T, h host) {
				writeFile(t, filepath.Join(h.rel("v2"), PreviousVersionFile), "v-gone\n")
			},
			want: []string{"nothing touched", "previous release " + "%REL%/v-gone", "does not exist", PreviousVersionFile},
		},
		{
			name: "previousVersion names a missing absolute path",
			layout: func(t *testing.T, h host) {
				writeFile(t, filepath.Join(h.rel("v2"), PreviousVersionFile), "/nonexistent/releases/v1\n")
			},
			want: []string{"nothing touched", "previous release /nonexistent/releases/v1", "does not exist"},
		},
		{
			name: "to_version names a missing release",
			req:  func(r *events.RollbackRequest) { r.ToVersion = "v9" },
			want: []string{"nothing touched", "previous release %REL%/v9", "requested version v9", "does not exist"},
		},
		{
			name: "no other release",
			layout: func(t *testing.T, h host) {
				for _, r := range []string{"v0", "v1"} {
					if err := os.Remove(h.rel(r)); err != nil {
						t.Fatal(err)
					}
				}
				if err := os.Remove(filepath.Join(h.rel("v2"), PreviousVersionFile)); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"nothing touched", "no release in %REL%"},
		},
		{
			name: "every other release is marked rolled back",
			layout: func(t *testing.T, h host) {
				for _, r := range []string{"v0", "v1"} {
					writeFile(t, filepath.Join(h.rel(r), MarkerFile), "{}")
				}
				if err := os.Remove(filepath.Join(h.rel("v2"), PreviousVersionFile)); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"nothing touched", "no release in %REL%", "not marked " + MarkerFile},
		},
		{
			// A newer deploy (v3) is current and v2 never rolled back: the
			// request is stale and not the executor's to apply.
			name: "request rolls back a release that is not current",
			layout: func(t *testing.T, h host) {
				h.release(t, "v3", time.Hour, PreviousVersionFile, "v2\n")
				if err := os.Remove(h.link); err != nil {
					t.Fatal(err)
				}
				symlink(t, "releases/v3", h.link)
			},
			want: []string{"nothing touched", "is on v3, not on v2", "refusing"},
		},
		{
			name: "request rolls back a release that does not exist",
			req:  func(r *events.RollbackRequest) { r.Version = "v7" },
			want: []string{"nothing touched", "is on v2, not on v7", "refusing"},
		},
		{
			name: "link is a directory",
			layout: func(t *testing.T, h host) {
				if err := os.Remove(h.link); err != nil {
					t.Fatal(err)
				}
				mkdir(t, filepath.Join(h.link, "v2"))
			},
			want: []string{"nothing touched", "reading link " + "%LINK%"},
		},
		{
			name: "no policy matches",
			req:  func(r *events.RollbackRequest) { r.Service = "billing" },
			want: []string{"no policy matches service billing in environment production"},
		},
		{
			// Who may publish on rollbacks.production.billing must not be
			// able to roll back shop by naming shop's policy.
			name: "request names the policy of another service",
			req:  func(r *events.RollbackRequest) { r.Service = "billing"; r.Policy = "shop" },
			want: []string{"no policy matches service billing in environment production"},
		},
		{
			name: "request hosts without SSH",
			req:  func(r *events.RollbackRequest) { r.Hosts = []string{"web1.example.com:22", "web2.example.com"} },
			want: []string{"hosts [web1.example.com:22 web2.example.com] need SSH", "leave hosts empty"},
		},
		{
			name: "policy hosts without SSH",
			rules: func(h host, after string) []string {
				return []string{policyYAML("shop", "shop", h, after, `hosts: ["web1.example.com"]`)}
			},
			want: []string{"hosts [web1.example.com] need SSH"},
		},
		{
			name: "a host cannot be reached",
			req:  func(r *events.RollbackRequest) { r.Hosts = []string{"web1.example.com:22", "web2.example.com:22"} },
			dial: staticDial(map[string]error{"web2.example.com:22": errors.New("dial tcp: connection refused")}),
			want: []string{"host web2.example.com:22: dial tcp: connection refused"},
		},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxFor(t)
			h := deployed(t)
			if tc.layout != nil {
				tc.layout(t, h)
			}
			afterRan := filepath.Join(t.TempDir(), "after-ran")
			after := "after: " + yamlList("touch", afterRan)
			policies := []string{policyYAML("shop", "shop", h, after)}
			if tc.rules != nil {
				policies = tc.rules(h, after)
			}
			e, rec, reg := newExecutor(t, n, loadRules(t, policies...))
			e.Dial = tc.dial
			req := request(fmt.Sprintf("rb-fail-%d", i))
			if tc.req != nil {
				tc.req(&req)
			}
			if len(req.Hosts) > 0 {
				announce(t, n, req, req.Hosts...)
			}
			before := snapshot(t, h.root)

			res := e.Execute(ctx, req)

			if res.Status != ResultFailed || res.Err == nil {
				t.Fatalf("result %s, %v, want failed", res.Status, res.Err)
			}
			assertUnchanged(t, before, h.root)
			if exists(t, afterRan) {
				t.Error("after command ran")
			}
			recs := rec.all()
			if got, want := kinds(recs), []string{audit.RollbackRequested, audit.RollbackFailed}; !slices.Equal(got, want) {
				t.Fatalf("audit kinds %v, want %v; records: %+v", got, want, recs)
			}
			failed := recs[1]
			prefix := "rollback of " + req.Service + " in production failed: "
			if !strings.HasPrefix(failed.Message, prefix) {
				t.Errorf("message %q does not start with %q", failed.Message, prefix)
			}
			for _, w := range tc.want {
				w = strings.NewReplacer("%REL%", h.releases, "%LINK%", h.link).Replace(w)
				if !strings.Contains(failed.Message, w) {
					t.Errorf("message %q does not say %q", failed.Message, w)
				}
			}
			if got := dig(t, failed.Detail, "error"); got != res.Err.Error() {
				t.Errorf("detail error %q, want %q", got, res.Err)
			}
			if failed.RequestID != req.ID || failed.Service != req.Service || failed.Environment != "production" {
				t.Errorf("rollback.failed does not identify the request: %+v", failed)
			}
			if got := rollbacks(t, reg, ResultFailed); got != 1 {
				t.Errorf("watcher_rollbacks_total{result=failed} = %v", got)
			}
			if got := rollbacks(t, reg, ResultCompleted); got != 0 {
				t.Errorf("watcher_rollbacks_total{result=completed} = %v", got)
			}
		})
	}
}

// TestExecuteIdempotent executes requests twice, as a redelivery or a
// second requester would: the link switches once, the after command runs
// once, and the second execution records that the host was already there.
func TestExecuteIdempotent(t *testing.T) {
	n := testutil.StartNATS(t)
	tests := []struct {
		name string
		req  func(r *events.RollbackRequest)
		to   string
	}{
		{name: "validation: version and previous_version", req: func(r *events.RollbackRequest) { r.ToVersion = "v1" }, to: "v1"},
		{name: "version only", to: "v1"},
		{name: "to_version only", req: func(r *events.RollbackRequest) {
			r.Version, r.ToVersion, r.Source = "", "v0", events.SourceManual
		}, to: "v0"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxFor(t)
			h := deployed(t)
			afterLog := filepath.Join(t.TempDir(), "after.log")
			rules := loadRules(t, policyYAML("shop", "shop", h,
				"after: "+yamlList("sh", "-c", `echo "$WATCHER_REQUEST_ID" >> "$1"`, "sh", afterLog)))
			e, rec, reg := newExecutor(t, n, rules)
			req := request(fmt.Sprintf("rb-twice-%d", i))
			if tc.req != nil {
				tc.req(&req)
			}

			first := e.Execute(ctx, req)
			if first.Status != ResultCompleted || !first.Hosts[0].Switched {
				t.Fatalf("first execution: %s, %v, %+v", first.Status, first.Err, first.Hosts)
			}
			marker := readFile(t, filepath.Join(h.rel("v2"), MarkerFile))
			before := snapshot(t, h.root)
			n1 := len(rec.all())

			second := e.Execute(ctx, req)

			if second.Status != ResultCompleted || second.Err != nil {
				t.Fatalf("second execution: %s, %v", second.Status, second.Err)
			}
			if second.Hosts[0].Switched {
				t.Errorf("second execution reports a switch: %+v", second.Hosts[0])
			}
			assertUnchanged(t, before, h.root)
			if got := readlink(t, h.link); got != "releases/"+tc.to {
				t.Errorf("link -> %s, want releases/%s", got, tc.to)
			}
			if got := readFile(t, filepath.Join(h.rel("v2"), MarkerFile)); got != marker {
				t.Errorf("marker rewritten: %s", got)
			}
			if got := readFile(t, afterLog); got != req.ID+"\n" {
				t.Errorf("after command ran %d times: %q", strings.Count(got, "\n"), got)
			}
			recs := rec.all()[n1:]
			if got, want := kinds(recs), []string{audit.RollbackRequested, audit.RollbackHost, audit.RollbackCompleted}; !slices.Equal(got, want) {
				t.Fatalf("second execution audit kinds %v, want %v", got, want)
			}
			if msg := recs[1].Message; !strings.Contains(msg, "already") || !strings.Contains(msg, tc.to) {
				t.Errorf("rollback.host %q does not say the host was already on %s", msg, tc.to)
			}
			if got := dig(t, recs[1].Detail, "switched"); got != false {
				t.Errorf("rollback.host switched = %v", got)
			}
			if got := dig(t, recs[2].Detail, "to"); got != tc.to {
				t.Errorf("rollback.completed to = %v", got)
			}
			if got := rollbacks(t, reg, ResultCompleted); got != 2 {
				t.Errorf("watcher_rollbacks_total{result=completed} = %v", got)
			}
		})
	}
}

// TestExecuteNotExecuted: --dry-run and mode: publish record the request
// and change nothing.
func TestExecuteNotExecuted(t *testing.T) {
	n := testutil.StartNATS(t)
	tests := []struct {
		name   string
		mode   string
		dryRun bool
		say    string
	}{
		{"mode publish", policy.ModePublish, false, "policy shop has mode: publish"},
		{"dry run", policy.ModeExecute, true, "--dry-run"},
		{"dry run and mode publish", policy.ModePublish, true, "--dry-run"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxFor(t)
			h := deployed(t)
			afterRan := filepath.Join(t.TempDir(), "after-ran")
			dataRan := filepath.Join(t.TempDir(), "data-ran")
			rules := loadRules(t, policyYAML("shop", "shop", h,
				"mode: "+tc.mode,
				"after: "+yamlList("touch", afterRan),
				"data: {command: "+yamlList("touch", dataRan)+", order: before_code}"))
			e, rec, reg := newExecutor(t, n, rules)
			e.DryRun = tc.dryRun
			req := request(fmt.Sprintf("rb-skip-%d", i))
			before := snapshot(t, h.root)

			res := e.Execute(ctx, req)

			if res.Status != ResultSkipped || res.Err != nil || res.Hosts != nil {
				t.Errorf("result %+v, want skipped", res)
			}
			assertUnchanged(t, before, h.root)
			if exists(t, afterRan) || exists(t, dataRan) {
				t.Error("a command ran")
			}
			recs := rec.all()
			if got := kinds(recs); !slices.Equal(got, []string{audit.RollbackRequested}) {
				t.Fatalf("audit kinds %v", got)
			}
			r := recs[0]
			if !strings.Contains(r.Message, "not executed: "+tc.say) {
				t.Errorf("message %q does not say why it was not executed (%s)", r.Message, tc.say)
			}
			for k, want := range map[string]any{"executed": false, "dry_run": tc.dryRun, "mode": tc.mode, "source": "validation"} {
				if got := dig(t, r.Detail, k); got != want {
					t.Errorf("detail %s = %#v, want %#v", k, got, want)
				}
			}
			if r.Policy != "shop" || r.RequestID != req.ID {
				t.Errorf("record %+v", r)
			}
			if got := rollbacks(t, reg, ResultSkipped); got != 1 {
				t.Errorf("watcher_rollbacks_total{result=skipped} = %v", got)
			}
		})
	}
}

// TestExecuteAfterFails: the after command runs once the link is switched,
// so its failure leaves the host rolled back, and the record says so.
func TestExecuteAfterFails(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx := ctxFor(t)
	h := deployed(t)
	dataRan := filepath.Join(t.TempDir(), "data-ran")
	rules := loadRules(t, policyYAML("shop", "shop", h,
		"after: "+yamlList("sh", "-c", "echo php-fpm reload failed >&2; exit 3"),
		"data: {command: "+yamlList("touch", dataRan)+"}"))
	e, rec, reg := newExecutor(t, n, rules)
	req := request("rb-after")

	res := e.Execute(ctx, req)

	// The host counts as failed in the metrics, and the rollback's
	// duration is observed under its result.
	if got := testutil.ToFloat64(t, reg, "watcher_rollback_host_failures_total", "host", "local"); got != 1 {
		t.Errorf("watcher_rollback_host_failures_total{host=\"local\"} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(t, reg, "watcher_rollback_duration_seconds", "result", "failed"); got != 1 {
		t.Errorf("watcher_rollback_duration_seconds_count{result=\"failed\"} = %v, want 1", got)
	}

	if res.Status != ResultFailed || res.Err == nil {
		t.Fatalf("result %s, %v", res.Status, res.Err)
	}
	if got := readlink(t, h.link); got != "releases/v1" {
		t.Errorf("link -> %s, want releases/v1 (switched before the after command)", got)
	}
	if !exists(t, filepath.Join(h.rel("v2"), MarkerFile)) {
		t.Error("v2 not marked rolled back")
	}
	if exists(t, dataRan) {
		t.Error("data step ran although a host failed")
	}
	hr := res.Hosts[0]
	if !hr.Switched || !strings.Contains(hr.AfterOutput, "php-fpm reload failed") {
		t.Errorf("host result %+v", hr)
	}
	recs := rec.all()
	if got, want := kinds(recs), []string{audit.RollbackRequested, audit.RollbackHost, audit.RollbackFailed}; !slices.Equal(got, want) {
		t.Fatalf("audit kinds %v, want %v", got, want)
	}
	if got := dig(t, recs[1].Detail, "after_output"); !strings.Contains(got.(string), "php-fpm reload failed") {
		t.Errorf("rollback.host after_output %q", got)
	}
	msg := recs[2].Message
	for _, w := range []string{"1 of 1 hosts failed", "local: link switched, but the after command", "exit status 3"} {
		if !strings.Contains(msg, w) {
			t.Errorf("rollback.failed %q does not say %q", msg, w)
		}
	}
	if got := dig(t, recs[2].Detail, "hosts", 0, "switched"); got != true {
		t.Errorf("rollback.failed hosts[0].switched = %v", got)
	}
}

// TestExecuteDataStep runs the data step before or after the code switch.
// The command prints where the link stood when it ran, which proves the
// order, and the version its template rendered for {{ .PreviousVersion }}.
func TestExecuteDataStep(t *testing.T) {
	n := testutil.StartNATS(t)
	tests := []struct {
		name     string
		order    string
		exit     int
		status   string
		switched bool
		sawLink  string
		say      string
	}{
		{"before code", "before_code", 0, ResultCompleted, true, "releases/v2", ""},
		{"after code", "after_code", 0, ResultCompleted, true, "releases/v1", ""},
		{"before code fails", "before_code", 4, ResultFailed, false, "releases/v2", "data step failed before the code switch, no host switched"},
		{"after code fails", "after_code", 4, ResultFailed, true, "releases/v1", "code rolled back on every host, but the data step failed"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxFor(t)
			h := deployed(t)
			script := fmt.Sprintf(`echo "migrate down to $1 ($WATCHER_PREVIOUS_VERSION) with the link on $(readlink "$2")"; exit %d`, tc.exit)
			rules := loadRules(t, policyYAML("shop", "shop", h,
				"data: {command: "+yamlList("sh", "-c", script, "sh", "{{ .PreviousVersion }}", h.link)+
					", run_on: local, order: "+tc.order+", timeout: 30s}"))
			e, rec, _ := newExecutor(t, n, rules)
			req := request(fmt.Sprintf("rb-data-%d", i))
			before := snapshot(t, h.root)

			res := e.Execute(ctx, req)

			if res.Status != tc.status {
				t.Fatalf("result %s, %v, want %s", res.Status, res.Err, tc.status)
			}
			if tc.switched {
				if got := readlink(t, h.link); got != "releases/v1" {
					t.Errorf("link -> %s, want releases/v1", got)
				}
			} else {
				assertUnchanged(t, before, h.root)
			}
			recs := rec.all()
			last := recs[len(recs)-1]
			wantKinds := []string{audit.RollbackRequested, audit.RollbackHost, audit.RollbackCompleted}
			switch {
			case !tc.switched:
				wantKinds = []string{audit.RollbackRequested, audit.RollbackFailed}
			case tc.status == ResultFailed:
				wantKinds = []string{audit.RollbackRequested, audit.RollbackHost, audit.RollbackFailed}
			}
			if got := kinds(recs); !slices.Equal(got, wantKinds) {
				t.Fatalf("audit kinds %v, want %v", got, wantKinds)
			}
			if !strings.Contains(last.Message, tc.say) {
				t.Errorf("%s %q does not say %q", last.Kind, last.Message, tc.say)
			}
			want := "migrate down to v1 (v1) with the link on " + tc.sawLink + "\n"
			if got := dig(t, last.Detail, "data", "local", "output"); got != want {
				t.Errorf("%s detail data.local.output = %q, want %q", last.Kind, got, want)
			}
			if got := dig(t, last.Detail, "data", "local", "command", 4); got != "v1" {
				t.Errorf("data command rendered {{ .PreviousVersion }} as %q", got)
			}
			if tc.exit != 0 {
				if got, _ := dig(t, last.Detail, "data", "local", "error").(string); !strings.Contains(got, "exit status 4") {
					t.Errorf("data error %q", got)
				}
				if !strings.Contains(last.Message, "exit status 4") {
					t.Errorf("%s %q does not give the exit status", last.Kind, last.Message)
				}
			}
		})
	}
}

// TestExecuteFanOut rolls back several hosts through a Dialer; each host has
// its own link, from the {{ .Host }} in the policy's link template.
func TestExecuteFanOut(t *testing.T) {
	n := testutil.StartNATS(t)
	hostsReq := []string{"web1.example.com:22", "web2.example.com:2222"}
	tests := []struct {
		name   string
		break2 bool // web2's previous release is missing
	}{
		{name: "every host rolls back"},
		{name: "one host cannot: none is touched", break2: true},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxFor(t)
			root := t.TempDir()
			hosts := map[string]host{}
			for _, name := range []string{"web1.example.com", "web2.example.com"} {
				dir := filepath.Join(root, name)
				h := host{root: dir, releases: filepath.Join(dir, "releases"), link: filepath.Join(dir, "current")}
				mkdir(t, h.releases)
				h.release(t, "v1", -time.Hour)
				h.release(t, "v2", 0, PreviousVersionFile, "v1\n")
				symlink(t, "releases/v2", h.link)
				hosts[name] = h
			}
			if tc.break2 {
				h := hosts["web2.example.com"]
				if err := os.RemoveAll(h.rel("v1")); err != nil {
					t.Fatal(err)
				}
			}
			perHost := host{link: filepath.Join(root, "{{ .Host }}", "current"), releases: filepath.Join(root, "{{ .Host }}", "releases")}
			rules := loadRules(t, policyYAML("shop", "shop", perHost, "parallelism: 1"))
			e, rec, _ := newExecutor(t, n, rules)
			e.Dial = staticDial(nil)
			req := request(fmt.Sprintf("rb-fan-%d", i))
			req.Hosts = hostsReq
			announce(t, n, req, hostsReq...)
			before := snapshot(t, root)

			res := e.Execute(ctx, req)

			recs := rec.all()
			if tc.break2 {
				if res.Status != ResultFailed {
					t.Fatalf("result %s", res.Status)
				}
				assertUnchanged(t, before, root)
				msg := one(t, recs, audit.RollbackFailed).Message
				if !strings.Contains(msg, "web2.example.com:2222: previous release") || strings.Contains(msg, "web1") {
					t.Errorf("rollback.failed %q should name web2 only", msg)
				}
				return
			}
			if res.Status != ResultCompleted {
				t.Fatalf("result %s, %v", res.Status, res.Err)
			}
			for name, h := range hosts {
				if got := readlink(t, h.link); got != "releases/v1" {
					t.Errorf("%s: link -> %s", name, got)
				}
			}
			var seen []string
			for _, r := range recs {
				if r.Kind == audit.RollbackHost {
					seen = append(seen, fmt.Sprint(dig(t, r.Detail, "host"), " ", dig(t, r.Detail, "link")))
				}
			}
			slices.Sort(seen)
			want := []string{
				"web1.example.com:22 " + hosts["web1.example.com"].link,
				"web2.example.com:2222 " + hosts["web2.example.com"].link,
			}
			if !slices.Equal(seen, want) {
				t.Errorf("rollback.host records %v, want %v", seen, want)
			}
			if msg := one(t, recs, audit.RollbackCompleted).Message; !strings.Contains(msg, "on 2 host(s)") {
				t.Errorf("rollback.completed %q", msg)
			}
		})
	}
}

// gate is the local filesystem with a Run (the after command) that reports
// on entered and then waits for release.
type gate struct {
	Local
	entered chan string
	release chan struct{}
}

func newGate() gate {
	return gate{entered: make(chan string, 16), release: make(chan struct{})}
}

func (g gate) Run(ctx context.Context, argv, env []string) ([]byte, error) {
	g.entered <- argv[len(argv)-1]
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.Local.Run(ctx, argv, env)
}

func (g gate) waitEntered(t *testing.T) string {
	t.Helper()
	select {
	case s := <-g.entered:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for an after command to start")
		return ""
	}
}

// waitBlockedInExecute waits until a goroutine is blocked taking a mutex in
// Executor.Execute: the per-service lock. It fails at once if returned says
// the Execute it waits for returned instead.
func waitBlockedInExecute(t *testing.T, returned <-chan Result) {
	t.Helper()
	buf := make([]byte, 1<<20)
	testutil.Eventually(t, 10*time.Second, "a second Execute to wait for the per-service lock", func() bool {
		select {
		case r := <-returned:
			t.Fatalf("the second request did not wait for the first: %s, %+v", r.Status, r.Hosts)
		default:
		}
		stacks := string(buf[:runtime.Stack(buf, true)])
		for g := range strings.SplitSeq(stacks, "\n\n") {
			if strings.Contains(g, "sync.(*Mutex).Lock") && strings.Contains(g, "rollback.(*Executor).Execute(") {
				return true
			}
		}
		return false
	})
}

// TestExecuteSerialisesAService: a second request for a service waits until
// the first is done, then finds the host already rolled back (by another
// request: nothing to do).
func TestExecuteSerialisesAService(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx := ctxFor(t)
	h := deployed(t)
	rules := loadRules(t, policyYAML("shop", "shop", h, "after: "+yamlList("true", "{{ .Host }}")))
	e, rec, _ := newExecutor(t, n, rules)
	g := newGate()
	e.Local = g

	results, resultB := make(chan Result, 1), make(chan Result, 1)
	go func() { results <- e.Execute(ctx, request("rb-a")) }()
	g.waitEntered(t) // a has switched and runs its after command
	go func() { resultB <- e.Execute(ctx, request("rb-b")) }()
	waitBlockedInExecute(t, resultB)
	for _, r := range rec.all() {
		if r.RequestID == "rb-b" {
			t.Errorf("rb-b recorded %s while rb-a was running", r.Kind)
		}
	}
	close(g.release)
	var got []Result
	for _, ch := range []chan Result{results, resultB} {
		select {
		case r := <-ch:
			got = append(got, r)
		case <-ctx.Done():
			t.Fatal("timed out")
		}
	}

	switched := 0
	// rb-b finds the release rolled back by rb-a: a recorded no-op.
	for i, want := range []string{ResultCompleted, ResultSkipped} {
		if got[i].Status != want {
			t.Errorf("result %d: %s, %v; want %s", i, got[i].Status, got[i].Err, want)
		}
	}
	for _, r := range got {
		if r.Hosts[0].Switched {
			switched++
		}
	}
	if switched != 1 {
		t.Errorf("%d executions switched, want 1", switched)
	}
	if len(g.entered) != 0 {
		t.Error("the after command ran twice")
	}
	if got := readlink(t, h.link); got != "releases/v1" {
		t.Errorf("link -> %s", got)
	}
	var seq []string
	for _, r := range rec.all() {
		seq = append(seq, r.RequestID+" "+r.Kind)
	}
	want := []string{
		"rb-a " + audit.RollbackRequested, "rb-a " + audit.RollbackHost, "rb-a " + audit.RollbackCompleted,
		"rb-b " + audit.RollbackRequested, "rb-b " + audit.RollbackHost, "rb-b " + audit.RollbackCompleted,
	}
	if !slices.Equal(seq, want) {
		t.Errorf("audit %v, want %v", seq, want)
	}
}

// TestExecuteServicesInParallel: requests for different services run at
// the same time, on an executor that was not set up by Register or Start.
func TestExecuteServicesInParallel(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx := ctxFor(t)
	shop, cart := deployed(t), deployed(t)
	after := "after: " + yamlList("true", "{{ .Service }}")
	rules := loadRules(t, policyYAML("shop", "shop", shop, after), policyYAML("cart", "cart", cart, after))
	rec := &recorder{}
	g := newGate()
	e := &Executor{JS: n.JS, Policies: rules, Audit: rec, Local: g}

	results := make(chan Result, 2)
	for _, svc := range []string{"shop", "cart"} {
		req := request("rb-" + svc)
		req.Service = svc
		go func() { results <- e.Execute(ctx, req) }()
	}
	// Both are in their after command at once.
	got := []string{g.waitEntered(t), g.waitEntered(t)}
	slices.Sort(got)
	if !slices.Equal(got, []string{"cart", "shop"}) {
		t.Errorf("after commands %v", got)
	}
	close(g.release)
	for range 2 {
		if r := <-results; r.Status != ResultCompleted {
			t.Errorf("result %s, %v", r.Status, r.Err)
		}
	}
	for _, h := range []host{shop, cart} {
		if got := readlink(t, h.link); got != "releases/v1" {
			t.Errorf("link -> %s", got)
		}
	}
}

// TestExecutorStart consumes requests from the real ROLLBACKS stream and
// records with the real audit.Publisher: malformed requests are rejected,
// acked, and do not stop the next one.
func TestExecutorStart(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	h := deployed(t)
	rules := loadRules(t, policyYAML("shop", "shop", h))
	e := &Executor{
		JS: n.JS, Policies: rules, Audit: &audit.Publisher{JS: n.JS}, AnnounceSource: "rollback-watcher/test",
		Workers: 1, // one at a time, so that the audit order is the publish order
	}
	reg := prometheus.NewRegistry()
	e.Register(reg)
	subject := "rollbacks.production.shop"

	publish := func(data []byte) {
		t.Helper()
		if _, err := n.JS.Publish(ctx, subject, data); err != nil {
			t.Fatal(err)
		}
	}
	marshal := func(r events.RollbackRequest) []byte {
		t.Helper()
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// Published before the executor's consumer exists: never replayed.
	old := request("rb-old")
	old.ToVersion = "v0"
	publish(marshal(old))

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	if err := e.Start(runCtx); err != nil {
		t.Fatal(err)
	}

	billing := request("rb-billing")
	billing.Service = "billing"
	rejects := []struct {
		data  []byte
		field string
	}{
		{[]byte(`{"id": "rb-1", "service": "shop"`), "json"},
		{[]byte(`{"id": "rb-2", "service": "shop", "environment": "production", "reason": "x", "source": "manual", "colour": "red"}`), "colour"},
		{[]byte(`{"id": "rb-3", "service": "shop", "environment": "production", "source": "manual"}`), "reason"},
		{[]byte(`{"id": "rb-4", "service": "shop", "environment": "production", "reason": "x", "source": "manual", "to_version": "../../etc"}`), "to_version"},
		{marshal(billing), "subject"},
	}
	for _, r := range rejects {
		publish(r.data)
	}
	good := request("rb-good")
	publish(marshal(good))

	testutil.Eventually(t, 10*time.Second, "the link to switch", func() bool {
		s, err := os.Readlink(h.link)
		return err == nil && s == "releases/v1"
	})
	var recs []audit.Record
	testutil.Eventually(t, 10*time.Second, "rollback.completed in the audit", func() bool {
		var err error
		recs, err = audit.Read(ctx, n.JS, audit.Filter{Service: "shop", Environment: "production"})
		if err != nil {
			t.Fatal(err)
		}
		return len(recs) > 0 && recs[len(recs)-1].Kind == audit.RollbackCompleted
	})
	var wantKinds []string
	for range rejects {
		wantKinds = append(wantKinds, audit.EventRejected)
	}
	wantKinds = append(wantKinds, audit.RollbackRequested, audit.RollbackHost, audit.RollbackCompleted)
	if got := kinds(recs); !slices.Equal(got, wantKinds) {
		t.Fatalf("audit kinds %v, want %v", got, wantKinds)
	}
	for i, r := range rejects {
		rej := recs[i]
		if got := dig(t, rej.Detail, "field"); got != r.field {
			t.Errorf("rejection %d: field %v, want %s (%s)", i, got, r.field, rej.Message)
		}
		if dig(t, rej.Detail, "subject") != subject || rej.Service != "shop" || rej.Environment != "production" ||
			!strings.HasPrefix(rej.Message, "rollback request rejected: ") || rej.Time.IsZero() {
			t.Errorf("rejection %d: %+v", i, rej)
		}
	}
	for _, r := range recs[len(rejects):] {
		if r.RequestID != good.ID {
			t.Errorf("%s for request %q, want only %s", r.Kind, r.RequestID, good.ID)
		}
	}
	// Every message was acked, the rejected ones included.
	cons, err := n.JS.Consumer(ctx, bus.RollbacksStream, "watcher-rollbacks")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "every request acked", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0 && info.NumRedelivered == 0
	})

	stop()
	waited := make(chan struct{})
	go func() { e.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-ctx.Done():
		t.Fatal("Wait did not return after the context ended")
	}
	if got := rollbacks(t, reg, ResultCompleted); got != 1 {
		t.Errorf("watcher_rollbacks_total{result=completed} = %v", got)
	}
}
