package topology

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the checker's Prometheus series.
type metrics struct {
	up         *prometheus.GaugeVec
	lagBytes   *prometheus.GaugeVec
	lagSeconds *prometheus.GaugeVec
	failovers  prometheus.Counter
	splitBrain prometheus.Gauge
}

// newMetrics builds the series and registers them on reg, when not nil.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vitalproxy_upstream_up",
			Help: "Whether the upstream host answered its last health check (1) or not (0), with its role: primary, standby, fenced (out of recovery but not the primary), refused (another cluster), unknown (cluster not known yet) or down.",
		}, []string{"host", "role"}),
		lagBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vitalproxy_upstream_replication_lag_bytes",
			Help: "Bytes of WAL a standby has still to replay behind the primary, at its last health check.",
		}, []string{"host"}),
		lagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vitalproxy_upstream_replication_lag_seconds",
			Help: "Age of the last transaction a standby replayed while it has WAL left to replay (0 when it has replayed all it received), at its last health check.",
		}, []string{"host"}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitalproxy_upstream_failovers_total",
			Help: "Changes of the upstream primary from one host to another.",
		}),
		splitBrain: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vitalproxy_upstream_split_brain",
			Help: "1 while more than one upstream host of the cluster is out of recovery (those not elected primary are fenced), else 0.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.up, m.lagBytes, m.lagSeconds, m.failovers, m.splitBrain} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register topology metrics: %w", err)
		}
	}
	return m, nil
}

// record sets the series of one round's hosts; prev are the hosts of the
// round before (their roles name the series to drop).
func (m *metrics) record(prev, hosts []Host, splitBrain bool) {
	for i, h := range hosts {
		if p := prev[i].Role; p != "" && p != h.Role {
			m.up.DeleteLabelValues(h.Name, string(p))
		}
		up := 0.0
		if h.Up() {
			up = 1
		}
		m.up.WithLabelValues(h.Name, string(h.Role)).Set(up)
		if h.Role == RoleStandby {
			m.lagBytes.WithLabelValues(h.Name).Set(float64(h.LagBytes))
			m.lagSeconds.WithLabelValues(h.Name).Set(h.Lag.Seconds())
		} else {
			m.lagBytes.DeleteLabelValues(h.Name)
			m.lagSeconds.DeleteLabelValues(h.Name)
		}
	}
	if splitBrain {
		m.splitBrain.Set(1)
	} else {
		m.splitBrain.Set(0)
	}
}
