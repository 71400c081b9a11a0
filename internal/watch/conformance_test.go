package watch

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/rollback-watcher/watcher/internal/audit"
)

// TestConformanceExamplesStartRuns: the CDEvents
// specification's own conformance examples of service.deployed and
// service.upgraded, for every spec version kept in internal/events'
// testdata, start a validation run when published bare on their subject;
// their version is the artifact's OCI digest. The examples share one
// context.id, so each is given its own (the same id twice starts one run).
func TestConformanceExamplesStartRuns(t *testing.T) {
	dirs, err := filepath.Glob("../events/testdata/cdevents-conformance/*")
	if err != nil || len(dirs) < 3 {
		t.Fatalf("conformance examples: %v %v", dirs, err)
	}
	rules := "policies:\n" + policyYAML("spec", "{service: mySubject123, environment: test123}",
		"window: 1m\ninterval: 1s", "- {name: up, query: up, min: 1}")
	h := newHarness(t, rules, always(1))
	digest := "sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427"
	for _, dir := range dirs {
		fi, err := os.Stat(dir)
		if err != nil || !fi.IsDir() {
			continue
		}
		for _, name := range []string{"service_deployed.json", "service_upgraded.json"} {
			t.Run(filepath.Base(dir)+"/"+name, func(t *testing.T) {
				b, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				var ev map[string]any
				if err := json.Unmarshal(b, &ev); err != nil {
					t.Fatal(err)
				}
				id := "conf-" + filepath.Base(dir) + "-" + name[:len(name)-len(".json")]
				ev["context"].(map[string]any)["id"] = id
				if b, err = json.Marshal(ev); err != nil {
					t.Fatal(err)
				}
				h.publishRaw("deploys.test123.mySubject123", nil, b)
				rec := h.waitFor(id, audit.RunStarted, audit.EventRejected, audit.RunSkipped)
				if rec.Kind != audit.RunStarted || rec.Version != digest || rec.Service != "mySubject123" || rec.Environment != "test123" {
					t.Errorf("%s: %s %s/%s version %q: %s; want run.started for %s", id, rec.Kind, rec.Environment, rec.Service, rec.Version, rec.Message, digest)
				}
			})
		}
	}
}
