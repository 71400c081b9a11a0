package events

// Fuzz targets for every decoder of outside input in this package: one per
// format a deploy event arrives in, one for the purl in a CDEvent, one for
// rollback requests and one for subjects. Seeds are in testdata/fuzz/<name>;
// `go test` runs them, and `make fuzz` fuzzes each target for a while.
//
// Each target checks properties, not just the absence of a panic: an error
// is a *RejectError naming a field (or a *NotDeployError naming a
// well-formed type), printable and bounded, since it goes into logs and
// audit records; what is accepted obeys the README's rules, checked here
// independently of validate.go; decoding is deterministic; and the formats
// agree with each other and with the encoders.

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
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

// allPrintable reports whether every rune of s is valid and printable.
func allPrintable(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// checkError fails unless err is nil, a *RejectError with a field and a
// reason, or a *NotDeployError with a well-formed type that is not a
// deploy; what it says must be printable and bounded. It reports whether
// err is nil.
func checkError(t *testing.T, err error) bool {
	t.Helper()
	if err == nil {
		return true
	}
	var rej *RejectError
	var nd *NotDeployError
	switch {
	case errors.As(err, &rej):
		if rej.Field == "" || rej.Reason == "" {
			t.Fatalf("rejection without field or reason: %#v", rej)
		}
		if utf8.RuneCountInString(rej.Field) > 300 || utf8.RuneCountInString(rej.Value) > 203 {
			t.Fatalf("rejection field or value too long: %#v", rej)
		}
	case errors.As(err, &nd):
		isDeploy, terr := classifyType("type", nd.Type)
		if isDeploy || !errors.As(terr, new(*NotDeployError)) {
			t.Fatalf("NotDeployError for type %q, which classifies as %v, %v", nd.Type, isDeploy, terr)
		}
	default:
		t.Fatalf("error of unexpected type %T: %v", err, err)
	}
	if msg := err.Error(); !allPrintable(msg) || len(msg) > 2048 {
		t.Fatalf("error message not printable or too long (%d bytes): %q", len(msg), msg)
	}
	return false
}

// checkDeployName fails unless v is a valid service or environment name:
// it becomes a path element and a subject token.
func checkDeployName(t *testing.T, field, v string) {
	t.Helper()
	if !NamePattern.MatchString(v) || strings.Contains(v, "..") || strings.HasSuffix(v, ".") ||
		strings.ContainsAny(v, "/\\*> \t\r\n") {
		t.Fatalf("accepted %s %q", field, v)
	}
}

// contractVersion is the version rule of the README's "Deploy event
// (native JSON)", copied here rather than taken from validate.go.
var contractVersion = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+:-]{0,127}$`)

// checkDeployVersion fails unless v is a valid release directory name.
func checkDeployVersion(t *testing.T, field, v string) {
	t.Helper()
	if !contractVersion.MatchString(v) || strings.Contains(v, "..") || strings.Contains(v, "/") ||
		v == "." || strings.ContainsAny(v, "\\ \t\r\n") {
		t.Fatalf("accepted %s %q", field, v)
	}
}

// checkHostEntry fails unless h is host, host:port, an IPv6 address or
// [IPv6]:port, with nothing that ssh or a shell could read as more than a
// destination.
func checkHostEntry(t *testing.T, field, h string) {
	t.Helper()
	bad := func(why string) { t.Fatalf("accepted %s %q: %s", field, h, why) }
	if h == "" || len(h) > 300 {
		bad("empty or too long")
	}
	if h[0] == '-' {
		bad("an ssh option")
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; c <= ' ' || c >= 0x7f || strings.IndexByte("@/\\$`;|&<>()'\"*?!{}%,=~#", c) >= 0 {
			bad("character " + strconv.QuoteRune(rune(c)))
		}
	}
	host, port, hasPort := h, "", false
	if hp, p, err := net.SplitHostPort(h); err == nil {
		host, port, hasPort = hp, p, true
	} else if strings.HasPrefix(h, "[") {
		if !strings.HasSuffix(h, "]") {
			bad("unbalanced brackets")
		}
		host = h[1 : len(h)-1]
	}
	if strings.ContainsAny(h, "[]") && !strings.Contains(host, ":") {
		bad("brackets around something else than an IPv6 address")
	}
	if hasPort {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port[0] < '1' || port[0] > '9' {
			bad("port " + strconv.Quote(port))
		}
	}
	if strings.Contains(host, ":") {
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() || a.Zone() != "" {
			bad("not an IPv6 address")
		}
	} else if host == "" || host[0] == '.' || strings.HasSuffix(host, ".") || strings.Contains(host, "..") {
		bad("empty host name or label")
	}
}

// checkHostList checks every entry and that none repeats.
func checkHostList(t *testing.T, field string, hosts []string) {
	t.Helper()
	if len(hosts) > MaxHosts {
		t.Fatalf("accepted %d %s", len(hosts), field)
	}
	if hosts != nil && len(hosts) == 0 {
		t.Fatalf("%s is empty but not nil", field)
	}
	seen := map[string]bool{}
	for i, h := range hosts {
		checkHostEntry(t, index(field, i), h)
		if seen[h] {
			t.Fatalf("accepted %s twice: %q", field, h)
		}
		seen[h] = true
	}
}

// checkLabelMap checks keys and values: values are shown to people.
func checkLabelMap(t *testing.T, field string, labels map[string]string) {
	t.Helper()
	if len(labels) > MaxLabels {
		t.Fatalf("accepted %d %s", len(labels), field)
	}
	if labels != nil && len(labels) == 0 {
		t.Fatalf("%s is empty but not nil", field)
	}
	for k, v := range labels {
		if !LabelKeyPattern.MatchString(k) {
			t.Fatalf("accepted %s key %q", field, k)
		}
		if !utf8.ValidString(v) || utf8.RuneCountInString(v) > MaxLabelValueLen || !allPrintable(v) {
			t.Fatalf("accepted %s.%s value %q", field, k, v)
		}
	}
}

// checkAccepted fails unless d obeys the README's rules for a deploy
// event, checked here without validate.go, and passes Validate as well.
func checkAccepted(t *testing.T, d Deploy) {
	t.Helper()
	if !IDPattern.MatchString(d.ID) || strings.ContainsAny(d.ID, "/\\*> \t\r\n\"'`$;|&") {
		t.Fatalf("accepted id %q", d.ID)
	}
	checkDeployName(t, "service", d.Service)
	checkDeployName(t, "environment", d.Environment)
	checkDeployVersion(t, "version", d.Version)
	if d.PreviousVersion != "" {
		checkDeployVersion(t, "previous_version", d.PreviousVersion)
	}
	checkHostList(t, "hosts", d.Hosts)
	checkLabelMap(t, "labels", d.Labels)
	if !d.Time.IsZero() && d.Time.Location() != time.UTC {
		t.Fatalf("time %v is not in UTC", d.Time)
	}
	switch d.Format {
	case FormatJSON, FormatCDEvent, FormatCloudEventStructured, FormatCloudEventBinary:
	default:
		t.Fatalf("accepted with format %q", d.Format)
	}
	for _, tok := range strings.Split(Subject(DeploysPrefix, d.Environment, d.Service), ".") {
		if tok == "" || tok == "*" || tok == ">" {
			t.Fatalf("deploy %+v makes a subject with token %q", d, tok)
		}
	}
	if err := d.Validate(); err != nil {
		t.Fatalf("accepted %+v fails Validate: %v", d, err)
	}
}

// sameResult fails unless two decodings agree.
func sameResult[T any](t *testing.T, a T, aerr error, b T, berr error) {
	t.Helper()
	if (aerr == nil) != (berr == nil) || aerr != nil && aerr.Error() != berr.Error() {
		t.Fatalf("decodings disagree: %v, then %v", aerr, berr)
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("decodings disagree:\n%+v\n%+v", a, b)
	}
}

// decodePayload decodes data as DecodeDeploy does, but on whatever subject
// the payload names. It checks the error or the deploy, that a second
// decoding gives the same, and the subject rule: an accepted payload is
// accepted on its own subject with the same result, and rejected on
// "subject" on any other.
func decodePayload(t *testing.T, header map[string][]string, data []byte) (Deploy, error) {
	t.Helper()
	if len(data) > MaxEventSize {
		d, err := DecodeDeploy("", header, data)
		var rej *RejectError
		if checkError(t, err) || !errors.As(err, &rej) || rej.Field != "size" {
			t.Fatalf("%d bytes give %+v, %v", len(data), d, err)
		}
		return d, err
	}
	d, err := decodeDeploy(header, data)
	d2, err2 := decodeDeploy(header, data)
	sameResult(t, d, err, d2, err2)
	if !checkError(t, err) {
		if !reflect.DeepEqual(d, Deploy{}) {
			t.Fatalf("error %v with a non-zero deploy %+v", err, d)
		}
		full, ferr := DecodeDeploy(Subject(DeploysPrefix, "production", "shop"), header, data)
		sameResult(t, d, err, full, ferr)
		return d, err
	}
	checkAccepted(t, d)
	subject := Subject(DeploysPrefix, d.Environment, d.Service)
	full, err := DecodeDeploy(subject, header, data)
	sameResult(t, d, nil, full, err)
	for _, other := range []string{"", subject + "x", Subject(RollbacksPrefix, d.Environment, d.Service), subject + " "} {
		_, err := DecodeDeploy(other, header, data)
		var rej *RejectError
		if !errors.As(err, &rej) || rej.Field != "subject" {
			t.Fatalf("accepted on %q, on %q it gives %v; want a rejection of subject", subject, other, err)
		}
	}
	return d, nil
}

// checkRoundTrips re-encodes an accepted deploy in native JSON and as a
// CDEvent; both must decode to the same deploy.
func checkRoundTrips(t *testing.T, d Deploy) {
	t.Helper()
	subject := Subject(DeploysPrefix, d.Environment, d.Service)
	native, err := EncodeNative(d)
	if err != nil {
		t.Fatalf("EncodeNative(%+v): %v", d, err)
	}
	again, err := DecodeDeploy(subject, nil, native)
	if err != nil {
		t.Fatalf("native re-encoding %s does not decode: %v", native, err)
	}
	want := d
	want.Format = FormatJSON
	sameResult(t, want, nil, again, nil)
	if d.Time.IsZero() {
		return // EncodeCDEvent would stamp the current time
	}
	cd, err := EncodeCDEvent(d, "/fuzz")
	if err != nil {
		t.Fatalf("EncodeCDEvent(%+v): %v", d, err)
	}
	again, err = DecodeDeploy(subject, map[string][]string{"Content-Type": {ContentTypeCloudEvents}}, cd)
	if err != nil {
		t.Fatalf("CDEvent re-encoding %s does not decode: %v", cd, err)
	}
	want.Format = FormatCloudEventStructured
	sameResult(t, want, nil, again, nil)
}

// topMembers returns the members of data when it is a JSON object.
func topMembers(data []byte) map[string]json.RawMessage {
	var m map[string]json.RawMessage
	if checkDocument(data) != nil || kind(data) != "an object" || json.Unmarshal(data, &m) != nil {
		return nil
	}
	return m
}

// addConformanceSeeds adds the CDEvents specification's conformance
// examples (testdata/cdevents-conformance) as seeds.
func addConformanceSeeds(f *testing.F) {
	files, err := filepath.Glob(filepath.Join(conformanceDir, "*", "*.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no conformance examples in %s: %v", conformanceDir, err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// customVersion returns customData.version of a CDEvent whose customData is
// JSON (no customDataContentType), and whether it names one: the README
// makes it the version then, whatever the purl says.
func customVersion(top map[string]json.RawMessage) (string, bool) {
	if _, typed := top["customDataContentType"]; typed {
		return "", false
	}
	var v string
	if json.Unmarshal(topMembers(top["customData"])["version"], &v) != nil || v == "" {
		return "", false
	}
	return v, true
}

// FuzzDecodeDeploy feeds DecodeDeploy any subject, headers and body: every
// format at once, the subject rule, and the round trips.
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
		h := parseHeaders(headers)
		d, err := DecodeDeploy(subject, h, data)
		d2, err2 := DecodeDeploy(subject, h, data)
		sameResult(t, d, err, d2, err2)
		if !checkError(t, err) {
			if !reflect.DeepEqual(d, Deploy{}) {
				t.Fatalf("error %v with a non-zero deploy %+v", err, d)
			}
			return
		}
		checkAccepted(t, d)
		if subject != Subject(DeploysPrefix, d.Environment, d.Service) {
			t.Fatalf("accepted %+v on subject %q", d, subject)
		}
		checkRoundTrips(t, d)
	})
}

// FuzzDecodeNative is the native JSON of the README's "Deploy event
// (native JSON)".
func FuzzDecodeNative(f *testing.F) {
	f.Add([]byte(nativeBase))
	f.Add([]byte(`{"id":"d-1","service":"shop","environment":"production","version":"1.0"}`))
	f.Add([]byte(`{"id":"d-1","service":"shop","environment":"production","version":"1.0","previous_version":null,"hosts":null,"labels":null,"time":null}`))
	f.Add([]byte(`{"id":"d-1","service":"shop","environment":"production","version":"1","hosts":["10.0.0.1","::1","[2001:db8::1]:22","web_2","web-3.internal:65535"]}`))
	f.Add([]byte(`{"id":"d-1","service":"shop","service":"admin","environment":"production","version":"1"}`))
	f.Add([]byte(`{"id":"d-1","service":"../../etc","environment":"prod..eu","version":"1.0/../../x","hosts":["-oProxyCommand=x","$(id)","web1:70000","[fe80::1%eth0]:22"]}`))
	f.Add([]byte(`{"id":"d-1","service":"shop","environment":"production","version":"1","labels":{"a":"\ud800","team":"a\u202eb"},"time":"2026-11-25T19:00:00+01:00"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var d Deploy
		var err error
		if err = checkDocument(data); err == nil {
			d, err = decodeNative(data)
		}
		ok := checkError(t, err)
		if errors.As(err, new(*NotDeployError)) {
			t.Fatalf("native JSON gives %v", err)
		}
		top := topMembers(data)
		_, hasContext := top["context"]
		_, hasSpec := top["specversion"]
		if ok && (hasContext || hasSpec || d.Format != FormatJSON) {
			t.Fatalf("accepted %s as native JSON, format %q", data, d.Format)
		}
		if !hasContext && !hasSpec {
			// Without a Content-Type, DecodeDeploy takes this path.
			full, ferr := decodePayload(t, nil, data)
			sameResult(t, d, err, full, ferr)
		}
		if ok {
			checkRoundTrips(t, d)
		}
	})
}

// FuzzDecodeCDEvent is a bare CDEvent: context and subject without a
// CloudEvent around them. An accepted one, and one of another type, must
// decode the same in a structured or a binary CloudEvent.
func FuzzDecodeCDEvent(f *testing.F) {
	f.Add([]byte(cdBase))
	f.Add(edit(f, cdBase, set("context.type", "dev.cdevents.service.upgraded.0.3.0")))
	f.Add(edit(f, cdBase, del("context.specversion"), set("context.version", "0.4.1"),
		set("context.type", "dev.cdevents.service.deployed.0.2.0"), set("subject.type", "service")))
	f.Add(edit(f, cdBase, set("subject.content.artifactId", "pkg:oci/shop?repository_url=registry.example.com"),
		set("customData", map[string]any{"version": "2026.11.25-1"}), del("customDataContentType")))
	f.Add(edit(f, cdBase, set("customData", "PGRhdGE+"), set("customDataContentType", "application/xml")))
	f.Add(edit(f, cdBase, set("context.type", TypeServiceRolledBack)))
	f.Add(edit(f, cdBase, set("context.type", "dev.cdeventsx.harbor-quota.exceeded.0.1.0")))
	f.Add(edit(f, cdBase, set("subject.content.artifactId", "pkg:generic/shop@1.0%2F..%2F..%2Fetc"), set("customData.version", "../x")))
	f.Add(edit(f, cdBase, set("subject.id", "shop;rm -rf /"), set("customData.hosts", []string{"web1", "-oProxyCommand=x"})))
	addConformanceSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var d Deploy
		var err error
		if err = checkDocument(data); err == nil {
			if d, err = decodeCDEvent("json", data, ""); err == nil {
				d.Format = FormatCDEvent
			}
		}
		ok := checkError(t, err)
		top := topMembers(data)
		if v, given := customVersion(top); ok && given && d.Version != v {
			t.Fatalf("customData.version %q given, version %q taken", v, d.Version)
		}
		_, hasContext := top["context"]
		_, hasSpec := top["specversion"]
		if ok && !hasContext {
			t.Fatalf("a CDEvent without context accepted: %s", data)
		}
		if hasContext && !hasSpec {
			// Without a Content-Type, DecodeDeploy takes this path.
			full, ferr := decodePayload(t, nil, data)
			sameResult(t, d, err, full, ferr)
		}
		var nd *NotDeployError
		if !ok && !errors.As(err, &nd) {
			return
		}
		typ, _ := str("context.type", topMembers(top["context"])["type"])
		if typ == "" {
			t.Fatalf("%+v, %v without a context.type", d, err)
		}
		qtyp, _ := json.Marshal(typ)
		envelope := []byte(`{"specversion":"1.0","id":"ce-1","source":"/fuzz","type":` + string(qtyp) +
			`,"datacontenttype":"application/json","data":` + string(data) + `}`)
		binary := map[string][]string{
			"ce-specversion": {"1.0"}, "ce-id": {"ce-1"}, "ce-source": {"/fuzz"}, "ce-type": {typ},
			"Content-Type": {"application/json"},
		}
		for _, w := range []struct {
			header map[string][]string
			data   []byte
			format string
		}{
			{map[string][]string{"Content-Type": {ContentTypeCloudEvents}}, envelope, FormatCloudEventStructured},
			{binary, data, FormatCloudEventBinary},
		} {
			if len(w.data) > MaxEventSize {
				continue
			}
			got, gerr := decodePayload(t, w.header, w.data)
			if ok {
				d.Format = w.format
			}
			sameResult(t, d, err, got, gerr)
		}
		if ok {
			d.Format = FormatCDEvent
			checkRoundTrips(t, d)
		}
	})
}

// FuzzDecodeStructured is a structured-mode CloudEvent, the CDEvent in data
// or data_base64. withHeader says whether it comes with Content-Type
// application/cloudevents+json; without it, a top-level specversion
// announces it.
func FuzzDecodeStructured(f *testing.F) {
	upgraded := edit(f, cdBase, set("context.type", "dev.cdevents.service.upgraded.0.3.0"))
	f.Add(structured(f, []byte(cdBase)), true)
	f.Add(structured(f, []byte(cdBase)), false)
	f.Add(structured(f, upgraded), true)
	f.Add(structured(f, []byte(cdBase), del("datacontenttype"), set("traceparent", "00-abc-def-01"), set("partitionkey", 7), set("sampled", true)), true)
	f.Add(structured(f, []byte(cdBase), del("data"), set("data_base64", []byte(cdBase))), true)
	f.Add(structured(f, []byte(cdBase), set("data_base64", "e30=")), true)
	f.Add(structured(f, []byte(cdBase), del("data"), set("data_base64", 1)), false)
	f.Add(structured(f, []byte(cdBase), set("ext", map[string]any{"a": 1}), set("my-ext", "x")), true)
	f.Add(structured(f, []byte(cdBase), set("type", "dev.cdevents.service.upgraded.0.3.0")), true)
	f.Add(structured(f, []byte(cdBase), set("specversion", "0.3"), set("time", "noon")), true)
	f.Add(structured(f, edit(f, cdBase, set("subject.id", "../x"))), false)
	f.Fuzz(func(t *testing.T, data []byte, withHeader bool) {
		var header map[string][]string
		if withHeader {
			header = map[string][]string{"Content-Type": {ContentTypeCloudEvents + "; charset=utf-8"}}
		}
		d, err := decodePayload(t, header, data)
		ok := checkError(t, err)
		top := topMembers(data)
		_, hasSpec := top["specversion"]
		if hasSpec && !withHeader {
			// With a specversion, the header changes nothing.
			with, werr := decodePayload(t, map[string][]string{"Content-Type": {ContentTypeCloudEvents}}, data)
			sameResult(t, d, err, with, werr)
		}
		if !ok || !withHeader && !hasSpec {
			return
		}
		if d.Format != FormatCloudEventStructured {
			t.Fatalf("a structured CloudEvent decoded with format %q", d.Format)
		}
		// The deploy is the CDEvent in data, id and all: decoded bare, it
		// is the same.
		inner := []byte(top["data"])
		if b64, ok := top["data_base64"]; ok {
			s, _ := str("data_base64", b64)
			var berr error
			if inner, berr = base64.StdEncoding.DecodeString(s); berr != nil {
				t.Fatalf("accepted with data_base64 %q: %v", s, berr)
			}
		}
		bare, berr := decodeCDEvent("json", inner, "")
		if berr != nil {
			t.Fatalf("accepted CloudEvent's data %s does not decode bare: %v", inner, berr)
		}
		bare.Format = FormatCloudEventStructured
		sameResult(t, d, nil, bare, nil)
		checkRoundTrips(t, d)
	})
}

// FuzzDecodeBinary is a binary-mode CloudEvent: the context in ce-*
// headers, whose values are fuzzed too, and the CDEvent as the body.
// flags: bits 0-1 the case of the header names, bit 2 leave out headers
// whose value is empty (else send them empty), bit 3 repeat ce-id under
// another case with the same value.
func FuzzDecodeBinary(f *testing.F) {
	deployed, upgraded := "dev.cdevents.service.deployed.0.3.0", "dev.cdevents.service.upgraded.0.3.0"
	up := edit(f, cdBase, set("context.type", upgraded))
	pipeline := edit(f, cdBase, set("context.type", "dev.cdevents.pipelinerun.started.0.2.0"),
		set("subject", map[string]any{"id": "run-1", "content": map[string]any{"pipelineName": "build"}}), del("customData"))
	f.Add("1.0", "ce-0001", "/ci/pipeline", deployed, "2026-11-25T18:00:01Z", "application/json", uint8(4), []byte(cdBase))
	f.Add("1.0", "x", "/ci", deployed, "", "", uint8(1|4), []byte(cdBase))
	f.Add("1.0", "x", "/ci", upgraded, "", "application/json; charset=utf-8", uint8(2|4|8), up)
	f.Add("1.0", "x", "/ci", "dev.cdevents.pipelinerun.started.0.2.0", "", "", uint8(4), pipeline)
	f.Add("1.0", "x", "/ci", upgraded, "now", "text/plain", uint8(0), []byte(cdBase))
	f.Add("0.3", "", "", "com.example.deploy", "", "", uint8(0), []byte(nativeBase))
	f.Add("1.0", "x", "/ci", deployed, "", "", uint8(4), []byte(`{`))
	f.Add("1.0", "x", "::not a uri", deployed, "2026-13-01T00:00:00Z", "application/cloudevents+json", uint8(3), []byte(`[]`))
	f.Fuzz(func(t *testing.T, spec, id, source, typ, tm, ct string, flags uint8, data []byte) {
		name := func(n string) string {
			switch flags & 3 {
			case 1:
				return strings.ToUpper(n)
			case 2:
				parts := strings.Split(n, "-")
				for i, p := range parts {
					parts[i] = strings.ToUpper(p[:1]) + p[1:]
				}
				return strings.Join(parts, "-")
			}
			return n
		}
		build := func(id string) map[string][]string {
			h := map[string][]string{name("ce-specversion"): {spec}}
			for _, kv := range [][2]string{{"ce-id", id}, {"ce-source", source}, {"ce-type", typ}, {"ce-time", tm}, {"Content-Type", ct}} {
				if kv[1] != "" || flags&4 == 0 {
					h[name(kv[0])] = []string{kv[1]}
				}
			}
			return h
		}
		header := build(id)
		d, err := decodePayload(t, header, data)
		ok := checkError(t, err)
		if _, sent := header[name("ce-id")]; sent && flags&8 != 0 {
			// A header repeated under another case with the same value
			// changes nothing.
			h2 := build(id)
			h2["cE-iD"] = []string{id}
			got, gerr := decodePayload(t, h2, data)
			sameResult(t, d, err, got, gerr)
		}
		if !ok {
			return
		}
		if d.Format != FormatCloudEventBinary {
			t.Fatalf("a binary CloudEvent decoded with format %q", d.Format)
		}
		// The deploy is the body's CDEvent, whose type ce-type is.
		bare, berr := decodeCDEvent("json", data, "")
		if berr != nil {
			t.Fatalf("accepted body %s does not decode bare: %v", data, berr)
		}
		bare.Format = FormatCloudEventBinary
		sameResult(t, d, nil, bare, nil)
		ctxType, _ := str("context.type", topMembers(topMembers(data)["context"])["type"])
		if ctxType != typ {
			t.Fatalf("accepted ce-type %q for context.type %q", typ, ctxType)
		}
		// The CloudEvent's own id is not the deploy id.
		other, oerr := decodePayload(t, build("other-ce-id"), data)
		sameResult(t, d, nil, other, oerr)
		checkRoundTrips(t, d)
	})
}

// versionOfPurl is what decodeCDEvent takes from a purl when customData
// names no version: its version, checked as a release name.
func versionOfPurl(field, purl string) (string, error) {
	v, err := rawPurlVersion(field, purl)
	if err != nil || v == "" {
		return "", err
	}
	if err := checkPurlVersion(field, purl, v); err != nil {
		return "", err
	}
	return v, nil
}

// FuzzVersionOfPurl is the version of the purl in subject.content.artifactId.
// The input is tried as a purl, and as a version written into one.
func FuzzVersionOfPurl(f *testing.F) {
	for _, s := range []string{
		"pkg:generic/shop@2026.11.25-1",
		"pkg:generic/shop@2026.11.25-1%2Bbuild.7",
		"pkg:oci/shop?repository_url=registry.example.com",
		"pkg:generic/shop",
		"pkg:generic/shop@..",
		"pkg:generic/shop@1.0%2F..%2F..%2Fetc",
		"pkg:generic/sh%2Fop@1.0%2F..%2Fx?a=b#c/d",
		"pkg:oci/myapp@sha256%3A0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427",
		"pkg:maven/org.apache/commons-lang3@3.12.0?type=jar#sub/path",
		"shop-2026.11.25-1.tar.gz",
		"pkg:%",
		"pkg:generic/@1",
		"2026.11.25-1+build.7",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		const field = "subject.content.artifactId"
		v, err := versionOfPurl(field, s)
		v2, err2 := versionOfPurl(field, s)
		sameResult(t, v, err, v2, err2)
		if checkError(t, err) {
			if s == "" || len(s) > 2048 {
				t.Fatalf("versionOfPurl(%q) accepted", s)
			}
			if v != "" {
				checkDeployVersion(t, "purl version", v)
			}
		} else {
			var rej *RejectError
			if !errors.As(err, &rej) || rej.Field != field || v != "" {
				t.Fatalf("versionOfPurl(%q) = %q, %v; want a rejection of %s", s, v, err, field)
			}
		}
		// A version the watcher accepts survives the purl it writes.
		if checkVersion("version", s, true) == nil {
			p := artifactID("shop", s)
			if got, err := versionOfPurl(field, p); err != nil || got != s {
				t.Fatalf("version %q written as %q reads back as %q, %v", s, p, got, err)
			}
		}
	})
}

// FuzzDecodeRollbackRequest is what arrives on ROLLBACKS.
func FuzzDecodeRollbackRequest(f *testing.F) {
	f.Add("rollbacks.production.shop", []byte(rollbackBase))
	f.Add("rollbacks.production.shop", []byte(`{"id":"m-1","service":"shop","environment":"production","reason":"manual","source":"manual"}`))
	f.Add("rollbacks.production.shop", []byte(`{"id":"m-1","hosts":["-oProxyCommand=x"],"labels":{"a":"\u0000"}}`))
	f.Add("rollbacks.production.shop", []byte(`{"id":"m-1","service":"shop","environment":"production","reason":"ok\u001b[2J","source":"cron","run_id":"../x"}`))
	f.Add("deploys.production.shop", []byte(rollbackBase))
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		r, err := DecodeRollbackRequest(subject, data)
		r2, err2 := DecodeRollbackRequest(subject, data)
		sameResult(t, r, err, r2, err2)
		if !checkError(t, err) {
			if errors.As(err, new(*NotDeployError)) {
				t.Fatalf("rollback request gives %v", err)
			}
			if !reflect.DeepEqual(r, RollbackRequest{}) {
				t.Fatalf("error %v with a non-zero request %+v", err, r)
			}
			return
		}
		if subject != Subject(RollbacksPrefix, r.Environment, r.Service) {
			t.Fatalf("accepted %+v on subject %q", r, subject)
		}
		if !IDPattern.MatchString(r.ID) {
			t.Fatalf("accepted id %q", r.ID)
		}
		checkDeployName(t, "service", r.Service)
		checkDeployName(t, "environment", r.Environment)
		for _, v := range []string{r.Version, r.ToVersion} {
			if v != "" {
				checkDeployVersion(t, "version", v)
			}
		}
		checkHostList(t, "hosts", r.Hosts)
		checkLabelMap(t, "labels", r.Labels)
		if r.Reason == "" || utf8.RuneCountInString(r.Reason) > MaxReasonLen ||
			!allPrintable(strings.NewReplacer("\n", "", "\t", "").Replace(r.Reason)) {
			t.Fatalf("accepted reason %q", r.Reason)
		}
		if r.Source != SourceValidation && r.Source != SourceManual && r.Source != SourceAlert {
			t.Fatalf("accepted source %q", r.Source)
		}
		for _, id := range []string{r.RunID, r.DeployID} {
			if id != "" && !IDPattern.MatchString(id) {
				t.Fatalf("accepted id %q", id)
			}
		}
		if !allPrintable(r.Policy) {
			t.Fatalf("accepted policy %q", r.Policy)
		}
		if !r.Time.IsZero() && r.Time.Location() != time.UTC {
			t.Fatalf("time %v is not in UTC", r.Time)
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted %+v fails Validate: %v", r, err)
		}
		b, err := EncodeRollbackRequest(r)
		if err != nil {
			t.Fatalf("EncodeRollbackRequest(%+v): %v", r, err)
		}
		again, err := DecodeRollbackRequest(subject, b)
		sameResult(t, r, nil, again, err)
	})
}

// FuzzSubjectNames splits the subject of a message that could not be
// decoded, for its audit record.
func FuzzSubjectNames(f *testing.F) {
	f.Add("deploys.production.shop")
	f.Add("deploys.production.shop.eu")
	f.Add("deploys")
	f.Add("")
	f.Add("deploys..")
	f.Add("rollbacks.\xff.>")
	f.Fuzz(func(t *testing.T, subject string) {
		env, svc := SubjectNames(subject)
		prefix, rest, ok := strings.Cut(subject, ".")
		switch {
		case strings.Contains(env, "."):
			t.Fatalf("SubjectNames(%q): environment %q has a dot", subject, env)
		case !ok && (env != "" || svc != ""):
			t.Fatalf("SubjectNames(%q) = %q, %q", subject, env, svc)
		case ok && strings.Contains(rest, ".") && Subject(prefix, env, svc) != subject:
			t.Fatalf("SubjectNames(%q) = %q, %q", subject, env, svc)
		case ok && !strings.Contains(rest, ".") && (env != rest || svc != ""):
			t.Fatalf("SubjectNames(%q) = %q, %q", subject, env, svc)
		}
	})
}
