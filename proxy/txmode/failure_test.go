package txmode_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/txmode"
)

// waitFor polls cond every 20ms until it holds or 15s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// activePID returns the pid of the tenant backend running a query that
// contains marker, or 0.
func activePID(t *testing.T, su *pgx.Conn, role, marker string) int32 {
	t.Helper()
	var pid int32
	err := su.QueryRow(context.Background(), `SELECT pid FROM pg_stat_activity
		WHERE usename = $1 AND state = 'active' AND strpos(query, $2) > 0`, role, marker).Scan(&pid)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestFailures covers backends that die, clients that leave and cancel,
// and protocol violations.
func TestFailures(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, pool.Config{MaxConns: 4, MaxConnsPerTenant: 2}, nil)
	ctx := context.Background()
	su := e.super(t)
	role := e.key(dh).Role
	mustExec(t, su, `CREATE TABLE txmode_locks (id int PRIMARY KEY);
		INSERT INTO txmode_locks VALUES (1), (2);
		GRANT SELECT, UPDATE ON txmode_locks TO vital_tenant`)

	t.Run("backend killed/during an autocommit statement", func(t *testing.T) {
		for _, m := range execModes[:2] {
			t.Run(m.name, func(t *testing.T) {
				broken := e.stats(dh).Closed[pool.ReasonBroken]
				c := e.connect(t, dh, m.mode)
				errc := make(chan error, 1)
				go func() { _, err := c.Exec(ctx, "SELECT pg_sleep(30) /* kill-me-1 */"); errc <- err }()
				var pid int32
				waitFor(t, "the statement to run", func() bool { pid = activePID(t, su, role, "kill-me-1"); return pid != 0 })
				mustExec(t, su, "SELECT pg_terminate_backend("+itoa(pid)+")")
				err := <-errc
				if sqlState(err) != "08006" || !strings.Contains(err.Error(), "terminating connection") {
					t.Fatalf("killed statement: %v, want 08006 with the server's reason", err)
				}
				// The same client goes on with a new backend.
				if got := whoami(t, ctx, c, e, dh); got == pid || got == 0 {
					t.Fatalf("after the kill: backend %d (killed %d)", got, pid)
				}
				if s := e.stats(dh); s.Closed[pool.ReasonBroken] != broken+1 {
					t.Errorf("broken backends closed: %d, want %d", s.Closed[pool.ReasonBroken], broken+1)
				}
			})
		}
	})

	t.Run("backend killed/inside a transaction block", func(t *testing.T) {
		c := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pid := whoami(t, ctx, tx.Conn(), e, dh)
		mustExec(t, su, "SELECT pg_terminate_backend("+itoa(pid)+")")
		_, err = tx.Exec(ctx, "SELECT 1")
		if sqlState(err) != "08006" {
			t.Fatalf("statement after the kill: %v, want FATAL 08006", err)
		}
		waitFor(t, "the session to end", func() bool { return c.IsClosed() })
		whoami(t, ctx, e.connect(t, dh, pgx.QueryExecModeCacheStatement), e, dh)
	})

	t.Run("client left/holding a row lock", func(t *testing.T) {
		for _, m := range execModes[:2] {
			t.Run(m.name, func(t *testing.T) {
				a := e.connect(t, dh, m.mode)
				tx, err := a.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, "SELECT id FROM txmode_locks WHERE id = 1 FOR UPDATE"); err != nil {
					t.Fatal(err)
				}
				a.PgConn().Conn().Close() // no Terminate, no ROLLBACK
				b := e.connect(t, dh, m.mode)
				waitFor(t, "the lock to be released", func() bool {
					_, err := b.Exec(ctx, "SELECT id FROM txmode_locks WHERE id = 1 FOR UPDATE NOWAIT")
					return err == nil
				})
				var idle int
				if err := su.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
					WHERE usename = $1 AND state LIKE 'idle in transaction%'`, role).Scan(&idle); err != nil || idle != 0 {
					t.Errorf("backends idle in transaction: %d, %v", idle, err)
				}
			})
		}
	})

	t.Run("client left/during COPY FROM STDIN", func(t *testing.T) {
		rc := dialRaw(t, e, dh)
		rc.send(t, &pgproto3.Query{String: "BEGIN; CREATE TEMP TABLE c (x int); COPY c FROM STDIN"})
		rc.until(t, 'G')
		rc.send(t, &pgproto3.CopyData{Data: []byte("1\n2\n")})
		rc.conn.Close()
		waitFor(t, "no backend idle in transaction", func() bool {
			var n int
			_ = su.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state <> 'idle'`, role).Scan(&n)
			return n == 0
		})
		whoami(t, ctx, e.connect(t, dh, pgx.QueryExecModeCacheStatement), e, dh)
	})

	t.Run("client left/while a statement runs", func(t *testing.T) {
		rc := dialRaw(t, e, dh)
		rc.send(t, &pgproto3.Query{String: "SELECT pg_sleep(30) /* left-1 */"})
		waitFor(t, "the statement to run", func() bool { return activePID(t, su, role, "left-1") != 0 })
		rc.conn.Close()
		// The cleanup deadline (2s here) passes; the statement is
		// cancelled and the backend closed.
		waitFor(t, "the statement to stop", func() bool { return activePID(t, su, role, "left-1") == 0 })
		whoami(t, ctx, e.connect(t, dh, pgx.QueryExecModeCacheStatement), e, dh)
	})

	t.Run("cancel/reaches only the client's backend", func(t *testing.T) {
		a := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
		b := e.connect(t, dh, pgx.QueryExecModeSimpleProtocol)
		// Nothing running: a no-op.
		if err := e.fe.client(a.PgConn().PID()).Cancel(ctx); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		var bErr error
		go func() {
			defer wg.Done()
			_, bErr = b.Exec(ctx, "SELECT pg_sleep(1.5) /* cancel-b */")
		}()
		errc := make(chan error, 1)
		go func() { _, err := a.Exec(ctx, "SELECT pg_sleep(30) /* cancel-a */"); errc <- err }()
		waitFor(t, "both statements to run", func() bool {
			return activePID(t, su, role, "cancel-a") != 0 && activePID(t, su, role, "cancel-b") != 0
		})
		// The client's own CancelRequest goes through the front end to
		// Client.Cancel.
		if err := a.PgConn().CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; sqlState(err) != "57014" {
			t.Errorf("cancelled statement: %v, want 57014", err)
		}
		wg.Wait()
		if bErr != nil {
			t.Errorf("the other client's statement: %v", bErr)
		}
		whoami(t, ctx, a, e, dh)
	})

	t.Run("protocol/invalid message type", func(t *testing.T) {
		rc := dialRaw(t, e, dh)
		if _, err := rc.conn.Write([]byte{'Y', 0, 0, 0, 4}); err != nil {
			t.Fatal(err)
		}
		if msg := rc.until(t, 'E').(*pgproto3.ErrorResponse); msg.Code != "08P01" || msg.Severity != "FATAL" {
			t.Errorf("got %+v", msg)
		}
	})

	t.Run("protocol/message too long", func(t *testing.T) {
		rc := dialRaw(t, e, dh)
		if _, err := rc.conn.Write([]byte{'Q', 0x7f, 0, 0, 0}); err != nil {
			t.Fatal(err)
		}
		msg := rc.until(t, 'E').(*pgproto3.ErrorResponse)
		if msg.Code != "08P01" || !strings.Contains(msg.Message, "exceeds the limit") {
			t.Errorf("got %+v", msg)
		}
	})

	// Sessions end shortly after their clients read the FATAL.
	var protocolErrs, lost int
	waitFor(t, "the sessions to end", func() bool {
		protocolErrs, lost = 0, 0
		for _, r := range e.fe.runErrors() {
			switch {
			case errors.Is(r.err, txmode.ErrProtocol):
				protocolErrs++
			case errors.Is(r.err, txmode.ErrServerLost):
				lost++
			}
		}
		return protocolErrs == 2 && lost == 1
	})
	for _, r := range e.fe.runErrors() {
		if !errors.Is(r.err, txmode.ErrProtocol) && !errors.Is(r.err, txmode.ErrServerLost) {
			t.Errorf("session of %s ended with %v", r.user, r.err)
		}
	}
}

// TestQueueTimeout checks that a client that waited too long for a backend
// is told 53300 and can go on.
func TestQueueTimeout(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, pool.Config{MaxConns: 1, QueueTimeout: 300 * time.Millisecond}, nil)
	ctx := context.Background()
	a := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range execModes {
		b := e.connect(t, dh, m.mode)
		_, err := b.Exec(ctx, "SELECT $1::int", 1)
		if sqlState(err) != "53300" || !strings.Contains(err.Error(), "no server connection available for tenant "+dh+" within") {
			t.Errorf("%s: %v, want 53300", m.name, err)
		}
		// Still usable: the next attempt waits again.
		if _, err := b.Exec(ctx, "SELECT 2"); sqlState(err) != "53300" {
			t.Errorf("%s: second attempt: %v", m.name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	b := e.connect(t, dh, pgx.QueryExecModeCacheStatement)
	whoami(t, ctx, b, e, dh)
	if errs := e.fe.runErrors(); len(errs) > 0 {
		t.Errorf("sessions ended with errors: %v", errs)
	}
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

// rawClient speaks the protocol by hand through the front end.
type rawClient struct {
	conn net.Conn
	fe   *pgproto3.Frontend
}

func dialRaw(t *testing.T, e *env, slug string) *rawClient {
	t.Helper()
	conn, err := net.Dial("tcp", e.fe.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rc := &rawClient{conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
	rc.send(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": slug, "database": e.db.Name}})
	rc.until(t, 'Z')
	return rc
}

func (rc *rawClient) send(t *testing.T, msg pgproto3.FrontendMessage) {
	t.Helper()
	rc.fe.Send(msg)
	if err := rc.fe.Flush(); err != nil {
		t.Fatal(err)
	}
}

// until reads messages up to one of type typ, failing on an error message
// when typ is not 'E'.
func (rc *rawClient) until(t *testing.T, typ byte) pgproto3.BackendMessage {
	t.Helper()
	_ = rc.conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	for {
		msg, err := rc.fe.Receive()
		if err != nil {
			t.Fatalf("waiting for %q: %v", typ, err)
		}
		var got byte
		switch m := msg.(type) {
		case *pgproto3.ReadyForQuery:
			got = 'Z'
		case *pgproto3.ErrorResponse:
			got = 'E'
			if typ != 'E' {
				t.Fatalf("waiting for %q: %s (%s)", typ, m.Message, m.Code)
			}
		case *pgproto3.CopyInResponse:
			got = 'G'
		}
		if got == typ {
			return msg
		}
	}
}

// collect reads messages up to ReadyForQuery and describes them briefly.
func (rc *rawClient) collect(t *testing.T) string {
	t.Helper()
	_ = rc.conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	var out []string
	for {
		msg, err := rc.fe.Receive()
		if err != nil {
			t.Fatalf("after %v: %v", out, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ParseComplete:
			out = append(out, "1")
		case *pgproto3.BindComplete:
			out = append(out, "2")
		case *pgproto3.RowDescription:
			out = append(out, "T")
		case *pgproto3.DataRow:
			out = append(out, "D("+string(m.Values[0])+")")
		case *pgproto3.CommandComplete:
			out = append(out, "C")
		case *pgproto3.FunctionCallResponse:
			out = append(out, "V("+string(m.Result)+")")
		case *pgproto3.ErrorResponse:
			out = append(out, "E("+m.Code+")")
		case *pgproto3.ReadyForQuery:
			out = append(out, "Z")
			return strings.Join(out, " ")
		default:
			out = append(out, fmt.Sprintf("%T", msg))
		}
	}
}
