package testutil

import (
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/prometheus/client_golang/prometheus"
)

// Series is the series of metric name in reg whose labels include the
// given ones (name, value pairs); nil when there is none.
func Series(t testing.TB, reg prometheus.Gatherer, name string, labels ...string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue next
				}
			}
			return m
		}
	}
	return nil
}

// ToFloat64 is the value of the series of metric name with label=value in
// reg: a counter's or gauge's value, a histogram's sample count. It fails
// the test when there is no such series.
func ToFloat64(t testing.TB, reg prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	m := Series(t, reg, name, label, value)
	switch {
	case m == nil:
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetHistogram() != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	t.Fatalf("no %s{%s=%q} in the registry", name, label, value)
	return 0
}
