// Package console serves the operator console: the virtual database
// (console.database, default vitalproxy) that users with a console role
// connect to with psql or any PostgreSQL driver. The proxy answers it
// itself; nothing is forwarded upstream.
//
// The package owns the console's side of the protocol once a session is
// handed over (the simple query protocol, and the extended one with text
// results), the command grammar (Parse), the permission rules (a stats user
// may only SHOW; a user bound to tenants sees and steers only those), and
// the harmless answers to the SET, SHOW and SELECT statements that drivers
// send when they connect. What the commands read and change is behind the
// Backend interface, which the proxy implements; this package holds no
// state of the proxy's. The grammar is documented in docs/console.md.
package console
