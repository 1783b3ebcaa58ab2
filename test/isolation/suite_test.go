package isolation_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Levels of an attack case.
const (
	// levelSQL: anything a tenant session may send as SQL or through the
	// extended protocol; runs through every Dialer.
	levelSQL = "sql"
	// levelProxy: raw protocol at the proxy (startup packets, FunctionCall,
	// CancelRequest, ...); runs only against the proxy.
	levelProxy = "proxy"
)

// attackCase is one named attack.
type attackCase struct {
	name     string
	category string // context, read, write, ddl, disturb, proxy
	level    string // levelSQL or levelProxy
	// run performs the attack as e's attacker against e's victim. It
	// returns nil when the path is closed, an error made by open() when it
	// is open, and any other error when the case itself could not run (a
	// failed positive control counts as that: the case proves nothing).
	run func(ctx context.Context, e *env) error
	// expectOpen is empty for a path that must be closed; for a path known
	// to be open it says why and what closes it. The suite fails when an
	// expected-open case is found closed, so the table stays true.
	expectOpen string
	// openDirectOnly marks an expectOpen path that only the proxy closes:
	// it must be open directly and closed through the proxy.
	openDirectOnly bool
}

// sessionOnlyCases are the cases whose attack needs a session-mode feature
// across statements (temporary objects, SQL PREPARE, WITH HOLD cursors,
// LISTEN, a session-level SET of an unreported setting), and which. Transaction
// pooling does not keep those between transactions, so there the attack
// cannot be set up: the case is logged as not applicable, not run.
var sessionOnlyCases = map[string]string{
	"prepared-statements-sql":    "SQL-level PREPARE outlives the transaction",
	"cursors-across-switch":      "WITH HOLD cursor",
	"pg-temp-security-definer":   "temporary function across statements",
	"search-path-shadowing":      "temporary tables across statements",
	"do-block-dynamic-sql":       "temporary table across statements",
	"leaky-function-in-where":    "temporary function across statements",
	"row-security-off":           "session-level SET of row_security (SET LOCAL is covered by set-local-in-transaction)",
	"listen-on-victim-channel":   "LISTEN",
	"notify-into-victim-channel": "LISTEN (positive control)",
	"notify-around-the-proxy":    "LISTEN",
}

// openError says an isolation path is open: the attacker read, changed,
// inferred or disturbed something of the victim's.
type openError struct{ msg string }

func (e *openError) Error() string { return e.msg }

// open reports an open path.
func open(format string, args ...any) error { return &openError{msg: fmt.Sprintf(format, args...)} }

func isOpen(err error) bool {
	var oe *openError
	return errors.As(err, &oe)
}

// findings gathers open paths within one case; probes that could not run
// are returned at once by the case instead.
type findings []string

func (f *findings) add(format string, args ...any) { *f = append(*f, fmt.Sprintf(format, args...)) }

// addErr records err if it reports an open path and returns any other
// error.
func (f *findings) addErr(err error) error {
	if err == nil {
		return nil
	}
	if isOpen(err) {
		f.add("%s", err.Error())
		return nil
	}
	return err
}

func (f findings) result() error {
	if len(f) == 0 {
		return nil
	}
	return open("%s", strings.Join(f, "; "))
}

// env is what a case works with: who attacks whom, through which Dialer.
// A new env is made for each case; sessions it opens are closed when the
// case ends.
type env struct {
	fx     *fixture
	dialer Dialer
	via    string // "direct" or "proxy/<mode>"
	proxy  *proxyDialer
	atk    *tenant // the attacker
	vic    *tenant // the victim
	t      testing.TB

	mu      sync.Mutex
	closers []func()
	notes   []string
}

// connect opens a session of tenant t with capability user through the
// case's Dialer and closes it when the case ends.
func (e *env) connect(ctx context.Context, t *tenant, user string) (*pgx.Conn, error) {
	conn, err := e.dialer.Connect(ctx, t.slug, user)
	if err != nil {
		return nil, fmt.Errorf("connect as tenant %s (%s) via %s: %w", t.label, user, e.via, err)
	}
	e.onClose(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
		notices.Delete(conn.PgConn())
	})
	return conn, nil
}

// attacker opens a read-write session of the attacker's tenant.
func (e *env) attacker(ctx context.Context) (*pgx.Conn, error) { return e.connect(ctx, e.atk, userRW) }

// victim opens a read-write session of the victim's tenant.
func (e *env) victim(ctx context.Context) (*pgx.Conn, error) { return e.connect(ctx, e.vic, userRW) }

// victimAndAttacker opens a read-write session of each tenant, the victim's
// first.
func (e *env) victimAndAttacker(ctx context.Context) (victim, attacker *pgx.Conn, err error) {
	if victim, err = e.victim(ctx); err != nil {
		return nil, nil, err
	}
	if attacker, err = e.attacker(ctx); err != nil {
		return nil, nil, err
	}
	return victim, attacker, nil
}

// admin opens a superuser session. Cases use it only for controls (showing
// that a probe would see what it looks for) and cleanup, never to attack.
func (e *env) admin(ctx context.Context) (*pgx.Conn, error) {
	conn, err := connectURL(ctx, e.fx.adminURL())
	if err != nil {
		return nil, fmt.Errorf("admin connect: %w", err)
	}
	e.onClose(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn, nil
}

func (e *env) onClose(fn func()) {
	e.mu.Lock()
	e.closers = append(e.closers, fn)
	e.mu.Unlock()
}

// note records an observation that is not an open path but belongs in the
// report.
func (e *env) note(format string, args ...any) {
	e.mu.Lock()
	e.notes = append(e.notes, fmt.Sprintf(format, args...))
	e.mu.Unlock()
}

func (e *env) close() {
	e.mu.Lock()
	cl := e.closers
	e.closers = nil
	e.mu.Unlock()
	for i := len(cl) - 1; i >= 0; i-- {
		cl[i]()
	}
}

// sqlState returns the SQLSTATE of err, or "".
func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// deniedStates are the SQLSTATEs that mean "refused" for denied unless
// a call lists its own.
var deniedStates = []string{"42501"}

// denied runs sql on conn and reports whether PostgreSQL refused it with
// one of codes (42501 when none are given). A refusal is nil; success is an
// open path; any other error means the probe is broken (a typo must never
// count as a refusal). Inside a transaction the statement runs under a
// savepoint so the transaction survives.
func denied(ctx context.Context, conn *pgx.Conn, sql string, codes ...string) error {
	if len(codes) == 0 {
		codes = deniedStates
	}
	inTx := conn.PgConn().TxStatus() != 'I'
	if inTx {
		if _, err := conn.Exec(ctx, "SAVEPOINT iso_denied"); err != nil {
			return fmt.Errorf("savepoint: %w", err)
		}
	}
	_, err := conn.Exec(ctx, sql)
	if inTx {
		if _, rerr := conn.Exec(ctx, "ROLLBACK TO SAVEPOINT iso_denied"); rerr != nil {
			return fmt.Errorf("rollback to savepoint: %w", rerr)
		}
	}
	if err == nil {
		return open("%q was allowed", oneLine(sql))
	}
	if slices.Contains(codes, sqlState(err)) {
		return nil
	}
	return fmt.Errorf("%q: want SQLSTATE %v, got: %w", oneLine(sql), codes, err)
}

// deniedAll runs denied for every statement and gathers the open ones.
func deniedAll(ctx context.Context, conn *pgx.Conn, stmts []string, codes ...string) error {
	var f findings
	for _, s := range stmts {
		if err := f.addErr(denied(ctx, conn, s, codes...)); err != nil {
			return err
		}
	}
	return f.result()
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}

// containsAny returns the markers that occur in text.
func containsAny(text string, markers []string) []string {
	var out []string
	for _, m := range markers {
		if m != "" && strings.Contains(text, m) {
			out = append(out, m)
		}
	}
	return out
}

// sweep reads, in conn's session, every row of every relation outside the
// system schemas the session may SELECT (tables, views, materialized views:
// found at run time, so new ones are covered; extensions' own views have
// cases of their own), plus what
// get_accessible_agents returns for the attacker's and the victim's tenant,
// and returns all of it as text, one line per row, prefixed by the source.
func (e *env) sweep(ctx context.Context, conn *pgx.Conn) (string, error) {
	rows, err := conn.Query(ctx, `SELECT format('%I.%I', n.nspname, c.relname)
		  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		 WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')
		   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
		   AND n.nspname NOT LIKE 'pg\_%'
		   AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
		   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
		                    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
		 ORDER BY 1`)
	if err != nil {
		return "", fmt.Errorf("list relations: %w", err)
	}
	rels, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", fmt.Errorf("list relations: %w", err)
	}
	for _, want := range []string{"public.agents", "public.tools", "public.prompts", "public.workflows",
		"public.resource_sharing_audit", "public.tenants", "public.user_tenants", "public.user_roles",
		"public.mv_platform_shared_resources"} {
		if !slices.Contains(rels, want) {
			return "", fmt.Errorf("positive control: %s is not readable by the session (readable: %v)", want, rels)
		}
	}
	var parts []string
	for _, r := range rels {
		parts = append(parts, fmt.Sprintf("SELECT %s AS src, t::text AS row FROM %s t", quoteLit(r), r))
	}
	parts = append(parts,
		fmt.Sprintf("SELECT 'get_accessible_agents(victim)', t::text FROM public.get_accessible_agents(%s::uuid) t", quoteLit(e.vic.id)),
		fmt.Sprintf("SELECT 'get_accessible_agents(attacker)', t::text FROM public.get_accessible_agents(%s::uuid) t", quoteLit(e.atk.id)))
	rows, err = conn.Query(ctx, strings.Join(parts, " UNION ALL "))
	if err != nil {
		return "", fmt.Errorf("sweep: %w", err)
	}
	var b strings.Builder
	for rows.Next() {
		var src, row string
		if err := rows.Scan(&src, &row); err != nil {
			rows.Close()
			return "", err
		}
		b.WriteString(src)
		b.WriteString(": ")
		b.WriteString(row)
		b.WriteByte('\n')
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("sweep: %w", err)
	}
	return b.String(), nil
}

func quoteLit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// onlyOwn checks, in the attacker's session conn, that every marker of the
// attacker is visible (positive control; failing it is a broken case, not a
// pass) and that none of the victim's is (else the path is open).
func (e *env) onlyOwn(ctx context.Context, conn *pgx.Conn) error {
	text, err := e.sweep(ctx, conn)
	if err != nil {
		return err
	}
	return e.judge(text)
}

// judge checks text read by the attacker: all its own markers, none of the
// victim's.
func (e *env) judge(text string) error {
	own := e.atk.markers()
	if got := containsAny(text, own); len(got) != len(own) {
		missing := slices.DeleteFunc(slices.Clone(own), func(m string) bool { return slices.Contains(got, m) })
		return fmt.Errorf("positive control: the attacker's session does not see its own markers %v", missing)
	}
	if leaked := containsAny(text, e.vic.markers()); len(leaked) > 0 {
		return open("the attacker read the victim's markers %v: %s", leaked, linesWith(text, leaked))
	}
	return nil
}

// linesWith returns the lines of text holding any of markers, shortened.
func linesWith(text string, markers []string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if len(containsAny(l, markers)) > 0 {
			out = append(out, oneLine(l))
		}
		if len(out) == 3 {
			break
		}
	}
	return strings.Join(out, " | ")
}

// leakIn reports an open path if text (an error message, notices, output)
// holds any of the victim's markers.
func (e *env) leakIn(what, text string) error {
	if leaked := containsAny(text, e.vic.markers()); len(leaked) > 0 {
		return open("%s holds the victim's markers %v: %s", what, leaked, oneLine(text))
	}
	return nil
}

// victimState is what the victim's own session reads about its data.
type victimState struct {
	checksum string
	rows     int
}

// victimProbe reads, in the victim's own session, a checksum over all of
// the victim's rows in every tenant table, and checks that the victim sees
// every one of its markers (the positive control that keeps "the attacker
// sees nothing" from being vacuous).
func (e *env) victimProbe(ctx context.Context, conn *pgx.Conn) (victimState, error) {
	var st victimState
	err := conn.QueryRow(ctx, `SELECT md5(coalesce(string_agg(r, E'\n' ORDER BY r), '')), count(*)::int FROM (
		SELECT 'agents ' || t::text AS r FROM public.agents t WHERE tenant_id = $1
		UNION ALL SELECT 'tools ' || t::text FROM public.tools t WHERE tenant_id = $1
		UNION ALL SELECT 'prompts ' || t::text FROM public.prompts t WHERE tenant_id = $1
		UNION ALL SELECT 'workflows ' || t::text FROM public.workflows t WHERE tenant_id = $1
		UNION ALL SELECT 'user_tenants ' || t::text FROM public.user_tenants t WHERE tenant_id = $1
		UNION ALL SELECT 'user_roles ' || t::text FROM public.user_roles t WHERE tenant_id = $1
		UNION ALL SELECT 'audit ' || t::text FROM public.resource_sharing_audit t WHERE tenant_id = $1
		UNION ALL SELECT 'tenants ' || t::text FROM public.tenants t WHERE id = $1) s`, e.vic.id).Scan(&st.checksum, &st.rows)
	if err != nil {
		return st, fmt.Errorf("victim probe: %w", err)
	}
	saved := e.atk
	e.atk = e.vic
	text, err := e.sweep(ctx, conn)
	e.atk = saved
	if err != nil {
		return st, fmt.Errorf("victim probe: %w", err)
	}
	if got := containsAny(text, e.vic.markers()); len(got) != len(e.vic.markers()) {
		return st, fmt.Errorf("positive control: the victim's own session sees only %d of its %d markers", len(got), len(e.vic.markers()))
	}
	var access bool
	if err := conn.QueryRow(ctx, "SELECT public.has_tenant_access($1, $2)", e.vic.userID, e.vic.id).Scan(&access); err != nil {
		return st, fmt.Errorf("victim probe: %w", err)
	}
	if !access {
		return st, errors.New("positive control: has_tenant_access is false for the victim's own user in its own session")
	}
	return st, nil
}

// outcome of one case in one run.
type outcome struct {
	via, direction, category, name, level string
	result                                string // closed, open, expected-open, error
	detail                                string
	notes                                 []string
}

// Results.
const (
	resultClosed       = "closed"
	resultOpen         = "OPEN"
	resultExpectedOpen = "expected-open"
	resultNowClosed    = "CLOSED-BUT-EXPECTED-OPEN"
	resultError        = "ERROR"
)

// direction is who attacks whom.
type direction struct {
	name     string
	atk, vic *tenant
}

func directions(fx *fixture) []direction {
	return []direction{
		{name: "A-attacks-B", atk: fx.a, vic: fx.b},
		{name: "B-attacks-A", atk: fx.b, vic: fx.a},
	}
}

// caseTimeout bounds one case (its invariant checks included).
const caseTimeout = 45 * time.Second

// runSuite runs cases through d in both directions and reports.
func runSuite(t *testing.T, fx *fixture, d Dialer, pd *proxyDialer, via string, cases []attackCase) {
	var all []outcome
	for _, dir := range directions(fx) {
		t.Run(dir.name, func(t *testing.T) {
			base := newEnv(t, fx, d, pd, via, dir)
			ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
			baseline, err := base.baseline(ctx)
			cancel()
			base.close()
			if err != nil {
				t.Fatalf("baseline: %v", err)
			}
			for _, c := range cases {
				if why, ok := sessionOnlyCases[c.name]; ok && (strings.HasSuffix(via, "/transaction") || strings.HasSuffix(via, "/context")) {
					t.Logf("%s/%s: not applicable in transaction mode (session-mode feature: %s)", c.category, c.name, why)
					continue
				}
				all = append(all, runCase(t, fx, d, pd, via, dir, c, baseline))
			}
		})
	}
	report(t, via, all)
}

func newEnv(t testing.TB, fx *fixture, d Dialer, pd *proxyDialer, via string, dir direction) *env {
	return &env{fx: fx, dialer: d, via: via, proxy: pd, atk: dir.atk, vic: dir.vic, t: t}
}

// baseline checks the positive controls before any attack and returns the
// victim's state to compare against.
func (e *env) baseline(ctx context.Context) (victimState, error) {
	vc, err := e.victim(ctx)
	if err != nil {
		return victimState{}, err
	}
	st, err := e.victimProbe(ctx, vc)
	if err != nil {
		return st, err
	}
	ac, err := e.attacker(ctx)
	if err != nil {
		return st, err
	}
	if err := e.onlyOwn(ctx, ac); err != nil {
		return st, fmt.Errorf("before any attack: %w", err)
	}
	return st, nil
}

// invariants run after every case in fresh sessions: the victim still
// sees all its markers and its rows are unchanged; a new attacker session
// sees its own markers and none of the victim's.
func (e *env) invariants(ctx context.Context, want victimState) error {
	vc, err := e.victim(ctx)
	if err != nil {
		return err
	}
	st, err := e.victimProbe(ctx, vc)
	if err != nil {
		return err
	}
	if st != want {
		return open("the victim's rows changed: %d rows checksum %s, want %d rows checksum %s",
			st.rows, st.checksum, want.rows, want.checksum)
	}
	ac, err := e.attacker(ctx)
	if err != nil {
		return err
	}
	return e.onlyOwn(ctx, ac)
}

func runCase(t *testing.T, fx *fixture, d Dialer, pd *proxyDialer, via string, dir direction, c attackCase, baseline victimState) outcome {
	o := outcome{via: via, direction: dir.name, category: c.category, name: c.name, level: c.level}
	t.Run(c.category+"/"+c.name, func(t *testing.T) {
		e := newEnv(t, fx, d, pd, via, dir)
		ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
		defer cancel()
		if c.openDirectOnly && via != "direct" {
			c.expectOpen = ""
		}
		err := c.run(ctx, e)
		e.close()
		if err != nil && !isOpen(err) {
			o.result, o.detail = resultError, err.Error()
			t.Errorf("case could not run: %v", err)
			return
		}
		// Invariants are checked even when the case found the path open:
		// a case must never leave the victim's data changed.
		inv := e.invariants(ctx, baseline)
		e.close()
		o.notes = e.notes
		for _, n := range e.notes {
			t.Logf("note: %s", n)
		}
		if inv != nil && !isOpen(inv) {
			o.result, o.detail = resultError, "invariants: "+inv.Error()
			t.Errorf("invariant check could not run: %v", inv)
			return
		}
		if inv != nil {
			if err != nil {
				err = open("%v; after the case: %v", err, inv)
			} else {
				err = open("after the case: %v", inv)
			}
		}
		switch {
		case err != nil && c.expectOpen != "":
			o.result, o.detail = resultExpectedOpen, err.Error()
			t.Logf("expected open (%s): %v", c.expectOpen, err)
		case err != nil:
			o.result, o.detail = resultOpen, err.Error()
			t.Errorf("ISOLATION OPEN: %v", err)
		case c.expectOpen != "":
			o.result, o.detail = resultNowClosed, c.expectOpen
			t.Errorf("expected this path to be open (%s) but it is closed: update the case table", c.expectOpen)
		default:
			o.result = resultClosed
		}
	})
	return o
}

// report logs the outcome table and appends it to
// $VITALPROXY_ISOLATION_REPORT when set.
func report(t *testing.T, via string, all []outcome) {
	sort.SliceStable(all, func(i, j int) bool {
		if all[i].category != all[j].category {
			return all[i].category < all[j].category
		}
		return all[i].name < all[j].name
	})
	var b strings.Builder
	fmt.Fprintf(&b, "isolation suite via %s: %d case runs\n", via, len(all))
	counts := map[string]int{}
	for _, o := range all {
		counts[o.result]++
		fmt.Fprintf(&b, "  %-28s %-12s %-7s %-5s %s/%s", o.result, o.direction, o.via, o.level, o.category, o.name)
		if o.result != resultClosed && o.detail != "" {
			fmt.Fprintf(&b, "\n      %s", oneLineN(o.detail, 400))
		}
		b.WriteByte('\n')
		for _, n := range o.notes {
			fmt.Fprintf(&b, "      note: %s\n", oneLineN(n, 400))
		}
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "  total %s: %d\n", k, counts[k])
	}
	t.Log("\n" + b.String())
	if p := os.Getenv("VITALPROXY_ISOLATION_REPORT"); p != "" {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			t.Errorf("report: %v", err)
			return
		}
		defer f.Close()
		if _, err := f.WriteString(b.String()); err != nil {
			t.Errorf("report: %v", err)
		}
	}
}

func oneLineN(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n-3] + "..."
	}
	return s
}

// sqlCases is the table of SQL-level cases.
func sqlCases() []attackCase {
	var cs []attackCase
	cs = append(cs, contextCases()...)
	cs = append(cs, readCases()...)
	cs = append(cs, writeCases()...)
	cs = append(cs, ddlCases()...)
	cs = append(cs, disturbCases()...)
	return cs
}

// TestIsolationDirect runs the SQL-level cases with direct logins as the
// tenants' own roles (what the proxy does upstream).
func TestIsolationDirect(t *testing.T) {
	fx := getFixture(t)
	runSuite(t, fx, directDialer{fx: fx}, nil, "direct", sqlCases())
}

// proxyModes are the modes the suite runs the proxy in: the two pool modes,
// and transaction mode with isolation.mode context, where the attacker's and
// the victim's transactions take turns on the same few shared backends.
var proxyModes = []string{"session", "transaction", "context"}

// TestIsolationProxy runs every case, SQL-level and proxy-level, through an
// in-process proxy.
func TestIsolationProxy(t *testing.T) {
	fx := getFixture(t)
	for _, mode := range proxyModes {
		t.Run(mode, func(t *testing.T) {
			pd := startProxy(t, fx, mode)
			runSuite(t, fx, pd, pd, "proxy/"+mode, append(sqlCases(), proxyCases()...))
		})
	}
}
