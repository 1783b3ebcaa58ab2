package tenantroles_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var secret = []byte("0123456789abcdef0123456789abcdef")

// prefixSeq gives every test its own role prefix: roles are cluster-wide.
var prefixSeq atomic.Int64

type env struct {
	c      *pgtest.Cluster
	db     string
	conn   *pgx.Conn
	prefix string
	m      *tenantroles.Manager
}

func setup(t *testing.T) *env {
	t.Helper()
	c := pgtest.Shared(t)
	db := c.NewDatabase(t)
	migrate(t, c, db)
	e := &env{c: c, db: db, prefix: fmt.Sprintf("t%d_", prefixSeq.Add(1))}
	e.conn = e.connect(t, c.URL(db))
	e.m = tenantroles.New(e.conn, tenantroles.Options{Secret: secret, Prefix: e.prefix})
	// Give the tenants the migrations seed their roles, so that tests start
	// from a synced database.
	if _, err := e.m.Sync(context.Background()); err != nil {
		t.Fatalf("initial sync: %v", err)
	}
	return e
}

// wantMappings is how many vital.tenant_roles rows the tenants need.
func (e *env) wantMappings(t *testing.T) int {
	t.Helper()
	return e.count(t, `SELECT 2 * count(*) + count(*) FILTER (WHERE type = 'platform') FROM public.tenants`)
}

func (e *env) connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func (e *env) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := e.conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// login connects as role with its derived password.
func (e *env) login(ctx context.Context, role string) (*pgconn.PgConn, error) {
	return pgconn.Connect(ctx, e.c.URLFor(role, auth.RolePassword(secret, role), e.db))
}

func (e *env) mustLogin(t *testing.T, role string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pc, err := e.login(ctx, role)
	if err != nil {
		t.Fatalf("login as %s: %v", role, err)
	}
	t.Cleanup(func() { pc.Close(context.Background()) })
	return pc
}

type roleAttrs struct {
	Super, BypassRLS, CreateRole, CreateDB, Replication, Inherit, CanLogin bool
	ConnLimit                                                              int32
}

func (e *env) attrs(t *testing.T, role string) roleAttrs {
	t.Helper()
	var a roleAttrs
	err := e.conn.QueryRow(context.Background(), `
		SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication, rolinherit, rolcanlogin, rolconnlimit
		FROM pg_roles WHERE rolname = $1`, role).
		Scan(&a.Super, &a.BypassRLS, &a.CreateRole, &a.CreateDB, &a.Replication, &a.Inherit, &a.CanLogin, &a.ConnLimit)
	if err != nil {
		t.Fatalf("attributes of %s: %v", role, err)
	}
	return a
}

func (e *env) memberOf(t *testing.T, role string) []string {
	t.Helper()
	rows, err := e.conn.Query(context.Background(), `
		SELECT g.rolname::text FROM pg_auth_members m
		JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member
		WHERE r.rolname = $1 ORDER BY 1`, role)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *env) roleExists(t *testing.T, role string) bool {
	t.Helper()
	var ok bool
	if err := e.conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, role).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func (e *env) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := e.conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func TestAddAndLogin(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	tests := []struct {
		slug, typ, tier string
		wantTier        string
		admin           bool
	}{
		{slug: "acme", typ: "client", wantTier: "starter"},
		{slug: "launch-excellence", typ: "solution", tier: "professional", wantTier: "professional"},
		{slug: "brand-excellence", typ: "industry", tier: "free", wantTier: "free"},
		{slug: "pharma-platform", typ: "platform", tier: "enterprise", wantTier: "enterprise", admin: true},
	}
	for _, tt := range tests {
		t.Run("add/"+tt.typ, func(t *testing.T) {
			ten, err := e.m.Add(ctx, tenantroles.Spec{Slug: tt.slug, Name: "Tenant " + tt.slug, Type: tt.typ, Tier: tt.tier})
			if err != nil {
				t.Fatalf("Add: %v", err)
			}
			rw := auth.RoleName(e.prefix, tt.slug, auth.ReadWrite)
			ro := auth.RoleName(e.prefix, tt.slug, auth.ReadOnly)
			adm := auth.RoleName(e.prefix, tt.slug, auth.Admin)
			want := []string{rw, ro}
			if tt.admin {
				want = append(want, adm)
			}
			if !slices.Equal(ten.Roles, want) {
				t.Fatalf("roles = %v, want %v", ten.Roles, want)
			}
			if ten.ID == "" || ten.Slug != tt.slug || ten.Type != tt.typ || ten.Tier != tt.wantTier || ten.Status != "active" {
				t.Fatalf("tenant = %+v", ten)
			}
			if got := e.roleExists(t, adm); got != tt.admin {
				t.Fatalf("admin role exists = %v, want %v", got, tt.admin)
			}
			groups := map[string]string{rw: "vital_tenant_writer", ro: "vital_tenant", adm: "vital_tenant_writer"}
			caps := map[string]string{rw: "rw", ro: "ro", adm: "admin"}
			for _, role := range want {
				a := e.attrs(t, role)
				if a != (roleAttrs{Inherit: true, CanLogin: true, ConnLimit: -1}) {
					t.Errorf("%s attributes = %+v", role, a)
				}
				if got, want := e.memberOf(t, role), sessionGroups(groups[role]); !slices.Equal(got, want) {
					t.Errorf("%s member of %v, want %v", role, got, want)
				}
				if n := e.count(t, `SELECT count(*) FROM vital.tenant_roles WHERE role_name = $1 AND tenant_id = $2 AND capability = $3`,
					role, ten.ID, caps[role]); n != 1 {
					t.Errorf("%s: mapping rows = %d", role, n)
				}
				pc := e.mustLogin(t, role)
				res := pc.ExecParams(ctx, `SELECT session_user::text`, nil, nil, nil, nil).Read()
				if res.Err != nil || string(res.Rows[0][0]) != role {
					t.Errorf("session_user as %s: %v %q", role, res.Err, res.Rows)
				}
				_, err := pc.Exec(ctx, `INSERT INTO public.agents (name) VALUES ('x')`).ReadAll()
				if role == ro && sqlState(err) != "42501" {
					t.Errorf("INSERT as %s: err = %v, want SQLSTATE 42501", role, err)
				}
				res = pc.ExecParams(ctx, `SELECT has_table_privilege('public.agents', 'INSERT')::text`, nil, nil, nil, nil).Read()
				if res.Err != nil || (string(res.Rows[0][0]) == "true") != (role != ro) {
					t.Errorf("%s may INSERT into agents: %q, %v", role, res.Rows, res.Err)
				}
			}
		})
	}
	t.Run("login/wrong-password", func(t *testing.T) {
		role := auth.RoleName(e.prefix, "acme", auth.ReadWrite)
		_, err := pgconn.Connect(ctx, e.c.URLFor(role, "not-the-password", e.db))
		if sqlState(err) != "28P01" {
			t.Fatalf("login with a wrong password: %v", err)
		}
	})
	t.Run("list", func(t *testing.T) {
		ts, err := e.m.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		bySlug := map[string]tenantroles.Tenant{}
		var slugs []string
		for _, tn := range ts {
			slugs = append(slugs, tn.Slug)
			bySlug[tn.Slug] = tn
		}
		if !slices.IsSorted(slugs) {
			t.Fatalf("slugs not sorted: %v", slugs)
		}
		for _, tt := range tests {
			want := 2
			if tt.admin {
				want = 3
			}
			if got := bySlug[tt.slug]; len(got.Roles) != want || got.Type != tt.typ {
				t.Fatalf("List has %s as %+v", tt.slug, got)
			}
		}
		got, err := e.m.Get(ctx, "pharma-platform")
		if want := bySlug["pharma-platform"]; err != nil || got.ID != want.ID || !slices.Equal(got.Roles, want.Roles) {
			t.Fatalf("Get = %+v, %v", got, err)
		}
		if _, err := e.m.Get(ctx, "nope"); !errors.Is(err, tenantroles.ErrUnknownTenant) {
			t.Fatalf("Get(nope) = %v", err)
		}
	})
	t.Run("sync/idempotent", func(t *testing.T) {
		rep, err := e.m.Sync(ctx)
		if err != nil || len(rep.Changes) != 0 {
			t.Fatalf("Sync after Add = %v, %v", rep.Changes, err)
		}
	})
}

func TestAddRejects(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	if _, err := e.m.Add(ctx, tenantroles.Spec{Slug: "taken", Name: "Taken", Type: "client"}); err != nil {
		t.Fatal(err)
	}
	// A trigger that fails the mapping insert of one tenant proves role
	// creation and tenant insert commit or roll back together.
	e.exec(t, `
		CREATE FUNCTION vital.boom() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.role_name LIKE '%boom%ro' THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$;
		CREATE TRIGGER boom BEFORE INSERT ON vital.tenant_roles FOR EACH ROW EXECUTE FUNCTION vital.boom();`)
	noSecret := tenantroles.New(e.conn, tenantroles.Options{Prefix: e.prefix})
	tests := []struct {
		name    string
		m       *tenantroles.Manager
		spec    tenantroles.Spec
		want    error
		wantMsg string
	}{
		{name: "duplicate", spec: tenantroles.Spec{Slug: "taken", Name: "Again", Type: "client"},
			want: tenantroles.ErrTenantExists, wantMsg: `tenant "taken" already exists`},
		{name: "type", spec: tenantroles.Spec{Slug: "badtype", Name: "X", Type: "galaxy"},
			want: tenantroles.ErrInvalidType, wantMsg: `invalid tenant type "galaxy": must be one of client, solution, industry, platform`},
		{name: "slug/upper", spec: tenantroles.Spec{Slug: "Acme", Name: "X", Type: "client"}, want: tenantroles.ErrInvalidSlug},
		{name: "slug/leading-dash", spec: tenantroles.Spec{Slug: "-acme", Name: "X", Type: "client"}, want: tenantroles.ErrInvalidSlug},
		{name: "slug/underscore", spec: tenantroles.Spec{Slug: "a_b", Name: "X", Type: "client"}, want: tenantroles.ErrInvalidSlug},
		{name: "slug/quote", spec: tenantroles.Spec{Slug: `a"b`, Name: "X", Type: "client"}, want: tenantroles.ErrInvalidSlug},
		{name: "slug/empty", spec: tenantroles.Spec{Name: "X", Type: "client"}, want: tenantroles.ErrInvalidSlug},
		{name: "slug/64", spec: tenantroles.Spec{Slug: strings.Repeat("a", 64), Name: "X", Type: "client"}, want: tenantroles.ErrInvalidSlug},
		{name: "name/empty", spec: tenantroles.Spec{Slug: "noname", Name: " ", Type: "client"}, want: tenantroles.ErrInvalidName},
		{name: "name/newline", spec: tenantroles.Spec{Slug: "nl", Name: "a\nb", Type: "client"}, want: tenantroles.ErrInvalidName},
		{name: "tier", spec: tenantroles.Spec{Slug: "badtier", Name: "X", Type: "client", Tier: "gold"},
			want: tenantroles.ErrInvalidTier, wantMsg: `invalid subscription tier "gold": must be one of free, starter, professional, enterprise`},
		{name: "secret", m: noSecret, spec: tenantroles.Spec{Slug: "nosecret", Name: "X", Type: "client"}, want: tenantroles.ErrNoSecret},
		{name: "rollback", spec: tenantroles.Spec{Slug: "boom", Name: "Boom", Type: "platform"}},
	}
	for _, tt := range tests {
		t.Run("add/"+tt.name, func(t *testing.T) {
			m := tt.m
			if m == nil {
				m = e.m
			}
			before := e.count(t, `SELECT count(*) FROM public.tenants`)
			_, err := m.Add(ctx, tt.spec)
			if err == nil {
				t.Fatal("Add succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if tt.wantMsg != "" && err.Error() != tt.wantMsg {
				t.Fatalf("message = %q, want %q", err.Error(), tt.wantMsg)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("message has several lines: %q", err.Error())
			}
			if after := e.count(t, `SELECT count(*) FROM public.tenants`); after != before {
				t.Fatalf("tenants %d -> %d", before, after)
			}
			if tt.spec.Slug != "taken" {
				for _, c := range []auth.Capability{auth.ReadWrite, auth.ReadOnly, auth.Admin} {
					if r := auth.RoleName(e.prefix, tt.spec.Slug, c); e.roleExists(t, r) {
						t.Fatalf("role %s left behind", r)
					}
				}
			}
		})
	}
}

func TestLongSlug(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	base := strings.Repeat("a", 60)
	for _, slug := range []string{base + "-x1", base + "-x2"} {
		ten, err := e.m.Add(ctx, tenantroles.Spec{Slug: slug, Name: "Long", Type: "platform"})
		if err != nil {
			t.Fatalf("Add %s: %v", slug, err)
		}
		for _, r := range ten.Roles {
			if len(r) > 63 {
				t.Errorf("role %q is %d bytes", r, len(r))
			}
			e.mustLogin(t, r)
		}
	}
	if n := e.count(t, `SELECT count(DISTINCT role_name) FROM vital.tenant_roles WHERE role_name LIKE $1`, e.prefix+"aaa%"); n != 6 {
		t.Fatalf("distinct roles = %d, want 6", n)
	}
}

func TestSyncRepairsDrift(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	plat, err := e.m.Add(ctx, tenantroles.Spec{Slug: "plat", Name: "Platform", Type: "platform"})
	if err != nil {
		t.Fatal(err)
	}
	other, err := e.m.Add(ctx, tenantroles.Spec{Slug: "other", Name: "Other", Type: "client"})
	if err != nil {
		t.Fatal(err)
	}
	rw, ro, adm := plat.Roles[0], plat.Roles[1], plat.Roles[2]
	otherRO := other.Roles[1]
	// A tenant added behind the manager's back gets its roles from Sync.
	e.exec(t, `INSERT INTO public.tenants (name, slug, type, subscription_tier) VALUES ('Late', 'late', 'client', 'starter')`)
	lateRW := auth.RoleName(e.prefix, "late", auth.ReadWrite)
	// A role that once was a tenant role of this database (its mapping
	// row is stale).
	ghost := e.prefix + "ghost_rw"
	e.exec(t, `CREATE ROLE `+ghost+` LOGIN`)
	t.Cleanup(func() { _ = e.c.Exec(context.Background(), "postgres", `DROP ROLE IF EXISTS `+ghost) })

	drift := []struct {
		name, sql, report string
		check             func(t *testing.T)
	}{
		{name: "bypassrls", sql: `ALTER ROLE %[1]s BYPASSRLS CREATEDB`, report: "role %[1]s: set NOBYPASSRLS NOCREATEDB",
			check: func(t *testing.T) {
				if a := e.attrs(t, rw); a.BypassRLS || a.CreateDB {
					t.Errorf("%s: %+v", rw, a)
				}
			}},
		{name: "createrole", sql: `ALTER ROLE %[2]s CREATEROLE NOINHERIT CONNECTION LIMIT 3 VALID UNTIL '2001-01-01'`,
			report: "role %[2]s: set NOCREATEROLE INHERIT CONNECTION LIMIT -1 VALID UNTIL 'infinity'",
			check: func(t *testing.T) {
				if a := e.attrs(t, ro); a.CreateRole || !a.Inherit || a.ConnLimit != -1 {
					t.Errorf("%s: %+v", ro, a)
				}
			}},
		{name: "membership/extra", sql: `GRANT pg_read_all_data TO %[1]s`, report: "role %[1]s: revoked membership in pg_read_all_data"},
		{name: "membership/wrong-group", sql: `GRANT vital_tenant TO %[1]s`, report: "role %[1]s: revoked membership in vital_tenant"},
		{name: "membership/operator", sql: `GRANT vital_operator TO %[4]s`, report: "role %[4]s: revoked membership in vital_operator"},
		{name: "membership/missing", sql: `REVOKE vital_tenant FROM %[4]s`, report: "role %[4]s: granted membership in vital_tenant"},
		{name: "membership/admin-option", sql: `GRANT vital_tenant TO %[2]s WITH ADMIN OPTION`, report: "role %[2]s: revoked ADMIN OPTION on vital_tenant"},
		{name: "members/other-tenant", sql: `GRANT %[1]s TO %[4]s`, report: "role %[4]s: revoked membership in %[1]s"},
		{name: "members/stale-tenant-role", sql: `GRANT %[2]s TO ` + ghost, report: "role %[2]s: revoked its membership granted to " + ghost},
		{name: "members/group", sql: `GRANT %[2]s TO vital_tenant_writer`, report: "role %[2]s: revoked its membership granted to vital_tenant_writer"},
		{name: "password", sql: `ALTER ROLE %[2]s PASSWORD 'other'`, report: "role %[2]s: password reset"},
		{name: "mapping/missing", sql: `DELETE FROM vital.tenant_roles WHERE role_name = '%[1]s'`, report: "role %[1]s: added vital.tenant_roles row"},
		{name: "mapping/wrong", sql: `UPDATE vital.tenant_roles SET capability = 'admin' WHERE role_name = '%[2]s'`,
			report: "role %[2]s: repaired vital.tenant_roles row (was tenant " + plat.ID + ", admin)"},
		{name: "mapping/stale", sql: `INSERT INTO vital.tenant_roles VALUES ('` + ghost + `', '` + plat.ID + `', 'rw')`,
			report: "removed stale vital.tenant_roles row for role " + ghost + " (the role itself is left in place)"},
		{name: "role/dropped", sql: `DROP ROLE %[3]s`, report: "created role %[3]s (tenant plat, admin)"},
		{name: "tenant/new", report: "created role " + lateRW + " (tenant late, rw)"},
		{name: "login", sql: `ALTER ROLE %[4]s NOLOGIN`, report: "role %[4]s: set LOGIN"},
		// What a tenant role may do to itself (ALTER ROLE CURRENT_USER SET).
		{name: "defaults/every-database", sql: `ALTER ROLE %[1]s SET search_path = pg_temp; ALTER ROLE %[1]s SET role = 'vital_tenant'`,
			report: "role %[1]s: removed role defaults for role, search_path in every database",
			check: func(t *testing.T) {
				if n := e.count(t, `SELECT count(*) FROM pg_db_role_setting WHERE setrole = $1::regrole`, rw); n != 0 {
					t.Errorf("%s keeps %d pg_db_role_setting rows", rw, n)
				}
			}},
		{name: "defaults/this-database", sql: `ALTER ROLE %[2]s IN DATABASE ` + e.db + ` SET statement_timeout = '17s'`,
			report: "role %[2]s: removed role defaults for statement_timeout in database " + e.db},
		{name: "defaults/other-database", sql: `ALTER ROLE %[4]s IN DATABASE postgres SET work_mem = '1MB'`,
			report: "role %[4]s: removed role defaults for work_mem in database postgres"},
	}
	subst := func(s string) string {
		if !strings.Contains(s, "%[") {
			return s
		}
		return fmt.Sprintf(s, rw, ro, adm, otherRO)
	}
	var want []string
	for _, d := range drift {
		if d.sql != "" {
			e.exec(t, subst(d.sql))
		}
		want = append(want, subst(d.report))
	}
	rep, err := e.m.Sync(ctx)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	for i, d := range drift {
		t.Run("sync/"+d.name, func(t *testing.T) {
			if !slices.Contains(rep.Changes, want[i]) {
				t.Errorf("report lacks %q; report:\n%s", want[i], strings.Join(rep.Changes, "\n"))
			}
			if d.check != nil {
				d.check(t)
			}
		})
	}
	t.Run("sync/state", func(t *testing.T) {
		groups := map[string]string{rw: "vital_tenant_writer", ro: "vital_tenant", adm: "vital_tenant_writer", otherRO: "vital_tenant", lateRW: "vital_tenant_writer"}
		for role, g := range groups {
			if got := e.memberOf(t, role); !slices.Equal(got, sessionGroups(g)) {
				t.Errorf("%s member of %v", role, got)
			}
			if a := e.attrs(t, role); a != (roleAttrs{Inherit: true, CanLogin: true, ConnLimit: -1}) {
				t.Errorf("%s attributes %+v", role, a)
			}
			e.mustLogin(t, role)
		}
		for _, role := range []string{rw, ro} {
			if n := e.count(t, `SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE r.rolname = $1`, role); n != 0 {
				t.Errorf("%s still has %d members", role, n)
			}
		}
		if n, want := e.count(t, `SELECT count(*) FROM vital.tenant_roles`), e.wantMappings(t); n != want {
			t.Errorf("mapping rows = %d, want %d", n, want)
		}
	})
	t.Run("sync/second", func(t *testing.T) {
		rep, err := e.m.Sync(ctx)
		if err != nil || len(rep.Changes) != 0 {
			t.Fatalf("second Sync = %q, %v", rep.Changes, err)
		}
	})
	t.Run("sync/no-secret", func(t *testing.T) {
		_, err := tenantroles.New(e.conn, tenantroles.Options{Prefix: e.prefix}).Sync(ctx)
		if !errors.Is(err, tenantroles.ErrNoSecret) {
			t.Fatalf("Sync without secret = %v", err)
		}
	})
}

func TestSuspendResume(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	ten, err := e.m.Add(ctx, tenantroles.Spec{Slug: "sleepy", Name: "Sleepy", Type: "platform"})
	if err != nil {
		t.Fatal(err)
	}
	live := e.mustLogin(t, ten.Roles[0])
	// Suspend and Resume need no secret.
	m := tenantroles.New(e.conn, tenantroles.Options{Prefix: e.prefix})

	if err := m.Suspend(ctx, "sleepy"); err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	t.Run("suspend/status", func(t *testing.T) {
		got, err := m.Get(ctx, "sleepy")
		if err != nil || got.Status != "suspended" {
			t.Fatalf("Get = %+v, %v", got, err)
		}
	})
	t.Run("suspend/login-refused", func(t *testing.T) {
		for _, r := range ten.Roles {
			if e.attrs(t, r).CanLogin {
				t.Errorf("%s can still log in", r)
			}
			pc, err := e.login(ctx, r)
			if err == nil {
				pc.Close(ctx)
				t.Errorf("login as %s succeeded", r)
			} else if sqlState(err) != "28000" {
				t.Errorf("login as %s: %v, want SQLSTATE 28000", r, err)
			}
		}
	})
	t.Run("suspend/live-session-ended", func(t *testing.T) {
		if _, err := live.Exec(ctx, "SELECT 1").ReadAll(); err == nil {
			t.Fatal("a session of a suspended tenant still runs queries")
		}
	})
	t.Run("suspend/sync-keeps-nologin", func(t *testing.T) {
		e.exec(t, `ALTER ROLE `+pgx.Identifier{ten.Roles[1]}.Sanitize()+` LOGIN`)
		rep, err := e.m.Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := "role " + ten.Roles[1] + ": set NOLOGIN"
		if !slices.Equal(rep.Changes, []string{want}) {
			t.Fatalf("Sync = %q, want [%q]", rep.Changes, want)
		}
	})
	if err := m.Resume(ctx, "sleepy"); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	t.Run("resume/login", func(t *testing.T) {
		for _, r := range ten.Roles {
			e.mustLogin(t, r)
		}
		got, err := m.Get(ctx, "sleepy")
		if err != nil || got.Status != "active" {
			t.Fatalf("Get = %+v, %v", got, err)
		}
		rep, err := e.m.Sync(ctx)
		if err != nil || len(rep.Changes) != 0 {
			t.Fatalf("Sync after Resume = %q, %v", rep.Changes, err)
		}
	})
	t.Run("unknown", func(t *testing.T) {
		for name, f := range map[string]func(context.Context, string) error{"suspend": m.Suspend, "resume": m.Resume} {
			if err := f(ctx, "nobody"); !errors.Is(err, tenantroles.ErrUnknownTenant) || err.Error() != `unknown tenant "nobody"` {
				t.Errorf("%s(nobody) = %v", name, err)
			}
		}
	})
}

func TestSyncTerminatesSuspendedSessions(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	ten, err := e.m.Add(ctx, tenantroles.Spec{Slug: "zombie", Name: "Zombie", Type: "client"})
	if err != nil {
		t.Fatal(err)
	}
	live := e.mustLogin(t, ten.Roles[1])
	// Suspended behind the manager's back: the session survives until Sync.
	e.exec(t, `UPDATE public.tenants SET status = 'suspended' WHERE slug = 'zombie'`)
	rep, err := e.m.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"role " + ten.Roles[0] + ": set NOLOGIN",
		"role " + ten.Roles[1] + ": set NOLOGIN",
		"role " + ten.Roles[1] + ": terminated 1 session(s) of a suspended tenant",
	}
	if !slices.Equal(rep.Changes, want) {
		t.Fatalf("Sync = %q, want %q", rep.Changes, want)
	}
	if _, err := live.Exec(ctx, "SELECT 1").ReadAll(); err == nil {
		t.Fatal("session still alive")
	}
}

func TestPrivileges(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	n := prefixSeq.Add(1)
	weak := fmt.Sprintf("weak_admin_%d", n)
	filtered := fmt.Sprintf("filtered_admin_%d", n)
	roleAdmin := fmt.Sprintf("role_admin_%d", n)
	for _, r := range []string{weak, filtered, roleAdmin} {
		e.exec(t, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD 'pw'`, r))
		e.exec(t, fmt.Sprintf(`GRANT USAGE ON SCHEMA vital TO %[1]s;
			GRANT SELECT, INSERT, UPDATE, DELETE ON public.tenants, vital.tenant_roles, vital.pooled_roles, vital.context_key TO %[1]s`, r))
		t.Cleanup(func() {
			_ = e.c.Exec(context.Background(), e.db, fmt.Sprintf(`DROP OWNED BY %[1]s; DROP ROLE %[1]s`, r))
		})
	}
	// Ending sessions needs pg_signal_backend, and listing them
	// pg_read_all_stats (the migrations keep pg_stat_activity from PUBLIC).
	e.exec(t, fmt.Sprintf(`ALTER ROLE %[1]s CREATEROLE BYPASSRLS; GRANT pg_signal_backend, pg_read_all_stats TO %[1]s`, roleAdmin))
	e.exec(t, fmt.Sprintf(`ALTER ROLE %[1]s CREATEROLE; ALTER ROLE %[2]s BYPASSRLS`, filtered, weak))

	t.Run("no-createrole", func(t *testing.T) {
		conn := e.connect(t, e.c.URLFor(weak, "pw", e.db))
		m := tenantroles.New(conn, tenantroles.Options{Secret: secret, Prefix: e.prefix})
		_, err := m.Add(ctx, tenantroles.Spec{Slug: "weak", Name: "Weak", Type: "client"})
		if !errors.Is(err, tenantroles.ErrCannotManageRoles) || !strings.Contains(err.Error(), "needs CREATEROLE") {
			t.Fatalf("Add = %v", err)
		}
		if _, err := m.Sync(ctx); !errors.Is(err, tenantroles.ErrCannotManageRoles) {
			t.Fatalf("Sync = %v", err)
		}
		if _, err := m.List(ctx); err != nil {
			t.Fatalf("List = %v", err)
		}
	})
	// Row-level security on tenants would hide tenants from the manager,
	// and a sync would then take their roles' mapping rows for stale ones.
	t.Run("row-security", func(t *testing.T) {
		conn := e.connect(t, e.c.URLFor(filtered, "pw", e.db))
		m := tenantroles.New(conn, tenantroles.Options{Secret: secret, Prefix: e.prefix})
		want := fmt.Sprintf("row-level security hides tenants from the database user %q: manage tenants as a superuser or a role with BYPASSRLS", filtered)
		if _, err := m.Sync(ctx); !errors.Is(err, tenantroles.ErrRowSecurity) || err.Error() != want {
			t.Fatalf("Sync = %v", err)
		}
		if _, err := m.List(ctx); !errors.Is(err, tenantroles.ErrRowSecurity) {
			t.Fatalf("List = %v", err)
		}
	})
	t.Run("createrole", func(t *testing.T) {
		conn := e.connect(t, e.c.URLFor(roleAdmin, "pw", e.db))
		m := tenantroles.New(conn, tenantroles.Options{Secret: secret, Prefix: e.prefix})
		ten, err := m.Add(ctx, tenantroles.Spec{Slug: "delegated", Name: "Delegated", Type: "platform"})
		if err != nil {
			t.Fatalf("Add: %v", err)
		}
		for _, r := range ten.Roles {
			e.mustLogin(t, r)
		}
		// Without access to pg_authid the password cannot be compared; it
		// is re-set quietly and Sync still reports nothing.
		for range 2 {
			rep, err := m.Sync(ctx)
			if err != nil || len(rep.Changes) != 0 {
				t.Fatalf("Sync = %q, %v", rep.Changes, err)
			}
		}
		live := e.mustLogin(t, ten.Roles[0])
		if err := m.Suspend(ctx, "delegated"); err != nil {
			t.Fatalf("Suspend: %v", err)
		}
		if _, err := live.Exec(ctx, "SELECT 1").ReadAll(); err == nil {
			t.Fatal("session still alive")
		}
	})
}

func TestNotMigrated(t *testing.T) {
	c := pgtest.Shared(t)
	db := c.NewDatabase(t)
	conn, err := pgx.Connect(context.Background(), c.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	m := tenantroles.New(conn, tenantroles.Options{Secret: secret})
	if _, err := m.List(context.Background()); !errors.Is(err, tenantroles.ErrNotMigrated) || !strings.Contains(err.Error(), "migrate up") {
		t.Fatalf("List = %v", err)
	}
	if _, err := m.Sync(context.Background()); !errors.Is(err, tenantroles.ErrNotMigrated) {
		t.Fatalf("Sync = %v", err)
	}
}

func TestInvalidPrefix(t *testing.T) {
	e := setup(t)
	m := tenantroles.New(e.conn, tenantroles.Options{Secret: secret, Prefix: `x"; DROP ROLE postgres; --`})
	if _, err := m.Sync(context.Background()); !errors.Is(err, tenantroles.ErrInvalidPrefix) {
		t.Fatalf("Sync = %v", err)
	}
}

// TestConcurrentSyncAcrossDatabases runs managers on two databases of one
// cluster at once: they share the cluster-wide roles but not the lock (on
// each database's vital.tenant_roles), so races on CREATE ROLE and GRANT
// must be absorbed.
func TestConcurrentSyncAcrossDatabases(t *testing.T) {
	a, b := setup(t), setup(t)
	b.prefix = a.prefix
	b.m = tenantroles.New(b.conn, tenantroles.Options{Secret: secret, Prefix: a.prefix})
	ctx := context.Background()
	slugs := []string{"one", "two", "three", "four", "five"}
	for _, e := range []*env{a, b} {
		for _, s := range slugs {
			e.exec(t, `INSERT INTO public.tenants (name, slug, type, subscription_tier) VALUES ($1, $1, 'platform', 'starter')`, s)
		}
	}
	for round := range 3 {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, e := range []*env{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = e.m.Sync(ctx)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: sync %d: %v", round, i, err)
			}
		}
	}
	for _, e := range []*env{a, b} {
		rep, err := e.m.Sync(ctx)
		if err != nil || len(rep.Changes) != 0 {
			t.Fatalf("final Sync = %q, %v", rep.Changes, err)
		}
		if n, want := e.count(t, `SELECT count(*) FROM vital.tenant_roles`), e.wantMappings(t); n != want {
			t.Fatalf("mapping rows = %d, want %d", n, want)
		}
	}
	a.mustLogin(t, auth.RoleName(a.prefix, "three", auth.Admin))
}

func TestStatusDecidesLogin(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	tests := []struct {
		status string
		login  bool
	}{
		{"active", true},
		{"trial", true},
		{"suspended", false},
		{"cancelled", false},
	}
	for _, tt := range tests {
		t.Run("status/"+tt.status, func(t *testing.T) {
			ten, err := e.m.Add(ctx, tenantroles.Spec{Slug: "s-" + tt.status, Name: tt.status, Type: "client"})
			if err != nil {
				t.Fatal(err)
			}
			e.exec(t, `UPDATE public.tenants SET status = $1 WHERE id = $2`, tt.status, ten.ID)
			if _, err := e.m.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			for _, r := range ten.Roles {
				if got := e.attrs(t, r).CanLogin; got != tt.login {
					t.Errorf("%s: LOGIN = %v, want %v", r, got, tt.login)
				}
				pc, err := e.login(ctx, r)
				if err == nil {
					pc.Close(ctx)
				}
				if (err == nil) != tt.login {
					t.Errorf("login as %s: %v", r, err)
				}
			}
		})
	}
}

// sessionGroups are the sorted groups a tenant role of group g belongs to:
// g and vital_tenant_session.
func sessionGroups(g string) []string {
	out := []string{g, tenantroles.GroupSession}
	slices.Sort(out)
	return out
}

// TestSyncCreatesPooledRoles checks the pooled roles of isolation mode
// context: created with their groups only (never vital_tenant_session),
// recorded in vital.pooled_roles, never mapped to a tenant, and the context
// key stored; a second sync changes nothing.
func TestSyncCreatesPooledRoles(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	m := e.m
	if _, err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cap   auth.Capability
		group string
	}{{auth.ReadWrite, "vital_tenant_writer"}, {auth.ReadOnly, "vital_tenant"}} {
		role := auth.PooledRoleName(e.prefix, tc.cap)
		if got := e.memberOf(t, role); !slices.Equal(got, []string{tc.group}) {
			t.Errorf("%s member of %v, want [%s]", role, got, tc.group)
		}
		if n := e.count(t, `SELECT count(*) FROM vital.pooled_roles WHERE role_name = $1 AND capability = $2`, role, string(tc.cap)); n != 1 {
			t.Errorf("%s: %d vital.pooled_roles rows", role, n)
		}
		if n := e.count(t, `SELECT count(*) FROM vital.tenant_roles WHERE role_name = $1`, role); n != 0 {
			t.Errorf("%s is mapped to a tenant", role)
		}
		e.mustLogin(t, role)
	}
	ikey, _ := auth.ContextKeyPads(auth.ContextKey(secret))
	if n := e.count(t, `SELECT count(*) FROM vital.context_key WHERE ikey = $1`, ikey); n != 1 {
		t.Errorf("context key rows matching the secret: %d", n)
	}
	rep, err := m.Sync(ctx)
	if err != nil || len(rep.Changes) != 0 {
		t.Errorf("second sync: %q, %v", rep.Changes, err)
	}
}
