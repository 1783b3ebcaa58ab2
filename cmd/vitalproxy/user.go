package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/vitalproxy/vitalproxy/auth/userstore"
)

func init() { subcommands = append(subcommands, newUserCommand) }

func newUserCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "user",
		Short: "Manage proxy users kept in the database (vital.proxy_users)",
		Long: `Manage the proxy users kept in the database table vital.proxy_users.

Passwords are read from stdin (without echo, and twice, on a terminal; else
the first line) and stored only as SCRAM-SHA-256 verifiers. A user may connect
to each of its tenants as user@tenant-slug; the first tenant is the default.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newUserAddCommand(), newUserListCommand(), newUserRemoveCommand(), newUserSetPasswordCommand())
	return cmd
}

// openUserDB loads the config and opens the administrative connection.
func openUserDB(cmd *cobra.Command) (*pgx.Conn, error) {
	cfg, err := loadConfig(cmd, nil)
	if err != nil {
		return nil, err
	}
	return connectAdminDB(cmd.Context(), cfg)
}

func closeUserDB(conn *pgx.Conn) { conn.Close(context.WithoutCancel(context.Background())) }

func newUserAddCommand() *cobra.Command {
	var u userstore.User
	cmd := &cobra.Command{
		Use:   "add NAME --tenant SLUG [--tenant SLUG ...] [--console admin|stats]",
		Short: "Add a user; the password is read from stdin",
		Long: `Add a proxy user. The password is read from stdin and stored as a
SCRAM-SHA-256 verifier.

--tenant may be repeated (or given a comma-separated list); the first tenant
is the default. --read-only maps the user to its tenants' read-only roles;
--platform-admin to the admin role, and is only allowed when every tenant of
the user is of type platform. --console admin or stats lets the user reach
the operator console (console.database): a console user with tenants sees
and steers only those, one without --tenant is a console-only user.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			u.Name = args[0]
			conn, err := openUserDB(cmd)
			if err != nil {
				return err
			}
			defer closeUserDB(conn)
			// Refuse a bad user before asking for its password.
			if err := userstore.Check(cmd.Context(), conn, u); err != nil {
				return err
			}
			if u.Verifier, err = readVerifier(cmd); err != nil {
				return err
			}
			if err := userstore.Add(cmd.Context(), conn, u); err != nil {
				return err
			}
			what := "tenants: " + strings.Join(u.Tenants, ", ")
			if len(u.Tenants) == 0 {
				what = "console only"
			}
			if u.Console != "" {
				what += "; console: " + u.Console
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added user %s (%s)\n", u.Name, what)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&u.Tenants, "tenant", nil, "tenant slug the user may connect to; repeat for more, the first is the default (required)")
	f.BoolVar(&u.ReadOnly, "read-only", false, "connect as the tenants' read-only roles")
	f.BoolVar(&u.PlatformAdmin, "platform-admin", false, "connect as the platform tenant's admin role (platform tenants only)")
	f.StringVar(&u.PoolMode, "pool-mode", "", "session or transaction (default: pool.mode)")
	f.StringVar(&u.Console, "console", "", "operator console role: admin (every command) or stats (SHOW only)")
	return cmd
}

func newUserListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List users (never their verifiers)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := openUserDB(cmd)
			if err != nil {
				return err
			}
			defer closeUserDB(conn)
			us, err := userstore.List(cmd.Context(), conn)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTENANTS\tREAD_ONLY\tPLATFORM_ADMIN\tPOOL_MODE\tCONSOLE")
			for _, u := range us {
				mode := u.PoolMode
				if mode == "" {
					mode = "default"
				}
				console := u.Console
				if console == "" {
					console = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%t\t%t\t%s\t%s\n", printable(u.Name), printable(strings.Join(u.Tenants, ",")),
					u.ReadOnly, u.PlatformAdmin, printable(mode), console)
			}
			return tw.Flush()
		},
	}
}

func newUserRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a user",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := openUserDB(cmd)
			if err != nil {
				return err
			}
			defer closeUserDB(conn)
			if err := userstore.Remove(cmd.Context(), conn, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed user %s\n", args[0])
			return nil
		},
	}
}

func newUserSetPasswordCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "set-password NAME",
		Short: "Replace a user's password; the new one is read from stdin",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := openUserDB(cmd)
			if err != nil {
				return err
			}
			defer closeUserDB(conn)
			if _, err := userstore.Get(cmd.Context(), conn, args[0]); err != nil {
				return err
			}
			verifier, err := readVerifier(cmd)
			if err != nil {
				return err
			}
			if err := userstore.SetPassword(cmd.Context(), conn, args[0], verifier); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "changed the password of user %s\n", args[0])
			return nil
		},
	}
}
