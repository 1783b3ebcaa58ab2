package proxy

import (
	"context"
	"errors"
	"time"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/proxy/observe"
	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/startup"
	"github.com/vitalproxy/vitalproxy/proxy/txmode"
)

// txCanceler cancels whatever backend serves the client's current
// transaction, and nothing else.
type txCanceler struct{ c *txmode.Client }

func (t txCanceler) cancel(ctx context.Context) error { return t.c.Cancel(ctx) }

// setupTransactionMode prepares a transaction-pooling session: no backend
// is held; the client is told the parameters a backend of its role reports
// (with its own settings applied), then the txmode engine lends it a
// backend per transaction.
func (s *session) setupTransactionMode(ctx context.Context, id *auth.Identity, settings map[string]string, wire *startup.Wire) (endReason, error) {
	rt := s.rt
	m := s.srv.metrics
	tm := m.ForTenant(id.Tenant.Slug)
	pk := rt.poolKey(id)
	var enter func(pid uint32) string
	if pk.Shared {
		enter = func(pid uint32) string { return auth.TenantContext(rt.contextKey, id.Tenant.ID, pid, pk.Role) }
		slug := id.Tenant.Slug
		s.pooledTenant.Store(&slug)
	}
	var route func(ctx context.Context, failed string) (string, error)
	if s.srv.router != nil {
		route = s.srv.router.routeFunc(rt.cfg, routesToReplica(rt.cfg, id))
	}
	tx, err := txmode.NewClient(s.conn, txmode.Options{
		Pool:           s.srv.pool,
		Key:            pk,
		Route:          route,
		EnterContext:   enter,
		StartupParams:  settings,
		MaxMessageSize: rt.cfg.Limits.MaxMessageSize,
		Channels:       rt.channels(id.Tenant.ID),
		Logger:         s.logger,
		Hooks: txmode.Hooks{
			OnTransaction:         func(time.Duration) { tm.Transactions.Inc() },
			OnNotificationDropped: tm.Dropped.Inc,
			OnPrepared:            m.CountPrepared,
			OnReset:               m.CountReset,
			OnContextSwitch:       m.CountContextSwitch,
		},
	})
	if err != nil {
		return reasonNone, newClientError(reasonParamRefused, codeProtocolViolation, err, "%s", err.Error())
	}
	params, err := tx.Params(ctx)
	if err != nil {
		ce := backendError(id.Tenant.Slug, rt.cfg.Pool.QueueTimeout, err)
		if ce.reason == reasonContextFailed {
			m.ContextInjection(false)
		}
		return reasonNone, ce
	}
	m.ContextInjection(true)
	s.tx = tx
	key, err := s.srv.cancels.register(txCanceler{tx})
	if err != nil {
		return reasonNone, err
	}
	s.key, s.hasKey = key, true
	if err := wire.Send(startup.Handover(params, key.pid, key.secret[:])...); err != nil {
		return reasonNone, err
	}
	if err := s.must(stateForwarding); err != nil {
		return reasonNone, err
	}
	return reasonNone, nil
}

// poolKey is the pool a transaction-mode session of id borrows from: its
// tenant role's, or in isolation mode context (rw and ro capabilities) the
// shared pool of the capability's pooled role.
func (rt *runtimeConfig) poolKey(id *auth.Identity) pool.Key {
	if rt.cfg.IsolationFor(id.Tenant.Slug) == config.IsolationContext &&
		(id.Capability == auth.ReadWrite || id.Capability == auth.ReadOnly) {
		return pool.Key{Tenant: id.Tenant.Slug, TenantID: id.Tenant.ID,
			Role: auth.PooledRoleName(rt.cfg.RolePrefix, id.Capability), Shared: true}
	}
	return pool.Key{Tenant: id.Tenant.Slug, TenantID: id.Tenant.ID, Role: id.Role}
}

// forwardTransactions runs the transaction-mode engine until the client
// leaves.
func (s *session) forwardTransactions(ctx context.Context, tm observe.Tenant) endReason {
	err := s.tx.Run(ctx)
	_ = s.transition(stateDraining)
	s.c2s, s.s2c = s.tx.BytesFromClient(), s.tx.BytesToClient()
	tm.C2S.Add(float64(s.c2s))
	tm.S2C.Add(float64(s.s2c))
	if msg := s.ended.Load(); msg != nil && ctx.Err() != nil {
		// An operator ended the session: the engine sent nothing.
		s.sendFatal(fatal(codeAdminShutdown, *msg, ""))
	}
	_ = s.conn.Close()
	switch {
	case s.forced.Load(), s.ended.Load() != nil:
		return reasonShutdown
	case err == nil:
		return reasonClientClosed
	case errors.Is(err, txmode.ErrProtocol):
		return reasonProtocolError
	case errors.Is(err, pool.ErrQueueTimeout):
		return reasonPoolTimeout
	default:
		s.logger.Debug("transaction-mode session ended", "error", err)
		return reasonServerClosed
	}
}
