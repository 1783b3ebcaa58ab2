// Package integration_test runs the proxy in-process against a throwaway
// PostgreSQL cluster and talks to it with real clients: pgx, lib/pq, psql,
// pgbench and hand-written protocol bytes.
package integration_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/proxy"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Tenants created by the migrations' seed, and one the tests add.
const (
	platformSlug = "vital-platform"
	dhSlug       = "digital-health-startup"
	spareSlug    = "acme-clinic"
)

// testUser is a proxy user of the fixture.
type testUser struct {
	name, password string
	tenants        []string
	readOnly       bool
	platformAdmin  bool
}

var fixtureUsers = []testUser{
	{name: "alice", password: "alice-pw", tenants: []string{dhSlug}},
	{name: "bob", password: "bob-pw", tenants: []string{platformSlug}},
	{name: "rita", password: "rita-pw", tenants: []string{dhSlug}, readOnly: true},
	{name: "multi", password: "multi-pw", tenants: []string{dhSlug, platformSlug, spareSlug}},
}

// fixture is one migrated database shared by the tests of this package
// (roles are cluster-wide, so tests that change roles or tenants use the
// spare tenant and do not run in parallel).
type fixture struct {
	c       *pgtest.Cluster
	db      string
	secret  []byte
	prefix  string
	tenants map[string]string // slug -> id
	users   []config.User
	// Agents: names of the rows the isolation tests look for.
	platformShared, platformPrivate, dhPrivate string
}

var (
	fixtureOnce sync.Once
	shared      *fixture
	sharedErr   error
)

// getFixture returns the shared fixture, building it on first use.
func getFixture(t testing.TB) *fixture {
	t.Helper()
	c := pgtest.Shared(t)
	fixtureOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		shared, sharedErr = buildFixture(ctx, c, "vt_it_")
	})
	if sharedErr != nil {
		t.Fatalf("fixture: %v", sharedErr)
	}
	return shared
}

func buildFixture(ctx context.Context, c *pgtest.Cluster, prefix string) (*fixture, error) {
	db, err := c.CreateDatabase(ctx, "integration")
	if err != nil {
		return nil, err
	}
	f := &fixture{c: c, db: db, prefix: prefix, secret: []byte("integration-test-role-secret-0123456789"),
		platformShared: "it-platform-shared", platformPrivate: "it-platform-private", dhPrivate: "it-dh-private"}
	if err := prepareDatabase(ctx, c.URL(db), f.secret, prefix, f); err != nil {
		return nil, err
	}
	for _, u := range fixtureUsers {
		v, err := auth.NewSCRAMVerifier(u.password)
		if err != nil {
			return nil, err
		}
		f.users = append(f.users, config.User{Name: u.name, Password: config.Secret(v), Tenants: u.tenants,
			ReadOnly: u.readOnly, PlatformAdmin: u.platformAdmin})
	}
	return f, nil
}

// prepareDatabase migrates the database at url, adds the spare tenant,
// creates every tenant's roles and inserts the agents.
func prepareDatabase(ctx context.Context, dbURL string, secret []byte, prefix string, f *fixture) error {
	m, err := migrations.New(dbURL)
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	_, err = m.Up(ctx)
	m.Close()
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	tr := tenantroles.New(conn, tenantroles.Options{Secret: secret, Prefix: prefix})
	if _, err := tr.Add(ctx, tenantroles.Spec{Slug: spareSlug, Name: "Acme Clinic", Type: "client"}); err != nil {
		return fmt.Errorf("add tenant: %w", err)
	}
	if _, err := tr.Sync(ctx); err != nil {
		return fmt.Errorf("tenant sync: %w", err)
	}
	f.tenants = map[string]string{}
	rows, err := conn.Query(ctx, "SELECT slug, id::text FROM public.tenants")
	if err != nil {
		return err
	}
	for rows.Next() {
		var slug, id string
		if err := rows.Scan(&slug, &id); err != nil {
			return err
		}
		f.tenants[slug] = id
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for _, a := range []struct {
		name, slug, mode, rtype string
		shared                  bool
	}{
		{f.platformShared, platformSlug, "global", "platform", true},
		{f.platformPrivate, platformSlug, "private", "custom", false},
		{f.dhPrivate, dhSlug, "private", "custom", false},
	} {
		if _, err := conn.Exec(ctx, `INSERT INTO public.agents (name, display_name, tenant_id, is_shared, sharing_mode, resource_type)
			VALUES ($1, $1, (SELECT id FROM public.tenants WHERE slug = $2), $3, $4, $5)`,
			a.name, a.slug, a.shared, a.mode, a.rtype); err != nil {
			return fmt.Errorf("insert agent %s: %w", a.name, err)
		}
	}
	return nil
}

// config returns a proxy configuration for the fixture's database.
func (f *fixture) config(t testing.TB) *config.Config {
	t.Helper()
	return f.configFor(t, f.c, f.db)
}

func (f *fixture) configFor(t testing.TB, c *pgtest.Cluster, db string) *config.Config {
	t.Helper()
	t.Setenv("VITALPROXY_CONFIG", "")
	cfg, err := config.Load(config.Options{})
	if err != nil {
		t.Fatalf("config defaults: %v", err)
	}
	up := url.URL{Scheme: "postgres", Host: net.JoinHostPort(c.Host, strconv.Itoa(c.Port)), Path: "/" + db, RawQuery: "sslmode=disable"}
	cfg.Listen = "127.0.0.1:0"
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Upstream.URL = up.String()
	cfg.Upstream.AdminURL = config.Secret(c.URL(db))
	cfg.DatabaseURL = cfg.Upstream.AdminURL
	cfg.RoleSecret = config.Secret(base64.StdEncoding.EncodeToString(f.secret))
	cfg.RolePrefix = f.prefix
	cfg.Users = append([]config.User(nil), f.users...)
	cfg.Limits.ShutdownTimeout = 10 * time.Second
	cfg.Limits.StartupTimeout = 30 * time.Second
	return cfg
}

// running is a proxy started by startProxy.
type running struct {
	srv  *proxy.Server
	cfg  *config.Config
	addr string
	host string
	port int
	stop func() error
}

// startProxy runs a proxy in-process on 127.0.0.1:0 until the test ends
// (or stop is called) and checks that it stops cleanly.
func startProxy(t testing.TB, cfg *config.Config, opts ...proxy.Option) *running {
	t.Helper()
	srv, err := proxy.New(cfg, testLogger(t), opts...)
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-errc:
		cancel()
		t.Fatalf("proxy did not start: %v", err)
	case <-time.After(2 * time.Minute):
		cancel()
		t.Fatal("proxy did not become ready")
	}
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-errc:
			case <-time.After(2 * time.Minute):
				stopErr = fmt.Errorf("proxy did not stop")
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("proxy stop: %v", err)
		}
	})
	ta := srv.Addr().(*net.TCPAddr)
	return &running{srv: srv, cfg: cfg, addr: ta.String(), host: ta.IP.String(), port: ta.Port, stop: stop}
}

// noLeaks checks, when the test ends, that no goroutine started during the
// test is left. Call it first so that its check runs after every other
// cleanup.
func noLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	// pgtest's watchdog for an extra cluster waits on its process for the
	// rest of the test binary's life; the proxy never runs processes.
	watchdog := goleak.IgnoreAnyFunction("os/exec.(*Cmd).Wait")
	t.Cleanup(func() { goleak.VerifyNone(t, ignore, watchdog) })
}

// url returns a client URL for user (with an optional @tenant) through the
// proxy.
func (r *running) url(user, password string, extra ...string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: r.addr,
		Path: "/" + dbName(r.cfg), RawQuery: "sslmode=disable"}
	for _, e := range extra {
		u.RawQuery += "&" + e
	}
	return u.String()
}

func dbName(cfg *config.Config) string {
	u, _ := url.Parse(cfg.Upstream.URL)
	return u.Path[1:]
}

// connect opens a pgx connection through the proxy, closed when the test
// ends.
func (r *running) connect(t testing.TB, user, password string, extra ...string) *pgx.Conn {
	t.Helper()
	return connectURL(t, r.url(user, password, extra...))
}

// connectURL opens a pgx connection, closed when the test ends.
func connectURL(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("VITALPROXY_TEST_LOG") == "debug" {
		level = slog.LevelDebug
	}
	w := &tWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// tWriter sends log lines to the test log, and drops them once the test has
// finished.
type tWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(p))
	}
	return len(p), nil
}

var _ io.Writer = (*tWriter)(nil)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
