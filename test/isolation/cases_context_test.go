package isolation_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/migrations/audit"
)

// contextCases try to change the tenant a session acts for.
func contextCases() []attackCase {
	return []attackCase{
		{name: "set-tenant-settings", category: "context", level: levelSQL, run: caseSetTenantSettings},
		{name: "set-local-in-transaction", category: "context", level: levelSQL, run: caseSetLocal},
		{name: "set-privileged-settings", category: "context", level: levelSQL, run: caseSetPrivileged},
		{name: "reset-all-discard-all", category: "context", level: levelSQL, run: caseResetDiscard},
		{name: "set-tenant-context-victim", category: "context", level: levelSQL, run: caseSetTenantContext},
		{name: "forge-or-replay-signed-context", category: "context", level: levelSQL, run: caseForgeContext},
		{name: "state-left-on-a-shared-backend", category: "context", level: levelSQL, run: caseSharedBackendState},
		{name: "do-block-dynamic-sql", category: "context", level: levelSQL, run: caseDoBlock},
		{name: "create-function-with-set-clause", category: "context", level: levelSQL, run: caseCreateFunction},
		{name: "pg-temp-security-definer", category: "context", level: levelSQL, run: casePgTempDefiner},
		{name: "search-path-shadowing", category: "context", level: levelSQL, run: caseSearchPathShadow},
		{name: "prepared-statements-sql", category: "context", level: levelSQL, run: casePreparedSQL},
		{name: "prepared-statements-protocol", category: "context", level: levelSQL, run: casePreparedProtocol},
		{name: "cursors-across-switch", category: "context", level: levelSQL, run: caseCursors},
		{name: "savepoints", category: "context", level: levelSQL, run: caseSavepoints},
		{name: "set-role", category: "context", level: levelSQL, run: caseSetRole},
		{name: "set-session-authorization", category: "context", level: levelSQL, run: caseSessionAuthorization},
		{name: "row-security-off", category: "context", level: levelSQL, run: caseRowSecurityOff},
		{name: "alter-role-self-settings", category: "context", level: levelSQL, run: caseAlterRoleSelf},
		{name: "alter-role-self-password", category: "context", level: levelSQL, run: caseAlterRolePassword,
			expectOpen: "every PostgreSQL role may change its own password (ALTER ROLE CURRENT_USER PASSWORD) and no " +
				"privilege prevents it; the attacker can then log in to PostgreSQL directly, bypassing the proxy " +
				"(RLS still confines it to its own tenant; its own proxy logins fail until `vitalproxy tenant sync` " +
				"re-derives the verifier, which the case checks). Closed outside the database: pg_hba.conf lets " +
				"+vital_tenant connect only from the proxy's address"},
		{name: "role-membership-grants", category: "context", level: levelSQL, run: caseRoleGrants},
	}
}

func caseSetTenantSettings(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	v := quoteLit(e.vic.id)
	if err := tryAll(ctx, conn,
		"SET vital.tenant_id = "+v,
		"SET SESSION vital.tenant_id = "+v,
		"SELECT pg_catalog.set_config('vital.tenant_id', "+v+", false)",
		"SET vital.tenant = "+quoteLit(e.vic.slug),
		"SET vital.is_platform_admin = on",
		"SET app.tenant_id = "+v,
		"SET app.current_tenant_id = "+v,
		"SET request.jwt.claim.tenant_id = "+v,
		`SET request.jwt.claims = '{"tenant_id": "`+e.vic.id+`", "role": "service_role"}'`,
	); err != nil {
		return err
	}
	var f findings
	if err := f.addErr(e.checkTenant(ctx, conn)); err != nil {
		return err
	}
	if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
		return err
	}
	return f.result()
}

func caseSetLocal(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	defer rollback(conn)
	v := quoteLit(e.vic.id)
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	if err := tryAll(ctx, conn,
		"SET LOCAL vital.tenant_id = "+v,
		"SELECT pg_catalog.set_config('vital.tenant_id', "+v+", true)",
	); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "SET LOCAL vital.tenant_id = "+v); err != nil {
		return err
	}
	var f findings
	if err := f.addErr(e.checkTenant(ctx, conn)); err != nil {
		return err
	}
	if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
		return err
	}
	if err := f.addErr(deniedAll(ctx, conn, []string{"SET LOCAL ROLE " + e.vic.role("rw")})); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		return err
	}
	return f.result()
}

func caseSetPrivileged(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	err = f.addErr(deniedAll(ctx, conn, []string{
		"SET session_replication_role = replica", // would skip the sharing-audit triggers
		"SET lo_compat_privileges = on",          // would drop large-object permission checks
		"SET allow_system_table_mods = on",
		"SET ignore_system_indexes = on",
		"SET log_statement = 'none'",
		"SELECT pg_catalog.set_config('role', " + quoteLit(e.vic.role("rw")) + ", false)",
		"SELECT pg_catalog.set_config('session_authorization', " + quoteLit(e.vic.role("rw")) + ", false)",
	}, "42501", "55P02"))
	if err != nil {
		return err
	}
	if err := f.addErr(deniedAll(ctx, conn, []string{"SET is_superuser = on"}, "55P02", "42501")); err != nil {
		return err
	}
	if err := f.addErr(e.checkTenant(ctx, conn)); err != nil {
		return err
	}
	if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
		return err
	}
	return f.result()
}

func caseResetDiscard(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	for _, reset := range []string{"RESET ALL", "DISCARD ALL", "DISCARD PLANS", "DISCARD TEMP", "RESET vital.tenant_id", "RESET ROLE", "RESET SESSION AUTHORIZATION"} {
		if _, err := conn.Exec(ctx, "SET vital.tenant_id = "+quoteLit(e.vic.id)); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, reset); err != nil {
			return fmt.Errorf("%s: %w", reset, err)
		}
		if err := f.addErr(e.checkTenant(ctx, conn)); err != nil {
			return fmt.Errorf("after %s: %w", reset, err)
		}
		if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
			return fmt.Errorf("after %s: %w", reset, err)
		}
	}
	return f.result()
}

func caseSetTenantContext(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	err = f.addErr(deniedAll(ctx, conn, []string{
		"SELECT public.set_tenant_context(" + quoteLit(e.vic.id) + ")",
		"SELECT set_tenant_context(" + quoteLit(e.vic.id) + "::uuid)",
		"SELECT public.set_tenant_context(NULL)",
		"SELECT public.set_tenant_context(" + quoteLit(e.fx.third.id) + ")",
		"SELECT public.set_tenant_context('00000000-0000-0000-0000-000000000000')",
		"SELECT public.set_tenant_context((SELECT id FROM public.tenants WHERE type = 'platform' LIMIT 1))",
	}))
	if err != nil {
		return err
	}
	// Asserting its own tenant is allowed and changes nothing.
	if _, err := conn.Exec(ctx, "SELECT public.set_tenant_context($1)", e.atk.id); err != nil {
		return fmt.Errorf("positive control: set_tenant_context(own tenant): %w", err)
	}
	if err := f.addErr(e.checkTenant(ctx, conn)); err != nil {
		return err
	}
	if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
		return err
	}
	return f.result()
}

// notVictim checks that conn's session has not become the victim's: its
// tenant is not the victim's and it reads none of the victim's markers.
// (A session left without any tenant is not an open path.)
func (e *env) notVictim(ctx context.Context, conn *pgx.Conn) error {
	tid, err := scalar[*string](ctx, conn, "SELECT public.current_tenant_id()::text")
	if err != nil {
		return fmt.Errorf("check tenant: %w", err)
	}
	if tid != nil && *tid == e.vic.id {
		return open("current_tenant_id() is the victim's tenant")
	}
	text, err := e.sweep(ctx, conn)
	if err != nil {
		return err
	}
	if leaked := containsAny(text, e.vic.markers()); len(leaked) > 0 {
		return open("the attacker read the victim's markers %v: %s", leaked, linesWith(text, leaked))
	}
	return nil
}

// caseForgeContext tries to pass for the victim with the signed context of
// isolation mode context (vital.tenant_context, enter_tenant_context):
// forged from the victim's id and the attacker's own signature, with a
// made-up signature, or replayed after a switch. In role mode the setting
// is ignored; in context mode the database verifies it against this
// backend and role. Each attempt runs inside one transaction, so that the
// setting is in force on the backend the checks run on.
func caseForgeContext(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var own string
	if err := inTx(ctx, conn, func() error {
		v, err := scalar[string](ctx, conn, "SELECT coalesce(current_setting('vital.tenant_context', true), '')")
		own = v
		return err
	}); err != nil {
		return err
	}
	if e.sharedBackends() && !strings.HasPrefix(own, e.atk.id+":") {
		return fmt.Errorf("positive control: the attacker's session carries no signed context of its own (%q)", own)
	}
	mac := strings.Repeat("0", 64)
	if i := strings.IndexByte(own, ':'); i >= 0 {
		mac = own[i+1:]
	}
	forged := []string{
		e.vic.id + ":" + mac,
		e.vic.id + ":" + strings.Repeat("ab", 32),
		e.vic.id + ":" + strings.ToUpper(mac),
		e.vic.id,
		e.vic.id + ":" + mac + ":" + mac,
		" " + e.vic.id + ":" + mac,
	}
	var f findings
	for _, v := range forged {
		for _, how := range []string{
			"SELECT set_config('vital.tenant_context', $1, false)",
			"SELECT set_config('vital.tenant_context', $1, true)",
			"SELECT public.enter_tenant_context($1)",
		} {
			err := inTx(ctx, conn, func() error {
				if _, err := conn.Exec(ctx, "SAVEPOINT iso_forge"); err != nil {
					return err
				}
				if _, err := conn.Exec(ctx, how, v); err != nil {
					if st := sqlState(err); st != "42501" && st != "22023" {
						return fmt.Errorf("%s: %w", how, err)
					}
					if _, err := conn.Exec(ctx, "ROLLBACK TO SAVEPOINT iso_forge"); err != nil {
						return err
					}
				}
				return f.addErr(e.notVictim(ctx, conn))
			})
			if err != nil {
				return err
			}
		}
	}
	// Afterwards the attacker's own sessions still work as itself.
	if err := f.addErr(e.checkTenant(ctx, conn)); err != nil {
		return err
	}
	return f.result()
}

// caseSharedBackendState has the victim leave session state (a custom
// setting holding its marker, set with session scope) on whatever backends
// serve it, then reads that setting in the attacker's transactions, several
// times, so that in context mode they run on backends the victim used.
func caseSharedBackendState(ctx context.Context, e *env) error {
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	marker := e.vic.markers()[0]
	var f findings
	for range 6 {
		if _, err := vc.Exec(ctx, "SELECT set_config('iso.left_behind', $1, false)", marker); err != nil {
			return err
		}
		got, err := scalar[string](ctx, ac, "SELECT coalesce(current_setting('iso.left_behind', true), '')")
		if err != nil {
			return err
		}
		if strings.Contains(got, marker) {
			f.add("the attacker read a setting the victim left on a backend: %q", got)
			break
		}
	}
	if err := f.addErr(e.checkTenant(ctx, ac)); err != nil {
		return err
	}
	return f.result()
}

func caseDoBlock(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	v := quoteLit(e.vic.id)
	block := `DO $iso$
DECLARE
    r text;
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS iso_do_out (what text, val text);
    EXECUTE pg_catalog.format('SET vital.tenant_id = %L', ` + v + `);
    PERFORM pg_catalog.set_config('vital.tenant_id', ` + v + `, false);
    BEGIN
        EXECUTE pg_catalog.format('SELECT public.set_tenant_context(%L)', ` + v + `);
        INSERT INTO iso_do_out VALUES ('set_tenant_context', 'accepted');
    EXCEPTION WHEN insufficient_privilege THEN
        INSERT INTO iso_do_out VALUES ('set_tenant_context', 'refused');
    END;
    BEGIN
        EXECUTE 'SET ROLE ` + e.vic.role("rw") + `';
        INSERT INTO iso_do_out VALUES ('set_role', 'accepted');
    EXCEPTION WHEN insufficient_privilege THEN
        INSERT INTO iso_do_out VALUES ('set_role', 'refused');
    END;
    FOR r IN EXECUTE 'SELECT t::text FROM public.agents t UNION ALL SELECT t::text FROM public.tools t
                      UNION ALL SELECT t::text FROM public.prompts t UNION ALL SELECT t::text FROM public.workflows t
                      UNION ALL SELECT t::text FROM public.user_tenants t UNION ALL SELECT t::text FROM public.user_roles t
                      UNION ALL SELECT t::text FROM public.resource_sharing_audit t UNION ALL SELECT t::text FROM public.tenants t'
    LOOP
        RAISE NOTICE 'row %', r;
        INSERT INTO iso_do_out VALUES ('row', r);
    END LOOP;
    INSERT INTO iso_do_out VALUES ('tenant', public.current_tenant_id()::text);
END
$iso$`
	if _, err := conn.Exec(ctx, block); err != nil {
		return fmt.Errorf("DO block: %w", err)
	}
	out, err := queryText(ctx, conn, "SELECT what, val FROM iso_do_out")
	if err != nil {
		return err
	}
	var f findings
	if strings.Contains(out, "set_tenant_context\taccepted") {
		f.add("set_tenant_context(victim) was accepted inside a DO block")
	}
	if strings.Contains(out, "set_role\taccepted") {
		f.add("SET ROLE to the victim's role was accepted inside a DO block")
	}
	if !strings.Contains(out, "tenant\t"+e.atk.id) {
		if strings.Contains(out, "tenant\t"+e.vic.id) {
			f.add("current_tenant_id() was the victim's inside a DO block")
		} else {
			return fmt.Errorf("positive control: the DO block did not report the attacker's tenant: %s", oneLine(out))
		}
	}
	if err := f.addErr(e.judgeOwn("DO block output", out, e.atk.markers())); err != nil {
		return err
	}
	if err := f.addErr(e.leakIn("DO block notices", strings.Join(noticesOf(conn), "\n"))); err != nil {
		return err
	}
	if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
		return err
	}
	return f.result()
}

func caseCreateFunction(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	v := quoteLit(e.vic.id)
	return deniedAll(ctx, conn, []string{
		"CREATE FUNCTION public.iso_f() RETURNS uuid LANGUAGE sql SECURITY DEFINER SET vital.tenant_id = " + v +
			" AS 'SELECT public.current_tenant_id()'",
		"CREATE FUNCTION public.iso_g() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER SET row_security = off" +
			" AS 'SELECT name FROM public.agents'",
		"CREATE PROCEDURE public.iso_p() LANGUAGE sql SET vital.tenant_id = " + v + " AS 'SELECT 1'",
		"CREATE FUNCTION vital.iso_f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
		"CREATE FUNCTION auth.iso_f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
		"CREATE OR REPLACE FUNCTION public.set_tenant_context(p_tenant_id uuid) RETURNS void LANGUAGE sql AS 'SELECT'",
	})
}

func casePgTempDefiner(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	v := quoteLit(e.vic.id)
	var f findings
	// A SET clause naming the tenant setting is refused at CREATE time
	// (placeholder settings in function SET clauses need the privilege to
	// set them); either way the function may not change the tenant.
	if err := tryAll(ctx, conn, `CREATE FUNCTION pg_temp.iso_set() RETURNS uuid LANGUAGE sql SECURITY DEFINER
		SET vital.tenant_id = `+v+` AS $$ SELECT public.current_tenant_id() $$`); err != nil {
		return err
	}
	// Temporary functions are allowed (TEMP on the database is PUBLIC's by
	// default); they run as their owner, the attacker.
	if _, err := conn.Exec(ctx, `CREATE FUNCTION pg_temp.iso_def() RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER
		SET search_path = pg_temp, public
		AS $$ BEGIN
			PERFORM pg_catalog.set_config('vital.tenant_id', `+v+`, true);
			RETURN QUERY SELECT t::text FROM public.agents t UNION ALL SELECT t::text FROM public.user_tenants t;
		END $$`); err != nil {
		return fmt.Errorf("create temp function: %w", err)
	}
	owner, err := scalar[string](ctx, conn, "SELECT proowner::regrole::text FROM pg_catalog.pg_proc WHERE oid = 'pg_temp.iso_def()'::regprocedure")
	if err != nil {
		return err
	}
	if owner != e.sessionRole(e.atk, "rw") {
		f.add("a temporary function belongs to %s, not the attacker", owner)
	}
	out, err := queryText(ctx, conn, "SELECT * FROM pg_temp.iso_def()")
	if err != nil {
		return fmt.Errorf("call temp definer function: %w", err)
	}
	if err := f.addErr(e.judgeOwn("temp SECURITY DEFINER function", out, e.atk.markersIn("agents", "user_tenants"))); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `CREATE FUNCTION pg_temp.iso_ctx() RETURNS void LANGUAGE plpgsql SECURITY DEFINER
		AS $$ BEGIN PERFORM public.set_tenant_context(`+v+`); END $$`); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `CREATE FUNCTION pg_temp.iso_role() RETURNS text LANGUAGE sql SECURITY DEFINER
		SET role = 'vital_tenant' AS $$ SELECT current_user::text $$`); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `CREATE FUNCTION pg_temp.iso_rls() RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
		SET row_security = off AS $$ BEGIN RETURN (SELECT count(*) FROM public.agents); END $$`); err != nil {
		return err
	}
	err = f.addErr(deniedAll(ctx, conn, []string{
		"SELECT pg_temp.iso_ctx()",
		"SELECT pg_temp.iso_role()",
		"SELECT pg_temp.iso_rls()",
		"CREATE FUNCTION pg_temp.iso_sa() RETURNS int LANGUAGE sql SECURITY DEFINER SET session_authorization = " +
			quoteLit(e.vic.role("rw")) + " AS 'SELECT 1'",
		"ALTER FUNCTION pg_temp.iso_def() OWNER TO vital_owner",
		"ALTER FUNCTION pg_temp.iso_def() OWNER TO " + e.vic.role("rw"),
		"ALTER FUNCTION pg_temp.iso_def() LEAKPROOF",
	}))
	if err != nil {
		return err
	}
	if err := f.addErr(e.checkTenant(ctx, conn)); err != nil {
		return err
	}
	if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
		return err
	}
	return f.result()
}

func caseSearchPathShadow(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	defer rollback(conn)
	v := quoteLit(e.vic.id)
	stmts := []string{
		"SET search_path = pg_temp, public, vital, pg_catalog",
		"CREATE TEMP TABLE tenant_roles (role_name name, tenant_id uuid, capability text)",
		"INSERT INTO pg_temp.tenant_roles VALUES (session_user, " + v + ", 'admin')",
		"CREATE TEMP TABLE tenants AS SELECT * FROM public.tenants",
		"CREATE TEMP TABLE agents AS SELECT * FROM public.agents WHERE false",
		"CREATE TEMP TABLE user_tenants AS SELECT * FROM public.user_tenants WHERE false",
		"CREATE FUNCTION pg_temp.current_tenant_id() RETURNS uuid LANGUAGE sql AS 'SELECT " + strings.ReplaceAll(v, "'", "''") + "::uuid'",
		"CREATE FUNCTION pg_temp.is_platform_admin() RETURNS boolean LANGUAGE sql AS 'SELECT true'",
		"CREATE FUNCTION pg_temp.pg_has_role(name, text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
		"CREATE FUNCTION pg_temp.iso_true(name, name) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
		"CREATE OPERATOR pg_temp.= (LEFTARG = name, RIGHTARG = name, FUNCTION = pg_temp.iso_true)",
		"CREATE FUNCTION pg_temp.iso_uuid_true(uuid, uuid) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
		"CREATE OPERATOR pg_temp.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = pg_temp.iso_uuid_true)",
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%q: %w", oneLine(s), err)
		}
	}
	var f findings
	if err := f.addErr(e.checkTenant(ctx, conn)); err != nil {
		return err
	}
	// Unqualified calls resolve outside pg_temp: functions and operators
	// are never looked up there.
	tid, err := scalar[*string](ctx, conn, "SELECT current_tenant_id()::text")
	if err != nil {
		return err
	}
	if tid == nil || *tid != e.atk.id {
		f.add("unqualified current_tenant_id() returned %v under a pg_temp-first search_path", tid)
	}
	isAdmin, err := scalar[bool](ctx, conn, "SELECT is_platform_admin()")
	if err != nil {
		return err
	}
	if isAdmin {
		f.add("unqualified is_platform_admin() is true under a pg_temp-first search_path")
	}
	err = f.addErr(deniedAll(ctx, conn, []string{
		"SELECT set_tenant_context(" + v + ")",
		"SELECT public.set_tenant_context(" + v + ")",
	}))
	if err != nil {
		return err
	}
	out, err := queryText(ctx, conn, "SELECT t::text FROM get_accessible_agents("+v+") t")
	if err != nil {
		return err
	}
	if err := f.addErr(e.leakIn("get_accessible_agents under a pg_temp-first search_path", out)); err != nil {
		return err
	}
	// New rows still default to the attacker's tenant.
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	got, err := scalar[string](ctx, conn, "INSERT INTO public.agents (name) VALUES ('iso-shadow') RETURNING tenant_id::text")
	if err != nil {
		return fmt.Errorf("insert under a pg_temp-first search_path: %w", err)
	}
	if got != e.atk.id {
		f.add("a new row defaulted to tenant %s under a pg_temp-first search_path", got)
	}
	if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
		return err
	}
	if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
		return err
	}
	return f.result()
}

func casePreparedSQL(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `PREPARE iso_all AS SELECT t::text FROM public.agents t;
		PREPARE iso_by_tenant(uuid) AS SELECT t::text FROM public.agents t WHERE tenant_id = $1`); err != nil {
		return err
	}
	var f findings
	if err := f.addErr(e.switchAttempts(ctx, conn)); err != nil {
		return err
	}
	out, err := queryText(ctx, conn, "EXECUTE iso_all")
	if err != nil {
		return err
	}
	if err := f.addErr(e.judgeOwn("EXECUTE of a statement prepared before the switch", out, e.atk.markersIn("agents"))); err != nil {
		return err
	}
	out, err = queryText(ctx, conn, "EXECUTE iso_by_tenant("+quoteLit(e.vic.id)+")")
	if err != nil {
		return err
	}
	// Only the row the victim shares with the attacker may come back.
	if err := f.addErr(e.leakIn("EXECUTE with the victim's tenant id", out)); err != nil {
		return err
	}
	return f.result()
}

func casePreparedProtocol(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	pc := conn.PgConn()
	if _, err := pc.Prepare(ctx, "iso_s_all", "SELECT t::text FROM public.agents t", nil); err != nil {
		return err
	}
	if _, err := pc.Prepare(ctx, "iso_s_tenant", "SELECT t::text FROM public.agents t WHERE tenant_id = $1",
		[]uint32{pgtype.UUIDOID}); err != nil {
		return err
	}
	var f findings
	if err := f.addErr(e.switchAttempts(ctx, conn)); err != nil {
		return err
	}
	collect := func(name string, params [][]byte) (string, error) {
		res := pc.ExecPrepared(ctx, name, params, nil, nil).Read()
		if res.Err != nil {
			return "", res.Err
		}
		var b strings.Builder
		for _, r := range res.Rows {
			b.Write(r[0])
			b.WriteByte('\n')
		}
		return b.String(), nil
	}
	out, err := collect("iso_s_all", nil)
	if err != nil {
		return err
	}
	if err := f.addErr(e.judgeOwn("protocol-level prepared statement", out, e.atk.markersIn("agents"))); err != nil {
		return err
	}
	out, err = collect("iso_s_tenant", [][]byte{[]byte(e.vic.id)})
	if err != nil {
		return err
	}
	if err := f.addErr(e.leakIn("protocol-level prepared statement with the victim's tenant id", out)); err != nil {
		return err
	}
	// A portal bound before the switch attempts and executed after them.
	mrr := pc.Exec(ctx, "BEGIN; DECLARE iso_portal CURSOR FOR SELECT t::text FROM public.tools t")
	if _, err := mrr.ReadAll(); err != nil {
		return err
	}
	if err := f.addErr(e.switchAttempts(ctx, conn)); err != nil {
		return err
	}
	out, err = queryText(ctx, conn, "FETCH ALL FROM iso_portal")
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		return err
	}
	if err := f.addErr(e.judgeOwn("portal opened before the switch", out, e.atk.markersIn("tools"))); err != nil {
		return err
	}
	return f.result()
}

func caseCursors(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `BEGIN;
		DECLARE iso_hold CURSOR WITH HOLD FOR SELECT t::text FROM public.agents t;
		COMMIT`); err != nil {
		return err
	}
	var f findings
	if err := f.addErr(e.switchAttempts(ctx, conn)); err != nil {
		return err
	}
	out, err := queryText(ctx, conn, "FETCH ALL FROM iso_hold")
	if err != nil {
		return err
	}
	if err := f.addErr(e.judgeOwn("WITH HOLD cursor fetched after the switch", out, e.atk.markersIn("agents"))); err != nil {
		return err
	}
	// A cursor declared after the switch attempts, in a transaction that
	// also tried them.
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	if err := f.addErr(e.switchAttempts(ctx, conn)); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "DECLARE iso_c SCROLL CURSOR FOR SELECT t::text FROM public.workflows t"); err != nil {
		return err
	}
	out, err = queryText(ctx, conn, "FETCH ALL FROM iso_c")
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		return err
	}
	if err := f.addErr(e.judgeOwn("cursor declared after the switch", out, e.atk.markersIn("workflows"))); err != nil {
		return err
	}
	return f.result()
}

func caseSavepoints(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	defer rollback(conn)
	v := quoteLit(e.vic.id)
	var f findings
	if _, err := conn.Exec(ctx, "BEGIN; SAVEPOINT s1; SET LOCAL vital.tenant_id = "+v); err != nil {
		return err
	}
	if err := f.addErr(e.switchAttempts(ctx, conn)); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "RELEASE SAVEPOINT s1; SAVEPOINT s2"); err != nil {
		return err
	}
	// A failed set_tenant_context rolled back to a savepoint must leave no
	// trace.
	if _, err := conn.Exec(ctx, "SELECT public.set_tenant_context("+v+")"); err == nil {
		f.add("set_tenant_context(victim) accepted inside a savepoint")
	}
	if _, err := conn.Exec(ctx, "ROLLBACK TO SAVEPOINT s2"); err != nil {
		return err
	}
	if err := f.addErr(e.checkTenant(ctx, conn)); err != nil {
		return err
	}
	if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		return err
	}
	if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
		return err
	}
	return f.result()
}

func caseSetRole(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	err = f.addErr(deniedAll(ctx, conn, []string{
		"SET ROLE " + e.vic.role("rw"),
		"SET ROLE " + e.vic.role("ro"),
		"SET ROLE vital_owner",
		"SET ROLE vital_operator",
		"SET ROLE " + e.fx.c.User,
		"SET ROLE pg_read_all_data",
		"SET ROLE pg_signal_backend",
		"SET ROLE pg_read_server_files",
		"SET ROLE pg_write_server_files",
		"SET ROLE pg_execute_server_program",
	}))
	if err != nil {
		return err
	}
	// Its own group roles are allowed: session_user, and so the tenant,
	// stays the same.
	for _, group := range []string{"vital_tenant_writer", "vital_tenant"} {
		if _, err := conn.Exec(ctx, "SET ROLE "+group); err != nil {
			return fmt.Errorf("positive control: SET ROLE %s: %w", group, err)
		}
		if err := f.addErr(e.checkTenant(ctx, conn)); err != nil {
			return err
		}
		if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
			return err
		}
		if err := f.addErr(deniedAll(ctx, conn, []string{"SET ROLE " + e.vic.role("rw")})); err != nil {
			return err
		}
	}
	if _, err := conn.Exec(ctx, "RESET ROLE"); err != nil {
		return err
	}
	return f.result()
}

func caseSessionAuthorization(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	err = f.addErr(deniedAll(ctx, conn, []string{
		"SET SESSION AUTHORIZATION " + e.vic.role("rw"),
		"SET SESSION AUTHORIZATION " + e.fx.c.User,
		"SET SESSION AUTHORIZATION vital_owner",
		"SET SESSION AUTHORIZATION vital_operator",
		"SET LOCAL SESSION AUTHORIZATION " + e.vic.role("rw"),
	}))
	if err != nil {
		return err
	}
	if err := tryAll(ctx, conn, "SET SESSION AUTHORIZATION DEFAULT", "RESET SESSION AUTHORIZATION"); err != nil {
		return err
	}
	if err := f.addErr(e.checkTenant(ctx, conn)); err != nil {
		return err
	}
	if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
		return err
	}
	return f.result()
}

func caseRowSecurityOff(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "SET row_security = off"); err != nil {
		return fmt.Errorf("SET row_security = off: %w", err)
	}
	var f findings
	for _, tbl := range []string{"agents", "tools", "prompts", "workflows", "user_tenants", "user_roles", "resource_sharing_audit", "tenants"} {
		out, err := queryText(ctx, conn, "SELECT t::text FROM public."+tbl+" t")
		switch {
		case err == nil:
			f.add("row_security = off let %s be read", tbl)
			if err := f.addErr(e.leakIn(tbl+" with row_security off", out)); err != nil {
				return err
			}
		case sqlState(err) != "42501":
			return fmt.Errorf("%s with row_security off: %w", tbl, err)
		}
	}
	if _, err := conn.Exec(ctx, "RESET row_security"); err != nil {
		return err
	}
	if err := f.addErr(e.onlyOwn(ctx, conn)); err != nil {
		return err
	}
	return f.result()
}

// caseAlterRoleSelf: PostgreSQL lets a role set its own session defaults.
// Those must stay confined to the attacker's own role and never reach the
// tenant identity.
func caseAlterRoleSelf(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	role := e.sessionRole(e.atk, "rw")
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if a, err := e.admin(ctx); err == nil {
			_, _ = a.Exec(ctx, "ALTER ROLE "+role+" RESET ALL")
			_, _ = a.Exec(ctx, "ALTER ROLE "+role+" IN DATABASE "+e.fx.db+" RESET ALL")
		}
	}()
	v := quoteLit(e.vic.id)
	var f findings
	err = f.addErr(deniedAll(ctx, conn, []string{
		"ALTER ROLE CURRENT_USER SET vital.tenant_id = " + v,
		"ALTER ROLE CURRENT_USER SET session_replication_role = replica",
		"ALTER ROLE CURRENT_USER SET log_statement = 'none'",
		"ALTER ROLE " + e.vic.role("rw") + " SET search_path = pg_temp",
		"ALTER ROLE " + e.vic.role("rw") + " SET statement_timeout = 1",
		"ALTER ROLE " + e.vic.role("rw") + " RESET ALL",
		"ALTER ROLE vital_tenant SET statement_timeout = 1",
		"ALTER ROLE vital_tenant_writer SET default_transaction_read_only = on",
		"ALTER ROLE ALL SET statement_timeout = 1",
		"ALTER ROLE ALL IN DATABASE " + e.fx.db + " SET statement_timeout = 1",
		"ALTER DATABASE " + e.fx.db + " SET statement_timeout = 1",
		"ALTER ROLE CURRENT_USER SUPERUSER",
		"ALTER ROLE CURRENT_USER BYPASSRLS",
		"ALTER ROLE CURRENT_USER CREATEROLE",
		"ALTER ROLE CURRENT_USER CREATEDB",
		"ALTER ROLE CURRENT_USER REPLICATION",
		"ALTER ROLE CURRENT_USER CONNECTION LIMIT 1",
		"ALTER ROLE CURRENT_USER VALID UNTIL 'infinity'",
		"ALTER ROLE " + e.vic.role("rw") + " PASSWORD 'iso-known'",
		"ALTER ROLE " + e.vic.role("rw") + " NOLOGIN",
	}))
	if err != nil {
		return err
	}
	if err := f.addErr(denied(ctx, conn, "ALTER ROLE "+role+" RENAME TO iso_renamed", "42501", "0A000")); err != nil {
		return err
	}
	// Allowed for every role: its own defaults. They may only affect the
	// attacker's own future sessions.
	var allowed []string
	for _, s := range []string{
		"ALTER ROLE CURRENT_USER SET search_path = pg_temp, public",
		"ALTER ROLE CURRENT_USER SET role = 'vital_tenant'",
		"ALTER ROLE CURRENT_USER IN DATABASE " + e.fx.db + " SET statement_timeout = '17s'",
	} {
		if _, err := conn.Exec(ctx, s); err == nil {
			allowed = append(allowed, s)
		} else if sqlState(err) != "42501" {
			return fmt.Errorf("%q: %w", s, err)
		}
	}
	if len(allowed) > 0 {
		e.note("a tenant role may set its own role defaults (%s); they stay on its own role until "+
			"`vitalproxy tenant sync` removes them (the audit's tenant_role_settings reports them meanwhile)", strings.Join(allowed, "; "))
	}
	// A new login picks the defaults up. It logs in directly: through the
	// proxy it would leave a pooled backend carrying them (see the report).
	fresh, err := connectURL(ctx, e.fx.c.URLFor(role, e.fx.rolePassword(role), e.fx.db))
	if err != nil {
		return fmt.Errorf("attacker login after ALTER ROLE self: %w", err)
	}
	defer fresh.Close(context.WithoutCancel(ctx))
	if e.sharedBackends() {
		// The pooled role's login has no tenant until the proxy enters one;
		// the proxy refuses such a login while the defaults are there.
		e.note("in context mode the defaults sit on the pooled role shared by every tenant: the proxy refuses " +
			"new shared backends while they exist (a denial of service, no data crosses) until tenant sync removes them")
		if err := f.addErr(e.noTenant(ctx, fresh)); err != nil {
			return err
		}
	} else {
		if err := f.addErr(e.checkTenant(ctx, fresh)); err != nil {
			return err
		}
		if err := f.addErr(e.onlyOwn(ctx, fresh)); err != nil {
			return err
		}
	}
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	var sp, cu, st string
	if err := vc.QueryRow(ctx, "SELECT current_setting('search_path'), current_user::text, current_setting('statement_timeout')").Scan(&sp, &cu, &st); err != nil {
		return err
	}
	if strings.Contains(sp, "pg_temp") || cu != e.sessionRole(e.vic, "rw") || st == "17s" {
		f.add("the victim's new session picked up the attacker's role defaults (search_path %q, current_user %s, statement_timeout %s)", sp, cu, st)
	}
	// A default search_path without public keeps the attacker's own role
	// from passing the proxy's unqualified set_tenant_context: self-denial
	// only, but worth knowing.
	if _, err := conn.Exec(ctx, "ALTER ROLE CURRENT_USER SET search_path = pg_temp"); err != nil {
		return err
	}
	if c, err := e.attacker(ctx); err != nil {
		e.note("with its own role default search_path = pg_temp the attacker's next session fails (%v): "+
			"the proxy resolves set_tenant_context through search_path; calling public.set_tenant_context would avoid it", err)
	} else if err := f.addErr(e.onlyOwn(ctx, c)); err != nil {
		return err
	}
	// Detected and repaired: the audit reports the defaults (names only)
	// and tenant sync removes them.
	if err := f.addErr(e.roleDefaultsRepaired(ctx, role)); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "ALTER ROLE CURRENT_USER RESET ALL"); err != nil {
		return err
	}
	return f.result()
}

// roleDefaultsRepaired checks, with role (the attacker's session role)
// holding role defaults for every database and this one, that the audit's
// tenant_role_settings check fails naming the role and that tenant sync
// removes the defaults and says so.
func (e *env) roleDefaultsRepaired(ctx context.Context, role string) error {
	a, err := e.admin(ctx)
	if err != nil {
		return err
	}
	// Known defaults of both kinds on the attacker's role (what it may set
	// itself).
	if _, err := a.Exec(ctx, "ALTER ROLE "+role+" RESET ALL; ALTER ROLE "+role+" IN DATABASE "+e.fx.db+" RESET ALL; "+
		"ALTER ROLE "+role+" SET search_path = pg_temp; ALTER ROLE "+role+
		" IN DATABASE "+e.fx.db+" SET statement_timeout = '17s'"); err != nil {
		return err
	}
	checks, err := audit.Run(ctx, a, rolePrefix)
	if err != nil {
		return err
	}
	var f findings
	for _, c := range checks {
		if c.Name == audit.TenantRoleSettings && (c.OK || !strings.Contains(c.Detail, role+": role defaults for search_path in every database")) {
			f.add("the audit does not report the attacker's role defaults: %s", c)
		}
		if strings.Contains(c.Detail, "pg_temp") || strings.Contains(c.Detail, "17s") {
			return fmt.Errorf("the audit's detail shows setting values: %s", c)
		}
	}
	rep, err := tenantroles.New(a, tenantroles.Options{Secret: e.fx.secret, Prefix: rolePrefix}).Sync(ctx)
	if err != nil {
		return fmt.Errorf("tenant sync: %w", err)
	}
	for _, want := range []string{
		"role " + role + ": removed role defaults for search_path in every database",
		"role " + role + ": removed role defaults for statement_timeout in database " + e.fx.db,
	} {
		if !slices.Contains(rep.Changes, want) {
			f.add("tenant sync did not report %q (report: %v)", want, rep.Changes)
		}
	}
	n, err := scalar[int](ctx, a, "SELECT count(*)::int FROM pg_db_role_setting WHERE setrole = $1::regrole", role)
	if err != nil {
		return err
	}
	if n > 0 {
		f.add("tenant sync left %d pg_db_role_setting rows of the attacker's role", n)
	}
	return f.result()
}

func caseAlterRolePassword(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	role := e.sessionRole(e.atk, "rw")
	newPW := "iso-" + randomHex(8)
	_, err = conn.Exec(ctx, "ALTER ROLE CURRENT_USER PASSWORD "+quoteLit(newPW))
	if err != nil {
		if sqlState(err) == "42501" {
			return nil
		}
		return err
	}
	// Put the derived password back whatever happens next: tenant sync
	// does (and must say so); by hand if it does not.
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
		defer cancel()
		a, err := e.admin(ctx)
		if err != nil {
			e.t.Errorf("restore the password of %s: %v", role, err)
			return
		}
		rep, err := tenantroles.New(a, tenantroles.Options{Secret: e.fx.secret, Prefix: rolePrefix}).Sync(ctx)
		if err == nil && slices.Contains(rep.Changes, "role "+role+": password reset") {
			return
		}
		e.t.Errorf("tenant sync did not repair the password of %s (%v, report %v)", role, err, rep.Changes)
		v, err := auth.NewSCRAMVerifier(e.fx.rolePassword(role))
		if err == nil {
			_, err = a.Exec(ctx, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" PASSWORD "+quoteLit(v))
		}
		if err != nil {
			e.t.Errorf("restore the password of %s: %v", role, err)
		}
	}()
	direct, err := connectURL(ctx, e.fx.c.URLFor(role, newPW, e.fx.db))
	if err != nil {
		return open("the attacker changed its role's password (the proxy's logins for the tenant now fail) but could not log in with it: %v", err)
	}
	defer direct.Close(context.WithoutCancel(ctx))
	var f findings
	f.add("the attacker changed its own role's password and logged in to PostgreSQL directly as %s", role)
	if e.sharedBackends() {
		// The pooled role: no tenant without a context the proxy signed.
		if err := f.addErr(e.noTenant(ctx, direct)); err != nil {
			return err
		}
		return f.result()
	}
	if err := f.addErr(e.checkTenant(ctx, direct)); err != nil {
		return err
	}
	if err := f.addErr(e.onlyOwn(ctx, direct)); err != nil {
		return err
	}
	return f.result()
}

func caseRoleGrants(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	a, v := e.atk.role("rw"), e.vic.role("rw")
	var f findings
	err = f.addErr(deniedAll(ctx, conn, []string{
		"GRANT " + a + " TO " + v,
		"GRANT " + a + " TO vital_tenant",
		"GRANT " + v + " TO " + a,
		"GRANT vital_tenant_writer TO " + e.vic.role("ro"),
		"GRANT vital_operator TO " + a,
		"GRANT vital_owner TO " + a,
		"GRANT pg_signal_backend TO " + a,
		"GRANT pg_read_all_stats TO " + a,
		"REVOKE vital_tenant_writer FROM " + v,
		"REVOKE vital_tenant FROM " + e.vic.role("ro"),
		"CREATE ROLE iso_role",
		"DROP ROLE " + v,
	}))
	if err != nil {
		return err
	}
	member, err := scalar[bool](ctx, conn, "SELECT pg_has_role(session_user, 'vital_operator', 'MEMBER') OR pg_has_role(session_user, $1, 'MEMBER')", v)
	if err != nil {
		return err
	}
	if member {
		f.add("the attacker is a member of vital_operator or of the victim's role")
	}
	return f.result()
}
