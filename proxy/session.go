package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/proxy/backend"
	"github.com/vitalproxy/vitalproxy/proxy/observe"
	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/sessionmode"
	"github.com/vitalproxy/vitalproxy/proxy/startup"
	"github.com/vitalproxy/vitalproxy/proxy/txmode"
)

// sessionState is where a session is in its life. The allowed transitions
// are:
//
//	startup        -> tls, authenticating, closed
//	tls            -> startup, closed
//	authenticating -> connecting, closed
//	connecting     -> injecting, closed
//	injecting      -> forwarding, closed
//	forwarding     -> draining, closed
//	draining       -> closed
//
// A CancelRequest is served in the startup state and goes straight to
// closed.
type sessionState int32

// The session states.
const (
	stateStartup sessionState = iota
	stateTLS
	stateAuthenticating
	stateConnecting
	stateInjecting
	stateForwarding
	stateDraining
	stateClosed
)

var stateNames = [...]string{"startup", "tls", "authenticating", "connecting", "injecting", "forwarding", "draining", "closed"}

func (s sessionState) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return fmt.Sprintf("state(%d)", int32(s))
	}
	return stateNames[s]
}

var transitions = map[sessionState][]sessionState{
	stateStartup:        {stateTLS, stateAuthenticating, stateClosed},
	stateTLS:            {stateStartup, stateClosed},
	stateAuthenticating: {stateConnecting, stateClosed},
	stateConnecting:     {stateInjecting, stateClosed},
	stateInjecting:      {stateForwarding, stateClosed},
	stateForwarding:     {stateDraining, stateClosed},
	stateDraining:       {stateClosed},
}

// session is one client connection. Its goroutine owns everything except
// the fields marked otherwise.
type session struct {
	srv    *Server
	rt     *runtimeConfig
	id     string
	start  time.Time
	remote string
	logger *slog.Logger

	// conn is the client connection (a *tls.Conn after an SSLRequest);
	// only the session's goroutine uses it. raw is the accepted socket,
	// which the server may close from another goroutine.
	conn net.Conn
	raw  net.Conn

	// state is read by the server (shutdown) as well.
	state atomic.Int32
	// forced is set by the server when the drain deadline passed, when an
	// operator ended the session, or when the session's backend is on a
	// former primary (ended then holds what the client is told).
	forced atomic.Bool

	// mu guards backend against the server's force close.
	mu      sync.Mutex
	backend *pool.Backend
	// tenantID is asserted again when the backend is reset for reuse.
	tenantID string
	// idleAtEnd: when forwarding ended, the backend had answered every
	// request and was idle outside a transaction (see idleAfter).
	idleAtEnd bool
	// settings are the client's startup settings as applied; the reset
	// applies them again for the next client.
	settings map[string]string
	// fwd forwards the session in session mode.
	fwd sessionmode.Forwarder

	user     string
	tenant   string
	identity *auth.Identity // set once authenticated and admitted
	// tx serves the client in transaction pooling mode (nil in session
	// mode).
	tx       *txmode.Client
	key      cancelKey
	hasKey   bool
	counted  bool // counted in Server.clients
	c2s, s2c int64
	// pooledTenant is the tenant slug of a session that borrows shared
	// backends (isolation mode context), for Server.endSuspended.
	pooledTenant atomic.Pointer[string]

	// cancel ends the session's context (set before its goroutine
	// starts); KILL CLIENT calls it.
	cancel context.CancelFunc
	// ended is what the client is told when an operator ends the session
	// (see endByOperator).
	ended atomic.Pointer[string]
	// info is what the console shows of the session once admitted.
	info atomic.Pointer[clientInfo]
	// isConsole: a console session (see consoleIdentity), which the drain
	// does not wait for.
	isConsole atomic.Bool
	// consoleID is the identity of a console session.
	consoleID *auth.Identity
	// consoleSettings are a console session's startup settings.
	consoleSettings map[string]string
	// consoleDB is the database a console session connected to: the
	// console's or the PgBouncer-compatible one.
	consoleDB string
}

// kill ends the session on an operator's command (KILL CLIENT).
func (s *session) kill() {
	if s.cancel != nil {
		s.cancel()
	}
	s.forceClose()
}

func newSession(srv *Server, conn net.Conn, rt *runtimeConfig) *session {
	var b [6]byte
	_, _ = rand.Read(b[:])
	s := &session{
		srv:    srv,
		rt:     rt,
		id:     hex.EncodeToString(b[:]),
		start:  time.Now(),
		remote: conn.RemoteAddr().String(),
		conn:   conn,
		raw:    conn,
	}
	s.logger = srv.logger.With("session_id", s.id, "remote_addr", s.remote)
	return s
}

// transition moves the session to state to, refusing moves that the state
// diagram does not list.
func (s *session) transition(to sessionState) error {
	from := sessionState(s.state.Load())
	if to == stateClosed && from != stateClosed {
		s.state.Store(int32(to))
		return nil
	}
	for _, ok := range transitions[from] {
		if ok == to {
			s.state.Store(int32(to))
			return nil
		}
	}
	return fmt.Errorf("session: illegal transition %s -> %s", from, to)
}

// must applies a transition that the code's structure guarantees; a
// failure is a bug and ends the session as an internal error.
func (s *session) must(to sessionState) error {
	if err := s.transition(to); err != nil {
		return newClientError(reasonInternal, codeInternalError, err, "internal error")
	}
	return nil
}

// run serves the client until the session ends. It closes the client
// connection and, if there is one, the upstream connection.
func (s *session) run(ctx context.Context) {
	m := s.srv.metrics
	defer func() {
		if s.counted {
			s.srv.clients.Add(-1)
		}
		if s.identity != nil {
			s.srv.counts.release(s.identity)
		}
	}()
	reason, err := s.setup(ctx)
	if err != nil || reason != reasonNone {
		s.refuse(reason, err)
		s.closeAll()
		_ = s.transition(stateClosed)
		return
	}
	m.ConnectionAttempt("ok")
	m.SessionSetup(time.Since(s.start))
	if s.consoleID != nil {
		s.serveConsole(ctx)
		return
	}
	tm := m.ForTenant(s.tenant)
	tm.Connections.Inc()
	s.logger.Info("session opened", "user", s.user, "setup_seconds", time.Since(s.start).Seconds())

	if s.tx != nil {
		reason = s.forwardTransactions(ctx, tm)
		s.srv.cancels.remove(s.key)
	} else {
		var reusable bool
		reason, reusable = s.forward(tm)
		// The key goes first: the backend keeps its pid for its next
		// client, which this client's key must not reach.
		s.srv.cancels.remove(s.key)
		s.recycle(reusable)
	}

	tm.Connections.Dec()
	m.SessionEnd(reason.String())
	_ = s.transition(stateClosed)
	s.logger.Info("session closed", "reason", reason.String(),
		"duration_seconds", time.Since(s.start).Seconds(),
		"bytes_client_to_server", s.c2s, "bytes_server_to_client", s.s2c)
}

// recycle hands the session's backend back to the pool: reset in the
// background for the next client of the same role when reusable, closed
// otherwise.
func (s *session) recycle(reusable bool) {
	s.mu.Lock()
	b := s.backend
	s.backend = nil
	s.mu.Unlock()
	if b == nil {
		return
	}
	if !reusable || s.forced.Load() {
		s.srv.pool.Release(b, false)
		return
	}
	if b.RoleDefaults {
		// The pool closes it (reason role_defaults): no reset first.
		s.srv.pool.Release(b, true)
		return
	}
	resetQuery, tenantID, idle := s.rt.cfg.Pool.ResetQuery, s.tenantID, s.idleAtEnd
	// Only DISCARD ALL is known to bring every setting back to the role's
	// defaults, on top of which the client's own can be applied again.
	var keep map[string]string
	if strings.EqualFold(strings.TrimSpace(resetQuery), "DISCARD ALL") {
		keep = s.settings
	}
	srv := s.srv
	srv.recycling.Add(1)
	go func() {
		defer srv.recycling.Done()
		reported, err := backend.Reset(context.Background(), b.Conn.Conn, resetQuery, tenantID, idle, keep)
		if err != nil {
			srv.metrics.CountReset(false)
			srv.logger.Debug("backend reset failed; closing it", "error", err)
		} else {
			srv.metrics.CountReset(true)
			b.Data = nil
			b.Settings = keep
			b.Reported = reported
		}
		srv.pool.Release(b, err == nil)
	}()
}

// forward moves bytes between the client and the backend until one side
// ends (see sessionmode.Forwarder.Run). It reports whether the backend may
// be reset and reused: true when the client ended first (Terminate or
// hang-up) and the backend was not touched since.
func (s *session) forward(tm observe.Tenant) (endReason, bool) {
	res := s.fwd.Run(s.conn, s.backend.Conn.Conn, sessionmode.Options{
		Loops:          s.srv.loops,
		MaxMessageSize: s.rt.cfg.Limits.MaxMessageSize,
		Channels:       s.rt.channels(s.tenantID),
		Forced:         &s.forced,
		Ended:          &s.ended,
	})
	_ = s.transition(stateDraining)
	s.c2s, s.s2c = res.C2S, res.S2C
	tm.C2S.Add(float64(s.c2s))
	tm.S2C.Add(float64(s.s2c))
	tm.Dropped.Add(float64(res.Dropped))
	var reason endReason
	switch res.End {
	case sessionmode.EndShutdown:
		reason = reasonShutdown
	case sessionmode.EndServer:
		reason = reasonServerClosed
	case sessionmode.EndProtocol:
		reason = reasonProtocolError
	default:
		reason = reasonClientClosed
		s.idleAtEnd = res.Idle
	}
	if res.Reusable {
		s.backend.Conn.Conn = res.Server
	}
	return reason, res.Reusable
}

// refuse ends a session that never reached forwarding: it tells the client
// why (when there is someone to tell) and counts and logs the outcome.
func (s *session) refuse(reason endReason, err error) {
	m := s.srv.metrics
	var ce *clientError
	if err != nil {
		ce = s.classify(err)
		reason = ce.reason
	}
	if s.hasKey {
		s.srv.cancels.remove(s.key)
	}
	m.ConnectionAttempt(reason.String())
	if reason == reasonCancelRequest {
		return
	}
	if ce != nil && ce.code != "" {
		s.sendFatal(ce.response())
	}
	attrs := []any{"reason", reason.String(), "duration_seconds", time.Since(s.start).Seconds()}
	if s.user != "" {
		attrs = append(attrs, "user", s.user)
	}
	if ce != nil {
		if ce.code != "" {
			attrs = append(attrs, "sqlstate", ce.code)
		}
		attrs = append(attrs, "error", ce.Error())
	}
	level := slog.LevelInfo
	if reason == reasonInternal || reason == reasonContextFailed {
		level = slog.LevelError
	}
	s.logger.Log(context.Background(), level, "session refused", attrs...)
}

// classify turns a setup error into a clientError. A zero code means the
// client is gone or needs no answer.
func (s *session) classify(err error) *clientError {
	if s.forced.Load() {
		return &clientError{reason: reasonShutdown, code: codeAdminShutdown,
			message: "terminating connection because the proxy is shutting down", err: err}
	}
	var ce *clientError
	if errors.As(err, &ce) {
		return ce
	}
	var se *startup.Error
	if errors.As(err, &se) {
		return &clientError{reason: startupReason(se.Reason), code: se.Code, message: se.Message}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &clientError{reason: reasonStartupTimeout, code: codeProtocolViolation,
			message: "timeout expired during connection startup", err: err}
	}
	if isDisconnect(err) {
		return &clientError{reason: reasonClientGone, err: err}
	}
	var ae *auth.Error
	if errors.As(err, &ae) {
		reason := ae.Reason
		if reason == "" {
			reason = "unknown"
		}
		s.srv.metrics.AuthFailure(reason)
		s.srv.noteAuthFailure(s.user)
		code := ae.Code
		if code == "" {
			code = codeInvalidPassword
		}
		return &clientError{reason: reasonAuthFailed, code: code, message: ae.Message, err: err}
	}
	var re tls.RecordHeaderError
	if errors.As(err, &re) {
		return &clientError{reason: reasonProtocolError, err: err}
	}
	return &clientError{reason: reasonInternal, code: codeInternalError, message: "internal error", err: err}
}

// isDisconnect reports whether err means the peer went away.
func isDisconnect(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, startup.ErrClientTerminated)
}

// sendFatal writes one ErrorResponse to the client, best effort, under its
// own short deadline (the startup deadline may have passed).
func (s *session) sendFatal(msg *pgproto3.ErrorResponse) {
	b, err := msg.Encode(nil)
	if err != nil {
		return
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = s.conn.Write(b)
}

// closeAll closes the client and the upstream connection.
func (s *session) closeAll() {
	_ = s.conn.Close()
	s.mu.Lock()
	if s.backend != nil {
		s.srv.pool.Release(s.backend, false)
		s.backend = nil
	}
	s.mu.Unlock()
}

// forceClose is called by the server when the drain deadline passed. A
// forwarding session loses its upstream first, so that its forwarder tells
// the client why before closing it.
func (s *session) forceClose() {
	s.forced.Store(true)
	s.mu.Lock()
	if s.fwd.Kill() {
		s.mu.Unlock()
		return
	}
	b := s.backend
	s.mu.Unlock()
	if b != nil && sessionState(s.state.Load()) >= stateForwarding {
		_ = b.Close()
		return
	}
	_ = s.raw.Close()
}

// maxPreludePackets bounds SSLRequest/GSSENCRequest packets before the
// StartupMessage.
const maxPreludePackets = 3

// setup runs the startup phase up to and including the hand-over. It
// returns reasonCancelRequest (and no error) for a cancel connection.
func (s *session) setup(ctx context.Context) (endReason, error) {
	rt := s.rt
	lim := rt.cfg.Limits
	if err := s.conn.SetDeadline(s.start.Add(lim.StartupTimeout)); err != nil {
		return reasonNone, err
	}
	var (
		pkt   *startup.Packet
		err   error
		isTLS bool
	)
	for i := 0; ; i++ {
		if i > maxPreludePackets {
			return reasonNone, protocolError("too many startup packets")
		}
		pkt, err = startup.ReadPacket(s.conn, lim.MaxStartupPacket)
		if err != nil {
			return reasonNone, err
		}
		switch pkt.Kind {
		case startup.PacketSSLRequest:
			if isTLS {
				return reasonNone, protocolError("SSLRequest after TLS was negotiated")
			}
			if rt.tls == nil {
				if _, err := s.conn.Write([]byte{'N'}); err != nil {
					return reasonNone, err
				}
				continue
			}
			if _, err := s.conn.Write([]byte{'S'}); err != nil {
				return reasonNone, err
			}
			if err := s.must(stateTLS); err != nil {
				return reasonNone, err
			}
			tc := tls.Server(s.conn, rt.tls)
			if err := tc.HandshakeContext(ctx); err != nil {
				_ = tc.Close()
				return reasonNone, &clientError{reason: reasonProtocolError, err: fmt.Errorf("TLS handshake: %w", err)}
			}
			s.conn = tc
			isTLS = true
			if err := s.must(stateStartup); err != nil {
				return reasonNone, err
			}
			continue
		case startup.PacketGSSENCRequest:
			if _, err := s.conn.Write([]byte{'N'}); err != nil {
				return reasonNone, err
			}
			continue
		case startup.PacketCancel:
			s.serveCancel(ctx, pkt.Cancel)
			return reasonCancelRequest, nil
		}
		break
	}
	params, err := startup.FilterParams(pkt.Startup.Parameters)
	if err != nil {
		return reasonNone, err
	}
	s.user = params.User
	if len(params.Dropped) > 0 {
		s.logger.Debug("dropped startup parameters", "params", params.Dropped)
	}
	// The console works while the proxy drains and is exempt from the
	// client limits.
	isConsole := params.Database == rt.cfg.Console.Database ||
		(rt.cfg.Console.PgBouncerDatabase != "" && params.Database == rt.cfg.Console.PgBouncerDatabase)
	if isConsole {
		// Not yet authenticated: a bounded number of console log-ins at a
		// time, so that the exemption is no way around the limits.
		if n := s.srv.consoleLogins.Add(1); n > maxConsoleLogins {
			s.srv.consoleLogins.Add(-1)
			return reasonNone, newClientError(reasonTooManyClients, codeTooManyConnections, nil,
				"sorry, too many console connections are logging in")
		}
		defer s.srv.consoleLogins.Add(-1)
	} else {
		if s.srv.draining.Load() {
			return reasonNone, newClientError(reasonShuttingDown, codeCannotConnectNow, nil, "the proxy is shutting down")
		}
		if db := params.Database; db != "" && db != rt.upstreamDB && db != params.User && db != userPart(params.User) {
			return reasonNone, newClientError(reasonParamRefused, codeInvalidCatalogName, nil, "database %q does not exist", db)
		}
		s.counted = true
		if n := s.srv.clients.Add(1); lim.MaxClientConns > 0 && n > int64(lim.MaxClientConns) {
			return reasonNone, newClientError(reasonTooManyClients, codeTooManyConnections, nil, "sorry, too many clients already")
		}
	}
	wire := startup.NewWire(s.conn, lim.MaxStartupPacket)
	if pkt.Minor > 0 || len(pkt.UnknownOptions) > 0 {
		sort.Strings(pkt.UnknownOptions)
		if err := wire.Send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: pkt.UnknownOptions}); err != nil {
			return reasonNone, err
		}
	}

	if err := s.must(stateAuthenticating); err != nil {
		return reasonNone, err
	}
	req := auth.Request{StartupUser: params.User, TLS: isTLS, Console: isConsole}
	if tc, ok := s.conn.(*tls.Conn); ok {
		req.PeerCertificate = peerCertificate(tc)
	}
	id, err := rt.auth.Authenticate(ctx, s.srv.directory(), wire, req)
	if err != nil {
		return reasonNone, err
	}
	s.user = id.User
	if isConsole {
		return s.setupConsole(id, params.Database, params.Runtime, wire)
	}
	s.tenant = id.Tenant.Slug
	s.logger = s.logger.With("tenant", id.Tenant.Slug)
	if s.srv.steer.isDisabled(id.Tenant.Slug) {
		return reasonNone, newClientError(reasonParamRefused, codeCannotConnectNow, nil,
			"tenant %q is disabled by an administrator; try again later", id.Tenant.Slug)
	}
	if err := s.srv.counts.admit(rt.cfg, id); err != nil {
		return reasonNone, newClientError(reasonTooManyClients, codeTooManyConnections, err, "%s", err.Error())
	}
	s.identity = id
	policy := policyFor(rt.cfg, id)
	s.info.Store(&clientInfo{user: id.User, tenant: id.Tenant.Slug, mode: policy.mode,
		appName: params.Runtime["application_name"], connectedAt: s.start})
	for k, v := range policy.settings {
		if params.Runtime == nil {
			params.Runtime = map[string]string{}
		}
		params.Runtime[k] = v
	}
	// Authentication is over; nothing is read from the client until
	// forwarding starts.
	if err := s.conn.SetDeadline(time.Time{}); err != nil {
		return reasonNone, err
	}

	if err := s.must(stateConnecting); err != nil {
		return reasonNone, err
	}
	if err := s.must(stateInjecting); err != nil {
		return reasonNone, err
	}
	if policy.mode == "transaction" {
		return s.setupTransactionMode(ctx, id, params.Runtime, wire)
	}
	// A new backend asserted the tenant context as it logged in; a reused
	// one asserted it again when its previous client's session was reset.
	b, err := s.srv.acquireRouted(ctx, rt.cfg, id, pool.Key{Tenant: id.Tenant.Slug, TenantID: id.Tenant.ID, Role: id.Role})
	if err != nil {
		ce := backendError(id.Tenant.Slug, rt.cfg.Pool.QueueTimeout, err)
		if ce.reason == reasonContextFailed {
			s.srv.metrics.ContextInjection(false)
		}
		return reasonNone, ce
	}
	if b.Data != nil {
		// The transaction-mode engine left its state (shared statements,
		// settings) on this backend: clear it for a session-mode client.
		if err := txmode.Reclaim(ctx, b); err != nil {
			s.srv.pool.Release(b, false)
			return reasonNone, backendError(id.Tenant.Slug, rt.cfg.Pool.QueueTimeout, err)
		}
	}
	s.srv.metrics.ContextInjection(true)
	s.mu.Lock()
	s.backend = b
	s.tenantID = id.Tenant.ID
	s.mu.Unlock()
	if s.forced.Load() {
		return reasonNone, net.ErrClosed
	}
	// A reset may have left the previous client's settings applied: the
	// server reported where they stand.
	serverParams := paramsOf(b)
	for k, v := range b.Reported {
		serverParams[k] = v
	}
	from := b.Settings
	b.Settings, b.Reported = nil, nil
	s.settings = params.Runtime
	if err := backend.ApplySettings(ctx, b.Conn, from, s.settings, serverParams); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return reasonNone, newClientError(reasonParamRefused, pgErr.Code, err, "%s", pgErr.Message)
		}
		return reasonNone, newClientError(reasonUpstreamFailed, codeConnectionFailure, err, "could not connect to the database server")
	}

	// The client is told its backend's real pid, so that pg_backend_pid(),
	// pg_stat_activity and notifications agree with its driver; the
	// secret is the proxy's own. (A server that sent no BackendKeyData
	// gets the client a random pid.)
	var key cancelKey
	if b.PID != 0 {
		key, err = s.srv.cancels.registerPID(b.PID, backendCanceler{b})
	} else {
		key, err = s.srv.cancels.register(backendCanceler{b})
	}
	if err != nil {
		return reasonNone, err
	}
	s.key, s.hasKey = key, true
	if err := wire.Send(startup.Handover(serverParams, key.pid, key.secret[:])...); err != nil {
		return reasonNone, err
	}
	if err := s.must(stateForwarding); err != nil {
		return reasonNone, err
	}
	return reasonNone, nil
}

// userPart returns the user name without an "@tenant" suffix.
func userPart(startupUser string) string {
	for i := len(startupUser) - 1; i >= 0; i-- {
		if startupUser[i] == '@' {
			return startupUser[:i]
		}
	}
	return startupUser
}

// peerCertificate returns the client's verified certificate, or nil.
func peerCertificate(tc *tls.Conn) *x509.Certificate {
	st := tc.ConnectionState()
	if len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return nil
	}
	return st.PeerCertificates[0]
}
