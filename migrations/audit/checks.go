package audit

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// userSchemas excludes PostgreSQL's own schemas (n is pg_namespace).
const userSchemas = `n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'`

// notExtension excludes objects that belong to an extension (o is the
// object's oid column, cls its catalogue).
func notExtension(o, cls string) string {
	return fmt.Sprintf(`NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
		WHERE d.classid = '%s'::regclass AND d.objid = %s AND d.deptype = 'e')`, cls, o)
}

func checkTenantRoles(ctx context.Context, conn *pgx.Conn, r roles) ([]string, error) {
	return collect(ctx, conn, `
		WITH RECURSIVE tr AS (
		    SELECT oid, rolname, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication
		      FROM pg_catalog.pg_roles WHERE rolname = ANY ($1)
		), up(member, roleid) AS (
		    SELECT m.member, m.roleid FROM pg_catalog.pg_auth_members m JOIN tr ON tr.oid = m.member
		    UNION
		    SELECT up.member, m.roleid FROM up JOIN pg_catalog.pg_auth_members m ON m.member = up.roleid
		)
		SELECT tr.rolname || ': ' || problem FROM tr,
		       LATERAL unnest(ARRAY[
		           CASE WHEN tr.rolsuper THEN 'is a superuser' END,
		           CASE WHEN tr.rolbypassrls THEN 'has BYPASSRLS' END,
		           CASE WHEN tr.rolcreaterole THEN 'has CREATEROLE' END,
		           CASE WHEN tr.rolcreatedb THEN 'has CREATEDB' END,
		           CASE WHEN tr.rolreplication THEN 'has REPLICATION' END]) AS problem
		 WHERE problem IS NOT NULL
		UNION ALL
		SELECT tr.rolname || ': owns ' || c.oid::regclass::text
		  FROM pg_catalog.pg_class c JOIN tr ON tr.oid = c.relowner
		 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
		UNION ALL
		SELECT tr.rolname || ': owns function ' || p.oid::regprocedure::text
		  FROM pg_catalog.pg_proc p JOIN tr ON tr.oid = p.proowner
		UNION ALL
		SELECT tr.rolname || ': owns schema ' || n.nspname
		  FROM pg_catalog.pg_namespace n JOIN tr ON tr.oid = n.nspowner
		UNION ALL
		SELECT tr.rolname || ': owns the database'
		  FROM pg_catalog.pg_database d JOIN tr ON tr.oid = d.datdba WHERE d.datname = current_database()
		UNION ALL
		SELECT tr.rolname || ': member of ' || g.rolname
		  FROM up JOIN tr ON tr.oid = up.member JOIN pg_catalog.pg_roles g ON g.oid = up.roleid
		 WHERE g.rolname NOT IN ('vital_tenant', 'vital_tenant_writer', 'vital_tenant_session')
		    OR (g.rolname = 'vital_tenant_writer' AND tr.rolname = ANY ($2))
		    OR (g.rolname = 'vital_tenant_session' AND tr.rolname = ANY ($3))
		UNION ALL
		SELECT tr.rolname || ': may CREATE in schema ' || n.nspname
		  FROM tr CROSS JOIN pg_catalog.pg_namespace n
		 WHERE NOT tr.rolsuper AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast%'
		   AND has_schema_privilege(tr.oid, n.oid, 'CREATE')
		UNION ALL
		SELECT tr.rolname || ': may CREATE in the database'
		  FROM tr WHERE NOT tr.rolsuper AND has_database_privilege(tr.oid, current_database(), 'CREATE')
		ORDER BY 1`, r.all, r.readOnly, r.pooled)
}

func checkGroupRoles(ctx context.Context, conn *pgx.Conn, _ roles) ([]string, error) {
	return collect(ctx, conn, `
		WITH RECURSIVE g AS (
		    SELECT oid, rolname, rolsuper, rolbypassrls, rolcanlogin, rolcreaterole, rolcreatedb, rolreplication
		      FROM pg_catalog.pg_roles WHERE rolname = ANY ($1)
		), up(member, roleid) AS (
		    SELECT m.member, m.roleid FROM pg_catalog.pg_auth_members m JOIN g ON g.oid = m.member
		     WHERE g.rolname IN ('vital_tenant', 'vital_tenant_writer', 'vital_operator', 'vital_tenant_session')
		    UNION
		    SELECT up.member, m.roleid FROM up JOIN pg_catalog.pg_auth_members m ON m.member = up.roleid
		)
		SELECT name || ': does not exist (run vitalproxy migrate up)'
		  FROM unnest($1::text[]) AS name
		 WHERE NOT EXISTS (SELECT 1 FROM g WHERE g.rolname = name)
		UNION ALL
		SELECT g.rolname || ': ' || problem FROM g,
		       LATERAL unnest(ARRAY[
		           CASE WHEN g.rolsuper THEN 'is a superuser' END,
		           CASE WHEN g.rolbypassrls THEN 'has BYPASSRLS' END,
		           CASE WHEN g.rolcanlogin THEN 'can log in' END,
		           CASE WHEN g.rolcreaterole THEN 'has CREATEROLE' END,
		           CASE WHEN g.rolcreatedb THEN 'has CREATEDB' END,
		           CASE WHEN g.rolreplication THEN 'has REPLICATION' END]) AS problem
		 WHERE problem IS NOT NULL
		UNION ALL
		SELECT m.rolname || ': member of ' || r.rolname
		  FROM up JOIN pg_catalog.pg_roles m ON m.oid = up.member JOIN pg_catalog.pg_roles r ON r.oid = up.roleid
		 WHERE (r.rolname NOT IN ('vital_tenant', 'vital_tenant_writer')
		        AND NOT (m.rolname = 'vital_operator' AND r.rolname IN ('pg_read_all_stats', 'vital_tenant_session')))
		    OR (m.rolname = 'vital_tenant' AND r.rolname = 'vital_tenant_writer')
		ORDER BY 1`, groupRoles)
}

// tenantTables selects the tenant-scoped tables (c is pg_class, n its
// namespace).
const tenantTables = `
	FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
	WHERE c.relkind IN ('r', 'p') AND ` + userSchemas + ` AND n.nspname <> 'vital'
	  AND (EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
	                WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND a.attnum > 0 AND NOT a.attisdropped)
	       OR (n.nspname = 'public' AND c.relname IN ('tenants', 'user_tenants', 'user_roles', 'resource_sharing_audit')))`

func checkTenantTablesRLS(ctx context.Context, conn *pgx.Conn, _ roles) ([]string, error) {
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*)`+tenantTables).Scan(&n); err != nil {
		return nil, err
	}
	if n == 0 {
		return []string{"no tenant-scoped tables found (is the database migrated?)"}, nil
	}
	return collect(ctx, conn, `
		SELECT t.name || ': ' || problem
		  FROM (SELECT c.oid, c.oid::regclass::text AS name, c.relrowsecurity, c.relforcerowsecurity `+tenantTables+`) t,
		       LATERAL unnest(ARRAY[
		           CASE WHEN NOT t.relrowsecurity THEN 'row-level security is disabled' END,
		           CASE WHEN NOT t.relforcerowsecurity THEN 'row-level security is not forced' END,
		           CASE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = t.oid AND p.polcmd IN ('r', '*'))
		                THEN 'no SELECT policy' END,
		           CASE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = t.oid AND p.polcmd IN ('a', '*'))
		                THEN 'no INSERT policy' END,
		           CASE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = t.oid AND p.polcmd IN ('w', '*'))
		                THEN 'no UPDATE policy' END,
		           CASE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = t.oid AND p.polcmd IN ('d', '*'))
		                THEN 'no DELETE policy' END]) AS problem
		 WHERE problem IS NOT NULL
		 ORDER BY 1`)
}

func checkTenantTablesOwner(ctx context.Context, conn *pgx.Conn, r roles) ([]string, error) {
	return collect(ctx, conn, `
		SELECT c.oid::regclass::text || ': owned by ' || o.rolname ||
		       CASE WHEN o.rolsuper THEN ' (a superuser, which bypasses row-level security)'
		            WHEN o.rolbypassrls THEN ' (which has BYPASSRLS)'
		            ELSE ' (a tenant role)' END
		  FROM pg_catalog.pg_roles o,
		       LATERAL (SELECT c.oid, c.relowner `+tenantTables+`) c
		 WHERE o.oid = c.relowner AND (o.rolsuper OR o.rolbypassrls OR o.rolname = ANY ($1))
		 ORDER BY 1`, r.all)
}

func checkViews(ctx context.Context, conn *pgx.Conn, _ roles) ([]string, error) {
	return collect(ctx, conn, `
		SELECT c.oid::regclass::text || ': view without security_invoker (it runs with its owner''s rights)'
		  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		 WHERE c.relkind = 'v' AND `+userSchemas+` AND `+notExtension("c.oid", "pg_class")+`
		   AND NOT COALESCE((SELECT bool_or(lower(o.option_value) IN ('true', 'on', '1', 'yes'))
		                       FROM pg_catalog.pg_options_to_table(c.reloptions) o
		                      WHERE o.option_name = 'security_invoker'), false)
		 ORDER BY 1`)
}

func checkDefinerFunctions(ctx context.Context, conn *pgx.Conn, _ roles) ([]string, error) {
	return collect(ctx, conn, `
		SELECT p.oid::regprocedure::text || ': SECURITY DEFINER without a fixed search_path'
		  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
		 WHERE p.prosecdef AND n.nspname IN ('public', 'vital') AND `+notExtension("p.oid", "pg_proc")+`
		   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) AS cfg WHERE cfg LIKE 'search\_path=%')
		 ORDER BY 1`)
}

// checkMaterializedViews queries every populated materialized view tenants
// may read: a materialized view bypasses RLS, so it must hold only rows
// every tenant may see anyway.
func checkMaterializedViews(ctx context.Context, conn *pgx.Conn, _ roles) ([]string, error) {
	type mv struct {
		schema, name          string
		sharingMode, isShared bool
	}
	rows, err := conn.Query(ctx, `
		SELECT n.nspname::text, c.relname::text,
		       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'sharing_mode' AND NOT a.attisdropped),
		       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'is_shared' AND NOT a.attisdropped)
		  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		 WHERE c.relkind = 'm' AND c.relispopulated AND `+userSchemas+`
		   AND (NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'vital_tenant')
		        OR has_table_privilege('vital_tenant', c.oid, 'SELECT'))
		 ORDER BY 1, 2`)
	if err != nil {
		return nil, err
	}
	var mvs []mv
	var m mv
	if _, err := pgx.ForEachRow(rows, []any{&m.schema, &m.name, &m.sharingMode, &m.isShared}, func() error {
		mvs = append(mvs, m)
		return nil
	}); err != nil {
		return nil, err
	}
	var problems []string
	for _, m := range mvs {
		ident := pgx.Identifier{m.schema, m.name}.Sanitize()
		if !m.sharingMode {
			problems = append(problems, fmt.Sprintf("%s.%s: readable by tenants but has no sharing_mode column to show its rows are shared", m.schema, m.name))
			continue
		}
		cond := `sharing_mode IS DISTINCT FROM 'global'`
		if m.isShared {
			cond += ` OR is_shared IS NOT TRUE`
		}
		var private int64
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+ident+` WHERE `+cond).Scan(&private); err != nil {
			return nil, err
		}
		if private > 0 {
			problems = append(problems, fmt.Sprintf("%s.%s: %d rows are not shared globally", m.schema, m.name, private))
		}
		if m.schema == "public" && m.name == "mv_platform_shared_resources" {
			stale, err := staleSharedRows(ctx, conn)
			if err != nil {
				return nil, err
			}
			if stale > 0 {
				problems = append(problems, fmt.Sprintf("%s.%s: %d rows are no longer shared globally at their source (REFRESH MATERIALIZED VIEW)", m.schema, m.name, stale))
			}
		}
	}
	return problems, nil
}

// staleSharedRows counts rows of mv_platform_shared_resources whose source
// row still exists but is no longer shared globally.
func staleSharedRows(ctx context.Context, conn *pgx.Conn) (int64, error) {
	var n int64
	err := conn.QueryRow(ctx, `
		SELECT count(*)
		  FROM public.mv_platform_shared_resources mv
		  JOIN LATERAL (
		        SELECT a.is_shared AND a.sharing_mode = 'global' AS ok FROM public.agents a
		         WHERE mv.resource_kind = 'agent' AND a.id = mv.id
		        UNION ALL
		        SELECT t.is_shared AND t.sharing_mode = 'global' FROM public.tools t
		         WHERE mv.resource_kind = 'tool' AND t.id = mv.id
		        UNION ALL
		        SELECT p.is_shared AND p.sharing_mode = 'global' FROM public.prompts p
		         WHERE mv.resource_kind = 'prompt' AND p.id = mv.id
		        UNION ALL
		        SELECT w.is_shared AND w.sharing_mode = 'global' FROM public.workflows w
		         WHERE mv.resource_kind = 'workflow' AND w.id = mv.id) src ON true
		 WHERE NOT src.ok`).Scan(&n)
	return n, err
}

// relations selects the relations of user schemas (c is pg_class).
const relations = `
	FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
	WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND ` + userSchemas

func checkPrivileges(ctx context.Context, conn *pgx.Conn, r roles) ([]string, error) {
	return collect(ctx, conn, `
		WITH g AS (
		    SELECT rolname FROM pg_catalog.pg_roles WHERE rolname IN ('vital_tenant', 'vital_tenant_writer')
		), rel AS (
		    SELECT c.oid, c.relacl `+relations+`
		), priv(name) AS (
		    VALUES ('UPDATE'), ('DELETE'), ('TRUNCATE'), ('REFERENCES'), ('TRIGGER')
		)
		SELECT g.rolname || ': table-level ' || priv.name || ' on ' || rel.oid::regclass::text
		  FROM g CROSS JOIN rel CROSS JOIN priv
		 WHERE has_table_privilege(g.rolname, rel.oid, priv.name)
		UNION ALL
		SELECT 'vital_tenant: ' || w.name || ' on ' || rel.oid::regclass::text || ' (readers must not write)'
		  FROM g CROSS JOIN rel
		       CROSS JOIN LATERAL (VALUES
		           ('INSERT', has_table_privilege(g.rolname, rel.oid, 'INSERT')),
		           ('UPDATE', has_any_column_privilege(g.rolname, rel.oid, 'UPDATE'))) AS w(name, granted)
		 WHERE g.rolname = 'vital_tenant' AND w.granted
		UNION ALL
		SELECT acl.grantee::regrole::text || ': directly granted ' || acl.privilege_type || ' on ' || rel.oid::regclass::text
		  FROM rel CROSS JOIN LATERAL aclexplode(rel.relacl) AS acl
		 WHERE acl.grantee IN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = ANY ($1))
		   AND (acl.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER')
		        OR (acl.privilege_type = 'INSERT'
		            AND acl.grantee IN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = ANY ($2))))
		UNION ALL
		SELECT ro.rolname || ': may UPDATE columns of ' || rel.oid::regclass::text || ' (a read-only role)'
		  FROM pg_catalog.pg_roles ro CROSS JOIN rel
		 WHERE ro.rolname = ANY ($2) AND NOT ro.rolsuper
		   AND (has_any_column_privilege(ro.oid, rel.oid, 'UPDATE') OR has_table_privilege(ro.oid, rel.oid, 'INSERT'))
		ORDER BY 1`, r.all, r.readOnly)
}

func checkVitalSchema(ctx context.Context, conn *pgx.Conn, r roles) ([]string, error) {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'vital')`).Scan(&exists); err != nil {
		return nil, err
	}
	if !exists {
		return []string{"schema vital does not exist (run vitalproxy migrate up)"}, nil
	}
	return collect(ctx, conn, `
		WITH who AS (
		    SELECT oid, rolname FROM pg_catalog.pg_roles
		     WHERE (rolname IN ('vital_tenant', 'vital_tenant_writer') OR rolname = ANY ($1)) AND NOT rolsuper
		), rel AS (
		    SELECT c.oid, c.relacl FROM pg_catalog.pg_class c
		     WHERE c.relnamespace = 'vital'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
		)
		SELECT who.rolname || ': may ' || lower(p) || ' schema vital'
		  FROM who CROSS JOIN unnest(ARRAY['USAGE', 'CREATE']) AS p
		 WHERE has_schema_privilege(who.oid, 'vital', p)
		UNION ALL
		SELECT 'PUBLIC: granted ' || acl.privilege_type || ' on schema vital'
		  FROM pg_catalog.pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) AS acl
		 WHERE n.nspname = 'vital' AND acl.grantee = 0
		UNION ALL
		SELECT who.rolname || ': has privileges on ' || rel.oid::regclass::text
		  FROM who CROSS JOIN rel
		 WHERE has_table_privilege(who.oid, rel.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
		UNION ALL
		SELECT 'PUBLIC: granted ' || acl.privilege_type || ' on ' || rel.oid::regclass::text
		  FROM rel CROSS JOIN LATERAL aclexplode(rel.relacl) AS acl
		 WHERE acl.grantee = 0
		ORDER BY 1`, r.all)
}
