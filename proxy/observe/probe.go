package observe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/proxy/backend"
	"github.com/vitalproxy/vitalproxy/proxy/pool"
)

// The live isolation probe. Every probe.interval it logs in, through the
// server's own pool and dialer, as the read-only role of each of the two
// probe tenants (tenantroles.ProbeTenantA and ProbeTenantB, created by
// `vitalproxy tenant sync --probe`) and checks that current_tenant_id() is
// that tenant and that, of the probe canary agents, it sees its own and no
// other tenant's. The audit reads the catalogue; the probe shows that RLS
// actually filters rows for a real tenant login, end to end.

// Results of one probe run, the values of the result label of
// vitalproxy_isolation_probe_runs_total.
const (
	probeSuccess       = "success"
	probeFailure       = "failure"        // isolation did not hold
	probeError         = "error"          // the probe could not run
	probeNotConfigured = "not_configured" // the probe tenants do not exist
)

// DefaultProbeInterval is used when probe.interval is not positive.
const DefaultProbeInterval = 30 * time.Second

// probeTimeout bounds one probe run (both tenants).
const probeTimeout = 10 * time.Second

// probeMetrics are the probe's collectors, registered only when the probe
// is enabled, so that a proxy without it exports no probe series to alert
// on.
type probeMetrics struct {
	success     prometheus.Gauge
	lastSuccess prometheus.Gauge
	runs        *prometheus.CounterVec
}

func newProbeMetrics(reg prometheus.Registerer) *probeMetrics {
	m := &probeMetrics{
		success: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vitalproxy_isolation_probe_success",
			Help: "Whether the last live isolation probe passed: 1 yes, 0 no (isolation failed, the probe could not run, or the probe tenants are missing).",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vitalproxy_isolation_probe_last_success_timestamp_seconds",
			Help: "Unix time of the last live isolation probe that passed; 0 if none has.",
		}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalproxy_isolation_probe_runs_total",
			Help: "Live isolation probe runs by result: success, failure (isolation did not hold), error (the probe could not run), not_configured (no probe tenants).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.success, m.lastSuccess, m.runs)
	for _, r := range []string{probeSuccess, probeFailure, probeError, probeNotConfigured} {
		m.runs.WithLabelValues(r)
	}
	return m
}

// errIsolation marks a probe finding: the database answered, and what it
// showed breaks isolation.
var errIsolation = errors.New("isolation violated")

// errProbeNotConfigured means the probe tenants are not in the directory.
var errProbeNotConfigured = errors.New("the probe tenants do not exist")

// ProbeConfig is what the probe needs of the server.
type ProbeConfig struct {
	// Interval between runs (DefaultProbeInterval when not positive).
	Interval time.Duration
	// Pool lends the probe its backends, as it does to client sessions.
	Pool *pool.Pool
	// Directory returns the current users and tenants.
	Directory func() *auth.Directory
	// RolePrefix returns the current prefix of tenant role names.
	RolePrefix func() string
	Logger     *slog.Logger
}

// Prober runs the live isolation probe of one server. Build it with
// NewProber; Run belongs to one goroutine.
type Prober struct {
	cfg ProbeConfig
	m   *probeMetrics
	// last is the previous run's result, so that a state that persists is
	// logged once (not_configured) or its end is logged (recovery).
	last string
}

// NewProber registers the probe's collectors on reg and returns the
// prober; it does no I/O.
func NewProber(reg prometheus.Registerer, cfg ProbeConfig) *Prober {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultProbeInterval
	}
	return &Prober{cfg: cfg, m: newProbeMetrics(reg)}
}

// Interval returns the time between runs.
func (p *Prober) Interval() time.Duration { return p.cfg.Interval }

// Run probes at once, then every interval, until ctx is done.
func (p *Prober) Run(ctx context.Context) {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		p.runOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// runOnce probes both tenants, exports the result and logs what changed.
func (p *Prober) runOnce(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	err := p.probe(rctx)
	if ctx.Err() != nil {
		// Shutting down: a run cut short proves nothing either way.
		return
	}
	result := probeSuccess
	switch {
	case err == nil:
	case errors.Is(err, errProbeNotConfigured):
		result = probeNotConfigured
	case errors.Is(err, errIsolation):
		result = probeFailure
	default:
		result = probeError
	}
	p.m.runs.WithLabelValues(result).Inc()
	if result == probeSuccess {
		p.m.success.Set(1)
		p.m.lastSuccess.Set(float64(time.Now().UnixNano()) / 1e9)
		if p.last != "" && p.last != probeSuccess {
			p.cfg.Logger.Info("isolation probe passes again")
		}
		p.last = result
		return
	}
	p.m.success.Set(0)
	switch {
	case result == probeNotConfigured && p.last == probeNotConfigured:
		// Logged once.
	case result == probeNotConfigured:
		p.cfg.Logger.Warn("isolation probe not configured: create the probe tenants with `vitalproxy tenant sync --probe`", "error", err)
	case result == probeFailure:
		p.cfg.Logger.Warn("isolation probe failed: tenant isolation does not hold", "error", err)
	default:
		p.cfg.Logger.Warn("isolation probe could not run", "error", err)
	}
	p.last = result
}

// probe checks each probe tenant against the other through the pool.
func (p *Prober) probe(ctx context.Context) error {
	dir := p.cfg.Directory()
	slugs := tenantroles.ProbeTenants()
	var tenants []auth.Tenant
	var missing []string
	for _, slug := range slugs {
		t, ok := dir.Tenant(slug)
		if !ok {
			missing = append(missing, slug)
			continue
		}
		tenants = append(tenants, t)
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s", errProbeNotConfigured, strings.Join(missing, ", "))
	}
	prefix := p.cfg.RolePrefix()
	for i, self := range tenants {
		if !self.Active() {
			return fmt.Errorf("probe tenant %s is %s: its roles cannot log in", self.Slug, self.Status)
		}
		if err := p.probeTenant(ctx, prefix, self, tenants[1-i]); err != nil {
			return fmt.Errorf("probe tenant %s: %w", self.Slug, err)
		}
	}
	return nil
}

// probeQuery returns the tenant of the session, then every probe canary the
// session can see with its tenant. Names and ids are plain text; the query
// has no parameters.
const probeQuery = `SELECT public.current_tenant_id()::text;` +
	`SELECT name, coalesce(tenant_id::text, '') FROM public.agents WHERE name LIKE '` + tenantroles.ProbeCanaryPrefix + `%'`

// probeTenant borrows a backend of self's read-only role from the pool, the
// way a client session of self would get one, and checks what it sees.
func (p *Prober) probeTenant(ctx context.Context, prefix string, self, other auth.Tenant) error {
	key := pool.Key{Tenant: self.Slug, TenantID: self.ID, Role: auth.RoleName(prefix, self.Slug, auth.ReadOnly)}
	b, err := p.cfg.Pool.Acquire(ctx, key)
	if err != nil {
		return fmt.Errorf("get a server connection as %s: %w", key.Role, err)
	}
	reusable := false
	defer func() { p.cfg.Pool.Release(b, reusable) }()

	buf, _ := (&pgproto3.Query{String: probeQuery}).Encode(nil)
	var (
		sessionTenant string
		canaries      [][2]string // name, tenant id
		done          int         // CommandCompletes seen: which statement rows belong to
	)
	err = backend.RoundTrip(ctx, b.Conn, buf, 1, func(typ byte, body []byte) error {
		switch typ {
		case 'C':
			done++
		case 'D':
			var row pgproto3.DataRow
			if err := row.Decode(body); err != nil {
				return err
			}
			switch {
			case done == 0 && len(row.Values) == 1:
				sessionTenant = string(row.Values[0])
			case done == 1 && len(row.Values) == 2:
				canaries = append(canaries, [2]string{string(row.Values[0]), string(row.Values[1])})
			default:
				return errors.New("unexpected row in the probe's answer")
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("query as %s: %w", key.Role, err)
	}
	reusable = true
	if done != 2 {
		return fmt.Errorf("query as %s: %d of 2 statements completed", key.Role, done)
	}
	if sessionTenant != self.ID {
		return fmt.Errorf("%w: as %s, current_tenant_id() is %q, want %s", errIsolation, key.Role, sessionTenant, self.ID)
	}
	own := tenantroles.ProbeCanary(self.Slug)
	sawOwn := false
	for _, c := range canaries {
		name, tenantID := c[0], c[1]
		switch {
		case tenantID == self.ID && name == own:
			sawOwn = true
		case tenantID == self.ID:
		case tenantID == other.ID:
			return fmt.Errorf("%w: %s sees agent %q of probe tenant %s", errIsolation, key.Role, name, other.Slug)
		default:
			return fmt.Errorf("%w: %s sees agent %q of tenant %q", errIsolation, key.Role, name, tenantID)
		}
	}
	if !sawOwn {
		return fmt.Errorf("%w: %s does not see its own canary agent %q (missing? run `vitalproxy tenant sync --probe`)",
			errIsolation, key.Role, own)
	}
	return nil
}
