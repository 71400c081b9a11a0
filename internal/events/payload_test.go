package events

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// TestDecodeDeployPayload: an event that arrives without a subject (over
// HTTP) decodes as DecodeDeploy decodes it on the subject made from it, so
// that storing it there and consuming it agree; the size limit holds too.
func TestDecodeDeployPayload(t *testing.T) {
	data := []byte(`{"id": "d-42", "service": "shop", "environment": "production", "version": "2026.11.25-1"}`)
	got, err := DecodeDeployPayload(map[string][]string{"Content-Type": {"application/json"}}, data)
	if err != nil {
		t.Fatal(err)
	}
	want, err := DecodeDeploy(Subject(DeploysPrefix, got.Environment, got.Service), nil, data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("DecodeDeployPayload = %+v, DecodeDeploy = %+v", got, want)
	}
	_, err = DecodeDeployPayload(nil, []byte(`{"pad": "`+strings.Repeat("x", MaxEventSize)+`"}`))
	var rej *RejectError
	if !errors.As(err, &rej) || rej.Field != "size" {
		t.Errorf("an event over MaxEventSize: %v, want a rejection of its size", err)
	}
}
