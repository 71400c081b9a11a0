package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rollback-watcher/watcher/internal/events"
)

// github serves POST /api/v1/hooks/github: a GitHub webhook delivering
// deployment_status events, signed with the webhook's secret. A
// deployment status "success" is a deploy event (README "Send deploy
// events from your tool" has the mapping); other states, pings and other
// events are answered 200 and ignored.
func (c *ingestCall) github() {
	body, ok := c.readBody()
	if !ok {
		return
	}
	// The signature covers the raw body, whichever content type the
	// webhook was given.
	if why := c.in.Credentials.github.githubSignature(c.r.Header.Get("X-Hub-Signature-256"), body); why != "" {
		c.refuse(resultUnauthorized, rejection{status: http.StatusUnauthorized, field: "signature"}, why)
		return
	}
	c.sender = ingestGitHub
	switch event := c.r.Header.Get("X-GitHub-Event"); event {
	case "deployment_status":
	case "ping":
		c.ignore("pong: this webhook is reached and its secret is right; the watcher takes deployment_status events from it")
		return
	case "":
		c.rejectEvent(&events.RejectError{Field: "X-GitHub-Event", Reason: "is required: GitHub names the event in this header"}, len(body), "")
		return
	default:
		c.ignore(fmt.Sprintf("event %.60q is not deployment_status: subscribe the webhook to \"Deployment statuses\" only", event))
		return
	}
	payload, err := githubPayloadJSON(c.r.Header.Get("Content-Type"), body)
	if err != nil {
		c.rejectEvent(err, len(body), "")
		return
	}
	d, ignored, err := githubDeploy(payload)
	c.storeAdapted(d, ignored, err, len(body), "the GitHub webhook", c.in.Credentials.github.scope)
}

// storeAdapted stores the deploy event a provider's delivery was turned
// into, when it was one (ignored says why not) within the sender's scope.
func (c *ingestCall) storeAdapted(d events.Deploy, ignored string, err error, size int, sender string, scope scope) {
	switch {
	case err != nil:
		c.rejectEvent(err, size, "")
		return
	case ignored != "":
		c.ignore(ignored)
		return
	}
	if !scope.allows(d.Service, d.Environment) {
		c.outOfScope(d, sender, scope)
		return
	}
	c.storeNative(d)
}

// storeNative stores an adapter's event as native JSON.
func (c *ingestCall) storeNative(d events.Deploy) {
	data, err := events.EncodeNative(d)
	if err != nil {
		c.rejectEvent(err, 0, "") // validated already: not reached
		return
	}
	c.store(d, nats.Header{"Content-Type": []string{"application/json"}}, data)
}

// githubPayloadJSON is the payload of a delivery: the body itself
// (content type application/json), or its "payload" form field
// (application/x-www-form-urlencoded, GitHub's other choice).
func githubPayloadJSON(contentType string, body []byte) ([]byte, error) {
	if mt, _, _ := mime.ParseMediaType(contentType); mt != "application/x-www-form-urlencoded" {
		return body, nil
	}
	form, err := url.ParseQuery(string(body))
	if err != nil || form.Get("payload") == "" {
		return nil, &events.RejectError{Field: "payload", Reason: "is required in a form-encoded delivery"}
	}
	return []byte(form.Get("payload")), nil
}

// githubDelivery is what the watcher reads of a deployment_status
// delivery; the rest is ignored.
type githubDelivery struct {
	DeploymentStatus *struct {
		State       string    `json:"state"`
		Environment string    `json:"environment"`
		CreatedAt   time.Time `json:"created_at"`
	} `json:"deployment_status"`
	Deployment *struct {
		ID          int64           `json:"id"`
		SHA         string          `json:"sha"`
		Ref         string          `json:"ref"`
		Environment string          `json:"environment"`
		Payload     json.RawMessage `json:"payload"`
		Creator     *struct {
			Login string `json:"login"`
		} `json:"creator"`
	} `json:"deployment"`
	Repository *struct {
		Name     string `json:"name"`
		FullName string `json:"full_name"`
	} `json:"repository"`
}

// githubDeploy maps a deployment_status payload to a deploy event (README
// "Send deploy events from your tool"):
//
//   - id: "github-deployment-" and deployment.id, so that GitHub's
//     redeliveries, and a second success status of one deployment, start
//     one run;
//   - service: repository.name, unless the deployment's payload names one
//     ("service"), for a repository that deploys several services;
//   - environment: deployment_status.environment (else deployment.environment);
//   - version: deployment.sha, unless the payload names one ("version");
//     previous_version and hosts from the payload too;
//   - time: deployment_status.created_at, when the deploy succeeded;
//   - labels: repository (full_name), ref, sha, creator (deployment.creator.login).
//
// ignored, when set, says why the delivery is no deploy to validate (a
// state other than success). A rejection names the GitHub field.
func githubDeploy(payload []byte) (d events.Deploy, ignored string, err error) {
	var g githubDelivery
	if err := json.Unmarshal(payload, &g); err != nil {
		return d, "", &events.RejectError{Field: "json", Reason: "is not a GitHub deployment_status payload: " + err.Error()}
	}
	switch {
	case g.DeploymentStatus == nil:
		return d, "", &events.RejectError{Field: "deployment_status", Reason: "is required"}
	case g.Deployment == nil:
		return d, "", &events.RejectError{Field: "deployment", Reason: "is required"}
	case g.Repository == nil:
		return d, "", &events.RejectError{Field: "repository", Reason: "is required"}
	}
	st, dep := g.DeploymentStatus, g.Deployment
	if st.State != "success" {
		return d, fmt.Sprintf("deployment status %.40q: only a successful deployment (state \"success\") is validated", st.State), nil
	}
	from := map[string]string{
		"id": "deployment.id", "service": "repository.name", "environment": "deployment_status.environment",
		"version": "deployment.sha", "previous_version": "deployment.payload.previous_version",
		"hosts": "deployment.payload.hosts", "labels": "labels",
	}
	d = events.Deploy{
		ID:          "github-deployment-" + strconv.FormatInt(dep.ID, 10),
		Service:     g.Repository.Name,
		Environment: st.Environment,
		Version:     dep.SHA,
		Time:        st.CreatedAt.UTC(),
	}
	if d.Environment == "" {
		d.Environment, from["environment"] = dep.Environment, "deployment.environment"
	}
	p, err := githubDeploymentPayload(dep.Payload)
	if err != nil {
		return events.Deploy{}, "", err
	}
	if p.service != "" {
		d.Service, from["service"] = p.service, "deployment.payload.service"
	}
	if p.version != "" {
		d.Version, from["version"] = p.version, "deployment.payload.version"
	}
	d.PreviousVersion, d.Hosts = p.previousVersion, p.hosts
	d.Labels = nonEmpty(map[string]string{"repository": g.Repository.FullName, "ref": dep.Ref, "sha": dep.SHA})
	if dep.Creator != nil && dep.Creator.Login != "" {
		d.Labels["creator"] = dep.Creator.Login
	}
	if dep.ID <= 0 {
		return events.Deploy{}, "", &events.RejectError{Field: "deployment.id", Reason: "is required"}
	}
	if err := d.Validate(); err != nil {
		return events.Deploy{}, "", renameField(err, from)
	}
	return d, "", nil
}

// githubPayloadFields are what the watcher reads of a deployment's payload.
type githubPayloadFields struct {
	service, version, previousVersion string
	hosts                             []string
}

// githubDeploymentPayload reads deployment.payload: an object, or a string
// holding one (the API takes either). Its other members, and a string that
// is no JSON object, are someone else's and ignored.
func githubDeploymentPayload(raw json.RawMessage) (githubPayloadFields, error) {
	var p githubPayloadFields
	var s string
	if json.Unmarshal(raw, &s) == nil {
		raw = json.RawMessage(s)
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return p, nil
	}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"service", &p.service}, {"version", &p.version}, {"previous_version", &p.previousVersion}} {
		if v, ok := m[f.name]; ok && string(v) != "null" {
			if err := json.Unmarshal(v, f.dst); err != nil {
				return p, &events.RejectError{Field: "deployment.payload." + f.name, Reason: "must be a string"}
			}
		}
	}
	if v, ok := m["hosts"]; ok && string(v) != "null" {
		if err := json.Unmarshal(v, &p.hosts); err != nil {
			return p, &events.RejectError{Field: "deployment.payload.hosts", Reason: "must be a list of strings"}
		}
	}
	return p, nil
}

// renameField names in a rejection the provider's field that the deploy
// event's field came from ("hosts[2]" from deployment.payload.hosts).
func renameField(err error, from map[string]string) error {
	var rej *events.RejectError
	if !errors.As(err, &rej) {
		return err
	}
	name, rest := rej.Field, ""
	if i := strings.IndexAny(name, "[."); i > 0 {
		name, rest = name[:i], name[i:]
	}
	if f, ok := from[name]; ok {
		r := *rej
		r.Field = f + rest
		return &r
	}
	return err
}

// nonEmpty drops the empty values of m.
func nonEmpty(m map[string]string) map[string]string {
	for k, v := range m {
		if v == "" {
			delete(m, k)
		}
	}
	return m
}
