package migrations_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/auth"
)

// features is the migration that gives back advisory locks and the
// own-session views, scoped per tenant.
const features int64 = 20251026000007

// featureConns are connections of two tenants: a1 and a2 are read-write
// roles of digital-health-startup, aro and aro2 its read-only roles, b and
// b2 read-write roles of vital-platform.
type featureConns struct {
	db                       testDB
	a1, a2, aro, aro2, b, b2 *pgx.Conn
	a1Role, aroRole, bR      string
}

func newFeatureConns(t *testing.T) featureConns {
	t.Helper()
	db := migrated(t)
	f := featureConns{db: db}
	f.a1 = db.tenantLogin(t, "digital-health-startup", "rw")
	f.a2 = db.tenantLogin(t, "digital-health-startup", "rw")
	f.aro = db.tenantLogin(t, "digital-health-startup", "ro")
	f.aro2 = db.tenantLogin(t, "digital-health-startup", "ro")
	f.b = db.tenantLogin(t, "vital-platform", "rw")
	f.b2 = db.tenantLogin(t, "vital-platform", "rw")
	f.a1Role = scalar[string](t, f.a1, `SELECT current_user::text`)
	f.aroRole = scalar[string](t, f.aro, `SELECT current_user::text`)
	f.bR = scalar[string](t, f.b, `SELECT current_user::text`)
	return f
}

// pooledLogin creates the read-write pooled role of context mode (once per
// database) and returns a connection of it that entered tenant slug's
// signed context, as the proxy does on a shared backend.
func (db testDB) pooledLogin(t *testing.T, slug string) *pgx.Conn {
	t.Helper()
	role := "t_pooled_rw_" + db.name
	if len(role) > 63 {
		role = role[:63]
	}
	ident := pgx.Identifier{role}.Sanitize()
	key := auth.ContextKey([]byte("features-test-secret"))
	if !scalar[bool](t, db.admin(t), `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, role) {
		db.exec(t, `CREATE ROLE `+ident+` LOGIN PASSWORD 'pooled-pw'`)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := db.c.Exec(ctx, "postgres", `DROP ROLE IF EXISTS `+ident); err != nil {
				t.Logf("drop role %s: %v", role, err)
			}
		})
		db.exec(t, `GRANT vital_tenant_writer TO `+ident)
		db.exec(t, `INSERT INTO vital.pooled_roles (role_name, capability) VALUES ($1, 'rw')`, role)
		ikey, okey := auth.ContextKeyPads(key)
		db.exec(t, `INSERT INTO vital.context_key (ikey, okey) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`, ikey, okey)
	}
	conn := db.connect(t, db.c.URLFor(role, "pooled-pw", db.name)+"&default_query_exec_mode=simple_protocol")
	enterContext(t, conn, key, db.tenantID(t, slug), role)
	return conn
}

func enterContext(t *testing.T, conn *pgx.Conn, key []byte, tenant, role string) {
	t.Helper()
	pid := conn.PgConn().PID()
	if got := scalar[string](t, conn, `SELECT public.enter_tenant_context($1)::text`, auth.TenantContext(key, tenant, pid, role)); got != tenant {
		t.Fatalf("enter_tenant_context = %s, want %s", got, tenant)
	}
}

// queryBool runs a one-boolean query and fails the test on an error.
func queryBool(t *testing.T, conn *pgx.Conn, sql string) bool {
	t.Helper()
	return scalar[bool](t, conn, sql)
}

// lockForm is one form of advisory-lock key with the shims that take it.
type lockForm struct {
	name string
	key  string // the SQL argument list of the key
}

var lockForms = []lockForm{{"bigint", "4611686018427387903"}, {"bigint small", "42"}, {"bigint negative", "-7"}, {"two integers", "4, 2"}}

// TestTenantAdvisoryLocks holds a key in every way on a1 and probes it from
// a2 (the same tenant: must conflict) and b (another tenant: must neither
// conflict nor see it), for each key form.
func TestTenantAdvisoryLocks(t *testing.T) {
	f := newFeatureConns(t)
	ctx := ctxT(t)
	holds := []struct {
		name    string
		xact    bool   // held by a transaction; released by COMMIT
		hold    string // %s: the key
		release string // session level: returns true
		shared  bool
	}{
		{"lock", false, `SELECT public.pg_advisory_lock(%s)::text`, `SELECT public.pg_advisory_unlock(%s)`, false},
		{"try lock", false, `SELECT public.pg_try_advisory_lock(%s)::text`, `SELECT public.pg_advisory_unlock(%s)`, false},
		{"lock shared", false, `SELECT public.pg_advisory_lock_shared(%s)::text`, `SELECT public.pg_advisory_unlock_shared(%s)`, true},
		{"try lock shared", false, `SELECT public.pg_try_advisory_lock_shared(%s)::text`, `SELECT public.pg_advisory_unlock_shared(%s)`, true},
		{"xact lock", true, `SELECT public.pg_advisory_xact_lock(%s)::text`, "", false},
		{"try xact lock", true, `SELECT public.pg_try_advisory_xact_lock(%s)::text`, "", false},
		{"xact lock shared", true, `SELECT public.pg_advisory_xact_lock_shared(%s)::text`, "", true},
		{"try xact lock shared", true, `SELECT public.pg_try_advisory_xact_lock_shared(%s)::text`, "", true},
	}
	const (
		probe       = `SELECT public.pg_try_advisory_xact_lock(%s)`
		probeShared = `SELECT public.pg_try_advisory_xact_lock_shared(%s)`
	)
	for _, form := range lockForms {
		for _, h := range holds {
			t.Run(form.name+"/"+h.name, func(t *testing.T) {
				k := form.key
				if h.xact {
					if _, err := f.a1.Exec(ctx, `BEGIN`); err != nil {
						t.Fatal(err)
					}
				}
				if got := scalar[string](t, f.a1, fmt.Sprintf(h.hold, k)); got != "" && got != "true" {
					t.Fatalf("a1: %s = %s", fmt.Sprintf(h.hold, k), got)
				}
				// The same tenant conflicts (another role of it too).
				if queryBool(t, f.a2, fmt.Sprintf(probe, k)) {
					t.Errorf("a2 took key %s exclusively while a1 holds it (%s)", k, h.name)
				}
				if queryBool(t, f.aro, fmt.Sprintf(probe, k)) {
					t.Errorf("the tenant's read-only role took key %s exclusively while a1 holds it", k)
				}
				if got := queryBool(t, f.a2, fmt.Sprintf(probeShared, k)); got != h.shared {
					t.Errorf("a2 shared probe of key %s = %v, want %v", k, got, h.shared)
				}
				// Another tenant neither conflicts nor waits.
				if !queryBool(t, f.b, fmt.Sprintf(probe, k)) {
					t.Errorf("b could not take key %s while a1 (another tenant) holds it", k)
				}
				if _, err := f.b.Exec(ctx, `SET lock_timeout = '200ms'`); err != nil {
					t.Fatal(err)
				}
				if _, err := f.b.Exec(ctx, fmt.Sprintf(`SELECT public.pg_advisory_lock(%s)`, k)); err != nil {
					t.Errorf("b waiting for key %s: %v", k, err)
				}
				if queryBool(t, f.b, fmt.Sprintf(`SELECT public.pg_advisory_unlock(%s)`, k)) != true {
					t.Errorf("b could not release its own key %s", k)
				}
				// b cannot release a1's lock, nor by unlock_all.
				if queryBool(t, f.b, fmt.Sprintf(`SELECT public.pg_advisory_unlock(%s)`, k)) ||
					queryBool(t, f.b, fmt.Sprintf(`SELECT public.pg_advisory_unlock_shared(%s)`, k)) {
					t.Errorf("b released key %s, held by a1", k)
				}
				if _, err := f.b.Exec(ctx, `SELECT public.pg_advisory_unlock_all()`); err != nil {
					t.Fatal(err)
				}
				if queryBool(t, f.a2, fmt.Sprintf(probe, k)) {
					t.Errorf("a1's key %s was released by b", k)
				}
				// a2 waiting for it times out.
				if _, err := f.a2.Exec(ctx, `SET lock_timeout = '100ms'`); err != nil {
					t.Fatal(err)
				}
				_, err := f.a2.Exec(ctx, fmt.Sprintf(`SELECT public.pg_advisory_lock(%s)`, k))
				if got := sqlState(err); got != "55P03" {
					t.Errorf("a2 waiting for key %s held by a1: %v, want lock timeout (55P03)", k, err)
				}
				if h.xact {
					if _, err := f.a1.Exec(ctx, `COMMIT`); err != nil {
						t.Fatal(err)
					}
				} else if !queryBool(t, f.a1, fmt.Sprintf(h.release, k)) {
					t.Errorf("a1: %s = false", fmt.Sprintf(h.release, k))
				}
				if !queryBool(t, f.a2, fmt.Sprintf(probe, k)) {
					t.Errorf("a2 could not take key %s after a1 released it", k)
				}
			})
		}
	}
}

// advisoryLocks lists the advisory locks backend pid holds, as the
// superuser sees them in pg_locks.
func advisoryLocks(t *testing.T, db testDB, pid uint32) []string {
	t.Helper()
	return scalar[[]string](t, db.admin(t), `SELECT coalesce(array_agg(classid || ':' || objid || ':' || objsubid ORDER BY classid, objid, objsubid), '{}')
		FROM pg_locks WHERE locktype = 'advisory' AND pid = $1`, int64(pid))
}

func TestTenantAdvisoryLockKeys(t *testing.T) {
	f := newFeatureConns(t)
	ctx := ctxT(t)
	db := f.db

	t.Run("keys of one tenant never share a lock", func(t *testing.T) {
		if _, err := f.a1.Exec(ctx, `SELECT public.pg_advisory_lock(k) FROM generate_series(-1000, 1000) k;
			SELECT public.pg_advisory_lock(k) FROM unnest(ARRAY[-9223372036854775808, 9223372036854775807, 4294967296, 4294967295]::bigint[]) k;
			SELECT public.pg_advisory_lock(i, j) FROM generate_series(-20, 20) i, generate_series(-20, 20) j`); err != nil {
			t.Fatal(err)
		}
		locks := advisoryLocks(t, db, f.a1.PgConn().PID())
		if want := 2001 + 4 + 41*41; len(locks) != want {
			t.Errorf("a1 holds %d distinct advisory locks, want %d (one per key)", len(locks), want)
		}
		// The keys are not used as they are.
		for _, raw := range []string{"0:42:1", "4:2:2", "0:0:1"} {
			if slices.Contains(locks, raw) {
				t.Errorf("a1's lock %s is the unscoped key", raw)
			}
		}
		// The bigint and the two-integer forms stay apart, as in PostgreSQL:
		// (4 << 32) | 2 is not (4, 2).
		if _, err := f.a1.Exec(ctx, `SELECT public.pg_advisory_unlock_all(); SELECT public.pg_advisory_lock(17179869186)`); err != nil {
			t.Fatal(err)
		}
		if !queryBool(t, f.a2, `SELECT public.pg_try_advisory_xact_lock(4, 2)`) {
			t.Error("bigint key (4 << 32) | 2 and key (4, 2) share a lock")
		}
		if queryBool(t, f.a2, `SELECT public.pg_try_advisory_xact_lock(17179869186)`) {
			t.Error("a2 took a1's bigint key")
		}
		if _, err := f.a1.Exec(ctx, `SELECT public.pg_advisory_unlock_all()`); err != nil {
			t.Fatal(err)
		}
		if n := len(advisoryLocks(t, db, f.a1.PgConn().PID())); n != 0 {
			t.Errorf("a1 holds %d advisory locks after pg_advisory_unlock_all", n)
		}
	})

	t.Run("another tenant's same keys take other locks", func(t *testing.T) {
		for _, c := range []*pgx.Conn{f.a1, f.b} {
			if _, err := c.Exec(ctx, `SELECT public.pg_advisory_lock(k) FROM generate_series(1, 100) k`); err != nil {
				t.Fatal(err)
			}
		}
		a, b := advisoryLocks(t, db, f.a1.PgConn().PID()), advisoryLocks(t, db, f.b.PgConn().PID())
		for _, l := range a {
			if slices.Contains(b, l) {
				t.Errorf("tenants a and b share lock %s", l)
			}
		}
		for _, c := range []*pgx.Conn{f.a1, f.b} {
			if _, err := c.Exec(ctx, `SELECT public.pg_advisory_unlock_all()`); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("name resolution", func(t *testing.T) {
		// The migration's database default ("$user", public, pg_catalog):
		// unqualified calls reach the shims, also after RESET ALL.
		if got := scalar[string](t, f.a1, `SHOW search_path`); got != `"$user", public, pg_catalog` {
			t.Errorf("search_path of a new session %q, want the migration's database default", got)
		}
		if !queryBool(t, f.a1, `SELECT pg_try_advisory_lock(42)`) {
			t.Fatal("unqualified pg_try_advisory_lock(42) with the database default search_path failed")
		}
		if queryBool(t, f.a2, `SELECT public.pg_try_advisory_xact_lock(42)`) {
			t.Error("an unqualified and a qualified call took different locks")
		}
		if !queryBool(t, f.a1, `SELECT pg_advisory_unlock(42)`) {
			t.Error("unqualified pg_advisory_unlock(42) = false")
		}
		late := db.tenantLogin(t, "digital-health-startup", "rw")
		if _, err := late.Exec(ctx, `RESET ALL`); err != nil {
			t.Fatal(err)
		}
		if !queryBool(t, late, `SELECT pg_try_advisory_xact_lock(7)`) {
			t.Error("after RESET ALL, unqualified pg_try_advisory_xact_lock failed")
		}
		// A session search_path without pg_catalog after public: pg_catalog's
		// functions come first and are refused, never an unscoped lock.
		if _, err := f.a1.Exec(ctx, `SET search_path = "$user", public`); err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{`SELECT pg_advisory_lock(42)`, `SELECT pg_try_advisory_lock(4, 2)`, `SELECT pg_advisory_unlock_all()`,
			`SELECT pg_advisory_xact_lock(42::bigint)`} {
			if got := tryAs(t, f.a1, q); got != "42501" {
				t.Errorf("%s with search_path \"$user\", public: SQLSTATE %q, want 42501", q, got)
			}
		}
		if _, err := f.a1.Exec(ctx, `RESET search_path`); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("callers without a tenant", func(t *testing.T) {
		role, pw := "t_notenant_"+randomHex(3), randomHex(12)
		db.exec(t, `CREATE ROLE `+role+` LOGIN PASSWORD '`+pw+`' IN ROLE vital_tenant`)
		t.Cleanup(func() {
			if err := db.c.Exec(context.Background(), "postgres", `DROP ROLE IF EXISTS `+role); err != nil {
				t.Logf("drop role %s: %v", role, err)
			}
		})
		none := db.connect(t, db.c.URLFor(role, pw, db.name))
		for _, q := range []string{`SELECT public.pg_advisory_lock(1)`, `SELECT public.pg_try_advisory_xact_lock(1, 2)`,
			`SELECT public.pg_advisory_unlock_shared(1)`} {
			if got := tryAs(t, none, q); got != "42501" {
				t.Errorf("%s without a tenant: SQLSTATE %q, want 42501", q, got)
			}
		}
		// A caller that may use pg_catalog's functions gets them unchanged.
		admin := db.admin(t)
		if _, err := admin.Exec(ctx, `SELECT public.pg_advisory_lock(42), public.pg_advisory_lock(4, 2)`); err != nil {
			t.Fatal(err)
		}
		got := advisoryLocks(t, db, admin.PgConn().PID())
		if !slices.Equal(got, []string{"0:42:1", "4:2:2"}) {
			t.Errorf("the superuser's locks through the shims: %v, want the keys unchanged", got)
		}
		if !queryBool(t, admin, `SELECT pg_catalog.pg_advisory_unlock(42)`) {
			t.Error("the shim and pg_catalog's function took different locks for the superuser")
		}
	})

	t.Run("context mode", func(t *testing.T) {
		p := db.pooledLogin(t, "digital-health-startup")
		if _, err := p.Exec(ctx, `SELECT public.pg_advisory_lock(99), public.pg_advisory_lock(9, 9)`); err != nil {
			t.Fatal(err)
		}
		// The tenant's key, whichever role its session logged in as.
		if queryBool(t, f.a2, `SELECT public.pg_try_advisory_xact_lock(99)`) || queryBool(t, f.a2, `SELECT public.pg_try_advisory_xact_lock(9, 9)`) {
			t.Error("a role-mode session of the tenant took the keys its context-mode session holds")
		}
		if !queryBool(t, f.b, `SELECT public.pg_try_advisory_xact_lock(99)`) {
			t.Error("another tenant could not take key 99")
		}
		// The next tenant on this backend starts without them.
		enterContext(t, p, auth.ContextKey([]byte("features-test-secret")), db.tenantID(t, "vital-platform"),
			scalar[string](t, p, `SELECT session_user::text`))
		if n := len(advisoryLocks(t, db, p.PgConn().PID())); n != 0 {
			t.Errorf("%d advisory locks of the previous tenant survived enter_tenant_context", n)
		}
		if !queryBool(t, f.a2, `SELECT public.pg_try_advisory_xact_lock(99)`) {
			t.Error("the previous tenant's key is still held")
		}
		// A pooled role without a context has no tenant.
		if _, err := p.Exec(ctx, `RESET ALL`); err != nil {
			t.Fatal(err)
		}
		if got := tryAs(t, p, `SELECT public.pg_advisory_lock(1)`); got != "42501" {
			t.Errorf("a pooled role without a context: SQLSTATE %q, want 42501", got)
		}
	})
}

// markers leaves a recognisable last query on a2, aro2 and b2.
func (f featureConns) markers(t *testing.T, tag string) {
	t.Helper()
	for name, c := range map[string]*pgx.Conn{"a2": f.a2, "aro2": f.aro2, "b2": f.b2} {
		if _, err := c.Exec(ctxT(t), `SELECT 'marker-`+tag+`-`+name+`'`); err != nil {
			t.Fatal(err)
		}
	}
}

// seenMarkers returns the markers of tag visible to conn through
// public.pg_stat_activity.
func seenMarkers(t *testing.T, conn *pgx.Conn, tag string) []string {
	t.Helper()
	return scalar[[]string](t, conn, `SELECT coalesce(array_agg(substring(query from 'marker-`+tag+`-[a-z0-9]+') ORDER BY query), '{}')
		FROM public.pg_stat_activity WHERE query LIKE 'SELECT ''marker-`+tag+`-%'`)
}

func TestTenantOwnSessions(t *testing.T) {
	f := newFeatureConns(t)
	db := f.db
	ctx := ctxT(t)
	f.markers(t, "x")
	tests := []struct {
		who  string
		conn *pgx.Conn
		want []string
	}{
		{"a read-write role sees its tenant's rw and ro sessions", f.a1, []string{"marker-x-a2", "marker-x-aro2"}},
		{"a read-only role sees its tenant's ro sessions", f.aro, []string{"marker-x-aro2"}},
		{"another tenant sees only its own", f.b, []string{"marker-x-b2"}},
	}
	for _, tt := range tests {
		t.Run(tt.who, func(t *testing.T) {
			if got := seenMarkers(t, tt.conn, "x"); !slices.Equal(got, tt.want) {
				t.Errorf("sees %v, want %v", got, tt.want)
			}
			me := scalar[string](t, tt.conn, `SELECT session_user::text`)
			tenant := scalar[string](t, tt.conn, `SELECT current_tenant_id()::text`)
			// Every row is a session of the caller's tenant, and the
			// caller's own backend is there.
			foreign := scalar[int](t, db.admin(t), `SELECT count(*) FROM unnest($1::text[]) u
				WHERE u IS NULL OR u NOT IN (SELECT role_name::text FROM vital.tenant_roles WHERE tenant_id = $2)`,
				scalar[[]string](t, tt.conn, `SELECT array_agg(usename::text) FROM public.pg_stat_activity`), tenant)
			if foreign != 0 {
				t.Errorf("%d rows of other tenants or of no tenant", foreign)
			}
			if !queryBool(t, tt.conn, `SELECT EXISTS (SELECT 1 FROM public.pg_stat_activity
				WHERE pid = pg_backend_pid() AND usename = session_user AND query LIKE '%pg_stat_activity%')`) {
				t.Errorf("%s does not see its own backend with its query", me)
			}
			// pg_stat_ssl shows the same backends.
			if !queryBool(t, tt.conn, `SELECT (SELECT array_agg(pid ORDER BY pid) FROM public.pg_stat_ssl)
				= (SELECT array_agg(pid ORDER BY pid) FROM public.pg_stat_activity)`) {
				t.Error("public.pg_stat_ssl shows other backends than public.pg_stat_activity")
			}
		})
	}
	bPID := f.b.PgConn().PID()
	if queryBool(t, f.a1, fmt.Sprintf(`SELECT EXISTS (SELECT 1 FROM public.pg_stat_ssl WHERE pid = %d)
		OR EXISTS (SELECT 1 FROM public.pg_stat_activity WHERE pid = %d)`, bPID, bPID)) {
		t.Error("a1 sees b's backend")
	}

	t.Run("pg_catalog's columns", func(t *testing.T) {
		for _, v := range []string{"pg_stat_activity", "pg_stat_ssl"} {
			if !scalar[bool](t, db.admin(t), `SELECT (SELECT array_agg(attname::text || ':' || atttypid::regtype::text ORDER BY attnum)
				FROM pg_attribute WHERE attrelid = ('public.'||$1)::regclass AND attnum > 0)
				= (SELECT array_agg(attname::text || ':' || atttypid::regtype::text ORDER BY attnum)
				FROM pg_attribute WHERE attrelid = ('pg_catalog.'||$1)::regclass AND attnum > 0)`, v) {
				t.Errorf("public.%s has other columns than pg_catalog.%[1]s", v)
			}
		}
	})

	t.Run("name resolution", func(t *testing.T) {
		if _, err := f.a1.Exec(ctx, `SET search_path = "$user", public`); err != nil {
			t.Fatal(err)
		}
		if got := tryAs(t, f.a1, `SELECT count(*) FROM pg_stat_activity`); got != "42501" {
			t.Errorf("unqualified pg_stat_activity with search_path \"$user\", public: SQLSTATE %q, want 42501", got)
		}
		if _, err := f.a1.Exec(ctx, `RESET search_path`); err != nil {
			t.Fatal(err)
		}
		got := scalar[[]string](t, f.a1, `SELECT array_agg(DISTINCT usename::text) FROM pg_stat_activity`)
		if !slices.Contains(got, f.a1Role) || !slices.Contains(got, f.aroRole) || slices.Contains(got, f.bR) {
			t.Errorf("unqualified pg_stat_activity with the database default search_path shows roles %v", got)
		}
		if _, err := f.a1.Exec(ctx, `RESET search_path`); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("operators see every session", func(t *testing.T) {
		role, pw := "op_"+randomHex(3), randomHex(12)
		db.exec(t, `CREATE ROLE `+role+` LOGIN PASSWORD '`+pw+`' IN ROLE vital_operator`)
		t.Cleanup(func() {
			if err := db.c.Exec(context.Background(), "postgres", `DROP ROLE IF EXISTS `+role); err != nil {
				t.Logf("drop role %s: %v", role, err)
			}
		})
		op := db.connect(t, db.c.URLFor(role, pw, db.name))
		if got := seenMarkers(t, op, "x"); !slices.Equal(got, []string{"marker-x-a2", "marker-x-aro2", "marker-x-b2"}) {
			t.Errorf("an operator sees %v through public.pg_stat_activity", got)
		}
	})

	t.Run("no tenant", func(t *testing.T) {
		role, pw := "t_notenant_"+randomHex(3), randomHex(12)
		db.exec(t, `CREATE ROLE `+role+` LOGIN PASSWORD '`+pw+`' IN ROLE vital_tenant`)
		t.Cleanup(func() {
			if err := db.c.Exec(context.Background(), "postgres", `DROP ROLE IF EXISTS `+role); err != nil {
				t.Logf("drop role %s: %v", role, err)
			}
		})
		none := db.connect(t, db.c.URLFor(role, pw, db.name))
		// Without a tenant a session sees itself and nothing else.
		for _, q := range []string{`SELECT pid FROM public.pg_stat_activity`, `SELECT pid FROM public.pg_stat_ssl`,
			`SELECT pid FROM public.tenant_stat_activity()`} {
			rows, err := none.Query(ctx, q)
			if err != nil {
				t.Fatalf("%s without a tenant: %v", q, err)
			}
			pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
			if err != nil {
				t.Fatalf("%s without a tenant: %v", q, err)
			}
			if len(pids) != 1 || pids[0] != int32(none.PgConn().PID()) {
				t.Errorf("%s without a tenant: pids %v, want only its own %d", q, pids, none.PgConn().PID())
			}
		}
	})

	t.Run("context mode", func(t *testing.T) {
		p1 := db.pooledLogin(t, "digital-health-startup")
		p2 := db.pooledLogin(t, "digital-health-startup")
		if _, err := p2.Exec(ctx, `SELECT 'marker-x-pooled'`); err != nil {
			t.Fatal(err)
		}
		// The pooled backend sees itself and its tenant's role-mode
		// sessions it may (rw), never another pooled backend, even of the
		// same tenant: those cannot be told apart by tenant.
		if got := seenMarkers(t, p1, "x"); !slices.Equal(got, []string{"marker-x-a2", "marker-x-aro2"}) {
			t.Errorf("a pooled session sees %v", got)
		}
		if queryBool(t, p1, fmt.Sprintf(`SELECT EXISTS (SELECT 1 FROM public.pg_stat_activity WHERE pid = %d)`, p2.PgConn().PID())) {
			t.Error("a pooled session sees another pooled backend")
		}
		if !queryBool(t, p1, `SELECT EXISTS (SELECT 1 FROM public.pg_stat_activity WHERE pid = pg_backend_pid())`) {
			t.Error("a pooled session does not see its own backend")
		}
		// Role-mode sessions of the tenant do not see pooled backends.
		if strings.Contains(strings.Join(seenMarkers(t, f.a1, "x"), ","), "pooled") {
			t.Error("a role-mode session sees a pooled backend")
		}
	})
}

// TestLargeObjectsStayClosed: tenants still cannot create large objects,
// nor read one another role created.
func TestLargeObjectsStayClosed(t *testing.T) {
	f := newFeatureConns(t)
	f.db.exec(t, `SELECT lo_from_bytea(424242, 'operator data')`)
	for _, c := range []*pgx.Conn{f.a1, f.aro, f.b} {
		for _, q := range []string{`SELECT lo_create(0)`, `SELECT lo_creat(-1)`, `SELECT lo_from_bytea(0, 'x')`,
			`SELECT lo_get(424242)`, `SELECT lo_put(424242, 0, 'x')`, `SELECT lo_unlink(424242)`} {
			if got := tryAs(t, c, q); got != "42501" {
				t.Errorf("%s: SQLSTATE %q, want 42501", q, got)
			}
		}
	}
	if s := scalar[string](t, f.a1, `SHOW lo_compat_privileges`); s != "off" {
		t.Errorf("lo_compat_privileges = %s", s)
	}
	if got := tryAs(t, f.a1, `SET lo_compat_privileges = on`); got != "42501" {
		t.Errorf("a tenant setting lo_compat_privileges: SQLSTATE %q, want 42501", got)
	}
}

// catalogueState describes what migration 7 touches, to compare before Up
// and after Down.
func catalogueState(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	return scalar[[]string](t, conn, `SELECT array_agg(x ORDER BY x) FROM (
		SELECT 'function ' || p.oid::regprocedure::text || ' ' || p.proowner::regrole::text || ' ' ||
		       coalesce(p.proacl::text, '-') || ' ' || md5(pg_get_functiondef(p.oid)) AS x
		  FROM pg_proc p WHERE p.pronamespace IN ('public'::regnamespace, 'vital'::regnamespace) AND p.prokind = 'f'
		UNION ALL
		SELECT 'relation ' || c.oid::regclass::text || ' ' || coalesce(c.relacl::text, '-')
		  FROM pg_class c WHERE c.relnamespace IN ('public'::regnamespace, 'vital'::regnamespace)
		UNION ALL
		SELECT 'catalog ' || p.oid::regprocedure::text || ' ' || coalesce(p.proacl::text, '-')
		  FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname LIKE 'pg\_%advisory%'

		UNION ALL
		SELECT 'object ' || kind || ' ' || name FROM vital.migration_objects) s`)
}

func TestFeaturesDownRestoresExactly(t *testing.T) {
	db := newTestDB(t)
	ctx := ctxT(t)
	m := newMigrator(t, db.url)
	if _, err := m.UpTo(ctx, features-1); err != nil {
		t.Fatal(err)
	}
	conn := db.admin(t)
	before := catalogueState(t, conn)
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	assertVerifyPasses(t, db)
	// Cluster-wide, like the group roles: it stays after Down.
	if !scalar[bool](t, conn, `SELECT pg_has_role('vital_owner', 'pg_read_all_stats', 'MEMBER')`) {
		t.Error("vital_owner is not a member of pg_read_all_stats after migration 7")
	}
	if res, err := m.DownTo(ctx, features-1); err != nil || len(res) != 1 {
		t.Fatalf("down = %v, %v", names(res), err)
	}
	after := catalogueState(t, conn)
	for _, x := range before {
		if !slices.Contains(after, x) {
			t.Errorf("lost by up and down: %s", x)
		}
	}
	for _, x := range after {
		if !slices.Contains(before, x) {
			t.Errorf("left by up and down: %s", x)
		}
	}
	// Up again works, and keeps the lock secret on a re-run.
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	key := scalar[[]byte](t, conn, `SELECT key FROM vital.advisory_lock_key`)
	if _, err := m.Reapply(ctx, features); err != nil {
		t.Fatal(err)
	}
	if again := scalar[[]byte](t, conn, `SELECT key FROM vital.advisory_lock_key`); string(again) != string(key) {
		t.Error("reapply changed the advisory-lock secret")
	}
	assertVerifyPasses(t, db)
}
