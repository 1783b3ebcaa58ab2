package migrations

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/migrations/audit"
)

// Names of the seed verification checks Verify runs before the audit.
const (
	// CheckSeedTenants: the two MVP tenants exist with the seed's type,
	// tier and status.
	CheckSeedTenants = "seed_tenants"
	// CheckSeedPlatformAgents: no live agent is left without a tenant, and
	// every platform agent belongs to the platform tenant and is shared
	// globally.
	CheckSeedPlatformAgents = "seed_platform_agents_shared"
	// CheckSeedPolicies: the sixteen <table>_<command>_with_sharing policies.
	CheckSeedPolicies = "seed_sharing_policies"
	// CheckSeedTenantContext: acting as a digital-health-startup role,
	// set_tenant_context works and every platform agent is visible, both
	// directly and through get_accessible_agents.
	CheckSeedTenantContext = "seed_tenant_context"
	// CheckSeedIsolation: a private digital-health-startup agent is visible
	// to that tenant, invisible to the platform tenant's read-write role and
	// visible to the platform admin role.
	CheckSeedIsolation = "seed_rls_isolation"
	// CheckSeedForgery: a tenant role asking for another tenant's context
	// is refused with SQLSTATE 42501.
	CheckSeedForgery = "seed_context_forgery_refused"
)

const (
	platformSlug = "vital-platform"
	dhSlug       = "digital-health-startup"
)

// Verify runs the seed document's post-migration verification and then the
// isolation audit (audit.Run), returning every check in order. The
// role-based checks run inside a transaction that is rolled back: it creates
// NOLOGIN roles mapped to the two MVP tenants and acts as them with SET
// LOCAL SESSION AUTHORIZATION, so session_user, current_tenant_id() and RLS
// behave exactly as for real tenant logins. That needs a superuser
// connection; without one those checks fail and say so. The error is only
// for a connection that fails.
func (m *Migrator) Verify(ctx context.Context) ([]audit.Check, error) {
	conn, err := m.Connect(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	checks, err := seedChecks(ctx, conn)
	if err != nil {
		return checks, err
	}
	more, err := audit.Run(ctx, conn, m.prefix)
	return append(checks, more...), err
}

// seedChecks runs the seed verification on conn.
func seedChecks(ctx context.Context, conn *pgx.Conn) ([]audit.Check, error) {
	var out []audit.Check
	for _, c := range []struct {
		name string
		fn   func(context.Context, *pgx.Conn) (string, error)
	}{
		{CheckSeedTenants, checkSeedTenants},
		{CheckSeedPlatformAgents, checkPlatformAgents},
		{CheckSeedPolicies, checkSharingPolicies},
	} {
		problem, err := c.fn(ctx, conn)
		if err != nil {
			if conn.IsClosed() || ctx.Err() != nil {
				return out, fmt.Errorf("verify %s: %s", c.name, oneLine(err))
			}
			problem = "could not be checked: " + oneLine(err)
		}
		out = append(out, audit.Check{Name: c.name, OK: problem == "", Detail: problem})
	}
	roleChecks, err := tenantRoleChecks(ctx, conn)
	if err != nil && (conn.IsClosed() || ctx.Err() != nil) {
		return out, fmt.Errorf("verify: %s", oneLine(err))
	}
	return append(out, roleChecks...), nil
}

func checkSeedTenants(ctx context.Context, conn *pgx.Conn) (string, error) {
	want := map[string]string{
		platformSlug: "platform/enterprise/active",
		dhSlug:       "industry/professional/active",
	}
	rows, err := conn.Query(ctx, `SELECT slug, type || '/' || subscription_tier || '/' || status
		FROM public.tenants WHERE slug = ANY ($1)`, []string{platformSlug, dhSlug})
	if err != nil {
		return "", err
	}
	got := map[string]string{}
	var slug, fields string
	if _, err := pgx.ForEachRow(rows, []any{&slug, &fields}, func() error { got[slug] = fields; return nil }); err != nil {
		return "", err
	}
	var problems []string
	for _, s := range []string{platformSlug, dhSlug} {
		switch g, ok := got[s]; {
		case !ok:
			problems = append(problems, fmt.Sprintf("tenant %s is missing", s))
		case g != want[s]:
			problems = append(problems, fmt.Sprintf("tenant %s is %s, want %s (type/tier/status)", s, g, want[s]))
		}
	}
	return strings.Join(problems, "; "), nil
}

func checkPlatformAgents(ctx context.Context, conn *pgx.Conn) (string, error) {
	var unassigned, platform, notShared int64
	err := conn.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE a.tenant_id IS NULL),
		       count(*) FILTER (WHERE a.resource_type = 'platform'),
		       count(*) FILTER (WHERE a.resource_type = 'platform'
		                        AND NOT (a.is_shared AND a.sharing_mode = 'global'
		                                 AND a.tenant_id IS NOT DISTINCT FROM (SELECT id FROM public.tenants WHERE slug = $1)))
		  FROM public.agents a
		 WHERE a.deleted_at IS NULL`, platformSlug).Scan(&unassigned, &platform, &notShared)
	if err != nil {
		return "", err
	}
	var problems []string
	if unassigned > 0 {
		problems = append(problems, fmt.Sprintf("%d live agents have no tenant", unassigned))
	}
	if notShared > 0 {
		problems = append(problems, fmt.Sprintf("%d of %d platform agents are not owned by %s and shared globally", notShared, platform, platformSlug))
	}
	return strings.Join(problems, "; "), nil
}

func checkSharingPolicies(ctx context.Context, conn *pgx.Conn) (string, error) {
	var want []string
	for _, t := range []string{"agents", "prompts", "tools", "workflows"} {
		for _, cmd := range []string{"delete", "insert", "select", "update"} {
			want = append(want, "public."+t+"."+t+"_"+cmd+"_with_sharing")
		}
	}
	rows, err := conn.Query(ctx, `
		SELECT schemaname || '.' || tablename || '.' || policyname
		  FROM pg_catalog.pg_policies WHERE policyname LIKE '%\_with\_sharing' ORDER BY 1`)
	if err != nil {
		return "", err
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", err
	}
	if slices.Equal(got, want) {
		return "", nil
	}
	var missing []string
	for _, w := range want {
		if !slices.Contains(got, w) {
			missing = append(missing, w)
		}
	}
	return fmt.Sprintf("%d *_with_sharing policies, want 16; missing: %s", len(got), strings.Join(missing, ", ")), nil
}

// tenantRoleChecks runs the seed's "Test Tenant Context" and "Test RLS
// Isolation" as tenant roles, inside a transaction that is rolled back.
func tenantRoleChecks(ctx context.Context, conn *pgx.Conn) ([]audit.Check, error) {
	names := []string{CheckSeedTenantContext, CheckSeedIsolation, CheckSeedForgery}
	failAll := func(detail string) []audit.Check {
		out := make([]audit.Check, len(names))
		for i, n := range names {
			out[i] = audit.Check{Name: n, Detail: detail}
		}
		return out
	}
	var super bool
	if err := conn.QueryRow(ctx, `SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = session_user`).Scan(&super); err != nil {
		return failAll("could not be checked: " + oneLine(err)), err
	}
	if !super {
		return failAll("needs a superuser connection: it acts as tenant roles with SET SESSION AUTHORIZATION"), nil
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return failAll("could not be checked: " + oneLine(err)), err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // rolling back is the point
	v := &verifier{tx: tx}
	if err := v.setup(ctx); err != nil {
		return failAll("could not be checked: " + oneLine(err)), err
	}
	return []audit.Check{
		v.check(ctx, CheckSeedTenantContext, v.tenantContext),
		v.check(ctx, CheckSeedIsolation, v.isolation),
		v.check(ctx, CheckSeedForgery, v.forgery),
	}, nil
}

// verifier holds the state of the rolled-back verification transaction.
type verifier struct {
	tx                     pgx.Tx
	dh, platform           string // tenant ids
	dhRole, rwRole, adRole string // impersonated roles
	platformGlobal         int64
	agent                  string // name of the private test agent
	broken                 bool   // an earlier step failed; the transaction is unusable
}

func (v *verifier) setup(ctx context.Context) error {
	err := v.tx.QueryRow(ctx, `SELECT (SELECT id::text FROM public.tenants WHERE slug = $1),
		(SELECT id::text FROM public.tenants WHERE slug = $2)`, dhSlug, platformSlug).Scan(&v.dh, &v.platform)
	if err != nil {
		return fmt.Errorf("the MVP tenants %s and %s are missing", dhSlug, platformSlug)
	}
	suffix := randomHex(4)
	v.dhRole, v.rwRole, v.adRole = "vital_verify_"+suffix+"_dh_rw", "vital_verify_"+suffix+"_platform_rw", "vital_verify_"+suffix+"_platform_admin"
	v.agent = "test-private-agent-" + suffix
	for _, r := range []struct{ role, tenant, capability string }{
		{v.dhRole, v.dh, "rw"}, {v.rwRole, v.platform, "rw"}, {v.adRole, v.platform, "admin"},
	} {
		ident := pgx.Identifier{r.role}.Sanitize()
		if _, err := v.tx.Exec(ctx, `CREATE ROLE `+ident+` NOLOGIN`); err != nil {
			return err
		}
		if _, err := v.tx.Exec(ctx, `GRANT vital_tenant_writer TO `+ident); err != nil {
			return err
		}
		if _, err := v.tx.Exec(ctx, `INSERT INTO vital.tenant_roles (role_name, tenant_id, capability) VALUES ($1, $2, $3)`,
			r.role, r.tenant, r.capability); err != nil {
			return err
		}
	}
	return v.tx.QueryRow(ctx, `SELECT count(*) FROM public.agents
		WHERE tenant_id = $1 AND is_shared AND sharing_mode = 'global' AND deleted_at IS NULL`, v.platform).Scan(&v.platformGlobal)
}

// check runs fn, turning an error into a failed check.
func (v *verifier) check(ctx context.Context, name string, fn func(context.Context) (string, error)) audit.Check {
	if v.broken {
		return audit.Check{Name: name, Detail: "not checked: an earlier step failed"}
	}
	problem, err := fn(ctx)
	if err != nil {
		v.broken = true
		problem = oneLine(err)
	}
	return audit.Check{Name: name, OK: problem == "", Detail: problem}
}

// as makes role the session user (and current user) of the transaction and
// asserts its tenant context.
func (v *verifier) as(ctx context.Context, role, tenant string) error {
	if _, err := v.tx.Exec(ctx, `SET LOCAL SESSION AUTHORIZATION `+pgx.Identifier{role}.Sanitize()); err != nil {
		return err
	}
	_, err := v.tx.Exec(ctx, `SELECT public.set_tenant_context($1)`, tenant)
	return err
}

func (v *verifier) countAgent(ctx context.Context) (int64, error) {
	var n int64
	err := v.tx.QueryRow(ctx, `SELECT count(*) FROM public.agents WHERE name = $1`, v.agent).Scan(&n)
	return n, err
}

func (v *verifier) tenantContext(ctx context.Context) (string, error) {
	if err := v.as(ctx, v.dhRole, v.dh); err != nil {
		return "", err
	}
	var accessible, visible int64
	err := v.tx.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM public.get_accessible_agents($1) WHERE tenant_id = $2),
		(SELECT count(*) FROM public.agents WHERE tenant_id = $2 AND is_shared AND sharing_mode = 'global' AND deleted_at IS NULL)`,
		v.dh, v.platform).Scan(&accessible, &visible)
	if err != nil {
		return "", err
	}
	if accessible != v.platformGlobal || visible != v.platformGlobal {
		return fmt.Sprintf("%s sees %d platform agents (%d through get_accessible_agents), want %d",
			dhSlug, visible, accessible, v.platformGlobal), nil
	}
	return "", nil
}

func (v *verifier) isolation(ctx context.Context) (string, error) {
	if err := v.as(ctx, v.dhRole, v.dh); err != nil {
		return "", err
	}
	_, err := v.tx.Exec(ctx, `INSERT INTO public.agents (tenant_id, name, display_name, description, system_prompt,
		model, capabilities, is_shared, sharing_mode, resource_type)
		VALUES ($1, $2, 'Test Private Agent', 'Private agent for testing', 'You are a test agent',
		        'gpt-4', ARRAY['testing'], false, 'private', 'custom')`, v.dh, v.agent)
	if err != nil {
		return "", fmt.Errorf("insert the private test agent as %s: %w", dhSlug, err)
	}
	var problems []string
	for _, step := range []struct {
		who, role, tenant string
		want              int64
	}{
		{dhSlug, v.dhRole, v.dh, 1},
		{platformSlug + " (read-write role)", v.rwRole, v.platform, 0},
		{platformSlug + " (platform admin role)", v.adRole, v.platform, 1},
	} {
		if err := v.as(ctx, step.role, step.tenant); err != nil {
			return "", err
		}
		n, err := v.countAgent(ctx)
		if err != nil {
			return "", err
		}
		if n != step.want {
			problems = append(problems, fmt.Sprintf("%s sees %d copies of the private %s agent, want %d", step.who, n, dhSlug, step.want))
		}
	}
	return strings.Join(problems, "; "), nil
}

func (v *verifier) forgery(ctx context.Context) (string, error) {
	if err := v.as(ctx, v.dhRole, v.dh); err != nil {
		return "", err
	}
	if _, err := v.tx.Exec(ctx, `SAVEPOINT forgery`); err != nil {
		return "", err
	}
	_, err := v.tx.Exec(ctx, `SELECT public.set_tenant_context($1)`, v.platform)
	if _, rerr := v.tx.Exec(ctx, `ROLLBACK TO SAVEPOINT forgery`); rerr != nil {
		return "", rerr
	}
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return fmt.Sprintf("a %s role was allowed to set the %s context", dhSlug, platformSlug), nil
	case !errors.As(err, &pgErr) || pgErr.Code != "42501":
		return "set_tenant_context failed, but not with SQLSTATE 42501: " + oneLine(err), nil
	}
	return "", nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return hex.EncodeToString(b)
}
