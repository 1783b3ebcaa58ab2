package audit

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Check is the outcome of one audit check.
type Check struct {
	// Name identifies the check (one of the constants below for audit
	// checks), stable enough for metric labels and scripts.
	Name string
	// OK is true when the database passed.
	OK bool
	// Detail says what is wrong when OK is false (empty otherwise).
	Detail string
}

// String renders the check as "PASS name" or "FAIL name: detail".
func (c Check) String() string {
	if c.OK {
		return "PASS " + c.Name
	}
	return "FAIL " + c.Name + ": " + c.Detail
}

// Names of the checks Run performs, in order.
const (
	// TenantRolesSafe: every tenant login role (mapped in vital.tenant_roles,
	// a direct member of vital_tenant or vital_tenant_writer, or named with
	// the role prefix) is not SUPERUSER, BYPASSRLS, CREATEROLE, CREATEDB or
	// REPLICATION, owns no relation, function, schema or the database, is a
	// member of no role but vital_tenant/vital_tenant_writer (a read-only
	// role of vital_tenant only) and vital_tenant_session (never a pooled
	// role), and may CREATE in no schema nor the database.
	TenantRolesSafe = "tenant_roles_safe"
	// GroupRolesSafe: vital_owner, vital_tenant, vital_tenant_writer,
	// vital_operator and vital_tenant_session exist, are NOLOGIN, not
	// SUPERUSER or BYPASSRLS, and the tenant groups and vital_operator
	// belong to nothing beyond each other (and, for vital_operator,
	// pg_read_all_stats and vital_tenant_session).
	GroupRolesSafe = "group_roles_safe"
	// TenantTablesRLS: every table with a tenant_id column (and tenants,
	// user_tenants, user_roles, resource_sharing_audit) has RLS enabled and
	// forced and a policy for SELECT, INSERT, UPDATE and DELETE.
	TenantTablesRLS = "tenant_tables_rls"
	// TenantTablesOwner: those tables belong to a role that is neither a
	// superuser, BYPASSRLS, nor a tenant role.
	TenantTablesOwner = "tenant_tables_owner"
	// ViewsSecurityInvoker: every view runs with the caller's rights
	// (security_invoker), so RLS applies to the caller.
	ViewsSecurityInvoker = "views_security_invoker"
	// DefinerSearchPath: every SECURITY DEFINER function in schemas public
	// and vital has a fixed search_path.
	DefinerSearchPath = "definer_functions_search_path"
	// MaterializedViewsShared: every materialized view tenants may read
	// holds only globally shared rows (checked by querying it), and
	// mv_platform_shared_resources holds no row whose source is no longer
	// shared globally.
	MaterializedViewsShared = "materialized_views_shared_only"
	// TenantPrivileges: no table-level UPDATE, DELETE, TRUNCATE, REFERENCES
	// or TRIGGER for vital_tenant, vital_tenant_writer or a tenant role, and
	// no write privilege at all for vital_tenant and read-only roles.
	TenantPrivileges = "tenant_privileges"
	// VitalSchemaPrivate: schema vital exists and neither PUBLIC,
	// vital_tenant, vital_tenant_writer nor a tenant role may use it or any
	// relation in it.
	VitalSchemaPrivate = "vital_schema_private"
	// SharedStatsPrivate: neither PUBLIC, vital_tenant, vital_tenant_writer
	// nor a tenant role may read the database-wide statistics and lock views
	// (pg_catalog.pg_stat_*, pg_statio_*, pg_locks) or execute the functions
	// behind them (pg_stat_get_*, pg_lock_status, pg_blocking_pids, relation
	// and database sizes), nor read pg_stat_statements where it is
	// installed. Migration 20251026000005 revokes them when a superuser runs
	// it; an extension installed afterwards needs it run again.
	SharedStatsPrivate = "shared_stats_private"
	// SharedFunctionsRevoked: neither PUBLIC nor a tenant role may execute
	// the advisory-lock functions (their keys are database-wide) or create
	// large objects (lo_create, lo_creat, lo_from_bytea: objects outside
	// every table's RLS).
	SharedFunctionsRevoked = "shared_functions_revoked"
	// TenantRoleSettings: no tenant role has role defaults (ALTER ROLE ...
	// SET, in pg_db_role_setting, for any database). A tenant role may set
	// its own; they outlive the proxy's session reset on pooled backends.
	// `vitalproxy tenant sync` removes them.
	TenantRoleSettings = "tenant_role_settings"
	// PooledRolesSafe: the pooled login roles of context mode
	// (vital.pooled_roles) are not mapped to a tenant in vital.tenant_roles,
	// and neither PUBLIC nor a pooled role may signal backends
	// (pg_cancel_backend, pg_terminate_backend) or read the session's
	// prepared statements (pg_prepared_statements): on a backend that
	// serves many tenants those reach other tenants. Migration
	// 20251026000006 revokes them when a superuser runs it.
	PooledRolesSafe = "pooled_roles_safe"
	// LargeObjectsPrivate: lo_compat_privileges is off in this session, in
	// the server's configuration (the value a session resets to) and in
	// every database or role default that applies to this database. With it
	// on, PostgreSQL skips the privilege checks of large objects: every role
	// could read and write every large object, and the reading functions
	// (lo_open, lo_get, ...) stay granted to PUBLIC.
	LargeObjectsPrivate = "large_objects_private"
)

// maxListed bounds how many offenders a Detail names.
const maxListed = 10

// Group roles.
var groupRoles = []string{"vital_owner", "vital_tenant", "vital_tenant_writer", "vital_operator", "vital_tenant_session"}

// roles are the tenant login roles found in the database.
type roles struct {
	all      []string // every tenant role, pooled roles included
	readOnly []string // those that must not write
	pooled   []string // the pooled roles of context mode (vital.pooled_roles)
}

type checkFunc func(ctx context.Context, conn *pgx.Conn, r roles) ([]string, error)

// Run performs every check against the database conn is connected to and
// returns them in a fixed order. prefix is the tenant role name prefix
// (e.g. "vt_"); roles starting with it are checked as tenant roles even when
// nothing else marks them as such. An error is returned only when the
// connection fails; a check that cannot be evaluated fails with the reason.
func Run(ctx context.Context, conn *pgx.Conn, prefix string) ([]Check, error) {
	r, err := tenantRoles(ctx, conn, prefix)
	if err != nil {
		if conn.IsClosed() {
			return nil, fmt.Errorf("audit: %w", err)
		}
		return nil, fmt.Errorf("audit: list tenant roles: %w", err)
	}
	checks := []struct {
		name string
		fn   checkFunc
	}{
		{TenantRolesSafe, checkTenantRoles},
		{GroupRolesSafe, checkGroupRoles},
		{TenantTablesRLS, checkTenantTablesRLS},
		{TenantTablesOwner, checkTenantTablesOwner},
		{ViewsSecurityInvoker, checkViews},
		{DefinerSearchPath, checkDefinerFunctions},
		{MaterializedViewsShared, checkMaterializedViews},
		{TenantPrivileges, checkPrivileges},
		{VitalSchemaPrivate, checkVitalSchema},
		{SharedStatsPrivate, checkSharedStats},
		{SharedFunctionsRevoked, checkSharedFunctions},
		{TenantRoleSettings, checkTenantRoleSettings},
		{PooledRolesSafe, checkPooledRoles},
		{LargeObjectsPrivate, checkLargeObjects},
	}
	out := make([]Check, 0, len(checks))
	for _, c := range checks {
		problems, err := c.fn(ctx, conn, r)
		if err != nil {
			if conn.IsClosed() || ctx.Err() != nil {
				return out, fmt.Errorf("audit %s: %w", c.name, err)
			}
			problems = []string{"could not be checked: " + describe(err)}
		}
		out = append(out, result(c.name, problems))
	}
	return out, nil
}

// Failed counts the checks that did not pass.
func Failed(checks []Check) int {
	n := 0
	for _, c := range checks {
		if !c.OK {
			n++
		}
	}
	return n
}

func result(name string, problems []string) Check {
	if len(problems) == 0 {
		return Check{Name: name, OK: true}
	}
	listed := problems
	if len(listed) > maxListed {
		listed = listed[:maxListed]
	}
	detail := strings.Join(listed, "; ")
	if n := len(problems) - len(listed); n > 0 {
		detail += fmt.Sprintf("; and %d more", n)
	}
	return Check{Name: name, Detail: detail}
}

func describe(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Message + " (SQLSTATE " + pgErr.Code + ")"
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}

// collect runs q and returns its single text column.
func collect(ctx context.Context, conn *pgx.Conn, q string, args ...any) ([]string, error) {
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// tenantRoles finds the tenant login roles: mapped in vital.tenant_roles,
// direct members of the tenant group roles, or named with prefix.
func tenantRoles(ctx context.Context, conn *pgx.Conn, prefix string) (roles, error) {
	var mapped bool
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.to_regclass('vital.tenant_roles') IS NOT NULL`).Scan(&mapped); err != nil {
		return roles{}, err
	}
	mappedRoles, mappedRO := `SELECT NULL::name, NULL::text WHERE false`, ``
	if mapped {
		mappedRoles = `SELECT role_name, capability FROM vital.tenant_roles`
		mappedRO = ` OR r.rolname IN (SELECT role_name FROM vital.tenant_roles WHERE capability = 'ro')`
	}
	q := `
		WITH mapped(role_name, capability) AS (` + mappedRoles + `),
		groups AS (SELECT oid, rolname FROM pg_catalog.pg_roles WHERE rolname IN ('vital_tenant', 'vital_tenant_writer'))
		SELECT r.rolname::text,
		       (NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m JOIN groups g ON g.oid = m.roleid
		                     WHERE m.member = r.oid AND g.rolname = 'vital_tenant_writer')
		        AND EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m JOIN groups g ON g.oid = m.roleid
		                     WHERE m.member = r.oid AND g.rolname = 'vital_tenant'))` + mappedRO + `
		  FROM pg_catalog.pg_roles r
		 WHERE r.rolname NOT IN ('vital_owner', 'vital_tenant', 'vital_tenant_writer', 'vital_operator')
		   AND (r.rolname IN (SELECT role_name FROM mapped)
		        OR EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m JOIN groups g ON g.oid = m.roleid WHERE m.member = r.oid)
		        OR ($1 <> '' AND pg_catalog.starts_with(r.rolname, $1)))
		 ORDER BY 1`
	var r roles
	var hasPooled bool
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.to_regclass('vital.pooled_roles') IS NOT NULL`).Scan(&hasPooled); err != nil {
		return roles{}, err
	}
	if hasPooled {
		rows, err := conn.Query(ctx, `SELECT role_name::text FROM vital.pooled_roles ORDER BY 1`)
		if err != nil {
			return roles{}, err
		}
		if r.pooled, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return roles{}, err
		}
	}
	rows, err := conn.Query(ctx, q, prefix)
	if err != nil {
		return roles{}, err
	}
	var name string
	var ro bool
	_, err = pgx.ForEachRow(rows, []any{&name, &ro}, func() error {
		r.all = append(r.all, name)
		if ro {
			r.readOnly = append(r.readOnly, name)
		}
		return nil
	})
	return r, err
}
