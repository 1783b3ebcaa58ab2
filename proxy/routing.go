package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/topology"
)

// router picks the upstream host of every backend when the proxy is given
// several (a primary and its standbys): sessions that write go to the
// primary the topology checker elected, replica-routed ones to the
// healthy standby that lags least. With a single upstream host there is
// no router and backends are dialled as upstream.url says.
type router struct {
	checker *topology.Checker
	// hosts are the endpoints by topology.Host.Name (pool.Key.Host).
	hosts map[string]topology.Endpoint
	log   *slog.Logger

	// recheckMu serialises the health rounds run when a dial to the
	// primary failed; recheckedAt is when the last one ended.
	recheckMu   sync.Mutex
	recheckedAt time.Time
}

// newRouter returns the router for cfg, or nil when upstream.url and
// upstream.hosts name a single host. Its checker's series go to reg.
func newRouter(cfg *config.Config, reg prometheus.Registerer, log *slog.Logger) (*router, error) {
	eps, err := topology.ParseHosts(cfg.Upstream.URL, cfg.Upstream.Hosts)
	if err != nil {
		return nil, fmt.Errorf("upstream hosts: %w", err)
	}
	if len(eps) < 2 {
		return nil, nil
	}
	checker, err := topology.New(topology.Options{
		Hosts:      eps,
		AdminURL:   string(cfg.Upstream.AdminURL),
		Interval:   cfg.Upstream.HealthInterval,
		Timeout:    cfg.Upstream.HealthTimeout,
		Registerer: reg,
		Logger:     log,
	})
	if err != nil {
		return nil, fmt.Errorf("upstream topology: %w", err)
	}
	r := &router{checker: checker, hosts: make(map[string]topology.Endpoint, len(eps)), log: log}
	for _, ep := range eps {
		r.hosts[ep.String()] = ep
	}
	return r, nil
}

// routesToReplica reports whether id's sessions go to a standby: a
// read-only user, or route: replica for the user or its tenant.
func routesToReplica(cfg *config.Config, id *auth.Identity) bool {
	if id.Capability == auth.ReadOnly {
		return true
	}
	u := config.User{}
	for _, cu := range cfg.Users {
		if cu.Name == id.User {
			u = cu
			break
		}
	}
	return cfg.RouteFor(u, id.Tenant.Slug) == config.RouteReplica
}

// noHostError is the ERROR a client gets when no host may serve it.
func noHostError(format string, args ...any) error {
	return &pgconn.PgError{Severity: "ERROR", Code: codeTooManyConnections, Message: fmt.Sprintf(format, args...)}
}

// host returns the host (a pool.Key.Host) a backend of a session should
// come from. replica: the standby within cfg's replica bounds that lags
// least, else (replica.fallback: primary) the primary or (error) an
// ERROR 53300. Otherwise the primary; while there is none, it waits up to
// upstream.failover_timeout for one, then fails with an ERROR 53300.
// failed, when not empty, is a host a dial just failed to reach: it is
// not picked again as a standby, and when it is the primary a health
// round runs first, so that a dead primary is seen at once.
func (r *router) host(ctx context.Context, cfg *config.Config, replica bool, failed string) (string, error) {
	if replica {
		for _, h := range r.checker.Standbys(cfg.Replica.MaxLagBytes, cfg.Replica.MaxLag) {
			if h.Name != failed {
				return h.Name, nil
			}
		}
		if cfg.Replica.Fallback == config.FallbackError {
			return "", noHostError("no standby database server is available within the replication lag bounds; try again later")
		}
	}
	if failed != "" {
		r.recheck(ctx, failed)
	}
	if h, ok := r.checker.Primary(); ok {
		return h.Name, nil
	}
	wait := cfg.Upstream.FailoverTimeout
	if wait <= 0 {
		return "", noHostError("no primary database server is available; try again later")
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	start := time.Now()
	h, err := r.checker.WaitPrimary(wctx)
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", noHostError("no primary database server became available within %s (failover in progress?); try again later", wait)
	}
	r.log.Debug("waited for a primary", "host", h.Name, "waited_seconds", time.Since(start).Seconds())
	return h.Name, nil
}

// recheck runs a health round now if failed is still the primary and no
// round ended since this call began.
func (r *router) recheck(ctx context.Context, failed string) {
	if h, ok := r.checker.Primary(); !ok || h.Name != failed {
		return
	}
	asked := time.Now()
	r.recheckMu.Lock()
	defer r.recheckMu.Unlock()
	if r.recheckedAt.After(asked) {
		return
	}
	r.checker.Check(ctx)
	r.recheckedAt = time.Now()
}

// isDialFailure reports whether err means a host could not be reached
// (pool.DialFailed), not the proxy's own refusal of an unsafe login.
func isDialFailure(err error) bool {
	return pool.DialFailed(err) && !errors.Is(err, errUnsafeLogin)
}

// watchPrimary retires the pools of a host that stops or starts being the
// primary (see pool.RetireHost) and ends the session-mode sessions bound
// to the former primary, until ctx ends.
func (s *Server) watchPrimary(ctx context.Context, r *router) {
	prev := ""
	if h, ok := r.checker.Primary(); ok {
		prev = h.Name
	}
	for {
		changed := r.checker.PrimaryChanged()
		name := ""
		if h, ok := r.checker.Primary(); ok {
			name = h.Name
		}
		if name != prev {
			if prev != "" {
				// The administrative connection moves to the new primary.
				s.admin.reset()
				n := s.pool.RetireHost(prev)
				ended := s.endSessionsOn(prev)
				s.logger.Warn("upstream primary changed; closing server connections to the former primary",
					"former", prev, "primary", name, "idle_closed", n, "sessions_ended", ended)
			}
			if name != "" {
				// Its backends were dialled while it was a standby.
				s.pool.RetireHost(name)
			}
			prev = name
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// primaryChangedMsg is the FATAL a session-mode client bound to a former
// primary gets.
const primaryChangedMsg = "terminating connection because the primary database server changed; reconnect"

// endSessionsOn closes the session-mode sessions whose backend is on
// host, telling their clients FATAL 57P01, and returns how many.
func (s *Server) endSessionsOn(host string) int {
	var end []*session
	s.mu.Lock()
	for sess := range s.sessions {
		sess.mu.Lock()
		b := sess.backend
		sess.mu.Unlock()
		if b != nil && b.Key.Host == host {
			end = append(end, sess)
		}
	}
	s.mu.Unlock()
	for _, sess := range end {
		msg := primaryChangedMsg
		sess.ended.Store(&msg)
		sess.forceClose()
	}
	return len(end)
}

// acquireRouted borrows a backend of key for a session of id: with a
// router, from the pool of the host the router picks (once more, after a
// health round or on another standby, when that host cannot be reached);
// without one, as key says.
func (s *Server) acquireRouted(ctx context.Context, cfg *config.Config, id *auth.Identity, key pool.Key) (*pool.Backend, error) {
	r := s.router
	if r == nil {
		return s.pool.Acquire(ctx, key)
	}
	route := r.routeFunc(cfg, routesToReplica(cfg, id))
	failed := ""
	for attempt := 0; ; attempt++ {
		host, err := route(ctx, failed)
		if err != nil {
			return nil, err
		}
		key.Host = host
		b, err := s.pool.Acquire(ctx, key)
		if err == nil || attempt > 0 || !isDialFailure(err) || ctx.Err() != nil {
			return b, err
		}
		s.logger.Info("upstream host unreachable; routing again", "host", host, "error", err)
		failed = host
	}
}

// routeFunc returns the host picker of a session (see host), for
// txmode.Options.Route.
func (r *router) routeFunc(cfg *config.Config, replica bool) func(ctx context.Context, failed string) (string, error) {
	return func(ctx context.Context, failed string) (string, error) {
		return r.host(ctx, cfg, replica, failed)
	}
}

// startRouter runs one health round, so that the first sessions know the
// primary, then the checker and the primary watch in the background until
// ctx ends.
func (s *Server) startRouter(ctx context.Context, bg *sync.WaitGroup, r *router) {
	r.checker.Check(ctx)
	if h, ok := r.checker.Primary(); ok {
		s.logger.Info("upstream primary", "host", h.Name, "standbys", len(r.checker.Standbys(0, 0)))
	} else {
		s.logger.Warn("no upstream primary found; sessions that need one wait up to upstream.failover_timeout")
	}
	bg.Add(2)
	go func() {
		defer bg.Done()
		_ = r.checker.Run(ctx) // returns nil when ctx ends
	}()
	go func() {
		defer bg.Done()
		s.watchPrimary(ctx, r)
	}()
}
