package proxy

import (
	"context"
	"time"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/proxy/console"
	"github.com/vitalproxy/vitalproxy/proxy/startup"
)

// maxConsoleLogins bounds the console sessions authenticating at once:
// they count in no client limit, so unauthenticated connections to the
// console database must not be a way around those.
const maxConsoleLogins = 16

// consoleCanceler takes a console session's cancel key; there is nothing
// upstream to cancel.
type consoleCanceler struct{}

func (consoleCanceler) cancel(context.Context) error { return nil }

// setupConsole finishes the start-up of a console session: no backend,
// the console's own ParameterStatus values, then ReadyForQuery.
func (s *session) setupConsole(id *auth.Identity, db string, settings map[string]string, wire *startup.Wire) (endReason, error) {
	s.consoleID = id
	s.consoleSettings = settings
	s.consoleDB = db
	s.isConsole.Store(true)
	s.logger = s.logger.With("console", id.Console)
	s.info.Store(&clientInfo{user: id.User, console: id.Console, mode: "console", database: db,
		appName: settings["application_name"], connectedAt: s.start})
	if err := s.conn.SetDeadline(time.Time{}); err != nil {
		return reasonNone, err
	}
	for _, st := range []sessionState{stateConnecting, stateInjecting} {
		if err := s.must(st); err != nil {
			return reasonNone, err
		}
	}
	key, err := s.srv.cancels.register(consoleCanceler{})
	if err != nil {
		return reasonNone, err
	}
	s.key, s.hasKey = key, true
	params := console.Params(settings)
	params["session_authorization"] = id.User
	if err := wire.Send(startup.Handover(params, key.pid, key.secret[:])...); err != nil {
		return reasonNone, err
	}
	return reasonNone, s.must(stateForwarding)
}

// serveConsole answers the console session until it ends.
func (s *session) serveConsole(ctx context.Context) {
	id := s.consoleID
	dialect := pgbDialect(s.rt.cfg, s.consoleDB)
	s.logger.Info("console session opened", "user", id.User, "tenants", id.ConsoleTenants, "database", s.consoleDB)
	err := console.Serve(ctx, s.conn, console.Options{
		Backend:        consoleBackend{s.srv},
		User:           id.User,
		Role:           id.Console,
		Tenants:        id.ConsoleTenants,
		Settings:       s.consoleSettings,
		MaxMessageSize: s.rt.cfg.Limits.MaxMessageSize,
		Logger:         s.logger,
		Dialect:        dialect,
		Count:          s.srv.metrics.ConsoleCommand,
	})
	_ = s.transition(stateDraining)
	_ = s.conn.Close()
	s.srv.cancels.remove(s.key)
	reason := reasonClientClosed
	switch {
	case s.forced.Load():
		reason = reasonShutdown
	case err != nil:
		reason = reasonProtocolError
		s.logger.Debug("console session ended", "error", err)
	}
	s.srv.metrics.SessionEnd(reason.String())
	_ = s.transition(stateClosed)
	s.logger.Info("console session closed", "reason", reason.String(), "duration_seconds", time.Since(s.start).Seconds())
}

// noteAuthFailure counts a failed login against the tenant the startup
// user name points at (its @tenant, else the user's default tenant).
func (s *Server) noteAuthFailure(startupUser string) {
	dir := s.directory()
	if dir == nil || startupUser == "" {
		return
	}
	name, slug := dir.SplitUser(startupUser)
	if slug == "" {
		if u, ok := dir.User(name); ok && len(u.Tenants) > 0 {
			slug = u.Tenants[0]
		}
	}
	if _, ok := dir.Tenant(slug); ok {
		s.steer.authFailed(slug)
	}
}
