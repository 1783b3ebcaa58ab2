// Package proxy is vitalproxy's PostgreSQL wire-protocol front end.
//
// A Server accepts clients on TCP and optionally a Unix socket, answers the
// startup packets (SSLRequest, GSSENCRequest, CancelRequest,
// StartupMessage), authenticates the client with package auth, logs in
// upstream as the role of the client's tenant and capability, asserts the
// tenant context with `SELECT set_tenant_context($1)` and only then hands
// the connection over: the upstream's ParameterStatus messages are replayed,
// the proxy's own BackendKeyData and a ReadyForQuery are sent, and from there
// bytes flow unchanged in both directions (session mode: one backend per
// client, TCP to TCP through the kernel's splice).
//
// Startup and authentication messages are read with exact-length reads
// straight from the socket, never through a buffer, so bytes a client
// pipelines after its startup packet stay in the socket until the tenant
// context is in place.
//
// Every client connection is a session (see sessionState for its states).
// Sessions end for a reason (endReason) that picks both the metric label and
// the SQLSTATE the client is told. The Server also serves /metrics, /healthz
// and /readyz, runs the isolation audit at start and on reload, and reloads
// users and tenants without dropping connections.
package proxy
