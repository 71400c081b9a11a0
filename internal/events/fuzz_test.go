package events

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// parseHeaders turns "name: value" lines into a nats.Header-like map, so
// that the fuzzer can reach the binary CloudEvents path.
func parseHeaders(s string) map[string][]string {
	if s == "" {
		return nil
	}
	h := make(map[string][]string)
	for line := range strings.SplitSeq(s, "\n") {
		k, v, _ := strings.Cut(line, ":")
		h[k] = append(h[k], strings.TrimSpace(v))
	}
	return h
}

// FuzzDecodeDeploy checks that no input panics DecodeDeploy, that every
// error is one of its two kinds, and that what it accepts is valid and
// survives re-encoding in both formats.
func FuzzDecodeDeploy(f *testing.F) {
	binary := "ce-specversion: 1.0\nce-id: x\nce-source: /ci\nce-type: dev.cdevents.service.deployed.0.3.0\nContent-Type: application/json"
	f.Add(subj, "", []byte(nativeBase))
	f.Add(subj, "", []byte(cdBase))
	f.Add(subj, "Content-Type: "+ContentTypeCloudEvents, structured(f, []byte(cdBase)))
	f.Add(subj, "", structured(f, []byte(cdBase), del("data"), set("data_base64", []byte(cdBase))))
	f.Add(subj, binary, []byte(cdBase))
	f.Add("deploys.production.admin", "", []byte(`{"id":"d","service":"shop","service":"admin"}`))
	f.Add(subj, "", []byte(`{"data_base64":1,"specversion":"1.0"}`))
	f.Fuzz(func(t *testing.T, subject, headers string, data []byte) {
		d, err := DecodeDeploy(subject, parseHeaders(headers), data)
		var rej *RejectError
		var nd *NotDeployError
		switch {
		case errors.As(err, &rej):
			if rej.Field == "" || rej.Reason == "" {
				t.Fatalf("rejection without field or reason: %#v", rej)
			}
			return
		case errors.As(err, &nd):
			return
		case err != nil:
			t.Fatalf("error of unexpected type %T: %v", err, err)
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("accepted %+v fails Validate: %v", d, err)
		}
		if subject != Subject(DeploysPrefix, d.Environment, d.Service) {
			t.Fatalf("accepted %+v on subject %q", d, subject)
		}
		if d.Format == "" {
			t.Fatal("accepted without a format")
		}
		native, err := EncodeNative(d)
		if err != nil {
			t.Fatalf("EncodeNative(%+v): %v", d, err)
		}
		again, err := DecodeDeploy(subject, nil, native)
		if err != nil {
			t.Fatalf("native re-encoding %s does not decode: %v", native, err)
		}
		if !again.Time.Equal(d.Time) {
			t.Fatalf("time changed: %v -> %v", d.Time, again.Time)
		}
		d.Format, again.Format = FormatJSON, FormatJSON
		again.Time = d.Time
		if !reflect.DeepEqual(again, d) {
			t.Fatalf("native round trip changed %+v into %+v", d, again)
		}
		if d.Time.IsZero() {
			return // EncodeCDEvent would stamp the current time
		}
		cd, err := EncodeCDEvent(d, "/fuzz")
		if err != nil {
			t.Fatalf("EncodeCDEvent(%+v): %v", d, err)
		}
		if _, err := DecodeDeploy(subject, nil, cd); err != nil {
			t.Fatalf("CDEvent re-encoding %s does not decode: %v", cd, err)
		}
	})
}

// FuzzDecodeRollbackRequest checks that no input panics the decoder and
// that what it accepts is valid and survives re-encoding.
func FuzzDecodeRollbackRequest(f *testing.F) {
	f.Add("rollbacks.production.shop", []byte(rollbackBase))
	f.Add("rollbacks.production.shop", []byte(`{"id":"m-1","service":"shop","environment":"production","reason":"manual","source":"manual"}`))
	f.Add("rollbacks.production.shop", []byte(`{"id":"m-1","hosts":["-oProxyCommand=x"],"labels":{"a":"\u0000"}}`))
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		r, err := DecodeRollbackRequest(subject, data)
		var rej *RejectError
		switch {
		case errors.As(err, &rej):
			if rej.Field == "" || rej.Reason == "" {
				t.Fatalf("rejection without field or reason: %#v", rej)
			}
			return
		case err != nil:
			t.Fatalf("error of unexpected type %T: %v", err, err)
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted %+v fails Validate: %v", r, err)
		}
		b, err := EncodeRollbackRequest(r)
		if err != nil {
			t.Fatalf("EncodeRollbackRequest(%+v): %v", r, err)
		}
		again, err := DecodeRollbackRequest(subject, b)
		if err != nil {
			t.Fatalf("re-encoding %s does not decode: %v", b, err)
		}
		if !again.Time.Equal(r.Time) {
			t.Fatalf("time changed: %v -> %v", r.Time, again.Time)
		}
		again.Time = r.Time
		if !reflect.DeepEqual(again, r) {
			t.Fatalf("round trip changed %+v into %+v", r, again)
		}
	})
}
