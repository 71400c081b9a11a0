package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path"
	"regexp"
	"strconv"
	"time"

	"github.com/rollback-watcher/watcher/internal/events"
)

// gitlab serves POST /api/v1/hooks/gitlab: a GitLab webhook delivering
// deployment events, with the webhook's secret token in X-Gitlab-Token.
// A deployment with status "success" is a deploy event (README "Send
// deploy events from your tool" has the mapping); other statuses and
// other events are answered 200 and ignored.
func (c *ingestCall) gitlab() {
	// The token is checked before the body is read: a client without it
	// gets nothing for the upload.
	if why := c.in.Credentials.gitlab.gitlabToken(c.r.Header.Get("X-Gitlab-Token")); why != "" {
		c.refuse(resultUnauthorized, rejection{status: http.StatusUnauthorized, field: "token"}, why)
		return
	}
	c.sender = ingestGitLab
	body, ok := c.readBody()
	if !ok {
		return
	}
	d, ignored, err := gitlabDeploy(c.r.Header.Get("X-Gitlab-Event"), body)
	c.storeAdapted(d, ignored, err, len(body), "the GitLab webhook", c.in.Credentials.gitlab.scope)
}

// gitlabDelivery is what the watcher reads of a deployment event; the rest
// is ignored.
type gitlabDelivery struct {
	ObjectKind      string  `json:"object_kind"`
	Status          string  `json:"status"`
	StatusChangedAt string  `json:"status_changed_at"`
	DeploymentID    int64   `json:"deployment_id"`
	DeployableID    *int64  `json:"deployable_id"`
	DeployableURL   *string `json:"deployable_url"`
	Environment     string  `json:"environment"`
	Project         *struct {
		Name              string `json:"name"`
		PathWithNamespace string `json:"path_with_namespace"`
	} `json:"project"`
	ShortSHA  string `json:"short_sha"`
	CommitURL string `json:"commit_url"`
	User      *struct {
		Username string `json:"username"`
	} `json:"user"`
}

// gitlabTime is the layout of status_changed_at ("2021-04-28 21:50:00 +0200").
const gitlabTime = "2006-01-02 15:04:05 -0700"

// commitSHA is the full commit id at the end of commit_url (SHA-1 or
// SHA-256 repositories).
var commitSHA = regexp.MustCompile(`/commit/([0-9a-f]{40}|[0-9a-f]{64})$`)

// gitlabDeploy maps a deployment event to a deploy event (README "Send
// deploy events from your tool"):
//
//   - id: "gitlab-deployment-" and deployment_id, so that a redelivery
//     starts one run;
//   - service: the project's path, the last part of
//     project.path_with_namespace (project.name when there is none): a
//     path has no spaces, a name may;
//   - environment: environment;
//   - version: the commit's full SHA from commit_url, else short_sha;
//   - time: status_changed_at;
//   - labels: project (path_with_namespace), sha, user (user.username),
//     job_id and job_url (the deployable: the job that deployed).
//
// ignored, when set, says why the delivery is no deploy to validate.
func gitlabDeploy(eventHeader string, body []byte) (d events.Deploy, ignored string, err error) {
	var g gitlabDelivery
	if err := json.Unmarshal(body, &g); err != nil {
		return d, "", &events.RejectError{Field: "json", Reason: "is not a GitLab deployment event: " + err.Error()}
	}
	if g.ObjectKind != "deployment" || (eventHeader != "" && eventHeader != "Deployment Hook") {
		return d, fmt.Sprintf("event %.60q (object_kind %.40q) is not a deployment event: enable only \"Deployment events\" on this webhook",
			eventHeader, g.ObjectKind), nil
	}
	if g.Status != "success" {
		return d, fmt.Sprintf("deployment status %.40q: only a successful deployment (status \"success\") is validated", g.Status), nil
	}
	if g.Project == nil {
		return d, "", &events.RejectError{Field: "project", Reason: "is required"}
	}
	if g.DeploymentID <= 0 {
		return d, "", &events.RejectError{Field: "deployment_id", Reason: "is required"}
	}
	from := map[string]string{
		"id": "deployment_id", "service": "project.path_with_namespace", "environment": "environment",
		"version": "commit_url", "labels": "labels",
	}
	d = events.Deploy{
		ID:          "gitlab-deployment-" + strconv.FormatInt(g.DeploymentID, 10),
		Service:     path.Base(g.Project.PathWithNamespace),
		Environment: g.Environment,
	}
	if g.Project.PathWithNamespace == "" {
		d.Service, from["service"] = g.Project.Name, "project.name"
	}
	if m := commitSHA.FindStringSubmatch(g.CommitURL); m != nil {
		d.Version = m[1]
	} else {
		d.Version, from["version"] = g.ShortSHA, "short_sha"
	}
	// An unreadable time is left out, not refused: the watcher stamps
	// the arrival, a second later, and the deploy is still validated.
	if t, err := time.Parse(gitlabTime, g.StatusChangedAt); err == nil {
		d.Time = t.UTC()
	}
	d.Labels = nonEmpty(map[string]string{"project": g.Project.PathWithNamespace, "sha": d.Version})
	if g.User != nil && g.User.Username != "" {
		d.Labels["user"] = g.User.Username
	}
	if g.DeployableID != nil {
		d.Labels["job_id"] = strconv.FormatInt(*g.DeployableID, 10)
	}
	if g.DeployableURL != nil && *g.DeployableURL != "" {
		d.Labels["job_url"] = *g.DeployableURL
	}
	if err := d.Validate(); err != nil {
		return events.Deploy{}, "", renameField(err, from)
	}
	return d, "", nil
}
