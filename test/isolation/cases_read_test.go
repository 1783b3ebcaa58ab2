package isolation_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// readCases try to read or infer the victim's rows.
func readCases() []attackCase {
	return []attackCase{
		{name: "copy-to-stdout", category: "read", level: levelSQL, run: caseCopyTo},
		{name: "sweep-read-only-role", category: "read", level: levelSQL, run: caseSweepRO},
		{name: "functions-taking-tenant-ids", category: "read", level: levelSQL, run: caseTenantFunctions},
		{name: "pg-stat-activity-query-text", category: "read", level: levelSQL, run: caseActivityQuery},
		{name: "pg-stat-activity-application-name", category: "read", level: levelSQL, run: caseActivityAppName},
		{name: "settings", category: "read", level: levelSQL, run: caseSettings},
		{name: "explain-analyze-row-counts", category: "read", level: levelSQL, run: caseExplainAnalyze,
			expectOpen: "EXPLAIN ANALYZE reports \"Rows Removed by Filter\" for the RLS filter, i.e. how many rows of " +
				"other tenants a scan passed over, and with an index scan whether a known id exists; no privilege " +
				"governs EXPLAIN. Closable only by the proxy refusing EXPLAIN ANALYZE (statement inspection)"},
		{name: "table-statistics-row-counts", category: "read", level: levelSQL, run: caseTableStats,
			expectOpen: "pg_class.reltuples (and relpages) give every role an estimate of whole-table row counts, i.e. " +
				"the other tenants' total; pg_class has no per-row privilege and psql/drivers read it. The statistics " +
				"views and functions (pg_stat_user_tables, pg_stat_get_*) are closed by migration 20251026000005"},
		{name: "pg-stats-column-values", category: "read", level: levelSQL, run: casePgStats},
		{name: "leaky-function-in-where", category: "read", level: levelSQL, run: caseLeakyFunction},
		{name: "cast-and-division-errors", category: "read", level: levelSQL, run: caseCastErrors},
		{name: "unique-key-existence-oracle", category: "read", level: levelSQL, run: caseUniqueOracle,
			expectOpen: "accepted: primary keys are global, so INSERT (or ON CONFLICT, MERGE) with a known id tells whether " +
				"that id exists in another tenant (and user_tenants' foreign key whether a user id exists). Every id is " +
				"a random uuid: this confirms an id the attacker already has but cannot enumerate or count. Closing it " +
				"needs tenant-scoped keys (PRIMARY KEY (tenant_id, id))"},
		{name: "pending-insert-known-key", category: "read", level: levelSQL, run: casePendingInsert,
			expectOpen: "accepted: an INSERT with the id of another tenant's uncommitted row waits for that transaction, so " +
				"lock_timeout reveals a pending row with a known id (same root cause and fix as unique-key-existence-oracle)"},
		{name: "pending-update-row-locks", category: "read", level: levelSQL, run: casePendingUpdate},
		{name: "pg-locks", category: "read", level: levelSQL, run: casePgLocks},
		{name: "temp-table-contents", category: "read", level: levelSQL, run: caseTempTables},
		{name: "catalog-names", category: "read", level: levelSQL, run: caseCatalogNames,
			expectOpen: "catalogue names are database-wide: pg_roles lists every tenant's login roles (so every tenant " +
				"slug), pg_class the names of other sessions' temporary tables. PostgreSQL has no per-row catalogue ACL; " +
				"keep data out of names (role names could be keyed hashes of the slug). Large objects, whose owners " +
				"pg_largeobject_metadata showed, can no longer be created by tenants (migration 20251026000005)"},
		{name: "large-objects", category: "read", level: levelSQL, run: caseLargeObjects},
		{name: "server-side-files", category: "read", level: levelSQL, run: caseServerFiles},
		{name: "audit-id-sequence-gaps", category: "read", level: levelSQL, run: caseAuditGaps},
		{name: "catalog-sweep", category: "read", level: levelSQL, run: caseCatalogSweep},
		{name: "pg-stat-statements", category: "read", level: levelSQL, run: casePgStatStatements},
	}
}

func caseCopyTo(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	for _, src := range []string{
		"public.agents", "public.tools", "public.prompts", "public.workflows", "public.user_tenants",
		"public.user_roles", "public.resource_sharing_audit", "public.tenants", "(SELECT * FROM public.mv_platform_shared_resources)",
		"(SELECT t::text FROM public.get_accessible_agents('" + e.vic.id + "') t)",
		"(SELECT * FROM public.agents WHERE tenant_id = '" + e.vic.id + "')",
	} {
		sql := "COPY " + src + " TO STDOUT"
		if _, err := conn.PgConn().CopyTo(ctx, &buf, sql); err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
	}
	var f findings
	if err := f.addErr(e.judgeOwn("COPY TO STDOUT", buf.String(), e.atk.markers())); err != nil {
		return err
	}
	err = f.addErr(deniedAll(ctx, conn, []string{
		"COPY public.agents TO '/tmp/iso-copy-out'",
		"COPY (SELECT 1) TO PROGRAM 'true'",
	}))
	if err != nil {
		return err
	}
	return f.result()
}

func caseSweepRO(ctx context.Context, e *env) error {
	conn, err := e.connect(ctx, e.atk, userRO)
	if err != nil {
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

// caseTenantFunctions calls every public function the attacker may execute
// whose required arguments are all uuids with the victim's tenant and user
// ids, and the known ones with explicit expectations.
func caseTenantFunctions(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	defer rollback(conn)
	var f findings
	rows, err := conn.Query(ctx, `SELECT p.oid::regprocedure::text, p.proname, p.pronargs - p.pronargdefaults
		  FROM pg_catalog.pg_proc p
		 WHERE p.pronamespace = 'public'::regnamespace
		   AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
		   AND p.prokind = 'f'
		   AND p.pronargs > 0
		   AND (SELECT bool_and(t = 'uuid'::regtype) FROM unnest(p.proargtypes[0:p.pronargs - p.pronargdefaults - 1]) t)
		 ORDER BY 1`)
	if err != nil {
		return err
	}
	type fn struct {
		sig, name string
		nargs     int
	}
	fns, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (fn, error) {
		var x fn
		err := r.Scan(&x.sig, &x.name, &x.nargs)
		return x, err
	})
	if err != nil {
		return err
	}
	if len(fns) < 3 {
		return fmt.Errorf("positive control: only %d public functions with uuid arguments found", len(fns))
	}
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	var out strings.Builder
	for _, x := range fns {
		for _, args := range [][]string{{e.vic.id, e.vic.id}, {e.vic.userID, e.vic.id}, {e.vic.userID, e.vic.userID}} {
			list := make([]string, x.nargs)
			for i := range list {
				list[i] = quoteLit(args[min(i, 1)]) + "::uuid"
			}
			sql := fmt.Sprintf("SELECT r::text FROM public.%s(%s) r", pgx.Identifier{x.name}.Sanitize(), strings.Join(list, ", "))
			if _, err := conn.Exec(ctx, "SAVEPOINT iso_fn"); err != nil {
				return err
			}
			text, err := queryText(ctx, conn, sql)
			if _, rerr := conn.Exec(ctx, "ROLLBACK TO SAVEPOINT iso_fn"); rerr != nil {
				return rerr
			}
			if err != nil && (sqlState(err) == "" || strings.HasPrefix(sqlState(err), "42P") || sqlState(err) == "42883") {
				return fmt.Errorf("%s: %w", sql, err)
			}
			if err != nil {
				// An error may echo the arguments the attacker passed
				// in; those are not leaks.
				text = err.Error()
				for _, a := range args {
					text = strings.ReplaceAll(text, a, "<argument>")
				}
			}
			fmt.Fprintf(&out, "%s -> %s\n", x.sig, text)
		}
	}
	if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
		return err
	}
	if err := f.addErr(e.leakIn("functions called with the victim's ids", out.String())); err != nil {
		return err
	}
	// Boolean answers carry no marker: check them one by one.
	for _, q := range []struct {
		sql  string
		args []any
		what string
	}{
		{"SELECT public.has_tenant_access($1, $2)", []any{e.vic.userID, e.vic.id}, "has_tenant_access(victim user, victim tenant)"},
		{"SELECT public.has_tenant_access($1, $2)", []any{e.vic.userID, e.atk.id}, "has_tenant_access(victim user, attacker tenant)"},
		{"SELECT public.is_platform_admin($1)", []any{e.vic.userID}, "is_platform_admin(victim user)"},
		{"SELECT public.is_platform_admin()", nil, "is_platform_admin()"},
		{"SELECT public.get_super_admin_tenant_id() = $1::uuid", []any{e.vic.id}, "get_super_admin_tenant_id() = victim"},
		{"SELECT public.current_tenant_id() = $1::uuid", []any{e.vic.id}, "current_tenant_id() = victim"},
	} {
		got, err := scalar[*bool](ctx, conn, q.sql, q.args...)
		if err != nil {
			return fmt.Errorf("%s: %w", q.what, err)
		}
		if got != nil && *got {
			f.add("%s is true for the attacker", q.what)
		}
	}
	// The attacker's own membership answers true: the probe can see a yes.
	own, err := scalar[bool](ctx, conn, "SELECT public.has_tenant_access($1, $2)", e.atk.userID, e.atk.id)
	if err != nil {
		return err
	}
	if !own {
		return fmt.Errorf("positive control: has_tenant_access is false for the attacker's own user")
	}
	// Writing functions: granting a platform role to the victim's user is
	// refused; assigning it to another tenant inserts nothing.
	if err := f.addErr(denied(ctx, conn, "SELECT public.grant_platform_admin("+quoteLit(e.vic.userID)+")")); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "SELECT public.assign_user_to_dh_startup($1, 'owner')", e.vic.userID); err != nil && sqlState(err) != "42501" {
		return fmt.Errorf("assign_user_to_dh_startup: %w", err)
	}
	a, err := e.admin(ctx)
	if err != nil {
		return err
	}
	n, err := scalar[int](ctx, a, `SELECT count(*)::int FROM public.user_tenants ut JOIN public.tenants t ON t.id = ut.tenant_id
		WHERE ut.user_id = $1 AND t.slug = 'digital-health-startup'`, e.vic.userID)
	if err != nil {
		return err
	}
	if n > 0 {
		f.add("assign_user_to_dh_startup put the victim's user into another tenant")
		_, _ = a.Exec(ctx, "DELETE FROM public.user_tenants WHERE user_id = $1 AND tenant_id <> $2", e.vic.userID, e.vic.id)
	}
	return f.result()
}

func caseActivityQuery(ctx context.Context, e *env) error {
	vc, ac, err := e.victimAndAttacker(ctx)
	if err != nil {
		return err
	}
	a, err := e.admin(ctx)
	if err != nil {
		return err
	}
	marker := e.vic.prefix + "-activity"
	done := goQuery(func() error {
		_, err := vc.Exec(ctx, "SELECT pg_sleep(1.5), '"+marker+"'::text")
		return err
	})
	// Positive control: the superuser's view shows the running query.
	seen, err := waitUntil(ctx, 5*time.Second, func() (bool, error) {
		n, err := scalar[int](ctx, a, "SELECT count(*)::int FROM pg_stat_activity WHERE query LIKE '%'||$1||'%' AND pid <> pg_backend_pid()", marker)
		return n > 0, err
	})
	if err != nil {
		return err
	}
	if !seen {
		return fmt.Errorf("positive control: the victim's running query never showed in pg_stat_activity")
	}
	var f findings
	text, err := queryText(ctx, ac, `SELECT s.*, pg_stat_get_backend_activity(b) FROM pg_stat_activity s,
		pg_stat_get_backend_idset() b WHERE pg_stat_get_backend_pid(b) = s.pid`)
	if sqlState(err) == "42501" {
		// Revoked: nothing to read. The victim's session is still busy and
		// is closed when the case ends: wait for its query first.
		if err := waitErr(ctx, done); err != nil {
			return fmt.Errorf("victim query: %w", err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if err := f.addErr(e.leakIn("pg_stat_activity", text)); err != nil {
		return err
	}
	if err := waitErr(ctx, done); err != nil {
		return fmt.Errorf("victim query: %w", err)
	}
	// Idle now; the last query text stays in pg_stat_activity.
	text, err = queryText(ctx, ac, "SELECT query FROM pg_stat_activity")
	if err != nil {
		return err // readable a moment ago
	}
	if err := f.addErr(e.leakIn("pg_stat_activity (victim idle)", text)); err != nil {
		return err
	}
	return f.result()
}

func caseActivityAppName(ctx context.Context, e *env) error {
	vc, ac, err := e.victimAndAttacker(ctx)
	if err != nil {
		return err
	}
	if _, err := vc.Exec(ctx, "SET application_name = '"+e.vic.prefix+"-app'"); err != nil {
		return err
	}
	text, err := queryText(ctx, ac, "SELECT usename, application_name FROM pg_stat_activity")
	if sqlState(err) == "42501" {
		return nil
	}
	if err != nil {
		return err
	}
	var f findings
	if err := f.addErr(e.leakIn("pg_stat_activity.application_name", text)); err != nil {
		return err
	}
	if strings.Contains(text, e.vic.role("rw")) {
		e.note("pg_stat_activity.usename shows that the victim's role %s is connected", e.vic.role("rw"))
	}
	return f.result()
}

func caseSettings(ctx context.Context, e *env) error {
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	if _, err := vc.Exec(ctx, "SET vital.iso_note = '"+e.vic.prefix+"-setting'"); err != nil {
		return err
	}
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	text, err := queryText(ctx, ac, `SELECT name, setting FROM pg_catalog.pg_settings
		UNION ALL SELECT 'db_role_setting', array_to_string(setconfig, ',') FROM pg_catalog.pg_db_role_setting
		UNION ALL SELECT 'vital.tenant_id', coalesce(current_setting('vital.tenant_id', true), '')
		UNION ALL SELECT 'vital.iso_note', coalesce(current_setting('vital.iso_note', true), '')`)
	if err != nil {
		return err
	}
	var f findings
	if err := f.addErr(e.leakIn("settings", text)); err != nil {
		return err
	}
	if strings.Contains(text, e.vic.id) {
		f.add("the victim's tenant id appears in the attacker's settings")
	}
	return f.result()
}

// planNode is the part of EXPLAIN's JSON the case reads.
type planNode struct {
	NodeType     string     `json:"Node Type"`
	Relation     string     `json:"Relation Name"`
	ActualRows   float64    `json:"Actual Rows"`
	RowsRemoved  float64    `json:"Rows Removed by Filter"`
	RowsRemovedI float64    `json:"Rows Removed by Index Recheck"`
	Plans        []planNode `json:"Plans"`
}

func explainRemoved(ctx context.Context, conn *pgx.Conn, query string) (removed, actual float64, err error) {
	raw, err := scalar[string](ctx, conn, "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, FORMAT JSON) "+query)
	if err != nil {
		return 0, 0, err
	}
	var out []struct {
		Plan planNode `json:"Plan"`
	}
	if err := json.Unmarshal([]byte(raw), &out); err != nil || len(out) == 0 {
		return 0, 0, fmt.Errorf("parse EXPLAIN output: %v", err)
	}
	var walk func(n planNode)
	walk = func(n planNode) {
		if n.Relation != "" {
			removed += n.RowsRemoved
			actual += n.ActualRows
		}
		for _, c := range n.Plans {
			walk(c)
		}
	}
	walk(out[0].Plan)
	return removed, actual, nil
}

func caseExplainAnalyze(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	removed, actual, err := explainRemoved(ctx, conn, "SELECT * FROM public.agents")
	if err != nil {
		return err
	}
	if removed > 0 {
		f.add("EXPLAIN ANALYZE on agents: %v rows visible, %v rows of other tenants removed by the RLS filter", actual, removed)
	}
	// With an index scan the filter runs on just the rows the key matches:
	// a known id of the victim shows as one removed row, a random one as
	// none.
	if _, err := conn.Exec(ctx, "SET enable_seqscan = off; SET enable_bitmapscan = off"); err != nil {
		return err
	}
	known, _, err := explainRemoved(ctx, conn, "SELECT * FROM public.agents WHERE id = '"+e.vic.privateIDs["agents"][0]+"'")
	if err != nil {
		return err
	}
	unknown, _, err := explainRemoved(ctx, conn, "SELECT * FROM public.agents WHERE id = gen_random_uuid()")
	if err != nil {
		return err
	}
	if known != unknown {
		f.add("EXPLAIN ANALYZE of an index lookup tells a known id of the victim (%v removed) from a random one (%v)", known, unknown)
	}
	return f.result()
}

func caseTableStats(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	if err := tryAll(ctx, conn, "SELECT pg_stat_clear_snapshot()"); err != nil {
		return err
	}
	var f findings
	for _, tbl := range resourceTables {
		visible, err := scalar[int64](ctx, conn, "SELECT count(*) FROM public."+tbl)
		if err != nil {
			return err
		}
		rel := quoteLit("public." + tbl)
		// Each source on its own: a revoked one answers 42501.
		for _, src := range []struct{ what, sql string }{
			{"pg_stat_user_tables.n_tup_ins", "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = " + rel + "::regclass"},
			{"pg_stat_user_tables.n_live_tup", "SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = " + rel + "::regclass"},
			{"pg_stat_get_tuples_inserted()", "SELECT pg_stat_get_tuples_inserted(" + rel + "::regclass)"},
			{"pg_stat_get_live_tuples()", "SELECT pg_stat_get_live_tuples(" + rel + "::regclass)"},
			{"pg_class.reltuples", "SELECT reltuples::bigint FROM pg_class WHERE oid = " + rel + "::regclass"},
		} {
			n, err := scalar[*int64](ctx, conn, src.sql)
			switch {
			case sqlState(err) == "42501":
			case err != nil:
				return fmt.Errorf("%s: %w", src.sql, err)
			case n != nil && *n > visible:
				f.add("%s: the attacker sees %d rows, %s says %d", tbl, visible, src.what, *n)
			}
		}
	}
	return f.result()
}

func casePgStats(ctx context.Context, e *env) error {
	a, err := e.admin(ctx)
	if err != nil {
		return err
	}
	// Positive control: the statistics do hold the victim's values.
	all, err := queryText(ctx, a, "SELECT t::text FROM pg_stats t WHERE schemaname = 'public'")
	if err != nil {
		return err
	}
	if !strings.Contains(all, e.vic.prefix) {
		return fmt.Errorf("positive control: pg_stats holds none of the victim's values (ANALYZE missing?)")
	}
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	text, err := queryText(ctx, conn, `SELECT t::text FROM pg_stats t
		UNION ALL SELECT t::text FROM pg_stats_ext t UNION ALL SELECT t::text FROM pg_stats_ext_exprs t`)
	if err != nil {
		return err
	}
	if err := f.addErr(e.leakIn("pg_stats", text)); err != nil {
		return err
	}
	err = f.addErr(deniedAll(ctx, conn, []string{
		"SELECT * FROM pg_catalog.pg_statistic",
		"SELECT * FROM pg_catalog.pg_statistic_ext_data",
		"CREATE STATISTICS public.iso_st ON name, description FROM public.agents",
	}))
	if err != nil {
		return err
	}
	// ANALYZE by a non-owner is skipped with a warning.
	if _, err := conn.Exec(ctx, "ANALYZE public.agents"); err != nil {
		return err
	}
	return f.result()
}

func caseLeakyFunction(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `CREATE TEMP TABLE iso_sink (v text);
		CREATE FUNCTION pg_temp.iso_leak(text) RETURNS boolean LANGUAGE plpgsql VOLATILE COST 0.0000001 AS $$
		BEGIN
			INSERT INTO pg_temp.iso_sink VALUES ($1);
			RAISE NOTICE 'iso-leak %', $1;
			RETURN true;
		END $$`); err != nil {
		return err
	}
	var f findings
	tables := []string{"agents", "tools", "prompts", "workflows", "user_tenants", "user_roles", "resource_sharing_audit", "tenants"}
	for _, tbl := range tables {
		for _, q := range []string{
			"SELECT count(*) FROM public." + tbl + " t WHERE pg_temp.iso_leak(t::text)",
			"SELECT count(*) FROM public." + tbl + " t WHERE pg_temp.iso_leak(t::text) OR t.id IS NULL",
			"SELECT count(*) FROM (SELECT * FROM public." + tbl + " OFFSET 0) t WHERE pg_temp.iso_leak(t::text)",
		} {
			if _, err := conn.Exec(ctx, q); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
	}
	// Through a security-barrier view of its own and a join.
	if _, err := conn.Exec(ctx, `CREATE TEMP VIEW iso_v WITH (security_barrier = false) AS SELECT * FROM public.agents;
		SELECT count(*) FROM iso_v v JOIN public.tools t ON pg_temp.iso_leak(v::text || t::text)`); err != nil {
		return err
	}
	sink, err := queryText(ctx, conn, "SELECT v FROM pg_temp.iso_sink")
	if err != nil {
		return err
	}
	if err := f.addErr(e.judgeOwn("values seen by a leaky function", sink, e.atk.markers())); err != nil {
		return err
	}
	if err := f.addErr(e.leakIn("notices of a leaky function", strings.Join(noticesOf(conn), "\n"))); err != nil {
		return err
	}
	err = f.addErr(deniedAll(ctx, conn, []string{
		"ALTER FUNCTION pg_temp.iso_leak(text) LEAKPROOF",
		"CREATE FUNCTION pg_temp.iso_lp(text) RETURNS boolean LANGUAGE sql LEAKPROOF AS 'SELECT true'",
	}))
	if err != nil {
		return err
	}
	return f.result()
}

func caseCastErrors(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	probes := func(tbl, col, val string) []string {
		l := quoteLit(val)
		return []string{
			fmt.Sprintf("SELECT count(*) FROM public.%s WHERE CASE WHEN %s::text = %s THEN %s::text::int = 1 ELSE false END", tbl, col, l, col),
			fmt.Sprintf("SELECT count(*) FROM public.%s WHERE 1 / (CASE WHEN %s::text = %s THEN 0 ELSE 1 END) = 1", tbl, col, l),
			fmt.Sprintf("SELECT count(*) FROM public.%s WHERE %s::text = %s AND %s::text::int > 0", tbl, col, l, col),
			fmt.Sprintf("SELECT count(*) FROM public.%s WHERE (CASE WHEN %s::text = %s THEN %s::text ELSE '2000-01-01' END)::date IS NOT NULL", tbl, col, l, col),
		}
	}
	type target struct{ tbl, col, vic, own string }
	var targets []target
	for _, tbl := range resourceTables {
		targets = append(targets, target{tbl, "name", e.vic.prefix + "-" + tbl + "-private", e.atk.prefix + "-" + tbl + "-private"})
	}
	targets = append(targets,
		target{"user_tenants", "user_id", e.vic.userID, e.atk.userID},
		target{"user_roles", "user_id", e.vic.userID, e.atk.userID},
		target{"resource_sharing_audit", "resource_id", e.vic.privateIDs["agents"][1], e.atk.privateIDs["agents"][1]},
		target{"tenants", "name", e.vic.name, e.atk.name},
	)
	for _, tg := range targets {
		for _, q := range probes(tg.tbl, tg.col, tg.vic) {
			_, err := conn.Exec(ctx, q)
			switch {
			case err == nil:
			case strings.HasPrefix(sqlState(err), "22"):
				f.add("an error evaluated on the victim's row reveals it: %s -> %v", oneLine(q), err)
			default:
				return fmt.Errorf("%s: %w", q, err)
			}
		}
		// Positive control: the same probe on the attacker's own row does
		// raise, so silence above means the victim's row was never touched.
		for _, q := range probes(tg.tbl, tg.col, tg.own) {
			if _, err := conn.Exec(ctx, q); err == nil || !strings.HasPrefix(sqlState(err), "22") {
				return fmt.Errorf("positive control: %s on the attacker's own row: %v", oneLine(q), err)
			}
		}
	}
	return f.result()
}

func caseUniqueOracle(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	defer rollback(conn)
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	// outcome of one statement under a savepoint: "" for success, else the
	// SQLSTATE; affected rows too.
	try := func(sql string, args ...any) (string, int64, error) {
		if _, err := conn.Exec(ctx, "SAVEPOINT iso_u"); err != nil {
			return "", 0, err
		}
		tag, err := conn.Exec(ctx, sql, args...)
		if _, rerr := conn.Exec(ctx, "ROLLBACK TO SAVEPOINT iso_u"); rerr != nil {
			return "", 0, rerr
		}
		if err != nil {
			if sqlState(err) == "" || slices.Contains(mistakeStates, sqlState(err)) {
				return "", 0, fmt.Errorf("%s: %w", oneLine(sql), err)
			}
			return sqlState(err), 0, nil
		}
		return "", tag.RowsAffected(), nil
	}
	var f findings
	known := e.vic.privateIDs["agents"][0]
	for _, p := range []struct{ what, sql string }{
		{"INSERT", "INSERT INTO public.agents (id, name) VALUES ($1, 'iso-probe')"},
		{"INSERT ... ON CONFLICT DO NOTHING", "INSERT INTO public.agents (id, name) VALUES ($1, 'iso-probe') ON CONFLICT (id) DO NOTHING"},
		{"INSERT ... ON CONFLICT DO UPDATE", "INSERT INTO public.agents (id, name) VALUES ($1, 'iso-probe') ON CONFLICT (id) DO UPDATE SET name = 'iso-probe'"},
		{"MERGE", "MERGE INTO public.agents a USING (SELECT $1::uuid AS id) s ON a.id = s.id WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, 'iso-probe')"},
	} {
		st1, n1, err := try(p.sql, known)
		if err != nil {
			return err
		}
		st2, n2, err := try(p.sql, randomUUID())
		if err != nil {
			return err
		}
		if st1 != st2 || n1 != n2 {
			f.add("%s tells the victim's id (%q, %d rows) from a random one (%q, %d rows)", p.what, st1, n1, st2, n2)
		}
	}
	// Natural unique keys: tenants.slug (inserting tenants is refused
	// before the unique index is consulted, so no oracle).
	st1, _, err := try("INSERT INTO public.tenants (name, slug, type) VALUES ('iso', $1, 'client')", e.vic.slug)
	if err != nil {
		return err
	}
	st2, _, err := try("INSERT INTO public.tenants (name, slug, type) VALUES ('iso', $1, 'client')", "iso-"+randomHex(4))
	if err != nil {
		return err
	}
	if st1 != st2 {
		f.add("tenants.slug tells the victim's slug (%q) from a random one (%q)", st1, st2)
	}
	st1, _, err = try("INSERT INTO public.user_tenants (user_id) VALUES ($1)", e.vic.userID)
	if err != nil {
		return err
	}
	st2, _, err = try("INSERT INTO public.user_tenants (user_id) VALUES ($1)", randomUUID())
	if err != nil {
		return err
	}
	if st1 != st2 {
		f.add("user_tenants' foreign key tells the victim's user id (%q) from a random one (%q)", st1, st2)
	}
	return f.result()
}

func casePendingInsert(ctx context.Context, e *env) error {
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	defer rollback(vc)
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	defer rollback(ac)
	id := randomUUID()
	if _, err := vc.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	if _, err := vc.Exec(ctx, "INSERT INTO public.agents (id, name) VALUES ($1, $2)", id, e.vic.prefix+"-pending"); err != nil {
		return err
	}
	var f findings
	if _, err := ac.Exec(ctx, "BEGIN; SET LOCAL lock_timeout = '300ms'"); err != nil {
		return err
	}
	for _, q := range []string{
		"SELECT t::text FROM public.agents t WHERE id = '" + id + "' FOR UPDATE",
		"SELECT t::text FROM public.agents t WHERE id = '" + id + "' FOR KEY SHARE",
		"SELECT t::text FROM public.agents t FOR UPDATE",
	} {
		text, err := queryText(ctx, ac, q)
		if err != nil {
			if sqlState(err) == "55P03" {
				f.add("%s waits on the victim's pending insert", oneLine(q))
				if _, err := ac.Exec(ctx, "ROLLBACK; BEGIN; SET LOCAL lock_timeout = '300ms'"); err != nil {
					return err
				}
				continue
			}
			return err
		}
		if err := f.addErr(e.leakIn(q, text)); err != nil {
			return err
		}
	}
	if _, err := ac.Exec(ctx, "SAVEPOINT p"); err != nil {
		return err
	}
	_, err = ac.Exec(ctx, "INSERT INTO public.agents (id, name) VALUES ($1, 'iso-collide')", id)
	switch {
	case err == nil:
		return fmt.Errorf("an insert with the id of an uncommitted row went through")
	case sqlState(err) == "55P03":
		f.add("an INSERT with the id of the victim's uncommitted row waits (lock timeout): the pending row is detectable")
	case sqlState(err) == "23505":
		f.add("an INSERT with the id of the victim's uncommitted row fails with a unique violation")
	default:
		return err
	}
	return f.result()
}

func casePendingUpdate(ctx context.Context, e *env) error {
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	defer rollback(vc)
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	defer rollback(ac)
	// Positive control: a row lock held by another session of the
	// attacker's own tenant is detected by the same probe.
	ac2, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	defer rollback(ac2)
	if _, err := ac2.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	if _, err := ac2.Exec(ctx, "UPDATE public.agents SET description = description WHERE id = $1", e.atk.privateIDs["agents"][0]); err != nil {
		return err
	}
	if _, err := ac.Exec(ctx, "SELECT * FROM public.agents FOR UPDATE NOWAIT"); sqlState(err) != "55P03" {
		return fmt.Errorf("positive control: FOR UPDATE NOWAIT over a row the attacker's other session locked: %v", err)
	}
	rollback(ac2)
	if _, err := vc.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	for _, tbl := range resourceTables {
		if _, err := vc.Exec(ctx, "UPDATE public."+tbl+" SET description = description WHERE tenant_id = $1", e.vic.id); err != nil {
			return err
		}
	}
	if _, err := vc.Exec(ctx, "UPDATE public.user_tenants SET role = role WHERE tenant_id = $1", e.vic.id); err != nil {
		return err
	}
	var f findings
	if _, err := ac.Exec(ctx, "BEGIN; SET LOCAL lock_timeout = '300ms'"); err != nil {
		return err
	}
	var qs []string
	for _, tbl := range append(resourceTables, "user_tenants") {
		qs = append(qs,
			"SELECT t::text FROM public."+tbl+" t FOR UPDATE",
			"SELECT t::text FROM public."+tbl+" t FOR NO KEY UPDATE NOWAIT",
			"SELECT t::text FROM public."+tbl+" t FOR SHARE",
			"SELECT t::text FROM public."+tbl+" t FOR KEY SHARE SKIP LOCKED",
		)
	}
	qs = append(qs, "UPDATE public.agents SET description = description RETURNING agents::text")
	for _, q := range qs {
		text, err := queryText(ctx, ac, q)
		if err != nil {
			if sqlState(err) == "55P03" {
				f.add("%s waits on the victim's uncommitted update", oneLine(q))
				if _, err := ac.Exec(ctx, "ROLLBACK; BEGIN; SET LOCAL lock_timeout = '300ms'"); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("%s: %w", q, err)
		}
		if err := f.addErr(e.leakIn(q, text)); err != nil {
			return err
		}
	}
	return f.result()
}

func casePgLocks(ctx context.Context, e *env) error {
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	defer rollback(vc)
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	if _, err := vc.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	if _, err := vc.Exec(ctx, "INSERT INTO public.tools (name) VALUES ($1)", e.vic.prefix+"-locked"); err != nil {
		return err
	}
	// Positive control: the lock is there to be seen.
	a, err := e.admin(ctx)
	if err != nil {
		return err
	}
	n, err := scalar[int](ctx, a, `SELECT count(*)::int FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid
		WHERE s.usename = $1 AND l.relation = 'public.tools'::regclass AND l.mode = 'RowExclusiveLock'`, e.sessionRole(e.vic, "rw"))
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("positive control: the victim's RowExclusiveLock on tools is not in pg_locks")
	}
	// The attacker finds the victim's backend by its role name.
	text, err := queryText(ctx, ac, `SELECT l.locktype, l.relation::regclass::text, l.mode
		  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		 WHERE a.usename = $1 AND l.relation IS NOT NULL`, e.sessionRole(e.vic, "rw"))
	if err != nil {
		if sqlState(err) == "42501" {
			return nil
		}
		return err
	}
	if strings.Contains(text, "tools") && strings.Contains(text, "RowExclusiveLock") {
		return open("pg_locks shows the victim's open transaction writing to tools: %s", oneLine(text))
	}
	return nil
}

func caseTempTables(ctx context.Context, e *env) error {
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	if _, err := vc.Exec(ctx, "CREATE TEMP TABLE iso_tmp AS SELECT '"+e.vic.prefix+"-temp'::text AS v"); err != nil {
		return err
	}
	nsp, err := scalar[string](ctx, vc, "SELECT pg_my_temp_schema()::regnamespace::text")
	if err != nil {
		return err
	}
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	rel := nsp + ".iso_tmp"
	codes := []string{"42501", "0A000"}
	if e.sharedBackends() {
		// On the victim's own backend, the switch to the attacker's
		// tenant has dropped the table (DISCARD TEMP).
		codes = append(codes, "42P01")
	}
	return inTx(ctx, ac, func() error {
		return deniedAll(ctx, ac, []string{
			"SELECT * FROM " + rel,
			"COPY " + rel + " TO STDOUT",
			"INSERT INTO " + rel + " VALUES ('x')",
			"UPDATE " + rel + " SET v = 'x'",
			"DELETE FROM " + rel,
			"TRUNCATE " + rel,
			"DROP TABLE " + rel,
			"ALTER TABLE " + rel + " OWNER TO " + e.atk.role("rw"),
			"LOCK TABLE " + rel,
			"SELECT count(*) FROM pg_catalog.pg_class WHERE oid = '" + rel + "'::regclass AND pg_catalog.pg_relation_size(oid) >= 0 AND (SELECT count(*) FROM " + rel + ") >= 0",
		}, codes...)
	})
}

func caseCatalogNames(ctx context.Context, e *env) error {
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	tmp := e.vic.prefix + "-name"
	if _, err := vc.Exec(ctx, "CREATE TEMP TABLE "+pgx.Identifier{tmp}.Sanitize()+" (x int)"); err != nil {
		return err
	}
	lo, err := scalar[uint32](ctx, vc, "SELECT lo_from_bytea(0, 'x')")
	switch {
	case sqlState(err) == "42501":
		lo = 0 // tenants may not create large objects
	case err != nil:
		return err
	default:
		defer func() { _, _ = vc.Exec(context.WithoutCancel(ctx), "SELECT lo_unlink($1)", lo) }()
	}
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	roles, err := queryText(ctx, ac, "SELECT rolname FROM pg_roles")
	if err != nil {
		return err
	}
	if strings.Contains(roles, e.vic.role("rw")) {
		f.add("pg_roles lists the victim's login role %s (its tenant slug %s)", e.vic.role("rw"), e.vic.slug)
	}
	names, err := queryText(ctx, ac, "SELECT relname FROM pg_class")
	if err != nil {
		return err
	}
	if strings.Contains(names, tmp) {
		f.add("pg_class shows the victim's temporary table name %s", tmp)
	}
	owners, err := queryText(ctx, ac, "SELECT oid, lomowner::regrole FROM pg_largeobject_metadata")
	if err != nil {
		if sqlState(err) != "42501" {
			return err
		}
	} else if lo != 0 && strings.Contains(owners, e.vic.role("rw")) {
		f.add("pg_largeobject_metadata shows that the victim owns large object %d", lo)
	}
	return f.result()
}

func caseLargeObjects(ctx context.Context, e *env) error {
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	lo, err := scalar[uint32](ctx, vc, "SELECT lo_from_bytea(0, convert_to($1, 'UTF8'))", e.vic.prefix+"-largeobject")
	if sqlState(err) == "42501" {
		e.note("tenant roles may not create large objects")
		return nil
	}
	if err != nil {
		return fmt.Errorf("victim lo_from_bytea: %w", err)
	}
	defer func() { _, _ = vc.Exec(context.WithoutCancel(ctx), "SELECT lo_unlink($1)", lo) }()
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	var f findings
	compat, err := scalar[string](ctx, ac, "SHOW lo_compat_privileges")
	if err != nil {
		return err
	}
	if compat != "off" {
		f.add("lo_compat_privileges is %s: large objects have no permission checks", compat)
	}
	o := fmt.Sprint(lo)
	err = f.addErr(deniedAll(ctx, ac, []string{
		"SELECT lo_get(" + o + ")",
		"SELECT lo_get(" + o + ", 0, 10)",
		"SELECT loread(lo_open(" + o + ", 262144), 100)",
		"SELECT lo_open(" + o + ", 131072)",
		"SELECT lo_put(" + o + ", 0, 'x')",
		"SELECT lo_truncate(lo_open(" + o + ", 131072), 0)",
		"SELECT lo_unlink(" + o + ")",
		"SELECT lo_export(" + o + ", '/tmp/iso-lo')",
		"SELECT * FROM pg_catalog.pg_largeobject",
		"ALTER LARGE OBJECT " + o + " OWNER TO " + e.atk.role("rw"),
		"GRANT SELECT ON LARGE OBJECT " + o + " TO " + e.atk.role("rw"),
		"COMMENT ON LARGE OBJECT " + o + " IS 'x'",
	}))
	if err != nil {
		return err
	}
	// Tenants may create large objects (any role may, by default): objects
	// outside every table's RLS and quota. Worth a note for the report.
	if n, err := scalar[uint32](ctx, ac, "SELECT lo_create(0)"); err == nil {
		_, _ = ac.Exec(ctx, "SELECT lo_unlink($1)", n)
		e.note("tenant roles can create large objects (lo_create/lo_from_bytea are PUBLIC): database-wide objects outside RLS and quotas")
	}
	if _, err := ac.Exec(ctx, "SELECT lo_create($1)", lo); sqlState(err) == "42710" {
		e.note("lo_create(oid) of an existing oid fails with 'already exists': large-object oids are an existence oracle (metadata only)")
	}
	return f.result()
}

func caseServerFiles(ctx context.Context, e *env) error {
	conn, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	return deniedAll(ctx, conn, []string{
		"SELECT pg_read_file('/etc/passwd')",
		"SELECT pg_read_file('postgresql.conf')",
		"SELECT pg_read_binary_file('/etc/passwd')",
		"SELECT pg_ls_dir('.')",
		"SELECT pg_stat_file('postgresql.conf')",
		"SELECT * FROM pg_ls_logdir()",
		"SELECT * FROM pg_ls_waldir()",
		"SELECT pg_current_logfile()",
		"SELECT lo_import('/etc/passwd')",
		"COPY public.agents (name) FROM '/etc/passwd'",
		"COPY public.agents (name) FROM PROGRAM 'id'",
		"COPY (SELECT 1) TO '/tmp/iso-out'",
		"SELECT * FROM pg_hba_file_rules",
		"SELECT * FROM pg_file_settings",
		"SELECT pg_reload_conf()",
		"SELECT pg_rotate_logfile()",
		"SELECT * FROM pg_catalog.pg_authid",
		"SELECT * FROM pg_catalog.pg_shadow",
		"SELECT * FROM pg_catalog.pg_user_mapping",
	})
}

func caseAuditGaps(ctx context.Context, e *env) error {
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	defer rollback(ac)
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	defer rollback(vc)
	share := "INSERT INTO public.agents (name, is_shared, sharing_mode, shared_with) VALUES ('iso-gap', true, 'tenants', ARRAY['" + e.fx.third.id + "'::uuid]) RETURNING id"
	// ownAuditID shares a row in a transaction it rolls back and returns
	// the id of the audit row that left.
	ownAuditID := func() (string, error) {
		if _, err := ac.Exec(ctx, "BEGIN"); err != nil {
			return "", err
		}
		defer rollback(ac)
		agent, err := scalar[string](ctx, ac, share)
		if err != nil {
			return "", err
		}
		id, err := scalar[*string](ctx, ac, "SELECT max(id::text) FROM public.resource_sharing_audit WHERE resource_id = $1", agent)
		if err != nil {
			return "", err
		}
		if id == nil {
			return "", fmt.Errorf("positive control: the attacker's sharing left no audit row it can see")
		}
		return *id, nil
	}
	first, err := ownAuditID()
	if err != nil {
		return err
	}
	const victimShares = 3
	if _, err := vc.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	for range victimShares {
		if _, err := vc.Exec(ctx, share); err != nil {
			return err
		}
	}
	if _, err := vc.Exec(ctx, "ROLLBACK"); err != nil {
		return err
	}
	second, err := ownAuditID()
	if err != nil {
		return err
	}
	a, errA := strconv.ParseInt(first, 10, 64)
	b, errB := strconv.ParseInt(second, 10, 64)
	if errA != nil || errB != nil {
		// Random keys (uuid v4: the version digit is 4) carry no count.
		if len(first) != 36 || len(second) != 36 || first[14] != '4' || second[14] != '4' {
			return open("the attacker's own audit ids %s and %s are neither numbers nor random uuids: check what they reveal", first, second)
		}
		return nil
	}
	if gap := b - a - 1; gap >= victimShares {
		return open("the attacker's own audit ids %d and %d are %d apart: the victim's %d sharing events in between are counted", a, b, gap, victimShares)
	}
	return nil
}

// caseCatalogSweep reads every pg_catalog relation the attacker may read
// (information_schema's views are built on them and take seconds each) while the victim is active (an open transaction
// with private writes, a query naming a marker, a temporary table with
// marker contents) and looks for the victim's row values.
func caseCatalogSweep(ctx context.Context, e *env) error {
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	defer rollback(vc)
	if _, err := vc.Exec(ctx, "CREATE TEMP TABLE iso_sweep AS SELECT '"+e.vic.prefix+"-temp-contents'::text AS v"); err != nil {
		return err
	}
	if _, err := vc.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	if _, err := vc.Exec(ctx, "INSERT INTO public.prompts (name, content) VALUES ($1, $1)", e.vic.prefix+"-uncommitted"); err != nil {
		return err
	}
	if _, err := vc.Exec(ctx, "SELECT count(*) FROM public.agents WHERE name = '"+e.vic.prefix+"-agents-private'"); err != nil {
		return err
	}
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	rows, err := ac.Query(ctx, `SELECT format('%I.%I', n.nspname, c.relname)
		  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		 WHERE c.relkind IN ('r', 'v', 'm') AND n.nspname = 'pg_catalog'
		   AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
		 ORDER BY 1`)
	if err != nil {
		return err
	}
	rels, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	if len(rels) < 50 {
		return fmt.Errorf("positive control: only %d catalogue relations readable", len(rels))
	}
	var f findings
	var failed []string
	var patterns []string
	for _, m := range e.vic.markers() {
		patterns = append(patterns, "%"+m+"%")
	}
	for _, r := range rels {
		text, err := queryText(ctx, ac, "SELECT t::text FROM "+r+" t WHERE t::text LIKE ANY ($1) LIMIT 3", patterns)
		if err != nil {
			failed = append(failed, r+": "+sqlState(err))
			continue
		}
		if text != "" {
			f.add("%s holds the victim's values: %s", r, oneLine(text))
		}
	}
	if len(failed) > 0 {
		e.note("catalogue relations the sweep could not read: %s", strings.Join(failed, ", "))
	}
	return f.result()
}

func casePgStatStatements(ctx context.Context, e *env) error {
	a, err := e.admin(ctx)
	if err != nil {
		return err
	}
	loaded, err := scalar[bool](ctx, a, "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')")
	if err != nil {
		return err
	}
	if !loaded {
		return fmt.Errorf("positive control: pg_stat_statements is not installed in the fixture database")
	}
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	// Statistics are per query shape, whose text is kept from its first
	// run: start the victim's entries afresh so the tag below is the one
	// stored.
	if _, err := a.Exec(ctx, "SELECT public.pg_stat_statements_reset($1::regrole::oid, 0, 0)", e.sessionRole(e.vic, "rw")); err != nil {
		return err
	}
	tag := "iso_pgss_" + randomHex(4)
	if _, err := vc.Exec(ctx, "SELECT t.* FROM public.agents t /* "+tag+" */ WHERE t.name LIKE $1", e.vic.prefix+"%"); err != nil {
		return err
	}
	// Positive control: the superuser sees the victim's statement.
	n, err := scalar[int](ctx, a, "SELECT count(*)::int FROM public.pg_stat_statements WHERE query LIKE '%'||$1||'%'", tag)
	if err != nil {
		return err
	}
	if n == 0 {
		dump, _ := queryText(ctx, a, "SELECT userid::regrole, dbid, calls, left(query, 120) FROM public.pg_stat_statements WHERE query LIKE '%iso_pgss%' OR userid = $1::regrole LIMIT 10", e.sessionRole(e.vic, "rw"))
		return fmt.Errorf("positive control: the victim's statement is not in pg_stat_statements: %s", oneLine(dump))
	}
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	text, err := queryText(ctx, ac, `SELECT s.userid::regrole::text, s.calls, s.rows, s.query FROM public.pg_stat_statements s
		WHERE s.userid = $1::regrole`, e.sessionRole(e.vic, "rw"))
	switch {
	case sqlState(err) == "42501":
		return nil
	case err != nil:
		return err
	}
	var f findings
	if err := f.addErr(e.leakIn("pg_stat_statements", text)); err != nil {
		return err
	}
	if strings.Contains(text, tag) {
		f.add("pg_stat_statements shows the victim's query text")
	}
	if lines := strings.Count(text, "\n"); lines > 0 {
		f.add("pg_stat_statements shows %d statements of the victim's role with their calls and rows (e.g. %s)", lines, oneLine(strings.SplitN(text, "\n", 2)[0]))
	}
	return f.result()
}

func randomUUID() string {
	h := randomHex(16)
	return h[0:8] + "-" + h[8:12] + "-4" + h[13:16] + "-a" + h[17:20] + "-" + h[20:32]
}
