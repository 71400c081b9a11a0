package events

import (
	"encoding/json"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func fullDeploy() Deploy {
	return Deploy{
		ID: "d-42", Service: "shop", Environment: "production", Version: "2026.11.25-1+build.7",
		PreviousVersion: "2026.11.24-3",
		Hosts:           []string{"web1.example.com:22", "10.0.0.7", "[2001:db8::1]:2222", "::1"},
		Time:            time.Date(2026, 11, 25, 18, 0, 0, 123456789, time.FixedZone("CET", 3600)),
		Labels:          map[string]string{"team": "payments", "change": "CHG-1 \"blue\" <green> & ü"},
	}
}

func assertSameDeploy(t *testing.T, got, want Deploy) {
	t.Helper()
	if !got.Time.Equal(want.Time) {
		t.Errorf("time %v, want %v", got.Time, want.Time)
	}
	got.Time, want.Time = time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestEncodeNativeRoundTrip(t *testing.T) {
	for _, d := range []Deploy{
		fullDeploy(),
		{ID: NewID(), Service: "s", Environment: "e", Version: "1"},
		{ID: NewID(), Service: "s", Environment: "e", Version: ociDigest, PreviousVersion: "sha256:aaaa"},
	} {
		b, err := EncodeNative(d)
		if err != nil {
			t.Fatal(err)
		}
		if d.Time.IsZero() && strings.Contains(string(b), `"time"`) {
			t.Errorf("zero time written: %s", b)
		}
		got, err := DecodeDeploy(Subject(DeploysPrefix, d.Environment, d.Service), nil, b)
		if err != nil {
			t.Fatalf("decoding %s: %v", b, err)
		}
		d.Format = FormatJSON
		assertSameDeploy(t, got, d)
	}
}

func TestEncodeCDEventRoundTrip(t *testing.T) {
	for _, d := range []Deploy{
		fullDeploy(),
		{ID: "urn:uuid:8d2c2a6e-3b4c-4f1e-9a51-6c1f3e1d2b00", Service: "shop", Environment: "production", Version: "1.0.0", Time: deployTime},
		{ID: "d-7", Service: "shop", Environment: "production", Version: ociDigest, PreviousVersion: "sha256:aaaa", Time: deployTime},
	} {
		b, err := EncodeCDEvent(d, "/rollback-watcher/publish")
		if err != nil {
			t.Fatal(err)
		}
		subject := Subject(DeploysPrefix, d.Environment, d.Service)
		for _, header := range []map[string][]string{ceHeader, nil} {
			got, err := DecodeDeploy(subject, header, b)
			if err != nil {
				t.Fatalf("decoding %s: %v", b, err)
			}
			want := d
			want.Format = FormatCloudEventStructured
			assertSameDeploy(t, got, want)
		}
	}
}

func TestEncodeCDEventShape(t *testing.T) {
	b, err := EncodeCDEvent(fullDeploy(), "/rollback-watcher/publish")
	if err != nil {
		t.Fatal(err)
	}
	var ce map[string]json.RawMessage
	if err := json.Unmarshal(b, &ce); err != nil {
		t.Fatal(err)
	}
	assertKeys(t, "cloudevent", ce, "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data")
	for k, want := range map[string]string{
		"specversion": "1.0", "id": "d-42", "source": "/rollback-watcher/publish",
		"type": TypeServiceDeployed, "subject": "shop", "datacontenttype": "application/json",
		"time": "2026-11-25T17:00:00.123456789Z",
	} {
		var got string
		_ = json.Unmarshal(ce[k], &got)
		if got != want {
			t.Errorf("cloudevent %s = %q, want %q", k, got, want)
		}
	}

	// The data is a CDEvents 0.5 service.deployed event: only the members
	// its schema allows (additionalProperties is false at every level).
	var cd struct {
		Context    map[string]string
		Subject    map[string]json.RawMessage
		CustomData map[string]json.RawMessage `json:"customData"`
		CDCT       string                     `json:"customDataContentType"`
	}
	var top map[string]json.RawMessage
	_ = json.Unmarshal(ce["data"], &top)
	assertKeys(t, "data", top, "context", "subject", "customData", "customDataContentType")
	if err := json.Unmarshal(ce["data"], &cd); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"specversion": "0.5.0", "id": "d-42", "source": "/rollback-watcher/publish",
		"type": "dev.cdevents.service.deployed.0.3.0", "timestamp": "2026-11-25T17:00:00.123456789Z",
	}
	if !maps.Equal(cd.Context, want) {
		t.Errorf("context %v, want %v", cd.Context, want)
	}
	assertKeys(t, "subject", cd.Subject, "id", "content")
	var content struct {
		Environment map[string]string
		ArtifactID  string `json:"artifactId"`
	}
	_ = json.Unmarshal(cd.Subject["content"], &content)
	if content.ArtifactID != "pkg:generic/shop@2026.11.25-1%2Bbuild.7" || content.Environment["id"] != "production" || len(content.Environment) != 1 {
		t.Errorf("content %+v", content)
	}
	assertKeys(t, "customData", cd.CustomData, "previousVersion", "hosts", "labels")
	if cd.CDCT != "application/json" {
		t.Errorf("customDataContentType %q", cd.CDCT)
	}

	// Without anything for customData, there is none.
	b, _ = EncodeCDEvent(Deploy{ID: "d-1", Service: "s", Environment: "e", Version: "1", Time: deployTime}, "/w")
	if strings.Contains(string(b), "customData") {
		t.Errorf("empty customData written: %s", b)
	}
}

func assertKeys[V any](t *testing.T, what string, m map[string]V, keys ...string) {
	t.Helper()
	got := slices.Sorted(maps.Keys(m))
	slices.Sort(keys)
	if !slices.Equal(got, keys) {
		t.Errorf("%s has members %v, want %v", what, got, keys)
	}
}

func TestEncodeCDEventZeroTime(t *testing.T) {
	d := Deploy{ID: "d-1", Service: "s", Environment: "e", Version: "1"}
	b, err := EncodeCDEvent(d, "/w")
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeDeploy("deploys.e.s", nil, b)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(got.Time) > time.Minute || time.Since(got.Time) < 0 {
		t.Errorf("zero time stamped %v, want about now", got.Time)
	}
}

func TestEncodeRejectsInvalid(t *testing.T) {
	bad := fullDeploy()
	bad.Hosts = []string{"-oProxyCommand=x"}
	var rej *RejectError
	if _, err := EncodeNative(bad); !errors.As(err, &rej) || rej.Field != "hosts[0]" {
		t.Errorf("EncodeNative: %v", err)
	}
	if _, err := EncodeCDEvent(bad, "/w"); !errors.As(err, &rej) || rej.Field != "hosts[0]" {
		t.Errorf("EncodeCDEvent: %v", err)
	}
	for _, source := range []string{"", "%zz", "a\nb"} {
		if _, err := EncodeCDEvent(fullDeploy(), source); !errors.As(err, &rej) || rej.Field != "source" {
			t.Errorf("EncodeCDEvent with source %q: %v", source, err)
		}
	}
	if _, err := EncodeRolledBack(RolledBack{ID: "r", Service: "s", Environment: "e"}, "/w"); !errors.As(err, &rej) || rej.Field != "version" {
		t.Errorf("EncodeRolledBack without version: %v", err)
	}
	if _, err := EncodeRollbackRequest(RollbackRequest{ID: "r", Service: "s", Environment: "e", Reason: "x", Source: "cron"}); !errors.As(err, &rej) || rej.Field != "source" {
		t.Errorf("EncodeRollbackRequest with a bad source: %v", err)
	}
}

func TestEncodeRolledBack(t *testing.T) {
	r := RolledBack{
		ID: NewID(), Service: "shop", Environment: "production", Version: "2026.11.24-3",
		FromVersion: "2026.11.25-1", RequestID: "rb-01JDX7", Reason: "check orders failed\n12 < 50",
		Time: deployTime,
	}
	b, err := EncodeRolledBack(r, "/rollback-watcher")
	if err != nil {
		t.Fatal(err)
	}
	for _, header := range []map[string][]string{ceHeader, nil} {
		_, err = DecodeDeploy("deploys.production.shop", header, b)
		var nd *NotDeployError
		if !errors.As(err, &nd) || nd.Type != TypeServiceRolledBack {
			t.Fatalf("decoding a rolledback event: %v, want a *NotDeployError", err)
		}
	}
	var ce struct {
		Type string
		ID   string
		Data struct {
			Context    map[string]string
			Subject    struct{ Content struct{ ArtifactID string } }
			CustomData map[string]string `json:"customData"`
		}
	}
	if err := json.Unmarshal(b, &ce); err != nil {
		t.Fatal(err)
	}
	if ce.Type != TypeServiceRolledBack || ce.ID != r.ID || ce.Data.Context["type"] != TypeServiceRolledBack || ce.Data.Context["id"] != r.ID {
		t.Errorf("type/id: %+v", ce)
	}
	if got := ce.Data.Subject.Content.ArtifactID; got != "pkg:generic/shop@2026.11.24-3" {
		t.Errorf("artifactId %q", got)
	}
	want := map[string]string{"fromVersion": "2026.11.25-1", "requestId": "rb-01JDX7", "reason": "check orders failed\n12 < 50"}
	if !maps.Equal(ce.Data.CustomData, want) {
		t.Errorf("customData %v, want %v", ce.Data.CustomData, want)
	}
}

// ociDigest is a version as the CDEvents conformance examples give it.
const ociDigest = "sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427"

// TestEncodeDigestVersions: a deploy may be versioned by digest (README,
// "Deploy event (native JSON)"), so what the watcher writes about it must
// take one too.
func TestEncodeDigestVersions(t *testing.T) {
	b, err := EncodeRolledBack(RolledBack{
		ID: NewID(), Service: "shop", Environment: "production", Version: "sha256:aaaa",
		FromVersion: ociDigest, RequestID: "rb-1", Reason: "checks failed", Time: deployTime,
	}, "/rollback-watcher")
	if err != nil {
		t.Fatalf("EncodeRolledBack: %v", err)
	}
	var ce struct {
		Data struct {
			Subject    struct{ Content struct{ ArtifactID string } }
			CustomData map[string]string `json:"customData"`
		}
	}
	if err := json.Unmarshal(b, &ce); err != nil {
		t.Fatal(err)
	}
	if v, err := versionOfPurl("artifactId", ce.Data.Subject.Content.ArtifactID); err != nil || v != "sha256:aaaa" {
		t.Errorf("artifactId %q reads back as %q, %v", ce.Data.Subject.Content.ArtifactID, v, err)
	}
	if got := ce.Data.CustomData["fromVersion"]; got != ociDigest {
		t.Errorf("fromVersion %q", got)
	}

	r := RollbackRequest{
		ID: "rb-" + NewID(), Service: "shop", Environment: "production", Version: ociDigest, ToVersion: "sha256:aaaa",
		Reason: "manual", Source: SourceManual,
	}
	b, err = EncodeRollbackRequest(r)
	if err != nil {
		t.Fatalf("EncodeRollbackRequest: %v", err)
	}
	got, err := DecodeRollbackRequest("rollbacks.production.shop", b)
	if err != nil {
		t.Fatalf("DecodeRollbackRequest: %v", err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Errorf("got  %+v\nwant %+v", got, r)
	}
}

func TestEncodeRollbackRequestRoundTrip(t *testing.T) {
	r := RollbackRequest{
		ID: "rb-" + NewID(), Service: "shop", Environment: "production", Version: "2", ToVersion: "1",
		Hosts: []string{"web1:22"}, Labels: map[string]string{"team": "payments"},
		Reason: ClampReason(strings.Repeat("check x failed: \x1b[31mred\x1b[0m; ", 100)), Source: SourceValidation,
		RunID: NewID(), DeployID: "d-42", Policy: "shop-orders", Time: deployTime,
	}
	b, err := EncodeRollbackRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeRollbackRequest("rollbacks.production.shop", b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Errorf("got  %+v\nwant %+v", got, r)
	}
}

func TestNewID(t *testing.T) {
	seen := make(map[string]bool)
	prev := ""
	for i := range 1000 {
		id := NewID()
		if len(id) != 26 || !IDPattern.MatchString(id) || strings.Trim(id, crockford) != "" {
			t.Fatalf("bad id %q", id)
		}
		if seen[id] {
			t.Fatalf("id %q repeated", id)
		}
		seen[id] = true
		if i%100 == 0 {
			// Ids from different milliseconds sort by time.
			time.Sleep(2 * time.Millisecond)
			if id <= prev {
				t.Errorf("id %q does not sort after %q", id, prev)
			}
			prev = id
		}
	}
}
