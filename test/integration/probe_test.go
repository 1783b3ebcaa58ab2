package integration_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/migrations/audit"
	"github.com/vitalproxy/vitalproxy/proxy"
)

// probePrefix is the role prefix of the probe tests' databases: roles are
// cluster-wide, and these tests suspend and resume their probe tenants.
const probePrefix = "vt_pr_"

// migratedDatabase returns a fresh migrated database of the fixture's
// cluster.
func migratedDatabase(t testing.TB, f *fixture) string {
	t.Helper()
	ctx := testCtx(t)
	db := f.c.NewDatabase(t)
	m, err := migrations.New(f.c.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Up(ctx)
	m.Close()
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// hasMetric reports whether g exports a series of the metric family name.
func hasMetric(t testing.TB, g prometheus.Gatherer, name string) bool {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return true
		}
	}
	return false
}

func probeRuns(t testing.TB, g prometheus.Gatherer, result string) float64 {
	t.Helper()
	return metricValue(t, g, "vitalproxy_isolation_probe_runs_total", map[string]string{"result": result})
}

func probeOK(t testing.TB, g prometheus.Gatherer) float64 {
	t.Helper()
	return metricValue(t, g, "vitalproxy_isolation_probe_success", nil)
}

// TestIsolationProbe runs the live probe against a database whose probe
// tenants appear, pass, are broken in several ways and are repaired.
func TestIsolationProbe(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	db := migratedDatabase(t, f)
	ctx := testCtx(t)
	admin, err := pgx.Connect(ctx, f.c.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	exec := func(t *testing.T, sql string, args ...any) {
		t.Helper()
		if _, err := admin.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	mgr := tenantroles.New(admin, tenantroles.Options{Secret: f.secret, Prefix: probePrefix})

	cfg := f.configFor(t, f.c, db)
	cfg.RolePrefix = probePrefix
	cfg.Probe.Enabled = true
	cfg.Probe.Interval = 100 * time.Millisecond
	p := startProxy(t, cfg, proxy.WithDirectoryRefresh(100*time.Millisecond))
	g := p.srv.Gatherer()

	// Without the probe tenants the probe says so and does not pass.
	eventually(t, "a not_configured run", func() bool { return probeRuns(t, g, "not_configured") >= 1 })
	if v := probeOK(t, g); v != 0 {
		t.Fatalf("probe success = %v without probe tenants, want 0", v)
	}
	if v := metricValue(t, g, "vitalproxy_isolation_probe_last_success_timestamp_seconds", nil); v != 0 {
		t.Fatalf("last success = %v before any success, want 0", v)
	}

	// Positive control: once the tenants exist (the directory refresh picks
	// them up), the probe passes and its timestamp advances.
	if _, err := mgr.EnsureProbeTenants(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a passing probe", func() bool { return probeOK(t, g) == 1 })
	first := metricValue(t, g, "vitalproxy_isolation_probe_last_success_timestamp_seconds", nil)
	if now := float64(time.Now().Unix()); first < now-60 || first > now+1 {
		t.Fatalf("last success timestamp %v, now %v", first, now)
	}
	eventually(t, "the last-success timestamp to advance", func() bool {
		return metricValue(t, g, "vitalproxy_isolation_probe_last_success_timestamp_seconds", nil) > first
	})
	if n := probeRuns(t, g, "failure") + probeRuns(t, g, "error"); n != 0 {
		t.Fatalf("%v failed runs on a sound database", n)
	}
	// The probe goes through the pool like a client of the probe tenant.
	if v := metricValue(t, g, "vitalproxy_pool_server_connections_opened_total", map[string]string{"tenant": tenantroles.ProbeTenantA}); v < 1 {
		t.Fatalf("no pooled server connection was opened for %s", tenantroles.ProbeTenantA)
	}

	var idA, idB string
	if err := admin.QueryRow(ctx, `SELECT (SELECT id::text FROM public.tenants WHERE slug = $1), (SELECT id::text FROM public.tenants WHERE slug = $2)`,
		tenantroles.ProbeTenantA, tenantroles.ProbeTenantB).Scan(&idA, &idB); err != nil {
		t.Fatal(err)
	}
	canaryB := tenantroles.ProbeCanary(tenantroles.ProbeTenantB)
	breaks := []struct {
		name       string
		breakSQL   []string
		repairSQL  []string
		wantResult string
		suspendB   bool
	}{
		{name: "rls-disabled", wantResult: "failure",
			breakSQL:  []string{`ALTER TABLE public.agents NO FORCE ROW LEVEL SECURITY`, `ALTER TABLE public.agents DISABLE ROW LEVEL SECURITY`},
			repairSQL: []string{`ALTER TABLE public.agents ENABLE ROW LEVEL SECURITY`, `ALTER TABLE public.agents FORCE ROW LEVEL SECURITY`}},
		{name: "canary-shared-globally", wantResult: "failure",
			breakSQL:  []string{`UPDATE public.agents SET is_shared = true, sharing_mode = 'global' WHERE name = '` + canaryB + `'`},
			repairSQL: []string{`UPDATE public.agents SET is_shared = false, sharing_mode = 'private' WHERE name = '` + canaryB + `'`}},
		{name: "permissive-policy", wantResult: "failure",
			breakSQL:  []string{`CREATE POLICY probe_test_leak ON public.agents FOR SELECT USING (true)`},
			repairSQL: []string{`DROP POLICY probe_test_leak ON public.agents`}},
		{name: "own-canary-gone", wantResult: "failure",
			breakSQL:  []string{`UPDATE public.agents SET tenant_id = '` + idA + `' WHERE name = '` + canaryB + `'`},
			repairSQL: []string{`UPDATE public.agents SET tenant_id = '` + idB + `' WHERE name = '` + canaryB + `'`}},
		{name: "probe-tenant-suspended", wantResult: "error", suspendB: true},
	}
	for _, b := range breaks {
		t.Run("detects/"+b.name, func(t *testing.T) {
			eventually(t, "a passing probe before the break", func() bool { return probeOK(t, g) == 1 })
			before := probeRuns(t, g, b.wantResult)
			for _, q := range b.breakSQL {
				exec(t, q)
			}
			if b.suspendB {
				if err := mgr.Suspend(ctx, tenantroles.ProbeTenantB); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, "the probe to notice", func() bool {
				return probeOK(t, g) == 0 && probeRuns(t, g, b.wantResult) > before
			})
			for _, q := range b.repairSQL {
				exec(t, q)
			}
			if b.suspendB {
				if err := mgr.Resume(ctx, tenantroles.ProbeTenantB); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, "the probe to pass after the repair", func() bool { return probeOK(t, g) == 1 })
		})
	}
	if n := probeRuns(t, g, "failure"); n < 4 {
		t.Fatalf("runs_total{failure} = %v, want at least one per isolation break", n)
	}
	problems, err := testutil.GatherAndLint(g, "vitalproxy_isolation_probe_success",
		"vitalproxy_isolation_probe_last_success_timestamp_seconds", "vitalproxy_isolation_probe_runs_total")
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range problems {
		t.Errorf("lint %s: %s", pr.Metric, pr.Text)
	}
}

// TestAuditSchedule checks that serve re-runs the isolation audit every
// audit.interval and exports each check, so a database that is weakened
// while the proxy runs shows up in vitalproxy_isolation_check.
func TestAuditSchedule(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	db := migratedDatabase(t, f)
	cfg := f.configFor(t, f.c, db)
	cfg.Audit.Interval = 100 * time.Millisecond
	p := startProxy(t, cfg)
	g := p.srv.Gatherer()
	ctx := testCtx(t)
	check := func(name string) float64 {
		return metricValue(t, g, "vitalproxy_isolation_check", map[string]string{"check": name})
	}
	runs := func(result string) float64 {
		return metricValue(t, g, "vitalproxy_audit_runs_total", map[string]string{"result": result})
	}

	// At start: every check exported and passing.
	for _, name := range []string{audit.TenantRolesSafe, audit.GroupRolesSafe, audit.TenantTablesRLS, audit.TenantTablesOwner,
		audit.ViewsSecurityInvoker, audit.DefinerSearchPath, audit.MaterializedViewsShared, audit.TenantPrivileges, audit.VitalSchemaPrivate} {
		if v := check(name); v != 1 {
			t.Errorf("isolation_check{check=%q} = %v at start, want 1", name, v)
		}
	}
	// On a schedule.
	eventually(t, "scheduled audits", func() bool { return runs("pass") >= 3 })

	tests := []struct {
		name          string
		breakSQL, fix string
		check         string
	}{
		{"rls-not-forced", `ALTER TABLE public.agents NO FORCE ROW LEVEL SECURITY`, `ALTER TABLE public.agents FORCE ROW LEVEL SECURITY`, audit.TenantTablesRLS},
		{"tenant-truncate", `GRANT TRUNCATE ON public.agents TO vital_tenant`, `REVOKE TRUNCATE ON public.agents FROM vital_tenant`, audit.TenantPrivileges},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			failed := runs("fail")
			if err := f.c.Exec(ctx, db, tc.breakSQL); err != nil {
				t.Fatal(err)
			}
			eventually(t, fmt.Sprintf("check %s to fail", tc.check), func() bool { return check(tc.check) == 0 && runs("fail") > failed })
			if err := f.c.Exec(ctx, db, tc.fix); err != nil {
				t.Fatal(err)
			}
			eventually(t, fmt.Sprintf("check %s to pass again", tc.check), func() bool { return check(tc.check) == 1 })
		})
	}
	// The probe is off by default and then exports nothing to alert on.
	for _, name := range []string{"vitalproxy_isolation_probe_success", "vitalproxy_isolation_probe_runs_total"} {
		if hasMetric(t, g, name) {
			t.Errorf("%s is exported although the probe is disabled", name)
		}
	}
}
