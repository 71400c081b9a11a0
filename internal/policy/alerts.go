package policy

import (
	"github.com/prometheus/alertmanager/pkg/labels"
	"github.com/prometheus/common/model"
)

// Alerts says which Alertmanager alerts may roll back the deploys a policy
// matches:
//
//	alerts:
//	  matchers: ['alertname="ShopErrorsHigh"', 'severity=~"critical|page"']
//	  within: 2h
//
// An alert counts when it carries the deploy's service and environment
// labels (service, environment), every matcher matches its labels, and it
// fires within `within` of the deploy.
type Alerts struct {
	Matchers []string       `yaml:"matchers"`
	Within   model.Duration `yaml:"within"`

	matchers labels.Matchers
}

// DefaultAlertsWithin is how long after a deploy an alert may roll it back
// when the policy does not say.
var DefaultAlertsWithin = model.Duration(2 * 60 * 60 * 1e9)

// Matches reports whether every matcher matches the alert's labels.
func (a *Alerts) Matches(ls map[string]string) bool {
	set := model.LabelSet{}
	for k, v := range ls {
		set[model.LabelName(k)] = model.LabelValue(v)
	}
	return a.matchers.Matches(set)
}

func (d *decoder) checkAlerts(a *Alerts) {
	if a == nil {
		return
	}
	line := d.line(0, a)
	if len(a.Matchers) == 0 {
		d.errorf(d.line(line, &a.Matchers), "alerts: matchers is required (say which alerts may roll back, e.g. 'alertname=\"ShopErrorsHigh\"')")
	}
	for _, s := range a.Matchers {
		m, err := labels.ParseMatcher(s)
		if err != nil {
			d.errorf(d.line(line, &a.Matchers), "alerts: matcher %q: %v", s, err)
			continue
		}
		a.matchers = append(a.matchers, m)
	}
	d.positive(&a.Within, DefaultAlertsWithin, "alerts.within")
}
