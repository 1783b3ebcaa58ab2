package txmode_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
)

// whoami checks, inside one transaction, that the session is the
// tenant's role with the tenant's context, and returns the backend pid.
func whoami(t testing.TB, ctx context.Context, conn *pgx.Conn, e *env, slug string) int32 {
	t.Helper()
	var user, tenant string
	var pid int32
	err := conn.QueryRow(ctx, "SELECT session_user::text, current_tenant_id()::text, pg_backend_pid()").Scan(&user, &tenant, &pid)
	if err != nil {
		t.Errorf("%s: whoami: %v", slug, err)
		return 0
	}
	if want := e.key(slug).Role; user != want {
		t.Errorf("%s: session_user = %s, want %s", slug, user, want)
	}
	if want := e.db.TenantIDs[slug]; tenant != want {
		t.Errorf("%s: current_tenant_id() = %s, want %s", slug, tenant, want)
	}
	return pid
}

var execModes = []struct {
	name string
	mode pgx.QueryExecMode
}{
	{"simple", pgx.QueryExecModeSimpleProtocol},
	{"cache-statement", pgx.QueryExecModeCacheStatement},
	{"cache-describe", pgx.QueryExecModeCacheDescribe},
	{"describe-exec", pgx.QueryExecModeDescribeExec},
	{"exec", pgx.QueryExecModeExec},
}

// TestManyClientsFewBackends runs 16 clients of two tenants over a pool of
// two backends, in every pgx query mode, each checking on every
// transaction that it runs as its own tenant and gets its own answers.
func TestManyClientsFewBackends(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, pool.Config{MaxConns: 2}, nil)
	ctx := context.Background()
	const clients, rounds = 16, 25
	var wg sync.WaitGroup
	for i := range clients {
		slug := dh
		if i%2 == 1 {
			slug = pl
		}
		m := execModes[i%len(execModes)]
		conn := e.connect(t, slug, m.mode, "application_name", fmt.Sprintf("client-%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				whoami(t, ctx, conn, e, slug)
				// Statements that differ per client: a mix-up of
				// prepared or unnamed statements between clients
				// shows as a wrong answer.
				var got int
				var app string
				q := fmt.Sprintf("SELECT $1::int + %d, current_setting('application_name')", i)
				if err := conn.QueryRow(ctx, q, r).Scan(&got, &app); err != nil {
					t.Errorf("client %d (%s) round %d: %v", i, m.name, r, err)
					return
				}
				if got != r+i || app != fmt.Sprintf("client-%d", i) {
					t.Errorf("client %d (%s) round %d: got %d %q, want %d client-%d", i, m.name, r, got, app, r+i, i)
				}
				tx, err := conn.Begin(ctx)
				if err != nil {
					t.Errorf("client %d: begin: %v", i, err)
					return
				}
				var n int
				if err := tx.QueryRow(ctx, "SELECT count(*) FROM generate_series(1, $1::int)", i+1).Scan(&n); err != nil || n != i+1 {
					t.Errorf("client %d (%s): in transaction: %d, %v", i, m.name, n, err)
				}
				whoami(t, ctx, tx.Conn(), e, slug)
				if err := tx.Commit(ctx); err != nil {
					t.Errorf("client %d: commit: %v", i, err)
				}
			}
		}()
	}
	wg.Wait()
	if n := e.pool.Total(); n > 2 {
		t.Errorf("%d server connections, want at most 2", n)
	}
}
