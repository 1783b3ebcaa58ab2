package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/migrations/audit"
)

func init() { subcommands = append(subcommands, newCheckCommand) }

func newCheckCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Audit a live database for what tenant isolation rests on",
		Long: `Run the isolation audit against the database (--database-url or
VITALPROXY_DATABASE_URL) and print "PASS name" or "FAIL name: detail" per
check; exit non-zero if any check fails. The checks:

  tenant_roles_safe               tenant login roles (mapped in vital.tenant_roles, members
                                  of vital_tenant/vital_tenant_writer, or named with
                                  role_prefix) are not SUPERUSER, BYPASSRLS, CREATEROLE,
                                  CREATEDB or REPLICATION, own nothing, belong to no other
                                  role (vital_operator included), and cannot CREATE anywhere
  group_roles_safe                vital_owner, vital_tenant, vital_tenant_writer and
                                  vital_operator exist, cannot log in, are not SUPERUSER
                                  or BYPASSRLS
  tenant_tables_rls               every table with a tenant_id column (and tenants,
                                  user_tenants, user_roles, resource_sharing_audit) has RLS
                                  enabled and forced and a policy for every command
  tenant_tables_owner             those tables are not owned by a superuser, a BYPASSRLS
                                  role or a tenant role
  views_security_invoker          every view has security_invoker
  definer_functions_search_path   SECURITY DEFINER functions in public and vital pin
                                  search_path
  materialized_views_shared_only  materialized views tenants can read hold only globally
                                  shared rows (checked by querying them)
  tenant_privileges               no table-level UPDATE, DELETE, TRUNCATE, REFERENCES or
                                  TRIGGER for tenant roles; no writes at all for readers
  vital_schema_private            schema vital and its tables are closed to PUBLIC and
                                  tenant roles
  shared_stats_private            PUBLIC and tenant roles may not read the statistics and
                                  lock views (pg_stat_*, pg_statio_*, pg_locks), call the
                                  functions behind them or read pg_stat_statements (fix:
                                  vitalproxy migrate reapply 20251026000005, as a superuser)
  shared_functions_revoked        PUBLIC and tenant roles may not use pg_catalog's
                                  advisory-lock functions (tenants get public's, scoped per
                                  tenant) or create large objects (same fix)
  tenant_role_settings            no tenant role has role defaults (ALTER ROLE ... SET),
                                  which outlive the proxy's session reset (fix:
                                  vitalproxy tenant sync)
  pooled_roles_safe               the pooled roles of isolation mode context are mapped to
                                  no tenant, and neither they nor PUBLIC may signal
                                  backends or read prepared statements (fix: vitalproxy
                                  migrate reapply 20251026000006, as a superuser)
  large_objects_private           lo_compat_privileges is off in the server configuration
                                  and in every database and role default (with it on,
                                  every role may read and write every large object)

Use a superuser connection so that every row can be read.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, nil)
			if err != nil {
				return err
			}
			if err := cfg.RequireDatabaseURL(); err != nil {
				return err
			}
			ctx := cmd.Context()
			conn, err := migrations.Connect(ctx, string(cfg.DatabaseURL))
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(ctx))
			checks, err := audit.Run(ctx, conn, cfg.RolePrefix)
			if err != nil {
				return err
			}
			return printChecks(cmd.OutOrStdout(), checks)
		},
	}
}
