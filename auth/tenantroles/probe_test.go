package tenantroles_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
)

// canariesSeenBy logs in as role and returns the probe canaries it sees.
func (e *env) canariesSeenBy(t *testing.T, role string) []string {
	t.Helper()
	pc := e.mustLogin(t, role)
	res := pc.Exec(context.Background(), `SELECT name FROM public.agents WHERE name LIKE '`+tenantroles.ProbeCanaryPrefix+`%' ORDER BY name`)
	rs, err := res.ReadAll()
	if err != nil {
		t.Fatalf("as %s: %v", role, err)
	}
	var out []string
	for _, r := range rs {
		for _, row := range r.Rows {
			out = append(out, string(row[0]))
		}
	}
	return out
}

func TestEnsureProbeTenants(t *testing.T) {
	e := setup(t)
	ctx := context.Background()

	rep, err := e.m.EnsureProbeTenants(ctx)
	if err != nil {
		t.Fatalf("EnsureProbeTenants: %v", err)
	}
	for _, want := range []string{
		"added probe tenant " + tenantroles.ProbeTenantA,
		"added probe tenant " + tenantroles.ProbeTenantB,
		"probe tenant " + tenantroles.ProbeTenantA + ": inserted canary agent " + tenantroles.ProbeCanary(tenantroles.ProbeTenantA),
		"probe tenant " + tenantroles.ProbeTenantB + ": inserted canary agent " + tenantroles.ProbeCanary(tenantroles.ProbeTenantB),
	} {
		if !slices.ContainsFunc(rep.Changes, func(c string) bool { return strings.HasPrefix(c, want) }) {
			t.Errorf("changes %q lack %q", rep.Changes, want)
		}
	}
	for _, slug := range tenantroles.ProbeTenants() {
		ten, err := e.m.Get(ctx, slug)
		if err != nil {
			t.Fatal(err)
		}
		if ten.Type != tenantroles.TypeClient || ten.Status != tenantroles.StatusActive || len(ten.Roles) != 2 {
			t.Errorf("probe tenant %+v, want an active client tenant with two roles", ten)
		}
		if n := e.count(t, `SELECT count(*) FROM public.agents WHERE tenant_id = $1 AND name = $2
			AND sharing_mode = 'private' AND NOT is_shared AND deleted_at IS NULL`, ten.ID, tenantroles.ProbeCanary(slug)); n != 1 {
			t.Errorf("%s: %d private canaries, want 1", slug, n)
		}
	}

	t.Run("idempotent", func(t *testing.T) {
		rep, err := e.m.EnsureProbeTenants(ctx)
		if err != nil || len(rep.Changes) != 0 {
			t.Fatalf("second run: %q, %v; want no change", rep.Changes, err)
		}
		rep, err = e.m.Sync(ctx)
		if err != nil || len(rep.Changes) != 0 {
			t.Fatalf("sync after ensure: %q, %v; want no change", rep.Changes, err)
		}
	})

	// Through each probe tenant's own roles, RLS shows its canary only.
	isolated := func(t *testing.T) {
		t.Helper()
		for _, slug := range tenantroles.ProbeTenants() {
			for _, c := range []auth.Capability{auth.ReadOnly, auth.ReadWrite} {
				role := auth.RoleName(e.prefix, slug, c)
				got := e.canariesSeenBy(t, role)
				if want := []string{tenantroles.ProbeCanary(slug)}; !slices.Equal(got, want) {
					t.Errorf("%s sees %q, want %q", role, got, want)
				}
			}
		}
	}
	t.Run("isolated", isolated)

	drift := []struct {
		name, sql string
		slug      string
	}{
		{"shared-globally", `UPDATE public.agents SET is_shared = true, sharing_mode = 'global' WHERE name = $1`, tenantroles.ProbeTenantB},
		{"shared-with-tenants", `UPDATE public.agents SET is_shared = true, sharing_mode = 'tenants',
			shared_with = ARRAY[(SELECT id FROM public.tenants WHERE slug = '` + tenantroles.ProbeTenantA + `')] WHERE name = $1`, tenantroles.ProbeTenantB},
		{"soft-deleted", `UPDATE public.agents SET deleted_at = now() WHERE name = $1`, tenantroles.ProbeTenantA},
		{"platform-resource", `UPDATE public.agents SET resource_type = 'platform' WHERE name = $1`, tenantroles.ProbeTenantA},
		{"deleted", `DELETE FROM public.agents WHERE name = $1`, tenantroles.ProbeTenantB},
	}
	for _, d := range drift {
		t.Run("repairs/"+d.name, func(t *testing.T) {
			e.exec(t, d.sql, tenantroles.ProbeCanary(d.slug))
			rep, err := e.m.EnsureProbeTenants(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Changes) != 1 || !strings.HasPrefix(rep.Changes[0], "probe tenant "+d.slug+": ") {
				t.Fatalf("changes %q, want one change of %s's canary", rep.Changes, d.slug)
			}
			if rep, err := e.m.EnsureProbeTenants(ctx); err != nil || len(rep.Changes) != 0 {
				t.Fatalf("run after repair: %q, %v", rep.Changes, err)
			}
			isolated(t)
		})
	}

	t.Run("sees-leak-when-rls-is-off", func(t *testing.T) {
		// The canaries are what the probe looks at: with RLS off, a probe
		// tenant's role sees the other's canary. This is the failure the
		// proxy's probe exists to catch.
		e.exec(t, `ALTER TABLE public.agents NO FORCE ROW LEVEL SECURITY`)
		e.exec(t, `ALTER TABLE public.agents DISABLE ROW LEVEL SECURITY`)
		t.Cleanup(func() {
			e.exec(t, `ALTER TABLE public.agents ENABLE ROW LEVEL SECURITY`)
			e.exec(t, `ALTER TABLE public.agents FORCE ROW LEVEL SECURITY`)
		})
		role := auth.RoleName(e.prefix, tenantroles.ProbeTenantA, auth.ReadOnly)
		if got := e.canariesSeenBy(t, role); len(got) != 2 {
			t.Fatalf("%s sees %q with RLS off, want both canaries", role, got)
		}
	})
}

func TestEnsureProbeTenantsNeedsSecret(t *testing.T) {
	e := setup(t)
	m := tenantroles.New(e.conn, tenantroles.Options{Prefix: e.prefix})
	if _, err := m.EnsureProbeTenants(context.Background()); !errors.Is(err, tenantroles.ErrNoSecret) {
		t.Fatalf("err = %v, want ErrNoSecret", err)
	}
	if n := e.count(t, `SELECT count(*) FROM public.tenants WHERE slug LIKE 'vitalproxy-probe-%'`); n != 0 {
		t.Fatalf("%d probe tenants were created by a refused run", n)
	}
}
