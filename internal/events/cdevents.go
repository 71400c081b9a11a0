package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	packageurl "github.com/package-url/packageurl-go"
)

// What this package writes: CDEvents spec 0.5 (github.com/cdevents/spec,
// tag v0.5.0, schemas/servicedeployed.json and servicerolledback.json),
// whose service events are at version 0.3.0.
const (
	CDEventsSpecVersion   = "0.5.0"
	TypeServiceDeployed   = "dev.cdevents.service.deployed.0.3.0"
	TypeServiceUpgraded   = "dev.cdevents.service.upgraded.0.3.0"
	TypeServiceRolledBack = "dev.cdevents.service.rolledback.0.3.0"
)

// cdeventsType matches `dev.cdevents.<subject>.<predicate>.<M.m.p>`, and
// customType the spec's custom events, `dev.cdeventsx.<tool>-<subject>...`
// (custom/schema.json). Version numbers are semver: no leading zeros, so
// that "0.03.0" cannot pass for "0.3.0".
var (
	cdeventsType = regexp.MustCompile(`^dev\.cdevents\.([a-z]{1,64})\.([a-z]{1,64})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})$`)
	customType   = regexp.MustCompile(`^dev\.cdeventsx\.[a-zA-Z0-9]{1,64}-[a-zA-Z]{1,64}\.[a-zA-Z]{1,64}\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})$`)
	// specVersionPattern: the CDEvents spec itself is 0.x so far; a 1.0
	// may change the envelope, so it is refused rather than misread.
	specVersionPattern = regexp.MustCompile(`^0\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})(-[0-9A-Za-z.-]{1,64})?$`)
)

// classifyType classifies a CDEvents type: isDeploy for service.deployed and
// service.upgraded at major version 0; a *NotDeployError for any other
// well-formed CDEvents type; a *RejectError for anything else.
func classifyType(field, typ string) (isDeploy bool, err error) {
	if typ == "" {
		return false, &RejectError{Field: field, Reason: "is required"}
	}
	if customType.MatchString(typ) {
		return false, &NotDeployError{Type: typ}
	}
	m := cdeventsType.FindStringSubmatch(typ)
	if m == nil {
		return false, reject(field, typ, "is not a CDEvents type (dev.cdevents.<subject>.<predicate>.<major>.<minor>.<patch>)")
	}
	if m[1] != "service" || (m[2] != "deployed" && m[2] != "upgraded") {
		return false, &NotDeployError{Type: typ}
	}
	// A new major version may move the fields this mapping reads; an event
	// the watcher cannot read is rejected (and audited), not ignored.
	if m[3] != "0" {
		return false, reject(field, typ, "has major version "+m[3]+"; this watcher reads service."+m[2]+" 0.x")
	}
	return true, nil
}

// The CDEvents fields read, per level. Beyond the 0.5 ones, it admits what
// earlier 0.x specs had (context.version before it became specversion,
// subject.type), since their 0.1/0.2 event versions are accepted too.
var (
	cdTopFields         = []string{"context", "subject", "customData", "customDataContentType"}
	cdContextFields     = []string{"specversion", "version", "id", "source", "type", "timestamp", "schemaUri", "chainId", "links"}
	cdSubjectFields     = []string{"id", "source", "type", "content"}
	cdContentFields     = []string{"environment", "artifactId"}
	cdEnvironmentFields = []string{"id", "source"}
)

var cdeventFields = fieldNames{
	id: "context.id", service: "subject.id", environment: "subject.content.environment.id",
	version: "subject.content.artifactId", previousVersion: "customData.previousVersion",
	hosts: "customData.hosts", labels: "customData.labels",
}

// decodeCDEvent maps a CDEvent to a Deploy. raw is valid JSON (checked by
// the caller); outer names raw itself in a rejection ("json" for a bare
// CDEvent, "data" inside a CloudEvent). ceType is the CloudEvent type, or ""
// for a bare CDEvent.
func decodeCDEvent(outer string, raw json.RawMessage, ceType string) (Deploy, error) {
	if k := kind(raw); k != "an object" {
		return Deploy{}, &RejectError{Field: outer, Reason: "must be a CDEvent (a JSON object), not " + k}
	}
	top, err := object("", raw, cdTopFields...)
	if err != nil {
		return Deploy{}, err
	}
	cx, err := required(top, "", "context")
	if err != nil {
		return Deploy{}, err
	}
	ctx, err := object("context", cx, cdContextFields...)
	if err != nil {
		return Deploy{}, err
	}
	typ, err := str("context.type", ctx["type"])
	if err != nil {
		return Deploy{}, err
	}
	// The binding (cloudevents-binding.md) says the CloudEvent type MUST be
	// the CDEvent's type; when they differ, which one decides is a guess.
	if ceType != "" && typ != ceType {
		return Deploy{}, reject("type", ceType, "disagrees with the CDEvent's context.type "+strconv.Quote(printable(typ, 64)))
	}
	isDeploy, typeErr := classifyType("context.type", typ)
	if rej := (*RejectError)(nil); errors.As(typeErr, &rej) {
		return Deploy{}, rej
	}
	d := Deploy{}
	if d.ID, d.Time, err = cdContext(ctx); err != nil {
		return Deploy{}, err
	}
	if !isDeploy {
		// A well-formed event of another type: its subject has another
		// shape, which is not this package's business.
		if _, err := required(top, "", "subject"); err != nil {
			return Deploy{}, err
		}
		return Deploy{}, typeErr
	}

	sx, err := required(top, "", "subject")
	if err != nil {
		return Deploy{}, err
	}
	subj, err := object("subject", sx, cdSubjectFields...)
	if err != nil {
		return Deploy{}, err
	}
	if d.Service, err = str("subject.id", subj["id"]); err != nil {
		return Deploy{}, err
	}
	if err := checkName("subject.id", d.Service); err != nil {
		return Deploy{}, err
	}
	if _, err := str("subject.source", subj["source"]); err != nil {
		return Deploy{}, err
	}
	if st, err := str("subject.type", subj["type"]); err != nil {
		return Deploy{}, err
	} else if st != "" && st != "service" {
		return Deploy{}, reject("subject.type", st, `must be "service" for a service event`)
	}
	cn, err := required(subj, "subject", "content")
	if err != nil {
		return Deploy{}, err
	}
	content, err := object("subject.content", cn, cdContentFields...)
	if err != nil {
		return Deploy{}, err
	}
	en, err := required(content, "subject.content", "environment")
	if err != nil {
		return Deploy{}, err
	}
	env, err := object("subject.content.environment", en, cdEnvironmentFields...)
	if err != nil {
		return Deploy{}, err
	}
	if d.Environment, err = str("subject.content.environment.id", env["id"]); err != nil {
		return Deploy{}, err
	}
	if err := checkName("subject.content.environment.id", d.Environment); err != nil {
		return Deploy{}, err
	}
	if _, err := str("subject.content.environment.source", env["source"]); err != nil {
		return Deploy{}, err
	}
	const artifactField = "subject.content.artifactId"
	artifact, err := str(artifactField, content["artifactId"])
	if err != nil {
		return Deploy{}, err
	}
	purlVersion, err := rawPurlVersion(artifactField, artifact)
	if err != nil {
		return Deploy{}, err
	}

	custom, err := customData(top)
	if err != nil {
		return Deploy{}, err
	}
	// customData.version, when given, is the release (README, "Deploy event"):
	// a purl often names the artifact by digest while the release directory
	// has another name, so the two differing is normal, and the purl's
	// version is then not read at all. Otherwise the purl's version is the
	// release, and has to be a valid one.
	fields := cdeventFields
	switch {
	case custom.version != "":
		d.Version = custom.version
		fields.version = "customData.version"
	case purlVersion == "":
		return Deploy{}, &RejectError{Field: artifactField, Value: printable(artifact, 64),
			Reason: "has no version, and customData.version names none either"}
	default:
		if err := checkPurlVersion(artifactField, artifact, purlVersion); err != nil {
			return Deploy{}, err
		}
		d.Version = purlVersion
	}
	d.PreviousVersion, d.Hosts, d.Labels = custom.previousVersion, custom.hosts, custom.labels
	if err := d.validate(fields); err != nil {
		return Deploy{}, err
	}
	return d, nil
}

// required returns the member name of obj, rejecting its absence.
func required(obj map[string]json.RawMessage, parent, name string) (json.RawMessage, error) {
	v, ok := obj[name]
	if !ok {
		return nil, &RejectError{Field: join(parent, name), Reason: "is required"}
	}
	return v, nil
}

// cdContext checks the context attributes that every CDEvent has and returns
// the two the watcher uses.
func cdContext(ctx map[string]json.RawMessage) (id string, ts time.Time, err error) {
	spec, err := str("context.specversion", ctx["specversion"])
	if err != nil {
		return "", time.Time{}, err
	}
	old, err := str("context.version", ctx["version"])
	if err != nil {
		return "", time.Time{}, err
	}
	switch {
	case spec != "" && old != "":
		return "", time.Time{}, &RejectError{Field: "context.version", Reason: "is the pre-0.5 name of context.specversion; give one, not both"}
	case spec == "" && old == "":
		return "", time.Time{}, &RejectError{Field: "context.specversion", Reason: "is required"}
	case spec != "" && !specVersionPattern.MatchString(spec):
		return "", time.Time{}, reject("context.specversion", spec, "is not a CDEvents 0.x spec version")
	case old != "" && !specVersionPattern.MatchString(old):
		return "", time.Time{}, reject("context.version", old, "is not a CDEvents 0.x spec version")
	}

	if id, err = str("context.id", ctx["id"]); err != nil {
		return "", time.Time{}, err
	}
	if err := checkID("context.id", id); err != nil {
		return "", time.Time{}, err
	}
	source, err := str("context.source", ctx["source"])
	if err != nil {
		return "", time.Time{}, err
	}
	if err := checkURIRef("context.source", source); err != nil {
		return "", time.Time{}, err
	}
	tsText, err := str("context.timestamp", ctx["timestamp"])
	if err != nil {
		return "", time.Time{}, err
	}
	if tsText == "" {
		return "", time.Time{}, &RejectError{Field: "context.timestamp", Reason: "is required"}
	}
	if ts, err = parseTime("context.timestamp", tsText); err != nil {
		return "", time.Time{}, err
	}
	for _, f := range []string{"schemaUri", "chainId"} {
		if _, err := str("context."+f, ctx[f]); err != nil {
			return "", time.Time{}, err
		}
	}
	if l, ok := ctx["links"]; ok && kind(l) != "an array" {
		return "", time.Time{}, &RejectError{Field: "context.links", Reason: "must be an array, not " + kind(l)}
	}
	return id, ts, nil
}

func checkURIRef(field, v string) error {
	if v == "" {
		return &RejectError{Field: field, Reason: "is required"}
	}
	if err := checkText(field, v, 2048, false); err != nil {
		return err
	}
	if _, err := url.Parse(v); err != nil {
		return reject(field, v, "is not a URI reference")
	}
	return nil
}

func parseTime(field, v string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, reject(field, v, "is not an RFC 3339 time")
	}
	// Kept in UTC, a time must still be one RFC 3339 can write: year 0 at
	// +01:00 is year -1 in UTC, which would be stored and never read back.
	if y := t.UTC().Year(); y < 1 || y > 9999 {
		return time.Time{}, reject(field, v, "is outside the years 0001-9999 (in UTC)")
	}
	return t.UTC(), nil
}

// rawPurlVersion parses a package URL and returns its version unchecked,
// "" if it has none.
func rawPurlVersion(field, purl string) (version string, err error) {
	if purl == "" {
		return "", &RejectError{Field: field, Reason: "is required"}
	}
	if len(purl) > 2048 {
		return "", &RejectError{Field: field, Value: printable(purl, 64), Reason: "is longer than 2048 bytes"}
	}
	defer func() {
		// packageurl-go is not written for hostile input; a panic in it is a
		// rejection, not a crash of the watcher.
		if r := recover(); r != nil {
			version, err = "", reject(field, purl, "is not a valid package URL")
		}
	}()
	p, perr := packageurl.FromString(purl)
	if perr != nil {
		return "", reject(field, purl, "is not a valid package URL: "+printable(perr.Error(), 200))
	}
	return p.Version, nil
}

// checkPurlVersion checks v, the version of purl, as a release name.
func checkPurlVersion(field, purl, v string) error {
	const remedy = " (or name the release in customData.version, which then is the version)"
	if strings.Contains(v, "/") || strings.Contains(v, "..") {
		return reject(field, purl, "has version "+strconv.Quote(printable(v, 64))+`, which contains "/" or ".."; a version is a release directory name`+remedy)
	}
	if !VersionPattern.MatchString(v) {
		return reject(field, purl, "has version "+strconv.Quote(printable(v, 64))+" not matching "+VersionPattern.String()+remedy)
	}
	return nil
}

// custom is what the watcher reads from customData.
type custom struct {
	version, previousVersion string
	hosts                    []string
	labels                   map[string]string
}

// customData reads the watcher's keys from customData. customData is the
// producer's own space (spec.md, "CDEvents custom data"), so other keys are
// left alone; it is read only when it is JSON, the default content type.
func customData(top map[string]json.RawMessage) (custom, error) {
	var c custom
	ct, err := str("customDataContentType", top["customDataContentType"])
	if err != nil {
		return c, err
	}
	if ct != "" {
		if _, _, err := mime.ParseMediaType(ct); err != nil {
			return c, reject("customDataContentType", ct, "is not a media type")
		}
		if !isJSONMediaType(ct) {
			return c, nil // opaque (base64) data of another type
		}
	}
	raw, ok := top["customData"]
	if !ok || kind(raw) != "an object" {
		return c, nil
	}
	ms, err := members("customData", raw)
	if err != nil {
		return c, err
	}
	for _, m := range ms {
		f := "customData." + m.name
		switch m.name {
		case "version":
			c.version, err = nonNullStr(f, m.value)
		case "previousVersion":
			c.previousVersion, err = nonNullStr(f, m.value)
		case "hosts":
			c.hosts, err = stringList(f, nullToNil(m.value), MaxHosts)
		case "labels":
			c.labels, err = stringMap(f, nullToNil(m.value), MaxLabels)
		}
		if err != nil {
			return custom{}, err
		}
	}
	if err := checkVersion("customData.version", c.version, false); err != nil {
		return custom{}, err
	}
	return c, nil
}

func nullToNil(raw json.RawMessage) json.RawMessage {
	if kind(raw) == "null" {
		return nil
	}
	return raw
}

func nonNullStr(field string, raw json.RawMessage) (string, error) {
	return str(field, nullToNil(raw))
}

// isJSONMediaType says whether a content type is JSON: application/json or
// a +json suffix, parameters allowed.
func isJSONMediaType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || (strings.HasSuffix(mt, "+json") && mt != ContentTypeCloudEvents)
}

// The CDEvents this package writes. Decoding does not use them: it walks the
// JSON by hand so that every rejection names its field.
type cdEvent struct {
	Context               cdEventContext `json:"context"`
	Subject               cdServiceSubj  `json:"subject"`
	CustomData            any            `json:"customData,omitempty"`
	CustomDataContentType string         `json:"customDataContentType,omitempty"`
}

type cdEventContext struct {
	SpecVersion string `json:"specversion"`
	ID          string `json:"id"`
	Source      string `json:"source"`
	Type        string `json:"type"`
	Timestamp   string `json:"timestamp"`
}

type cdServiceSubj struct {
	ID      string           `json:"id"`
	Source  string           `json:"source,omitempty"`
	Content cdServiceContent `json:"content"`
}

type cdServiceContent struct {
	Environment cdEnvironmentRef `json:"environment"`
	ArtifactID  string           `json:"artifactId"`
}

type cdEnvironmentRef struct {
	ID string `json:"id"`
}

func newServiceEvent(typ, id, source string, t time.Time, service, environment, version string) cdEvent {
	return cdEvent{
		Context: cdEventContext{
			SpecVersion: CDEventsSpecVersion,
			ID:          id,
			Source:      source,
			Type:        typ,
			Timestamp:   t.UTC().Format(time.RFC3339Nano),
		},
		Subject: cdServiceSubj{
			ID: service,
			Content: cdServiceContent{
				Environment: cdEnvironmentRef{ID: environment},
				ArtifactID:  artifactID(service, version),
			},
		},
	}
}

// artifactID names a release as a generic purl: the watcher knows a
// service and a release directory, not what package format built it.
func artifactID(service, version string) string {
	return packageurl.NewPackageURL(packageurl.TypeGeneric, "", service, version, nil, "").ToString()
}

// checkSource validates the source given to an encoder; it becomes the
// CDEvent context.source and the CloudEvent source.
func checkSource(source string) error {
	if err := checkURIRef("source", source); err != nil {
		return fmt.Errorf("event source: %w", err)
	}
	return nil
}
