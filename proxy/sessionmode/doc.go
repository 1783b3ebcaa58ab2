// Package sessionmode forwards a session-mode client: once the session is
// handed over, bytes pass between the client and its own backend until one
// side ends, and the result says whether the backend may be reset for the
// next client of its role.
//
// Plain sockets are forwarded by epoll event loops (Loops) the way
// PgBouncer does: each loop owns many sessions and one shared read buffer,
// and a message costs one receive and one send system call. TLS on either
// side takes one goroutine per direction instead. Both paths frame the
// streams by header only (type and length, see framer): that bounds
// client messages, keeps the client's Terminate from the backend and
// counts requests and answers, so that the proxy knows whether the backend
// is idle when the client leaves. Only a client's Query or Parse and the
// server's NotificationResponse and ReadyForQuery are read whole, to keep
// notification channels in the tenant's namespace (package notify).
//
// The package knows nothing of sessions, tenants or metrics: the caller
// passes the two connections and a few values (Options) and maps the
// Result to its own end reason.
package sessionmode
