package main

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestCheckCommand(t *testing.T) {
	e := newMigrateEnv(t)
	out, _, err := runCLI(t, "check")
	if err == nil || !strings.Contains(out, "FAIL tenant_tables_rls") {
		t.Errorf("check on an unmigrated database: %v\n%s", err, out)
	}
	e.mustRun(t, "migrate", "up")
	out = e.mustRun(t, "check")
	if l := lines(out); len(l) != 14 || strings.Contains(out, "FAIL") {
		t.Errorf("check on a migrated database:\n%s", out)
	}
	conn, err := pgx.Connect(context.Background(), e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), `GRANT DELETE ON agents TO vital_tenant_writer`); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCLI(t, "check")
	if err == nil || err.Error() != "1 of 14 checks failed" ||
		!strings.Contains(out, "FAIL tenant_privileges: vital_tenant_writer: table-level DELETE on agents") {
		t.Errorf("check after GRANT DELETE: %v\n%s", err, out)
	}
	// Statistics handed back to every role: the audit names the fix.
	if _, err := conn.Exec(context.Background(), `REVOKE DELETE ON agents FROM vital_tenant_writer;
		GRANT SELECT ON pg_catalog.pg_stat_activity TO PUBLIC`); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCLI(t, "check")
	if err == nil || err.Error() != "1 of 14 checks failed" || !strings.Contains(out,
		"FAIL shared_stats_private: PUBLIC: may read 1 statistics and lock views (pg_catalog.pg_stat_activity); as a superuser, run: vitalproxy migrate reapply 20251026000005") {
		t.Errorf("check after GRANT SELECT ON pg_stat_activity TO PUBLIC: %v\n%s", err, out)
	}
	e.mustRun(t, "migrate", "reapply", "20251026000005")
	if out = e.mustRun(t, "check"); strings.Contains(out, "FAIL") {
		t.Errorf("check after reapply:\n%s", out)
	}
}
