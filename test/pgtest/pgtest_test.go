package pgtest_test

import (
	"context"
	"testing"
	"time"

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

// TestStandbyReplaysAndPromotes starts a streaming standby of the shared
// cluster, checks that it replays a write, promotes it and checks that the
// promoted server accepts writes on a timeline of its own.
func TestStandbyReplaysAndPromotes(t *testing.T) {
	c := pgtest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := c.StartStandby(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	db := c.NewDatabase(t)
	if err := c.Exec(ctx, db, "CREATE TABLE t (v text); INSERT INTO t VALUES ('replicated')"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitForReplay(ctx, s); err != nil {
		t.Fatal(err)
	}
	if got, err := s.QueryValue(ctx, db, "SELECT v FROM t"); err != nil || got != "replicated" {
		t.Fatalf("standby reads %q, %v; want the primary's row", got, err)
	}
	if got, _ := s.QueryValue(ctx, "postgres", "SELECT pg_is_in_recovery()"); got != "t" {
		t.Fatalf("standby in recovery = %q", got)
	}
	if err := s.Exec(ctx, db, "INSERT INTO t VALUES ('x')"); err == nil {
		t.Fatal("a standby accepted a write")
	}
	sysid := "SELECT system_identifier FROM pg_control_system()"
	if a, b := mustValue(t, c, sysid), mustValue(t, s, sysid); a != b {
		t.Errorf("system identifiers differ: primary %s, standby %s", a, b)
	}
	before, err := c.Timeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Timeline(ctx); err != nil || got != before {
		t.Errorf("standby timeline %d, %v; want the primary's %d", got, err, before)
	}

	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Exec(ctx, db, "INSERT INTO t VALUES ('after promotion')"); err != nil {
		t.Fatalf("write on the promoted standby: %v", err)
	}
	after, err := s.Timeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after <= before {
		t.Errorf("timeline after promotion %d, want above the primary's %d", after, before)
	}
	if got, _ := c.Timeline(ctx); got != before {
		t.Errorf("the old primary's timeline moved to %d", got)
	}
}

// TestStopImmediateAndRestart stops a standby as a crash would and starts
// it again on the same port.
func TestStopImmediateAndRestart(t *testing.T) {
	c := pgtest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := c.StartStandby(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if err := s.StopImmediate(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.QueryValue(ctx, "postgres", "SELECT 1"); err == nil {
		t.Fatal("a stopped server answered")
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitForReplay(ctx, s); err != nil {
		t.Fatal(err)
	}
}

func mustValue(t *testing.T, c *pgtest.Cluster, sql string) string {
	t.Helper()
	v, err := c.QueryValue(context.Background(), "postgres", sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}
