package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/migrations/audit"
)

func init() { subcommands = append(subcommands, newMigrateCommand) }

func newMigrateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply, roll back, inspect and verify the database migrations",
		Long: `Manage the database schema vitalproxy relies on: tenants, tenant and
sharing columns, Row-Level Security policies, the MVP tenants, and the private
schema vital (tenant role mapping, proxy users).

The migrations are compiled into the binary. Each runs in one transaction;
concurrent runs take turns on an advisory lock. Applied versions and the
sha256 of each applied file are recorded in schema vital: a file changed after
it was applied is reported by status and refused by up.

All subcommands use the administrative connection (--database-url or
VITALPROXY_DATABASE_URL), normally a superuser.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newMigrateUpCommand(), newMigrateDownCommand(), newMigrateStatusCommand(), newMigrateVerifyCommand(),
		newMigrateReapplyCommand())
	return cmd
}

// openMigrator loads the config and builds a Migrator for its database.
func openMigrator(cmd *cobra.Command) (*config.Config, *migrations.Migrator, error) {
	cfg, err := loadConfig(cmd, nil)
	if err != nil {
		return nil, nil, err
	}
	if err := cfg.RequireDatabaseURL(); err != nil {
		return nil, nil, err
	}
	m, err := migrations.New(string(cfg.DatabaseURL),
		migrations.WithLogger(newLogger(cfg, cmd.ErrOrStderr())),
		migrations.WithRolePrefix(cfg.RolePrefix))
	if err != nil {
		return nil, nil, err
	}
	return cfg, m, nil
}

func newMigrateUpCommand() *cobra.Command {
	var to int64
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Apply pending migrations (all, or up to --to VERSION)",
		Long: `Apply the pending migrations in order, printing one line per migration with
the time it took. With --to, stop after that version. With --dry-run, print the
SQL that would run and change nothing.

When role_secret is configured, tenant login roles are synced afterwards
(as by "vitalproxy tenant sync").

Migration 20251026000005 revokes PUBLIC's access to statistics and lock
views, advisory locks and large-object creation, which only a superuser may
do; run by another role it says so in a warning, and a superuser finishes it
with "vitalproxy migrate reapply 20251026000005". Migration 20251026000006
likewise revokes signalling backends and reading prepared statements from
PUBLIC (tenant roles keep them through vital_tenant_session). Migration
20251026000007 gives tenants advisory locks and their own sessions'
statistics back, scoped per tenant (public.pg_advisory_lock and the other
advisory-lock functions, public.pg_stat_activity, public.pg_stat_ssl).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("to") && to <= 0 {
				return fmt.Errorf("--to must be a migration version such as %d (to remove everything use: migrate down --to 0)", migrations.LatestVersion)
			}
			cfg, m, err := openMigrator(cmd)
			if err != nil {
				return err
			}
			defer m.Close()
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			if to == 0 {
				to = m.Files()[len(m.Files())-1].Version
			}
			if dryRun {
				steps, err := m.PlanUpTo(ctx, to)
				if err != nil {
					return err
				}
				printSteps(out, steps, "-- nothing to apply")
				return nil
			}
			res, err := m.UpTo(ctx, to)
			printResults(out, res)
			if err != nil {
				return err
			}
			if len(res) == 0 {
				fmt.Fprintln(out, "nothing to apply: the database is up to date")
			}
			return syncTenantRoles(ctx, out, cfg, m)
		},
	}
	cmd.Flags().Int64Var(&to, "to", 0, "apply migrations up to and including this version")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the SQL that would run instead of running it")
	return cmd
}

// syncTenantRoles runs tenant role sync after up when a role secret is set.
func syncTenantRoles(ctx context.Context, out io.Writer, cfg *config.Config, m *migrations.Migrator) error {
	if cfg.RoleSecret == "" {
		return nil
	}
	secret, err := cfg.RoleSecretBytes()
	if err != nil {
		return err
	}
	conn, err := m.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	report, err := tenantroles.New(conn, tenantroles.Options{Secret: secret, Prefix: cfg.RolePrefix}).Sync(ctx)
	for _, c := range report.Changes {
		fmt.Fprintln(out, "tenant roles:", c)
	}
	if err != nil {
		return fmt.Errorf("migrations applied, but syncing tenant roles failed: %w", err)
	}
	if len(report.Changes) == 0 {
		fmt.Fprintln(out, "tenant roles: in sync")
	}
	return nil
}

func newMigrateDownCommand() *cobra.Command {
	var to int64
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Roll back the last migration (or every one after --to VERSION)",
		Long: `Roll back the most recently applied migration, or with --to every migration
newer than VERSION, newest first, following the seed document's rollback
order. --to 0 removes everything the migrations created in this database,
including the bookkeeping tables; the cluster-wide group roles vital_owner,
vital_tenant, vital_tenant_writer and vital_operator are left in place
because other databases of the cluster may use them. Rolling back the
seed migration deletes the two MVP tenants and their data; pre-existing
agents are kept and returned to their unassigned state. With --dry-run,
print the SQL that would run and change nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to < 0 {
				return fmt.Errorf("--to must be 0 or a migration version")
			}
			_, m, err := openMigrator(cmd)
			if err != nil {
				return err
			}
			defer m.Close()
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			all := cmd.Flags().Changed("to")
			if dryRun {
				var steps []migrations.Step
				if all {
					steps, err = m.PlanDownTo(ctx, to)
				} else {
					steps, err = m.PlanDown(ctx)
				}
				if err != nil {
					return err
				}
				printSteps(out, steps, "-- nothing to roll back")
				return nil
			}
			var res []migrations.Result
			if all {
				res, err = m.DownTo(ctx, to)
			} else {
				res, err = m.Down(ctx)
			}
			printResults(out, res)
			if err != nil {
				return err
			}
			if len(res) == 0 {
				fmt.Fprintln(out, "nothing to roll back")
			}
			return nil
		},
	}
	cmd.Flags().Int64Var(&to, "to", 0, "roll back every migration newer than this version (0: all of them)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the SQL that would run instead of running it")
	return cmd
}

func newMigrateReapplyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "reapply VERSION",
		Short: "Run an applied migration's Up section again (e.g. as a superuser)",
		Long: `Run the Up section of an applied migration again, in one transaction under
the migration lock, leaving the bookkeeping as it is. Every Up section is
idempotent, so this only completes what the first run could not do:

  20251026000005  revokes PUBLIC's access to the statistics and lock views,
                  advisory locks and large-object creation only when a
                  superuser runs it, and covers pg_stat_statements only if it
                  was installed by then. When "vitalproxy check" fails
                  shared_stats_private or shared_functions_revoked, run
                  "vitalproxy migrate reapply 20251026000005" as a superuser.
  20251026000006  revokes pg_cancel_backend, pg_terminate_backend and the
                  prepared-statement views from PUBLIC only when a superuser
                  runs it. When "vitalproxy check" fails pooled_roles_safe,
                  run "vitalproxy migrate reapply 20251026000006".
  20251026000007  makes vital_owner a member of pg_read_all_stats (for the
                  tenant-scoped public.pg_stat_activity) only when a
                  superuser runs it; run by another role it warns, and
                  tenants get "permission denied" from that view until a
                  superuser runs "vitalproxy migrate reapply 20251026000007".

Refuses a migration that is pending or whose file changed since it was
applied.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			version, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil || version <= 0 {
				return fmt.Errorf("reapply: %q is not a migration version such as %d", args[0], migrations.LatestVersion)
			}
			_, m, err := openMigrator(cmd)
			if err != nil {
				return err
			}
			defer m.Close()
			res, err := m.Reapply(cmd.Context(), version)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.String())
			return nil
		},
	}
}

func newMigrateStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show every migration: applied or pending, when, and whether its file changed",
		Long: `Print one line per migration: version, file, applied or pending, when it was
applied, how long it took, and its checksum state (ok; mismatch when the file
differs from the one applied; unrecorded when it was applied without a
checksum). Exits non-zero when an applied migration's file has changed. Only
reads the database.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, m, err := openMigrator(cmd)
			if err != nil {
				return err
			}
			defer m.Close()
			st, err := m.Status(cmd.Context())
			if err != nil {
				return err
			}
			return printStatus(cmd.OutOrStdout(), st)
		},
	}
}

func printStatus(w io.Writer, st []migrations.MigrationStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tMIGRATION\tSTATE\tAPPLIED AT\tDURATION\tCHECKSUM")
	var changed []string
	for _, s := range st {
		name, state, at, took, sum := s.Name, "pending", "-", "-", "-"
		if name == "" {
			name = "(no file in this binary)"
		}
		if s.Applied {
			state = "applied"
			at = s.AppliedAt.UTC().Format(time.RFC3339)
			sum = s.ChecksumState()
			if s.Duration > 0 {
				took = s.Duration.Round(time.Millisecond).String()
			}
		}
		if sum == "mismatch" {
			sum = "checksum mismatch"
			changed = append(changed, s.Name)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", s.Version, name, state, at, took, sum)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(changed) > 0 {
		return fmt.Errorf("checksum mismatch: %s changed after it was applied", strings.Join(changed, ", "))
	}
	return nil
}

func newMigrateVerifyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Run the post-migration verification and the isolation audit",
		Long: `Run the seed document's post-migration verification (the MVP tenants, the
platform agents shared globally, the sixteen *_with_sharing policies, tenant
context and RLS isolation checked as real tenant roles inside a transaction
that is rolled back) followed by the isolation audit of "vitalproxy check".
Prints "PASS name" or "FAIL name: detail" per check and exits non-zero if
any check fails. The role-based checks need a superuser connection.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, m, err := openMigrator(cmd)
			if err != nil {
				return err
			}
			defer m.Close()
			checks, err := m.Verify(cmd.Context())
			if err != nil {
				return err
			}
			return printChecks(cmd.OutOrStdout(), checks)
		},
	}
}

// printChecks prints one line per check and fails when any check failed.
func printChecks(w io.Writer, checks []audit.Check) error {
	for _, c := range checks {
		fmt.Fprintln(w, c.String())
	}
	if n := audit.Failed(checks); n > 0 {
		return fmt.Errorf("%d of %d checks failed", n, len(checks))
	}
	return nil
}

func printResults(w io.Writer, res []migrations.Result) {
	for _, r := range res {
		fmt.Fprintln(w, r.String())
	}
}

func printSteps(w io.Writer, steps []migrations.Step, none string) {
	if len(steps) == 0 {
		fmt.Fprintln(w, none)
		return
	}
	for _, s := range steps {
		fmt.Fprintf(w, "-- %s (%s)\n%s\n", s.Name, s.Direction, s.SQL)
	}
}
