// Package txmode serves clients in transaction pooling mode: a client
// borrows a server connection (a backend of its tenant role's pool) when a
// transaction starts and returns it when the server reports the
// transaction over, so that many clients share few backends.
//
// The caller authenticates the client, sends AuthenticationOk, the
// ParameterStatus messages from Client.Params, its own BackendKeyData and
// ReadyForQuery, then calls Client.Run. Cancel requests for the client's
// key go to Client.Cancel.
//
// # How it works
//
// Messages are framed (type byte and length) and forwarded in batches
// through buffers that are reused: nothing is allocated per message on the
// hot path. A backend is borrowed at the client's first message of a
// transaction and returned at the ReadyForQuery with status I after which
// the server owes nothing (every Sync and Query answered, no
// extended-protocol message sent since the last Sync). Backends are never
// shared between tenant roles: pools are per role.
//
// One goroutine per client does the work: it writes what the client sent,
// and when the client has asked for all the answers of a request (a Sync,
// a Query) it reads them from the server itself and returns the backend.
// Plain sockets are read and written with raw system calls (package
// rawio), and a request that asks for an answer is sent as the wait for
// that answer begins, so that no receive runs before there is something
// to receive.
// A second goroutine, started once per client when first needed, reads
// the server while the client is read too: during COPY FROM STDIN, when
// the client sent extended-protocol messages without a Sync (Flush, as
// JDBC does, or a large pipeline), and when an answer takes more than
// 50ms (so that a client that leaves is noticed and a long statement does
// not stall a pipeline).
//
// # Settings
//
// The client's allow-listed startup settings (application_name, DateStyle,
// TimeZone, search_path, client_encoding, extra_float_digits, ...) and the
// configured statement_timeout and idle_in_transaction_session_timeout are
// applied, in one round trip and only when they differ, on whichever
// backend serves the client. A client's SET, RESET or DISCARD ALL (seen in
// the command tag), set_config (seen in the query text) and changes of
// reported settings (ParameterStatus) mark the backend; when it is
// returned it gets RESET ROLE and RESET ALL and the tenant context is
// asserted again with set_tenant_context, so the next client does not
// inherit them. A setting that PostgreSQL reports (application_name,
// DateStyle, TimeZone, IntervalStyle, client_encoding,
// standard_conforming_strings, default_transaction_read_only) stays with
// the client that SET it, on every backend that serves it later; other
// settings a client SETs last until its transaction ends.
//
// # Prepared statements
//
// Protocol-level named statements (Parse, Bind, Describe, Close) work
// across transactions, as pgx's statement cache, JDBC's server-side
// prepares and pgbench -M prepared use them. A client's statement names
// are mapped to server-side names derived from the query text, parameter
// types and the client's startup settings, so clients with the same
// settings share one server-side statement per backend. A statement is
// prepared lazily on whichever backend serves the client; the injected
// Parse's answer is not forwarded. Each backend keeps at most
// Options.MaxPreparedPerBackend statements and closes the least recently
// used beyond that. A client's Close forgets its name (the server-side
// statement, which other clients may share, stays until evicted). The
// unnamed statement is sent again when a client uses it on another
// backend than the one it was parsed on. DISCARD ALL and DEALLOCATE by a
// client are followed.
//
// # What needs session mode
//
// These features rely on session state that lives longer than a
// transaction and need a session-mode user:
//   - SQL-level PREPARE and EXECUTE across transactions (within one
//     transaction they work);
//   - LISTEN: notifications reach whichever client holds the backend, and
//     the backend is reset when the transaction ends; a client that runs
//     LISTEN gets a WARNING saying so;
//   - WITH HOLD cursors, session-level advisory locks (pg_advisory_lock),
//     temporary tables and other session state across transactions;
//   - SET of a setting PostgreSQL does not report, beyond the transaction.
//
// The engine cleans up after them: when a statement's tag (LISTEN,
// PREPARE, CREATE TABLE) or text (the words TEMP, TEMPORARY, HOLD,
// pg_temp, pg_advisory_lock and its try/shared forms, LISTEN, PREPARE)
// suggests session state, the backend gets DISCARD ALL and the tenant
// context again when returned. State created out of sight (inside a
// function, through EXECUTE in PL/pgSQL) is not detected; it can only
// reach later clients of the same tenant role, never another tenant.
//
// # Failures
//
// A client that waits longer than the pool's queue timeout for a backend
// gets ERROR 53300 ("no server connection available for tenant X within
// Ns; try again later") in place of its request's answers, exactly as
// PostgreSQL answers an error (for the extended protocol, the rest of the
// request up to Sync is skipped), and may try again on the same
// connection. A backend that dies during an autocommit request gets the
// client ERROR 08006 for each request in flight, and the client goes on
// with a new backend; one that dies inside a transaction block ends the
// session with FATAL 08006, since the transaction is lost. Dead backends
// and backends whose reset failed are closed, never reused; a backend idle
// in the pool for more than a second is checked for a pending end-of-file
// before use. A client that leaves mid-transaction has its COPY failed,
// its extended-protocol segment synced and its transaction rolled back;
// the backend is returned when the server reports it idle within
// Options.CleanupTimeout, else its statement is cancelled and it is
// closed. A cancel request reaches only the backend serving the client at
// that moment: the backend is not returned while the request is on its
// way.
package txmode
