package observe

import (
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/upstream"
)

// ObserveWait records how long a client waited for a server connection
// (pool.Config.OnWait). Every queued Acquire calls it, so each label's
// observer is looked up once and kept (there are at most the tenant label
// cap of them).
func (m *Metrics) ObserveWait(tenant string, waited time.Duration, _ bool) {
	label := m.tenants.label(tenant)
	o, ok := m.waitObservers.Load(label)
	if !ok {
		o, _ = m.waitObservers.LoadOrStore(label, m.poolWait.WithLabelValues(label))
	}
	o.(prometheus.Observer).Observe(waited.Seconds())
}

// WatchPool registers on reg a collector that reads the pool's state, and
// the SCRAM key cache of the dialer d returns, at scrape time.
func (m *Metrics) WatchPool(reg prometheus.Registerer, p *pool.Pool, d func() *upstream.Dialer) {
	reg.MustRegister(&poolCollector{pool: p, labels: m.tenants, dialer: d})
}

var (
	poolConnsDesc = prometheus.NewDesc("vitalproxy_pool_server_connections",
		"Server connections by tenant and state (active: lent to a client; idle: kept for reuse).",
		[]string{"tenant", "state"}, nil)
	poolWaitingDesc = prometheus.NewDesc("vitalproxy_pool_clients_waiting",
		"Clients waiting for a server connection, by tenant.", []string{"tenant"}, nil)
	poolOpenedDesc = prometheus.NewDesc("vitalproxy_pool_server_connections_opened_total",
		"Server connections opened, by tenant.", []string{"tenant"}, nil)
	poolClosedDesc = prometheus.NewDesc("vitalproxy_pool_server_connections_closed_total",
		"Server connections closed, by tenant and reason (broken, idle, lifetime, evicted, shutdown, role_defaults, reconnect, host_retired).",
		[]string{"tenant", "reason"}, nil)
	poolTimeoutsDesc = prometheus.NewDesc("vitalproxy_pool_queue_timeouts_total",
		"Clients that gave up waiting for a server connection (SQLSTATE 53300), by tenant.", []string{"tenant"}, nil)
	poolTotalDesc = prometheus.NewDesc("vitalproxy_pool_server_connections_total_open",
		"Server connections open or being opened across all tenants (bounded by pool.max_server_conns).", nil, nil)
	scramKeysDesc = prometheus.NewDesc("vitalproxy_upstream_scram_keys_cached",
		"Tenant roles whose SCRAM keys are cached, so their logins skip the key stretch.", nil, nil)
)

// poolCollector exports a snapshot of the pool, summed per tenant label
// (tenants past the label cap share "other").
type poolCollector struct {
	pool   *pool.Pool
	labels *tenantLabels
	dialer func() *upstream.Dialer
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolConnsDesc, poolWaitingDesc, poolOpenedDesc, poolClosedDesc,
		poolTimeoutsDesc, poolTotalDesc, scramKeysDesc} {
		ch <- d
	}
}

type tenantPoolSums struct {
	active, idle, waiting int
	opened, timeouts      uint64
	closed                map[pool.Reason]uint64
}

// PooledLabel is the tenant label of the backends of a shared pool
// (isolation mode context) while no tenant borrows them.
const PooledLabel = "_pooled"

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	sums := map[string]*tenantPoolSums{}
	for _, st := range c.pool.Stats() {
		// A shared pool's own row (isolation mode context) has its idle
		// backends, opens and closes under PooledLabel; what is borrowed,
		// waited for and timed out counts for the borrowing tenants.
		poolRow := st.Key.Shared && st.Key.Tenant == ""
		label := PooledLabel
		if !poolRow {
			label = c.labels.label(st.Key.Tenant)
		}
		t := sums[label]
		if t == nil {
			t = &tenantPoolSums{closed: map[pool.Reason]uint64{}}
			sums[label] = t
		}
		if poolRow {
			t.idle += st.Idle
			t.opened += st.Opened
			for r, n := range st.Closed {
				t.closed[r] += n
			}
			continue
		}
		t.active += st.Active
		t.idle += st.Idle
		t.waiting += st.Waiting
		t.opened += st.Opened
		t.timeouts += st.Timeouts
		for r, n := range st.Closed {
			t.closed[r] += n
		}
	}
	tenants := make([]string, 0, len(sums))
	for k := range sums {
		tenants = append(tenants, k)
	}
	sort.Strings(tenants)
	for _, tenant := range tenants {
		t := sums[tenant]
		ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(t.active), tenant, "active")
		ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(t.idle), tenant, "idle")
		ch <- prometheus.MustNewConstMetric(poolWaitingDesc, prometheus.GaugeValue, float64(t.waiting), tenant)
		ch <- prometheus.MustNewConstMetric(poolOpenedDesc, prometheus.CounterValue, float64(t.opened), tenant)
		ch <- prometheus.MustNewConstMetric(poolTimeoutsDesc, prometheus.CounterValue, float64(t.timeouts), tenant)
		for _, r := range []pool.Reason{pool.ReasonBroken, pool.ReasonIdle, pool.ReasonLifetime, pool.ReasonEvicted, pool.ReasonShutdown, pool.ReasonRoleDefaults, pool.ReasonReconnect, pool.ReasonRetired} {
			ch <- prometheus.MustNewConstMetric(poolClosedDesc, prometheus.CounterValue, float64(t.closed[r]), tenant, string(r))
		}
	}
	ch <- prometheus.MustNewConstMetric(poolTotalDesc, prometheus.GaugeValue, float64(c.pool.Total()))
	ch <- prometheus.MustNewConstMetric(scramKeysDesc, prometheus.GaugeValue, float64(c.dialer().CachedKeys()))
}
