package monitoring_test

import (
	"testing"

	"github.com/vitalproxy/vitalproxy/internal/docgen"
)

// TestDocsMetrics checks the metric table of docs/metrics.md against the
// registry of a running proxy: every family it registers, with the type,
// help and labels it exports. The proxy has a standby as a second upstream
// host, so the topology checker's series are among them.
func TestDocsMetrics(t *testing.T) {
	srv, clientURL := startProxy(t, true)
	reg, ok := srv.Gatherer().(docgen.Registry)
	if !ok {
		t.Fatalf("the server's gatherer %T does not describe its collectors", srv.Gatherer())
	}
	produceTraffic(t, reg, clientURL)
	// Some series appear a little later: a session's end is counted after
	// its client has gone, the probe's after its first run.
	var (
		families []docgen.MetricFamily
		err      error
	)
	waitFor(t, "a series of every metric family", func() bool {
		families, err = docgen.MetricFamilies(reg, "vitalproxy_")
		return err == nil
	}, func() { t.Error(err) })
	if err := docgen.Sync("../../docs/metrics.md", "metrics", docgen.MetricsTable(families)); err != nil {
		t.Fatal(err)
	}
}
