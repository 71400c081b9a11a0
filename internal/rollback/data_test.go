package rollback

import (
	"os"
	"strings"
	"testing"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestDataRollbackPostgres rolls a release's schema change back on a real
// PostgreSQL server with the policy's down script: release v2's migration
// added a table and rows; the rollback drops them, before the code switch
// or after it as the policy says, and a failing script stops a before_code
// rollback with no link switched.
func TestDataRollbackPostgres(t *testing.T) {
	pg := testutil.StartPostgres(t)
	n := testutil.StartNATS(t)

	for _, tc := range []struct {
		name, order, down string
		wantOK            bool
	}{
		{name: "down script before the code", order: "before_code", down: "DROP TABLE coupons;", wantOK: true},
		{name: "down script after the code", order: "after_code", down: "DROP TABLE coupons;", wantOK: true},
		{name: "failing down script stops the rollback", order: "before_code", down: "DROP TABLE no_such_table;", wantOK: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := deployed(t)
			writeFile(t, h.releases+"/v2/down.sql", tc.down+"\n")
			// v2's deploy migrated the schema.
			if _, err := pg.Query("DROP TABLE IF EXISTS coupons; CREATE TABLE coupons (code text primary key, pct int); INSERT INTO coupons VALUES ('BF26', 30), ('XMAS', 20);"); err != nil {
				t.Fatal(err)
			}
			argv := append(pg.PsqlArgs(), "-f", h.releases+"/{{ .Version }}/down.sql")
			rules := loadRules(t, policyYAML("shop", "shop", h,
				"data: {command: "+yamlList(argv...)+", run_on: local, order: "+tc.order+", timeout: 30s}"))
			e, rec, _ := newExecutor(t, n, rules)

			res := e.Execute(ctxFor(t), request("rb-pg-"+tc.order+"-"+tc.down[:4]))
			exists, err := pg.Query("SELECT to_regclass('coupons') IS NOT NULL")
			if err != nil {
				t.Fatal(err)
			}
			link, err := os.Readlink(h.link)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantOK {
				if res.Status != ResultCompleted || exists != "f" || !strings.HasSuffix(link, "v1") {
					t.Fatalf("status %s, table exists %s, link %s; want completed, table dropped, link on v1 (err %v)", res.Status, exists, link, res.Err)
				}
				done := one(t, rec.all(), audit.RollbackCompleted)
				out := dig(t, done.Detail, "data", "local", "output")
				if !strings.Contains(out.(string), "DROP TABLE") {
					t.Errorf("psql output not captured in the audit: %q", out)
				}
				return
			}
			if res.Status != ResultFailed || exists != "t" || !strings.HasSuffix(link, "v2") {
				t.Fatalf("status %s, table exists %s, link %s; want failed, schema and link untouched", res.Status, exists, link)
			}
			failed := one(t, rec.all(), audit.RollbackFailed)
			if !strings.Contains(failed.Message, "data step failed before the code switch, no host switched") ||
				!strings.Contains(failed.Message, "no_such_table") {
				t.Errorf("rollback.failed message %q does not say the data step failed and why", failed.Message)
			}
		})
	}
}
