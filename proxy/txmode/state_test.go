package txmode_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/txmode"
)

func queryString(t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var s *string
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if s == nil {
		return "<null>"
	}
	return *s
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestSessionState checks that what one client changes on a backend does
// not reach the next client of the same pool: each tenant's pool has one
// backend here, so consecutive clients of a tenant share it.
func TestSessionState(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, pool.Config{MaxConns: 2, MaxConnsPerTenant: 1}, func(o *txmode.Options) {
		if o.Key.Tenant == pl {
			o.StatementTimeout = 1500 * time.Millisecond
			o.IdleInTransactionTimeout = 30 * time.Second
		}
	})
	ctx := context.Background()
	pid := func(conn *pgx.Conn) string { return queryString(t, conn, "SELECT pg_backend_pid()::text") }

	t.Run("settings/startup values follow the client", func(t *testing.T) {
		a := e.connect(t, dh, pgx.QueryExecModeCacheStatement, "application_name", "client-a", "timezone", "Asia/Tokyo", "search_path", "pg_catalog, public")
		b := e.connect(t, dh, pgx.QueryExecModeSimpleProtocol, "application_name", "client-b")
		if got := a.PgConn().ParameterStatus("application_name"); got != "client-a" {
			t.Errorf("ParameterStatus application_name at start = %q", got)
		}
		if got := a.PgConn().ParameterStatus("TimeZone"); got != "Asia/Tokyo" {
			t.Errorf("ParameterStatus TimeZone at start = %q", got)
		}
		defaultTZ := queryString(t, b, "SELECT current_setting('TimeZone')")
		for range 5 {
			if pid(a) != pid(b) {
				t.Fatal("the clients were served by different backends")
			}
			if got := queryString(t, a, "SELECT current_setting('application_name') || '|' || current_setting('TimeZone') || '|' || current_setting('search_path')"); got != "client-a|Asia/Tokyo|pg_catalog, public" {
				t.Errorf("client a sees %q", got)
			}
			if got := queryString(t, b, "SELECT current_setting('application_name') || '|' || current_setting('TimeZone') || '|' || current_setting('search_path')"); got != "client-b|"+defaultTZ+`|"$user", public, pg_catalog` {
				t.Errorf("client b sees %q", got)
			}
		}
	})

	t.Run("settings/SET does not leak", func(t *testing.T) {
		a := e.connect(t, dh, pgx.QueryExecModeSimpleProtocol, "application_name", "client-a")
		b := e.connect(t, dh, pgx.QueryExecModeCacheStatement, "application_name", "client-b")
		defaults := queryString(t, b, "SELECT current_setting('work_mem') || '|' || current_user")
		mustExec(t, a, "SET work_mem = '77MB'")
		mustExec(t, a, "SET application_name = 'renamed'")
		mustExec(t, a, "SELECT set_config('search_path', 'pg_catalog', false)")
		mustExec(t, a, "SET ROLE vital_tenant")
		if got := queryString(t, b, "SELECT current_setting('work_mem') || '|' || current_user"); got != defaults {
			t.Errorf("client b sees %q after client a's SETs, want %q", got, defaults)
		}
		if got := queryString(t, b, "SELECT current_setting('application_name') || '|' || current_setting('search_path')"); got != `client-b|"$user", public, pg_catalog` {
			t.Errorf("client b sees %q", got)
		}
		// A reported setting the client changed stays its own.
		if got := queryString(t, a, "SELECT current_setting('application_name')"); got != "renamed" {
			t.Errorf("client a's application_name = %q, want its own SET value", got)
		}
		whoami(t, ctx, a, e, dh)
	})

	t.Run("settings/timeouts", func(t *testing.T) {
		c := e.connect(t, pl, pgx.QueryExecModeCacheStatement)
		if got := queryString(t, c, "SELECT current_setting('statement_timeout') || '|' || current_setting('idle_in_transaction_session_timeout')"); got != "1500ms|30s" {
			t.Errorf("configured timeouts: %q", got)
		}
		own := e.connect(t, pl, pgx.QueryExecModeCacheStatement, "statement_timeout", "3s")
		if got := queryString(t, own, "SELECT current_setting('statement_timeout')"); got != "3s" {
			t.Errorf("the client's own statement_timeout: %q", got)
		}
		if _, err := c.Exec(ctx, "SELECT pg_sleep(5)"); sqlState(err) != "57014" {
			t.Errorf("statement_timeout: %v, want 57014", err)
		}
		if got := queryString(t, e.connect(t, dh, pgx.QueryExecModeCacheStatement), "SELECT current_setting('statement_timeout')"); got != "0" {
			t.Errorf("another tenant's statement_timeout: %q", got)
		}
	})

	t.Run("state/DISCARD ALL by a client", func(t *testing.T) {
		a := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
		for range 3 {
			whoami(t, ctx, a, e, dh)
		}
		mustExec(t, a, "DISCARD ALL")
		for range 3 {
			whoami(t, ctx, a, e, dh) // its cached statements are prepared again
		}
		b := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
		mustExec(t, a, "DISCARD ALL")
		if got := queryString(t, b, "SELECT current_setting('vital.tenant_id', true)"); got != e.db.TenantIDs[dh] {
			t.Errorf("published tenant context after another client's DISCARD ALL: %q", got)
		}
	})

	t.Run("state/temporary table", func(t *testing.T) {
		a := e.connect(t, dh, pgx.QueryExecModeSimpleProtocol)
		b := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
		c := e.connect(t, pl, pgx.QueryExecModeCacheStatement)
		mustExec(t, a, "CREATE TEMP TABLE scratch AS SELECT 42 AS secret")
		if pid(a) != pid(b) {
			t.Fatal("the clients were served by different backends")
		}
		for name, conn := range map[string]*pgx.Conn{"same tenant": b, "other tenant": c} {
			if got := queryString(t, conn, "SELECT to_regclass('pg_temp.scratch')::text"); got != "<null>" {
				t.Errorf("%s sees the temporary table: %s", name, got)
			}
		}
	})

	t.Run("state/SQL PREPARE", func(t *testing.T) {
		a := e.connect(t, dh, pgx.QueryExecModeSimpleProtocol)
		b := e.connect(t, dh, pgx.QueryExecModeSimpleProtocol)
		mustExec(t, a, "PREPARE sqlprep AS SELECT 1")
		mustExec(t, b, "PREPARE sqlprep AS SELECT 2") // not "already exists"
		tx, err := b.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got string
		if _, err := tx.Exec(ctx, "PREPARE inside AS SELECT 'x'::text"); err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(ctx, "EXECUTE inside").Scan(&got); err != nil || got != "x" {
			t.Errorf("PREPARE and EXECUTE in one transaction: %q %v", got, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("state/session advisory lock", func(t *testing.T) {
		// The migrations revoke the advisory-lock functions from tenants;
		// this checks the engine's own cleanup where they are allowed.
		mustExec(t, e.super(t), "GRANT EXECUTE ON FUNCTION pg_catalog.pg_advisory_lock(bigint) TO vital_tenant")
		a := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
		mustExec(t, a, "SELECT pg_advisory_lock(4242)")
		whoami(t, ctx, e.connect(t, dh, pgx.QueryExecModeCacheStatement), e, dh) // a release in between
		su := e.super(t)
		var got bool
		if err := su.QueryRow(ctx, "SELECT pg_try_advisory_lock(4242)").Scan(&got); err != nil || !got {
			t.Errorf("the lock outlived the client's transaction: %v %v", got, err)
		}
		mustExec(t, su, "SELECT pg_advisory_unlock_all()")
	})

	t.Run("state/LISTEN", func(t *testing.T) {
		var mu sync.Mutex
		var notices []string
		cfg, err := pgx.ParseConfig(e.url(dh))
		if err != nil {
			t.Fatal(err)
		}
		cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			mu.Lock()
			notices = append(notices, n.Message)
			mu.Unlock()
		}
		a, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close(ctx)
		mustExec(t, a, "LISTEN somewhere")
		mu.Lock()
		if len(notices) != 1 || !strings.Contains(notices[0], "session-mode") {
			t.Errorf("notices after LISTEN: %q", notices)
		}
		mu.Unlock()
		b := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
		if got := queryString(t, b, "SELECT count(*)::text FROM pg_listening_channels()"); got != "0" {
			t.Errorf("next client's backend listens on %s channels", got)
		}
	})

	if errs := e.fe.runErrors(); len(errs) > 0 {
		t.Errorf("sessions ended with errors: %v", errs)
	}
}

// TestReclaim checks that a backend transaction-mode clients used comes
// back clean for another borrower.
func TestReclaim(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, pool.Config{MaxConns: 1}, nil)
	ctx := context.Background()
	c := e.connect(t, dh, pgx.QueryExecModeCacheStatement, "application_name", "tx-client", "search_path", "pg_catalog, public")
	whoami(t, ctx, c, e, dh)
	c.Close(ctx)

	b, err := e.pool.Acquire(ctx, e.key(dh))
	if err != nil {
		t.Fatal(err)
	}
	if b.Data == nil {
		t.Fatal("the engine left no state on the backend")
	}
	if err := txmode.Reclaim(ctx, b); err != nil {
		e.pool.Release(b, false)
		t.Fatal(err)
	}
	if b.Data != nil {
		t.Error("Reclaim kept the engine's state")
	}
	// Use the backend as a session-mode borrower would, with pgconn.
	cfg, err := pgconn.ParseConfig(e.c.URL(e.db.Name))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := pgconn.Construct(&pgconn.HijackedConn{Conn: b.Conn.Conn, PID: b.PID, SecretKey: b.SecretKey,
		ParameterStatuses: map[string]string{}, TxStatus: 'I', Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	res, err := pc.Exec(ctx, `SELECT current_setting('application_name') || '|' || current_setting('search_path') || '|' ||
		(SELECT count(*) FROM pg_prepared_statements) || '|' || current_setting('vital.tenant_id', true)`).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(res[0].Rows[0][0]), `|"$user", public, pg_catalog|0|`+e.db.TenantIDs[dh]; got != want {
		t.Errorf("after Reclaim: %q, want %q", got, want)
	}
	e.pool.Release(b, true)
}
