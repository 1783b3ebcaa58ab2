package integration_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/config"
)

// backendPID returns the real PostgreSQL backend pid behind a proxied
// connection.
func backendPID(t *testing.T, conn *pgx.Conn) int {
	t.Helper()
	var pid int
	if err := conn.QueryRow(testCtx(t), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// float64Collector reads vitalproxy_pool_resets_total{result="ok"} from the
// proxy's registry.
type float64Collector struct{ r *running }

func (c float64Collector) value(t *testing.T) float64 {
	mfs, err := c.r.srv.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "vitalproxy_pool_resets_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == "ok" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestSessionModeReusesCleanBackends: a client's session state never
// reaches the next client of the same role, whose context is asserted
// again, and a client leaving mid-transaction leaves no lock behind.
func TestSessionModeReusesCleanBackends(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	r := startProxy(t, f.config(t))
	ctx := testCtx(t)

	first := connectURL(t, r.url("alice", "alice-pw", "application_name=first"))
	pid := backendPID(t, first)
	for _, q := range []string{
		"SET search_path = pg_catalog",
		"SET statement_timeout = '7s'",
		"CREATE TEMP TABLE leftover (x int)",
		"PREPARE leftover_stmt AS SELECT 1",
		"LISTEN leftover_channel",
		"SELECT set_config('app.user_note', 'from-first-client', false)",
	} {
		if _, err := first.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	base := (float64Collector{r}).value(t)
	first.Close(ctx)
	waitResetValue(t, r, base+1)

	second := connectURL(t, r.url("alice", "alice-pw", "application_name=second"))
	if got := backendPID(t, second); got != pid {
		t.Fatalf("second client got backend %d, want the reused %d", got, pid)
	}
	var searchPath, timeout, app, note, tenant, published string
	var temps, prepared, locks, listens int // advisory locks are revoked from tenants
	err := second.QueryRow(ctx, `SELECT current_setting('search_path'), current_setting('statement_timeout'),
		current_setting('application_name'), coalesce(current_setting('app.user_note', true), ''),
		current_tenant_id()::text, coalesce(current_setting('vital.tenant_id', true), ''),
		(SELECT count(*) FROM pg_class WHERE relname = 'leftover' AND relpersistence = 't'),
		(SELECT count(*) FROM pg_prepared_statements WHERE name = 'leftover_stmt'),
		0,
		(SELECT count(*) FROM pg_listening_channels())`).Scan(
		&searchPath, &timeout, &app, &note, &tenant, &published, &temps, &prepared, &locks, &listens)
	if err != nil {
		t.Fatal(err)
	}
	if searchPath == "pg_catalog" || timeout == "7s" || note != "" || temps != 0 || prepared != 0 || locks != 0 || listens != 0 {
		t.Errorf("state leaked to the next client: search_path=%q statement_timeout=%q note=%q temp=%d prepared=%d advisory=%d listen=%d",
			searchPath, timeout, note, temps, prepared, locks, listens)
	}
	if app != "second" {
		t.Errorf("application_name = %q, want the second client's own", app)
	}
	if tenant != f.tenants[dhSlug] || published != f.tenants[dhSlug] {
		t.Errorf("context after reuse: current_tenant_id=%q vital.tenant_id=%q, want %q", tenant, published, f.tenants[dhSlug])
	}

	// A client that vanishes mid-transaction holding a row lock.
	base = (float64Collector{r}).value(t)
	tx, err := second.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT * FROM agents WHERE name = $1 FOR UPDATE", f.dhPrivate); err != nil {
		t.Fatal(err)
	}
	second.PgConn().Conn().Close() // no Terminate, no ROLLBACK
	waitResetValue(t, r, base+1)

	third := connectURL(t, r.url("alice", "alice-pw"))
	if got := backendPID(t, third); got != pid {
		t.Errorf("third client got backend %d, want the reused %d", got, pid)
	}
	lockCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := third.Exec(lockCtx, "SET lock_timeout = '5s'"); err != nil {
		t.Fatal(err)
	}
	if _, err := third.Exec(lockCtx, "BEGIN; SELECT * FROM agents WHERE name = '"+f.dhPrivate+"' FOR UPDATE; COMMIT"); err != nil {
		t.Errorf("the abandoned transaction's row lock is still held: %v", err)
	}

	// Another tenant's client never gets that backend.
	other := connectURL(t, r.url("bob", "bob-pw"))
	if got := backendPID(t, other); got == pid {
		t.Error("a backend of one tenant served another tenant")
	}
}

func waitResetValue(t *testing.T, r *running, want float64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if (float64Collector{r}).value(t) >= want {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("backend was not reset for reuse (resets ok = %v, want %v)", (float64Collector{r}).value(t), want)
}

// TestTenantPolicy: per-tenant client limits and timeouts from the config.
func TestTenantPolicy(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	cfg := f.config(t)
	cfg.Tenants = map[string]config.TenantSettings{
		dhSlug: {MaxClientConns: 1, StatementTimeout: 1500 * time.Millisecond, IdleInTransactionTimeout: 20 * time.Second},
	}
	r := startProxy(t, cfg)
	ctx := testCtx(t)
	first := r.connect(t, "alice", "alice-pw")
	var stmt, idle string
	if err := first.QueryRow(ctx, "SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')").Scan(&stmt, &idle); err != nil {
		t.Fatal(err)
	}
	if stmt != "1500ms" || idle != "20s" {
		t.Errorf("statement_timeout %q idle_in_transaction_session_timeout %q, want 1500ms and 20s", stmt, idle)
	}
	_, err := pgx.Connect(ctx, r.url("alice", "alice-pw"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" || !strings.Contains(pgErr.Message, dhSlug) {
		t.Errorf("second client of a tenant limited to one: %v, want 53300 naming the tenant", err)
	}
	// Other tenants are not limited.
	r.connect(t, "bob", "bob-pw")
}

// TestRoleDefaultsCannotStick: a tenant may give its own role defaults
// (PostgreSQL lets any role do that to itself); new and reused backends of
// that role still run as the login role and still assert the context.
func TestRoleDefaultsCannotStick(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	r := startProxy(t, f.config(t))
	ctx := testCtx(t)
	admin := connectURL(t, f.c.URL(f.db))
	role := "vt_it_digital_health_startup_rw"
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "ALTER ROLE "+role+" RESET ALL") })

	c := r.connect(t, "alice", "alice-pw")
	for _, q := range []string{
		"ALTER ROLE CURRENT_USER SET role = 'vital_tenant'",
		"ALTER ROLE CURRENT_USER SET search_path = pg_catalog",
	} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	c.Close(ctx)
	// Force a brand-new backend too: close the idle ones.
	if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE usename = $1", role); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // idle long enough to be checked
	for i := range 2 {
		c := r.connect(t, "alice", "alice-pw")
		var cur, sess, tenant string
		if err := c.QueryRow(ctx, "SELECT current_user, session_user, public.current_tenant_id()::text").Scan(&cur, &sess, &tenant); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		if cur != role || sess != role || tenant != f.tenants[dhSlug] {
			t.Errorf("session %d: current_user %s session_user %s tenant %s", i, cur, sess, tenant)
		}
		c.Close(ctx)
	}
	// A backend that logged in with the defaults keeps them as its reset
	// values: it is closed, not pooled, so once the defaults are gone no
	// later session inherits them.
	eventually(t, "backends with role defaults are closed", func() bool {
		return metricValue(t, r.srv.Gatherer(), "vitalproxy_pool_server_connections_closed_total",
			map[string]string{"tenant": dhSlug, "reason": "role_defaults"}) >= 2
	})
	if _, err := admin.Exec(ctx, "ALTER ROLE "+role+" RESET ALL"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		c := r.connect(t, "alice", "alice-pw")
		var searchPath string
		if err := c.QueryRow(ctx, "SELECT current_setting('search_path')").Scan(&searchPath); err != nil {
			t.Fatal(err)
		}
		if searchPath == "pg_catalog" {
			t.Errorf("session %d after the defaults were removed still has search_path %q", i, searchPath)
		}
		c.Close(ctx)
	}
}

// TestSettingsAcrossReuse: a session-mode reset keeps its client's startup
// settings applied for the next client with the same ones (no round trip
// of their own), and every other next client, in either pool mode, sees
// exactly its own settings and is told the right values.
func TestSettingsAcrossReuse(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	cfg := f.config(t)
	cfg.Pool.MaxServerConns = 1 // every client gets the same backend
	cfg.Pool.QueueTimeout = 30 * time.Second
	for i := range cfg.Users {
		if cfg.Users[i].Name == "multi" {
			cfg.Users[i].PoolMode = "transaction" // same role as alice
		}
	}
	r := startProxy(t, cfg)
	ctx := testCtx(t)

	type want struct{ app, dateStyle, timeZone string }
	var pid int
	check := func(name string, conn *pgx.Conn, w want) {
		t.Helper()
		var app, ds, tz string
		var got int
		if err := conn.QueryRow(ctx, "SELECT current_setting('application_name'), current_setting('DateStyle'), current_setting('TimeZone'), pg_backend_pid()").Scan(&app, &ds, &tz, &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if app != w.app || ds != w.dateStyle || tz != w.timeZone {
			t.Errorf("%s: application_name=%q DateStyle=%q TimeZone=%q, want %q %q %q", name, app, ds, tz, w.app, w.dateStyle, w.timeZone)
		}
		// What the client was told at startup matches the server.
		pc := conn.PgConn()
		if pc.ParameterStatus("application_name") != app || pc.ParameterStatus("DateStyle") != ds || pc.ParameterStatus("TimeZone") != tz {
			t.Errorf("%s: told application_name=%q DateStyle=%q TimeZone=%q, server has %q %q %q", name,
				pc.ParameterStatus("application_name"), pc.ParameterStatus("DateStyle"), pc.ParameterStatus("TimeZone"), app, ds, tz)
		}
		if pid == 0 {
			pid = got
		} else if got != pid {
			t.Errorf("%s: served by backend %d, want the reused %d", name, got, pid)
		}
	}
	var defaults want
	admin := connectURL(t, f.c.URL(f.db))
	if err := admin.QueryRow(ctx, "SELECT '', current_setting('DateStyle'), current_setting('TimeZone')").Scan(&defaults.app, &defaults.dateStyle, &defaults.timeZone); err != nil {
		t.Fatal(err)
	}
	custom := []string{"application_name=report", "DateStyle=German", "TimeZone=Asia/Tokyo"}
	customWant := want{"report", "German, DMY", "Asia/Tokyo"}
	resets := (float64Collector{r}).value(t)
	session := func(name string, extra []string, w want) {
		t.Helper()
		conn := connectURL(t, r.url("alice", "alice-pw", extra...))
		check(name, conn, w)
		conn.Close(ctx)
		resets++
		waitResetValue(t, r, resets)
	}
	session("first, custom settings", custom, customWant)
	session("same settings again", custom, customWant)
	session("no settings", nil, defaults)
	session("custom again", custom, customWant)
	session("one setting changed", []string{"application_name=report", "DateStyle=German", "TimeZone=UTC"}, want{"report", "German, DMY", "UTC"})

	// A list-valued setting arrives as a list, as it would directly.
	lists := connectURL(t, r.url("alice", "alice-pw", "search_path=public,%20pg_catalog"))
	var searchPath string
	if err := lists.QueryRow(ctx, "SELECT current_setting('search_path')").Scan(&searchPath); err != nil {
		t.Fatal(err)
	}
	if searchPath != "public, pg_catalog" {
		t.Errorf("search_path from the startup packet = %q, want %q", searchPath, "public, pg_catalog")
	}
	lists.Close(ctx)
	resets++
	waitResetValue(t, r, resets)

	// A transaction-mode client of the same role after a session-mode one.
	tx := connectURL(t, r.url("multi@"+dhSlug, "multi-pw"))
	check("transaction mode after session mode", tx, defaults)
	tx.Close(ctx)
}
