package integration_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestProtocolThroughProxy drives the PostgreSQL protocol features a real
// application uses through one proxy.
func TestProtocolThroughProxy(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	p := startProxy(t, f.config(t))

	t.Run("simple/query", func(t *testing.T) {
		conn := p.connect(t, "alice", "alice-pw")
		res, err := conn.PgConn().Exec(testCtx(t), "SELECT 1; SELECT current_user, current_setting('vital.tenant_id', true)").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 2 || string(res[0].Rows[0][0]) != "1" {
			t.Fatalf("results %+v", res)
		}
		if got, want := string(res[1].Rows[0][1]), f.tenants[dhSlug]; got != want {
			t.Errorf("vital.tenant_id = %q, want %q", got, want)
		}
		if got := string(res[1].Rows[0][0]); !strings.HasPrefix(got, f.prefix) || !strings.HasSuffix(got, "_rw") {
			t.Errorf("current_user = %q, want the tenant's rw role", got)
		}
	})

	t.Run("extended/prepared statements", func(t *testing.T) {
		conn := p.connect(t, "alice", "alice-pw")
		ctx := testCtx(t)
		if _, err := conn.Prepare(ctx, "byname", "SELECT count(*) FROM agents WHERE name = $1"); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{f.dhPrivate, f.platformShared, f.platformPrivate} {
			var n int
			if err := conn.QueryRow(ctx, "byname", name).Scan(&n); err != nil {
				t.Fatal(err)
			}
			want := 1
			if name == f.platformPrivate {
				want = 0
			}
			if n != want {
				t.Errorf("%s: count %d, want %d", name, n, want)
			}
		}
		var sum int64
		if err := conn.QueryRow(ctx, "SELECT $1::int8 + $2::int8", 40, 2).Scan(&sum); err != nil || sum != 42 {
			t.Fatalf("sum %d, %v", sum, err)
		}
		batch := &pgx.Batch{}
		for i := range 50 {
			batch.Queue("SELECT $1::int", i)
		}
		br := conn.SendBatch(ctx, batch)
		for i := range 50 {
			var got int
			if err := br.QueryRow().Scan(&got); err != nil || got != i {
				t.Fatalf("batch %d: %d %v", i, got, err)
			}
		}
		if err := br.Close(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("large/rows over 1MiB", func(t *testing.T) {
		conn := p.connect(t, "alice", "alice-pw")
		ctx := testCtx(t)
		var s string
		if err := conn.QueryRow(ctx, "SELECT repeat('x', 3*1024*1024)").Scan(&s); err != nil {
			t.Fatal(err)
		}
		if len(s) != 3*1024*1024 {
			t.Fatalf("len %d", len(s))
		}
		big := strings.Repeat("y", 2*1024*1024+7)
		var n int
		if err := conn.QueryRow(ctx, "SELECT length($1::text)", big).Scan(&n); err != nil || n != len(big) {
			t.Fatalf("length %d %v", n, err)
		}
	})

	t.Run("copy/from and to", func(t *testing.T) {
		conn := p.connect(t, "alice", "alice-pw")
		ctx := testCtx(t)
		if _, err := conn.Exec(ctx, "CREATE TEMP TABLE t_copy (id int, body text)"); err != nil {
			t.Fatal(err)
		}
		rows := make([][]any, 5000)
		for i := range rows {
			rows[i] = []any{i, strings.Repeat("z", i%300)}
		}
		n, err := conn.CopyFrom(ctx, pgx.Identifier{"t_copy"}, []string{"id", "body"}, pgx.CopyFromRows(rows))
		if err != nil || n != int64(len(rows)) {
			t.Fatalf("copy from: %d %v", n, err)
		}
		var buf bytes.Buffer
		tag, err := conn.PgConn().CopyTo(ctx, &buf, "COPY t_copy TO STDOUT")
		if err != nil || tag.RowsAffected() != int64(len(rows)) {
			t.Fatalf("copy to: %v %v", tag, err)
		}
		if lines := bytes.Count(buf.Bytes(), []byte("\n")); lines != len(rows) {
			t.Fatalf("copy to: %d lines", lines)
		}
		tag, err = conn.PgConn().CopyFrom(ctx, strings.NewReader("1\tone\n2\ttwo\n"), "COPY t_copy FROM STDIN")
		if err != nil || tag.RowsAffected() != 2 {
			t.Fatalf("copy from stdin: %v %v", tag, err)
		}
	})

	t.Run("listen/notify", func(t *testing.T) {
		a := p.connect(t, "alice", "alice-pw")
		b := p.connect(t, "alice", "alice-pw")
		ctx := testCtx(t)
		if _, err := a.Exec(ctx, "LISTEN it_channel"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Exec(ctx, "SELECT pg_notify('it_channel', 'hello')"); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		n, err := a.WaitForNotification(wctx)
		if err != nil {
			t.Fatal(err)
		}
		if n.Channel != "it_channel" || n.Payload != "hello" {
			t.Fatalf("notification %+v", n)
		}
	})

	t.Run("errors/mid-transaction then rollback", func(t *testing.T) {
		conn := p.connect(t, "alice", "alice-pw")
		ctx := testCtx(t)
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = tx.Exec(ctx, "SELECT 1/0")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "22012" {
			t.Fatalf("want division_by_zero, got %v", err)
		}
		_, err = tx.Exec(ctx, "SELECT 1")
		if !errors.As(err, &pgErr) || pgErr.Code != "25P02" {
			t.Fatalf("want in_failed_sql_transaction, got %v", err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("after rollback: %d %v", one, err)
		}
		if _, err := conn.Exec(ctx, "SELEC broken"); err == nil {
			t.Fatal("syntax error accepted")
		}
		if err := conn.Ping(ctx); err != nil {
			t.Fatalf("ping after error: %v", err)
		}
	})

	t.Run("cancel/pg_sleep via the proxy key", func(t *testing.T) {
		conn := p.connect(t, "alice", "alice-pw")
		ctx := testCtx(t)
		errc := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, "SELECT pg_sleep(600)")
			errc <- err
		}()
		waitActive(t, f, "pg_sleep(600)")
		if err := conn.PgConn().CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
				t.Fatalf("want query_canceled, got %v", err)
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("pg_sleep was not cancelled")
		}
		if err := conn.Ping(ctx); err != nil {
			t.Fatalf("session unusable after cancel: %v", err)
		}
	})
}

// waitActive waits until a backend runs a query containing text.
func waitActive(t testing.TB, f *fixture, text string) int {
	t.Helper()
	return waitActiveOn(t, f.c.URL(f.db), text)
}

// waitActiveOn waits until a backend of the database at superuserURL runs a
// query containing text.
func waitActiveOn(t testing.TB, superuserURL, text string) int {
	t.Helper()
	ctx := testCtx(t)
	admin, err := pgx.Connect(ctx, superuserURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var pid int
		err := admin.QueryRow(ctx, "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid() LIMIT 1", text).Scan(&pid)
		if err == nil {
			return pid
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no backend is running %q", text)
	return 0
}
