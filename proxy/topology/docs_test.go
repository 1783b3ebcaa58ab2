package topology_test

import (
	"testing"

	"github.com/vitalproxy/vitalproxy/internal/docgen"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

// TestDocsTopologyMetrics checks the metric table of docs/topology.md
// against the series a checker of a primary and a standby registers.
func TestDocsTopologyMetrics(t *testing.T) {
	p := pgtest.Shared(t)
	s := startStandby(t, p)
	h := newChecker(t, p, 0, addr(p.Host, p.Port), addr(s.Host, s.Port))
	h.checkUntil(t, "primary and standby seen", func() bool {
		_, ok := h.Primary()
		return ok && len(h.Standbys(0, 0)) == 1
	})
	families, err := docgen.MetricFamilies(h.reg, "vitalproxy_upstream_")
	if err != nil {
		t.Fatal(err)
	}
	if err := docgen.Sync("../../docs/topology.md", "topology-metrics", docgen.MetricsTable(families)); err != nil {
		t.Fatal(err)
	}
}
