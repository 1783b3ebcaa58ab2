package migrations_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

// Tests in this package create cluster-wide roles, so none runs in
// parallel.
func TestMain(m *testing.M) { pgtest.Main(m) }

// testDB is one fresh database of the shared cluster.
type testDB struct {
	c    *pgtest.Cluster
	name string
	url  string
}

func newTestDB(t *testing.T) testDB {
	t.Helper()
	c := pgtest.Shared(t)
	name := c.NewDatabase(t)
	return testDB{c: c, name: name, url: c.URL(name)}
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func newMigrator(t *testing.T, url string, opts ...migrations.Option) *migrations.Migrator {
	t.Helper()
	m, err := migrations.New(url, opts...)
	if err != nil {
		t.Fatalf("migrations.New: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// migrated returns a database with every migration applied.
func migrated(t *testing.T) testDB {
	t.Helper()
	db := newTestDB(t)
	if _, err := newMigrator(t, db.url).Up(ctxT(t)); err != nil {
		t.Fatalf("up: %v", err)
	}
	return db
}

// admin connects as the superuser.
func (db testDB) admin(t *testing.T) *pgx.Conn {
	t.Helper()
	return db.connect(t, db.url)
}

func (db testDB) connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctxT(t), url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// exec runs sql as the superuser.
func (db testDB) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	conn := db.admin(t)
	if _, err := conn.Exec(ctxT(t), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", firstLine(sql), err)
	}
}

// scalar runs a one-value query as the superuser.
func scalar[T any](t *testing.T, conn *pgx.Conn, sql string, args ...any) T {
	t.Helper()
	var v T
	if err := conn.QueryRow(ctxT(t), sql, args...).Scan(&v); err != nil {
		t.Fatalf("query %q: %v", firstLine(sql), err)
	}
	return v
}

func (db testDB) tenantID(t *testing.T, slug string) string {
	t.Helper()
	return scalar[string](t, db.admin(t), `SELECT id::text FROM tenants WHERE slug = $1`, slug)
}

// tenantLogin creates a login role for tenant slug with capability rw, ro
// or admin, the way `vitalproxy tenant` does (member of the group role,
// mapped in vital.tenant_roles), and returns a connection as that role.
// The role is dropped when the test ends.
func (db testDB) tenantLogin(t *testing.T, slug, capability string) *pgx.Conn {
	t.Helper()
	role := "t_" + strings.ReplaceAll(slug, "-", "_")[:8] + "_" + capability + "_" + randomHex(3)
	pw := randomHex(12)
	group := "vital_tenant_writer"
	if capability == "ro" {
		group = "vital_tenant"
	}
	ident := pgx.Identifier{role}.Sanitize()
	db.exec(t, `CREATE ROLE `+ident+` LOGIN PASSWORD '`+pw+`'`)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := db.c.Exec(ctx, "postgres", `DROP ROLE IF EXISTS `+ident); err != nil {
			t.Logf("drop role %s: %v", role, err)
		}
	})
	db.exec(t, `GRANT `+group+` TO `+ident)
	db.exec(t, `INSERT INTO vital.tenant_roles (role_name, tenant_id, capability)
		SELECT $1, id, $2 FROM tenants WHERE slug = $3`, role, capability, slug)
	// Simple protocol: the connection survives DISCARD ALL (no cached
	// prepared statements), like a plain psql session.
	return db.connect(t, db.c.URLFor(role, pw, db.name)+"&default_query_exec_mode=simple_protocol")
}

// sqlState returns err's SQLSTATE, or "" if err is not a server error.
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + "..."
	}
	return s
}

func names(res []migrations.Result) []string {
	out := make([]string, len(res))
	for i, r := range res {
		out[i] = r.Name
	}
	return out
}
