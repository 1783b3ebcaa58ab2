package migrations_test

import (
	"context"
	"errors"
	"io/fs"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/migrations/audit"
)

const hardening int64 = 20251026000005

// sharedPaths are statements any role could run before migration 5 and a
// tenant role may not after it (SQLSTATE 42501). They name pg_catalog's
// objects: migration 7's public shims and views of the same names are
// tenant-scoped (features_test.go).
var sharedPaths = []string{
	`SELECT usename, application_name FROM pg_catalog.pg_stat_activity`,
	`SELECT * FROM pg_locks`,
	`SELECT n_live_tup FROM pg_stat_user_tables`,
	`SELECT * FROM pg_statio_user_tables`,
	`SELECT * FROM pg_stat_database`,
	`SELECT pg_stat_get_live_tuples('public.agents'::regclass)`,
	`SELECT pg_stat_get_backend_idset()`,
	`SELECT * FROM pg_stat_get_activity(NULL)`,
	`SELECT pg_table_size('public.agents')`,
	`SELECT pg_total_relation_size('public.agents')`,
	`SELECT pg_database_size(current_database())`,
	`SELECT * FROM pg_lock_status()`,
	`SELECT pg_blocking_pids(pg_backend_pid())`,
	`SELECT pg_catalog.pg_advisory_lock(42)`,
	`SELECT pg_catalog.pg_try_advisory_xact_lock(4, 2)`,
	`SELECT pg_catalog.pg_advisory_unlock_all()`,
	`SELECT lo_create(0)`,
	`SELECT lo_creat(-1)`,
	`SELECT lo_from_bytea(0, 'x')`,
}

// tryAs runs sql on conn and returns its SQLSTATE ("" when it succeeded).
func tryAs(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	_, err := conn.Exec(ctxT(t), sql)
	if err != nil && sqlState(err) == "" {
		t.Fatalf("%s: %v", sql, err)
	}
	return sqlState(err)
}

func TestHardeningClosesSharedPaths(t *testing.T) {
	db := migrated(t)
	ctx := ctxT(t)
	for _, capability := range []string{"rw", "ro"} {
		conn := db.tenantLogin(t, "digital-health-startup", capability)
		for _, q := range sharedPaths {
			if got := tryAs(t, conn, q); got != "42501" {
				t.Errorf("as a %s tenant role, %s: SQLSTATE %q, want 42501", capability, q, got)
			}
		}
		// What clients and psql's \d need keeps working.
		for _, q := range []string{
			`SELECT count(*) FROM pg_catalog.pg_class`,
			`SELECT count(*) FROM pg_catalog.pg_stats`,
			`SELECT pg_backend_pid(), pg_is_in_recovery(), current_setting('server_version_num')`,
			`SELECT pg_catalog.pg_get_userbyid(relowner), pg_catalog.obj_description(oid, 'pg_class') FROM pg_catalog.pg_class LIMIT 1`,
			`SELECT id, changed_at FROM public.resource_sharing_audit`,
		} {
			if got := tryAs(t, conn, q); got != "" {
				t.Errorf("as a %s tenant role, %s: SQLSTATE %q, want success", capability, q, got)
			}
		}
	}

	// Operators (vital_operator, hence pg_read_all_stats) see every
	// session, with its query text.
	role, pw := "op_"+randomHex(3), randomHex(12)
	db.exec(t, `CREATE ROLE `+role+` LOGIN PASSWORD '`+pw+`' IN ROLE vital_operator`)
	t.Cleanup(func() {
		if err := db.c.Exec(context.Background(), "postgres", `DROP ROLE IF EXISTS `+role); err != nil {
			t.Logf("drop role %s: %v", role, err)
		}
	})
	tenant := db.tenantLogin(t, "digital-health-startup", "rw")
	if _, err := tenant.Exec(ctx, `SELECT 'hardening-marker'`); err != nil {
		t.Fatal(err)
	}
	op := db.connect(t, db.c.URLFor(role, pw, db.name))
	if n := scalar[int](t, op, `SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%hardening-marker%' AND pid <> pg_backend_pid()`); n != 1 {
		t.Errorf("an operator sees the tenant's query in %d pg_stat_activity rows, want 1", n)
	}
	if got := tryAs(t, op, `SELECT count(*) FROM pg_locks`); got != "" {
		t.Errorf("an operator reading pg_locks: SQLSTATE %q", got)
	}

	// The sharing audit's ids are random uuids now.
	db.exec(t, `INSERT INTO agents (tenant_id, name, is_shared, sharing_mode, resource_type)
		SELECT id, 'shared', true, 'global', 'platform' FROM tenants WHERE slug = 'vital-platform'`)
	if typ := scalar[string](t, db.admin(t), `SELECT pg_typeof(id)::text FROM resource_sharing_audit LIMIT 1`); typ != "uuid" {
		t.Errorf("resource_sharing_audit.id is %s, want uuid", typ)
	}
}

// publicMay reports whether PUBLIC holds privilege on the object.
func publicMay(t *testing.T, conn *pgx.Conn, fn, object, privilege string) bool {
	t.Helper()
	return scalar[bool](t, conn, `SELECT `+fn+`('public', $1, $2)`, object, privilege)
}

func TestHardeningDownGivesBackAndUpAgain(t *testing.T) {
	db := migrated(t)
	ctx := ctxT(t)
	conn := db.admin(t)
	db.exec(t, `INSERT INTO agents (tenant_id, name, is_shared, sharing_mode, resource_type)
		SELECT id, 'a' || g, true, 'global', 'platform' FROM tenants, generate_series(1, 3) g WHERE slug = 'vital-platform'`)
	m := newMigrator(t, db.url)
	res, err := m.DownTo(ctx, hardening-1)
	if err != nil || len(res) != 3 || res[2].Version != hardening {
		t.Fatalf("down = %v, %v", names(res), err)
	}
	for _, c := range []struct{ fn, object, privilege string }{
		{"has_table_privilege", "pg_catalog.pg_stat_activity", "SELECT"},
		{"has_table_privilege", "pg_catalog.pg_locks", "SELECT"},
		{"has_function_privilege", "pg_catalog.pg_stat_get_activity(integer)", "EXECUTE"},
		{"has_function_privilege", "pg_catalog.pg_advisory_lock(bigint)", "EXECUTE"},
		{"has_function_privilege", "pg_catalog.lo_from_bytea(oid,bytea)", "EXECUTE"},
	} {
		if !publicMay(t, conn, c.fn, c.object, c.privilege) {
			t.Errorf("after down, PUBLIC lacks %s on %s", c.privilege, c.object)
		}
	}
	if scalar[bool](t, conn, `SELECT has_function_privilege('public', 'pg_catalog.lo_import(text)', 'EXECUTE')`) {
		t.Error("down gave PUBLIC lo_import(text), which it never had")
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM pg_proc p, aclexplode(p.proacl) a
		WHERE (p.proname LIKE 'pg\_stat\_get\_%' OR p.proname LIKE 'pg\_%advisory%' OR p.proname = 'pg_lock_status')
		  AND a.grantee IN ('vital_owner'::regrole, 'pg_read_all_stats'::regrole)`); n != 0 {
		t.Errorf("after down, %d function privileges of vital_owner/pg_read_all_stats remain", n)
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM vital.migration_objects WHERE kind = 'public_privilege'`); n != 0 {
		t.Errorf("after down, %d public_privilege records remain", n)
	}
	// The audit ids are a bigint identity again, and new rows continue
	// after the old ones.
	if got := scalar[string](t, conn, `SELECT format_type(atttypid, atttypmod) || ' ' || attidentity::text FROM pg_attribute
		WHERE attrelid = 'resource_sharing_audit'::regclass AND attname = 'id'`); got != "bigint a" {
		t.Errorf("after down, resource_sharing_audit.id is %q, want a bigint identity", got)
	}
	db.exec(t, `UPDATE agents SET shared_with = ARRAY[tenant_id] WHERE name = 'a1'`)
	if got := scalar[string](t, conn, `SELECT string_agg(id::text, ',' ORDER BY id) FROM resource_sharing_audit`); got != "1,2,3,4" {
		t.Errorf("audit ids after down and one more event: %s, want 1,2,3,4", got)
	}
	// Without migration 5 the audit says what is open.
	checks, err := m.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var failed []string
	for _, c := range checks {
		if !c.OK {
			failed = append(failed, c.Name)
		}
	}
	if want := audit.SharedStatsPrivate + "," + audit.SharedFunctionsRevoked + "," + audit.PooledRolesSafe; strings.Join(failed, ",") != want {
		t.Errorf("after down, failing checks %v, want %s", failed, want)
	}

	res, err = m.Up(ctx)
	if err != nil || len(res) != 3 {
		t.Fatalf("up again = %v, %v", names(res), err)
	}
	if publicMay(t, conn, "has_table_privilege", "pg_catalog.pg_stat_activity", "SELECT") {
		t.Error("after up again, PUBLIC may read pg_stat_activity")
	}
	if got := scalar[string](t, conn, `SELECT pg_typeof(id)::text FROM resource_sharing_audit LIMIT 1`); got != "uuid" {
		t.Errorf("after up again, resource_sharing_audit.id is %s", got)
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM resource_sharing_audit`); n != 4 {
		t.Errorf("%d audit rows after down and up, want 4", n)
	}
	assertVerifyPasses(t, db)
}

func TestPgStatStatementsInstalledLater(t *testing.T) {
	db := migrated(t)
	ctx := ctxT(t)
	conn := db.admin(t)
	db.exec(t, `CREATE EXTENSION pg_stat_statements`)
	m := newMigrator(t, db.url)
	checks, err := m.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range checks {
		if c.Name == audit.SharedStatsPrivate {
			found = true
			if c.OK || !strings.Contains(c.Detail, "pg_stat_statements") || !strings.Contains(c.Detail, "migrate reapply 20251026000005") {
				t.Errorf("with pg_stat_statements installed after the migrations: %s", c)
			}
		} else if !c.OK {
			t.Errorf("%s", c)
		}
	}
	if !found {
		t.Fatalf("no %s check", audit.SharedStatsPrivate)
	}
	res, err := m.Reapply(ctx, hardening)
	if err != nil || res.Version != hardening || !strings.HasPrefix(res.String(), "reapplied 20251026000005_harden_shared_paths.sql (") {
		t.Fatalf("reapply = %v, %v", res, err)
	}
	assertVerifyPasses(t, db)
	if publicMay(t, conn, "has_table_privilege", "public.pg_stat_statements", "SELECT") ||
		publicMay(t, conn, "has_function_privilege", "public.pg_stat_statements(boolean)", "EXECUTE") {
		t.Error("after reapply, PUBLIC may still read pg_stat_statements")
	}
	if !scalar[bool](t, conn, `SELECT has_table_privilege('pg_read_all_stats', 'public.pg_stat_statements', 'SELECT')`) {
		t.Error("after reapply, pg_read_all_stats may not read pg_stat_statements")
	}
	if scalar[bool](t, conn, `SELECT has_function_privilege('pg_read_all_stats', 'public.pg_stat_statements_reset(oid,oid,bigint)', 'EXECUTE')`) {
		t.Error("reapply handed pg_stat_statements_reset to pg_read_all_stats")
	}
	// Down gives PUBLIC back what the extension gave it, and no more.
	if _, err := m.DownTo(ctx, hardening-1); err != nil {
		t.Fatal(err)
	}
	if !publicMay(t, conn, "has_table_privilege", "public.pg_stat_statements", "SELECT") {
		t.Error("after down, PUBLIC may not read pg_stat_statements")
	}
	if publicMay(t, conn, "has_function_privilege", "public.pg_stat_statements_reset(oid,oid,bigint)", "EXECUTE") {
		t.Error("after down, PUBLIC may reset pg_stat_statements")
	}
}

func TestReapplyRefuses(t *testing.T) {
	db := newTestDB(t)
	ctx := ctxT(t)
	m := newMigrator(t, db.url)
	if _, err := m.UpTo(ctx, 20251026000004); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Reapply(ctx, hardening); !errors.Is(err, migrations.ErrNotApplied) {
		t.Errorf("reapply of a pending migration = %v, want ErrNotApplied", err)
	}
	if _, err := m.Reapply(ctx, 20251026000009); !errors.Is(err, migrations.ErrUnknownVersion) {
		t.Errorf("reapply of an unknown version = %v, want ErrUnknownVersion", err)
	}
	orig, err := fs.ReadFile(migrations.Embedded(), allFiles[2])
	if err != nil {
		t.Fatal(err)
	}
	edited := newMigrator(t, db.url, migrations.WithFS(editedFS(t, allFiles[2], string(orig)+"\n-- edited\n")))
	if _, err := edited.Reapply(ctx, 20251026000002); !errors.Is(err, migrations.ErrChecksumMismatch) {
		t.Errorf("reapply of a changed file = %v, want ErrChecksumMismatch", err)
	}
	res, err := m.Reapply(ctx, 20251026000004)
	if err != nil || res.Direction != "reapply" {
		t.Fatalf("reapply of the seed = %v, %v", res, err)
	}
	if n := scalar[int](t, db.admin(t), `SELECT count(*) FROM tenants`); n != 2 {
		t.Errorf("%d tenants after reapplying the seed, want 2", n)
	}
	// The bookkeeping is untouched.
	st, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Version <= 20251026000004 && (!s.Applied || s.ChecksumState() != "ok") || s.Version == hardening && s.Applied {
			t.Errorf("status after reapply: %+v", s)
		}
	}
}
