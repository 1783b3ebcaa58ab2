package audit

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// HardeningMigration is the migration that revokes what the shared-object
// checks look for; a superuser re-runs it with `vitalproxy migrate reapply`.
const HardeningMigration = "20251026000005"

// reapplyHint ends the detail of a failing shared-object check.
const reapplyHint = "as a superuser, run: vitalproxy migrate reapply " + HardeningMigration

// sharedObject selects, for a group of database-wide objects, one row per
// object: kind (a plural label for the detail), oid, name, whether it is a
// view (else a function) and whether PUBLIC holds the privilege (SELECT on
// a view, EXECUTE on a function).
const (
	viewPublic = `EXISTS (SELECT 1 FROM pg_catalog.aclexplode(COALESCE(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
	                      WHERE a.grantee = 0 AND a.privilege_type = 'SELECT')`
	funcPublic = `EXISTS (SELECT 1 FROM pg_catalog.aclexplode(COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
	                      WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')`
	// extensionMember restricts o (an oid of catalogue cls) to the objects
	// of extension ext.
	extensionMember = `EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
	                            WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e'
	                              AND d.classid = '%[2]s'::pg_catalog.regclass AND d.objid = %[1]s AND e.extname = '%[3]s')`
)

var statsObjects = `
	SELECT 'statistics and lock views' AS kind, c.oid, c.oid::pg_catalog.regclass::text AS name, true AS is_view, ` + viewPublic + ` AS public
	  FROM pg_catalog.pg_class c
	 WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.relkind = 'v'
	   AND (c.relname LIKE 'pg\_stat\_%' OR c.relname LIKE 'pg\_statio\_%' OR c.relname = 'pg_locks')
	UNION ALL
	SELECT 'statistics, lock and size functions', p.oid, p.oid::pg_catalog.regprocedure::text, false, ` + funcPublic + `
	  FROM pg_catalog.pg_proc p
	 WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
	   AND (p.proname LIKE 'pg\_stat\_get\_%'
	        OR p.proname IN ('pg_relation_size', 'pg_total_relation_size', 'pg_table_size', 'pg_indexes_size',
	                         'pg_database_size', 'pg_lock_status', 'pg_blocking_pids', 'pg_safe_snapshot_blocking_pids'))
	UNION ALL
	SELECT 'pg_stat_statements views', c.oid, c.oid::pg_catalog.regclass::text, true, ` + viewPublic + `
	  FROM pg_catalog.pg_class c
	 WHERE c.relkind = 'v' AND ` + extensionMemberC + `
	UNION ALL
	SELECT 'pg_stat_statements functions', p.oid, p.oid::pg_catalog.regprocedure::text, false, ` + funcPublic + `
	  FROM pg_catalog.pg_proc p
	 WHERE ` + extensionMemberP

var (
	extensionMemberC = fmt.Sprintf(extensionMember, "c.oid", "pg_catalog.pg_class", "pg_stat_statements")
	extensionMemberP = fmt.Sprintf(extensionMember, "p.oid", "pg_catalog.pg_proc", "pg_stat_statements")
)

const sharedFunctions = `
	SELECT 'advisory-lock functions' AS kind, p.oid, p.oid::pg_catalog.regprocedure::text AS name, false AS is_view, ` + funcPublic + ` AS public
	  FROM pg_catalog.pg_proc p
	 WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace AND p.proname LIKE 'pg\_%advisory%'
	UNION ALL
	SELECT 'large-object creation functions', p.oid, p.oid::pg_catalog.regprocedure::text, false, ` + funcPublic + `
	  FROM pg_catalog.pg_proc p
	 WHERE p.oid IN ('pg_catalog.lo_create(oid)'::pg_catalog.regprocedure,
	                 'pg_catalog.lo_creat(integer)'::pg_catalog.regprocedure,
	                 'pg_catalog.lo_from_bytea(oid,bytea)'::pg_catalog.regprocedure)`

// sharedAccess lists who may use the objects objectsSQL selects: PUBLIC,
// and (when PUBLIC may not) vital_tenant, vital_tenant_writer or a tenant
// role by any other grant or membership. One line per grantee and kind.
func sharedAccess(ctx context.Context, conn *pgx.Conn, r roles, objectsSQL string) ([]string, error) {
	problems, err := collect(ctx, conn, `
		WITH obj AS (`+objectsSQL+`),
		who AS (
		    SELECT oid, rolname::text AS name FROM pg_catalog.pg_roles
		     WHERE (rolname IN ('vital_tenant', 'vital_tenant_writer') OR rolname = ANY ($1)) AND NOT rolsuper
		),
		hit AS (
		    SELECT 0 AS ord, 'PUBLIC' AS who, obj.kind, obj.is_view, obj.name FROM obj WHERE obj.public
		    UNION ALL
		    SELECT 1, who.name, obj.kind, obj.is_view, obj.name
		      FROM obj CROSS JOIN who
		     WHERE NOT obj.public
		       AND CASE WHEN obj.is_view THEN pg_catalog.has_table_privilege(who.oid, obj.oid, 'SELECT')
		                ELSE pg_catalog.has_function_privilege(who.oid, obj.oid, 'EXECUTE') END
		)
		SELECT who || ': may ' || CASE WHEN is_view THEN 'read ' ELSE 'execute ' END || count(*) || ' ' || kind ||
		       ' (' || pg_catalog.array_to_string((pg_catalog.array_agg(name ORDER BY name))[1:3], ', ') ||
		       CASE WHEN count(*) > 3 THEN ', ...)' ELSE ')' END
		  FROM hit
		 GROUP BY ord, who, kind, is_view
		 ORDER BY ord, who, kind`, r.all)
	if err != nil || len(problems) == 0 {
		return problems, err
	}
	return append(problems, reapplyHint), nil
}

func checkSharedStats(ctx context.Context, conn *pgx.Conn, r roles) ([]string, error) {
	return sharedAccess(ctx, conn, r, statsObjects)
}

func checkSharedFunctions(ctx context.Context, conn *pgx.Conn, r roles) ([]string, error) {
	return sharedAccess(ctx, conn, r, sharedFunctions)
}

// checkTenantRoleSettings names the settings (never their values) of tenant
// roles' defaults.
func checkTenantRoleSettings(ctx context.Context, conn *pgx.Conn, r roles) ([]string, error) {
	return collect(ctx, conn, `
		SELECT ro.rolname || ': role defaults for ' ||
		       pg_catalog.string_agg(pg_catalog.split_part(cfg, '=', 1), ', ' ORDER BY cfg) ||
		       CASE WHEN s.setdatabase = 0 THEN ' in every database'
		            ELSE ' in database ' || COALESCE(d.datname::text, s.setdatabase::text) END ||
		       ' (vitalproxy tenant sync removes them)'
		  FROM pg_catalog.pg_db_role_setting s
		  JOIN pg_catalog.pg_roles ro ON ro.oid = s.setrole
		  LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
		  CROSS JOIN LATERAL pg_catalog.unnest(s.setconfig) AS cfg
		 WHERE ro.rolname = ANY ($1)
		 GROUP BY ro.rolname, s.setdatabase, d.datname
		 ORDER BY 1`, r.all)
}

// PooledMigration is the migration that keeps signalling and prepared
// statements from pooled roles.
const PooledMigration = "20251026000006"

const pooledFunctions = `
	SELECT 'signalling and prepared-statement functions' AS kind, p.oid, p.oid::pg_catalog.regprocedure::text AS name,
	       false AS is_view, ` + funcPublic + ` AS public
	  FROM pg_catalog.pg_proc p
	 WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
	   AND p.proname IN ('pg_cancel_backend', 'pg_terminate_backend', 'pg_prepared_statement')
	UNION ALL
	SELECT 'prepared-statement views', c.oid, c.oid::pg_catalog.regclass::text, true, ` + viewPublic + `
	  FROM pg_catalog.pg_class c
	 WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.relname = 'pg_prepared_statements'`

// checkPooledRoles: no pooled role is mapped to a tenant, and neither PUBLIC
// nor a pooled role may signal backends or read prepared statements.
func checkPooledRoles(ctx context.Context, conn *pgx.Conn, r roles) ([]string, error) {
	problems, err := collect(ctx, conn, `
		WITH obj AS (`+pooledFunctions+`),
		who AS (SELECT oid, rolname::text AS name FROM pg_catalog.pg_roles WHERE rolname = ANY ($1) AND NOT rolsuper)
		SELECT 'PUBLIC: may use ' || obj.name FROM obj WHERE obj.public
		UNION ALL
		SELECT who.name || ': may use ' || obj.name
		  FROM obj CROSS JOIN who
		 WHERE NOT obj.public
		   AND CASE WHEN obj.is_view THEN pg_catalog.has_table_privilege(who.oid, obj.oid, 'SELECT')
		            ELSE pg_catalog.has_function_privilege(who.oid, obj.oid, 'EXECUTE') END
		ORDER BY 1`, r.pooled)
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		problems = append(problems, "as a superuser, run: vitalproxy migrate reapply "+PooledMigration)
	}
	if len(r.pooled) > 0 {
		mapped, err := collect(ctx, conn, `
			SELECT role_name::text || ': pooled role mapped to a tenant in vital.tenant_roles'
			  FROM vital.tenant_roles WHERE role_name::text = ANY ($1) ORDER BY 1`, r.pooled)
		if err != nil {
			return nil, err
		}
		problems = append(mapped, problems...)
	}
	return problems, nil
}

// checkLargeObjects: lo_compat_privileges is off wherever a tenant session
// could get it from (only a superuser may set it).
func checkLargeObjects(ctx context.Context, conn *pgx.Conn, _ roles) ([]string, error) {
	return collect(ctx, conn, `
		WITH off(v) AS (VALUES ('off'), ('of'), ('false'), ('fals'), ('fal'), ('fa'), ('f'), ('no'), ('n'), ('0'))
		SELECT 'lo_compat_privileges is on in ' || w.what || ' (large objects are readable and writable by every role)'
		  FROM (SELECT 'this session' AS what, pg_catalog.current_setting('lo_compat_privileges') AS v
		        UNION ALL
		        SELECT 'the server configuration', s.reset_val FROM pg_catalog.pg_settings s
		         WHERE s.name = 'lo_compat_privileges'
		        UNION ALL
		        SELECT CASE WHEN d.setdatabase = 0 AND d.setrole = 0 THEN 'the defaults of every database'
		                    WHEN d.setrole = 0 THEN 'the defaults of this database'
		                    WHEN d.setdatabase = 0 THEN 'the defaults of role ' || pg_catalog.quote_ident(r.rolname::text)
		                    ELSE 'the defaults of role ' || pg_catalog.quote_ident(r.rolname::text) || ' in this database' END,
		               pg_catalog.substr(cfg, pg_catalog.strpos(cfg, '=') + 1)
		          FROM pg_catalog.pg_db_role_setting d
		          LEFT JOIN pg_catalog.pg_roles r ON r.oid = d.setrole
		          CROSS JOIN LATERAL pg_catalog.unnest(d.setconfig) AS cfg
		         WHERE d.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()))
		           AND pg_catalog.split_part(cfg, '=', 1) = 'lo_compat_privileges') w
		 WHERE pg_catalog.lower(pg_catalog.btrim(w.v, ' ''"')) NOT IN (SELECT v FROM off)
		 GROUP BY w.what
		 ORDER BY 1`)
}
