package migrations_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/migrations/audit"
)

// assertVerifyPasses runs Verify and fails the test for any failed check.
func assertVerifyPasses(t *testing.T, db testDB) []audit.Check {
	t.Helper()
	checks, err := newMigrator(t, db.url).Verify(ctxT(t))
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	for _, c := range checks {
		if !c.OK {
			t.Errorf("%s", c)
		}
	}
	return checks
}

func TestVerifyPassesOnFreshDatabase(t *testing.T) {
	db := migrated(t)
	checks := assertVerifyPasses(t, db)
	want := []string{
		migrations.CheckSeedTenants, migrations.CheckSeedPlatformAgents, migrations.CheckSeedPolicies,
		migrations.CheckSeedTenantContext, migrations.CheckSeedIsolation, migrations.CheckSeedForgery,
		audit.TenantRolesSafe,
	}
	for i, name := range want {
		if i >= len(checks) || checks[i].Name != name {
			t.Fatalf("check %d is %v, want %s", i, checks, name)
		}
	}
	// Verify rolled its roles and test agent back.
	conn := db.admin(t)
	if n := scalar[int](t, conn, `SELECT count(*) FROM pg_roles WHERE rolname LIKE 'vital\_verify\_%'`); n != 0 {
		t.Errorf("%d verification roles left behind", n)
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM agents`); n != 0 {
		t.Errorf("%d agents left behind", n)
	}
}

func TestSeedExpectations(t *testing.T) {
	db := migrated(t)
	conn := db.admin(t)
	got := scalar[[]string](t, conn, `SELECT array_agg(slug || ' ' || type || ' ' || subscription_tier || ' ' || status ORDER BY type, slug) FROM tenants`)
	want := []string{"digital-health-startup industry professional active", "vital-platform platform enterprise active"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("tenants = %v, want %v", got, want)
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM pg_policies WHERE policyname LIKE '%_with_sharing'`); n != 16 {
		t.Errorf("%d *_with_sharing policies, want 16", n)
	}
	for _, obj := range []string{
		"public.tenants", "public.user_tenants", "public.user_roles", "public.tools", "public.prompts",
		"public.workflows", "public.resource_sharing_audit", "public.mv_platform_shared_resources",
		"vital.tenant_roles", "vital.proxy_users", "auth.users",
	} {
		if !scalar[bool](t, conn, `SELECT to_regclass($1) IS NOT NULL`, obj) {
			t.Errorf("%s is missing", obj)
		}
	}
	for _, fn := range []string{
		"public.get_super_admin_tenant_id()", "public.is_platform_admin()", "public.is_platform_admin(uuid)",
		"public.has_tenant_access(uuid,uuid)", "public.set_tenant_context(uuid)", "public.get_accessible_agents(uuid)",
		"public.grant_platform_admin(uuid)", "public.assign_user_to_dh_startup(uuid,varchar)", "public.current_tenant_id()",
	} {
		if !scalar[bool](t, conn, `SELECT to_regprocedure($1) IS NOT NULL`, fn) {
			t.Errorf("function %s is missing", fn)
		}
	}
	for _, tbl := range []string{"agents", "tools", "prompts", "workflows"} {
		n := scalar[int](t, conn, `SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public'
			AND table_name = $1 AND column_name IN ('tenant_id', 'is_shared', 'sharing_mode', 'shared_with', 'resource_type')`, tbl)
		if n != 5 {
			t.Errorf("%s has %d of the 5 tenant columns", tbl, n)
		}
	}
	// The seed's user setup runs as documented.
	db.exec(t, `INSERT INTO auth.users (id, email) VALUES ('11111111-1111-1111-1111-111111111111', 'a@example.com')`)
	db.exec(t, `SELECT grant_platform_admin('11111111-1111-1111-1111-111111111111')`)
	db.exec(t, `SELECT assign_user_to_dh_startup('11111111-1111-1111-1111-111111111111', 'admin')`)
	db.exec(t, `SELECT assign_user_to_dh_startup('11111111-1111-1111-1111-111111111111', 'member')`)
	if !scalar[bool](t, conn, `SELECT is_platform_admin('11111111-1111-1111-1111-111111111111'::uuid)`) {
		t.Error("grant_platform_admin did not make the user a platform admin")
	}
	role := scalar[string](t, conn, `SELECT ut.role FROM user_tenants ut JOIN tenants t ON t.id = ut.tenant_id
		JOIN auth.users u ON u.id = ut.user_id WHERE t.slug = 'digital-health-startup'`)
	if role != "member" {
		t.Errorf("user's role in digital-health-startup = %q, want member", role)
	}
	if !scalar[bool](t, conn, `SELECT has_tenant_access('11111111-1111-1111-1111-111111111111', (SELECT id FROM tenants WHERE slug = 'digital-health-startup'))`) {
		t.Error("has_tenant_access is false for an assigned user")
	}
}

// TestPreexistingAgentsBecomePlatformResources starts from a database
// where only the baseline is applied, as an existing application would be.
func TestPreexistingAgentsBecomePlatformResources(t *testing.T) {
	db := newTestDB(t)
	ctx := ctxT(t)
	m := newMigrator(t, db.url)
	if _, err := m.UpTo(ctx, 20251026000000); err != nil {
		t.Fatal(err)
	}
	db.exec(t, `INSERT INTO agents (name, display_name, model, capabilities, created_by, deleted_at) VALUES
		('triage', 'Triage', 'gpt-4', ARRAY['clinical'], gen_random_uuid(), NULL),
		('coder', 'Medical Coder', 'gpt-4', ARRAY['coding'], NULL, NULL),
		('retired', 'Retired', 'gpt-3', '{}', NULL, now())`)
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	conn := db.admin(t)
	rows := scalar[[]string](t, conn, `
		SELECT array_agg(a.name || ' ' || coalesce(t.slug, '-') || ' ' || a.is_shared || ' ' || a.sharing_mode || ' ' || a.resource_type
		                 ORDER BY a.name)
		  FROM agents a LEFT JOIN tenants t ON t.id = a.tenant_id`)
	want := []string{
		"coder vital-platform true global platform",
		"retired - false private custom",
		"triage vital-platform true global platform",
	}
	if strings.Join(rows, ",") != strings.Join(want, ",") {
		t.Errorf("agents = %v, want %v", rows, want)
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM mv_platform_shared_resources`); n != 2 {
		t.Errorf("mv_platform_shared_resources has %d rows, want the 2 live platform agents", n)
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM resource_sharing_audit WHERE action = 'shared'`); n != 2 {
		t.Errorf("%d sharing audit rows, want 2", n)
	}
	// The digital health startup sees the platform agents.
	dh := db.tenantLogin(t, "digital-health-startup", "rw")
	if n := scalar[int](t, dh, `SELECT count(*) FROM get_accessible_agents(current_tenant_id())`); n != 2 {
		t.Errorf("get_accessible_agents for digital-health-startup returns %d agents, want 2", n)
	}
	assertVerifyPasses(t, db)

	// Rolling the seed back returns the agents instead of deleting them.
	if _, err := m.DownTo(ctx, 20251026000003); err != nil {
		t.Fatal(err)
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM agents WHERE tenant_id IS NULL AND sharing_mode = 'private'`); n != 3 {
		t.Errorf("%d unassigned agents after rolling back the seed, want 3", n)
	}
}

func TestSupabaseAuthSchemaIsLeftAlone(t *testing.T) {
	db := newTestDB(t)
	db.exec(t, `CREATE SCHEMA auth;
		CREATE TABLE auth.users (id uuid PRIMARY KEY, email text, instance_id uuid, aud varchar(255));
		INSERT INTO auth.users VALUES ('22222222-2222-2222-2222-222222222222', 'x@example.com', NULL, 'authenticated')`)
	conn := db.admin(t)
	before := scalar[string](t, conn, `SELECT string_agg(attname || ':' || format_type(atttypid, atttypmod), ',' ORDER BY attnum)
		FROM pg_attribute WHERE attrelid = 'auth.users'::regclass AND attnum > 0 AND NOT attisdropped`)
	m := newMigrator(t, db.url)
	ctx := ctxT(t)
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	after := scalar[string](t, conn, `SELECT string_agg(attname || ':' || format_type(atttypid, atttypmod), ',' ORDER BY attnum)
		FROM pg_attribute WHERE attrelid = 'auth.users'::regclass AND attnum > 0 AND NOT attisdropped`)
	if before != after {
		t.Errorf("auth.users changed: %s -> %s", before, after)
	}
	if owner := scalar[string](t, conn, `SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'auth.users'::regclass`); owner != db.c.User {
		t.Errorf("auth.users now owned by %s", owner)
	}
	if !scalar[bool](t, conn, `SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'user_tenants_user_id_fkey'
		AND confrelid = 'auth.users'::regclass)`) {
		t.Error("user_tenants.user_id does not reference the existing auth.users")
	}
	db.exec(t, `SELECT assign_user_to_dh_startup('22222222-2222-2222-2222-222222222222')`)
	assertVerifyPasses(t, db)
	if _, err := m.DownTo(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM auth.users`); n != 1 {
		t.Errorf("auth.users has %d rows after down --to 0, want its 1 row", n)
	}
}

// TestExistingApplicationTables: agents (and tools) that belong to the
// application before the migrations keep their data and get their owner
// and shape back on down --to 0.
func TestExistingApplicationTables(t *testing.T) {
	db := newTestDB(t)
	db.exec(t, `CREATE TABLE agents (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text NOT NULL,
		display_name text, description text, system_prompt text, model text, capabilities text[],
		created_by uuid, created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now(), deleted_at timestamptz);
		INSERT INTO agents (name) VALUES ('legacy');
		CREATE TABLE tools (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text NOT NULL, display_name text,
		description text, updated_at timestamptz DEFAULT now(), deleted_at timestamptz, legacy_flag boolean);`)
	m := newMigrator(t, db.url)
	ctx := ctxT(t)
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	conn := db.admin(t)
	if owner := scalar[string](t, conn, `SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'agents'::regclass`); owner != "vital_owner" {
		t.Errorf("agents owned by %s while migrated, want vital_owner", owner)
	}
	assertVerifyPasses(t, db)
	if _, err := m.DownTo(ctx, 0); err != nil {
		t.Fatal(err)
	}
	for _, tbl := range []string{"agents", "tools"} {
		owner := scalar[string](t, conn, `SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = $1::regclass`, tbl)
		cols := scalar[int](t, conn, `SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public'
			AND table_name = $1 AND column_name IN ('tenant_id', 'is_shared', 'sharing_mode', 'shared_with', 'resource_type')`, tbl)
		rls := scalar[bool](t, conn, `SELECT relrowsecurity OR relforcerowsecurity FROM pg_class WHERE oid = $1::regclass`, tbl)
		if owner != db.c.User || cols != 0 || rls {
			t.Errorf("%s after down --to 0: owner %s, %d tenant columns, RLS %v; want it as it was", tbl, owner, cols, rls)
		}
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM agents WHERE name = 'legacy'`); n != 1 {
		t.Error("the application's agent is gone")
	}
}

// TestNonSuperuserMigrator migrates as a role like Supabase's postgres:
// not a superuser, but CREATEROLE, BYPASSRLS and owner of the database.
func TestNonSuperuserMigrator(t *testing.T) {
	db := newTestDB(t)
	role, pw := "migrator_"+randomHex(3), randomHex(12)
	db.exec(t, `CREATE ROLE `+role+` LOGIN CREATEROLE BYPASSRLS PASSWORD '`+pw+`'`)
	t.Cleanup(func() {
		ctx := context.Background()
		for _, step := range []struct{ db, sql string }{
			{"postgres", `ALTER DATABASE ` + db.name + ` OWNER TO ` + db.c.User},
			{db.name, `REASSIGN OWNED BY ` + role + ` TO ` + db.c.User + `; DROP OWNED BY ` + role},
			{"postgres", `DROP ROLE IF EXISTS ` + role},
		} {
			if err := db.c.Exec(ctx, step.db, step.sql); err != nil {
				t.Logf("cleanup %s: %v", step.sql, err)
			}
		}
	})
	db.exec(t, `ALTER DATABASE `+db.name+` OWNER TO `+role)
	m := newMigrator(t, db.c.URLFor(role, pw, db.name))
	ctx := ctxT(t)
	for _, step := range []func() ([]migrations.Result, error){
		func() ([]migrations.Result, error) { return m.Up(ctx) },
		func() ([]migrations.Result, error) { return m.DownTo(ctx, 0) },
		func() ([]migrations.Result, error) { return m.Up(ctx) },
	} {
		if res, err := step(); err != nil || len(res) != len(allFiles) {
			t.Fatalf("as %s: %v, %v", role, names(res), err)
		}
	}
	checks, err := m.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range checks {
		needsSuper := c.Name == migrations.CheckSeedTenantContext || c.Name == migrations.CheckSeedIsolation ||
			c.Name == migrations.CheckSeedForgery
		// Only a superuser may revoke PUBLIC's privileges on pg_catalog
		// objects: the audit says so, and how to finish.
		notRevoked := c.Name == audit.SharedStatsPrivate || c.Name == audit.SharedFunctionsRevoked
		switch {
		case needsSuper && (c.OK || !strings.Contains(c.Detail, "superuser")):
			t.Errorf("%s: want a failure saying it needs a superuser, got %s", c.Name, c)
		case notRevoked && (c.OK || !strings.HasPrefix(c.Detail, "PUBLIC: may ") ||
			!strings.HasSuffix(c.Detail, "as a superuser, run: vitalproxy migrate reapply 20251026000005")):
			t.Errorf("%s: want a failure naming PUBLIC and the remedy, got %s", c.Name, c)
		case c.Name == audit.PooledRolesSafe && (c.OK || !strings.HasPrefix(c.Detail, "PUBLIC: may ") ||
			!strings.HasSuffix(c.Detail, "as a superuser, run: vitalproxy migrate reapply 20251026000006")):
			t.Errorf("%s: want a failure naming PUBLIC and the remedy, got %s", c.Name, c)
		case !needsSuper && !notRevoked && c.Name != audit.PooledRolesSafe && !c.OK:
			t.Errorf("%s", c)
		}
	}
	// A superuser finishes the hardening; the superuser's verification of
	// the same database then passes.
	for _, v := range []int64{hardeningVersion, 20251026000006, migrations.LatestVersion} {
		if _, err := newMigrator(t, db.url).Reapply(ctx, v); err != nil {
			t.Fatalf("reapply %d as the superuser: %v", v, err)
		}
	}
	assertVerifyPasses(t, db)
	// The migrating role keeps the migration lock (advisory locks are kept
	// to vital_owner, which it joined), and may roll back the hardening:
	// the PUBLIC privileges only a superuser may give back stay revoked.
	if res, err := m.Up(ctx); err != nil || len(res) != 0 {
		t.Fatalf("up as %s after the revokes = %v, %v", role, names(res), err)
	}
	if res, err := m.DownTo(ctx, hardeningVersion-1); err != nil || len(res) != 3 {
		t.Fatalf("down as %s after the revokes = %v, %v", role, names(res), err)
	}
	conn := db.admin(t)
	if scalar[bool](t, conn, `SELECT has_table_privilege('public', 'pg_catalog.pg_stat_activity', 'SELECT')`) {
		t.Error("a role that is not a superuser gave PUBLIC pg_stat_activity back")
	}
	if res, err := m.Up(ctx); err != nil || len(res) != 3 {
		t.Fatalf("up again as %s = %v, %v", role, names(res), err)
	}
	assertVerifyPasses(t, db)
}

// hardeningVersion is the migration that revokes database-wide paths.
const hardeningVersion int64 = 20251026000005

// TestUpSectionsAreIdempotent re-runs every Up section by hand, twice,
// with psql -f on a migrated database.
func TestUpSectionsAreIdempotent(t *testing.T) {
	db := migrated(t)
	db.exec(t, `INSERT INTO agents (tenant_id, name, is_shared, sharing_mode, resource_type)
		SELECT id, 'platform-agent', true, 'global', 'platform' FROM tenants WHERE slug = 'vital-platform'`)
	files, err := migrations.ReadFiles(migrations.Embedded())
	if err != nil {
		t.Fatal(err)
	}
	psql := psqlPath(t, db)
	dir := t.TempDir()
	for round := 1; round <= 2; round++ {
		for _, f := range files {
			p := filepath.Join(dir, f.Name)
			if err := os.WriteFile(p, []byte(f.UpSQL()), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.CommandContext(ctxT(t), psql, "-X", "-q",
				"-v", "ON_ERROR_STOP=1", "-d", db.url, "-f", p).CombinedOutput()
			if err != nil {
				t.Fatalf("round %d: psql -f %s: %v\n%s", round, f.Name, err, out)
			}
		}
	}
	conn := db.admin(t)
	if n := scalar[int](t, conn, `SELECT count(*) FROM tenants`); n != 2 {
		t.Errorf("%d tenants after re-running the seed, want 2", n)
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM agents`); n != 1 {
		t.Errorf("%d agents after re-running, want 1", n)
	}
	assertVerifyPasses(t, db)
	st, err := newMigrator(t, db.url).Status(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.ChecksumState() != "ok" {
			t.Errorf("%s: %s", s.Name, s.ChecksumState())
		}
	}
}

// psqlPath finds psql: next to the server binaries, on PATH, or in the
// newest /usr/lib/postgresql/*/bin.
func psqlPath(t *testing.T, db testDB) string {
	t.Helper()
	candidates := []string{filepath.Join(db.c.BinDir, "psql")}
	if p, err := exec.LookPath("psql"); err == nil {
		candidates = append(candidates, p)
	}
	more, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql")
	candidates = append(candidates, more...)
	for _, p := range candidates {
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatal("psql not found next to the server binaries, on PATH or under /usr/lib/postgresql")
	return ""
}
