package integration_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/config"
)

// contextConfig is transaction mode with isolation mode context and a
// budget of maxServer shared backends.
func contextConfig(t *testing.T, f *fixture, maxServer int) *config.Config {
	cfg := txConfig(t, f, maxServer)
	cfg.Isolation.Mode = config.IsolationContext
	return cfg
}

// backendRoles counts the database's client backends by login role.
func backendRoles(t *testing.T, f *fixture) map[string]int {
	t.Helper()
	ctx := testCtx(t)
	conn := connectURL(t, f.c.URL(f.db))
	rows, err := conn.Query(ctx, `SELECT usename::text, count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	var name string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&name, &n}, func() error { out[name] = n; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestContextModeTenantsShareBackends: three tenants' clients interleave
// transactions on one shared backend; every transaction sees exactly its
// own tenant, no tenant role logs in, and the switches are counted.
func TestContextModeTenantsShareBackends(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	r := startProxy(t, contextConfig(t, f, 1))
	ctx := testCtx(t)
	type client struct {
		user, pw, tenant, own, foreign string
	}
	kinds := []client{
		{"alice", "alice-pw", dhSlug, f.dhPrivate, f.platformPrivate},
		{"bob", "bob-pw", platformSlug, f.platformPrivate, f.dhPrivate},
		{"multi@" + spareSlug, "multi-pw", spareSlug, "", f.dhPrivate},
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 9 {
		k := kinds[i%len(kinds)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, r.url(k.user, k.pw))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			for n := range 20 {
				var tenant string
				var own, foreign int
				err := conn.QueryRow(ctx, `SELECT current_tenant_id()::text,
					count(*) FILTER (WHERE name = $1), count(*) FILTER (WHERE name = $2) FROM agents`, k.own, k.foreign).Scan(&tenant, &own, &foreign)
				if err != nil {
					errs <- fmt.Errorf("%s transaction %d: %w", k.user, n, err)
					return
				}
				wantOwn := 1
				if k.own == "" {
					wantOwn = 0
				}
				if tenant != f.tenants[k.tenant] || own != wantOwn || foreign != 0 {
					errs <- fmt.Errorf("%s transaction %d: tenant %s (want %s) own %d foreign %d", k.user, n, tenant, f.tenants[k.tenant], own, foreign)
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
	roles := backendRoles(t, f)
	pooled := auth.PooledRoleName(f.prefix, auth.ReadWrite)
	for role, n := range roles {
		if strings.HasPrefix(role, f.prefix) && role != pooled {
			t.Errorf("tenant role %s has %d backends in context mode", role, n)
		}
	}
	if roles[pooled] != 1 {
		t.Errorf("pooled role backends = %d, want 1 (the budget): %v", roles[pooled], roles)
	}
	if got := metricValue(t, r.srv.Gatherer(), "vitalproxy_context_switches_total", map[string]string{"result": "ok"}); got < 3 {
		t.Errorf("context switches counted = %v, want at least one per tenant", got)
	}
	if got := metricValue(t, r.srv.Gatherer(), "vitalproxy_context_switches_total", map[string]string{"result": "failure"}); got != 0 {
		t.Errorf("failed context switches = %v", got)
	}
}

// TestContextModeStateDoesNotCross: what one tenant's client leaves on the
// shared backend (settings, temporary objects, LISTEN, cursors, its
// context) is gone when another tenant's transaction runs there, and a
// forged or replayed context gives no tenant at all.
func TestContextModeStateDoesNotCross(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	r := startProxy(t, contextConfig(t, f, 1))
	ctx := testCtx(t)
	a := r.connect(t, "alice", "alice-pw")
	b := r.connect(t, "bob", "bob-pw")
	var aliceContext string
	if err := a.QueryRow(ctx, "SELECT current_setting('vital.tenant_context')").Scan(&aliceContext); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(aliceContext, f.tenants[dhSlug]+":") {
		t.Fatalf("alice's context %q is not her tenant's", aliceContext)
	}
	for _, q := range []string{
		"SET search_path = pg_catalog",
		"SET statement_timeout = 123456",
		"CREATE TEMP TABLE alice_temp (secret text)",
		"LISTEN alice_channel",
		"BEGIN; DECLARE alice_cursor CURSOR WITH HOLD FOR SELECT name FROM agents; COMMIT",
	} {
		if _, err := a.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var path, timeout, bobContext string
	var temp, cursors int
	err := b.QueryRow(ctx, `SELECT current_setting('search_path'), current_setting('statement_timeout'),
		(SELECT count(*) FROM pg_class WHERE relname = 'alice_temp'),
		(SELECT count(*) FROM pg_cursors WHERE name = 'alice_cursor'),
		current_setting('vital.tenant_context')`).Scan(&path, &timeout, &temp, &cursors, &bobContext)
	if err != nil {
		t.Fatal(err)
	}
	if path == "pg_catalog" || timeout == "123456ms" || timeout == "2min 3.456s" || temp != 0 || cursors != 0 {
		t.Errorf("bob sees alice's state: search_path %q statement_timeout %q temp tables %d cursors %d", path, timeout, temp, cursors)
	}
	if !strings.HasPrefix(bobContext, f.tenants[platformSlug]+":") {
		t.Errorf("bob's context %q is not his tenant's", bobContext)
	}
	// A forged context: the right shape, any MAC.
	var forged *string
	var foreign int
	tx, err := b.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT set_config('vital.tenant_context', $1, true)", f.tenants[dhSlug]+":"+strings.Repeat("ab", 32)); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, "SELECT current_tenant_id()::text, (SELECT count(*) FROM agents WHERE name = $1)", f.dhPrivate).Scan(&forged, &foreign); err != nil {
		t.Fatal(err)
	}
	_ = tx.Rollback(ctx)
	if forged != nil || foreign != 0 {
		t.Errorf("forged context: tenant %v, alice's private rows %d", forged, foreign)
	}
	// Alice's own context, replayed on another backend of the pooled role
	// (the attacker holding the pooled role's password, even).
	pooled := auth.PooledRoleName(f.prefix, auth.ReadWrite)
	direct := connectURL(t, f.c.URLFor(pooled, auth.RolePassword(f.secret, pooled), f.db))
	var replayed *string
	if err := direct.QueryRow(ctx, "SELECT set_config('vital.tenant_context', $1, false), current_tenant_id()::text", aliceContext).Scan(new(string), &replayed); err != nil {
		t.Fatal(err)
	}
	if replayed != nil {
		t.Errorf("alice's context replayed on another backend gives tenant %s", *replayed)
	}
	if _, err := direct.Exec(ctx, "SELECT public.enter_tenant_context($1)", aliceContext); err == nil {
		t.Error("enter_tenant_context accepted a context of another backend")
	}
	// Signalling the shared backends and reading their prepared statements
	// are refused on shared backends.
	for _, q := range []string{"SELECT pg_terminate_backend(pg_backend_pid())", "SELECT pg_cancel_backend(pg_backend_pid())", "SELECT count(*) FROM pg_prepared_statements"} {
		if _, err := b.Exec(ctx, q); err == nil || !strings.Contains(err.Error(), "42501") {
			t.Errorf("%s through a shared backend: %v, want permission denied", q, err)
		}
	}
	// Alice still works, and sees her own rows only.
	var own int
	if err := a.QueryRow(ctx, "SELECT count(*) FROM agents WHERE name = $1", f.dhPrivate).Scan(&own); err != nil || own != 1 {
		t.Errorf("alice after the attacks: %d rows, %v", own, err)
	}
}
