package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

// migrateEnv is a fresh database and an environment pointing the CLI at it.
// It relies on the package's TestMain starting the shared cluster.
type migrateEnv struct {
	c   *pgtest.Cluster
	db  string
	url string
}

func newMigrateEnv(t *testing.T) *migrateEnv {
	t.Helper()
	c := pgtest.Shared(t)
	e := &migrateEnv{c: c, db: c.NewDatabase(t)}
	e.url = c.URL(e.db)
	t.Setenv("VITALPROXY_CONFIG", "")
	t.Setenv("VITALPROXY_DATABASE_URL", e.url)
	t.Setenv("VITALPROXY_ROLE_SECRET", "")
	t.Setenv("VITALPROXY_ROLE_PREFIX", "")
	return e
}

// runCLI runs the CLI in-process and returns its stdout, stderr and the
// error main would print (as "vitalproxy: <err>", exit status 1).
func runCLI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCommand()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errOut)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

func (e *migrateEnv) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := runCLI(t, args...)
	if err != nil {
		t.Fatalf("%v: %v\n%s%s", args, err, out, errOut)
	}
	return out
}

func (e *migrateEnv) query(t *testing.T, sql string, dst any) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(context.Background(), sql).Scan(dst); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (e *migrateEnv) migrated(t *testing.T) bool {
	t.Helper()
	var ok bool
	e.query(t, `SELECT to_regclass('vital.goose_db_version') IS NOT NULL`, &ok)
	return ok
}

func lines(s string) []string {
	return strings.Split(strings.TrimRight(s, "\n"), "\n")
}

func TestMigrateCommands(t *testing.T) {
	e := newMigrateEnv(t)

	out := e.mustRun(t, "migrate", "status")
	if n := strings.Count(out, " pending "); n != 8 {
		t.Errorf("status of a fresh database shows %d pending migrations:\n%s", n, out)
	}
	out = e.mustRun(t, "migrate", "up", "--dry-run")
	if !strings.Contains(out, "-- 20251026000001_create_tenants_table.sql (up)") ||
		!strings.Contains(out, "CREATE TABLE IF NOT EXISTS public.tenants") {
		t.Errorf("up --dry-run does not print the SQL:\n%.400s", out)
	}
	if e.migrated(t) {
		t.Fatal("up --dry-run changed the database")
	}

	out = e.mustRun(t, "migrate", "up", "--to", "20251026000001")
	l := lines(out)
	if len(l) != 2 || !strings.HasPrefix(l[0], "applied 20251026000000_baseline.sql (") ||
		!strings.HasPrefix(l[1], "applied 20251026000001_create_tenants_table.sql (") || !strings.HasSuffix(l[1], "ms)") {
		t.Errorf("up --to 20251026000001 printed:\n%s", out)
	}
	out = e.mustRun(t, "migrate", "up")
	if l := lines(out); len(l) != 6 || !strings.HasPrefix(l[2], "applied 20251026000004_seed_mvp_tenants.sql (") ||
		!strings.HasPrefix(l[3], "applied 20251026000005_harden_shared_paths.sql (") ||
		!strings.HasPrefix(l[4], "applied 20251026000006_pooled_tenant_context.sql (") ||
		!strings.HasPrefix(l[5], "applied 20251026000007_tenant_scoped_features.sql (") {
		t.Errorf("up printed:\n%s", out)
	}
	if out = e.mustRun(t, "migrate", "up"); !strings.Contains(out, "nothing to apply") {
		t.Errorf("second up printed:\n%s", out)
	}
	out = e.mustRun(t, "migrate", "status")
	if n := strings.Count(out, " applied "); n != 8 || strings.Count(out, " ok") != 8 {
		t.Errorf("status after up:\n%s", out)
	}
	out = e.mustRun(t, "migrate", "verify")
	for _, line := range lines(out) {
		if !strings.HasPrefix(line, "PASS ") {
			t.Errorf("verify: %s", line)
		}
	}
	if !strings.Contains(out, "PASS seed_rls_isolation") || !strings.Contains(out, "PASS tenant_tables_rls") {
		t.Errorf("verify output lacks the seed and audit checks:\n%s", out)
	}

	out = e.mustRun(t, "migrate", "reapply", "20251026000005")
	if !strings.HasPrefix(out, "reapplied 20251026000005_harden_shared_paths.sql (") {
		t.Errorf("reapply printed:\n%s", out)
	}

	out = e.mustRun(t, "migrate", "down", "--dry-run")
	if !strings.HasPrefix(out, "-- 20251026000007_tenant_scoped_features.sql (down)") || strings.Contains(out, "20251026000006_") {
		t.Errorf("down --dry-run printed:\n%.300s", out)
	}
	if out = e.mustRun(t, "migrate", "down", "--to", "20251026000004"); !strings.HasPrefix(out, "rolled back 20251026000007_tenant_scoped_features.sql (") ||
		!strings.Contains(out, "rolled back 20251026000006_pooled_tenant_context.sql (") ||
		!strings.Contains(out, "rolled back 20251026000005_harden_shared_paths.sql (") {
		t.Errorf("down printed:\n%s", out)
	}
	if _, _, err := runCLI(t, "migrate", "reapply", "20251026000005"); err == nil ||
		err.Error() != "migration not applied: 20251026000005_harden_shared_paths.sql is pending; apply it with migrate up" {
		t.Errorf("reapply of a pending migration: %v", err)
	}
	out = e.mustRun(t, "migrate", "down", "--to", "0")
	if l := lines(out); len(l) != 5 || !strings.HasPrefix(l[4], "rolled back 20251026000000_baseline.sql (") {
		t.Errorf("down --to 0 printed:\n%s", out)
	}
	if e.migrated(t) {
		t.Error("down --to 0 left the bookkeeping tables")
	}
	if out = e.mustRun(t, "migrate", "down"); !strings.Contains(out, "nothing to roll back") {
		t.Errorf("down with nothing applied printed:\n%s", out)
	}
}

func TestMigrateStatusReportsChangedFiles(t *testing.T) {
	e := newMigrateEnv(t)
	e.mustRun(t, "migrate", "up")
	conn, err := pgx.Connect(context.Background(), e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), `UPDATE vital.migration_checksums SET checksum = 'x' WHERE version = 20251026000002`); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, "migrate", "status")
	if err == nil || !strings.Contains(err.Error(), "checksum mismatch") || !strings.Contains(out, "checksum mismatch") {
		t.Errorf("status: %v\n%s", err, out)
	}
	if _, _, err := runCLI(t, "migrate", "up"); err == nil || !strings.Contains(err.Error(), "20251026000002_add_tenant_columns_to_resources.sql") {
		t.Errorf("up with a changed migration: %v", err)
	}
}

func TestMigrateUpSyncsTenantRoles(t *testing.T) {
	e := newMigrateEnv(t)
	prefix := fmt.Sprintf("mt%d_", time.Now().UnixNano()%100000)
	t.Setenv("VITALPROXY_ROLE_SECRET", base64.StdEncoding.EncodeToString([]byte("migrate-test-secret-0123456789")))
	t.Setenv("VITALPROXY_ROLE_PREFIX", prefix)
	t.Cleanup(func() {
		ctx := context.Background()
		for _, r := range []string{"digital_health_startup_rw", "digital_health_startup_ro", "vital_platform_rw", "vital_platform_ro", "vital_platform_admin"} {
			if err := e.c.Exec(ctx, "postgres", "DROP ROLE IF EXISTS "+prefix+r); err != nil {
				t.Logf("drop role: %v", err)
			}
		}
	})
	out := e.mustRun(t, "migrate", "up")
	if !strings.Contains(out, "tenant roles: ") || !strings.Contains(out, prefix+"vital_platform_admin") {
		t.Errorf("up with a role secret did not sync tenant roles:\n%s", out)
	}
	var n int
	e.query(t, `SELECT count(*) FROM vital.tenant_roles`, &n)
	if n != 5 {
		t.Errorf("%d tenant roles mapped after up, want 5", n)
	}
	if out = e.mustRun(t, "migrate", "up"); !strings.Contains(out, "tenant roles: in sync") {
		t.Errorf("second up:\n%s", out)
	}
	out = e.mustRun(t, "check")
	if strings.Contains(out, "FAIL") {
		t.Errorf("check after syncing roles:\n%s", out)
	}
}

func TestMigrateBadInput(t *testing.T) {
	e := newMigrateEnv(t)
	const pw = "hunter2-secret"
	tests := []struct {
		name string
		url  string
		args []string
		want string
	}{
		{"unparsable URL", "postgres://u:" + pw + "@host:notaport/db", []string{"migrate", "up"}, "database URL"},
		{"not a URL", "just some words " + pw, []string{"migrate", "status"}, "database URL"},
		{"no URL", "", []string{"migrate", "up"}, "no database URL"},
		{"wrong password", e.c.URLFor(e.c.User, pw, e.db), []string{"migrate", "up"}, "password authentication failed"},
		{"missing database", e.c.URL("no_such_database"), []string{"migrate", "up"}, `database "no_such_database" does not exist`},
		{"unreachable host", "postgres://u:" + pw + "@127.0.0.1:1/db?sslmode=disable", []string{"migrate", "status"}, "cannot connect"},
		{"unknown --to", e.url, []string{"migrate", "up", "--to", "12345"}, "unknown migration version 12345"},
		{"unknown down --to", e.url, []string{"migrate", "down", "--to", "20251026000008"}, "unknown migration version 20251026000008"},
		{"up --to 0", e.url, []string{"migrate", "up", "--to", "0"}, "--to must be a migration version"},
		{"check wrong password", e.c.URLFor(e.c.User, pw, e.db), []string{"check"}, "password authentication failed"},
		{"verify missing database", e.c.URL("no_such_database"), []string{"migrate", "verify"}, "does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("VITALPROXY_DATABASE_URL", tt.url)
			out, errOut, err := runCLI(t, tt.args...)
			if err == nil {
				t.Fatalf("%v succeeded; want an error", tt.args)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q does not contain %q", msg, tt.want)
			}
			for _, text := range []string{msg, out, errOut} {
				if strings.Contains(text, pw) || strings.Contains(text, e.c.Password) {
					t.Errorf("output reveals a password: %q", text)
				}
				if strings.Contains(text, "goroutine") || strings.Contains(text, "panic") {
					t.Errorf("output has a stack trace: %q", text)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans several lines: %q", msg)
			}
		})
	}
	if e.migrated(t) {
		t.Error("bad input left the database partly migrated")
	}
}
