package proxy

// This file holds every use of pgconn's Hijack and Construct, which are
// outside pgx's semantic-versioning promise; pgx is pinned in go.mod.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// upstream is a logged-in, context-asserted backend taken over from pgconn.
// The session owns conn.
type upstream struct {
	conn   net.Conn
	params map[string]string
	hc     *pgconn.HijackedConn
}

// setTenantContextSQL asserts the tenant of the session's login role and
// publishes it for application code. The tenant id is a bind parameter.
const setTenantContextSQL = "SELECT set_tenant_context($1)"

// dialUpstream logs in as role with its derived password. base is the
// parsed upstream URL and is not modified; runtime are the client's
// allow-listed startup settings.
func dialUpstream(ctx context.Context, base *pgconn.Config, role, password string,
	runtime map[string]string) (*pgconn.PgConn, error) {
	cc := base.Copy()
	cc.User = role
	cc.Password = password
	params := make(map[string]string, len(cc.RuntimeParams)+len(runtime))
	for k, v := range cc.RuntimeParams {
		params[k] = v
	}
	for k, v := range runtime {
		params[k] = v
	}
	cc.RuntimeParams = params
	cc.OnNotice = nil
	cc.OnNotification = nil
	cc.OnPgError = nil
	pc, err := pgconn.ConnectConfig(ctx, cc)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && isAuthClass(pgErr.Code) {
			return nil, newClientError(reasonUpstreamFailed, codeInvalidAuthSpec, err,
				"the database refused the login role of this tenant")
		}
		return nil, newClientError(reasonUpstreamFailed, codeConnectionFailure, err,
			"could not connect to the database server")
	}
	return pc, nil
}

// assertTenant checks the login, asserts the tenant context and hijacks the
// connection. On failure pc is closed: the session is refused (fail closed).
func assertTenant(ctx context.Context, pc *pgconn.PgConn, role, tenantID string) (*upstream, error) {
	fail := func(e *clientError) (*upstream, error) {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		pc.Close(closeCtx)
		cancel()
		return nil, e
	}
	// Tenant traffic never runs as a superuser or as another role: the
	// server reports is_superuser and session_authorization at login, so
	// these checks cost nothing.
	if su := pc.ParameterStatus("is_superuser"); su != "off" {
		return fail(newClientError(reasonContextFailed, codeInternalError,
			fmt.Errorf("upstream role %q reports is_superuser=%q", role, su),
			"the tenant login role is not safe to use"))
	}
	if sa := pc.ParameterStatus("session_authorization"); sa != "" && sa != role {
		return fail(newClientError(reasonContextFailed, codeInternalError,
			fmt.Errorf("upstream session_authorization %q, want %q", sa, role),
			"the tenant login role is not safe to use"))
	}
	rr := pc.ExecParams(ctx, setTenantContextSQL, [][]byte{[]byte(tenantID)}, []uint32{pgtype.UUIDOID}, nil, nil)
	if _, err := rr.Close(); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "42501" || isAuthClass(pgErr.Code)) {
			return fail(newClientError(reasonContextFailed, codeInvalidAuthSpec, err,
				"the database refused the tenant context for this login"))
		}
		return fail(newClientError(reasonContextFailed, codeInternalError, err,
			"could not establish the tenant context"))
	}
	if err := pc.SyncConn(ctx); err != nil {
		return fail(newClientError(reasonContextFailed, codeInternalError, err,
			"could not establish the tenant context"))
	}
	if st := pc.TxStatus(); st != 'I' {
		return fail(newClientError(reasonContextFailed, codeInternalError,
			fmt.Errorf("upstream transaction status %q after set_tenant_context", st),
			"could not establish the tenant context"))
	}
	hc, err := pc.Hijack()
	if err != nil {
		return fail(newClientError(reasonInternal, codeInternalError, err, "could not take over the database connection"))
	}
	// pgconn may have left a deadline on the socket.
	_ = hc.Conn.SetDeadline(time.Time{})
	u := &upstream{conn: hc.Conn, params: hc.ParameterStatuses, hc: hc}
	// Keep only what a cancel needs; Construct builds a new Frontend, so
	// pgconn's read and write buffers can go.
	hc.Frontend = nil
	return u, nil
}

// isAuthClass reports whether code is in SQLSTATE class 28 (invalid
// authorization specification).
func isAuthClass(code string) bool { return len(code) == 5 && code[:2] == "28" }

// cancel sends a CancelRequest for the upstream backend, over TLS if the
// backend connection uses TLS. It rebuilds a PgConn around the hijacked
// state only to reuse pgconn's cancel logic; that PgConn does no I/O on the
// session's socket and is never closed (closing it would close the socket).
func (u *upstream) cancel(ctx context.Context) error {
	hc := *u.hc
	pc, err := pgconn.Construct(&hc)
	if err != nil {
		return fmt.Errorf("rebuild upstream connection state: %w", err)
	}
	return pc.CancelRequest(ctx)
}
