package web

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/events"
)

// The providers' documented example payloads: GitHub's deployment_status
// and ping examples (as GitHub's webhook documentation shows them, from
// octokit/webhooks' payload examples) and the deployment event example of
// GitLab's "Webhook events" page.
func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func githubHeaders(event, secret string, body []byte) map[string]string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return map[string]string{
		"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
		"X-Hub-Signature-256": "sha256=" + hex.EncodeToString(mac.Sum(nil)), "User-Agent": "GitHub-Hookshot/044aadd",
	}
}

// setJSON returns the JSON document b with the member at path set to v.
func setJSON(t *testing.T, b []byte, v any, path ...string) []byte {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	m := doc
	for _, k := range path[:len(path)-1] {
		m = m[k].(map[string]any)
	}
	m[path[len(path)-1]] = v
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestGitHubHook: GitHub's documented deployment_status example, signed
// with the webhook's secret, is stored as the deploy event README's
// mapping says; a bad or missing signature is refused and recorded;
// pings, other states and other events are answered 200 and stored not.
func TestGitHubHook(t *testing.T) {
	e := startIngest(t)
	url := e.url + "/api/v1/hooks/github"
	example := readTestdata(t, "github/deployment_status.json")

	r := send(t, url, example, githubHeaders("deployment_status", githubSecret, example))
	var reply ingestReply
	if err := json.Unmarshal([]byte(r.body), &reply); err != nil || r.status != http.StatusAccepted || reply.ID != "github-deployment-145988746" ||
		reply.Subject != "deploys.production.Hello-World" {
		t.Fatalf("status %d %q, want 202 with id github-deployment-145988746 on deploys.production.Hello-World", r.status, r.body)
	}
	msgs := e.stored(t)
	if len(msgs) != 1 {
		t.Fatalf("%d messages on DEPLOYS, want 1", len(msgs))
	}
	d, err := events.DecodeDeploy(msgs[0].Subject, msgs[0].Header, msgs[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	want := events.Deploy{ID: "github-deployment-145988746", Service: "Hello-World", Environment: "production",
		Version: "f95f852bd8fca8fcc58a9a2d6c842781e32a215e", Time: time.Date(2019, 5, 15, 15, 20, 55, 0, time.UTC),
		Labels: map[string]string{"repository": "Codertocat/Hello-World", "ref": "master", "sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e", "creator": "Codertocat"},
		Format: events.FormatJSON}
	if !equalDeploy(d, want) {
		t.Errorf("stored %+v\nwant   %+v", d, want)
	}

	// GitHub redelivers: the same deployment is stored once.
	r = send(t, url, example, githubHeaders("deployment_status", githubSecret, example))
	if r.status != http.StatusAccepted || !strings.Contains(r.body, `"duplicate":true`) {
		t.Errorf("redelivery: %d %q", r.status, r.body)
	}

	// The form-encoded content type signs the form body.
	other := setJSON(t, example, 145988747.0, "deployment", "id")
	form := []byte("payload=" + urlQueryEscape(string(other)))
	h := githubHeaders("deployment_status", githubSecret, form)
	h["Content-Type"] = "application/x-www-form-urlencoded"
	if r := send(t, url, form, h); r.status != http.StatusAccepted || !strings.Contains(r.body, "github-deployment-145988747") {
		t.Errorf("form-encoded delivery: %d %q", r.status, r.body)
	}

	for _, tc := range []struct {
		name    string
		body    []byte
		headers map[string]string
		status  int
		say     string
	}{
		{"ping", readTestdata(t, "github/ping.json"), githubHeaders("ping", githubSecret, readTestdata(t, "github/ping.json")), 200, "pong"},
		{"in progress", setJSON(t, example, "in_progress", "deployment_status", "state"), nil, 200,
			`deployment status "in_progress": only a successful deployment`},
		{"another event", example, githubHeaders("push", githubSecret, example), 200, `subscribe the webhook to "Deployment statuses" only`},
		{"wrong secret", example, githubHeaders("deployment_status", "not-"+githubSecret, example), 401,
			"X-Hub-Signature-256 does not match the body"},
		{"body changed", setJSON(t, example, "evil", "repository", "name"), githubHeaders("deployment_status", githubSecret, example), 401,
			"X-Hub-Signature-256 does not match the body"},
		{"no signature", example, map[string]string{"X-GitHub-Event": "deployment_status"}, 401, "no X-Hub-Signature-256 header"},
		{"environment out of scope", setJSON(t, example, "staging", "deployment_status", "environment"), nil, 403,
			"the GitHub webhook may not deploy service Hello-World in environment staging"},
		{"invalid environment", setJSON(t, example, "Preview – my app", "deployment_status", "environment"), nil, 400,
			`field "deployment_status.environment": value "Preview – my app" does not match`},
		{"payload names a bad host", setJSON(t, example, map[string]any{"hosts": []string{"-oProxyCommand=x"}}, "deployment", "payload"), nil, 400,
			`field "deployment.payload.hosts[0]"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.headers
			if h == nil {
				h = githubHeaders("deployment_status", githubSecret, tc.body)
			}
			r := send(t, url, tc.body, h)
			if r.status != tc.status || !says(r.body, tc.say) {
				t.Errorf("status %d %q, want %d saying %q", r.status, r.body, tc.status, tc.say)
			}
		})
	}
	if n := len(e.stored(t)); n != 2 {
		t.Errorf("%d messages on DEPLOYS, want 2", n)
	}
	recs := e.rejected(t)
	if len(recs) != 6 {
		t.Fatalf("%d event.rejected records, want 6 (two wrong signatures, no signature, out of scope, two invalid)", len(recs))
	}
	if d, _ := recs[0].EventRejected(); d.Field != "signature" || d.HTTP == nil || d.HTTP.Sender != "" || d.HTTP.UserAgent != "GitHub-Hookshot/044aadd" {
		t.Errorf("wrong secret recorded as %+v %+v", d, d.HTTP)
	}
	if d, _ := recs[3].EventRejected(); d.Field != "scope" || d.HTTP.Sender != "github" || recs[3].Service != "Hello-World" ||
		recs[3].Environment != "staging" || recs[3].DeployID != "github-deployment-145988746" {
		t.Errorf("out of scope recorded as %+v %+v", recs[3], d.HTTP)
	}
	for result, n := range map[string]float64{resultAccepted: 2, resultDuplicate: 1, resultIgnored: 3, resultUnauthorized: 3, resultForbidden: 1, resultRejected: 2} {
		if got := e.count(t, ingestGitHub, result); got != n {
			t.Errorf("github %s = %v, want %v", result, got, n)
		}
	}
	e.noSecrets(t)
}

// TestGitHubDeploymentPayload: a deployment's payload may name the service,
// version, previous version and hosts, as an object or a string holding
// one; other payloads are someone else's.
func TestGitHubDeploymentPayload(t *testing.T) {
	example := readTestdata(t, "github/deployment_status.json")
	for _, tc := range []struct {
		name    string
		payload any
		service string
		version string
		prev    string
		hosts   int
		err     string
	}{
		{"empty", map[string]any{}, "Hello-World", "f95f852bd8fca8fcc58a9a2d6c842781e32a215e", "", 0, ""},
		{"object", map[string]any{"service": "shop-api", "version": "2026.11.25-1", "previous_version": "2026.11.24-3",
			"hosts": []string{"web1:22", "web2"}, "deploy_tool": "capistrano"}, "shop-api", "2026.11.25-1", "2026.11.24-3", 2, ""},
		{"string holding an object", `{"service": "shop-web"}`, "shop-web", "f95f852bd8fca8fcc58a9a2d6c842781e32a215e", "", 0, ""},
		{"free text", "deployed by hand", "Hello-World", "f95f852bd8fca8fcc58a9a2d6c842781e32a215e", "", 0, ""},
		{"service not a string", map[string]any{"service": 7}, "", "", "", 0, `field "deployment.payload.service": must be a string`},
		{"bad version", map[string]any{"version": "../etc"}, "", "", "", 0, `field "deployment.payload.version": value "../etc" must not contain "/"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, ignored, err := githubDeploy(setJSON(t, example, tc.payload, "deployment", "payload"))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || ignored != "" || d.Service != tc.service || d.Version != tc.version || d.PreviousVersion != tc.prev || len(d.Hosts) != tc.hosts {
				t.Errorf("%+v (ignored %q, err %v)", d, ignored, err)
			}
		})
	}
}

// TestGitLabHook: GitLab's documented deployment event example, with the
// webhook's secret token, is stored as README's mapping says; a wrong or
// missing token is refused and recorded; other statuses are ignored.
func TestGitLabHook(t *testing.T) {
	e := startIngest(t)
	url := e.url + "/api/v1/hooks/gitlab"
	example := readTestdata(t, "gitlab/deployment.json")
	headers := func(token string) map[string]string {
		return map[string]string{"Content-Type": "application/json", "X-Gitlab-Event": "Deployment Hook", "X-Gitlab-Token": token,
			"User-Agent": "GitLab/17.0.0"}
	}
	r := send(t, url, example, headers(gitlabToken))
	if r.status != http.StatusAccepted || !strings.Contains(r.body, `"id":"gitlab-deployment-15"`) ||
		!strings.Contains(r.body, `"subject":"deploys.staging.test-deployment-webhooks"`) {
		t.Fatalf("status %d %q, want 202 with id gitlab-deployment-15", r.status, r.body)
	}
	msgs := e.stored(t)
	if len(msgs) != 1 {
		t.Fatalf("%d messages on DEPLOYS, want 1", len(msgs))
	}
	d, err := events.DecodeDeploy(msgs[0].Subject, msgs[0].Header, msgs[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	want := events.Deploy{ID: "gitlab-deployment-15", Service: "test-deployment-webhooks", Environment: "staging",
		Version: "279484c09fbe69ededfced8c1bb6e6d24616b468", Time: time.Date(2021, 4, 28, 19, 50, 0, 0, time.UTC),
		Labels: map[string]string{"project": "root/test-deployment-webhooks", "sha": "279484c09fbe69ededfced8c1bb6e6d24616b468",
			"user": "root", "job_id": "796", "job_url": "http://10.126.0.2:3000/root/test-deployment-webhooks/-/jobs/796"},
		Format: events.FormatJSON}
	if !equalDeploy(d, want) {
		t.Errorf("stored %+v\nwant   %+v", d, want)
	}

	for _, tc := range []struct {
		name    string
		body    []byte
		headers map[string]string
		status  int
		say     string
	}{
		{"running", setJSON(t, example, "running", "status"), headers(gitlabToken), 200, `deployment status "running": only a successful deployment`},
		{"another event", example, map[string]string{"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": gitlabToken}, 200, `enable only "Deployment events"`},
		{"wrong token", example, headers("not-" + gitlabToken), 401, "X-Gitlab-Token is not the token in ingest.gitlab.token_file"},
		{"no token", example, map[string]string{"X-Gitlab-Event": "Deployment Hook"}, 401, "no X-Gitlab-Token header"},
		{"environment out of scope", setJSON(t, example, "production", "environment"), headers(gitlabToken), 403,
			"the GitLab webhook may not deploy service test-deployment-webhooks in environment production"},
		{"dynamic environment", setJSON(t, example, "review/fix-login", "environment"), headers(gitlabToken), 400,
			`field "environment": value "review/fix-login" does not match`},
		{"no full SHA", setJSON(t, example, "", "commit_url"), headers(gitlabToken), 202, `"duplicate":true`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := send(t, url, tc.body, tc.headers)
			if r.status != tc.status || !says(r.body, tc.say) {
				t.Errorf("status %d %q, want %d saying %q", r.status, r.body, tc.status, tc.say)
			}
		})
	}
	if d, _, err := gitlabDeploy("Deployment Hook", setJSON(t, example, "", "commit_url")); err != nil || d.Version != "279484c0" {
		t.Errorf("without commit_url the version is %q (%v), want short_sha", d.Version, err)
	}
	recs := e.rejected(t)
	if len(recs) != 4 {
		t.Fatalf("%d event.rejected records, want 4", len(recs))
	}
	if d, _ := recs[0].EventRejected(); d.Field != "token" || d.HTTP.Sender != "" || d.HTTP.UserAgent != "GitLab/17.0.0" || d.HTTP.Status != 401 {
		t.Errorf("wrong token recorded as %+v %+v", d, d.HTTP)
	}
	if n := len(e.stored(t)); n != 1 {
		t.Errorf("%d messages on DEPLOYS, want 1", n)
	}
	e.noSecrets(t)
}

func equalDeploy(a, b events.Deploy) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb) && a.Format == b.Format
}

// says reports whether body says s, as text or inside a JSON string.
func says(body, s string) bool {
	j, _ := json.Marshal(s)
	return strings.Contains(body, s) || strings.Contains(body, strings.Trim(string(j), `"`))
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }
