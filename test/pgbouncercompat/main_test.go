package pgbouncercompat_test

import (
	"context"
	"encoding/base64"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/proxy"
	"github.com/vitalproxy/vitalproxy/test/fixture"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Fixture names: the tenants the migrations seed, and the users.
const (
	dhSlug       = "digital-health-startup"
	platformSlug = "vital-platform"
	pgbDB        = "pgbouncer"
	// Console users: ops (admin, every tenant) and dhwatch (stats, bound
	// to the digital-health tenant). Every password is the name + "-pw".
	opsUser     = "ops"
	dhWatchUser = "dhwatch"
)

// env is a running proxy with its database.
type env struct {
	srv  *proxy.Server
	cfg  *config.Config
	addr string
	db   string // the client-facing (upstream) database
}

// startProxy migrates a fresh database and runs a proxy until the test
// ends; change edits the configuration first.
func startProxy(t *testing.T, change func(*config.Config)) *env {
	t.Helper()
	c := pgtest.Shared(t)
	fdb := fixture.New(t)
	t.Setenv("VITALPROXY_CONFIG", "")
	t.Setenv("VITALPROXY_CONSOLE_DATABASE", "")
	t.Setenv("VITALPROXY_CONSOLE_PGBOUNCER_DATABASE", "")
	cfg, err := config.Load(config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	up := url.URL{Scheme: "postgres", Host: net.JoinHostPort(c.Host, strconv.Itoa(c.Port)), Path: "/" + fdb.Name, RawQuery: "sslmode=disable"}
	cfg.Listen = "127.0.0.1:0"
	cfg.Metrics.Listen = ""
	cfg.Upstream.URL = up.String()
	cfg.Upstream.AdminURL = config.Secret(c.URL(fdb.Name))
	cfg.DatabaseURL = cfg.Upstream.AdminURL
	cfg.RoleSecret = config.Secret(base64.StdEncoding.EncodeToString(fixture.Secret))
	cfg.RolePrefix = fixture.Prefix
	cfg.Limits.ShutdownTimeout = 10 * time.Second
	for _, u := range []config.User{
		{Name: "alice", Tenants: []string{dhSlug}},
		{Name: "bob", Tenants: []string{platformSlug}},
		{Name: opsUser, Console: config.ConsoleAdmin},
		{Name: dhWatchUser, Console: config.ConsoleStats, Tenants: []string{dhSlug}},
	} {
		v, err := auth.NewSCRAMVerifier(u.Name + "-pw")
		if err != nil {
			t.Fatal(err)
		}
		u.Password = config.Secret(v)
		cfg.Users = append(cfg.Users, u)
	}
	if change != nil {
		change(cfg)
	}
	srv, err := proxy.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("proxy: %v", err)
			}
		case <-time.After(time.Minute):
			t.Error("proxy did not stop")
		}
	})
	select {
	case <-srv.Ready():
	case err := <-errc:
		t.Fatalf("proxy did not start: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("proxy did not become ready")
	}
	return &env{srv: srv, cfg: cfg, addr: srv.Addr().String(), db: fdb.Name}
}

// url is a connection URL through the proxy for user (password: the
// name + "-pw") to database db.
func (e *env) url(user, db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, user+"-pw"), Host: e.addr, Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// connect opens a pgx connection through the proxy, closed when the test
// ends.
func (e *env) connect(t *testing.T, user, db string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, e.url(user, db))
	if err != nil {
		t.Fatalf("connect %s to %s: %v", user, db, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// noLeaks checks, when the test ends, that no goroutine started during
// the test is left. Call it first so that its check runs last.
func noLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	watchdog := goleak.IgnoreAnyFunction("os/exec.(*Cmd).Wait")
	t.Cleanup(func() { goleak.VerifyNone(t, ignore, watchdog) })
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
