package txmode_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/txmode"
)

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// pipelineResults drains a pipeline, describing each result in a line.
func pipelineResults(t *testing.T, p *pgconn.Pipeline) []string {
	t.Helper()
	var out []string
	for {
		res, err := p.GetResults()
		switch {
		case err != nil:
			out = append(out, "error "+sqlState(err))
		case res == nil:
			return out
		default:
			switch r := res.(type) {
			case *pgconn.ResultReader:
				rr := r.Read()
				if rr.Err != nil {
					out = append(out, "error "+sqlState(rr.Err))
					continue
				}
				var vals []string
				for _, row := range rr.Rows {
					vals = append(vals, string(row[0]))
				}
				out = append(out, "rows "+strings.Join(vals, ","))
			case *pgconn.StatementDescription:
				out = append(out, "prepared")
			case *pgconn.PipelineSync:
				out = append(out, "sync")
			default:
				out = append(out, fmt.Sprintf("%T", res))
			}
		}
	}
}

// TestProtocol covers the extended protocol, pipelines, COPY and errors,
// with more clients than backends so that clients change backends.
func TestProtocol(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, pool.Config{MaxConns: 2}, func(o *txmode.Options) { o.MaxPreparedPerBackend = 4 })
	ctx := context.Background()
	// occupy keeps the other backend busy in bursts so that a client's
	// transactions land on either backend.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	bg := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
	go func() {
		defer wg.Done()
		conn := bg
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := conn.Exec(ctx, "SELECT pg_sleep(0.002), $1::int", i); err != nil {
				t.Errorf("background client: %v", err)
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })

	t.Run("pipeline/syncs and errors", func(t *testing.T) {
		conn := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
		for round := range 5 {
			p := conn.PgConn().StartPipeline(ctx)
			p.SendQueryParams("SELECT $1::int", [][]byte{[]byte("1")}, nil, nil, nil)
			p.SendPrepare("ps_double", "SELECT $1::int * 2", nil)
			p.SendQueryPrepared("ps_double", [][]byte{[]byte("21")}, nil, nil)
			p.SendPipelineSync()
			p.SendQueryParams("SELECT 1/0", nil, nil, nil, nil)
			p.SendQueryPrepared("ps_double", [][]byte{[]byte("5")}, nil, nil)
			p.SendPipelineSync()
			p.SendQueryPrepared("ps_double", [][]byte{[]byte(strconv.Itoa(round))}, nil, nil)
			p.SendPipelineSync()
			if err := p.Flush(); err != nil {
				t.Fatal(err)
			}
			got := strings.Join(pipelineResults(t, p), "; ")
			want := fmt.Sprintf("rows 1; prepared; rows 42; sync; error 22012; sync; rows %d; sync", 2*round)
			if got != want {
				t.Fatalf("round %d:\n got %s\nwant %s", round, got, want)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			if err := conn.PgConn().Deallocate(ctx, "ps_double"); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("pipeline/flush without sync", func(t *testing.T) {
		conn := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
		p := conn.PgConn().StartPipeline(ctx)
		p.SendPrepare("ps_flush", "SELECT $1::text || 'x'", nil)
		p.SendFlushRequest()
		if err := p.Flush(); err != nil {
			t.Fatal(err)
		}
		// The answer must arrive before any Sync is sent.
		res, err := p.GetResults()
		if sd, ok := res.(*pgconn.StatementDescription); err != nil || !ok || len(sd.Fields) != 1 {
			t.Fatalf("prepare before sync: %v %v", res, err)
		}
		p.SendQueryPrepared("ps_flush", [][]byte{[]byte("a")}, nil, nil)
		p.SendPipelineSync()
		if err := p.Flush(); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(pipelineResults(t, p), "; "); got != "rows ax; sync" {
			t.Fatalf("got %s", got)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		var s string
		if err := conn.QueryRow(ctx, "SELECT 'after flush'").Scan(&s); err != nil || s != "after flush" {
			t.Fatalf("after the pipeline: %q %v", s, err)
		}
	})

	t.Run("batch/pgx", func(t *testing.T) {
		for _, m := range execModes {
			t.Run(m.name, func(t *testing.T) {
				conn := e.connect(t, pl, m.mode)
				for round := range 3 {
					b := &pgx.Batch{}
					for i := range 50 {
						b.Queue("SELECT $1::int + $2::int", i, round)
					}
					b.Queue("SELECT current_tenant_id()::text")
					br := conn.SendBatch(ctx, b)
					for i := range 50 {
						var n int
						if err := br.QueryRow().Scan(&n); err != nil || n != i+round {
							t.Fatalf("round %d query %d: %d, %v", round, i, n, err)
						}
					}
					var tenant string
					if err := br.QueryRow().Scan(&tenant); err != nil || tenant != e.db.TenantIDs[pl] {
						t.Fatalf("tenant %q, %v", tenant, err)
					}
					if err := br.Close(); err != nil {
						t.Fatal(err)
					}
				}
			})
		}
	})

	t.Run("batch/error mid-batch", func(t *testing.T) {
		conn := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
		b := &pgx.Batch{}
		b.Queue("SELECT 1")
		b.Queue("SELECT 1/0")
		b.Queue("SELECT 3")
		br := conn.SendBatch(ctx, b)
		var n int
		if err := br.QueryRow().Scan(&n); err != nil || n != 1 {
			t.Fatalf("first: %d %v", n, err)
		}
		if err := br.QueryRow().Scan(&n); sqlState(err) != "22012" {
			t.Fatalf("second: %v, want 22012", err)
		}
		if err := br.QueryRow().Scan(&n); err == nil {
			t.Fatal("third query of a failed batch succeeded")
		}
		br.Close()
		if err := conn.QueryRow(ctx, "SELECT 4").Scan(&n); err != nil || n != 4 {
			t.Fatalf("after the batch: %d %v", n, err)
		}
	})

	t.Run("errors/in transaction", func(t *testing.T) {
		for _, m := range execModes {
			t.Run(m.name, func(t *testing.T) {
				conn := e.connect(t, dh, m.mode)
				tx, err := conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, "SELECT 1/0"); sqlState(err) != "22012" {
					t.Fatalf("got %v, want 22012", err)
				}
				if _, err := tx.Exec(ctx, "SELECT 1"); sqlState(err) != "25P02" {
					t.Fatalf("in a failed transaction: %v, want 25P02", err)
				}
				if err := tx.Rollback(ctx); err != nil {
					t.Fatal(err)
				}
				whoami(t, ctx, conn, e, dh)
			})
		}
	})

	t.Run("copy/from and to", func(t *testing.T) {
		conn := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "CREATE TEMP TABLE copied (n int, s text) ON COMMIT DROP"); err != nil {
			t.Fatal(err)
		}
		const rows = 20000
		src := make([][]any, rows)
		for i := range src {
			src[i] = []any{i, strings.Repeat("x", i%300)}
		}
		n, err := tx.CopyFrom(ctx, pgx.Identifier{"copied"}, []string{"n", "s"}, pgx.CopyFromRows(src))
		if err != nil || n != rows {
			t.Fatalf("copy from: %d, %v", n, err)
		}
		var sum int64
		if err := tx.QueryRow(ctx, "SELECT sum(n) + sum(length(s)) FROM copied").Scan(&sum); err != nil {
			t.Fatal(err)
		}
		var want int64
		for i := range rows {
			want += int64(i + i%300)
		}
		if sum != want {
			t.Errorf("sum %d, want %d", sum, want)
		}
		var buf bytes.Buffer
		tag, err := tx.Conn().PgConn().CopyTo(ctx, &buf, "COPY (SELECT n, s FROM copied ORDER BY n) TO STDOUT")
		if err != nil || tag.RowsAffected() != rows {
			t.Fatalf("copy to: %v, %v", tag, err)
		}
		lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		if len(lines) != rows || lines[299] != "299\t"+strings.Repeat("x", 299) {
			t.Fatalf("copy to: %d lines, line 299 %q", len(lines), lines[299][:min(20, len(lines[299]))])
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		// A failed COPY FROM leaves the client usable.
		_, err = conn.PgConn().CopyFrom(ctx, strings.NewReader("1\n2\nnot a number\n"), "COPY pgbench_nothing FROM STDIN")
		if err == nil {
			t.Fatal("copy into a missing table succeeded")
		}
		whoami(t, ctx, conn, e, dh)
	})

	t.Run("copy/large rows", func(t *testing.T) {
		conn := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
		// Rows and parameters larger than every buffer of the engine.
		big := strings.Repeat("0123456789", 100_000)
		var got string
		if err := conn.QueryRow(ctx, "SELECT $1::text || 'end'", big).Scan(&got); err != nil || got != big+"end" {
			t.Fatalf("big round trip: %d bytes, %v", len(got), err)
		}
		var n int
		if err := conn.QueryRow(ctx, "SELECT length('"+big+"')").Scan(&n); err != nil || n != len(big) {
			t.Fatalf("big simple query: %d, %v", n, err)
		}
	})

	t.Run("prepared/close and re-prepare", func(t *testing.T) {
		conn := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
		pc := conn.PgConn()
		for i := range 6 {
			if _, err := pc.Prepare(ctx, "mine", fmt.Sprintf("SELECT %d + $1::int", i), nil); err != nil {
				t.Fatalf("prepare %d: %v", i, err)
			}
			res := pc.ExecPrepared(ctx, "mine", [][]byte{[]byte("100")}, nil, nil).Read()
			if res.Err != nil || string(res.Rows[0][0]) != strconv.Itoa(100+i) {
				t.Fatalf("execute %d: %v %v", i, res.Rows, res.Err)
			}
			if err := pc.Deallocate(ctx, "mine"); err != nil {
				t.Fatal(err)
			}
		}
		res := pc.ExecPrepared(ctx, "never_prepared", nil, nil, nil).Read()
		if sqlState(res.Err) != "26000" {
			t.Fatalf("unknown statement: %v, want 26000", res.Err)
		}
	})

	t.Run("prepared/more statements than a backend keeps", func(t *testing.T) {
		// MaxPreparedPerBackend is 4: ten statements in rotation are
		// evicted and prepared again, and always answer right.
		conn := e.connect(t, pl, pgx.QueryExecModeCacheStatement)
		for round := range 4 {
			for i := range 10 {
				var n int
				q := fmt.Sprintf("SELECT %d * 1000 + $1::int", i)
				if err := conn.QueryRow(ctx, q, round).Scan(&n); err != nil || n != i*1000+round {
					t.Fatalf("statement %d round %d: %d, %v", i, round, n, err)
				}
			}
		}
	})

	t.Run("prepared/unnamed across transactions", func(t *testing.T) {
		// Describe-then-execute sends the unnamed statement's Parse in
		// one round trip and its Bind in the next, which may be served
		// by another backend.
		conn := e.connect(t, pl, pgx.QueryExecModeDescribeExec)
		for i := range 20 {
			var s string
			if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT 'unnamed-%d-' || $1::text", i), "x").Scan(&s); err != nil || s != fmt.Sprintf("unnamed-%d-x", i) {
				t.Fatalf("%d: %q %v", i, s, err)
			}
		}
	})

	t.Run("prepared/shared between clients", func(t *testing.T) {
		var wg sync.WaitGroup
		for c := range 6 {
			conn := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 30 {
					var a, b int
					if err := conn.QueryRow(ctx, "SELECT $1::int, $2::int", c, i).Scan(&a, &b); err != nil || a != c || b != i {
						t.Errorf("client %d: %d %d %v", c, a, b, err)
						return
					}
				}
			}()
		}
		wg.Wait()
	})
	t.Run("raw/function call", func(t *testing.T) {
		var oid uint32
		if err := e.super(t).QueryRow(ctx, "SELECT 'pg_catalog.int4abs'::regproc::oid").Scan(&oid); err != nil {
			t.Fatal(err)
		}
		rc := dialRaw(t, e, dh)
		for range 3 {
			rc.send(t, &pgproto3.FunctionCall{Function: oid, ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte("-5")}})
			if got := rc.collect(t); got != "V(5) Z" {
				t.Fatalf("function call: %s", got)
			}
		}
	})

	t.Run("raw/query after unsynced extended messages", func(t *testing.T) {
		rc := dialRaw(t, e, dh)
		rc.fe.Send(&pgproto3.Parse{Query: "SELECT 1"})
		rc.fe.Send(&pgproto3.Bind{})
		rc.fe.Send(&pgproto3.Execute{})
		rc.send(t, &pgproto3.Query{String: "SELECT 2"})
		if got := rc.collect(t); got != "1 2 D(1) C T D(2) C Z" {
			t.Fatalf("got %s", got)
		}
		rc.send(t, &pgproto3.Query{String: "SELECT 3"})
		if got := rc.collect(t); got != "T D(3) C Z" {
			t.Fatalf("then: %s", got)
		}
	})

	t.Run("raw/sync alone", func(t *testing.T) {
		rc := dialRaw(t, e, dh)
		rc.send(t, &pgproto3.Sync{})
		if got := rc.collect(t); got != "Z" {
			t.Fatalf("got %s", got)
		}
	})

	if errs := e.fe.runErrors(); len(errs) > 0 {
		t.Errorf("sessions ended with errors: %v", errs)
	}
}
