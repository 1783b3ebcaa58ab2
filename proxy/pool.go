package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/upstream"
)

// newPool builds the server-connection pool shared by every session. Its
// dial function reads the current runtime configuration, so a reload that
// changes the upstream URL or the role secret applies to new backends.
func (s *Server) newPool(cfg poolSettings) (*pool.Pool, error) {
	return pool.New(pool.Config{
		MaxConns:          cfg.maxConns,
		MaxConnsPerTenant: cfg.maxPerTenant,
		TenantMaxConns:    cfg.tenantMax,
		MinIdle:           cfg.minIdle,
		TenantMinIdle:     cfg.tenantMinIdle,
		QueueTimeout:      cfg.queueTimeout,
		IdleTimeout:       cfg.idleTimeout,
		Lifetime:          cfg.lifetime,
		OnWait:            s.metrics.ObserveWait,
		Gate:              s.steer.gate,
	}, s.dialBackend)
}

// dialBackend logs in as key.Role and asserts the tenant context in the
// same round trip. It refuses a login that reports superuser rights or
// another session user: tenant traffic never runs as either.
func (s *Server) dialBackend(ctx context.Context, key pool.Key) (*upstream.Conn, error) {
	rt := s.rt.Load()
	if d := rt.cfg.Upstream.ConnectTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	opts := upstream.Options{Role: key.Role, TenantID: key.TenantID}
	if key.Shared {
		opts = upstream.Options{Role: key.Role, Pooled: true}
	}
	var c *upstream.Conn
	var err error
	if key.Host == "" {
		c, err = rt.dialer.Dial(ctx, opts)
	} else {
		ep, ok := s.router.hosts[key.Host]
		if !ok {
			return nil, fmt.Errorf("upstream host %s is not configured", key.Host)
		}
		c, err = rt.dialer.DialHost(ctx, ep.Host, ep.Port, ep.TLS, opts)
	}
	if err != nil {
		s.metrics.UpstreamConnectError()
		return nil, err
	}
	if key.Shared && c.RoleDefaults {
		// A tenant gave the pooled role defaults (ALTER ROLE ... SET):
		// they would reach every tenant its backends serve.
		_ = c.Terminate()
		s.logger.Error("the pooled role has role defaults of its own; refusing its server connections until `vitalproxy tenant sync` removes them", "role", key.Role)
		return nil, fmt.Errorf("%w: pooled role %q has role defaults (ALTER ROLE ... SET); run vitalproxy tenant sync", errUnsafeLogin, key.Role)
	}
	for _, p := range c.Params {
		bad := (p.Name == "is_superuser" && p.Value != "off") ||
			(p.Name == "session_authorization" && p.Value != key.Role)
		if bad {
			_ = c.Terminate()
			return nil, fmt.Errorf("%w: upstream reports %s=%q for role %q", errUnsafeLogin, p.Name, p.Value, key.Role)
		}
	}
	return c, nil
}

var errUnsafeLogin = errors.New("the tenant login role is not safe to use")

// backendError turns a failure to get a backend into what the client is
// told.
func backendError(tenant string, queueTimeout time.Duration, err error) *clientError {
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, pool.ErrQueueTimeout):
		return newClientError(reasonPoolTimeout, codeTooManyConnections, err,
			"no server connection became free for tenant %q within %s; try again later", tenant, queueTimeout)
	case errors.Is(err, errUnsafeLogin):
		return newClientError(reasonContextFailed, codeInternalError, err, "the tenant login role is not safe to use")
	case errors.As(err, &pgErr) && pgErr.Code == "42501":
		return newClientError(reasonContextFailed, codeInvalidAuthSpec, err,
			"the database refused the tenant context for this login")
	case errors.As(err, &pgErr) && isAuthClass(pgErr.Code):
		return newClientError(reasonUpstreamFailed, codeInvalidAuthSpec, err,
			"the database refused the login role of this tenant")
	case errors.As(err, &pgErr) && pgErr.Code == codeTooManyConnections && pgErr.Severity == "ERROR":
		// The router found no host to serve the session (noHostError).
		return newClientError(reasonUpstreamFailed, codeTooManyConnections, err, "%s", pgErr.Message)
	case errors.As(err, &pgErr) && pgErr.Code == "57P03":
		return newClientError(reasonUpstreamFailed, codeCannotConnectNow, err, "the database server is starting up or shutting down")
	case errors.Is(err, pool.ErrClosed):
		return newClientError(reasonShuttingDown, codeCannotConnectNow, err, "the proxy is shutting down")
	}
	return newClientError(reasonUpstreamFailed, codeConnectionFailure, err, "could not connect to the database server")
}

// isAuthClass reports whether code is in SQLSTATE class 28 (invalid
// authorization specification).
func isAuthClass(code string) bool { return len(code) == 5 && code[:2] == "28" }

// backendCanceler cancels whatever the backend is running.
type backendCanceler struct{ b *pool.Backend }

func (c backendCanceler) cancel(ctx context.Context) error { return c.b.Cancel(ctx) }

// paramsOf returns the backend's ParameterStatus values.
func paramsOf(b *pool.Backend) map[string]string {
	m := make(map[string]string, len(b.Params))
	for _, p := range b.Params {
		m[p.Name] = p.Value
	}
	return m
}
