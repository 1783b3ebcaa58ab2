// Package proxy is vitalproxy's PostgreSQL wire-protocol front end.
//
// A Server accepts clients on TCP and optionally a Unix socket, answers the
// startup packets (SSLRequest, GSSENCRequest, CancelRequest,
// StartupMessage), authenticates the client with package auth, logs in
// upstream as the role of the client's tenant and capability, asserts the
// tenant context with `SELECT set_tenant_context($1)` and only then hands
// the connection over: the upstream's ParameterStatus messages are replayed,
// a BackendKeyData with the proxy's own secret (and, in session mode, the
// backend's real pid) and a ReadyForQuery are sent, and from there
// the client is served in session mode (one backend per client, package
// sessionmode) or transaction mode (a backend per transaction, package
// txmode).
//
// This package is the orchestrator: the listeners and the accept loop, the
// session registry and the drain (server.go), one session's life from
// accept to close (session.go, txsession.go), the cancel map, connection
// limits, reloads and the isolation audit. The byte-level work lives in
// sub-packages: startup (startup packets, settings, the authentication
// wire, the hand-over messages), sessionmode (forwarding), backend (the
// proxy's own conversations with a pooled backend: settings, resets),
// observe (metrics, /metrics /healthz /readyz, the live isolation probe),
// with pool, upstream, txmode, notify and rawio below them.
//
// Every client connection is a session (see sessionState for its states).
// Sessions end for a reason (endReason) that picks both the metric label and
// the SQLSTATE the client is told.
package proxy
