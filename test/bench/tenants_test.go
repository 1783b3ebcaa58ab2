package main

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

// TestMain lets the test binary serve as the many-tenants mode's load
// generator, as the bench binary does.
func TestMain(m *testing.M) {
	if os.Getenv(loadgenEnv) == "1" {
		os.Exit(loadgenMain(os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

// clearProxyEnv empties the VITALPROXY_* variables the in-process proxy's
// configuration would read.
func clearProxyEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "VITALPROXY_") {
			t.Setenv(k, "")
		}
	}
}

// TestTenantsSmoke runs the many-tenants mode for one second on four
// tenants with a budget of two server connections: every endpoint that
// starts must complete transactions for every tenant.
func TestTenantsSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL cluster")
	}
	if _, err := pgtest.FindBinDir(); errors.Is(err, pgtest.ErrNoBinaries) {
		t.Skip(err)
	}
	clearProxyEnv(t)
	o := defaultOptions()
	o.tenantMode = true
	o.cases = "T4xC2"
	o.budget = 2
	o.duration = time.Second
	o.repeats = 1
	o.warmup = 0
	o.tenantEndpoints = "vitalproxy-role,vitalproxy-context"
	o.out = filepath.Join(t.TempDir(), "tenants.md")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	rep, err := runTenants(ctx, o, &stdout, &stderr)
	if err != nil {
		t.Fatalf("runTenants: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(strings.Join(rep.Endpoints, ","), roleEndpoint) {
		t.Fatalf("endpoints %v lack %s\n%s", rep.Endpoints, roleEndpoint, stderr.String())
	}
	for _, s := range rep.Skipped {
		if s.Name == roleEndpoint {
			t.Errorf("%s skipped: %s", s.Name, s.Reason)
		}
		t.Logf("skipped: %s", s.Reason)
	}
	ran := map[string]bool{}
	for _, r := range rep.Runs {
		ran[r.Endpoint] = true
		if r.Status != "ok" {
			t.Errorf("%s on %s: %s %s", r.Case, r.Endpoint, r.Status, r.Reason)
			continue
		}
		if r.TPS <= 0 {
			t.Errorf("%s on %s: TPS %v, want > 0", r.Case, r.Endpoint, r.TPS)
		}
		if r.Starved > 0 || r.TenantMin <= 0 {
			t.Errorf("%s on %s: %d tenants got no transaction (tenant TPS min %v)", r.Case, r.Endpoint, r.Starved, r.TenantMin)
		}
		if r.Wrong > 0 {
			t.Errorf("%s on %s: %d unexpected answers: %s", r.Case, r.Endpoint, r.Wrong, r.FirstWrong)
		}
		if !r.HasCPU {
			t.Errorf("%s on %s: no proxy CPU time measured", r.Case, r.Endpoint)
		}
	}
	for _, e := range rep.Endpoints {
		if !ran[e] {
			t.Errorf("endpoint %s has no run", e)
		}
	}
	md, err := os.ReadFile(o.out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "### T4xC2") || !strings.Contains(string(md), "| "+roleEndpoint+" |") {
		t.Errorf("report lacks the case table:\n%s", md)
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", stderr.String())
	}
}

func TestParseTenantCases(t *testing.T) {
	cs, err := parseTenantCases("single, T200xC2,zipf,T3xC1")
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name             string
		tenants, clients int
	}{{"single", 1, 400}, {"T200xC2", 200, 400}, {"zipf", 200, 400}, {"T3xC1", 3, 3}}
	if len(cs) != len(want) {
		t.Fatalf("got %d cases", len(cs))
	}
	for i, w := range want {
		c := cs[i]
		if c.Name != w.name || c.Tenants != w.tenants || c.Clients() != w.clients {
			t.Errorf("case %d: %s %d tenants %d clients, want %+v", i, c.Name, c.Tenants, c.Clients(), w)
		}
		for _, ti := range c.TenantOf {
			if ti < 0 || ti >= c.Tenants {
				t.Fatalf("%s: client tenant %d out of range", c.Name, ti)
			}
		}
	}
	if got := cs[1].ActiveTenants(); got != 200 {
		t.Errorf("T200xC2 active tenants %d", got)
	}
	// Zipf: skewed (the first tenant is the busiest) and the same every run.
	z := cs[2]
	if maxClientsPerTenant(z) < 20 || z.ActiveTenants() >= 200 {
		t.Errorf("zipf not skewed: busiest %d clients, %d active tenants", maxClientsPerTenant(z), z.ActiveTenants())
	}
	again, _ := parseTenantCases("zipf")
	for i := range z.TenantOf {
		if again[0].TenantOf[i] != z.TenantOf[i] {
			t.Fatal("zipf draws differ between runs")
		}
	}
	for _, bad := range []string{"", "T0xC1", "TxC", "many", "single,single"} {
		if _, err := parseTenantCases(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestSelectTenantEndpoints(t *testing.T) {
	got, err := selectTenantEndpoints("direct, vitalproxy-role")
	if err != nil || strings.Join(got, ",") != "vitalproxy-role,direct" {
		t.Errorf("got %v %v", got, err)
	}
	if _, err := selectTenantEndpoints("vitalproxy"); err == nil {
		t.Error("unknown endpoint accepted")
	}
}

func TestPercentile(t *testing.T) {
	v := []uint32{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	if p := percentile(v, 0.5); p != 5 {
		t.Errorf("p50 %v", p)
	}
	if p := percentile(v, 0.99); p != 10 {
		t.Errorf("p99 %v", p)
	}
	if p := percentile(nil, 0.5); !math.IsNaN(p) {
		t.Errorf("empty p50 %v", p)
	}
}

func TestTenantSummary(t *testing.T) {
	rep := &tenantReport{
		Options:   options{repeats: 2},
		Cases:     []tenantCase{{Name: "single"}, {Name: "T2xC1"}},
		Endpoints: []string{roleEndpoint, "vitalproxy-context", peerEndpoint},
		Skipped:   []skippedEndpoint{{Name: "direct", Reason: "direct: skipped: test"}},
	}
	ok := func(c, e string, round int, tps float64) tenantRun {
		return tenantRun{Case: c, Endpoint: e, Round: round, Status: "ok", TPS: tps, Txns: int64(tps), Logins: 3,
			ProxyCPU: time.Duration(tps) * 10 * time.Microsecond, HasCPU: true, PGCPU: time.Duration(tps) * 20 * time.Microsecond,
			TenantMin: 1, TenantMed: 2, TenantMax: 3}
	}
	rep.Runs = []tenantRun{
		ok("single", roleEndpoint, 1, 100), ok("single", "vitalproxy-context", 1, 90), ok("single", peerEndpoint, 1, 120),
		ok("T2xC1", roleEndpoint, 1, 50), ok("T2xC1", "vitalproxy-context", 1, 80), ok("T2xC1", peerEndpoint, 1, 100),
		ok("single", roleEndpoint, 2, 200), ok("single", "vitalproxy-context", 2, 180), ok("single", peerEndpoint, 2, 200),
		ok("T2xC1", roleEndpoint, 2, 60), ok("T2xC1", "vitalproxy-context", 2, 120),
		{Case: "T2xC1", Endpoint: peerEndpoint, Round: 2, Status: "failed", Reason: "boom", Logins: -1},
	}
	rep.summarize()
	find := func(c, e string) tenantSummary {
		for _, r := range rep.Rows {
			if r.Case == c && r.Endpoint == e {
				return r
			}
		}
		t.Fatalf("no row %s %s", c, e)
		return tenantSummary{}
	}
	ctx := find("T2xC1", "vitalproxy-context")
	// Paired with role single: 80/100 and 120/200: median 0.7.
	if math.Abs(ctx.XSingle.Med-0.7) > 1e-9 || ctx.XSingle.N != 2 {
		t.Errorf("x single %+v", ctx.XSingle)
	}
	// Only round 1 has PgBouncer: 80/100.
	if math.Abs(ctx.XPeer.Med-0.8) > 1e-9 || ctx.XPeer.N != 1 {
		t.Errorf("x peer %+v", ctx.XPeer)
	}
	if !ctx.HasCPU || math.Abs(ctx.ProxyCPU-10) > 1e-9 || math.Abs(ctx.PGCPU-20) > 1e-9 || ctx.Logins != 3 {
		t.Errorf("cpu %v pg %v logins %v", ctx.ProxyCPU, ctx.PGCPU, ctx.Logins)
	}
	if p := find("T2xC1", peerEndpoint); p.Failed != 1 || p.TPS != 100 {
		t.Errorf("pgbouncer row %+v", p)
	}
	if d := find("single", "direct"); d.Status != "skipped" {
		t.Errorf("direct row %+v", d)
	}
	md := rep.markdown()
	for _, want := range []string{"### single", "### T2xC1", "| vitalproxy-context | 100 | 0.700 (0.60..0.80) | 0.800 |", "vitalproxy-context T2xC1 runs at 0.700 of one tenant's throughput"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}
