package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/proxy/observe"
)

// Metrics holds the proxy's Prometheus collectors (see package observe).
type Metrics = observe.Metrics

// NewMetrics builds the collectors and registers them on reg; see
// observe.NewMetrics.
func NewMetrics(reg prometheus.Registerer, tenantCap int, version string) *Metrics {
	return observe.NewMetrics(reg, tenantCap, version)
}

// DefaultProbeInterval is used when probe.interval is not positive.
const DefaultProbeInterval = observe.DefaultProbeInterval

// startProbe starts the live isolation probe in the background when cfg
// enables it; it stops when ctx is done, and wg waits for it.
func (s *Server) startProbe(ctx context.Context, wg *sync.WaitGroup, cfg config.Probe) {
	if !cfg.Enabled {
		return
	}
	p := observe.NewProber(s.registry, observe.ProbeConfig{
		Interval:   cfg.Interval,
		Pool:       s.pool,
		Directory:  s.directory,
		RolePrefix: func() string { return s.rt.Load().cfg.RolePrefix },
		Logger:     s.logger,
	})
	s.logger.Info("isolation probe enabled", "interval", p.Interval().String(),
		"tenants", strings.Join(tenantroles.ProbeTenants(), ","))
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.Run(ctx)
	}()
}

// startHTTP opens the listener of /metrics, /healthz and /readyz; nil when
// metrics.listen is empty.
func (s *Server) startHTTP(cfg *config.Config) (*observe.HTTP, error) {
	if cfg.Metrics.Listen == "" {
		return nil, nil
	}
	h, err := observe.ListenHTTP(cfg.Metrics.Listen, s.registry, s.readiness)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.metricsAddr = h.Addr()
	s.mu.Unlock()
	return h, nil
}

// readinessTimeout bounds one /readyz check.
const readinessTimeout = 5 * time.Second

// readiness reports why the proxy should not get traffic: it is not
// accepting yet or draining, the database is unreachable, or its schema is
// not at the version this binary expects.
func (s *Server) readiness(ctx context.Context) error {
	select {
	case <-s.ready:
	default:
		return errors.New("starting")
	}
	if s.draining.Load() {
		return errors.New("shutting down")
	}
	ctx, cancel := context.WithTimeout(ctx, readinessTimeout)
	defer cancel()
	return s.admin.with(ctx, func(c *pgx.Conn) error {
		if err := c.Ping(ctx); err != nil {
			return fmt.Errorf("database unreachable: %w", err)
		}
		return observe.SchemaCurrent(ctx, c)
	})
}
