package observe

import (
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vitalproxy/vitalproxy/migrations/audit"
)

// Metrics holds the proxy's Prometheus collectors. They are registered on a
// private registry given to NewMetrics, never the global one. Safe for
// concurrent use.
type Metrics struct {
	clientConnections    *prometheus.GaugeVec
	connectionAttempts   *prometheus.CounterVec
	sessionEnds          *prometheus.CounterVec
	authFailures         *prometheus.CounterVec
	contextInjections    *prometheus.CounterVec
	sessionSetup         prometheus.Histogram
	bytes                *prometheus.CounterVec
	cancelRequests       *prometheus.CounterVec
	upstreamConnectErrs  prometheus.Counter
	isolationCheck       *prometheus.GaugeVec
	auditRuns            *prometheus.CounterVec
	configReloads        *prometheus.CounterVec
	buildInfo            *prometheus.GaugeVec
	resets               *prometheus.CounterVec
	poolWait             *prometheus.HistogramVec
	waitObservers        sync.Map // tenant label → poolWait's prometheus.Observer
	transactions         *prometheus.CounterVec
	prepared             *prometheus.CounterVec
	notificationsDropped *prometheus.CounterVec
	contextSwitches      *prometheus.CounterVec
	consoleCommands      *prometheus.CounterVec

	// The series the per-transaction hooks count, resolved once.
	resetOK, resetFailed      prometheus.Counter
	switchOK, switchFailed    prometheus.Counter
	preparedHit, preparedMiss prometheus.Counter

	tenants *tenantLabels
}

// Results of a cancel request, the values of the result label of
// vitalproxy_cancel_requests_total.
const (
	CancelForwarded = "forwarded"
	CancelUnknown   = "unknown" // no such key
	CancelRefused   = "refused" // a live process id with the wrong key
	CancelError     = "error"   // the backend could not be reached
)

// Directions of the bytes_total metric.
const (
	dirClientToServer = "client_to_server"
	dirServerToClient = "server_to_client"
)

// NewMetrics builds the collectors and registers them on reg. tenantCap
// bounds the distinct values of the tenant label; further tenants are
// counted as tenant="other".
func NewMetrics(reg prometheus.Registerer, tenantCap int, version string) *Metrics {
	m := &Metrics{
		clientConnections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vitalproxy_client_connections",
			Help: "Client sessions currently forwarding, by tenant.",
		}, []string{"tenant"}),
		connectionAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_connection_attempts_total",
			Help: "Client connections by setup outcome (ok, auth_failed, protocol_error, upstream_failed, cancel_request, ...).",
		}, []string{"result"}),
		sessionEnds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_session_ends_total",
			Help: "Forwarding sessions that ended, by reason (client_closed, server_closed, shutdown).",
		}, []string{"reason"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_auth_failures_total",
			Help: "Client authentication failures by reason.",
		}, []string{"reason"}),
		contextInjections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_context_injections_total",
			Help: "Tenant context assertions (set_tenant_context) by result.",
		}, []string{"result"}),
		sessionSetup: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vitalproxy_session_setup_seconds",
			Help:    "Time from accepting a client to its first ReadyForQuery, for sessions that got one.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_bytes_total",
			Help: "Bytes forwarded by tenant and direction, counted when a session ends.",
		}, []string{"tenant", "direction"}),
		cancelRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_cancel_requests_total",
			Help: "Cancel requests by result: forwarded, unknown (no such key), refused (live process id, wrong key), error.",
		}, []string{"result"}),
		upstreamConnectErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitalproxy_upstream_connect_errors_total",
			Help: "Failed upstream logins as a tenant role.",
		}),
		isolationCheck: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vitalproxy_isolation_check",
			Help: "Result of each isolation audit check at the last audit: 1 pass, 0 fail.",
		}, []string{"check"}),
		auditRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_audit_runs_total",
			Help: "Isolation audit runs by result: pass, fail, error.",
		}, []string{"result"}),
		configReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_config_reloads_total",
			Help: "Configuration and directory reloads by result.",
		}, []string{"result"}),
		buildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vitalproxy_build_info",
			Help: "Build information; always 1.",
		}, []string{"version", "goversion"}),
		contextSwitches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_context_switches_total",
			Help: "Shared server connections (isolation mode context) that entered another tenant's context for a transaction, by result (ok, failure: the connection was closed and the client told).",
		}, []string{"result"}),
		resets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_pool_resets_total",
			Help: "Server connections reset for reuse after a client left, by result (ok, failure: the connection was closed).",
		}, []string{"result"}),
		poolWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vitalproxy_pool_wait_seconds",
			Help:    "Time clients waited in the queue for a server connection, by tenant.",
			Buckets: []float64{.0005, .001, .005, .01, .05, .1, .5, 1, 5, 30},
		}, []string{"tenant"}),
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_transactions_total",
			Help: "Transactions served in transaction pooling mode, by tenant.",
		}, []string{"tenant"}),
		prepared: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_prepared_statements_total",
			Help: "Protocol-level prepared statements in transaction mode: hit (already prepared on the serving connection) or miss (prepared there on demand).",
		}, []string{"result"}),
		notificationsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_notifications_dropped_total",
			Help: "Notifications on a channel outside the client's tenant namespace that the proxy kept from the client, by the client's tenant.",
		}, []string{"tenant"}),
		consoleCommands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_console_commands_total",
			Help: "Operator console commands by command (show_tenants, pause, kill_client, ..., set, other) and result (ok, error, denied: the user's console role or tenants do not allow it).",
		}, []string{"command", "result"}),
		tenants: newTenantLabels(tenantCap),
	}
	reg.MustRegister(m.clientConnections, m.connectionAttempts, m.sessionEnds, m.authFailures,
		m.contextInjections, m.sessionSetup, m.bytes, m.cancelRequests, m.upstreamConnectErrs,
		m.isolationCheck, m.auditRuns, m.configReloads, m.buildInfo, m.resets, m.poolWait, m.transactions, m.prepared,
		m.notificationsDropped, m.contextSwitches, m.consoleCommands)
	m.buildInfo.WithLabelValues(version, runtime.Version()).Set(1)
	for _, r := range []string{"ok", "failure"} {
		m.contextInjections.WithLabelValues(r)
	}
	for _, r := range []string{CancelForwarded, CancelUnknown, CancelRefused, CancelError} {
		m.cancelRequests.WithLabelValues(r)
	}
	for _, r := range []string{"success", "failure"} {
		m.configReloads.WithLabelValues(r)
	}
	m.resetOK, m.resetFailed = m.resets.WithLabelValues("ok"), m.resets.WithLabelValues("failure")
	m.switchOK, m.switchFailed = m.contextSwitches.WithLabelValues("ok"), m.contextSwitches.WithLabelValues("failure")
	m.preparedHit, m.preparedMiss = m.prepared.WithLabelValues("hit"), m.prepared.WithLabelValues("miss")
	return m
}

// ConnectionAttempt counts a client connection by its setup outcome: "ok"
// or the reason it was refused.
func (m *Metrics) ConnectionAttempt(result string) {
	m.connectionAttempts.WithLabelValues(result).Inc()
}

// SessionSetup records how long a session took from accept to its first
// ReadyForQuery.
func (m *Metrics) SessionSetup(d time.Duration) { m.sessionSetup.Observe(d.Seconds()) }

// SessionEnd counts a forwarding session that ended, by reason.
func (m *Metrics) SessionEnd(reason string) { m.sessionEnds.WithLabelValues(reason).Inc() }

// AuthFailure counts a client authentication failure by reason.
func (m *Metrics) AuthFailure(reason string) { m.authFailures.WithLabelValues(reason).Inc() }

// ContextInjection counts a tenant context assertion by its result.
func (m *Metrics) ContextInjection(ok bool) {
	if ok {
		m.contextInjections.WithLabelValues("ok").Inc()
	} else {
		m.contextInjections.WithLabelValues("failure").Inc()
	}
}

// ConsoleCommand counts an operator console command by its command name
// and result.
func (m *Metrics) ConsoleCommand(command, result string) {
	m.consoleCommands.WithLabelValues(command, result).Inc()
}

// CancelRequest counts a cancel request by result (CancelForwarded, ...).
func (m *Metrics) CancelRequest(result string) { m.cancelRequests.WithLabelValues(result).Inc() }

// UpstreamConnectError counts a failed upstream login as a tenant role.
func (m *Metrics) UpstreamConnectError() { m.upstreamConnectErrs.Inc() }

// AuditRun counts an isolation audit run by result: pass, fail or error.
func (m *Metrics) AuditRun(result string) { m.auditRuns.WithLabelValues(result).Inc() }

// IsolationChecks replaces the exported results of the isolation audit's
// checks with those of its latest run.
func (m *Metrics) IsolationChecks(checks []audit.Check) {
	m.isolationCheck.Reset()
	for _, c := range checks {
		v := 1.0
		if !c.OK {
			v = 0
		}
		m.isolationCheck.WithLabelValues(c.Name).Set(v)
	}
}

// ConfigReload counts a configuration and directory reload by result.
func (m *Metrics) ConfigReload(ok bool) {
	if ok {
		m.configReloads.WithLabelValues("success").Inc()
	} else {
		m.configReloads.WithLabelValues("failure").Inc()
	}
}

// CountReset counts a backend reset for reuse by its result.
func (m *Metrics) CountReset(ok bool) {
	if ok {
		m.resetOK.Inc()
	} else {
		m.resetFailed.Inc()
	}
}

// CountContextSwitch counts a shared backend entering a tenant's context.
func (m *Metrics) CountContextSwitch(ok bool) {
	if ok {
		m.switchOK.Inc()
	} else {
		m.switchFailed.Inc()
	}
}

// CountPrepared counts a transaction-mode prepared statement use: hit
// (already prepared on the serving backend) or miss.
func (m *Metrics) CountPrepared(hit bool) {
	if hit {
		m.preparedHit.Inc()
	} else {
		m.preparedMiss.Inc()
	}
}

// RegisterRuntime adds the Go runtime and process collectors to reg.
func RegisterRuntime(reg prometheus.Registerer) {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}

// Tenant holds one tenant's collectors, looked up once per session so the
// forwarding path touches no map.
type Tenant struct {
	Connections  prometheus.Gauge   // sessions forwarding
	C2S, S2C     prometheus.Counter // bytes by direction
	Transactions prometheus.Counter // transaction-mode transactions
	Dropped      prometheus.Counter // notifications kept from the client
}

// ForTenant returns the collectors of the tenant with this slug (those of
// tenant="other" past the label cap).
func (m *Metrics) ForTenant(slug string) Tenant {
	label := m.tenants.label(slug)
	return Tenant{
		Connections:  m.clientConnections.WithLabelValues(label),
		C2S:          m.bytes.WithLabelValues(label, dirClientToServer),
		S2C:          m.bytes.WithLabelValues(label, dirServerToClient),
		Transactions: m.transactions.WithLabelValues(label),
		Dropped:      m.notificationsDropped.WithLabelValues(label),
	}
}

// tenantLabels caps the distinct tenant label values: the first cap tenants
// seen keep their slug, later ones are reported as "other".
type tenantLabels struct {
	mu   sync.Mutex
	cap  int
	seen map[string]struct{}
}

// otherTenant is the label of tenants beyond the cap.
const otherTenant = "other"

func newTenantLabels(cap int) *tenantLabels {
	return &tenantLabels{cap: cap, seen: make(map[string]struct{})}
}

func (t *tenantLabels) label(slug string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.seen[slug]; ok {
		return slug
	}
	if len(t.seen) >= t.cap {
		return otherTenant
	}
	t.seen[slug] = struct{}{}
	return slug
}
