package isolation_test

import (
	"context"
	"strings"
)

// ddlCases try to change the objects isolation rests on.
func ddlCases() []attackCase {
	return []attackCase{
		{name: "policies-and-rls", category: "ddl", level: levelSQL, run: casePolicies},
		{name: "security-functions", category: "ddl", level: levelSQL, run: caseSecurityFunctions},
		{name: "schemas-extensions-database", category: "ddl", level: levelSQL, run: caseSchemas},
		{name: "private-schemas", category: "ddl", level: levelSQL, run: casePrivateSchemas},
		{name: "maintenance-commands", category: "ddl", level: levelSQL, run: caseMaintenance},
	}
}

func casePolicies(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var stmts []string
	for _, tbl := range append(resourceTables, "tenants", "user_tenants", "user_roles", "resource_sharing_audit") {
		t := "public." + tbl
		stmts = append(stmts,
			"CREATE POLICY iso_open ON "+t+" USING (true) WITH CHECK (true)",
			"ALTER TABLE "+t+" DISABLE ROW LEVEL SECURITY",
			"ALTER TABLE "+t+" NO FORCE ROW LEVEL SECURITY",
			"ALTER TABLE "+t+" OWNER TO "+e.atk.role("rw"),
			"ALTER TABLE "+t+" ADD COLUMN iso int",
			"ALTER TABLE "+t+" ALTER COLUMN tenant_id DROP DEFAULT",
			"ALTER TABLE "+t+" DISABLE TRIGGER ALL",
			"ALTER TABLE "+t+" RENAME TO iso_renamed",
			"CREATE INDEX iso_idx ON "+t+" (id)",
			"CREATE TRIGGER iso_trg BEFORE INSERT ON "+t+" FOR EACH ROW EXECUTE FUNCTION vital.set_updated_at()",
			"CREATE RULE iso_rule AS ON INSERT TO "+t+" DO INSTEAD NOTHING",
			"COMMENT ON TABLE "+t+" IS 'iso'",
			"DROP TABLE "+t,
			"SECURITY LABEL ON TABLE "+t+" IS 'iso'",
		)
	}
	for _, tbl := range resourceTables {
		for _, cmd := range []string{"select", "insert", "update", "delete"} {
			p := tbl + "_" + cmd + "_with_sharing"
			stmts = append(stmts,
				"ALTER POLICY "+p+" ON public."+tbl+" USING (true)",
				"ALTER POLICY "+p+" ON public."+tbl+" TO "+e.atk.role("rw"),
				"DROP POLICY "+p+" ON public."+tbl,
			)
		}
	}
	stmts = append(stmts,
		"ALTER POLICY tenants_select_isolation ON public.tenants USING (true)",
		"DROP POLICY user_tenants_select_isolation ON public.user_tenants",
		"ALTER MATERIALIZED VIEW public.mv_platform_shared_resources OWNER TO "+e.atk.role("rw"),
		"DROP MATERIALIZED VIEW public.mv_platform_shared_resources",
		"CREATE OR REPLACE VIEW public.mv_platform_shared_resources AS SELECT 1",
		"CREATE VIEW public.iso_view AS SELECT * FROM public.agents",
		"CREATE MATERIALIZED VIEW public.iso_mv AS SELECT * FROM public.agents",
	)
	var f findings
	if err := f.addErr(deniedAll(ctx, conn, stmts, "42501", "22023")); err != nil {
		return err
	}
	// GRANT by a non-owner only warns; it must change nothing.
	if _, err := conn.Exec(ctx, "GRANT ALL ON public.agents TO "+e.atk.role("rw")+" WITH GRANT OPTION"); err != nil && sqlState(err) != "42501" {
		return err
	}
	for _, priv := range []string{"DELETE", "TRUNCATE", "UPDATE", "REFERENCES", "TRIGGER"} {
		has, err := scalar[bool](ctx, conn, "SELECT has_table_privilege('public.agents', $1)", priv)
		if err != nil {
			return err
		}
		if has {
			f.add("the attacker holds table-level %s on agents", priv)
		}
	}
	return f.result()
}

func caseSecurityFunctions(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	v := quoteLit(e.vic.id)
	return deniedAll(ctx, conn, []string{
		"CREATE OR REPLACE FUNCTION public.current_tenant_id() RETURNS uuid LANGUAGE sql AS 'SELECT " + strings.ReplaceAll(v, "'", "''") + "::uuid'",
		"CREATE OR REPLACE FUNCTION public.is_platform_admin() RETURNS boolean LANGUAGE sql AS 'SELECT true'",
		"CREATE OR REPLACE FUNCTION public.get_accessible_agents(p_tenant_id uuid) RETURNS SETOF public.agents LANGUAGE sql AS 'SELECT * FROM public.agents'",
		"CREATE OR REPLACE FUNCTION vital.track_sharing() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'",
		"ALTER FUNCTION public.current_tenant_id() OWNER TO " + e.atk.role("rw"),
		"ALTER FUNCTION public.current_tenant_id() SECURITY INVOKER",
		"ALTER FUNCTION public.current_tenant_id() SET search_path = pg_temp, public",
		"ALTER FUNCTION public.set_tenant_context(uuid) RESET ALL",
		"ALTER FUNCTION public.get_accessible_agents(uuid) SECURITY DEFINER",
		"ALTER FUNCTION public.current_tenant_id() RENAME TO iso_ctid",
		"DROP FUNCTION public.current_tenant_id() CASCADE",
		"DROP FUNCTION public.set_tenant_context(uuid)",
		"GRANT EXECUTE ON FUNCTION vital.track_sharing() TO " + e.atk.role("rw"),
		"SELECT vital.enforce_agent_limit()",
		"COMMENT ON FUNCTION public.current_tenant_id() IS 'iso'",
	})
}

func caseSchemas(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	// GRANT by a non-owner only warns; it must change nothing.
	if err := tryAll(ctx, conn, "GRANT CREATE ON SCHEMA public TO "+e.atk.role("rw"),
		"GRANT CREATE ON DATABASE "+e.fx.db+" TO "+e.atk.role("rw"), "GRANT USAGE ON SCHEMA vital TO "+e.atk.role("rw")); err != nil {
		return err
	}
	has, err := scalar[bool](ctx, conn, `SELECT has_schema_privilege('public', 'CREATE') OR has_schema_privilege('vital', 'USAGE')
		OR has_database_privilege(current_database(), 'CREATE')`)
	if err != nil {
		return err
	}
	if has {
		f.add("the attacker may create objects in public or the database, or use schema vital")
	}
	db := e.fx.db
	if err := f.addErr(deniedAll(ctx, conn, []string{
		"CREATE SCHEMA iso",
		"CREATE TABLE public.iso_t (x int)",
		"CREATE TABLE public.agents_shadow (LIKE public.agents)",
		"CREATE SEQUENCE public.iso_seq",
		"CREATE TYPE public.iso_type AS (x int)",
		"CREATE DOMAIN public.iso_dom AS int",
		"CREATE FUNCTION public.iso_eq(uuid, uuid) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
		"CREATE OPERATOR public.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = int4eq)",
		"CREATE COLLATION public.iso_coll (locale = 'C')",
		"CREATE TEXT SEARCH CONFIGURATION public.iso_ts (COPY = pg_catalog.simple)",
		"CREATE EXTENSION pgcrypto",
		"CREATE EXTENSION dblink",
		"CREATE EXTENSION postgres_fdw",
		"CREATE LANGUAGE iso_lang HANDLER plpgsql_call_handler",
		"ALTER LANGUAGE plpgsql OWNER TO " + e.atk.role("rw"),
		"CREATE EVENT TRIGGER iso_evt ON ddl_command_start EXECUTE FUNCTION vital.set_updated_at()",
		"CREATE PUBLICATION iso_pub FOR ALL TABLES",
		"CREATE SUBSCRIPTION iso_sub CONNECTION 'host=127.0.0.1' PUBLICATION p WITH (connect = false)",
		"CREATE FOREIGN DATA WRAPPER iso_fdw",
		"CREATE ACCESS METHOD iso_am TYPE TABLE HANDLER heap_tableam_handler",
		"CREATE CAST (uuid AS int) WITH INOUT",
		"ALTER SYSTEM SET row_security = off",
		"ALTER DATABASE " + db + " SET row_security = off",
		"ALTER DATABASE " + db + " OWNER TO " + e.atk.role("rw"),
		"ALTER DATABASE " + db + " RENAME TO iso_db",
		"CREATE DATABASE iso_db",
		"DROP DATABASE " + db,
		"ALTER SCHEMA public OWNER TO " + e.atk.role("rw"),
		"ALTER SCHEMA vital OWNER TO " + e.atk.role("rw"),
		"ALTER SCHEMA public RENAME TO iso_public",
		"DROP SCHEMA vital CASCADE",
		"CREATE TABLESPACE iso_ts LOCATION '/tmp'",
		"LOAD 'passwordcheck'",
		"CHECKPOINT",
	}, "42501")); err != nil {
		return err
	}
	return f.result()
}

func casePrivateSchemas(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	v := quoteLit(e.vic.id)
	return deniedAll(ctx, conn, []string{
		"SELECT * FROM vital.tenant_roles",
		"SELECT tenant_id FROM vital.tenant_roles WHERE role_name = session_user",
		"SELECT * FROM vital.proxy_users",
		"SELECT * FROM vital.migration_objects",
		"INSERT INTO vital.tenant_roles (role_name, tenant_id, capability) VALUES (session_user, " + v + ", 'rw')",
		"UPDATE vital.tenant_roles SET tenant_id = " + v,
		"DELETE FROM vital.tenant_roles",
		"INSERT INTO vital.proxy_users (name, password, tenants) VALUES ('iso', 'md5x', '{}')",
		"SELECT * FROM auth.users",
		"INSERT INTO auth.users (email) VALUES ('iso@example.invalid')",
		"CREATE TABLE vital.iso (x int)",
		"CREATE TEMP TABLE iso_x AS SELECT * FROM vital.tenant_roles",
	})
}

func caseMaintenance(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	err = f.addErr(deniedAll(ctx, conn, []string{
		"REFRESH MATERIALIZED VIEW public.mv_platform_shared_resources",
		"REFRESH MATERIALIZED VIEW CONCURRENTLY public.mv_platform_shared_resources",
		"REINDEX TABLE public.agents",
		"REINDEX INDEX public.agents_pkey",
		"REINDEX SCHEMA public",
		"CLUSTER public.agents USING agents_pkey",
		"ALTER TABLE public.agents SET (autovacuum_enabled = false)",
	}))
	if err != nil {
		return err
	}
	// VACUUM and ANALYZE of tables it does not own are skipped with a
	// warning instead of failing; the skip must really happen (VACUUM
	// FULL would lock every tenant out of the table).
	for _, s := range []string{"VACUUM FULL public.agents", "VACUUM (ANALYZE) public.tools", "ANALYZE public.prompts"} {
		before := len(noticesOf(conn))
		if _, err := conn.Exec(ctx, s); err != nil {
			if sqlState(err) == "42501" {
				continue
			}
			return err
		}
		got := noticesOf(conn)[before:]
		if !strings.Contains(strings.Join(got, " "), "skipping") {
			f.add("%q ran on a table the attacker does not own (notices: %v)", s, got)
		}
	}
	return f.result()
}
