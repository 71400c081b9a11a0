package events

import "strings"

// SubjectNames splits "<prefix>.<environment>.<service>" for records about
// messages that could not be decoded. The service is the rest of the
// subject, since a service name may contain dots. Nothing is validated.
func SubjectNames(subject string) (environment, service string) {
	parts := strings.SplitN(subject, ".", 3)
	for len(parts) < 3 {
		parts = append(parts, "")
	}
	return parts[1], parts[2]
}
