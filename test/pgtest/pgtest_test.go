package pgtest_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestClusterServesSCRAMLogins(t *testing.T) {
	c := pgtest.Shared(t)
	db := c.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, c.URL(db))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	res, err := conn.Exec(ctx, "SELECT current_database(), current_setting('password_encryption')").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res[0].Rows[0][0]); got != db {
		t.Errorf("current_database = %q, want %q", got, db)
	}
	if got := string(res[0].Rows[0][1]); got != "scram-sha-256" {
		t.Errorf("password_encryption = %q", got)
	}
	bad := c.URLFor(c.User, "wrong", db)
	if conn, err := pgconn.Connect(ctx, bad); err == nil {
		conn.Close(ctx)
		t.Fatal("a wrong password was accepted")
	}
}
