package events

import (
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// conformanceDir holds the CDEvents specification's own examples, one
// directory per spec version (see its README.md).
const conformanceDir = "testdata/cdevents-conformance"

// The values every conformance example carries.
const (
	confID      = "271069a8-fc18-44f1-b38f-9d70a1695819"
	confService = "mySubject123"
	confEnv     = "test123"
	confDigest  = "sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427"
	confSubject = "deploys." + confEnv + "." + confService
)

var confTime = time.Date(2023, 3, 20, 14, 27, 5, 315384000, time.UTC)

// conformanceFiles returns the examples by spec version, failing unless
// every version listed below is there with its deploy and rollback types,
// so that a lost directory cannot make the test pass by testing nothing.
func conformanceFiles(t testing.TB) map[string][]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(conformanceDir, "*", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	byVersion := map[string][]string{}
	for _, f := range files {
		v := filepath.Base(filepath.Dir(f))
		byVersion[v] = append(byVersion[v], f)
	}
	for _, v := range []string{"0.4.1", "0.5.0", "0.5.1", "0.6.0-draft"} {
		for _, name := range []string{"service_deployed.json", "service_upgraded.json", "service_rolledback.json"} {
			if !slices.Contains(byVersion[v], filepath.Join(conformanceDir, v, name)) {
				t.Fatalf("%s/%s/%s is missing", conformanceDir, v, name)
			}
		}
	}
	return byVersion
}

// cdContextOf reads what a CloudEvent around a CDEvent copies from it
// (cloudevents-binding.md).
type cdContextOf struct {
	Context struct {
		ID, Source, Type, Timestamp string
	} `json:"context"`
	Subject struct {
		ID string `json:"id"`
	} `json:"subject"`
}

// asCloudEvents returns cd bare, as a structured-mode CloudEvent and as a
// binary-mode one, with the attributes the CDEvents binding prescribes.
func asCloudEvents(t *testing.T, cd []byte) []struct {
	mode   string
	header map[string][]string
	data   []byte
	format string
} {
	t.Helper()
	var c cdContextOf
	if err := json.Unmarshal(cd, &c); err != nil {
		t.Fatal(err)
	}
	envelope, err := json.Marshal(map[string]any{
		"specversion": "1.0", "id": c.Context.ID, "source": c.Context.Source, "type": c.Context.Type,
		"subject": c.Subject.ID, "time": c.Context.Timestamp, "datacontenttype": "application/json",
		"data": json.RawMessage(cd),
	})
	if err != nil {
		t.Fatal(err)
	}
	return []struct {
		mode   string
		header map[string][]string
		data   []byte
		format string
	}{
		{"bare", nil, cd, FormatCDEvent},
		{"structured", map[string][]string{"Content-Type": {ContentTypeCloudEvents}}, envelope, FormatCloudEventStructured},
		{"binary", map[string][]string{
			"ce-specversion": {"1.0"}, "ce-id": {c.Context.ID}, "ce-source": {c.Context.Source},
			"ce-type": {c.Context.Type}, "ce-subject": {c.Subject.ID}, "ce-time": {c.Context.Timestamp},
			"Content-Type": {"application/json"},
		}, cd, FormatCloudEventBinary},
	}
}

func isDeployExample(file string) bool {
	base := filepath.Base(file)
	return base == "service_deployed.json" || base == "service_upgraded.json"
}

// TestCDEventsConformance decodes the specification's conformance examples
// of 0.4.1, 0.5.x and the current draft, each bare and in both CloudEvents
// modes. Their artifactId names the release by OCI digest
// (pkg:oci/myapp@sha256%3A0b31...), which is the version (README, "Deploy
// event (native JSON)"); customData.version, when given, wins over it.
func TestCDEventsConformance(t *testing.T) {
	byVersion := conformanceFiles(t)
	versions := slices.Sorted(maps.Keys(byVersion))
	for _, version := range versions {
		for _, file := range byVersion[version] {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			name := version + "/" + strings.TrimSuffix(filepath.Base(file), ".json")
			var c cdContextOf
			if err := json.Unmarshal(raw, &c); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if !isDeployExample(file) {
				for _, m := range asCloudEvents(t, raw) {
					t.Run(name+"/"+m.mode, func(t *testing.T) {
						d, err := DecodeDeploy(confSubject, m.header, m.data)
						var nd *NotDeployError
						if !errors.As(err, &nd) {
							t.Fatalf("got %+v, %v; want a *NotDeployError (starts no run, is not rejected)", d, err)
						}
						if nd.Type != c.Context.Type {
							t.Errorf("type %q, want %q", nd.Type, c.Context.Type)
						}
					})
				}
				continue
			}

			want := Deploy{ID: confID, Service: confService, Environment: confEnv, Version: confDigest, Time: confTime}
			withCustom := edit(t, string(raw), set("customData", map[string]any{
				"version": "2026.11.25-1", "previousVersion": "sha256:aaaa", "hosts": []string{"web1:22"},
			}))
			wantCustom := want
			wantCustom.Version, wantCustom.PreviousVersion, wantCustom.Hosts = "2026.11.25-1", "sha256:aaaa", []string{"web1:22"}
			for _, ex := range []struct {
				suffix string
				data   []byte
				want   Deploy
			}{
				{"", raw, want},
				{"+customData.version", withCustom, wantCustom},
			} {
				for _, m := range asCloudEvents(t, ex.data) {
					t.Run(name+ex.suffix+"/"+m.mode, func(t *testing.T) {
						got, err := DecodeDeploy(confSubject, m.header, m.data)
						if err != nil {
							t.Fatalf("DecodeDeploy: %v", err)
						}
						w := ex.want
						w.Format = m.format
						if !reflect.DeepEqual(got, w) {
							t.Errorf("got  %+v\nwant %+v", got, w)
						}
						if err := got.Validate(); err != nil {
							t.Errorf("decoded deploy does not pass Validate: %v", err)
						}
					})
				}
			}
		}
	}
}
