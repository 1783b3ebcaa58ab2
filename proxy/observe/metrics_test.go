package observe

import (
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vitalproxy/vitalproxy/migrations/audit"
)

func TestTenantLabelsCap(t *testing.T) {
	l := newTenantLabels(2)
	got := []string{l.label("a"), l.label("b"), l.label("c"), l.label("a"), l.label("d")}
	want := []string{"a", "b", otherTenant, "a", otherTenant}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("labels %v, want %v", got, want)
	}
	var wg sync.WaitGroup
	l = newTenantLabels(10)
	for i := range 50 {
		wg.Add(1)
		go func() { defer wg.Done(); l.label(string(rune('a' + i%26))) }()
	}
	wg.Wait()
	if len(l.seen) != 10 {
		t.Fatalf("seen %d tenants, cap 10", len(l.seen))
	}
}

func TestMetricsLintAndValues(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, 1, "v1.2.3")
	tm := m.ForTenant("digital-health-startup")
	other := m.ForTenant("vital-platform")
	tm.Connections.Inc()
	tm.C2S.Add(10)
	other.S2C.Add(5)
	m.CancelRequest(CancelUnknown)
	m.ConnectionAttempt("auth_failed")
	m.SessionSetup(10 * time.Millisecond)
	m.IsolationChecks([]audit.Check{{Name: "tenant_roles_safe", OK: true}})

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	checks := []struct {
		c    prometheus.Collector
		want float64
	}{
		{m.bytes.WithLabelValues("digital-health-startup", dirClientToServer), 10},
		{m.bytes.WithLabelValues(otherTenant, dirServerToClient), 5},
		{m.clientConnections.WithLabelValues("digital-health-startup"), 1},
		{m.cancelRequests.WithLabelValues("unknown"), 1},
		{m.cancelRequests.WithLabelValues("forwarded"), 0},
		{m.connectionAttempts.WithLabelValues("auth_failed"), 1},
		{m.isolationCheck.WithLabelValues("tenant_roles_safe"), 1},
	}
	for i, c := range checks {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("check %d: got %v, want %v", i, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.buildInfo); n != 1 {
		t.Errorf("build_info series = %d", n)
	}
	const want = `
# HELP vitalproxy_build_info Build information; always 1.
# TYPE vitalproxy_build_info gauge
`
	if err := testutil.CollectAndCompare(m.buildInfo, strings.NewReader(want+buildInfoLine())); err != nil {
		t.Error(err)
	}
}

func buildInfoLine() string {
	return `vitalproxy_build_info{goversion="` + runtime.Version() + `",version="v1.2.3"} 1` + "\n"
}
