package policy

import "path"

// Match returns the policy for a deploy: the first, files by name and then
// order in the file, whose match fits. It returns nil if none does.
func (s *Set) Match(service, environment string) *Policy {
	if s == nil {
		return nil
	}
	for _, p := range s.Policies {
		if p.Match.Matches(service, environment) {
			return p
		}
	}
	return nil
}

// Matches reports whether a deploy of service to environment fits m.
func (m Match) Matches(service, environment string) bool {
	return matches(m.Service, service) && matches(m.Environment, environment)
}

func matches(pattern, name string) bool {
	if pattern == "" || pattern == name {
		return true
	}
	ok, _ := path.Match(pattern, name) // Load rejects bad patterns
	return ok
}
