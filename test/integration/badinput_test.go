package integration_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// connectErr connects through the proxy and returns the server's error.
func connectErr(t *testing.T, url string) *pgconn.PgError {
	t.Helper()
	ctx := testCtx(t)
	conn, err := pgx.Connect(ctx, url)
	if err == nil {
		conn.Close(ctx)
		t.Fatal("connection was accepted")
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("want a server error, got %v", err)
	}
	if pgErr.Severity != "FATAL" {
		t.Errorf("severity %s, want FATAL", pgErr.Severity)
	}
	return pgErr
}

// TestRefusals checks that every bad client gets a clear error (or a timely
// close) and that the proxy keeps serving others.
func TestRefusals(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	cfg := f.config(t)
	p := startProxy(t, cfg)

	t.Run("auth/wrong password", func(t *testing.T) {
		e := connectErr(t, p.url("alice", "wrong"))
		if e.Code != "28P01" || e.Message != `password authentication failed for user "alice"` {
			t.Fatalf("got %s %q", e.Code, e.Message)
		}
	})
	t.Run("auth/unknown user", func(t *testing.T) {
		e := connectErr(t, p.url("nobody", "whatever"))
		if e.Code != "28P01" || e.Message != `password authentication failed for user "nobody"` {
			t.Fatalf("got %s %q", e.Code, e.Message)
		}
	})
	t.Run("tenant/unknown", func(t *testing.T) {
		if e := connectErr(t, p.url("alice@no-such-tenant", "alice-pw")); e.Code != "28000" {
			t.Fatalf("got %s %q", e.Code, e.Message)
		}
	})
	t.Run("tenant/not allowed", func(t *testing.T) {
		if e := connectErr(t, p.url("alice@"+platformSlug, "alice-pw")); e.Code != "28000" {
			t.Fatalf("got %s %q", e.Code, e.Message)
		}
	})
	t.Run("startup/other database", func(t *testing.T) {
		u := strings.Replace(p.url("alice", "alice-pw"), "/"+f.db+"?", "/postgres?", 1)
		if e := connectErr(t, u); e.Code != "3D000" {
			t.Fatalf("got %s %q", e.Code, e.Message)
		}
	})
	t.Run("startup/options role", func(t *testing.T) {
		if e := connectErr(t, p.url("alice", "alice-pw", "options=-c%20role%3Dpostgres")); e.Code != "42501" {
			t.Fatalf("got %s %q", e.Code, e.Message)
		}
	})
	t.Run("startup/allowed options pass", func(t *testing.T) {
		conn := p.connect(t, "alice", "alice-pw", "options=-c%20statement_timeout%3D12345", "application_name=it-app")
		var st, app string
		if err := conn.QueryRow(testCtx(t), "SELECT current_setting('statement_timeout'), current_setting('application_name')").Scan(&st, &app); err != nil {
			t.Fatal(err)
		}
		if st != "12345ms" || app != "it-app" {
			t.Fatalf("statement_timeout %q application_name %q", st, app)
		}
	})
	t.Run("startup/replication", func(t *testing.T) {
		r := dialRaw(t, p.addr)
		r.startup(map[string]string{"user": "alice", "replication": "database"})
		r.expectFatal("0A000")
	})
	t.Run("bytes/garbage", func(t *testing.T) {
		r := dialRaw(t, p.addr)
		r.write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		r.expectFatal("08P01")
	})
	t.Run("bytes/truncated startup packet", func(t *testing.T) {
		r := dialRaw(t, p.addr)
		b, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
			Parameters: map[string]string{"user": "alice", "database": f.db}}).Encode(nil)
		r.write(b[:len(b)/2])
		_ = r.conn.(*net.TCPConn).CloseWrite()
		r.expectFatal("08P01")
	})
	t.Run("bytes/1GiB length prefix", func(t *testing.T) {
		r := dialRaw(t, p.addr)
		r.write(lengthPrefixed(1<<30, 196608))
		r.expectFatal("08P01")
	})
	t.Run("bytes/negative length", func(t *testing.T) {
		r := dialRaw(t, p.addr)
		r.write(lengthPrefixed(0xfffffff0, 196608))
		r.expectFatal("08P01")
	})
	t.Run("protocol/version 2", func(t *testing.T) {
		r := dialRaw(t, p.addr)
		body := []byte("user\x00alice\x00\x00")
		r.write(lengthPrefixed(uint32(8+len(body)), 2<<16, body...))
		r.expectFatal("0A000")
	})
	t.Run("protocol/newer minor is negotiated", func(t *testing.T) {
		r := dialRaw(t, p.addr)
		b, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
			Parameters: map[string]string{"user": "alice", "database": f.db, "_pq_.future": "1"}}).Encode(nil)
		binary.BigEndian.PutUint32(b[4:], 3<<16|5)
		r.write(b)
		msg, err := r.receive()
		if err != nil {
			t.Fatal(err)
		}
		npv, ok := msg.(*pgproto3.NegotiateProtocolVersion)
		if !ok || npv.NewestMinorProtocol != 0 || len(npv.UnrecognizedOptions) != 1 || npv.UnrecognizedOptions[0] != "_pq_.future" {
			t.Fatalf("got %#v", msg)
		}
		r.scramLogin("alice-pw")
		if key := r.readyForQuery(); key == nil || len(key.SecretKey) != 4 {
			t.Fatalf("BackendKeyData %+v", key)
		}
	})
	t.Run("tls/SSLRequest without TLS configured", func(t *testing.T) {
		r := dialRaw(t, p.addr)
		r.write(lengthPrefixed(8, 80877103))
		b := make([]byte, 1)
		if _, err := r.conn.Read(b); err != nil || b[0] != 'N' {
			t.Fatalf("answer %q %v, want N", b, err)
		}
		r.startup(map[string]string{"user": "alice", "database": f.db})
		r.scramLogin("alice-pw")
		r.readyForQuery()
		// And a client that insists on TLS gets a clear client-side error.
		ctx := testCtx(t)
		conn, err := pgx.Connect(ctx, strings.Replace(p.url("alice", "alice-pw"), "sslmode=disable", "sslmode=require", 1))
		if err == nil {
			conn.Close(ctx)
			t.Fatal("sslmode=require connected without TLS")
		}
	})
	t.Run("tls/GSSENCRequest is declined", func(t *testing.T) {
		r := dialRaw(t, p.addr)
		r.write(lengthPrefixed(8, 80877104))
		b := make([]byte, 1)
		if _, err := r.conn.Read(b); err != nil || b[0] != 'N' {
			t.Fatalf("answer %q %v, want N", b, err)
		}
	})
	t.Run("pipelining/query sent with the startup packet never runs", func(t *testing.T) {
		r := dialRaw(t, p.addr)
		r.send(
			&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "alice", "database": f.db}},
			&pgproto3.Query{String: "INSERT INTO agents (name, tenant_id) VALUES ('it-pipelined', '" + f.tenants[dhSlug] + "')"},
		)
		msg, err := r.receive()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
			t.Fatalf("want AuthenticationSASL, got %#v", msg)
		}
		r.expectFatal("08P01")
		var n int
		if err := superuser(t, f).QueryRow(testCtx(t), "SELECT count(*) FROM agents WHERE name = 'it-pipelined'").Scan(&n); err != nil || n != 0 {
			t.Fatalf("pipelined insert ran: %d rows, %v", n, err)
		}
	})
	t.Run("pipelining/query sent before ReadyForQuery runs with the tenant context", func(t *testing.T) {
		r := dialRaw(t, p.addr)
		r.startup(map[string]string{"user": "alice", "database": f.db})
		r.scramLogin("alice-pw", &pgproto3.Query{String: "SELECT current_user, current_setting('vital.tenant_id', true), (SELECT count(*) FROM agents WHERE name = '" + f.platformPrivate + "')"})
		r.readyForQuery()
		rows, e := r.queryRows()
		if e != nil {
			t.Fatalf("pipelined query failed: %s %s", e.Code, e.Message)
		}
		if len(rows) != 1 || !strings.HasSuffix(rows[0][0], "_rw") || rows[0][1] != f.tenants[dhSlug] || rows[0][2] != "0" {
			t.Fatalf("pipelined query saw %v", rows)
		}
	})
	t.Run("still serving", func(t *testing.T) {
		conn := p.connect(t, "alice", "alice-pw")
		if err := conn.Ping(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	})
}

// TestSilentClientTimesOut checks that a client that sends nothing is told
// and dropped after the startup timeout.
func TestSilentClientTimesOut(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	cfg := f.config(t)
	cfg.Limits.StartupTimeout = time.Second
	p := startProxy(t, cfg)
	t.Run("sends nothing", func(t *testing.T) {
		r := dialRaw(t, p.addr)
		r.expectFatal("08P01")
	})
	t.Run("stops during authentication", func(t *testing.T) {
		r := dialRaw(t, p.addr)
		r.startup(map[string]string{"user": "alice", "database": f.db})
		r.expectFatal("08P01")
	})
	t.Run("others still served", func(t *testing.T) {
		if err := p.connect(t, "alice", "alice-pw").Ping(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	})
}

// TestCancelRequests checks that a cancel needs the session's own key.
func TestCancelRequests(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	p := startProxy(t, f.config(t))
	ctx := testCtx(t)

	victim := dialRaw(t, p.addr)
	victim.startup(map[string]string{"user": "alice", "database": f.db})
	victim.scramLogin("alice-pw")
	vkey := victim.readyForQuery()
	other := dialRaw(t, p.addr)
	other.startup(map[string]string{"user": "bob", "database": f.db})
	other.scramLogin("bob-pw")
	okey := other.readyForQuery()

	before := metricValue(t, p.srv.Gatherer(), "vitalproxy_cancel_requests_total", map[string]string{"result": "refused"})
	victim.send(&pgproto3.Query{String: "SELECT pg_sleep(3), 'done'"})
	waitActive(t, f, "pg_sleep(3)")
	wrong := append([]byte(nil), vkey.SecretKey...)
	wrong[3] ^= 0xff
	sendCancel(t, p.addr, vkey.ProcessID, okey.SecretKey) // another client's key
	sendCancel(t, p.addr, vkey.ProcessID, wrong)          // a wrong key
	// No live pid: real pids stay far below 1<<30.
	sendCancel(t, p.addr, vkey.ProcessID^1<<30, vkey.SecretKey)
	rows, e := victim.queryRows()
	if e != nil {
		t.Fatalf("victim's query was cancelled: %s %s", e.Code, e.Message)
	}
	if len(rows) != 1 || rows[0][1] != "done" {
		t.Fatalf("victim rows %v", rows)
	}
	after := metricValue(t, p.srv.Gatherer(), "vitalproxy_cancel_requests_total", map[string]string{"result": "refused"})
	if after-before != 2 {
		t.Errorf("refused cancels counted %v, want 2", after-before)
	}

	// The right key does cancel.
	victim.send(&pgproto3.Query{String: "SELECT pg_sleep(600)"})
	waitActive(t, f, "pg_sleep(600)")
	sendCancel(t, p.addr, vkey.ProcessID, vkey.SecretKey)
	_, e = victim.queryRows()
	if e == nil || e.Code != "57014" {
		t.Fatalf("want query_canceled, got %+v", e)
	}
	_ = ctx
}

// superuser returns a superuser connection to the fixture database.
func superuser(t testing.TB, f *fixture) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testCtx(t), f.c.URL(f.db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
