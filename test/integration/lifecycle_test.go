package integration_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/proxy"
)

// metricValue returns the value of the series of name whose labels include
// labels, or 0 when there is none.
func metricValue(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: time.Minute}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	c.CloseIdleConnections()
	return resp.StatusCode, string(b)
}

func tryConnect(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

func TestMetricsAndHealth(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	p := startProxy(t, f.config(t), proxy.WithVersion("v9.9.9"))
	base := "http://" + p.srv.MetricsAddr().String()

	if code, body := httpGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz %d %s", code, body)
	}
	if code, body := httpGet(t, base+"/readyz"); code != 200 {
		t.Fatalf("/readyz %d %s", code, body)
	}
	conn := p.connect(t, "alice", "alice-pw")
	if _, err := conn.Exec(testCtx(t), "SELECT repeat('x', 100000)"); err != nil {
		t.Fatal(err)
	}
	_ = connectErr(t, p.url("alice", "wrong"))
	g := p.srv.Gatherer()
	for _, c := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"vitalproxy_connection_attempts_total", map[string]string{"result": "ok"}, 1},
		{"vitalproxy_connection_attempts_total", map[string]string{"result": "auth_failed"}, 1},
		{"vitalproxy_auth_failures_total", nil, 1},
		{"vitalproxy_context_injections_total", map[string]string{"result": "ok"}, 1},
		{"vitalproxy_client_connections", map[string]string{"tenant": dhSlug}, 1},
		{"vitalproxy_session_setup_seconds", nil, 1},
		{"vitalproxy_build_info", map[string]string{"version": "v9.9.9"}, 1},
		{"vitalproxy_isolation_check", nil, 1},
	} {
		if got := metricValue(t, g, c.name, c.labels); got < c.min {
			t.Errorf("%s%v = %v, want at least %v", c.name, c.labels, got, c.min)
		}
	}
	conn.Close(testCtx(t))
	eventually(t, "bytes counted", func() bool {
		return metricValue(t, g, "vitalproxy_bytes_total", map[string]string{"tenant": dhSlug, "direction": "server_to_client"}) >= 100000
	})
	if got := metricValue(t, g, "vitalproxy_client_connections", map[string]string{"tenant": dhSlug}); got != 0 {
		t.Errorf("client_connections after close = %v", got)
	}
	problems, err := testutil.GatherAndLint(g)
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range problems {
		t.Errorf("lint %s: %s", pr.Metric, pr.Text)
	}
	code, body := httpGet(t, base+"/metrics")
	if code != 200 || !strings.Contains(body, "vitalproxy_connection_attempts_total") {
		t.Fatalf("/metrics %d", code)
	}
}

func TestReadyzNotMigrated(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	cfg := f.config(t)
	p := startProxy(t, cfg)
	admin := superuser(t, f)
	ctx := testCtx(t)
	// Pretend the last migration is missing, then put it back.
	tag, err := admin.Exec(ctx, "UPDATE vital.goose_db_version SET is_applied = false WHERE version_id = (SELECT max(version_id) FROM vital.goose_db_version)")
	if err != nil || tag.RowsAffected() == 0 {
		t.Fatalf("update version table: %v %v", tag, err)
	}
	defer admin.Exec(context.Background(), "UPDATE vital.goose_db_version SET is_applied = true") //nolint:errcheck
	code, body := httpGet(t, "http://"+p.srv.MetricsAddr().String()+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "version") {
		t.Fatalf("/readyz %d %q", code, body)
	}
}

func TestShutdownDrainsThenCloses(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	cfg := f.config(t)
	cfg.Limits.ShutdownTimeout = time.Second
	p := startProxy(t, cfg)

	// A raw session so the test can see exactly what the proxy sends.
	r := dialRaw(t, p.addr)
	r.startup(map[string]string{"user": "alice", "database": f.db})
	r.scramLogin("alice-pw")
	r.readyForQuery()

	stopped := make(chan error, 1)
	go func() { stopped <- p.stop() }()
	// New clients are turned away once the listener is closed.
	eventually(t, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	// The drain deadline passes: the session is told and closed.
	r.expectFatal("57P01")
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Run did not return")
	}
}

func TestShutdownWaitsForSessions(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	cfg := f.config(t)
	cfg.Limits.ShutdownTimeout = 5 * time.Minute
	p := startProxy(t, cfg)
	conn := p.connect(t, "alice", "alice-pw")
	stopped := make(chan error, 1)
	go func() { stopped <- p.stop() }()
	eventually(t, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	// The open session keeps working while the proxy drains.
	var n int
	if err := conn.QueryRow(testCtx(t), "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("query while draining: %d %v", n, err)
	}
	select {
	case <-stopped:
		t.Fatal("Run returned while a session was open")
	default:
	}
	conn.Close(testCtx(t))
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Run did not return after the last session ended")
	}
}

func TestReload(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	cfg := f.config(t)
	carolV, err := auth.NewSCRAMVerifier("carol-pw")
	if err != nil {
		t.Fatal(err)
	}
	var next func() (*config.Config, error)
	loader := func() (*config.Config, error) { return next() }
	p := startProxy(t, cfg, proxy.WithConfigLoader(loader), proxy.WithDirectoryRefresh(0))
	ctx := testCtx(t)
	alice := p.connect(t, "alice", "alice-pw")

	if err := tryConnect(ctx, p.url("carol", "carol-pw")); err == nil {
		t.Fatal("carol connected before the reload")
	}
	next = func() (*config.Config, error) {
		c := *cfg
		c.Users = append(append([]config.User(nil), cfg.Users...), config.User{Name: "carol", Password: config.Secret(carolV), Tenants: []string{dhSlug}})
		return &c, nil
	}
	if err := p.srv.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tryConnect(ctx, p.url("carol", "carol-pw")); err != nil {
		t.Fatalf("carol after reload: %v", err)
	}
	if err := alice.Ping(ctx); err != nil {
		t.Fatalf("existing session after reload: %v", err)
	}

	next = func() (*config.Config, error) { return nil, errors.New("broken config file") }
	if err := p.srv.Reload(ctx); err == nil {
		t.Fatal("a broken config reloaded")
	}
	next = func() (*config.Config, error) {
		c := *cfg
		c.RoleSecret = "not base64!"
		return &c, nil
	}
	if err := p.srv.Reload(ctx); err == nil {
		t.Fatal("an invalid config reloaded")
	}
	if err := tryConnect(ctx, p.url("carol", "carol-pw")); err != nil {
		t.Fatalf("carol after failed reloads: %v", err)
	}
	if err := alice.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	g := p.srv.Gatherer()
	if s, fl := metricValue(t, g, "vitalproxy_config_reloads_total", map[string]string{"result": "success"}),
		metricValue(t, g, "vitalproxy_config_reloads_total", map[string]string{"result": "failure"}); s != 1 || fl != 2 {
		t.Fatalf("reloads success %v failure %v, want 1 and 2", s, fl)
	}
}

func TestReloadOnConfigFileChange(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	base := f.config(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "vitalproxy.yaml")
	write := func(users []config.User) {
		var b strings.Builder
		fmt.Fprintf(&b, "listen: 127.0.0.1:0\nmetrics:\n  listen: \"\"\nupstream:\n  url: %q\n  admin_url: %q\nrole_secret: %q\nrole_prefix: %q\nusers:\n",
			base.Upstream.URL, string(base.Upstream.AdminURL), string(base.RoleSecret), base.RolePrefix)
		for _, u := range users {
			fmt.Fprintf(&b, "  - name: %s\n    password: %q\n    tenants: [%s]\n", u.Name, string(u.Password), strings.Join(u.Tenants, ", "))
		}
		// Write then rename, as editors and config management do.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(f.users[:1])
	load := func() (*config.Config, error) { return config.Load(config.Options{File: path}) }
	cfg, err := load()
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, cfg, proxy.WithConfigLoader(load), proxy.WithConfigPoll(50*time.Millisecond), proxy.WithDirectoryRefresh(0))
	ctx := testCtx(t)
	if err := tryConnect(ctx, p.url("bob", "bob-pw")); err == nil {
		t.Fatal("bob connected before being added")
	}
	// Make sure the modification time moves even on coarse clocks.
	time.Sleep(10 * time.Millisecond)
	write(f.users[:2])
	eventually(t, "bob can log in", func() bool { return tryConnect(ctx, p.url("bob", "bob-pw")) == nil })
}

func TestDirectoryRefresh(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	p := startProxy(t, f.config(t), proxy.WithDirectoryRefresh(100*time.Millisecond))
	ctx := testCtx(t)
	admin := superuser(t, f)

	t.Run("user added to the database", func(t *testing.T) {
		v, err := auth.NewSCRAMVerifier("dana-pw")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Exec(ctx, "INSERT INTO vital.proxy_users (name, password, tenants) VALUES ('dana', $1, ARRAY[$2])", v, spareSlug); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "DELETE FROM vital.proxy_users WHERE name = 'dana'") })
		eventually(t, "dana can log in", func() bool { return tryConnect(ctx, p.url("dana", "dana-pw")) == nil })
	})

	t.Run("suspended tenant is refused", func(t *testing.T) {
		ownConn, err := pgx.Connect(ctx, f.c.URL(f.db))
		if err != nil {
			t.Fatal(err)
		}
		defer ownConn.Close(context.Background())
		tr := tenantroles.New(ownConn, tenantroles.Options{Secret: f.secret, Prefix: f.prefix})
		if err := tryConnect(ctx, p.url("multi@"+spareSlug, "multi-pw")); err != nil {
			t.Fatalf("before suspension: %v", err)
		}
		if err := tr.Suspend(ctx, spareSlug); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := tr.Resume(context.Background(), spareSlug); err != nil {
				t.Errorf("resume: %v", err)
			}
		}()
		eventually(t, "suspension seen", func() bool {
			err := tryConnect(ctx, p.url("multi@"+spareSlug, "multi-pw"))
			var pgErr *pgconn.PgError
			return errors.As(err, &pgErr) && pgErr.Code == "28000"
		})
		// Other tenants of the same user are unaffected.
		if err := tryConnect(ctx, p.url("multi@"+dhSlug, "multi-pw")); err != nil {
			t.Fatal(err)
		}
	})
}

func TestContextInjectionFailsClosed(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	p := startProxy(t, f.config(t))
	ctx := testCtx(t)
	admin := superuser(t, f)
	// Unmap the spare tenant's roles: the login still works, but
	// set_tenant_context must refuse, and so must the proxy.
	if _, err := admin.Exec(ctx, "CREATE TEMP TABLE saved AS SELECT * FROM vital.tenant_roles WHERE tenant_id = $1", f.tenants[spareSlug]); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "DELETE FROM vital.tenant_roles WHERE tenant_id = $1", f.tenants[spareSlug]); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if _, err := admin.Exec(context.Background(), "INSERT INTO vital.tenant_roles SELECT * FROM saved"); err != nil {
			t.Errorf("restore mapping: %v", err)
		}
	}()
	e := connectErr(t, p.url("multi@"+spareSlug, "multi-pw"))
	if e.Code != "28000" && e.Code != "XX000" {
		t.Fatalf("got %s %q", e.Code, e.Message)
	}
	if got := metricValue(t, p.srv.Gatherer(), "vitalproxy_context_injections_total", map[string]string{"result": "failure"}); got != 1 {
		t.Fatalf("context_injections failure = %v", got)
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	cfg := f.config(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	cfg.Upstream.URL = "postgres://" + closed + "/" + f.db + "?sslmode=disable"
	p := startProxy(t, cfg)
	e := connectErr(t, p.url("alice", "alice-pw"))
	if e.Code != "08006" || e.Message != "could not connect to the database server" {
		t.Fatalf("got %s %q", e.Code, e.Message)
	}
	if got := metricValue(t, p.srv.Gatherer(), "vitalproxy_upstream_connect_errors_total", nil); got != 1 {
		t.Fatalf("upstream_connect_errors_total = %v", got)
	}
}

func TestUpstreamDies(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	p := startProxy(t, f.config(t))
	r := dialRaw(t, p.addr)
	r.startup(map[string]string{"user": "alice", "database": f.db, "application_name": "it-victim"})
	r.scramLogin("alice-pw")
	r.readyForQuery()
	admin := superuser(t, f)
	if _, err := admin.Exec(testCtx(t), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'it-victim'"); err != nil {
		t.Fatal(err)
	}
	// The backend's own FATAL (57P01) comes first; then the proxy closes.
	msg, err := r.receive()
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := msg.(*pgproto3.ErrorResponse); !ok || e.Severity != "FATAL" {
		t.Fatalf("got %#v", msg)
	}
	r.expectClosed()
	if err := p.connect(t, "alice", "alice-pw").Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

func TestTooManyClients(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	cfg := f.config(t)
	cfg.Limits.MaxClientConns = 1
	p := startProxy(t, cfg)
	first := p.connect(t, "alice", "alice-pw")
	if e := connectErr(t, p.url("alice", "alice-pw")); e.Code != "53300" {
		t.Fatalf("got %s %q", e.Code, e.Message)
	}
	first.Close(testCtx(t))
	eventually(t, "slot freed", func() bool { return tryConnect(testCtx(t), p.url("alice", "alice-pw")) == nil })
}

func TestUnixSocket(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	cfg := f.config(t)
	dir, err := os.MkdirTemp("", "vp-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg.ListenSocketDir = dir
	p := startProxy(t, cfg)
	ctx := testCtx(t)
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=alice password=alice-pw dbname=%s sslmode=disable", dir, p.port, f.db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var tenant string
	if err := conn.QueryRow(ctx, "SELECT current_setting('vital.tenant_id', true)").Scan(&tenant); err != nil || tenant != f.tenants[dhSlug] {
		t.Fatalf("tenant %q %v", tenant, err)
	}
	// A cancel over the socket reaches the session too.
	errc := make(chan error, 1)
	go func() { _, err := conn.Exec(ctx, "SELECT pg_sleep(600)"); errc <- err }()
	waitActive(t, f, "pg_sleep(600)")
	if err := conn.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	var pgErr *pgconn.PgError
	if err := <-errc; !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("want query_canceled, got %v", err)
	}
}
