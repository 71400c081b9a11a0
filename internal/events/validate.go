package events

import (
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on what an event may carry.
const (
	MaxHosts         = 1000
	MaxLabels        = 64
	MaxLabelValueLen = 256  // runes
	MaxReasonLen     = 1024 // runes
)

var (
	// IDPattern is what deploy, run and request ids must look like. It admits
	// UUIDs, ULIDs, URNs ("urn:uuid:..."), git SHAs, "d-42" and "rb-<run id>",
	// and it excludes '/', whitespace, quotes, NATS wildcards ('*', '>') and
	// shell metacharacters, so that an id is safe as a file name, in a log
	// line, as a Nats-Msg-Id and in a quoted argv. It does admit '.', so an
	// id is not a single NATS subject token.
	IDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}$`)
	// NamePattern is what service and environment names must look like
	// (README, "Deploy event"); ".." is refused on top, since names become path
	// elements and subject tokens.
	NamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
	// VersionPattern is what versions must look like: a version is a release
	// directory's basename, so no '/' and no "..". It admits ':' so that an
	// OCI digest ("sha256:0b31...", what the CDEvents conformance examples
	// deploy) is a version. ':' is harmless in a path, an argv word and an
	// SFTP request; no KV key, Nats-Msg-Id or subject is built from a
	// version (KV keys are hashes of ids), where it could be a problem.
	VersionPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+:-]{0,127}$`)
	// LabelKeyPattern is what label keys must look like (Prometheus label
	// names, plus '.' and '-').
	LabelKeyPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,62}$`)
)

// fieldNames says how each Deploy field is called in the format it came in,
// so that a rejection names what the sender wrote.
type fieldNames struct {
	id, service, environment, version, previousVersion, hosts, labels string
}

var nativeFields = fieldNames{
	id: "id", service: "service", environment: "environment", version: "version",
	previousVersion: "previous_version", hosts: "hosts", labels: "labels",
}

// Validate checks d against the rules of README's "Deploy event": what
// DecodeDeploy accepts passes, and `watcher publish` calls it before sending.
// Time and Format are not checked.
func (d Deploy) Validate() error {
	return d.validate(nativeFields)
}

func (d Deploy) validate(f fieldNames) error {
	if err := checkID(f.id, d.ID); err != nil {
		return err
	}
	if err := checkName(f.service, d.Service); err != nil {
		return err
	}
	if err := checkName(f.environment, d.Environment); err != nil {
		return err
	}
	if err := checkVersion(f.version, d.Version, true); err != nil {
		return err
	}
	if err := checkVersion(f.previousVersion, d.PreviousVersion, false); err != nil {
		return err
	}
	if err := checkHosts(f.hosts, d.Hosts); err != nil {
		return err
	}
	return checkLabels(f.labels, d.Labels)
}

// Validate checks r as DecodeRollbackRequest does, apart from the subject.
func (r RollbackRequest) Validate() error {
	if err := checkID("id", r.ID); err != nil {
		return err
	}
	if err := checkName("service", r.Service); err != nil {
		return err
	}
	if err := checkName("environment", r.Environment); err != nil {
		return err
	}
	if err := checkVersion("version", r.Version, false); err != nil {
		return err
	}
	if err := checkVersion("to_version", r.ToVersion, false); err != nil {
		return err
	}
	if err := checkHosts("hosts", r.Hosts); err != nil {
		return err
	}
	if err := checkLabels("labels", r.Labels); err != nil {
		return err
	}
	if r.Reason == "" {
		return &RejectError{Field: "reason", Reason: "is required"}
	}
	if err := checkText("reason", r.Reason, MaxReasonLen, true); err != nil {
		return err
	}
	switch r.Source {
	case SourceValidation, SourceManual, SourceAlert:
	case "":
		return &RejectError{Field: "source", Reason: "is required (validation, manual or alert)"}
	default:
		return reject("source", r.Source, "is not one of validation, manual, alert")
	}
	if r.RunID != "" {
		if err := checkID("run_id", r.RunID); err != nil {
			return err
		}
	}
	if r.DeployID != "" {
		if err := checkID("deploy_id", r.DeployID); err != nil {
			return err
		}
	}
	if err := checkText("policy", r.Policy, 256, false); err != nil {
		return err
	}
	if r.Alert != nil {
		return r.Alert.Validate()
	}
	return nil
}

var (
	alertLabelRE  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]{0,127}$`)
	fingerprintRE = regexp.MustCompile(`^[0-9a-f]{1,64}$`)
)

// Validate checks an alert reference: it reaches the audit and the
// executor's records, so every part is bounded and printable.
func (a AlertRef) Validate() error {
	if a.Name == "" {
		return &RejectError{Field: "alert.name", Reason: "is required"}
	}
	if err := checkText("alert.name", a.Name, 256, true); err != nil {
		return err
	}
	if !fingerprintRE.MatchString(a.Fingerprint) {
		return reject("alert.fingerprint", a.Fingerprint, "is not an Alertmanager fingerprint (hex)")
	}
	if err := checkText("alert.generator_url", a.GeneratorURL, 2048, false); err != nil {
		return err
	}
	if len(a.Labels) > MaxLabels {
		return &RejectError{Field: "alert.labels", Reason: "has " + strconv.Itoa(len(a.Labels)) + " entries, more than the limit of " + strconv.Itoa(MaxLabels)}
	}
	for k, v := range a.Labels {
		if !alertLabelRE.MatchString(k) {
			return reject("alert.labels", k, "is not a label name")
		}
		if err := checkText("alert.labels."+k, v, 1024, false); err != nil {
			return err
		}
	}
	return nil
}

// ClampReason makes s acceptable as a RollbackRequest or RolledBack reason:
// control characters other than newline and tab become spaces, other
// unprintable runes become '?', and it is cut to MaxReasonLen runes.
func ClampReason(s string) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == MaxReasonLen {
			break
		}
		switch {
		case r == '\n' || r == '\t':
		case unicode.IsControl(r):
			r = ' '
		case r == utf8.RuneError || !unicode.IsPrint(r):
			r = '?'
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

func reject(field, value, reason string) *RejectError {
	return &RejectError{Field: field, Value: printable(value, 64), Reason: reason}
}

func checkID(field, v string) error {
	if v == "" {
		return &RejectError{Field: field, Reason: "is required"}
	}
	if !IDPattern.MatchString(v) {
		return reject(field, v, "does not match "+IDPattern.String())
	}
	return nil
}

// CheckNames checks a service and an environment named by something other
// than a deploy event (an alert's labels), with the same rules.
func CheckNames(service, environment string) error {
	if err := checkName("service", service); err != nil {
		return err
	}
	return checkName("environment", environment)
}

func checkName(field, v string) error {
	if v == "" {
		return &RejectError{Field: field, Reason: "is required"}
	}
	if !NamePattern.MatchString(v) {
		return reject(field, v, "does not match "+NamePattern.String())
	}
	if strings.Contains(v, "..") {
		return reject(field, v, `must not contain ".."`)
	}
	// A trailing dot would make an empty token in the subjects the name
	// becomes part of.
	if strings.HasSuffix(v, ".") {
		return reject(field, v, `must not end with "."`)
	}
	return nil
}

func checkVersion(field, v string, required bool) error {
	if v == "" {
		if required {
			return &RejectError{Field: field, Reason: "is required"}
		}
		return nil
	}
	if strings.Contains(v, "/") {
		return reject(field, v, `must not contain "/": a version is a release directory name`)
	}
	if !VersionPattern.MatchString(v) {
		return reject(field, v, "does not match "+VersionPattern.String())
	}
	if strings.Contains(v, "..") {
		return reject(field, v, `must not contain ".."`)
	}
	return nil
}

func checkHosts(field string, hosts []string) error {
	if len(hosts) > MaxHosts {
		return &RejectError{Field: field, Reason: "has " + strconv.Itoa(len(hosts)) + " entries, more than the limit of " + strconv.Itoa(MaxHosts)}
	}
	seen := make(map[string]int, len(hosts))
	for i, h := range hosts {
		if why := hostProblem(h); why != "" {
			return reject(index(field, i), h, why)
		}
		if j, dup := seen[h]; dup {
			return reject(index(field, i), h, "repeats "+index(field, j))
		}
		seen[h] = i
	}
	return nil
}

// hostProblem says what is wrong with a host entry, or "" if nothing is.
// A host ends up as an ssh destination and in templated paths, so only DNS
// names and IP literals pass: nothing that ssh could read as an option
// (leading '-'), no user@, no spaces or shell metacharacters.
func hostProblem(h string) string {
	switch {
	case h == "":
		return "is empty"
	case len(h) > 300:
		return "is longer than 300 bytes"
	case h[0] == '-':
		return "must not start with '-' (ssh would read it as an option)"
	}
	if h[0] == '[' {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return "has '[' without ']'"
		}
		if why := ipv6Problem(h[1:end]); why != "" {
			return why
		}
		rest := h[end+1:]
		if rest == "" {
			return ""
		}
		if rest[0] != ':' {
			return "must be [ipv6] or [ipv6]:port"
		}
		return portProblem(rest[1:])
	}
	if strings.Count(h, ":") > 1 {
		return ipv6Problem(h)
	}
	host, port, hasPort := strings.Cut(h, ":")
	if hasPort {
		if why := portProblem(port); why != "" {
			return why
		}
	}
	return hostnameProblem(host)
}

func ipv6Problem(s string) string {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is6() {
		return "is not a valid IPv6 address"
	}
	if a.Zone() != "" {
		return "must not carry an IPv6 zone"
	}
	return ""
}

func portProblem(p string) string {
	if p == "" || len(p) > 5 || p[0] == '0' || strings.Trim(p, "0123456789") != "" {
		return "has an invalid port (want 1-65535)"
	}
	if n, _ := strconv.Atoi(p); n < 1 || n > 65535 {
		return "has port " + p + ", out of 1-65535"
	}
	return ""
}

func hostnameProblem(h string) string {
	if h == "" {
		return "has an empty host name"
	}
	// All digits and dots: an IPv4 address or nothing; "10.0.0.999" and
	// "010.0.0.1" (octal to some resolvers) are refused.
	if strings.Trim(h, "0123456789.") == "" {
		if a, err := netip.ParseAddr(h); err != nil || !a.Is4() {
			return "is not a valid IPv4 address"
		}
		return ""
	}
	if len(h) > 253 {
		return "has a host name longer than 253 bytes"
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 {
			return "is not a valid host name (empty or overlong label)"
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return "is not a valid host name (label starts or ends with '-')"
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "is not a valid host name (only letters, digits, '-', '_' and '.')"
			}
		}
	}
	return ""
}

func checkLabelKey(field, k string) error {
	if !LabelKeyPattern.MatchString(k) {
		return reject(field, k, "has a key that does not match "+LabelKeyPattern.String())
	}
	return nil
}

func checkLabels(field string, labels map[string]string) error {
	if len(labels) > MaxLabels {
		return &RejectError{Field: field, Reason: "has " + strconv.Itoa(len(labels)) + " entries, more than the limit of " + strconv.Itoa(MaxLabels)}
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := checkLabelKey(field, k); err != nil {
			return err
		}
		if err := checkText(field+"."+k, labels[k], MaxLabelValueLen, false); err != nil {
			return err
		}
	}
	return nil
}

// checkText accepts printable UTF-8 of at most max runes. Control characters
// and invisible formatting runes (such as bidi overrides) are refused: these
// values are shown to people in logs and audit records.
func checkText(field, v string, max int, multiline bool) error {
	if !utf8.ValidString(v) {
		return &RejectError{Field: field, Reason: "is not valid UTF-8"}
	}
	if n := utf8.RuneCountInString(v); n > max {
		return &RejectError{Field: field, Value: printable(v, 64), Reason: "is " + strconv.Itoa(n) + " characters long, more than " + strconv.Itoa(max)}
	}
	for _, r := range v {
		if multiline && (r == '\n' || r == '\t') {
			continue
		}
		if r == utf8.RuneError {
			return reject(field, v, "contains U+FFFD (an invalid or unpaired escape)")
		}
		if unicode.IsControl(r) {
			return reject(field, v, "contains control characters")
		}
		if !unicode.IsPrint(r) {
			return reject(field, v, "contains unprintable characters")
		}
	}
	return nil
}
