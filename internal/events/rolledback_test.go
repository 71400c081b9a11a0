package events

import (
	"strings"
	"testing"
)

// The watcher reads back its own service.rolledback announcements (a
// rollback's verification starts from them): what EncodeRolledBack wrote
// decodes to what it was given, and a document that is not such an
// announcement, or sits on another service's subject, is refused.
func TestDecodeRolledBack(t *testing.T) {
	r := RolledBack{
		ID: "rolledback-rb-01JDX7", Service: "shop", Environment: "production", Version: ociDigest,
		FromVersion: "2026.11.25-1", RequestID: "rb-01JDX7", Reason: "check orders failed\n12 < 50",
		Time: deployTime,
	}
	b, err := EncodeRolledBack(r, "/rollback-watcher")
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeRolledBack("deploys.production.shop", b)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(r.Time) {
		t.Errorf("time %s, want %s", got.Time, r.Time)
	}
	got.Time = r.Time
	if got != r {
		t.Errorf("decoded %+v\nwant    %+v", got, r)
	}

	bare := RolledBack{ID: "rb-2", Service: "shop", Environment: "production", Version: "v1", Time: deployTime}
	if b, err := EncodeRolledBack(bare, "/w"); err != nil {
		t.Fatal(err)
	} else if got, err := DecodeRolledBack("deploys.production.shop", b); err != nil || got.RequestID != "" || got.Version != "v1" {
		t.Errorf("without customData: %+v, %v", got, err)
	}

	deployed, err := EncodeCDEvent(Deploy{ID: "d-1", Service: "shop", Environment: "production", Version: "v2", Time: deployTime}, "/ci")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, subject string
		data          []byte
		want          string
	}{
		{"another service's subject", "deploys.production.admin", b, "disagrees with the payload"},
		{"a deploy event", "deploys.production.shop", deployed, "is not " + TypeServiceRolledBack},
		{"not JSON", "deploys.production.shop", []byte("{"), "not the JSON"},
		{"bad version", "deploys.production.shop", []byte(strings.Replace(string(b), "pkg:generic/shop@", "pkg:generic/shop@..%2F", 1)), "version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := DecodeRolledBack(tc.subject, tc.data); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}
