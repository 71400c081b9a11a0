package events

import (
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

const subj = "deploys.production.shop"

var deployTime = time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC)

// nativeBase is the README's example of a native JSON deploy event.
const nativeBase = `{"id": "d-42", "service": "shop", "environment": "production", "version": "2026.11.25-1",
 "previous_version": "2026.11.24-3", "hosts": ["web1.example.com:22"],
 "time": "2026-11-25T18:00:00Z", "labels": {"team": "payments"}}`

// cdBase follows conformance/service_deployed.json of cdevents/spec v0.5.x,
// with values the watcher accepts and customData for what CDEvents lacks.
const cdBase = `{
  "context": {
    "specversion": "0.5.0",
    "id": "271069a8-fc18-44f1-b38f-9d70a1695819",
    "chainId": "4c8cb7dd-3448-41de-8768-eec704e2829b",
    "source": "/event/source/123",
    "type": "dev.cdevents.service.deployed.0.3.0",
    "timestamp": "2026-11-25T18:00:00Z",
    "schemaUri": "https://myorg.com/schema/custom",
    "links": [{"linkType": "RELATION", "linkKind": "TRIGGER", "target": {"contextId": "5328c37f"}}]
  },
  "subject": {
    "id": "shop",
    "source": "/event/source/123",
    "content": {
      "environment": {"id": "production", "source": "/envs"},
      "artifactId": "pkg:generic/shop@2026.11.25-1"
    }
  },
  "customData": {"previousVersion": "2026.11.24-3", "hosts": ["web1.example.com:22"],
    "labels": {"team": "payments"}, "buildUrl": "https://ci.example.com/1", "nested": {"a": [1, 2]}},
  "customDataContentType": "application/json"
}`

const cdID = "271069a8-fc18-44f1-b38f-9d70a1695819"

func wantDeploy(id, format string) Deploy {
	return Deploy{
		ID: id, Service: "shop", Environment: "production", Version: "2026.11.25-1",
		PreviousVersion: "2026.11.24-3", Hosts: []string{"web1.example.com:22"},
		Time: deployTime, Labels: map[string]string{"team": "payments"}, Format: format,
	}
}

// edit decodes base, applies the edits and encodes it again. An edit is
// set(path, value) or del(path), path being dot-separated object members.
func edit(t testing.TB, base string, edits ...func(map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(base), &m); err != nil {
		t.Fatal(err)
	}
	for _, e := range edits {
		e(m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func walk(m map[string]any, path string) (map[string]any, string) {
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	return m, parts[len(parts)-1]
}

func set(path string, v any) func(map[string]any) {
	return func(m map[string]any) {
		parent, k := walk(m, path)
		parent[k] = v
	}
}

func del(path string) func(map[string]any) {
	return func(m map[string]any) {
		parent, k := walk(m, path)
		delete(parent, k)
	}
}

// structured wraps a CDEvent in a structured-mode CloudEvent.
func structured(t testing.TB, cd []byte, edits ...func(map[string]any)) []byte {
	t.Helper()
	var typ struct {
		Context struct{ Type string } `json:"context"`
	}
	_ = json.Unmarshal(cd, &typ)
	base, _ := json.Marshal(map[string]any{
		"specversion": "1.0", "id": "ce-0001", "source": "/ci/pipeline", "type": typ.Context.Type,
		"subject": "shop", "time": "2026-11-25T18:00:01Z", "datacontenttype": "application/json",
		"data": json.RawMessage(cd),
	})
	return edit(t, string(base), edits...)
}

func binaryHeaders(typ string) map[string][]string {
	return map[string][]string{
		"ce-specversion": {"1.0"}, "ce-id": {"ce-0001"}, "ce-source": {"/ci/pipeline"},
		"ce-type": {typ}, "ce-time": {"2026-11-25T18:00:01Z"}, "Content-Type": {"application/json"},
	}
}

func without(h map[string][]string, name string) map[string][]string {
	delete(h, name)
	return h
}

func with(h map[string][]string, name string, v ...string) map[string][]string {
	h[name] = v
	return h
}

var ceHeader = map[string][]string{"Content-Type": {ContentTypeCloudEvents + "; charset=utf-8"}}

func TestDecodeDeploy(t *testing.T) {
	upgraded := edit(t, cdBase, set("context.type", "dev.cdevents.service.upgraded.0.3.0"))
	tests := []struct {
		name   string
		header map[string][]string
		data   []byte
		want   Deploy
	}{
		{"native full", nil, []byte(nativeBase), wantDeploy("d-42", FormatJSON)},
		{
			"native OCI digest versions", nil,
			edit(t, nativeBase, set("version", "sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427"),
				set("previous_version", "sha256:aaaa")),
			func() Deploy {
				d := wantDeploy("d-42", FormatJSON)
				d.Version, d.PreviousVersion = "sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427", "sha256:aaaa"
				return d
			}(),
		},
		{
			"native minimal", nil,
			[]byte(`{"id":"d-1","service":"shop","environment":"production","version":"1.0"}`),
			Deploy{ID: "d-1", Service: "shop", Environment: "production", Version: "1.0", Format: FormatJSON},
		},
		{
			"native nulls are absent", nil,
			[]byte(`{"id":"d-1","service":"shop","environment":"production","version":"1.0","previous_version":null,"hosts":null,"labels":null,"time":null}`),
			Deploy{ID: "d-1", Service: "shop", Environment: "production", Version: "1.0", Format: FormatJSON},
		},
		{
			"native ipv4, ipv6, bracketed ipv6 with port, plain names", nil,
			edit(t, nativeBase, set("hosts", []string{"10.0.0.1", "10.0.0.2:2222", "::1", "[2001:db8::1]:22", "[2001:db8::2]", "web_2", "web-3.internal:65535"})),
			func() Deploy {
				d := wantDeploy("d-42", FormatJSON)
				d.Hosts = []string{"10.0.0.1", "10.0.0.2:2222", "::1", "[2001:db8::1]:22", "[2001:db8::2]", "web_2", "web-3.internal:65535"}
				return d
			}(),
		},
		{
			"native time with offset is UTC", nil,
			edit(t, nativeBase, set("time", "2026-11-25T19:00:00+01:00")),
			wantDeploy("d-42", FormatJSON),
		},
		{"cdevent bare", nil, []byte(cdBase), wantDeploy(cdID, FormatCDEvent)},
		{"cdevent upgraded", nil, upgraded, wantDeploy(cdID, FormatCDEvent)},
		{
			"cdevent 0.4 (context.version, subject.type, deployed 0.2.0)", nil,
			edit(t, cdBase, del("context.specversion"), set("context.version", "0.4.1"),
				set("context.type", "dev.cdevents.service.deployed.0.2.0"), set("subject.type", "service")),
			wantDeploy(cdID, FormatCDEvent),
		},
		{
			"cdevent minimal, version from customData when the purl has none", nil,
			edit(t, cdBase, set("subject.content.artifactId", "pkg:oci/shop?repository_url=registry.example.com"),
				set("customData", map[string]any{"version": "2026.11.25-1"}), del("customDataContentType"),
				del("context.links"), del("context.chainId"), del("context.schemaUri")),
			Deploy{ID: cdID, Service: "shop", Environment: "production", Version: "2026.11.25-1", Time: deployTime, Format: FormatCDEvent},
		},
		{
			"cdevent purl and customData agree", nil,
			edit(t, cdBase, set("customData.version", "2026.11.25-1")),
			wantDeploy(cdID, FormatCDEvent),
		},
		{
			// The spec's conformance examples name the artifact by digest.
			"cdevent OCI digest purl", nil,
			edit(t, cdBase, set("subject.content.artifactId", "pkg:oci/myapp@sha256%3A0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427")),
			func() Deploy {
				d := wantDeploy(cdID, FormatCDEvent)
				d.Version = "sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427"
				return d
			}(),
		},
		{
			"cdevent customData.version wins over the purl's", nil,
			edit(t, cdBase, set("customData.version", "2026.11.25-2")),
			func() Deploy { d := wantDeploy(cdID, FormatCDEvent); d.Version = "2026.11.25-2"; return d }(),
		},
		{
			// Only the version that names the release directory has to be
			// one: the purl's is then an artifact identifier, nothing more.
			"cdevent customData.version wins over a purl version that is no release name", nil,
			edit(t, cdBase, set("subject.content.artifactId", "pkg:oci/myapp@sha512%3A"+strings.Repeat("ab", 64)),
				set("customData.version", "2026.11.25-1")),
			wantDeploy(cdID, FormatCDEvent),
		},
		{
			"cdevent percent-encoded purl version", nil,
			edit(t, cdBase, set("subject.content.artifactId", "pkg:generic/shop@2026.11.25-1%2Bbuild.7")),
			func() Deploy { d := wantDeploy(cdID, FormatCDEvent); d.Version = "2026.11.25-1+build.7"; return d }(),
		},
		{
			"cdevent opaque customData is ignored", nil,
			edit(t, cdBase, set("customData", "PGRhdGE+"), set("customDataContentType", "application/xml")),
			Deploy{ID: cdID, Service: "shop", Environment: "production", Version: "2026.11.25-1", Time: deployTime, Format: FormatCDEvent},
		},
		{"structured by content type", ceHeader, structured(t, []byte(cdBase)), wantDeploy(cdID, FormatCloudEventStructured)},
		{"structured by specversion", nil, structured(t, []byte(cdBase)), wantDeploy(cdID, FormatCloudEventStructured)},
		{"structured upgraded", ceHeader, structured(t, upgraded), wantDeploy(cdID, FormatCloudEventStructured)},
		{
			"structured with extensions, no datacontenttype", ceHeader,
			structured(t, []byte(cdBase), del("datacontenttype"), set("traceparent", "00-abc-def-01"), set("partitionkey", 7), set("sampled", true)),
			wantDeploy(cdID, FormatCloudEventStructured),
		},
		{
			"structured data_base64", ceHeader,
			structured(t, []byte(cdBase), del("data"), set("data_base64", []byte(cdBase))),
			wantDeploy(cdID, FormatCloudEventStructured),
		},
		{"binary", binaryHeaders("dev.cdevents.service.deployed.0.3.0"), []byte(cdBase), wantDeploy(cdID, FormatCloudEventBinary)},
		{
			"binary, header names in other cases, no Content-Type",
			map[string][]string{
				"Ce-Specversion": {"1.0"}, "CE-ID": {"x"}, "ce-Source": {"/ci"},
				"Ce-Type": {"dev.cdevents.service.deployed.0.3.0"}, "Nats-Msg-Id": {"x"},
			},
			[]byte(cdBase), wantDeploy(cdID, FormatCloudEventBinary),
		},
		{"binary upgraded", binaryHeaders("dev.cdevents.service.upgraded.0.3.0"), upgraded, wantDeploy(cdID, FormatCloudEventBinary)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeDeploy(subj, tt.header, tt.data)
			if err != nil {
				t.Fatalf("DecodeDeploy: %v", err)
			}
			if !got.Time.Equal(tt.want.Time) {
				t.Errorf("time %v, want %v", got.Time, tt.want.Time)
			}
			got.Time, tt.want.Time = time.Time{}, time.Time{}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("decoded deploy does not pass Validate: %v", err)
			}
		})
	}
}

func TestDecodeDeployRejects(t *testing.T) {
	deployed := "dev.cdevents.service.deployed.0.3.0"
	tests := []struct {
		name    string
		subject string // default subj
		header  map[string][]string
		data    []byte
		field   string
	}{
		// Envelope.
		{name: "over 1 MiB", data: append([]byte(nativeBase), make([]byte, MaxEventSize+1-len(nativeBase))...), field: "size"},
		{name: "over 1 MiB of spaces", data: []byte(strings.Repeat(" ", MaxEventSize+1)), field: "size"},
		{name: "not JSON", data: []byte(`{"id": "d-42",`), field: "json"},
		{name: "empty", data: []byte(``), field: "json"},
		{name: "trailing data", data: []byte(nativeBase + ` {}`), field: "json"},
		{name: "trailing garbage", data: []byte(nativeBase + `x`), field: "json"},
		{name: "array", data: []byte(`[1,2]`), field: "json"},
		{name: "null", data: []byte(`null`), field: "json"},
		{name: "string", data: []byte(`"deploy"`), field: "json"},
		{name: "invalid UTF-8", data: []byte("{\"id\": \"d-\xff\"}"), field: "json"},
		{name: "deeply nested", data: []byte(`{"labels":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`), field: "json"},

		// Native JSON fields.
		{name: "unknown field", data: edit(t, nativeBase, set("rollback", true)), field: "rollback"},
		{name: "field in other case", data: edit(t, nativeBase, del("service"), set("Service", "shop")), field: "Service"},
		{name: "camelCase field", data: edit(t, nativeBase, del("previous_version"), set("previousVersion", "1")), field: "previousVersion"},
		{name: "duplicate field", data: []byte(`{"id":"d-1","service":"shop","service":"admin","environment":"production","version":"1"}`), field: "service"},
		{name: "missing id", data: edit(t, nativeBase, del("id")), field: "id"},
		{name: "null id", data: edit(t, nativeBase, set("id", nil)), field: "id"},
		{name: "id with slash", data: edit(t, nativeBase, set("id", "a/b")), field: "id"},
		{name: "id with space", data: edit(t, nativeBase, set("id", "a b")), field: "id"},
		{name: "id too long", data: edit(t, nativeBase, set("id", strings.Repeat("a", 201))), field: "id"},
		{name: "number for id", data: edit(t, nativeBase, set("id", 42)), field: "id"},
		{name: "huge number for service", data: []byte(`{"id":"d-1","service":1e999999,"environment":"production","version":"1"}`), field: "service"},
		{name: "object for service", data: edit(t, nativeBase, set("service", map[string]any{"x": 1})), field: "service"},
		{name: "missing service", data: edit(t, nativeBase, del("service")), field: "service"},
		{name: "traversal service", data: edit(t, nativeBase, set("service", "../../etc")), field: "service"},
		{name: "service with a trailing dot", data: edit(t, nativeBase, set("service", "shop.")), field: "service"},
		{name: "environment with an empty token", data: edit(t, nativeBase, set("environment", "prod..eu")), field: "environment"},
		{name: "dots service", data: edit(t, nativeBase, set("service", "shop..x")), field: "service"},
		{name: "shell service", data: edit(t, nativeBase, set("service", "shop;rm -rf /")), field: "service"},
		{name: "wildcard service", data: edit(t, nativeBase, set("service", "*")), field: "service"},
		{name: "long service", data: edit(t, nativeBase, set("service", strings.Repeat("s", 64))), field: "service"},
		{name: "bad environment", data: edit(t, nativeBase, set("environment", "prod>")), field: "environment"},
		{name: "empty environment", data: edit(t, nativeBase, set("environment", "")), field: "environment"},
		{name: "missing version", data: edit(t, nativeBase, del("version")), field: "version"},
		{name: "version with slash", data: edit(t, nativeBase, set("version", "1.0/../../x")), field: "version"},
		{name: "version dotdot", data: edit(t, nativeBase, set("version", "..")), field: "version"},
		{name: "version with dotdot inside", data: edit(t, nativeBase, set("version", "1..2")), field: "version"},
		{name: "version leading dot", data: edit(t, nativeBase, set("version", ".hidden")), field: "version"},
		{name: "version starting with a colon", data: edit(t, nativeBase, set("version", ":abc")), field: "version"},
		{name: "version with colon and slash", data: edit(t, nativeBase, set("version", "sha256:a/b")), field: "version"},
		{name: "bool version", data: edit(t, nativeBase, set("version", true)), field: "version"},
		{name: "previous version traversal", data: edit(t, nativeBase, set("previous_version", "../current")), field: "previous_version"},
		{name: "hosts not an array", data: edit(t, nativeBase, set("hosts", "web1")), field: "hosts"},
		{name: "host option injection", data: edit(t, nativeBase, set("hosts", []string{"web1", "-oProxyCommand=x"})), field: "hosts[1]"},
		{name: "host with space", data: edit(t, nativeBase, set("hosts", []string{"web1 web2"})), field: "hosts[0]"},
		{name: "host command substitution", data: edit(t, nativeBase, set("hosts", []string{"$(id)"})), field: "hosts[0]"},
		{name: "host backticks", data: edit(t, nativeBase, set("hosts", []string{"`id`.example.com"})), field: "hosts[0]"},
		{name: "host user@", data: edit(t, nativeBase, set("hosts", []string{"root@web1"})), field: "hosts[0]"},
		{name: "host port 0", data: edit(t, nativeBase, set("hosts", []string{"web1:0"})), field: "hosts[0]"},
		{name: "host port 70000", data: edit(t, nativeBase, set("hosts", []string{"web1:22", "web2:70000"})), field: "hosts[1]"},
		{name: "host empty port", data: edit(t, nativeBase, set("hosts", []string{"web1:"})), field: "hosts[0]"},
		{name: "host signed port", data: edit(t, nativeBase, set("hosts", []string{"web1:+22"})), field: "hosts[0]"},
		{name: "host bad ipv4", data: edit(t, nativeBase, set("hosts", []string{"10.0.0.256"})), field: "hosts[0]"},
		{name: "host ipv6 zone", data: edit(t, nativeBase, set("hosts", []string{"[fe80::1%eth0]:22"})), field: "hosts[0]"},
		{name: "host bad bracket", data: edit(t, nativeBase, set("hosts", []string{"[::1:22"})), field: "hosts[0]"},
		{name: "host empty", data: edit(t, nativeBase, set("hosts", []string{""})), field: "hosts[0]"},
		{name: "host newline", data: edit(t, nativeBase, set("hosts", []string{"web1\n-oProxyCommand=x"})), field: "hosts[0]"},
		{name: "host null", data: []byte(`{"id":"d-1","service":"shop","environment":"production","version":"1","hosts":["a",null]}`), field: "hosts[1]"},
		{name: "host number", data: []byte(`{"id":"d-1","service":"shop","environment":"production","version":"1","hosts":["a",22]}`), field: "hosts[1]"},
		{name: "duplicate host", data: edit(t, nativeBase, set("hosts", []string{"web1", "web1"})), field: "hosts[1]"},
		{name: "too many hosts", data: edit(t, nativeBase, set("hosts", manyHosts(MaxHosts+1))), field: "hosts"},
		{name: "labels not an object", data: edit(t, nativeBase, set("labels", []string{"a"})), field: "labels"},
		{name: "label control char", data: edit(t, nativeBase, set("labels", map[string]string{"team": "pay\x1b[31mments"})), field: "labels.team"},
		{name: "label newline", data: edit(t, nativeBase, set("labels", map[string]string{"team": "a\nb"})), field: "labels.team"},
		{name: "label bidi override", data: edit(t, nativeBase, set("labels", map[string]string{"team": "a\u202eb"})), field: "labels.team"},
		{name: "label lone surrogate", data: []byte(`{"id":"d-1","service":"shop","environment":"production","version":"1","labels":{"a":"\ud800"}}`), field: "labels.a"},
		{name: "label bad key", data: edit(t, nativeBase, set("labels", map[string]string{"a b": "x"})), field: "labels"},
		{name: "label number", data: edit(t, nativeBase, set("labels", map[string]any{"team": 1})), field: "labels.team"},
		{name: "label null", data: edit(t, nativeBase, set("labels", map[string]any{"team": nil})), field: "labels.team"},
		{name: "label value too long", data: edit(t, nativeBase, set("labels", map[string]string{"team": strings.Repeat("x", 257)})), field: "labels.team"},
		{name: "too many labels", data: edit(t, nativeBase, set("labels", manyLabels(MaxLabels+1))), field: "labels"},
		{name: "bad time", data: edit(t, nativeBase, set("time", "yesterday")), field: "time"},
		{name: "empty time", data: edit(t, nativeBase, set("time", "")), field: "time"},
		{name: "number time", data: edit(t, nativeBase, set("time", 1764093600)), field: "time"},
		// Found by FuzzDecodeNative: kept in UTC these are years 0 and
		// 10000, which RFC 3339 cannot write back.
		{name: "time before year 1 in UTC", data: edit(t, nativeBase, set("time", "0000-01-01T00:00:00+01:00")), field: "time"},
		{name: "time after year 9999 in UTC", data: edit(t, nativeBase, set("time", "9999-12-31T23:00:00-02:00")), field: "time"},
		{name: "subject disagrees on service", subject: "deploys.production.admin", data: []byte(nativeBase), field: "subject"},
		{name: "subject disagrees on environment", subject: "deploys.staging.shop", data: []byte(nativeBase), field: "subject"},
		{name: "subject of another stream", subject: "rollbacks.production.shop", data: []byte(nativeBase), field: "subject"},

		// CDEvents.
		{name: "cd non-CDEvents type", data: edit(t, cdBase, set("context.type", "com.example.deployed")), field: "context.type"},
		{name: "cd malformed type", data: edit(t, cdBase, set("context.type", "dev.cdevents.service.deployed")), field: "context.type"},
		{name: "cd type with leading zero", data: edit(t, cdBase, set("context.type", "dev.cdevents.service.deployed.0.03.0")), field: "context.type"},
		{name: "cd deployed major 1", data: edit(t, cdBase, set("context.type", "dev.cdevents.service.deployed.1.0.0")), field: "context.type"},
		{name: "cd number type", data: edit(t, cdBase, set("context.type", 1)), field: "context.type"},
		{name: "cd missing type", data: edit(t, cdBase, del("context.type")), field: "context.type"},
		{name: "cd missing context.id", data: edit(t, cdBase, del("context.id")), field: "context.id"},
		{name: "cd bad context.id", data: edit(t, cdBase, set("context.id", "$(id)")), field: "context.id"},
		{name: "cd missing specversion", data: edit(t, cdBase, del("context.specversion")), field: "context.specversion"},
		{name: "cd specversion 1.0", data: edit(t, cdBase, set("context.specversion", "1.0.0")), field: "context.specversion"},
		{name: "cd both spec versions", data: edit(t, cdBase, set("context.version", "0.4.1")), field: "context.version"},
		{name: "cd missing source", data: edit(t, cdBase, del("context.source")), field: "context.source"},
		{name: "cd missing timestamp", data: edit(t, cdBase, del("context.timestamp")), field: "context.timestamp"},
		{name: "cd bad timestamp", data: edit(t, cdBase, set("context.timestamp", "2026-13-01T00:00:00Z")), field: "context.timestamp"},
		{name: "cd unknown context field", data: edit(t, cdBase, set("context.extra", "x")), field: "context.extra"},
		{name: "cd links not array", data: edit(t, cdBase, set("context.links", "x")), field: "context.links"},
		{name: "cd unknown top-level field", data: edit(t, cdBase, set("extra", 1)), field: "extra"},
		{name: "cd context not object", data: edit(t, cdBase, set("context", "x")), field: "context"},
		{name: "cd missing subject", data: edit(t, cdBase, del("subject")), field: "subject"},
		{name: "cd subject not object", data: edit(t, cdBase, set("subject", []int{1})), field: "subject"},
		{name: "cd missing subject.id", data: edit(t, cdBase, del("subject.id")), field: "subject.id"},
		{name: "cd traversal subject.id", data: edit(t, cdBase, set("subject.id", "../../etc")), field: "subject.id"},
		{name: "cd shell subject.id", data: edit(t, cdBase, set("subject.id", "shop;rm -rf /")), field: "subject.id"},
		{name: "cd subject.type not service", data: edit(t, cdBase, set("subject.type", "pipelineRun")), field: "subject.type"},
		{name: "cd missing content", data: edit(t, cdBase, del("subject.content")), field: "subject.content"},
		{name: "cd unknown content field", data: edit(t, cdBase, set("subject.content.version", "1")), field: "subject.content.version"},
		{name: "cd missing environment", data: edit(t, cdBase, del("subject.content.environment")), field: "subject.content.environment"},
		{name: "cd bad environment id", data: edit(t, cdBase, set("subject.content.environment.id", "prod uction")), field: "subject.content.environment.id"},
		{name: "cd number environment id", data: edit(t, cdBase, set("subject.content.environment.id", 3)), field: "subject.content.environment.id"},
		{name: "cd missing artifactId", data: edit(t, cdBase, del("subject.content.artifactId")), field: "subject.content.artifactId"},
		{name: "cd artifactId not a purl", data: edit(t, cdBase, set("subject.content.artifactId", "shop-2026.11.25-1.tar.gz")), field: "subject.content.artifactId"},
		{name: "cd purl version with slash", data: edit(t, cdBase, set("subject.content.artifactId", "pkg:generic/shop@1.0%2F..%2F..%2Fetc")), field: "subject.content.artifactId"},
		{name: "cd purl version dotdot", data: edit(t, cdBase, set("subject.content.artifactId", "pkg:generic/shop@..")), field: "subject.content.artifactId"},
		// 7+128 characters: over the 128 a version may have.
		{name: "cd purl sha512 digest", data: edit(t, cdBase, set("subject.content.artifactId", "pkg:oci/myapp@sha512%3A"+strings.Repeat("ab", 64))), field: "subject.content.artifactId"},
		{name: "cd no version anywhere", data: edit(t, cdBase, set("subject.content.artifactId", "pkg:generic/shop")), field: "subject.content.artifactId"},
		{name: "cd customData version traversal", data: edit(t, cdBase, set("subject.content.artifactId", "pkg:generic/shop"), set("customData.version", "../x")), field: "customData.version"},
		{name: "cd customData version traversal beside a purl version", data: edit(t, cdBase, set("customData.version", "../x")), field: "customData.version"},
		{name: "cd customData version empty", data: edit(t, cdBase, set("subject.content.artifactId", "pkg:generic/shop"), set("customData.version", "")), field: "subject.content.artifactId"},
		{name: "cd artifactId not a purl beside customData.version", data: edit(t, cdBase, set("subject.content.artifactId", "shop.tar.gz"), set("customData.version", "1")), field: "subject.content.artifactId"},
		{name: "cd customData previousVersion bad", data: edit(t, cdBase, set("customData.previousVersion", "a/b")), field: "customData.previousVersion"},
		{name: "cd customData previousVersion number", data: edit(t, cdBase, set("customData.previousVersion", 3)), field: "customData.previousVersion"},
		{name: "cd customData host injection", data: edit(t, cdBase, set("customData.hosts", []string{"web1", "-oProxyCommand=x"})), field: "customData.hosts[1]"},
		{name: "cd customData hosts string", data: edit(t, cdBase, set("customData.hosts", "web1")), field: "customData.hosts"},
		{name: "cd customData label control", data: edit(t, cdBase, set("customData.labels", map[string]string{"team": "a\x00b"})), field: "customData.labels.team"},
		{name: "cd customDataContentType bad", data: edit(t, cdBase, set("customDataContentType", "not a type")), field: "customDataContentType"},
		{name: "cd subject disagrees", subject: "deploys.staging.shop", data: []byte(cdBase), field: "subject"},

		// Structured CloudEvents.
		{name: "ce non-CDEvents type", header: ceHeader, data: structured(t, []byte(cdBase), set("type", "com.example.deployed")), field: "type"},
		{name: "ce unknown CDEvents version", header: ceHeader, data: structured(t, edit(t, cdBase, set("context.type", "dev.cdevents.service.deployed.2.0.0")), set("type", "dev.cdevents.service.deployed.2.0.0")), field: "type"},
		{name: "ce type disagrees with CDEvent", header: ceHeader, data: structured(t, []byte(cdBase), set("type", "dev.cdevents.service.upgraded.0.3.0")), field: "type"},
		{name: "ce missing id", header: ceHeader, data: structured(t, []byte(cdBase), del("id")), field: "id"},
		{name: "ce number id", header: ceHeader, data: structured(t, []byte(cdBase), set("id", 1)), field: "id"},
		{name: "ce missing source", header: ceHeader, data: structured(t, []byte(cdBase), del("source")), field: "source"},
		{name: "ce missing type", header: ceHeader, data: structured(t, []byte(cdBase), del("type")), field: "type"},
		{name: "ce specversion 0.3", header: ceHeader, data: structured(t, []byte(cdBase), set("specversion", "0.3")), field: "specversion"},
		{name: "ce specversion 2", header: ceHeader, data: structured(t, []byte(cdBase), set("specversion", "2.0")), field: "specversion"},
		{name: "ce number specversion", header: ceHeader, data: structured(t, []byte(cdBase), set("specversion", 1.0)), field: "specversion"},
		{name: "ce content type without specversion", header: ceHeader, data: structured(t, []byte(cdBase), del("specversion")), field: "specversion"},
		{name: "ce bad time", header: ceHeader, data: structured(t, []byte(cdBase), set("time", "noon")), field: "time"},
		{name: "ce xml data", header: ceHeader, data: structured(t, []byte(cdBase), set("datacontenttype", "application/xml")), field: "datacontenttype"},
		{name: "ce missing data", header: ceHeader, data: structured(t, []byte(cdBase), del("data")), field: "data"},
		{name: "ce data is a string", header: ceHeader, data: structured(t, []byte(cdBase), set("data", "{}")), field: "data"},
		{name: "ce data and data_base64", header: ceHeader, data: structured(t, []byte(cdBase), set("data_base64", "e30=")), field: "data"},
		{name: "ce data_base64 number", header: ceHeader, data: structured(t, []byte(cdBase), del("data"), set("data_base64", 1)), field: "data_base64"},
		{name: "ce data_base64 not base64", header: ceHeader, data: structured(t, []byte(cdBase), del("data"), set("data_base64", "!!")), field: "data_base64"},
		{name: "ce data_base64 invalid UTF-8", header: ceHeader, data: structured(t, []byte(cdBase), del("data"), set("data_base64", []byte("{\"a\":\"\xff\"}"))), field: "data"},
		{name: "ce extension object", header: ceHeader, data: structured(t, []byte(cdBase), set("ext", map[string]any{"a": 1})), field: "ext"},
		{name: "ce extension float", header: ceHeader, data: structured(t, []byte(cdBase), set("ext", 1.5)), field: "ext"},
		{name: "ce extension bad name", header: ceHeader, data: structured(t, []byte(cdBase), set("my-ext", "x")), field: "my-ext"},
		{name: "ce bad CDEvent inside", header: ceHeader, data: structured(t, edit(t, cdBase, set("subject.id", "../x"))), field: "subject.id"},
		{name: "ce subject disagrees", subject: "deploys.production.admin", header: ceHeader, data: structured(t, []byte(cdBase)), field: "subject"},

		// Binary CloudEvents.
		{name: "bin missing ce-id", header: without(binaryHeaders(deployed), "ce-id"), data: []byte(cdBase), field: "id"},
		{name: "bin missing ce-source", header: without(binaryHeaders(deployed), "ce-source"), data: []byte(cdBase), field: "source"},
		{name: "bin missing ce-type", header: without(binaryHeaders(deployed), "ce-type"), data: []byte(cdBase), field: "type"},
		{name: "bin empty specversion", header: with(binaryHeaders(deployed), "ce-specversion", ""), data: []byte(cdBase), field: "specversion"},
		{name: "bin two specversions", header: with(binaryHeaders(deployed), "Ce-Specversion", "0.3"), data: []byte(cdBase), field: "specversion"},
		{name: "bin ce-type disagrees", header: binaryHeaders("dev.cdevents.service.upgraded.0.3.0"), data: []byte(cdBase), field: "type"},
		{name: "bin non-CDEvents type", header: binaryHeaders("com.example.deploy"), data: []byte(cdBase), field: "type"},
		{name: "bin bad ce-time", header: with(binaryHeaders(deployed), "ce-time", "now"), data: []byte(cdBase), field: "time"},
		{name: "bin text body", header: with(binaryHeaders(deployed), "Content-Type", "text/plain"), data: []byte(cdBase), field: "datacontenttype"},
		{name: "bin empty body", header: binaryHeaders(deployed), data: nil, field: "data"},
		{name: "bin body not JSON", header: binaryHeaders(deployed), data: []byte(`{`), field: "data"},
		{name: "bin body array", header: binaryHeaders(deployed), data: []byte(`[]`), field: "data"},
		{name: "bin body native JSON", header: binaryHeaders(deployed), data: []byte(nativeBase), field: "id"},
		{name: "bin over 1 MiB", header: binaryHeaders(deployed), data: make([]byte, MaxEventSize+1), field: "size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			subject := tt.subject
			if subject == "" {
				subject = subj
			}
			d, err := DecodeDeploy(subject, tt.header, tt.data)
			var rej *RejectError
			if !errors.As(err, &rej) {
				t.Fatalf("got %+v, %v; want a *RejectError on %q", d, err, tt.field)
			}
			if rej.Field != tt.field {
				t.Errorf("rejected field %q (%v), want %q", rej.Field, err, tt.field)
			}
			if !reflect.DeepEqual(d, Deploy{}) {
				t.Errorf("rejection returned a non-zero Deploy %+v", d)
			}
		})
	}
}

func TestDecodeDeployNotDeploy(t *testing.T) {
	removed := edit(t, cdBase, set("context.type", "dev.cdevents.service.removed.0.3.0"), del("subject.content.artifactId"))
	pipeline := edit(t, cdBase, set("context.type", "dev.cdevents.pipelinerun.started.0.2.0"),
		set("subject", map[string]any{"id": "run-1", "content": map[string]any{"pipelineName": "build", "url": "https://ci/1"}}), del("customData"))
	custom := edit(t, cdBase, set("context.type", "dev.cdeventsx.harbor-quota.exceeded.0.1.0"))
	rolledBack := edit(t, cdBase, set("context.type", TypeServiceRolledBack))
	tests := []struct {
		name   string
		header map[string][]string
		data   []byte
		typ    string
	}{
		{"bare rolledback", nil, rolledBack, TypeServiceRolledBack},
		{"bare removed", nil, removed, "dev.cdevents.service.removed.0.3.0"},
		{"bare pipelinerun", nil, pipeline, "dev.cdevents.pipelinerun.started.0.2.0"},
		{"bare rolledback major 1", nil, edit(t, cdBase, set("context.type", "dev.cdevents.service.rolledback.1.0.0")), "dev.cdevents.service.rolledback.1.0.0"},
		{"bare custom event", nil, custom, "dev.cdeventsx.harbor-quota.exceeded.0.1.0"},
		{"structured removed", ceHeader, structured(t, removed), "dev.cdevents.service.removed.0.3.0"},
		{"binary pipelinerun", binaryHeaders("dev.cdevents.pipelinerun.started.0.2.0"), pipeline, "dev.cdevents.pipelinerun.started.0.2.0"},
		// Another event type need not match the subject: it starts nothing.
		{"rolledback on another subject", nil, edit(t, cdBase, set("context.type", TypeServiceRolledBack), set("subject.id", "admin")), TypeServiceRolledBack},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeDeploy(subj, tt.header, tt.data)
			var nd *NotDeployError
			if !errors.As(err, &nd) {
				t.Fatalf("got %v, want a *NotDeployError", err)
			}
			if nd.Type != tt.typ {
				t.Errorf("type %q, want %q", nd.Type, tt.typ)
			}
		})
	}

	// Not a deploy, but still has to be a well-formed CDEvent.
	_, err := DecodeDeploy(subj, nil, edit(t, string(removed), del("context.id")))
	var rej *RejectError
	if !errors.As(err, &rej) || rej.Field != "context.id" {
		t.Errorf("removed event without context.id: got %v, want a rejection of context.id", err)
	}
}

const rollbackBase = `{"id":"rb-01J","service":"shop","environment":"production","version":"2026.11.25-1",
 "to_version":"2026.11.24-3","hosts":["web1:22"],"labels":{"team":"payments"},
 "reason":"check orders-per-minute failed: 12 < 50\n(failure 2 of limit 1)","source":"validation",
 "run_id":"01JDX7","deploy_id":"d-42","deploy_seq":1234,"policy":"shop-orders","time":"2026-11-25T18:10:00Z"}`

func TestDecodeRollbackRequest(t *testing.T) {
	r, err := DecodeRollbackRequest("rollbacks.production.shop", []byte(rollbackBase))
	if err != nil {
		t.Fatal(err)
	}
	want := RollbackRequest{
		ID: "rb-01J", Service: "shop", Environment: "production", Version: "2026.11.25-1",
		ToVersion: "2026.11.24-3", Hosts: []string{"web1:22"}, Labels: map[string]string{"team": "payments"},
		Reason: "check orders-per-minute failed: 12 < 50\n(failure 2 of limit 1)", Source: SourceValidation,
		RunID: "01JDX7", DeployID: "d-42", DeploySeq: 1234, Policy: "shop-orders", Time: time.Date(2026, 11, 25, 18, 10, 0, 0, time.UTC),
	}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("got  %+v\nwant %+v", r, want)
	}

	minimal := `{"id":"m-1","service":"shop","environment":"production","reason":"manual","source":"manual"}`
	if r, err := DecodeRollbackRequest("rollbacks.production.shop", []byte(minimal)); err != nil || !r.Time.IsZero() {
		t.Errorf("minimal request: %+v, %v", r, err)
	}

	bad := []struct {
		name    string
		subject string
		data    []byte
		field   string
	}{
		{"size", "", make([]byte, MaxEventSize+1), "size"},
		{"not JSON", "", []byte(`{`), "json"},
		{"trailing", "", []byte(rollbackBase + `{}`), "json"},
		{"unknown field", "", edit(t, rollbackBase, set("force", true)), "force"},
		{"missing id", "", edit(t, rollbackBase, del("id")), "id"},
		{"bad id", "", edit(t, rollbackBase, set("id", "a b")), "id"},
		{"service traversal", "", edit(t, rollbackBase, set("service", "../../etc")), "service"},
		{"environment shell", "", edit(t, rollbackBase, set("environment", "prod;id")), "environment"},
		{"version slash", "", edit(t, rollbackBase, set("version", "a/b")), "version"},
		{"to_version dotdot", "", edit(t, rollbackBase, set("to_version", "..")), "to_version"},
		{"to_version number", "", edit(t, rollbackBase, set("to_version", 3)), "to_version"},
		{"host injection", "", edit(t, rollbackBase, set("hosts", []string{"-oProxyCommand=x"})), "hosts[0]"},
		{"label control", "", edit(t, rollbackBase, set("labels", map[string]string{"a": "\x07"})), "labels.a"},
		{"missing reason", "", edit(t, rollbackBase, del("reason")), "reason"},
		{"long reason", "", edit(t, rollbackBase, set("reason", strings.Repeat("x", MaxReasonLen+1))), "reason"},
		{"reason escape", "", edit(t, rollbackBase, set("reason", "ok\x1b[2J")), "reason"},
		{"missing source", "", edit(t, rollbackBase, del("source")), "source"},
		{"bad source", "", edit(t, rollbackBase, set("source", "cron")), "source"},
		{"bad run_id", "", edit(t, rollbackBase, set("run_id", "../x")), "run_id"},
		{"bad deploy_id", "", edit(t, rollbackBase, set("deploy_id", "a*")), "deploy_id"},
		{"deploy_seq zero", "", edit(t, rollbackBase, set("deploy_seq", 0)), "deploy_seq"},
		{"deploy_seq negative", "", edit(t, rollbackBase, set("deploy_seq", -3)), "deploy_seq"},
		{"deploy_seq fraction", "", edit(t, rollbackBase, set("deploy_seq", 1.5)), "deploy_seq"},
		{"deploy_seq string", "", edit(t, rollbackBase, set("deploy_seq", "12")), "deploy_seq"},
		{"policy control", "", edit(t, rollbackBase, set("policy", "a\nb")), "policy"},
		{"bad time", "", edit(t, rollbackBase, set("time", "soon")), "time"},
		{"deploys subject", "deploys.production.shop", []byte(rollbackBase), "subject"},
		{"other service subject", "rollbacks.production.admin", []byte(rollbackBase), "subject"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			subject := tt.subject
			if subject == "" {
				subject = "rollbacks.production.shop"
			}
			_, err := DecodeRollbackRequest(subject, tt.data)
			var rej *RejectError
			if !errors.As(err, &rej) {
				t.Fatalf("got %v, want a *RejectError on %q", err, tt.field)
			}
			if rej.Field != tt.field {
				t.Errorf("rejected field %q (%v), want %q", rej.Field, err, tt.field)
			}
		})
	}
}

func TestRejectErrorIsPrintable(t *testing.T) {
	// A hostile value ends up in logs and audit records: the error must not
	// carry it raw.
	_, err := DecodeDeploy(subj, nil, edit(t, nativeBase, set("service", "a\x1b[2J\u202e"+strings.Repeat("x", 500))))
	var rej *RejectError
	if !errors.As(err, &rej) {
		t.Fatal(err)
	}
	if strings.ContainsAny(rej.Value, "\x1b\u202e") || len(rej.Value) > 200 {
		t.Errorf("value not made printable and short: %q", rej.Value)
	}
	_, err = DecodeDeploy(subj, nil, []byte(`{"a\u001bb":1}`))
	if !errors.As(err, &rej) || strings.ContainsRune(rej.Field, 0x1b) {
		t.Errorf("unknown field name not made printable: %v", err)
	}
}

func manyHosts(n int) []string {
	h := make([]string, n)
	for i := range h {
		h[i] = "web-" + strconv.Itoa(i)
	}
	return h
}

func manyLabels(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m["l"+strconv.Itoa(i)] = "v"
	}
	return m
}
