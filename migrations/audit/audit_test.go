package audit_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/migrations/audit"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

// Tests create and alter cluster-wide roles, so none runs in parallel.
func TestMain(m *testing.M) { pgtest.Main(m) }

const prefix = "vt_"

var allChecks = []string{
	audit.TenantRolesSafe, audit.GroupRolesSafe, audit.TenantTablesRLS, audit.TenantTablesOwner,
	audit.ViewsSecurityInvoker, audit.DefinerSearchPath, audit.MaterializedViewsShared,
	audit.TenantPrivileges, audit.VitalSchemaPrivate, audit.SharedStatsPrivate, audit.SharedFunctionsRevoked,
	audit.TenantRoleSettings, audit.PooledRolesSafe, audit.LargeObjectsPrivate,
}

// fixture is a migrated database with a read-write and a read-only tenant
// role created by hand, the way `vitalproxy tenant` creates them.
type fixture struct {
	c      *pgtest.Cluster
	db     string
	admin  *pgx.Conn
	rw, ro string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := testCtx(t)
	c := pgtest.Shared(t)
	f := &fixture{c: c, db: c.NewDatabase(t)}
	m, err := migrations.New(c.URL(f.db))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Up(ctx); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	f.admin, err = pgx.Connect(ctx, c.URL(f.db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.admin.Close(context.Background()) })
	suffix := randomHex(3)
	f.rw, f.ro = prefix+"dh_"+suffix+"_rw", prefix+"dh_"+suffix+"_ro"
	for _, r := range []struct{ name, group, capability string }{
		{f.rw, "vital_tenant_writer", "rw"}, {f.ro, "vital_tenant", "ro"},
	} {
		f.role(t, r.name, "LOGIN PASSWORD '"+randomHex(8)+"'")
		f.exec(t, `GRANT `+r.group+` TO `+r.name)
		f.exec(t, `INSERT INTO vital.tenant_roles (role_name, tenant_id, capability)
			SELECT '`+r.name+`', id, '`+r.capability+`' FROM tenants WHERE slug = 'digital-health-startup'`)
	}
	return f
}

// role creates a role that is dropped, with whatever it owns or was
// granted in the test database, when the test ends.
func (f *fixture) role(t *testing.T, name, attrs string) {
	t.Helper()
	f.exec(t, `CREATE ROLE `+name+` `+attrs)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := f.c.Exec(ctx, f.db, `REASSIGN OWNED BY `+name+` TO `+f.c.User+`; DROP OWNED BY `+name); err != nil {
			t.Logf("drop owned by %s: %v", name, err)
		}
		if err := f.c.Exec(ctx, "postgres", `DROP ROLE IF EXISTS `+name); err != nil {
			t.Logf("drop role %s: %v", name, err)
		}
	})
}

func (f *fixture) exec(t *testing.T, sql string) {
	t.Helper()
	if _, err := f.admin.Exec(testCtx(t), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// alterGroup changes a cluster-wide group role and restores it afterwards.
func (f *fixture) alterGroup(t *testing.T, role, attr, restore string) {
	t.Helper()
	f.exec(t, `ALTER ROLE `+role+` `+attr)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := f.c.Exec(ctx, "postgres", `ALTER ROLE `+role+` `+restore); err != nil {
			t.Errorf("restore %s: %v", role, err)
		}
	})
}

func (f *fixture) run(t *testing.T) []audit.Check {
	t.Helper()
	checks, err := audit.Run(testCtx(t), f.admin, prefix)
	if err != nil {
		t.Fatalf("audit.Run: %v", err)
	}
	var got []string
	for _, c := range checks {
		got = append(got, c.Name)
		if c.OK != (c.Detail == "") {
			t.Errorf("%s: OK %v with detail %q", c.Name, c.OK, c.Detail)
		}
	}
	if !slices.Equal(got, allChecks) {
		t.Fatalf("checks %v, want %v", got, allChecks)
	}
	return checks
}

func failing(checks []audit.Check) []string {
	var out []string
	for _, c := range checks {
		if !c.OK {
			out = append(out, c.Name)
		}
	}
	return out
}

func TestPassesOnMigratedDatabase(t *testing.T) {
	f := newFixture(t)
	f.exec(t, `INSERT INTO agents (tenant_id, name, is_shared, sharing_mode, resource_type)
		SELECT id, 'shared', true, 'global', 'platform' FROM tenants WHERE slug = 'vital-platform';
		REFRESH MATERIALIZED VIEW mv_platform_shared_resources`)
	checks := f.run(t)
	for _, c := range checks {
		if !c.OK {
			t.Errorf("%s", c)
		}
	}
	if s := checks[0].String(); s != "PASS "+audit.TenantRolesSafe {
		t.Errorf("String() = %q", s)
	}
	if audit.Failed(checks) != 0 {
		t.Errorf("Failed = %d", audit.Failed(checks))
	}
}

// TestEachCheckCanFail weakens a fresh database in one way at a time and
// expects exactly the checks that guard against it to fail, naming the
// culprit.
func TestEachCheckCanFail(t *testing.T) {
	tests := []struct {
		name   string
		weaken func(t *testing.T, f *fixture)
		fails  []string
		detail string
	}{
		{"RLS not forced", func(t *testing.T, f *fixture) {
			f.exec(t, `ALTER TABLE agents NO FORCE ROW LEVEL SECURITY`)
		}, []string{audit.TenantTablesRLS}, "agents: row-level security is not forced"},
		{"RLS disabled", func(t *testing.T, f *fixture) {
			f.exec(t, `ALTER TABLE user_roles DISABLE ROW LEVEL SECURITY`)
		}, []string{audit.TenantTablesRLS}, "user_roles: row-level security is disabled"},
		{"policy missing", func(t *testing.T, f *fixture) {
			f.exec(t, `DROP POLICY prompts_delete_with_sharing ON prompts`)
		}, []string{audit.TenantTablesRLS}, "prompts: no DELETE policy"},
		{"new tenant table without RLS", func(t *testing.T, f *fixture) {
			f.exec(t, `CREATE TABLE public.notes (id int, tenant_id uuid); ALTER TABLE public.notes OWNER TO vital_owner`)
		}, []string{audit.TenantTablesRLS}, "notes: row-level security is disabled"},
		{"tenant table owned by a superuser", func(t *testing.T, f *fixture) {
			f.exec(t, `ALTER TABLE workflows OWNER TO `+f.c.User)
		}, []string{audit.TenantTablesOwner}, "workflows: owned by"},
		{"tenant role BYPASSRLS", func(t *testing.T, f *fixture) {
			f.exec(t, `ALTER ROLE `+f.rw+` BYPASSRLS`)
		}, []string{audit.TenantRolesSafe}, "has BYPASSRLS"},
		{"tenant role SUPERUSER", func(t *testing.T, f *fixture) {
			f.exec(t, `ALTER ROLE `+f.ro+` SUPERUSER`)
		}, []string{audit.TenantRolesSafe}, "is a superuser"},
		{"tenant role CREATEROLE", func(t *testing.T, f *fixture) {
			f.exec(t, `ALTER ROLE `+f.rw+` CREATEROLE`)
		}, []string{audit.TenantRolesSafe}, "has CREATEROLE"},
		{"tenant role CREATEDB", func(t *testing.T, f *fixture) {
			f.exec(t, `ALTER ROLE `+f.rw+` CREATEDB`)
		}, []string{audit.TenantRolesSafe}, "has CREATEDB"},
		{"tenant role REPLICATION", func(t *testing.T, f *fixture) {
			f.exec(t, `ALTER ROLE `+f.rw+` REPLICATION`)
		}, []string{audit.TenantRolesSafe}, "has REPLICATION"},
		{"tenant role is an operator", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT vital_operator TO `+f.rw)
		}, []string{audit.TenantRolesSafe, audit.SharedStatsPrivate}, "member of vital_operator"},
		{"tenant role member of the owner", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT vital_owner TO `+f.ro)
		}, []string{audit.TenantRolesSafe, audit.TenantPrivileges, audit.VitalSchemaPrivate, audit.SharedStatsPrivate, audit.SharedFunctionsRevoked}, "member of vital_owner"},
		{"tenant role may create in public", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT CREATE ON SCHEMA public TO `+f.rw)
		}, []string{audit.TenantRolesSafe}, "may CREATE in schema public"},
		{"tenant role owns a function", func(t *testing.T, f *fixture) {
			f.exec(t, `CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'; ALTER FUNCTION public.f() OWNER TO `+f.rw)
		}, []string{audit.TenantRolesSafe}, "owns function f()"},
		{"tenant role owns a tenant table", func(t *testing.T, f *fixture) {
			f.exec(t, `ALTER TABLE tools OWNER TO `+f.rw)
		}, []string{audit.TenantRolesSafe, audit.TenantTablesOwner, audit.TenantPrivileges}, "owns tools"},
		{"read-only role may write", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT vital_tenant_writer TO `+f.ro)
		}, []string{audit.TenantRolesSafe, audit.TenantPrivileges}, "member of vital_tenant_writer"},
		{"unmapped role with the prefix", func(t *testing.T, f *fixture) {
			f.role(t, prefix+"stray_"+randomHex(3), "LOGIN BYPASSRLS")
		}, []string{audit.TenantRolesSafe}, "has BYPASSRLS"},
		{"group role BYPASSRLS", func(t *testing.T, f *fixture) {
			f.alterGroup(t, "vital_tenant_writer", "BYPASSRLS", "NOBYPASSRLS")
		}, []string{audit.GroupRolesSafe}, "vital_tenant_writer: has BYPASSRLS"},
		{"owner can log in", func(t *testing.T, f *fixture) {
			f.alterGroup(t, "vital_owner", "LOGIN", "NOLOGIN")
		}, []string{audit.GroupRolesSafe}, "vital_owner: can log in"},
		{"view without security_invoker", func(t *testing.T, f *fixture) {
			f.exec(t, `CREATE VIEW public.all_agents AS SELECT * FROM agents`)
		}, []string{audit.ViewsSecurityInvoker}, "all_agents: view without security_invoker"},
		{"definer function without search_path", func(t *testing.T, f *fixture) {
			f.exec(t, `CREATE FUNCTION public.count_all() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM public.agents'`)
		}, []string{audit.DefinerSearchPath}, "count_all(): SECURITY DEFINER without a fixed search_path"},
		{"materialized view with private rows", func(t *testing.T, f *fixture) {
			f.exec(t, `INSERT INTO agents (tenant_id, name) SELECT id, 'secret' FROM tenants WHERE slug = 'digital-health-startup';
				CREATE MATERIALIZED VIEW public.agent_copy AS SELECT * FROM agents;
				GRANT SELECT ON public.agent_copy TO vital_tenant`)
		}, []string{audit.MaterializedViewsShared}, "agent_copy: 1 rows are not shared globally"},
		{"materialized view without sharing_mode", func(t *testing.T, f *fixture) {
			f.exec(t, `CREATE MATERIALIZED VIEW public.agent_counts AS SELECT tenant_id, count(*) FROM agents GROUP BY 1;
				GRANT SELECT ON public.agent_counts TO vital_tenant`)
		}, []string{audit.MaterializedViewsShared}, "agent_counts: readable by tenants but has no sharing_mode column"},
		{"stale shared view", func(t *testing.T, f *fixture) {
			f.exec(t, `INSERT INTO agents (tenant_id, name, is_shared, sharing_mode, resource_type)
				SELECT id, 'was-shared', true, 'global', 'platform' FROM tenants WHERE slug = 'vital-platform';
				REFRESH MATERIALIZED VIEW mv_platform_shared_resources;
				ALTER TABLE agents DISABLE TRIGGER agents_sharing_audit_upd;
				UPDATE agents SET sharing_mode = 'private', is_shared = false WHERE name = 'was-shared'`)
		}, []string{audit.MaterializedViewsShared}, "1 rows are no longer shared globally at their source"},
		{"table-level DELETE", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT DELETE ON agents TO vital_tenant_writer`)
		}, []string{audit.TenantPrivileges}, "vital_tenant_writer: table-level DELETE on agents"},
		{"table-level UPDATE", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT UPDATE ON tools TO vital_tenant_writer`)
		}, []string{audit.TenantPrivileges}, "vital_tenant_writer: table-level UPDATE on tools"},
		{"TRUNCATE", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT TRUNCATE ON prompts TO vital_tenant`)
		}, []string{audit.TenantPrivileges}, "vital_tenant: table-level TRUNCATE on prompts"},
		{"reader may insert", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT INSERT ON agents TO vital_tenant`)
		}, []string{audit.TenantPrivileges}, "vital_tenant: INSERT on agents"},
		{"direct grant to a tenant role", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT DELETE ON workflows TO `+f.rw)
		}, []string{audit.TenantPrivileges}, "directly granted DELETE on workflows"},
		{"vital schema usable by tenants", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT USAGE ON SCHEMA vital TO vital_tenant`)
		}, []string{audit.VitalSchemaPrivate}, "may usage schema vital"},
		{"vital table granted to PUBLIC", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT SELECT ON vital.tenant_roles TO PUBLIC`)
		}, []string{audit.VitalSchemaPrivate}, "PUBLIC: granted SELECT on vital.tenant_roles"},
		{"statistics view granted back to PUBLIC", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT SELECT ON pg_catalog.pg_stat_activity TO PUBLIC`)
		}, []string{audit.SharedStatsPrivate}, "PUBLIC: may read 1 statistics and lock views (pg_catalog.pg_stat_activity); as a superuser, run: vitalproxy migrate reapply 20251026000005"},
		{"statistics functions granted back to PUBLIC", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer), pg_catalog.pg_lock_status(),
				pg_catalog.pg_table_size(regclass), pg_catalog.pg_stat_get_live_tuples(oid) TO PUBLIC`)
		}, []string{audit.SharedStatsPrivate}, "PUBLIC: may execute 4 statistics, lock and size functions (pg_lock_status(), pg_stat_get_activity(integer), pg_stat_get_live_tuples(oid), ...)"},
		{"pg_locks granted to a tenant role", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT SELECT ON pg_catalog.pg_locks TO `+f.rw)
		}, []string{audit.SharedStatsPrivate}, "_rw: may read 1 statistics and lock views (pg_locks)"},
		{"statistics granted to the reader group", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT SELECT ON pg_catalog.pg_stat_user_tables TO vital_tenant`)
		}, []string{audit.SharedStatsPrivate}, "vital_tenant: may read 1 statistics and lock views (pg_stat_user_tables)"},
		{"tenant role in pg_read_all_stats", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT pg_read_all_stats TO `+f.ro)
		}, []string{audit.TenantRolesSafe, audit.SharedStatsPrivate}, "member of pg_read_all_stats"},
		{"pg_stat_statements installed after the migrations", func(t *testing.T, f *fixture) {
			f.exec(t, `CREATE EXTENSION pg_stat_statements`)
		}, []string{audit.SharedStatsPrivate}, "PUBLIC: may execute 2 pg_stat_statements functions (pg_stat_statements(boolean), pg_stat_statements_info())"},
		{"advisory locks granted back to PUBLIC", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT EXECUTE ON FUNCTION pg_catalog.pg_advisory_lock(bigint), pg_catalog.pg_try_advisory_lock(integer, integer) TO PUBLIC`)
		}, []string{audit.SharedFunctionsRevoked}, "PUBLIC: may execute 2 advisory-lock functions (pg_catalog.pg_advisory_lock(bigint), pg_catalog.pg_try_advisory_lock(integer,integer))"},
		{"large objects granted back to PUBLIC", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT EXECUTE ON FUNCTION pg_catalog.lo_from_bytea(oid, bytea) TO PUBLIC`)
		}, []string{audit.SharedFunctionsRevoked}, "PUBLIC: may execute 1 large-object creation functions (lo_from_bytea(oid,bytea))"},
		{"advisory locks granted to the writer group", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT EXECUTE ON FUNCTION pg_catalog.pg_advisory_xact_lock(bigint) TO vital_tenant_writer`)
		}, []string{audit.SharedFunctionsRevoked}, "vital_tenant_writer: may execute 1 advisory-lock functions (pg_catalog.pg_advisory_xact_lock(bigint))"},
		{"tenant role defaults", func(t *testing.T, f *fixture) {
			f.exec(t, `ALTER ROLE `+f.rw+` SET search_path = pg_temp; ALTER ROLE `+f.rw+` SET statement_timeout = '1s'`)
		}, []string{audit.TenantRoleSettings}, "_rw: role defaults for search_path, statement_timeout in every database (vitalproxy tenant sync removes them)"},
		{"terminating backends granted back to PUBLIC", func(t *testing.T, f *fixture) {
			f.exec(t, `GRANT EXECUTE ON FUNCTION pg_catalog.pg_terminate_backend(integer, bigint) TO PUBLIC`)
		}, []string{audit.PooledRolesSafe}, "PUBLIC: may use pg_terminate_backend(integer,bigint)"},
		{"tenant role defaults in the database", func(t *testing.T, f *fixture) {
			f.exec(t, `ALTER ROLE `+f.ro+` IN DATABASE `+f.db+` SET role = 'vital_tenant'`)
		}, []string{audit.TenantRoleSettings}, ": role defaults for role in database "},
		{"large-object privileges off in the database", func(t *testing.T, f *fixture) {
			f.exec(t, `ALTER DATABASE `+f.db+` SET lo_compat_privileges = on`)
		}, []string{audit.LargeObjectsPrivate}, "lo_compat_privileges is on in the defaults of this database (large objects are readable and writable by every role)"},
		{"large-object privileges off for a tenant role", func(t *testing.T, f *fixture) {
			f.exec(t, `ALTER ROLE `+f.ro+` SET lo_compat_privileges = 'true'`)
		}, []string{audit.TenantRoleSettings, audit.LargeObjectsPrivate}, ": role defaults for lo_compat_privileges in every database"},
		{"large-object privileges off in the session", func(t *testing.T, f *fixture) {
			f.exec(t, `SET lo_compat_privileges = 1`)
		}, []string{audit.LargeObjectsPrivate}, "lo_compat_privileges is on in this session"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			tt.weaken(t, f)
			checks := f.run(t)
			if got := failing(checks); !slices.Equal(got, tt.fails) {
				t.Fatalf("failing checks %v, want %v\n%v", got, tt.fails, checks)
			}
			for _, c := range checks {
				if c.Name == tt.fails[0] && !strings.Contains(c.Detail, tt.detail) {
					t.Errorf("%s detail %q does not mention %q", c.Name, c.Detail, tt.detail)
				}
			}
		})
	}
}

func TestUnmigratedDatabaseFails(t *testing.T) {
	c := pgtest.Shared(t)
	db := c.NewDatabase(t)
	ctx := testCtx(t)
	conn, err := pgx.Connect(ctx, c.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	checks, err := audit.Run(ctx, conn, prefix)
	if err != nil {
		t.Fatal(err)
	}
	got := failing(checks)
	for _, want := range []string{audit.TenantTablesRLS, audit.VitalSchemaPrivate} {
		if !slices.Contains(got, want) {
			t.Errorf("%s passes on a database that was never migrated", want)
		}
	}
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
