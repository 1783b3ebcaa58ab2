package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/proxy"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

func init() { subcommands = append(subcommands, newDemoCommand) }

// Defaults of the demo's listeners.
const (
	demoListen        = "127.0.0.1:6432"
	demoMetricsListen = "127.0.0.1:9930"
	demoDatabase      = "vitalproxy_demo"
)

// demoGroupRoles are the cluster-wide group roles the baseline migration
// creates when missing, in the order they can be dropped.
var demoGroupRoles = []string{"vital_operator", "vital_tenant_writer", "vital_tenant", "vital_owner"}

// demoUser is a proxy user the demo creates.
type demoUser struct {
	// Name is the proxy user name.
	Name string
	// Password is the random password of this run.
	Password string
	// Tenants are the tenant slugs the user may use; the first is the
	// default.
	Tenants       []string
	ReadOnly      bool
	PlatformAdmin bool
	// Login is the startup user name to connect as (user@tenant for a
	// user with several tenants).
	Login string
}

// demoInfo describes a running demo.
type demoInfo struct {
	// Addr is the proxy's client address, MetricsAddr its HTTP endpoint.
	Addr        string
	MetricsAddr string
	// Database is the database name clients use.
	Database string
	Users    []demoUser
	// TempDir is the throwaway cluster's directory; empty with --upstream.
	TempDir string
	// Upstream is true when the demo runs in an existing cluster.
	Upstream bool
	// RolePrefix starts the demo's tenant role names.
	RolePrefix string
}

// ConnString returns the connection URL of user u through the proxy.
func (d demoInfo) ConnString(u demoUser) string {
	cu := url.URL{Scheme: "postgres", User: url.UserPassword(u.Login, u.Password), Host: d.Addr,
		Path: "/" + d.Database, RawQuery: "sslmode=disable"}
	return cu.String()
}

// User returns the demo user with the name.
func (d demoInfo) User(name string) (demoUser, bool) {
	for _, u := range d.Users {
		if u.Name == name {
			return u, true
		}
	}
	return demoUser{}, false
}

type demoReadyKey struct{}

// withDemoReady returns a context under which the demo command sends its
// details on ch once the proxy accepts clients (for tests; the send does not
// block).
func withDemoReady(ctx context.Context, ch chan<- demoInfo) context.Context {
	return context.WithValue(ctx, demoReadyKey{}, ch)
}

type demoOptions struct {
	listen        string
	metricsListen string
	upstream      string
}

func newDemoCommand() *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a self-contained demo: a throwaway PostgreSQL, two tenants, users and the proxy",
		Long: `Run a self-contained demo of the tenant proxy.

The demo starts a throwaway PostgreSQL cluster from the machine's server
binaries (or, with --upstream, creates a fresh database vitalproxy_demo_<random>
in an existing cluster), applies the migrations, creates the tenant login
roles, a few agents (shared platform agents and a private agent for each of
the tenants vital-platform and digital-health-startup) and demo users with
random passwords, then starts the proxy and its metrics endpoint and prints
ready-to-paste psql commands.

Ctrl-C stops the proxy and removes everything the demo created: the
throwaway cluster, or the demo database and its roles.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, nil)
			if err != nil {
				return err
			}
			if !cmd.Flag("log-level").Changed && os.Getenv(config.EnvPrefix+"_LOG_LEVEL") == "" {
				// Keep the demo's output readable: per-session lines only
				// when asked for.
				cfg.Log.Level = "warn"
			}
			return runDemo(cmd.Context(), cfg, o, cmd.OutOrStdout(), newLogger(cfg, cmd.ErrOrStderr()))
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", demoListen, "address the proxy accepts clients on (a free port is used if it is busy)")
	f.StringVar(&o.metricsListen, "metrics-listen", demoMetricsListen, "address of /metrics, /healthz and /readyz (a free port is used if it is busy)")
	f.StringVar(&o.upstream, "upstream", "", "superuser URL of an existing PostgreSQL to use instead of a throwaway cluster (postgres://...)")
	return cmd
}

// demoEnv is what the demo set up and must remove.
type demoEnv struct {
	cluster   *pgtest.Cluster
	serverURL *url.URL // superuser URL of the maintenance database (--upstream)
	database  string
	adminURL  string // superuser URL of the demo database
	prefix    string
	// createdGroups are group roles that did not exist before the demo.
	createdGroups []string
	tenantRoles   []string
}

func runDemo(ctx context.Context, base *config.Config, o demoOptions, out io.Writer, logger *slog.Logger) (err error) {
	env := &demoEnv{}
	defer func() {
		if cerr := env.cleanup(out); cerr != nil && err == nil {
			err = cerr
		}
	}()
	fmt.Fprintln(out, "vitalproxy demo: setting up (this takes a few seconds)...")
	if err := env.prepare(ctx, o.upstream); err != nil {
		return err
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return fmt.Errorf("generate role secret: %w", err)
	}
	if err := env.provision(ctx, secret); err != nil {
		return err
	}
	users, err := demoUsers()
	if err != nil {
		return err
	}

	listen, listenNote, err := demoAddr(o.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	metricsListen, metricsNote, err := demoAddr(o.metricsListen)
	if err != nil {
		return fmt.Errorf("--metrics-listen: %w", err)
	}
	cfg := *base
	cfg.DatabaseURL = config.Secret(env.adminURL)
	// The other upstream keys keep their defaults.
	cfg.Upstream.URL, cfg.Upstream.Hosts = withoutUser(env.adminURL), nil
	cfg.Upstream.AdminURL = config.Secret(env.adminURL)
	cfg.Upstream.ConnectTimeout = 10 * time.Second
	cfg.RoleSecret = config.Secret(base64.StdEncoding.EncodeToString(secret))
	cfg.RoleSecretFile = ""
	cfg.RolePrefix = env.prefix
	cfg.Listen = listen
	cfg.ListenSocketDir = ""
	cfg.Metrics.Listen = metricsListen
	cfg.TLS = config.TLS{}
	cfg.Auth.Methods = []string{"scram-sha-256"}
	cfg.Limits.ShutdownTimeout = 2 * time.Second
	cfg.Tenants = nil
	cfg.File = ""
	cfg.Users = nil
	for _, u := range users {
		verifier, err := auth.NewSCRAMVerifier(u.Password)
		if err != nil {
			return fmt.Errorf("demo user %s: %w", u.Name, err)
		}
		cfg.Users = append(cfg.Users, config.User{Name: u.Name, Password: config.Secret(verifier), Tenants: u.Tenants,
			ReadOnly: u.ReadOnly, PlatformAdmin: u.PlatformAdmin})
	}
	srv, err := proxy.New(&cfg, logger, proxy.WithVersion(buildVersion()))
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run(runCtx) }()
	select {
	case <-srv.Ready():
	case err := <-runErr:
		if err == nil {
			err = errors.New("the proxy stopped before it was ready")
		}
		return err
	}
	info := demoInfo{Addr: srv.Addr().String(), Database: env.database, Users: users, RolePrefix: env.prefix,
		Upstream: env.cluster == nil}
	if a := srv.MetricsAddr(); a != nil {
		info.MetricsAddr = a.String()
	}
	if env.cluster != nil {
		info.TempDir = env.cluster.Dir
	}
	for _, note := range []string{listenNote, metricsNote} {
		if note != "" {
			fmt.Fprintln(out, note)
		}
	}
	seen := demoShowIsolation(ctx, info)
	printDemo(out, info, seen)
	if ch, ok := ctx.Value(demoReadyKey{}).(chan<- demoInfo); ok {
		select {
		case ch <- info:
		default:
		}
	}

	select {
	case <-ctx.Done():
		fmt.Fprintln(out, "\nstopping the demo...")
		stop()
		return <-runErr
	case err := <-runErr:
		if err == nil {
			err = errors.New("the proxy stopped unexpectedly")
		}
		return err
	}
}

// prepare starts the throwaway cluster, or creates the demo database in the
// --upstream cluster.
func (e *demoEnv) prepare(ctx context.Context, upstream string) error {
	if upstream == "" {
		c, err := pgtest.Start(ctx, pgtest.Options{})
		if errors.Is(err, pgtest.ErrNoBinaries) {
			return errors.New("PostgreSQL server binaries (initdb, postgres) not found: install them (apt-get install postgresql) or pass --upstream postgres://SUPERUSER@HOST/postgres")
		}
		if err != nil {
			return fmt.Errorf("start a throwaway PostgreSQL: %w", err)
		}
		e.cluster = c
		e.prefix = tenantroles.DefaultPrefix
		if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+demoDatabase); err != nil {
			return fmt.Errorf("create database %s: %w", demoDatabase, err)
		}
		e.database = demoDatabase
		e.adminURL = c.URL(demoDatabase)
		return nil
	}

	u, err := url.Parse(upstream)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
		return errors.New("--upstream must be a postgres:// URL with a host")
	}
	conn, err := migrations.Connect(ctx, upstream)
	if err != nil {
		return fmt.Errorf("--upstream: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var super bool
	if err := conn.QueryRow(ctx, `SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user`).Scan(&super); err != nil {
		return fmt.Errorf("--upstream: check the role: %w", err)
	}
	if !super {
		return errors.New("--upstream must connect as a superuser: the demo creates a database, roles and the schema")
	}
	rows, err := conn.Query(ctx, `SELECT name FROM unnest($1::text[]) AS name
		WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = name)`, demoGroupRoles)
	if err != nil {
		return fmt.Errorf("--upstream: list roles: %w", err)
	}
	e.createdGroups, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("--upstream: list roles: %w", err)
	}
	tag := demoRandomHex(4)
	db := "vitalproxy_demo_" + tag
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		return fmt.Errorf("create database %s: %w", db, err)
	}
	e.serverURL = u
	e.database = db
	// Roles are cluster-wide: a prefix of its own keeps the demo's tenant
	// roles apart from any real deployment in the cluster.
	e.prefix = "vtdemo_" + tag[:6] + "_"
	du := *u
	du.Path = "/" + db
	e.adminURL = du.String()
	return nil
}

// provision applies the migrations, creates the tenant roles and the demo
// agents.
func (e *demoEnv) provision(ctx context.Context, secret []byte) error {
	m, err := migrations.New(e.adminURL, migrations.WithRolePrefix(e.prefix))
	if err != nil {
		return err
	}
	_, err = m.Up(ctx)
	m.Close()
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	conn, err := migrations.Connect(ctx, e.adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, syncErr := tenantroles.New(conn, tenantroles.Options{Secret: secret, Prefix: e.prefix}).Sync(ctx)
	// Remember the roles even after a partial sync, so cleanup drops them.
	if rows, err := conn.Query(ctx, `SELECT role_name::text FROM vital.tenant_roles
		UNION SELECT role_name::text FROM vital.pooled_roles`); err == nil {
		e.tenantRoles, _ = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if syncErr != nil {
		return fmt.Errorf("tenant roles: %w", syncErr)
	}
	if _, err := conn.Exec(ctx, demoAgentsSQL); err != nil {
		return fmt.Errorf("create demo agents: %w", err)
	}
	return nil
}

// demoAgentsSQL adds the platform's shared agents and one private agent per
// MVP tenant.
const demoAgentsSQL = `
WITH t AS (SELECT id, slug FROM public.tenants WHERE slug IN ('vital-platform', 'digital-health-startup'))
INSERT INTO public.agents (name, display_name, description, tenant_id, is_shared, sharing_mode, resource_type)
SELECT a.name, a.display_name, a.description, t.id, a.sharing_mode <> 'private', a.sharing_mode, a.resource_type
  FROM (VALUES
        ('clinical-summary', 'Clinical summary', 'Summarises a clinical note (shared by the platform)', 'vital-platform', 'global', 'platform'),
        ('medical-coding', 'Medical coding', 'Suggests ICD-10 codes (shared by the platform)', 'vital-platform', 'global', 'platform'),
        ('platform-ops-private', 'Platform operations', 'Private to vital-platform', 'vital-platform', 'private', 'custom'),
        ('dh-triage-private', 'Symptom triage', 'Private to digital-health-startup', 'digital-health-startup', 'private', 'custom')
       ) AS a(name, display_name, description, slug, sharing_mode, resource_type)
  JOIN t ON t.slug = a.slug;
REFRESH MATERIALIZED VIEW public.mv_platform_shared_resources;`

// demoUsers returns the demo's proxy users with fresh random passwords.
func demoUsers() ([]demoUser, error) {
	users := []demoUser{
		{Name: "dh-app", Tenants: []string{"digital-health-startup"}},
		{Name: "platform-app", Tenants: []string{"vital-platform"}},
		{Name: "ops", Tenants: []string{"vital-platform"}, PlatformAdmin: true},
		{Name: "analyst", Tenants: []string{"digital-health-startup", "vital-platform"}, ReadOnly: true},
	}
	for i := range users {
		users[i].Password = demoRandomHex(12)
		users[i].Login = users[i].Name
		if len(users[i].Tenants) > 1 {
			users[i].Login = users[i].Name + "@" + users[i].Tenants[0]
		}
	}
	return users, nil
}

// demoAddr returns addr, or a free port on the same host when addr's port
// is taken, with a note saying so.
func demoAddr(addr string) (string, string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", fmt.Errorf("%q is not host:port", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err == nil {
		_ = l.Close()
		return addr, "", nil
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		return "", "", fmt.Errorf("cannot listen on %s: %w", addr, err)
	}
	l, err = net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", "", fmt.Errorf("%s is in use and no free port was found: %w", addr, err)
	}
	free := l.Addr().String()
	_ = l.Close()
	return free, fmt.Sprintf("note: %s is in use; using %s instead", addr, free), nil
}

// demoSeen is what one user saw through the proxy.
type demoSeen struct {
	user   demoUser
	agents []string
	err    error
}

// demoShowIsolation connects through the proxy as the single-tenant users
// and lists the agents each sees.
func demoShowIsolation(ctx context.Context, info demoInfo) []demoSeen {
	var out []demoSeen
	for _, name := range []string{"dh-app", "platform-app", "ops"} {
		u, ok := info.User(name)
		if !ok {
			continue
		}
		s := demoSeen{user: u}
		s.agents, s.err = demoAgents(ctx, info.ConnString(u))
		out = append(out, s)
	}
	return out
}

// demoAgentsQuery is the sample query the demo prints.
const demoAgentsQuery = "SELECT name, sharing_mode FROM agents ORDER BY name"

func demoAgents(ctx context.Context, connString string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, demoAgentsQuery)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var name, mode string
		err := r.Scan(&name, &mode)
		return name + " (" + mode + ")", err
	})
}

func printDemo(out io.Writer, info demoInfo, seen []demoSeen) {
	where := "a throwaway PostgreSQL cluster in " + info.TempDir
	if info.Upstream {
		where = "database " + info.Database + " of the --upstream cluster (tenant roles " + info.RolePrefix + "*)"
	}
	fmt.Fprintf(out, "\nvitalproxy demo is running on %s, backed by %s.\n", info.Addr, where)
	fmt.Fprintln(out, "Tenants: vital-platform (platform) and digital-health-startup (industry).")
	fmt.Fprintln(out, "\nConnect through the proxy (passwords are random for this run):")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, u := range info.Users {
		desc := strings.Join(u.Tenants, ", ")
		switch {
		case u.PlatformAdmin:
			desc += ", platform admin (reads every tenant)"
		case u.ReadOnly:
			desc += ", read-only; pick the tenant as analyst@<tenant>"
		}
		fmt.Fprintf(tw, "  %s\t%s\n", u.Name, desc)
		fmt.Fprintf(tw, "  \tpsql %q\n", info.ConnString(u))
	}
	_ = tw.Flush()

	fmt.Fprintf(out, "\nIsolation: run the same query as different users and compare:\n  %s;\n", demoAgentsQuery)
	for _, s := range seen {
		if s.err != nil {
			fmt.Fprintf(out, "  %-13s could not query: %v\n", s.user.Name, s.err)
			continue
		}
		fmt.Fprintf(out, "  %-13s sees %s\n", s.user.Name, strings.Join(s.agents, ", "))
	}
	fmt.Fprintln(out, "A tenant cannot switch itself to another tenant either; as dh-app try:")
	fmt.Fprintln(out, "  SELECT set_tenant_context((SELECT id FROM tenants WHERE slug = 'vital-platform'));")
	fmt.Fprintln(out, "  -- fails with SQLSTATE 42501: the tenant comes from session_user, not from a setting")

	if info.MetricsAddr != "" {
		fmt.Fprintf(out, "\nMetrics: http://%s/metrics  (health: /healthz, readiness: /readyz)\n", info.MetricsAddr)
	}
	fmt.Fprintln(out, "\nPress Ctrl-C to stop; everything the demo created is removed.")
}

// cleanup removes what prepare and provision created. It runs under a
// context of its own: the command's context is usually cancelled by then.
func (e *demoEnv) cleanup(out io.Writer) error {
	if e.cluster != nil {
		e.cluster.Stop()
		fmt.Fprintf(out, "removed the throwaway cluster %s\n", e.cluster.Dir)
		return nil
	}
	if e.serverURL == nil || e.database == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := migrations.Connect(ctx, e.serverURL.String())
	if err != nil {
		return fmt.Errorf("remove demo database %s: %w", e.database, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{e.database}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop demo database %s: %w", e.database, err)
	}
	var failed []string
	for _, r := range append(append([]string(nil), e.tenantRoles...), e.createdGroups...) {
		if _, err := conn.Exec(ctx, "DROP ROLE IF EXISTS "+pgx.Identifier{r}.Sanitize()); err != nil {
			failed = append(failed, r)
		}
	}
	fmt.Fprintf(out, "dropped database %s and the demo's roles\n", e.database)
	if len(failed) > 0 {
		// Group roles still used by another database stay.
		fmt.Fprintf(out, "note: kept role(s) still in use elsewhere: %s\n", strings.Join(failed, ", "))
	}
	return nil
}

// withoutUser drops the user and password from a URL: tenants log in as
// their own roles.
func withoutUser(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.User = nil
	return u.String()
}

func demoRandomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
