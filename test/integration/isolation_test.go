package integration_test

import (
	"context"
	"errors"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// visibleAgents returns the fixture agents conn can see.
func visibleAgents(t testing.TB, ctx context.Context, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(ctx, "SELECT name FROM agents WHERE name LIKE 'it-%' ORDER BY name")
	if err != nil {
		t.Fatalf("select agents: %v", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("select agents: %v", err)
	}
	return names
}

func sorted(s ...string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

// TestTenantIsolation checks what each tenant's users see through the proxy
// and that nothing a client sends widens it.
func TestTenantIsolation(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	p := startProxy(t, f.config(t))
	ctx := testCtx(t)

	dhView := sorted(f.dhPrivate, f.platformShared)
	platformView := sorted(f.platformPrivate, f.platformShared)

	t.Run("view/digital health", func(t *testing.T) {
		got := visibleAgents(t, ctx, p.connect(t, "alice", "alice-pw"))
		if strings.Join(got, ",") != strings.Join(dhView, ",") {
			t.Fatalf("alice sees %v, want %v", got, dhView)
		}
	})
	t.Run("view/platform", func(t *testing.T) {
		got := visibleAgents(t, ctx, p.connect(t, "bob", "bob-pw"))
		if strings.Join(got, ",") != strings.Join(platformView, ",") {
			t.Fatalf("bob sees %v, want %v", got, platformView)
		}
	})
	t.Run("view/user@tenant picks the tenant", func(t *testing.T) {
		got := visibleAgents(t, ctx, p.connect(t, "multi@"+platformSlug, "multi-pw"))
		if strings.Join(got, ",") != strings.Join(platformView, ",") {
			t.Fatalf("multi@platform sees %v, want %v", got, platformView)
		}
		got = visibleAgents(t, ctx, p.connect(t, "multi@"+dhSlug, "multi-pw"))
		if strings.Join(got, ",") != strings.Join(dhView, ",") {
			t.Fatalf("multi@dh sees %v, want %v", got, dhView)
		}
	})

	// Each attack runs on a fresh DH session; afterwards the session must
	// still see exactly the DH view (an error from the attack is fine).
	attacks := []struct {
		name string
		sql  string
	}{
		{"set/custom setting", "SET vital.tenant_id = '" + f.tenants[platformSlug] + "'"},
		{"set_config/custom setting", "SELECT set_config('vital.tenant_id', '" + f.tenants[platformSlug] + "', false)"},
		{"set_tenant_context/other tenant", "SELECT set_tenant_context('" + f.tenants[platformSlug] + "')"},
		{"reset all", "RESET ALL"},
		{"discard all", "DISCARD ALL"},
		{"set role/owner", "SET ROLE vital_owner"},
		{"set role/superuser", "SET ROLE " + f.c.User},
		{"set role/other tenant", "SET ROLE " + f.prefix + "vital_platform_rw"},
		{"set session authorization", "SET SESSION AUTHORIZATION " + f.c.User},
		{"row_security off", "SET row_security = off"},
		{"do block", "DO $$ BEGIN PERFORM set_config('vital.tenant_id', '" + f.tenants[platformSlug] + "', false); END $$"},
	}
	for _, a := range attacks {
		t.Run("attack/"+a.name, func(t *testing.T) {
			conn := p.connect(t, "alice", "alice-pw")
			_, err := conn.Exec(ctx, a.sql)
			if err != nil {
				t.Logf("%s: %v", a.sql, err)
			}
			// Either the session still sees exactly its tenant's rows, or
			// PostgreSQL refuses the query (row_security = off makes a query
			// that RLS would filter fail instead).
			rows, err := conn.Query(ctx, "SELECT name FROM agents WHERE name LIKE 'it-%' ORDER BY name")
			var got []string
			if err == nil {
				got, err = pgx.CollectRows(rows, pgx.RowTo[string])
			}
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "42501" {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, ",") != strings.Join(dhView, ",") {
				t.Fatalf("after %q alice sees %v, want %v", a.sql, got, dhView)
			}
		})
	}

	t.Run("read only/cannot write", func(t *testing.T) {
		conn := p.connect(t, "rita", "rita-pw")
		for _, sql := range []string{
			"INSERT INTO agents (name, tenant_id) VALUES ('it-rita', '" + f.tenants[dhSlug] + "')",
			"SET default_transaction_read_only = off; INSERT INTO agents (name, tenant_id) VALUES ('it-rita', '" + f.tenants[dhSlug] + "')",
			"BEGIN READ WRITE; UPDATE agents SET display_name = 'x' WHERE name = '" + f.dhPrivate + "'; COMMIT",
		} {
			_, err := conn.Exec(ctx, sql)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
				t.Errorf("%q: want insufficient_privilege, got %v", sql, err)
			}
			_, _ = conn.Exec(ctx, "ROLLBACK")
		}
		got := visibleAgents(t, ctx, conn)
		if strings.Join(got, ",") != strings.Join(dhView, ",") {
			t.Fatalf("rita sees %v, want %v", got, dhView)
		}
	})

	t.Run("write/cannot write into another tenant", func(t *testing.T) {
		conn := p.connect(t, "alice", "alice-pw")
		_, err := conn.Exec(ctx, "INSERT INTO agents (name, tenant_id, is_shared, sharing_mode, resource_type) VALUES ('it-forged', $1, false, 'private', 'custom')", f.tenants[platformSlug])
		if err == nil {
			t.Fatal("alice inserted a row for the platform tenant")
		}
	})
}
