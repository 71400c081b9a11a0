package policy_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/promclient"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestHostileLabelThroughPrometheus: a deploy whose label would end the
// string literal it is put in and append `or vector(1)` made its own check
// pass. Through the real decoder, template and Prometheus, the check
// measures the service's real (bad) value and fails.
func TestHostileLabelThroughPrometheus(t *testing.T) {
	const hostile = `x"} or vector(1) #`
	exp := testutil.NewExporter(t)
	// The series carries the hostile value as its own label, so that the
	// escaped query finds it: PromQL must read back the exact value.
	exp.Set("shop_healthy", map[string]string{"service": "shop", "team": hostile}, 0)
	exp.Set("shop_healthy", map[string]string{"service": "shop", "team": "payments"}, 1)
	prom := testutil.StartPrometheus(t, exp.URL)
	client, err := promclient.New(promclient.Options{URL: prom.URL})
	if err != nil {
		t.Fatal(err)
	}

	file := filepath.Join(t.TempDir(), "shop.yml")
	if err := os.WriteFile(file, []byte(`policies:
  - name: shop
    checks:
      - name: healthy
        query: shop_healthy{service="{{ .Service }}", team="{{ .Labels.team }}"}
        min: 1
    rollback: {link: /srv/shop/current}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := policy.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	d, err := events.DecodeDeploy("deploys.production.shop", nil,
		[]byte(`{"id": "d-1", "service": "shop", "environment": "production", "version": "v2", "labels": {"team": "x\"} or vector(1) #"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if d.Labels["team"] != hostile {
		t.Fatalf("decoded team label %q", d.Labels["team"])
	}
	check := set.Policies[0].Checks[0]
	q, err := check.RenderQuery(policy.TemplateData{Service: d.Service, Environment: d.Environment, Version: d.Version, Labels: d.Labels})
	if err != nil {
		t.Fatal(err)
	}
	var j policy.Judgement
	testutil.Eventually(t, 30*time.Second, "the exporter scraped", func() bool {
		vec, err := client.Query(context.Background(), q, time.Now())
		j = check.Judge(policy.SeriesOf(vec), nil, err)
		return err == nil && len(vec) > 0
	})
	if j.Outcome != policy.Fail || j.Value != 0 {
		t.Errorf("query %s: %s, value %v (%s); want the real value 0 to fail min 1", q, j.Outcome, j.Value, j.Reason)
	}
}
