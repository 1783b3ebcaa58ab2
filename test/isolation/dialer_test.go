package isolation_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/proxy"
)

// Dialer opens a session for a tenant's user. tenant is a tenant slug; user
// names the capability the session should have: "rw" (read-write) or "ro"
// (read-only). Each Dialer decides how that session reaches PostgreSQL.
type Dialer interface {
	Connect(ctx context.Context, tenant string, user string) (*pgx.Conn, error)
}

// Users a case may ask a Dialer for.
const (
	userRW = string(auth.ReadWrite)
	userRO = string(auth.ReadOnly)
)

// notices keeps the NOTICE (and WARNING) messages each session received,
// so that cases can look for leaked values in them.
var notices sync.Map // *pgconn.PgConn -> *noticeLog

type noticeLog struct {
	mu  sync.Mutex
	msg []string
}

func recordNotice(pc *pgconn.PgConn, n *pgconn.Notice) {
	v, _ := notices.LoadOrStore(pc, &noticeLog{})
	l := v.(*noticeLog)
	l.mu.Lock()
	l.msg = append(l.msg, n.Severity+": "+n.Message+" "+n.Detail)
	l.mu.Unlock()
}

// noticesOf returns the notices conn has received so far.
func noticesOf(conn *pgx.Conn) []string {
	v, ok := notices.Load(conn.PgConn())
	if !ok {
		return nil
	}
	l := v.(*noticeLog)
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.msg...)
}

// connectURL opens a pgx connection that records notices and uses the
// extended protocol without a statement cache (cases run DISCARD ALL and
// DEALLOCATE, which would break a cache).
func connectURL(ctx context.Context, u string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		return nil, err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	cfg.OnNotice = recordNotice
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// directDialer logs in straight to PostgreSQL as the tenant's login role
// with its derived password, as the proxy does upstream.
type directDialer struct{ fx *fixture }

func (d directDialer) Connect(ctx context.Context, tenant, user string) (*pgx.Conn, error) {
	role := auth.RoleName(rolePrefix, tenant, auth.Capability(user))
	return connectURL(ctx, d.fx.c.URLFor(role, d.fx.rolePassword(role), d.fx.db))
}

// proxyUser is a proxy user of the fixture: one per tenant and capability.
type proxyUser struct {
	name, password string
}

// proxyDialer connects through an in-process proxy as the proxy user of
// the tenant and capability.
type proxyDialer struct {
	addr  string // host:port of the proxy
	db    string
	users map[string]proxyUser // key: slug + "/" + capability
}

func (d *proxyDialer) user(tenant, capability string) (proxyUser, error) {
	u, ok := d.users[tenant+"/"+capability]
	if !ok {
		return proxyUser{}, fmt.Errorf("no proxy user for tenant %s capability %s", tenant, capability)
	}
	return u, nil
}

// url returns a connection URL for the proxy.
func (d *proxyDialer) url(user, password, db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: d.addr,
		Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

func (d *proxyDialer) Connect(ctx context.Context, tenant, user string) (*pgx.Conn, error) {
	u, err := d.user(tenant, user)
	if err != nil {
		return nil, err
	}
	return connectURL(ctx, d.url(u.name, u.password, d.db))
}

// proxyUsers returns the proxy users of the fixture's tenants A and B (rw
// and ro each) with their plain passwords and config entries.
func proxyUsers(fx *fixture) (map[string]proxyUser, []config.User, error) {
	users := map[string]proxyUser{}
	var cfgUsers []config.User
	for _, t := range []*tenant{fx.a, fx.b} {
		for _, c := range []auth.Capability{auth.ReadWrite, auth.ReadOnly} {
			u := proxyUser{name: "user-" + t.slug + "-" + string(c), password: "pw-" + randomHex(12)}
			v, err := auth.NewSCRAMVerifier(u.password)
			if err != nil {
				return nil, nil, err
			}
			users[t.slug+"/"+string(c)] = u
			cfgUsers = append(cfgUsers, config.User{Name: u.name, Password: config.Secret(v),
				Tenants: []string{t.slug}, ReadOnly: c == auth.ReadOnly})
		}
	}
	return users, cfgUsers, nil
}

// startProxy runs a proxy in-process on 127.0.0.1:0 in the given mode (a pool
// mode, or "context": transaction mode with isolation.mode context)
// until the test ends and returns a dialer for it.
func startProxy(t *testing.T, fx *fixture, poolMode string) *proxyDialer {
	t.Helper()
	t.Setenv("VITALPROXY_CONFIG", "")
	cfg, err := config.Load(config.Options{})
	if err != nil {
		t.Fatalf("config defaults: %v", err)
	}
	users, cfgUsers, err := proxyUsers(fx)
	if err != nil {
		t.Fatalf("proxy users: %v", err)
	}
	up := url.URL{Scheme: "postgres", Host: net.JoinHostPort(fx.c.Host, strconv.Itoa(fx.c.Port)),
		Path: "/" + fx.db, RawQuery: "sslmode=disable"}
	cfg.Listen = "127.0.0.1:0"
	cfg.Metrics.Listen = ""
	cfg.Upstream.URL = up.String()
	cfg.Upstream.AdminURL = config.Secret(fx.adminURL())
	cfg.DatabaseURL = cfg.Upstream.AdminURL
	cfg.RoleSecret = config.Secret(base64.StdEncoding.EncodeToString(fx.secret))
	cfg.RolePrefix = rolePrefix
	cfg.Users = cfgUsers
	cfg.Pool.Mode = poolMode
	if poolMode == "context" {
		// Two shared backends: the attacker's and the victim's transactions
		// take turns on them, so every switch between tenants is exercised.
		cfg.Pool.Mode = "transaction"
		cfg.Isolation.Mode = config.IsolationContext
		cfg.Pool.MaxServerConns = 2
	}
	cfg.Limits.ShutdownTimeout = 5 * time.Second
	cfg.Limits.StartupTimeout = 20 * time.Second

	logger := slog.New(slog.DiscardHandler)
	if os.Getenv("VITALPROXY_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := proxy.New(cfg, logger)
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
	case <-time.After(time.Minute):
		cancel()
		t.Fatal("proxy did not become ready")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("proxy stopped with: %v", err)
			}
		case <-time.After(time.Minute):
			t.Error("proxy did not stop")
		}
	})
	return &proxyDialer{addr: srv.Addr().String(), db: fx.db, users: users}
}
