package migrations_test

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// isolationDB is a migrated database with a private agent for each MVP
// tenant and one globally shared platform agent.
func isolationDB(t *testing.T) testDB {
	t.Helper()
	db := migrated(t)
	db.exec(t, `
		INSERT INTO agents (tenant_id, name, is_shared, sharing_mode, resource_type)
		SELECT id, 'dh-secret', false, 'private', 'custom' FROM tenants WHERE slug = 'digital-health-startup';
		INSERT INTO agents (tenant_id, name, is_shared, sharing_mode, resource_type)
		SELECT id, 'platform-secret', false, 'private', 'custom' FROM tenants WHERE slug = 'vital-platform';
		INSERT INTO agents (tenant_id, name, is_shared, sharing_mode, resource_type)
		SELECT id, 'platform-shared', true, 'global', 'platform' FROM tenants WHERE slug = 'vital-platform';
		REFRESH MATERIALIZED VIEW mv_platform_shared_resources;`)
	return db
}

func visibleAgents(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	return scalar[string](t, conn, `SELECT coalesce(string_agg(name, ',' ORDER BY name), '') FROM agents`)
}

// TestRLSIsolationAsTenantRoles is the seed's "Test RLS Isolation",
// logged in as real tenant roles.
func TestRLSIsolationAsTenantRoles(t *testing.T) {
	db := isolationDB(t)
	dh := db.tenantLogin(t, "digital-health-startup", "rw")
	prw := db.tenantLogin(t, "vital-platform", "rw")
	padm := db.tenantLogin(t, "vital-platform", "admin")
	dhID, platformID := db.tenantID(t, "digital-health-startup"), db.tenantID(t, "vital-platform")
	ctx := ctxT(t)
	for _, c := range []struct {
		conn   *pgx.Conn
		tenant string
	}{{dh, dhID}, {prw, platformID}, {padm, platformID}} {
		if _, err := c.conn.Exec(ctx, `SELECT set_tenant_context($1)`, c.tenant); err != nil {
			t.Fatalf("set_tenant_context of the role's own tenant: %v", err)
		}
	}
	if _, err := dh.Exec(ctx, `INSERT INTO agents (tenant_id, name, display_name, description, system_prompt, model,
		capabilities, is_shared, sharing_mode, resource_type)
		VALUES ($1, 'test-private-agent', 'Test Private Agent', 'Private agent for testing', 'You are a test agent',
		        'gpt-4', ARRAY['testing'], false, 'private', 'custom')`, dhID); err != nil {
		t.Fatalf("digital-health-startup inserts its private agent: %v", err)
	}
	tests := []struct {
		who  string
		conn *pgx.Conn
		want string
	}{
		{"digital-health-startup", dh, "dh-secret,platform-shared,test-private-agent"},
		{"vital-platform rw", prw, "platform-secret,platform-shared"},
		{"vital-platform admin", padm, "dh-secret,platform-secret,platform-shared,test-private-agent"},
	}
	for _, tt := range tests {
		if got := visibleAgents(t, tt.conn); got != tt.want {
			t.Errorf("%s sees agents %q, want %q", tt.who, got, tt.want)
		}
	}
	if got := scalar[string](t, dh, `SELECT string_agg(slug, ',' ORDER BY slug) FROM tenants`); got != "digital-health-startup,vital-platform" {
		t.Errorf("digital-health-startup sees tenants %q, want itself and the platform", got)
	}
	if got := scalar[int](t, dh, `SELECT count(*) FROM get_accessible_agents($1)`, platformID); got != 1 {
		t.Errorf("get_accessible_agents(platform) as digital-health-startup returns %d agents, want only the shared one", got)
	}
	if got := scalar[int](t, dh, `SELECT count(*) FROM mv_platform_shared_resources`); got != 1 {
		t.Errorf("mv_platform_shared_resources shows %d rows, want 1", got)
	}
}

// TestForgedContextIsUseless tries every way a tenant role could claim
// another tenant; none may show it another tenant's private row.
func TestForgedContextIsUseless(t *testing.T) {
	db := isolationDB(t)
	dh := db.tenantLogin(t, "digital-health-startup", "rw")
	platformID := db.tenantID(t, "vital-platform")
	ctx := ctxT(t)
	const leak = `SELECT count(*) FROM agents WHERE name = 'platform-secret'`

	settings := []string{
		`SET vital.tenant_id = '` + platformID + `'`,
		`SELECT set_config('vital.tenant_id', '` + platformID + `', false)`,
		`SET app.tenant_id = '` + platformID + `'`,
		`SET app.current_tenant = '` + platformID + `'`,
		`RESET ALL`,
		`DISCARD ALL`,
		`SET ROLE vital_tenant`,
		`RESET ROLE`,
		`SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE`,
		`SET search_path = pg_temp, public`,
	}
	for _, s := range settings {
		if _, err := dh.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if n := scalar[int](t, dh, leak); n != 0 {
			t.Errorf("after %s the other tenant's private agent is visible", s)
		}
	}
	if _, err := dh.Exec(ctx, `RESET ALL`); err != nil {
		t.Fatal(err)
	}

	refused := []struct {
		sql, state string
	}{
		{`SELECT set_tenant_context('` + platformID + `')`, "42501"},
		{`SET ROLE vital_owner`, "42501"},
		{`SET ROLE vital_operator`, "42501"},
		{`SET ROLE postgres`, "42501"},
		{`SET SESSION AUTHORIZATION postgres`, "42501"},
		{`SELECT * FROM vital.tenant_roles`, "42501"},
		{`INSERT INTO vital.tenant_roles VALUES (current_user, '` + platformID + `', 'admin')`, "42501"},
		{`ALTER TABLE agents DISABLE ROW LEVEL SECURITY`, "42501"},
		{`DROP POLICY agents_select_with_sharing ON agents`, "42501"},
		{`CREATE TABLE public.mine (id int)`, "42501"},
		{`CREATE SCHEMA mine`, "42501"},
		{`CREATE FUNCTION public.current_tenant_id(x int) RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'`, "42501"},
		{`UPDATE agents SET tenant_id = '` + platformID + `'`, "42501"},
		{`DELETE FROM agents`, "42501"},
		{`TRUNCATE agents`, "42501"},
		{`REFRESH MATERIALIZED VIEW mv_platform_shared_resources`, "42501"},
		{`INSERT INTO resource_sharing_audit (tenant_id, resource_table, resource_id, action) VALUES ('` + platformID + `', 'agents', gen_random_uuid(), 'shared')`, "42501"},
		{`INSERT INTO agents (tenant_id, name) VALUES ('` + platformID + `', 'planted')`, "42501"},
		{`DO $$ BEGIN INSERT INTO agents (tenant_id, name) VALUES ('` + platformID + `', 'planted'); END $$`, "42501"},
		{`DO $$ BEGIN IF (SELECT count(*) FROM agents WHERE name = 'platform-secret') = 0 THEN RAISE EXCEPTION USING ERRCODE = '42501'; END IF; END $$`, "42501"},
	}
	for _, r := range refused {
		_, err := dh.Exec(ctx, r.sql)
		if got := sqlState(err); got != r.state {
			t.Errorf("%s: err = %v (SQLSTATE %q), want SQLSTATE %s", firstLine(r.sql), err, got, r.state)
		}
	}
	if got := scalar[string](t, dh, `SELECT current_tenant_id()::text`); got != db.tenantID(t, "digital-health-startup") {
		t.Errorf("current_tenant_id() = %s after all that, want digital-health-startup", got)
	}
	if n := scalar[int](t, db.admin(t), `SELECT count(*) FROM agents WHERE name = 'planted'`); n != 0 {
		t.Errorf("a row was planted in another tenant")
	}
}

// TestWritePolicies: a tenant writes only its own rows and cannot share or
// take over another tenant's.
func TestWritePolicies(t *testing.T) {
	db := isolationDB(t)
	dh := db.tenantLogin(t, "digital-health-startup", "rw")
	prw := db.tenantLogin(t, "vital-platform", "rw")
	padm := db.tenantLogin(t, "vital-platform", "admin")
	dhID, platformID := db.tenantID(t, "digital-health-startup"), db.tenantID(t, "vital-platform")
	ctx := ctxT(t)

	// Inserting without tenant_id takes the session's tenant.
	if _, err := dh.Exec(ctx, `INSERT INTO agents (name) VALUES ('dh-default')`); err != nil {
		t.Fatalf("insert without tenant_id: %v", err)
	}
	if got := scalar[string](t, db.admin(t), `SELECT tenant_id::text FROM agents WHERE name = 'dh-default'`); got != dhID {
		t.Errorf("dh-default belongs to %s, want digital-health-startup", got)
	}
	refused := []string{
		`INSERT INTO agents (name, sharing_mode, is_shared) VALUES ('dh-global', 'global', true)`,
		`INSERT INTO agents (name, resource_type) VALUES ('dh-platform', 'platform')`,
		`UPDATE agents SET sharing_mode = 'global', is_shared = true WHERE name = 'dh-secret'`,
		`INSERT INTO tools (tenant_id, name) VALUES ('` + platformID + `', 'x')`,
		`INSERT INTO user_roles (user_id, role) VALUES (gen_random_uuid(), 'platform_admin')`,
	}
	for _, q := range refused {
		if _, err := dh.Exec(ctx, q); sqlState(err) != "42501" {
			t.Errorf("%s: err = %v, want a row-level security refusal", q, err)
		}
	}
	// Another tenant's rows are not there to update, shared or not.
	for _, q := range []string{
		`UPDATE agents SET name = 'hijacked' WHERE name IN ('platform-shared', 'platform-secret')`,
		`UPDATE agents SET sharing_mode = 'global', is_shared = true WHERE name = 'platform-secret'`,
		`UPDATE agents SET deleted_at = now() WHERE name = 'platform-shared'`,
	} {
		tag, err := dh.Exec(ctx, q)
		if err != nil || tag.RowsAffected() != 0 {
			t.Errorf("%s: %d rows, %v; want 0 rows", q, tag.RowsAffected(), err)
		}
	}
	// Sharing its own row with the platform tenant, then soft-deleting it.
	if _, err := dh.Exec(ctx, `UPDATE agents SET sharing_mode = 'tenants', is_shared = true, shared_with = ARRAY[$1::uuid]
		WHERE name = 'dh-secret'`, platformID); err != nil {
		t.Fatalf("share with a tenant: %v", err)
	}
	if n := scalar[int](t, prw, `SELECT count(*) FROM agents WHERE name = 'dh-secret'`); n != 1 {
		t.Errorf("vital-platform sees %d copies of the agent shared with it, want 1", n)
	}
	if tag, err := prw.Exec(ctx, `UPDATE agents SET description = 'mine now' WHERE name = 'dh-secret'`); err != nil || tag.RowsAffected() != 0 {
		t.Errorf("vital-platform updated an agent merely shared with it: %d rows, %v", tag.RowsAffected(), err)
	}
	if _, err := dh.Exec(ctx, `UPDATE agents SET deleted_at = now() WHERE name = 'dh-default'`); err != nil {
		t.Errorf("soft delete: %v", err)
	}
	// The sharing audit shows a tenant only its own history.
	if n := scalar[int](t, dh, `SELECT count(*) FROM resource_sharing_audit`); n != 1 {
		t.Errorf("digital-health-startup sees %d audit rows, want its 1", n)
	}
	if n := scalar[int](t, prw, `SELECT count(*) FROM resource_sharing_audit WHERE tenant_id = $1`, dhID); n != 0 {
		t.Errorf("vital-platform sees %d of digital-health-startup's audit rows", n)
	}
	if n := scalar[int](t, padm, `SELECT count(*) FROM resource_sharing_audit WHERE tenant_id = $1`, dhID); n != 1 {
		t.Errorf("the platform admin sees %d of digital-health-startup's audit rows, want 1", n)
	}
	// The platform publishes globally; un-publishing refreshes the view.
	if _, err := prw.Exec(ctx, `UPDATE agents SET sharing_mode = 'global', is_shared = true, resource_type = 'platform'
		WHERE name = 'platform-secret'`); err != nil {
		t.Fatalf("platform publishes an agent: %v", err)
	}
	db.exec(t, `REFRESH MATERIALIZED VIEW mv_platform_shared_resources`)
	if _, err := prw.Exec(ctx, `UPDATE agents SET sharing_mode = 'private', is_shared = false WHERE name = 'platform-secret'`); err != nil {
		t.Fatalf("platform un-publishes an agent: %v", err)
	}
	if n := scalar[int](t, dh, `SELECT count(*) FROM mv_platform_shared_resources WHERE name = 'platform-secret'`); n != 0 {
		t.Error("an agent made private lingers in mv_platform_shared_resources")
	}
	// The seed's user functions only narrow: RLS decides who may use them.
	db.exec(t, `INSERT INTO auth.users (id, email) VALUES ('33333333-3333-3333-3333-333333333333', 'u@example.com')`)
	const user = "33333333-3333-3333-3333-333333333333"
	for _, c := range []struct {
		who  string
		conn *pgx.Conn
		sql  string
		ok   bool
	}{
		{"digital-health-startup", dh, `SELECT grant_platform_admin($1)`, false},
		{"vital-platform rw", prw, `SELECT grant_platform_admin($1)`, false},
		{"vital-platform admin", padm, `SELECT grant_platform_admin($1)`, true},
		{"vital-platform rw", prw, `SELECT assign_user_to_dh_startup($1, 'admin')`, false},
		{"digital-health-startup", dh, `SELECT assign_user_to_dh_startup($1, 'admin')`, true},
	} {
		_, err := c.conn.Exec(ctx, c.sql, user)
		if c.ok && err != nil || !c.ok && sqlState(err) != "42501" {
			t.Errorf("%s: %s: err = %v, want success %v", c.who, c.sql, err, c.ok)
		}
	}
	if !scalar[bool](t, padm, `SELECT is_platform_admin($1::uuid)`, user) || scalar[bool](t, dh, `SELECT is_platform_admin($1::uuid)`, user) {
		t.Error("is_platform_admin(user) must be true for the platform admin and unknown (false) to other tenants")
	}
	// The admin role may write any tenant's rows.
	if tag, err := padm.Exec(ctx, `UPDATE agents SET description = 'reviewed' WHERE name = 'dh-secret'`); err != nil || tag.RowsAffected() != 1 {
		t.Errorf("platform admin update: %d rows, %v", tag.RowsAffected(), err)
	}
}

func TestReadOnlyRoleCannotWrite(t *testing.T) {
	db := isolationDB(t)
	ro := db.tenantLogin(t, "digital-health-startup", "ro")
	ctx := ctxT(t)
	for _, s := range []string{`SET default_transaction_read_only = off`, `SET transaction_read_only = off`} {
		if _, err := ro.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	for _, q := range []string{
		`INSERT INTO agents (name) VALUES ('ro-write')`,
		`UPDATE agents SET description = 'x' WHERE name = 'dh-secret'`,
		`SELECT assign_user_to_dh_startup(gen_random_uuid(), 'admin')`,
		`SET ROLE vital_tenant_writer`,
	} {
		if _, err := ro.Exec(ctx, q); sqlState(err) != "42501" {
			t.Errorf("read-only role: %s: err = %v, want permission denied", q, err)
		}
	}
	if got := visibleAgents(t, ro); got != "dh-secret,platform-shared" {
		t.Errorf("read-only role sees %q", got)
	}
}

func TestCustomAgentLimit(t *testing.T) {
	db := migrated(t)
	dh := db.tenantLogin(t, "digital-health-startup", "rw")
	ctx := ctxT(t)
	if _, err := dh.Exec(ctx, `INSERT INTO agents (name) SELECT 'agent-' || i FROM generate_series(1, 50) i`); err != nil {
		t.Fatalf("50 custom agents: %v", err)
	}
	_, err := dh.Exec(ctx, `INSERT INTO agents (name) VALUES ('agent-51')`)
	if err == nil || sqlState(err) != "23514" ||
		!strings.Contains(err.Error(), `tenant "digital-health-startup" has reached its limit of 50 custom agents`) {
		t.Fatalf("51st agent: err = %v; want the tenant's limit named", err)
	}
	// A soft-deleted agent frees its slot; undeleting it is refused again.
	if _, err := dh.Exec(ctx, `UPDATE agents SET deleted_at = now() WHERE name = 'agent-1'`); err != nil {
		t.Fatal(err)
	}
	if _, err := dh.Exec(ctx, `INSERT INTO agents (name) VALUES ('agent-51')`); err != nil {
		t.Fatalf("after a soft delete: %v", err)
	}
	if _, err := dh.Exec(ctx, `UPDATE agents SET deleted_at = NULL WHERE name = 'agent-1'`); sqlState(err) != "23514" {
		t.Fatalf("undelete beyond the limit: err = %v", err)
	}
	// Concurrent inserts take turns: the second sees the first's rows.
	db.exec(t, `UPDATE agents SET deleted_at = now() WHERE deleted_at IS NULL`)
	other := db.tenantLogin(t, "digital-health-startup", "rw")
	tx, err := dh.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO agents (name) SELECT 'a-' || i FROM generate_series(1, 30) i`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := other.Exec(ctx, `INSERT INTO agents (name) SELECT 'b-' || i FROM generate_series(1, 30) i`)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a concurrent insert did not wait for the first: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; sqlState(err) != "23514" {
		t.Fatalf("concurrent insert past the limit: err = %v", err)
	}
	if n := scalar[int](t, db.admin(t), `SELECT count(*) FROM agents WHERE deleted_at IS NULL`); n != 30 {
		t.Errorf("%d live agents, want 30", n)
	}
	// The platform has no limit.
	db.exec(t, `INSERT INTO agents (tenant_id, name) SELECT (SELECT id FROM tenants WHERE slug = 'vital-platform'), 'p-' || i
		FROM generate_series(1, 60) i`)
}
