package isolation_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// proxyCases attack the proxy with raw protocol; they run only through it.
func proxyCases() []attackCase {
	cs := []attackCase{}
	for _, p := range startupVariants() {
		cs = append(cs, attackCase{name: "startup-" + p.name, category: "proxy", level: levelProxy,
			run: func(ctx context.Context, e *env) error { return caseStartupParams(ctx, e, p) }})
	}
	cs = append(cs,
		attackCase{name: "victim-user-with-attacker-password", category: "proxy", level: levelProxy, run: caseVictimUser},
		attackCase{name: "user-at-victim-tenant", category: "proxy", level: levelProxy, run: caseUserAtVictim},
		attackCase{name: "database-role-name-as-user", category: "proxy", level: levelProxy, run: caseRoleNameAsUser},
		attackCase{name: "function-call-message", category: "proxy", level: levelProxy, run: caseFunctionCall},
		attackCase{name: "pipelined-with-startup", category: "proxy", level: levelProxy, run: casePipelinedStartup},
		attackCase{name: "pipelined-with-authentication", category: "proxy", level: levelProxy, run: casePipelinedAuth},
		attackCase{name: "cancel-request-guessing", category: "proxy", level: levelProxy, run: caseCancelGuessing},
		attackCase{name: "session-state-after-disconnect", category: "proxy", level: levelProxy, run: caseSessionState},
	)
	return cs
}

// startupVariant is a startup packet a client might send to get another
// identity or context.
type startupVariant struct {
	name string
	// params returns extra (or replacing) startup parameters.
	params func(e *env) map[string]string
	// refuse: the proxy must refuse the packet (else the session must at
	// least stay the attacker's).
	refuse bool
}

func startupVariants() []startupVariant {
	vr := func(e *env) string { return e.vic.role("rw") }
	return []startupVariant{
		{name: "option-role", refuse: true, params: func(e *env) map[string]string { return map[string]string{"options": "-c role=" + vr(e)} }},
		{name: "option-role-compact", refuse: true, params: func(e *env) map[string]string { return map[string]string{"options": "-crole=" + vr(e)} }},
		{name: "option-role-long-form", refuse: true, params: func(e *env) map[string]string { return map[string]string{"options": "--role=" + vr(e)} }},
		{name: "option-role-after-allowed", refuse: true, params: func(e *env) map[string]string {
			return map[string]string{"options": "-c search_path=public -c role=" + vr(e)}
		}},
		// Escaped spaces keep "-c role=..." inside application_name's value:
		// accepted, and it must stay a value.
		{name: "option-escaped-space", refuse: false, params: func(e *env) map[string]string {
			return map[string]string{"options": `-c application_name=x\ -c\ role=` + vr(e)}
		}},
		{name: "param-role", refuse: true, params: func(e *env) map[string]string { return map[string]string{"role": vr(e)} }},
		{name: "param-Role-mixed-case", refuse: true, params: func(e *env) map[string]string { return map[string]string{"ROLE": vr(e)} }},
		{name: "option-session-authorization", refuse: true, params: func(e *env) map[string]string {
			return map[string]string{"options": "-c session_authorization=" + vr(e)}
		}},
		{name: "param-session-authorization", refuse: true, params: func(e *env) map[string]string {
			return map[string]string{"session_authorization": vr(e)}
		}},
		{name: "option-tenant-setting", refuse: true, params: func(e *env) map[string]string {
			return map[string]string{"options": "-c vital.tenant_id=" + e.vic.id}
		}},
		{name: "param-tenant-setting", refuse: true, params: func(e *env) map[string]string { return map[string]string{"vital.tenant_id": e.vic.id} }},
		{name: "option-row-security-off", refuse: true, params: func(e *env) map[string]string { return map[string]string{"options": "-c row_security=off"} }},
		{name: "param-is-superuser", refuse: true, params: func(e *env) map[string]string { return map[string]string{"is_superuser": "on"} }},
		{name: "option-other-switch", refuse: true, params: func(e *env) map[string]string { return map[string]string{"options": "-P -c x=y"} }},
		{name: "option-session-replication-role", refuse: true, params: func(e *env) map[string]string {
			return map[string]string{"options": "-c session_replication_role=replica"}
		}},
		{name: "replication-database", refuse: true, params: func(e *env) map[string]string { return map[string]string{"replication": "database"} }},
		{name: "replication-true", refuse: true, params: func(e *env) map[string]string { return map[string]string{"replication": "true"} }},
		{name: "database-postgres", refuse: true, params: func(e *env) map[string]string { return map[string]string{"database": "postgres"} }},
		{name: "database-template1", refuse: true, params: func(e *env) map[string]string { return map[string]string{"database": "template1"} }},
		{name: "database-victim-user", refuse: false, params: func(e *env) map[string]string {
			u, _ := e.proxy.user(e.vic.slug, userRW)
			return map[string]string{"database": u.name}
		}},
		{name: "option-search-path-pg-temp", refuse: false, params: func(e *env) map[string]string {
			return map[string]string{"options": "-c search_path=pg_temp,public"}
		}},
	}
}

func caseStartupParams(ctx context.Context, e *env, v startupVariant) error {
	if e.proxy == nil {
		return errNoProxy
	}
	u, err := e.proxy.user(e.atk.slug, userRW)
	if err != nil {
		return err
	}
	params := map[string]string{"user": u.name, "database": e.fx.db}
	for k, val := range v.params(e) {
		params[k] = val
	}
	r, err := dialRaw(ctx, e.proxy.addr)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := r.startup(params); err != nil {
		return err
	}
	err = r.scramAuth(u.password)
	if err == nil {
		err = r.untilReady()
	}
	var se *serverError
	switch {
	case err != nil && errors.As(err, &se):
		if !v.refuse {
			e.note("refused: %v", se.PgError.Message)
		}
		return nil
	case err != nil:
		return err
	}
	// Accepted: whatever it asked for, the session must be the attacker's.
	res, err := r.query("SELECT session_user::text || ' ' || current_user::text || ' ' || coalesce(public.current_tenant_id()::text, 'null')")
	if err != nil {
		return err
	}
	if res.err != nil {
		return fmt.Errorf("accepted session: %w", res.err)
	}
	var f findings
	if v.refuse {
		f.add("the proxy accepted startup parameters %v (session: %v)", v.params(e), res.rows)
	}
	if len(res.rows) != 1 || !strings.Contains(res.rows[0], e.atk.id) || strings.Contains(res.rows[0], e.vic.role("rw")) {
		f.add("the session started with %v is %v", v.params(e), res.rows)
	}
	out, err := r.query(rawSweepSQL(e))
	if err != nil {
		return err
	}
	if out.err != nil {
		return fmt.Errorf("sweep: %w", out.err)
	}
	if err := f.addErr(e.judgeOwn("session with startup parameters", strings.Join(out.rows, "\n"), e.atk.markers())); err != nil {
		return err
	}
	return f.result()
}

// rawSweepSQL reads every tenant table, the materialized view and
// get_accessible_agents(victim) as text.
func rawSweepSQL(e *env) string {
	var parts []string
	for _, t := range []string{"agents", "tools", "prompts", "workflows", "user_tenants", "user_roles",
		"resource_sharing_audit", "tenants", "mv_platform_shared_resources"} {
		parts = append(parts, "SELECT t::text FROM public."+t+" t")
	}
	parts = append(parts, "SELECT t::text FROM public.get_accessible_agents('"+e.vic.id+"') t")
	return strings.Join(parts, " UNION ALL ")
}

// expectLoginRefused connects through the proxy and wants an
// authentication refusal (class 28).
func expectLoginRefused(ctx context.Context, e *env, user, password string) error {
	url := e.proxy.url(user, password, e.fx.db)
	conn, err := connectURL(ctx, url)
	if err == nil {
		defer conn.Close(context.WithoutCancel(ctx))
		var f findings
		su, _ := scalar[string](ctx, conn, "SELECT session_user::text")
		f.add("user %q with the attacker's password logged in (session_user %s)", user, su)
		if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
			return err
		}
		return f.result()
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && strings.HasPrefix(pe.Code, "28") {
		return nil
	}
	return fmt.Errorf("want an authentication error, got: %w", err)
}

func caseVictimUser(ctx context.Context, e *env) error {
	if e.proxy == nil {
		return errNoProxy
	}
	a, err := e.proxy.user(e.atk.slug, userRW)
	if err != nil {
		return err
	}
	v, err := e.proxy.user(e.vic.slug, userRW)
	if err != nil {
		return err
	}
	return expectLoginRefused(ctx, e, v.name, a.password)
}

func caseUserAtVictim(ctx context.Context, e *env) error {
	if e.proxy == nil {
		return errNoProxy
	}
	a, err := e.proxy.user(e.atk.slug, userRW)
	if err != nil {
		return err
	}
	var f findings
	for _, name := range []string{a.name + "@" + e.vic.slug, a.name + "@" + e.atk.slug + "@" + e.vic.slug} {
		if err := f.addErr(expectLoginRefused(ctx, e, name, a.password)); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	// Positive control: naming its own tenant works.
	conn, err := connectURL(ctx, e.proxy.url(a.name+"@"+e.atk.slug, a.password, e.fx.db))
	if err != nil {
		return fmt.Errorf("positive control: %s@%s: %w", a.name, e.atk.slug, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := f.addErr(e.checkTenant(ctx, conn)); err != nil {
		return err
	}
	return f.result()
}

func caseRoleNameAsUser(ctx context.Context, e *env) error {
	if e.proxy == nil {
		return errNoProxy
	}
	a, err := e.proxy.user(e.atk.slug, userRW)
	if err != nil {
		return err
	}
	var f findings
	for _, name := range []string{e.vic.role("rw"), e.atk.role("rw"), e.fx.c.User, "vital_owner"} {
		if err := f.addErr(expectLoginRefused(ctx, e, name, a.password)); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return f.result()
}

func caseFunctionCall(ctx context.Context, e *env) error {
	if e.proxy == nil {
		return errNoProxy
	}
	u, err := e.proxy.user(e.atk.slug, userRW)
	if err != nil {
		return err
	}
	r, err := dialRaw(ctx, e.proxy.addr)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := r.login(map[string]string{"user": u.name, "database": e.fx.db}, u.password); err != nil {
		return err
	}
	oids, err := r.query(`SELECT 'pg_catalog.set_config(text,text,boolean)'::regprocedure::oid::text
		UNION ALL SELECT 'public.set_tenant_context(uuid)'::regprocedure::oid::text
		UNION ALL SELECT 'pg_catalog.pg_read_file(text)'::regprocedure::oid::text
		UNION ALL SELECT 'pg_catalog.lo_get(oid)'::regprocedure::oid::text`)
	if err != nil {
		return err
	}
	if oids.err != nil || len(oids.rows) != 4 {
		return fmt.Errorf("look up function oids: %v %v", oids.err, oids.rows)
	}
	oid := func(i int) uint32 {
		var n uint32
		fmt.Sscan(oids.rows[i], &n)
		return n
	}
	var f findings
	res, err := r.functionCall(oid(0), "vital.tenant_id", e.vic.id, "false")
	if err != nil {
		return err
	}
	if res.err != nil {
		e.note("FunctionCall set_config refused: %v", res.err)
	}
	for _, c := range []struct {
		what string
		oid  uint32
		args []string
	}{
		{"set_tenant_context(victim)", oid(1), []string{e.vic.id}},
		{"pg_read_file('/etc/passwd')", oid(2), []string{"/etc/passwd"}},
	} {
		res, err := r.functionCall(c.oid, c.args...)
		if err != nil {
			return err
		}
		var se *serverError
		switch {
		case res.err == nil:
			f.add("FunctionCall %s was accepted", c.what)
		case errors.As(res.err, &se) && se.Code == "42501":
		default:
			return fmt.Errorf("FunctionCall %s: %w", c.what, res.err)
		}
	}
	who, err := r.query("SELECT public.current_tenant_id()::text")
	if err != nil {
		return err
	}
	if who.err != nil || len(who.rows) != 1 {
		return fmt.Errorf("after FunctionCall: %v %v", who.err, who.rows)
	}
	if who.rows[0] == e.vic.id {
		f.add("after FunctionCall the session's tenant is the victim's")
	}
	out, err := r.query(rawSweepSQL(e))
	if err != nil {
		return err
	}
	if out.err != nil {
		return out.err
	}
	if err := f.addErr(e.judgeOwn("session after FunctionCall", strings.Join(out.rows, "\n"), e.atk.markers())); err != nil {
		return err
	}
	return f.result()
}

// casePipelinedStartup sends queries in the same packet as the startup
// message (and the first SASL message): nothing may run before the client
// has authenticated.
func casePipelinedStartup(ctx context.Context, e *env) error {
	if e.proxy == nil {
		return errNoProxy
	}
	u, err := e.proxy.user(e.atk.slug, userRW)
	if err != nil {
		return err
	}
	marker := "iso-pipelined-" + randomHex(6)
	q := &pgproto3.Query{String: "INSERT INTO public.agents (name, tenant_id) VALUES ('" + marker + "', '" + e.vic.id + "'); " +
		"INSERT INTO public.agents (name) VALUES ('" + marker + "')"}
	var f findings
	for _, variant := range []string{"after-startup", "after-sasl-initial", "as-password"} {
		r, err := dialRaw(ctx, e.proxy.addr)
		if err != nil {
			return err
		}
		params := map[string]string{"user": u.name, "database": e.fx.db}
		var msgs []pgproto3.FrontendMessage
		switch variant {
		case "after-startup":
			msgs = []pgproto3.FrontendMessage{q}
		case "after-sasl-initial":
			// The client-first message needs nothing from the server.
			msgs = []pgproto3.FrontendMessage{
				&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=" + randomHex(12))}, q}
		case "as-password":
			msgs = []pgproto3.FrontendMessage{&pgproto3.PasswordMessage{Password: u.password}, q}
		}
		if err := r.startup(params, msgs...); err != nil {
			r.Close()
			return err
		}
		_, ready := r.readToClose()
		r.Close()
		if ready {
			f.add("%s: the proxy reached ReadyForQuery without authentication", variant)
		}
	}
	a, err := e.admin(ctx)
	if err != nil {
		return err
	}
	n, err := scalar[int](ctx, a, "SELECT count(*)::int FROM public.agents WHERE name = $1", marker)
	if err != nil {
		return err
	}
	if n > 0 {
		f.add("a query pipelined with the startup packet ran (%d rows)", n)
		_, _ = a.Exec(ctx, "DELETE FROM public.agents WHERE name = $1", marker)
	}
	return f.result()
}

// casePipelinedAuth sends queries in the same write as the final SCRAM
// message: they must run only after the tenant context is in place, as the
// attacker.
func casePipelinedAuth(ctx context.Context, e *env) error {
	if e.proxy == nil {
		return errNoProxy
	}
	u, err := e.proxy.user(e.atk.slug, userRW)
	if err != nil {
		return err
	}
	r, err := dialRaw(ctx, e.proxy.addr)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := r.startup(map[string]string{"user": u.name, "database": e.fx.db}); err != nil {
		return err
	}
	pipeline := []pgproto3.FrontendMessage{
		&pgproto3.Query{String: "SELECT pg_catalog.set_config('vital.tenant_id', '" + e.vic.id + "', false)"},
		&pgproto3.Query{String: "SELECT session_user::text || ' ' || coalesce(public.current_tenant_id()::text, 'null')"},
		&pgproto3.Query{String: rawSweepSQL(e)},
	}
	if err := r.scramAuth(u.password, pipeline...); err != nil {
		return err
	}
	if err := r.untilReady(); err != nil {
		return err
	}
	var outs []result
	for range pipeline {
		res, err := r.readResults()
		if err != nil {
			return err
		}
		outs = append(outs, res)
	}
	var f findings
	for i, o := range outs[1:] {
		if o.err != nil {
			return fmt.Errorf("pipelined query %d: %w", i+2, o.err)
		}
	}
	if len(outs[1].rows) != 1 || !strings.Contains(outs[1].rows[0], e.atk.id) {
		f.add("a query pipelined with authentication ran as %v", outs[1].rows)
	}
	if err := f.addErr(e.judgeOwn("queries pipelined with authentication", strings.Join(outs[2].rows, "\n"), e.atk.markers())); err != nil {
		return err
	}
	return f.result()
}

func caseCancelGuessing(ctx context.Context, e *env) error {
	if e.proxy == nil {
		return errNoProxy
	}
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	victimBackend, err := backendPID(ctx, vc)
	if err != nil {
		return err
	}
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	atkPID, atkKey := ac.PgConn().PID(), ac.PgConn().SecretKey()
	attackerBackend, err := backendPID(ctx, ac)
	if err != nil {
		return err
	}
	done := goQuery(func() error {
		_, err := vc.Exec(ctx, "SELECT pg_sleep(1.5)")
		return err
	})
	// Give the sleep time to start.
	time.Sleep(200 * time.Millisecond)
	randKey := func() []byte {
		b := make([]byte, len(atkKey))
		_, _ = rand.Read(b)
		return b
	}
	randPID := func() uint32 {
		var b [4]byte
		_, _ = rand.Read(b[:])
		return binary.BigEndian.Uint32(b[:])
	}
	type guess struct {
		pid uint32
		key []byte
	}
	var guesses []guess
	for i := range 20 {
		guesses = append(guesses, guess{randPID(), randKey()})
		guesses = append(guesses, guess{atkPID + uint32(i) + 1, randKey()}, guess{atkPID - uint32(i) - 1, randKey()})
		guesses = append(guesses, guess{atkPID + uint32(i) + 1, atkKey})
	}
	// The victim's real backend pid (visible in pg_stat_activity) with
	// random keys and with the attacker's own key.
	guesses = append(guesses, guess{uint32(victimBackend), randKey()}, guess{uint32(victimBackend), atkKey},
		guess{uint32(attackerBackend), atkKey})
	for _, g := range guesses {
		if err := sendCancel(ctx, e.proxy.addr, g.pid, g.key); err != nil {
			return err
		}
	}
	var f findings
	if err := waitErr(ctx, done); err != nil {
		if sqlState(err) == "57014" {
			f.add("a guessed CancelRequest cancelled the victim's query")
		} else {
			return fmt.Errorf("victim query: %w", err)
		}
	}
	// Positive control: the attacker's own key does cancel its own query.
	own := goQuery(func() error {
		_, err := ac.Exec(ctx, "SELECT pg_sleep(10)")
		return err
	})
	time.Sleep(200 * time.Millisecond)
	if err := sendCancel(ctx, e.proxy.addr, atkPID, atkKey); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	if err := waitErr(cctx, own); sqlState(err) != "57014" {
		return fmt.Errorf("positive control: a CancelRequest with the attacker's own key did not cancel its query: %v", err)
	}
	return f.result()
}

func caseSessionState(ctx context.Context, e *env) error {
	if e.proxy == nil {
		return errNoProxy
	}
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	if _, err := ac.Exec(ctx, `SET vital.tenant_id = '`+e.vic.id+`';
		SET search_path = pg_temp, public;
		CREATE TEMP TABLE iso_state (v text);
		PREPARE iso_state_stmt AS SELECT 1;
		LISTEN iso_state_chan;
		BEGIN; DECLARE iso_state_cur CURSOR WITH HOLD FOR SELECT 1; COMMIT;
		CREATE FUNCTION pg_temp.iso_state_fn() RETURNS int LANGUAGE sql AS 'SELECT 1';
		SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY;
		SET ROLE vital_tenant;
		SET application_name = 'iso-state'`); err != nil {
		return err
	}
	// Advisory locks may be revoked from tenants; then there is nothing to
	// leave behind.
	_, err = ac.Exec(ctx, "SELECT pg_advisory_lock(777, 1)")
	advisory := err == nil
	if err != nil && sqlState(err) != "42501" {
		return err
	}
	if err := ac.Close(ctx); err != nil {
		return err
	}
	// Pooled roles may not read pg_prepared_statements (it would show other
	// tenants' statements); there EXECUTE tells whether the statement stayed.
	prepared := `(SELECT string_agg('prepared:' || name, ' ') FROM pg_prepared_statements WHERE name LIKE 'iso%')`
	if e.sharedBackends() {
		prepared = "NULL"
	}
	stateSQL := `SELECT concat_ws(' ', ` + prepared + `,
		(SELECT string_agg('listen:' || c, ' ') FROM pg_listening_channels() c),
		(SELECT string_agg('cursor:' || name, ' ') FROM pg_cursors WHERE name <> ''),
		(SELECT string_agg('temp:' || relname, ' ') FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relname LIKE 'iso%'),
		(SELECT string_agg('tempfn:' || proname, ' ') FROM pg_proc WHERE pronamespace = pg_my_temp_schema())),
		current_setting('search_path') || ' role=' || current_user || ' read_only=' || current_setting('default_transaction_read_only'),
		current_setting('application_name'), coalesce(current_setting('vital.tenant_id', true), '')`
	var f findings
	check := func(who string, conn *pgx.Conn, wantTenant string) error {
		if e.sharedBackends() {
			if err := f.addErr(denied(ctx, conn, "EXECUTE iso_state_stmt", "26000")); err != nil {
				return err
			}
		}
		var objs, sp, app, tid string
		if err := conn.QueryRow(ctx, stateSQL).Scan(&objs, &sp, &app, &tid); err != nil {
			return err
		}
		if objs != "" || strings.Contains(sp, "pg_temp") || strings.Contains(sp, "role=vital_tenant ") ||
			strings.Contains(sp, "read_only=on") || app == "iso-state" || (tid != "" && tid != wantTenant) {
			f.add("a new %s session inherits state (%q, %q, application_name %q, vital.tenant_id %q)", who, objs, sp, app, tid)
		}
		return nil
	}
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	if err := check("victim", vc, e.vic.id); err != nil {
		return err
	}
	ac2, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	if err := check("attacker", ac2, e.atk.id); err != nil {
		return err
	}
	if err := f.addErr(e.checkTenant(ctx, ac2)); err != nil {
		return err
	}
	if err := e.staleRoleDefaults(ctx); err != nil {
		return err
	}
	if !advisory {
		return f.result()
	}
	// The attacker's session-level advisory lock went with its session.
	ok, err := waitUntil(ctx, 3*time.Second, func() (bool, error) {
		got, err := scalar[bool](ctx, vc, "SELECT pg_try_advisory_lock(777, 1)")
		if got {
			_, _ = vc.Exec(ctx, "SELECT pg_advisory_unlock(777, 1)")
		}
		return got, err
	})
	if err != nil {
		return err
	}
	if !ok {
		f.add("the attacker's session-level advisory lock outlived its client session")
	}
	return f.result()
}

// staleRoleDefaults checks whether pooled backends keep role defaults (ALTER
// ROLE CURRENT_USER SET ..., which every role may do to itself) after the
// tenant has reset them: a backend's defaults are fixed at its login and
// DISCARD ALL returns to them. It only affects the attacker's own tenant,
// so it is noted rather than judged. The setting used is harmless to the
// rest of the suite.
func (e *env) staleRoleDefaults(ctx context.Context) error {
	const n = 8 // more than the attacker's pool keeps idle during the suite
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	if _, err := ac.Exec(ctx, "ALTER ROLE CURRENT_USER SET IntervalStyle = 'iso_8601'"); err != nil {
		return err
	}
	defer func() { _, _ = ac.Exec(context.WithoutCancel(ctx), "ALTER ROLE CURRENT_USER RESET IntervalStyle") }()
	openN := func() ([]*pgx.Conn, error) {
		var conns []*pgx.Conn
		for range n {
			c, err := e.attacker(ctx)
			if err != nil {
				return nil, err
			}
			conns = append(conns, c)
		}
		return conns, nil
	}
	conns, err := openN()
	if err != nil {
		return err
	}
	for _, c := range conns {
		if err := c.Close(ctx); err != nil {
			return err
		}
	}
	if _, err := ac.Exec(ctx, "ALTER ROLE CURRENT_USER RESET IntervalStyle"); err != nil {
		return err
	}
	if conns, err = openN(); err != nil {
		return err
	}
	stale := 0
	for _, c := range conns {
		style, err := scalar[string](ctx, c, "SHOW IntervalStyle")
		if err != nil {
			return err
		}
		if style == "iso_8601" {
			stale++
		}
	}
	if stale > 0 {
		e.note("%d of %d new sessions of the attacker's tenant got a pooled backend that still carries a role default "+
			"the tenant had reset (ALTER ROLE CURRENT_USER SET ... is open to every role; a default role = vital_tenant "+
			"would leave read-write sessions read-only the same way); the reset could add SET ROLE NONE and recycle "+
			"backends whose role defaults changed", stale, n)
	}
	return nil
}
