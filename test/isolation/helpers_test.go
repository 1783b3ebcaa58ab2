package isolation_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/auth"
)

// mistakeStates are SQLSTATEs that mean the probe itself is wrong (syntax,
// unknown object); they never count as "refused".
var mistakeStates = []string{"42601", "42883", "42P01", "42703", "42704", "42P02", "42804", "42725"}

// tryAll runs statements whose success is harmless by design (or which may
// be refused); only a broken probe is an error.
func tryAll(ctx context.Context, conn *pgx.Conn, stmts ...string) error {
	for _, s := range stmts {
		inTx := conn.PgConn().TxStatus() != 'I'
		if inTx {
			if _, err := conn.Exec(ctx, "SAVEPOINT iso_try"); err != nil {
				return fmt.Errorf("savepoint: %w", err)
			}
		}
		_, err := conn.Exec(ctx, s)
		if inTx {
			if _, rerr := conn.Exec(ctx, "ROLLBACK TO SAVEPOINT iso_try"); rerr != nil {
				return fmt.Errorf("rollback to savepoint: %w", rerr)
			}
		}
		if err != nil && (slices.Contains(mistakeStates, sqlState(err)) || sqlState(err) == "") {
			return fmt.Errorf("%q: %w", oneLine(s), err)
		}
	}
	return nil
}

// queryText runs sql and returns every row as text (columns joined by
// tabs, rows by newlines).
func queryText(ctx context.Context, conn *pgx.Conn, sql string, args ...any) (string, error) {
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return "", err
		}
		for i, v := range vals {
			if i > 0 {
				b.WriteByte('\t')
			}
			fmt.Fprint(&b, v)
		}
		b.WriteByte('\n')
	}
	return b.String(), rows.Err()
}

// scalar runs sql and scans its single value.
func scalar[T any](ctx context.Context, conn *pgx.Conn, sql string, args ...any) (T, error) {
	var v T
	err := conn.QueryRow(ctx, sql, args...).Scan(&v)
	return v, err
}

// sharedBackends says the proxy runs in isolation mode context: tenants'
// transactions share backends logged in as the pooled roles.
func (e *env) sharedBackends() bool { return strings.HasSuffix(e.via, "/context") }

// sessionRole names the role that t's sessions of capability c ("rw",
// "ro") run as: the tenant's own role, or in context mode the pooled role.
func (e *env) sessionRole(t *tenant, c auth.Capability) string {
	if e.sharedBackends() {
		return auth.PooledRoleName(rolePrefix, c)
	}
	return t.role(c)
}

// noTenant checks a session that no proxy has entered a tenant context in
// (a direct login as a pooled role): it must have no tenant and see none of
// the victim's rows.
func (e *env) noTenant(ctx context.Context, conn *pgx.Conn) error {
	tid, err := scalar[*string](ctx, conn, "SELECT public.current_tenant_id()::text")
	if err != nil {
		return fmt.Errorf("check tenant: %w", err)
	}
	if tid != nil {
		if *tid == e.vic.id {
			return open("a session without a verified context has the victim's tenant")
		}
		return open("a session without a verified context has tenant %s", *tid)
	}
	text, err := e.sweep(ctx, conn)
	if err != nil {
		return err
	}
	if leaked := containsAny(text, e.vic.markers()); len(leaked) > 0 {
		return open("a session without a tenant read the victim's markers %v: %s", leaked, linesWith(text, leaked))
	}
	return nil
}

// checkTenant checks that conn's session still belongs to the attacker:
// session_user is an attacker role and current_tenant_id() is the
// attacker's tenant. Becoming the victim is an open path; any other
// identity is a broken case.
func (e *env) checkTenant(ctx context.Context, conn *pgx.Conn) error {
	var su string
	var tid *string
	if err := conn.QueryRow(ctx, "SELECT session_user::text, public.current_tenant_id()::text").Scan(&su, &tid); err != nil {
		return fmt.Errorf("check tenant: %w", err)
	}
	switch {
	case tid != nil && *tid == e.vic.id:
		return open("current_tenant_id() is the victim's tenant (session_user %s)", su)
	case su == e.vic.role("rw") || su == e.vic.role("ro"):
		return open("session_user is the victim's role %s", su)
	case tid == nil || *tid != e.atk.id:
		return fmt.Errorf("positive control: current_tenant_id() = %v, want the attacker's %s", tid, e.atk.id)
	case e.sharedBackends() && (su == auth.PooledRoleName(rolePrefix, auth.ReadWrite) || su == auth.PooledRoleName(rolePrefix, auth.ReadOnly)):
		// Isolation mode context: a pooled role, the tenant proven by the
		// verified context checked above.
	case su != e.atk.role("rw") && su != e.atk.role("ro"):
		return fmt.Errorf("positive control: session_user %s is not an attacker role", su)
	}
	return nil
}

// markersIn returns the tenant's markers expected in rows of tables.
func (t *tenant) markersIn(tables ...string) []string {
	out := []string{}
	for _, tbl := range tables {
		switch tbl {
		case "agents", "tools", "prompts", "workflows":
			out = append(out, t.prefix+"-"+tbl+"-private")
		}
		out = append(out, t.privateIDs[tbl]...)
	}
	return out
}

// judgeOwn checks text read by the attacker: every one of own (a subset of
// the attacker's markers the text must hold) and none of the victim's.
func (e *env) judgeOwn(what, text string, own []string) error {
	if got := containsAny(text, own); len(got) != len(own) {
		return fmt.Errorf("positive control: %s does not show the attacker's own markers (%d of %d)", what, len(got), len(own))
	}
	return e.leakIn(what, text)
}

// switchAttempts tries, in conn's session, every way a client might switch
// its tenant context to the victim's. Statements that set a plain setting
// may succeed (the setting must not matter); role switches and
// set_tenant_context must be refused.
func (e *env) switchAttempts(ctx context.Context, conn *pgx.Conn) error {
	v := quoteLit(e.vic.id)
	if err := tryAll(ctx, conn,
		"SET vital.tenant_id = "+v,
		"SELECT pg_catalog.set_config('vital.tenant_id', "+v+", false)",
		"SET app.tenant_id = "+v,
	); err != nil {
		return err
	}
	return deniedAll(ctx, conn, []string{
		"SELECT public.set_tenant_context(" + v + ")",
		"SET ROLE " + e.vic.role("rw"),
		"SET SESSION AUTHORIZATION " + e.vic.role("rw"),
	})
}

// goQuery runs fn in a goroutine; the returned channel yields its error.
func goQuery(fn func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- fn() }()
	return ch
}

// waitErr waits for a goQuery result.
func waitErr(ctx context.Context, ch <-chan error) error {
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// backendPID returns the server process id of conn's session (in
// transaction mode PgConn().PID() is the proxy's own key, not a backend's).
func backendPID(ctx context.Context, conn *pgx.Conn) (int32, error) {
	return scalar[int32](ctx, conn, "SELECT pg_backend_pid()")
}

// waitUntil polls cond until it is true or d passes.
func waitUntil(ctx context.Context, d time.Duration, cond func() (bool, error)) (bool, error) {
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if err != nil || ok {
			return ok, err
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// rollback ends conn's transaction, if any, ignoring errors: cleanup.
func rollback(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if conn.PgConn().TxStatus() != 'I' {
		_, _ = conn.Exec(ctx, "ROLLBACK")
	}
}

var errNoProxy = errors.New("proxy-level case run without a proxy")
