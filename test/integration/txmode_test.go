package integration_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/config"
)

// txConfig is the fixture's config in transaction mode with a small server
// budget.
func txConfig(t *testing.T, f *fixture, maxServer int) *config.Config {
	cfg := f.config(t)
	cfg.Pool.Mode = "transaction"
	cfg.Pool.MaxServerConns = maxServer
	cfg.Pool.QueueTimeout = 60 * time.Second
	return cfg
}

// TestTransactionModeManyClients: more clients of two tenants than server
// connections interleave transactions with pgx's default statement cache;
// every transaction sees exactly its own tenant's rows.
func TestTransactionModeManyClients(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	r := startProxy(t, txConfig(t, f, 3))
	ctx := testCtx(t)
	type client struct {
		user, pw, tenant, own, foreign string
	}
	kinds := []client{
		{"alice", "alice-pw", dhSlug, f.dhPrivate, f.platformPrivate},
		{"bob", "bob-pw", platformSlug, f.platformPrivate, f.dhPrivate},
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 12 {
		k := kinds[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, r.url(k.user, k.pw))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			for n := range 25 {
				tx, err := conn.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				var tenant string
				var own, foreign int
				err = tx.QueryRow(ctx, `SELECT current_tenant_id()::text,
					count(*) FILTER (WHERE name = $1), count(*) FILTER (WHERE name = $2) FROM agents`, k.own, k.foreign).Scan(&tenant, &own, &foreign)
				if err == nil {
					err = tx.Commit(ctx)
				}
				if err != nil {
					errs <- fmt.Errorf("%s transaction %d: %w", k.user, n, err)
					return
				}
				if tenant != f.tenants[k.tenant] || own != 1 || foreign != 0 {
					errs <- fmt.Errorf("%s transaction %d: tenant %s own %d foreign %d", k.user, n, tenant, own, foreign)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := serverConnsOpen(t, r)
	if st > 3 {
		t.Errorf("%v server connections open, cap is 3", st)
	}
}

func serverConnsOpen(t *testing.T, r *running) float64 {
	t.Helper()
	mfs, err := r.srv.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "vitalproxy_pool_server_connections_total_open" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no vitalproxy_pool_server_connections_total_open")
	return 0
}

// TestTransactionModeState: a client's SET and temp table stay with it or
// vanish at the end of its transaction; nothing reaches another client.
func TestTransactionModeState(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	r := startProxy(t, txConfig(t, f, 1))
	ctx := testCtx(t)
	a := connectURL(t, r.url("alice", "alice-pw", "application_name=client-a"))
	b := connectURL(t, r.url("alice", "alice-pw", "application_name=client-b"))
	if _, err := a.Exec(ctx, "SET search_path = pg_catalog"); err != nil {
		t.Fatal(err)
	}
	var app, path string
	if err := b.QueryRow(ctx, "SELECT current_setting('application_name'), current_setting('search_path')").Scan(&app, &path); err != nil {
		t.Fatal(err)
	}
	if app != "client-b" || path == "pg_catalog" {
		t.Errorf("client b sees application_name %q search_path %q", app, path)
	}
	// Cancel reaches the backend running the client's statement.
	done := make(chan error, 1)
	go func() {
		_, err := b.Exec(ctx, "SELECT pg_sleep(60)")
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := b.PgConn().CancelRequest(cctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
			t.Errorf("cancelled sleep: %v, want 57014", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("cancel did not reach the backend")
	}
}

// TestTransactionModePgbenchPrepared runs pgbench -M prepared and -M simple
// through transaction mode with more clients than server connections.
func TestTransactionModePgbenchPrepared(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	r := startProxy(t, txConfig(t, f, 2))
	env := append(os.Environ(), "PGPASSWORD=alice-pw", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=60", "LC_ALL=C")
	conn := []string{"-h", r.host, "-p", strconv.Itoa(r.port), "-U", "alice", "-d", f.db}
	script := filepath.Join(t.TempDir(), "bench.sql")
	body := "\\set n random(1, 1000)\nSELECT count(*) FROM agents WHERE name <> :n::text;\nSELECT current_tenant_id();\n"
	if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"prepared", "simple", "extended"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, clientTool(t, f.c.BinDir, "pgbench"),
				append(conn, "-n", "-c", "6", "-j", "2", "-t", "50", "-M", mode, "-f", script)...)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "number of transactions actually processed: 300/300") {
				t.Fatalf("pgbench -M %s: %v\n%s", mode, err, out)
			}
		})
	}
}
