package isolation_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/migrations/audit"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

// cluster is the package's throwaway PostgreSQL. It is started by TestMain
// rather than pgtest.Main because it loads pg_stat_statements, which many
// production servers do and which the suite attacks too.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: []string{
		"shared_preload_libraries = 'pg_stat_statements'",
		"pg_stat_statements.max = 20000",
		"pg_stat_statements.track_utility = off",
	}})
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: cannot start PostgreSQL: %v\n", err)
		os.Exit(1)
	}
	cluster = c
	code := m.Run()
	c.Stop()
	os.Exit(code)
}

// rolePrefix starts the tenant login roles of the fixture.
const rolePrefix = "vt_"

// resourceTables are the tenant resource tables; each gets private markers.
var resourceTables = []string{"agents", "tools", "prompts", "workflows"}

// agentLimit is tenants.limits.max_agents of tenants A and B, so that the
// agent quota trigger (and the advisory lock it takes) is in play.
const agentLimit = 1000

// tenant is one fixture tenant and what it wrote.
type tenant struct {
	label string // "A", "B" or "C"
	slug  string
	name  string
	id    string
	// prefix starts every text marker of the tenant's private rows; the
	// tenant name is prefix-based too.
	prefix string
	// privateIDs are the ids of rows no other tenant may see, by table
	// (resource tables: the private row and the row shared with tenant C
	// only; user_tenants, user_roles).
	privateIDs map[string][]string
	// userID is the tenant's user (auth.users): its membership and role rows
	// are private to the tenant.
	userID string
	// sharedPeerID and sharedPeerName are an agents row the tenant shares
	// with its peer (A with B, B with A): visible to the peer by design, so
	// not a marker. Disturbance cases try to lock it.
	sharedPeerID, sharedPeerName string
}

// role returns the tenant's login role for capability c.
func (t *tenant) role(c auth.Capability) string { return auth.RoleName(rolePrefix, t.slug, c) }

// markers returns every marker of the tenant's private data: its text
// prefix and the ids of its private rows and user.
func (t *tenant) markers() []string {
	out := []string{t.prefix, t.userID}
	for _, tbl := range []string{"agents", "tools", "prompts", "workflows", "user_tenants", "user_roles"} {
		out = append(out, t.privateIDs[tbl]...)
	}
	return out
}

// fixture is the migrated database shared by the package's tests.
type fixture struct {
	c      *pgtest.Cluster
	db     string
	secret []byte
	a, b   *tenant
	// third is tenant C: A and B share rows with it only, so those rows stay
	// private between A and B.
	third *tenant
}

// adminURL is the superuser URL of the fixture database. Only controls and
// cleanup use it, never an attack.
func (f *fixture) adminURL() string { return f.c.URL(f.db) }

// rolePassword returns the derived password of a tenant login role.
func (f *fixture) rolePassword(role string) string { return auth.RolePassword(f.secret, role) }

var (
	fixtureOnce sync.Once
	sharedFx    *fixture
	sharedFxErr error
)

// getFixture returns the shared fixture, building it on first use.
func getFixture(t testing.TB) *fixture {
	t.Helper()
	c := cluster
	if c == nil {
		t.Fatal("no cluster: TestMain did not run")
	}
	fixtureOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		sharedFx, sharedFxErr = buildFixture(ctx, c)
	})
	if sharedFxErr != nil {
		t.Fatalf("fixture: %v", sharedFxErr)
	}
	return sharedFx
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func buildFixture(ctx context.Context, c *pgtest.Cluster) (*fixture, error) {
	db, err := c.CreateDatabase(ctx, "isolation")
	if err != nil {
		return nil, err
	}
	f := &fixture{c: c, db: db, secret: []byte("isolation-suite-role-secret-" + randomHex(8))}
	// pg_stat_statements is installed before the migrations, as on a server
	// that loads it: migration 20251026000005 then closes it to tenants. An
	// extension installed later is the audit's to report
	// (shared_stats_private; see migrations/audit).
	if err := c.Exec(ctx, db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		return nil, fmt.Errorf("create extension pg_stat_statements: %w", err)
	}
	m, err := migrations.New(f.adminURL())
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	_, err = m.Up(ctx)
	m.Close()
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	admin, err := pgx.Connect(ctx, f.adminURL())
	if err != nil {
		return nil, err
	}
	defer admin.Close(context.Background())

	mk := func(label, slug string) *tenant {
		p := "iso" + label + randomHex(6)
		return &tenant{label: label, slug: slug, name: "Tenant " + p, prefix: p, privateIDs: map[string][]string{}}
	}
	f.a, f.b, f.third = mk("A", "tenant-a"), mk("B", "tenant-b"), mk("C", "tenant-c")
	tr := tenantroles.New(admin, tenantroles.Options{Secret: f.secret, Prefix: rolePrefix})
	for _, t := range []*tenant{f.a, f.b, f.third} {
		got, err := tr.Add(ctx, tenantroles.Spec{Slug: t.slug, Name: t.name, Type: tenantroles.TypeClient})
		if err != nil {
			return nil, fmt.Errorf("add tenant %s: %w", t.slug, err)
		}
		t.id = got.ID
	}
	if _, err := tr.Sync(ctx); err != nil {
		return nil, fmt.Errorf("tenant sync: %w", err)
	}
	if _, err := admin.Exec(ctx, `UPDATE public.tenants SET limits = jsonb_build_object('max_agents', $1::int)
		WHERE id = ANY ($2::uuid[])`, agentLimit, []string{f.a.id, f.b.id}); err != nil {
		return nil, fmt.Errorf("set agent limits: %w", err)
	}
	for _, t := range []*tenant{f.a, f.b} {
		if err := admin.QueryRow(ctx, `INSERT INTO auth.users (email) VALUES ($1) RETURNING id::text`,
			t.prefix+"@example.invalid").Scan(&t.userID); err != nil {
			return nil, fmt.Errorf("create user: %w", err)
		}
	}
	if err := writeMarkers(ctx, f, f.a, f.b); err != nil {
		return nil, err
	}
	if err := writeMarkers(ctx, f, f.b, f.a); err != nil {
		return nil, err
	}
	// Statistics for the pg_stats case: most_common_vals and histograms of
	// the resource tables now hold every tenant's names.
	if _, err := admin.Exec(ctx, "ANALYZE"); err != nil {
		return nil, fmt.Errorf("analyze: %w", err)
	}
	// The suite attacks a database that passes the isolation audit, as the
	// proxy requires before it serves.
	checks, err := audit.Run(ctx, admin, rolePrefix)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if audit.Failed(checks) > 0 {
		return nil, fmt.Errorf("the fixture database fails the isolation audit: %v", checks)
	}
	return f, nil
}

// writeMarkers writes t's marker rows through t's own read-write role, so
// that RLS's WITH CHECK and the column defaults (tenant_id =
// current_tenant_id()) are what put them there.
func writeMarkers(ctx context.Context, f *fixture, t, peer *tenant) error {
	role := t.role(auth.ReadWrite)
	conn, err := pgx.Connect(ctx, f.c.URLFor(role, f.rolePassword(role), f.db))
	if err != nil {
		return fmt.Errorf("connect as %s: %w", role, err)
	}
	defer conn.Close(context.Background())
	for _, tbl := range resourceTables {
		var id string
		q := fmt.Sprintf(`INSERT INTO public.%s (name, description) VALUES ($1, $2) RETURNING id::text`, tbl)
		if err := conn.QueryRow(ctx, q, t.prefix+"-"+tbl+"-private", t.prefix+"-"+tbl+"-description").Scan(&id); err != nil {
			return fmt.Errorf("%s: insert private %s: %w", t.slug, tbl, err)
		}
		t.privateIDs[tbl] = append(t.privateIDs[tbl], id)
		// Shared with tenant C only: still private to the peer, and it
		// gives the tenant rows in resource_sharing_audit.
		q = fmt.Sprintf(`INSERT INTO public.%s (name, description, is_shared, sharing_mode, shared_with)
			VALUES ($1, $2, true, 'tenants', ARRAY[$3::uuid]) RETURNING id::text`, tbl)
		if err := conn.QueryRow(ctx, q, t.prefix+"-"+tbl+"-shared-c", t.prefix+"-"+tbl+"-shared-c-description",
			f.third.id).Scan(&id); err != nil {
			return fmt.Errorf("%s: insert shared %s: %w", t.slug, tbl, err)
		}
		t.privateIDs[tbl] = append(t.privateIDs[tbl], id)
	}
	t.sharedPeerName = "peer" + randomHex(6) + "-shared-by-" + t.label
	if err := conn.QueryRow(ctx, `INSERT INTO public.agents (name, is_shared, sharing_mode, shared_with)
		VALUES ($1, true, 'tenants', ARRAY[$2::uuid]) RETURNING id::text`, t.sharedPeerName, peer.id).Scan(&t.sharedPeerID); err != nil {
		return fmt.Errorf("%s: insert agent shared with peer: %w", t.slug, err)
	}
	var id string
	if err := conn.QueryRow(ctx, `INSERT INTO public.user_tenants (user_id, role) VALUES ($1, 'admin') RETURNING id::text`,
		t.userID).Scan(&id); err != nil {
		return fmt.Errorf("%s: insert user_tenants: %w", t.slug, err)
	}
	t.privateIDs["user_tenants"] = []string{id}
	if err := conn.QueryRow(ctx, `INSERT INTO public.user_roles (user_id, role) VALUES ($1, 'editor') RETURNING id::text`,
		t.userID).Scan(&id); err != nil {
		return fmt.Errorf("%s: insert user_roles: %w", t.slug, err)
	}
	t.privateIDs["user_roles"] = []string{id}
	return nil
}
