package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/config"
)

func init() { subcommands = append(subcommands, newTenantCommand) }

func newTenantCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tenant",
		Short: "Add, list, suspend and resume tenants and keep their database roles in shape",
		Long: `Manage tenants (rows of public.tenants) and their PostgreSQL login roles.

Every tenant has a read-write role (<prefix><slug>_rw) and a read-only role
(<prefix><slug>_ro); a platform tenant also has an admin role
(<prefix><slug>_admin). Their passwords derive from role_secret, so add and
sync need it; list, suspend and resume do not. All commands use the
administrative connection (--database-url), which must be allowed to create
roles (CREATEROLE or superuser).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newTenantAddCommand(), newTenantListCommand(), newTenantSuspendCommand(),
		newTenantResumeCommand(), newTenantSyncCommand())
	return cmd
}

// connectTimeout bounds the administrative connection's start.
const connectTimeout = 30 * time.Second

// connectAdminDB opens the administrative connection of cfg.
func connectAdminDB(ctx context.Context, cfg *config.Config) (*pgx.Conn, error) {
	if err := cfg.RequireDatabaseURL(); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(cctx, string(cfg.DatabaseURL))
	if err != nil {
		return nil, fmt.Errorf("connect to the database: %w", err)
	}
	return conn, nil
}

// tenantSession is what every tenant subcommand works with.
type tenantSession struct {
	cfg  *config.Config
	conn *pgx.Conn
	m    *tenantroles.Manager
}

func (s *tenantSession) close() { s.conn.Close(context.WithoutCancel(context.Background())) }

// openTenantSession loads the config and connects. With needSecret the
// role secret must be set; it is checked before connecting.
func openTenantSession(cmd *cobra.Command, needSecret bool) (*tenantSession, error) {
	cfg, err := loadConfig(cmd, nil)
	if err != nil {
		return nil, err
	}
	var secret []byte
	switch {
	case cfg.RoleSecret != "":
		if secret, err = cfg.RoleSecretBytes(); err != nil {
			return nil, err
		}
	case needSecret:
		return nil, fmt.Errorf("%s needs the role secret (tenant role passwords derive from it): set role_secret (VITALPROXY_ROLE_SECRET, base64) or role_secret_file",
			cmd.CommandPath())
	}
	conn, err := connectAdminDB(cmd.Context(), cfg)
	if err != nil {
		return nil, err
	}
	return &tenantSession{cfg: cfg, conn: conn, m: tenantroles.New(conn, tenantroles.Options{Secret: secret, Prefix: cfg.RolePrefix})}, nil
}

func newTenantAddCommand() *cobra.Command {
	var spec tenantroles.Spec
	cmd := &cobra.Command{
		Use:   "add --slug SLUG --name NAME --type TYPE [--tier TIER]",
		Short: "Add a tenant and create its login roles",
		Long: `Add a tenant and create its login roles, in one transaction: on any error
nothing is left behind.

The slug is 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or
digit. The type is client, solution, industry or platform (a platform tenant
also gets an admin role). The tier must be one the tenants table allows; when
omitted the table's default (or "starter") is used.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Check what needs no database first.
			if err := tenantroles.ValidateSlug(spec.Slug); err != nil {
				return err
			}
			if err := tenantroles.ValidateType(spec.Type); err != nil {
				return err
			}
			s, err := openTenantSession(cmd, true)
			if err != nil {
				return err
			}
			defer s.close()
			t, err := s.m.Add(cmd.Context(), spec)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added tenant %s (%s, tier %s, id %s); login roles: %s\n",
				t.Slug, t.Type, orDash(t.Tier), t.ID, strings.Join(t.Roles, ", "))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.Slug, "slug", "", "tenant slug, e.g. acme-pharma (required)")
	f.StringVar(&spec.Name, "name", "", "display name (required)")
	f.StringVar(&spec.Type, "type", "", "tenant type: client, solution, industry or platform (required)")
	f.StringVar(&spec.Tier, "tier", "", "subscription tier (default: the tenants table's default, else starter)")
	for _, name := range []string{"slug", "name", "type"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func newTenantListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List tenants with their status and login roles",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := openTenantSession(cmd, false)
			if err != nil {
				return err
			}
			defer s.close()
			ts, err := s.m.List(cmd.Context())
			if err != nil {
				return err
			}
			return printTenants(cmd.OutOrStdout(), ts)
		},
	}
}

func printTenants(w io.Writer, ts []tenantroles.Tenant) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SLUG\tNAME\tTYPE\tTIER\tSTATUS\tROLES")
	for _, t := range ts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", printable(t.Slug), printable(t.Name), printable(t.Type),
			orDash(printable(t.Tier)), printable(t.Status), orDash(strings.Join(t.Roles, ",")))
	}
	return tw.Flush()
}

func newTenantSuspendCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "suspend SLUG",
		Short: "Suspend a tenant: its roles can no longer log in and their sessions are ended",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := openTenantSession(cmd, false)
			if err != nil {
				return err
			}
			defer s.close()
			if err := s.m.Suspend(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "suspended tenant %s: its roles cannot log in and their sessions were ended\n", args[0])
			return nil
		},
	}
}

func newTenantResumeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "resume SLUG",
		Short: "Resume a suspended tenant: its roles may log in again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := openTenantSession(cmd, false)
			if err != nil {
				return err
			}
			defer s.close()
			if err := s.m.Resume(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "resumed tenant %s: its roles may log in again\n", args[0])
			return nil
		},
	}
}

func newTenantSyncCommand() *cobra.Command {
	var probe bool
	cmd := &cobra.Command{
		Use:   "sync [--probe]",
		Short: "Create missing tenant roles and repair drift; prints each change",
		Long: `Create missing tenant login roles and repair drift: role attributes (never
SUPERUSER, BYPASSRLS, CREATEROLE, CREATEDB or REPLICATION; LOGIN only while the
tenant is active), memberships (exactly the group role), passwords and the
vital.tenant_roles rows. Sessions of suspended tenants' roles are ended. Each
change is printed; running it again prints none.

With --probe, or when probe.enabled is true in the configuration, it first
makes sure the two tenants of the live isolation probe exist
(` + tenantroles.ProbeTenantA + ` and ` + tenantroles.ProbeTenantB + `, type client) and that each has its
private canary agent (` + tenantroles.ProbeCanaryPrefix + `<slug>).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := openTenantSession(cmd, true)
			if err != nil {
				return err
			}
			defer s.close()
			out := cmd.OutOrStdout()
			var changes []string
			if probe || s.cfg.Probe.Enabled {
				rep, err := s.m.EnsureProbeTenants(cmd.Context())
				for _, c := range rep.Changes {
					fmt.Fprintln(out, c)
				}
				if err != nil {
					return err
				}
				changes = append(changes, rep.Changes...)
			}
			rep, err := s.m.Sync(cmd.Context())
			for _, c := range rep.Changes {
				fmt.Fprintln(out, c)
			}
			if err != nil {
				return err
			}
			changes = append(changes, rep.Changes...)
			if len(changes) == 0 {
				fmt.Fprintln(out, "tenant roles are in sync: nothing changed")
			} else {
				fmt.Fprintf(out, "%d change(s)\n", len(changes))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&probe, "probe", false, "also create the isolation probe's tenants and canary agents (implied by probe.enabled)")
	return cmd
}

// printable replaces control characters so a value cannot break a table or
// a terminal.
func printable(s string) string {
	if strings.IndexFunc(s, unicode.IsControl) < 0 {
		return s
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
