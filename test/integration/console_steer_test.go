package integration_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/proxy"
)

// clientIDs returns the ids of the tenant's clients in SHOW CLIENTS.
func clientIDs(t *testing.T, c *pgx.Conn, tenant string) []string {
	t.Helper()
	var ids []string
	for _, r := range consoleRows(t, c, "SHOW CLIENTS WHERE tenant = '"+tenant+"'") {
		ids = append(ids, r["id"])
	}
	return ids
}

// serversOf counts the tenant's rows in SHOW SERVERS.
func serversOf(t *testing.T, c *pgx.Conn, tenant string) int {
	t.Helper()
	return len(consoleRows(t, c, "SHOW SERVERS WHERE tenant = '"+tenant+"'"))
}

// readFatal reads what the proxy sent an idle client without it asking
// and checks that it is a 57P01 FATAL saying an operator ended the session.
func readFatal(t *testing.T, c *pgx.Conn) {
	t.Helper()
	nc := c.PgConn().Conn()
	_ = nc.SetReadDeadline(time.Now().Add(time.Minute))
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := nc.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	s := string(got)
	if len(got) == 0 || got[0] != 'E' || !strings.Contains(s, "FATAL") || !strings.Contains(s, "C57P01") || !strings.Contains(s, "an operator ended this session") {
		t.Fatalf("the killed client was told %q, want a 57P01 FATAL naming the operator", s)
	}
}

func TestConsoleKillTenant(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			noLeaks(t)
			cfg := consoleConfig(t)
			cfg.Pool.Mode = mode
			p := startProxy(t, cfg)
			a1 := p.connect(t, "alice", "alice-pw")
			a2 := p.connect(t, "alice", "alice-pw")
			b := p.connect(t, "bob", "bob-pw")
			for _, c := range []*pgx.Conn{a1, a2, b} {
				if _, err := c.Exec(testCtx(t), "SELECT 1"); err != nil {
					t.Fatal(err)
				}
			}
			c := connectURL(t, p.consoleURL("ops"))
			if n := len(clientIDs(t, c, dhSlug)); n != 2 {
				t.Fatalf("%d clients of %s before KILL TENANT, want 2", n, dhSlug)
			}
			if serversOf(t, c, dhSlug) == 0 {
				t.Fatalf("no server connection of %s before KILL TENANT", dhSlug)
			}
			// Only an unbound admin, or one bound to the tenant, may.
			w := connectURL(t, p.consoleURL("watcher"))
			if _, err := w.Exec(testCtx(t), "KILL TENANT "+dhSlug); sqlstate(err) != "42501" {
				t.Fatalf("stats KILL TENANT: %v", err)
			}
			dh := connectURL(t, p.consoleURL("dhops"))
			if _, err := dh.Exec(testCtx(t), "KILL TENANT "+platformSlug); sqlstate(err) != "42501" {
				t.Fatalf("a bound user killed another tenant: %v", err)
			}
			if _, err := c.Exec(testCtx(t), "KILL TENANT nope"); sqlstate(err) != "22023" {
				t.Fatalf("KILL TENANT of an unknown tenant: %v", err)
			}

			if _, err := c.Exec(testCtx(t), "KILL TENANT "+dhSlug); err != nil {
				t.Fatalf("KILL TENANT: %v", err)
			}
			readFatal(t, a1)
			if _, err := a2.Exec(testCtx(t), "SELECT 1"); err == nil {
				t.Fatal("a killed client still runs queries")
			}
			if _, err := b.Exec(testCtx(t), "SELECT 1"); err != nil {
				t.Fatalf("the other tenant's client was hurt: %v", err)
			}
			eventually(t, "the tenant's clients and server connections gone", func() bool {
				return len(clientIDs(t, c, dhSlug)) == 0 && serversOf(t, c, dhSlug) == 0
			})
			if serversOf(t, c, platformSlug) == 0 {
				t.Fatal("the other tenant's server connection was closed")
			}
			// The tenant's new clients are welcome.
			a3 := p.connect(t, "alice", "alice-pw")
			if _, err := a3.Exec(testCtx(t), "SELECT 1"); err != nil {
				t.Fatalf("a new client after KILL TENANT: %v", err)
			}
			if _, err := c.Exec(testCtx(t), "SELECT 1"); err != nil {
				t.Fatalf("the console session after KILL TENANT: %v", err)
			}
		})
	}
}

func TestConsoleKillAll(t *testing.T) {
	noLeaks(t)
	p := startProxy(t, consoleConfig(t))
	a := p.connect(t, "alice", "alice-pw")
	b := p.connect(t, "bob", "bob-pw")
	c := connectURL(t, p.consoleURL("ops"))
	other := connectURL(t, p.consoleURL("ops"))
	if _, err := c.Exec(testCtx(t), "KILL"); sqlstate(err) != "42601" {
		t.Fatalf("a plain KILL: %v", err)
	}
	for _, user := range []string{"watcher", "dhops"} {
		u := connectURL(t, p.consoleURL(user))
		if _, err := u.Exec(testCtx(t), "KILL ALL"); sqlstate(err) != "42501" {
			t.Fatalf("%s KILL ALL: %v", user, err)
		}
	}
	if _, err := a.Exec(testCtx(t), "SELECT 1"); err != nil {
		t.Fatalf("a refused KILL ALL hurt a client: %v", err)
	}
	if _, err := c.Exec(testCtx(t), "KILL ALL"); err != nil {
		t.Fatalf("KILL ALL: %v", err)
	}
	readFatal(t, a)
	if _, err := b.Exec(testCtx(t), "SELECT 1"); err == nil {
		t.Fatal("a client survived KILL ALL")
	}
	eventually(t, "every tenant client gone", func() bool {
		for _, r := range consoleRows(t, c, "SHOW CLIENTS") {
			if r["console"] == "" {
				return false
			}
		}
		return true
	})
	// Console sessions are not ended.
	if _, err := other.Exec(testCtx(t), "SHOW VERSION"); err != nil {
		t.Fatalf("another console session after KILL ALL: %v", err)
	}
}

func TestConsoleCancelClient(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			noLeaks(t)
			cfg := consoleConfig(t)
			cfg.Pool.Mode = mode
			p := startProxy(t, cfg)
			a := p.connect(t, "alice", "alice-pw")
			c := connectURL(t, p.consoleURL("ops"))
			ids := clientIDs(t, c, dhSlug)
			if len(ids) != 1 {
				t.Fatalf("clients of %s: %v", dhSlug, ids)
			}
			if _, err := connectURL(t, p.consoleURL("watcher")).Exec(testCtx(t), "CANCEL CLIENT "+ids[0]); sqlstate(err) != "42501" {
				t.Fatalf("stats CANCEL CLIENT: %v", err)
			}
			if _, err := connectURL(t, p.consoleURL("dhops")).Exec(testCtx(t), "CANCEL CLIENT nope"); sqlstate(err) != "22023" {
				t.Fatalf("CANCEL CLIENT of no client: %v", err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := a.Exec(context.Background(), "SELECT pg_sleep(60)")
				done <- err
			}()
			// The query may not have reached the server yet: cancel again
			// until it ends.
			var err error
		wait:
			for {
				if _, cerr := c.Exec(testCtx(t), "CANCEL CLIENT "+ids[0]); cerr != nil {
					t.Fatalf("CANCEL CLIENT: %v", cerr)
				}
				select {
				case err = <-done:
					break wait
				case <-time.After(500 * time.Millisecond):
				}
			}
			if sqlstate(err) != "57014" {
				t.Fatalf("the cancelled query: %v, want 57014", err)
			}
			var one int
			if err := a.QueryRow(testCtx(t), "SELECT 1").Scan(&one); err != nil || one != 1 {
				t.Fatalf("the client's next query: %d %v", one, err)
			}
		})
	}
}

func TestConsoleReconnectTenant(t *testing.T) {
	noLeaks(t)
	cfg := consoleConfig(t)
	cfg.Pool.Mode = "transaction"
	p := startProxy(t, cfg)
	a := p.connect(t, "alice", "alice-pw")
	b := p.connect(t, "bob", "bob-pw")
	pid := func(c *pgx.Conn) uint32 {
		t.Helper()
		var n uint32
		if err := c.QueryRow(testCtx(t), "SELECT pg_backend_pid()").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	aPID, bPID := pid(a), pid(b)
	if again := pid(a); again != aPID {
		t.Skipf("the pool did not reuse the idle backend (%d, then %d)", aPID, again)
	}
	c := connectURL(t, p.consoleURL("ops"))
	if _, err := connectURL(t, p.consoleURL("watcher")).Exec(testCtx(t), "RECONNECT"); sqlstate(err) != "42501" {
		t.Fatalf("stats RECONNECT: %v", err)
	}
	if _, err := connectURL(t, p.consoleURL("dhops")).Exec(testCtx(t), "RECONNECT TENANT "+platformSlug); sqlstate(err) != "42501" {
		t.Fatalf("a bound user's RECONNECT of another tenant: %v", err)
	}
	var notice string
	cc, err := pgx.ParseConfig(p.consoleURL("ops"))
	if err != nil {
		t.Fatal(err)
	}
	cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notice = n.Message }
	rc, err := pgx.ConnectConfig(testCtx(t), cc)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(context.Background())
	if _, err := rc.Exec(testCtx(t), "RECONNECT TENANT "+dhSlug); err != nil || !strings.Contains(notice, "1 idle server connection(s) closed") {
		t.Fatalf("RECONNECT TENANT: %v %q", err, notice)
	}
	// The client keeps its session; its next transaction runs on a new
	// backend. The other tenant's backend stays.
	if n := pid(a); n == aPID {
		t.Fatalf("after RECONNECT TENANT the client still runs on backend %d", n)
	}
	if n := pid(b); n != bPID {
		t.Fatalf("the other tenant's backend changed: %d, then %d", bPID, n)
	}
	if _, err := c.Exec(testCtx(t), "RECONNECT"); err != nil {
		t.Fatalf("RECONNECT: %v", err)
	}
	if n := pid(b); n == bPID {
		t.Fatalf("after RECONNECT the other tenant still runs on backend %d", n)
	}
}

// runProxy runs a proxy in-process, as startProxy does, and returns what
// Run returned on a channel.
func runProxy(t *testing.T, cfg *config.Config) (*running, <-chan error) {
	t.Helper()
	srv, err := proxy.New(cfg, testLogger(t))
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	returned := make(chan error, 1)
	go func() {
		err := srv.Run(ctx)
		errc <- err
		returned <- err
	}()
	select {
	case <-srv.Ready():
	case err := <-errc:
		cancel()
		t.Fatalf("proxy did not start: %v", err)
	case <-time.After(2 * time.Minute):
		cancel()
		t.Fatal("proxy did not become ready")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-errc:
		case <-time.After(2 * time.Minute):
			t.Error("proxy did not stop")
		}
	})
	ta := srv.Addr().(*net.TCPAddr)
	return &running{srv: srv, cfg: cfg, addr: ta.String(), host: ta.IP.String(), port: ta.Port,
		stop: func() error { return errors.New("stopped by the test's cleanup") }}, returned
}

// shutdown runs SHUTDOWN [WAIT] on c; the session may be closed before
// the answer arrives once nothing else is left to drain.
func shutdown(t *testing.T, c *pgx.Conn, cmd string) {
	t.Helper()
	_, err := c.Exec(testCtx(t), cmd)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		t.Fatalf("%s: %v", cmd, err)
	}
}

func TestConsoleShutdown(t *testing.T) {
	noLeaks(t)
	cfg := consoleConfig(t)
	cfg.Limits.ShutdownTimeout = 5 * time.Minute
	p, returned := runProxy(t, cfg)
	alice := p.connect(t, "alice", "alice-pw")
	for _, user := range []string{"watcher", "dhops"} {
		if _, err := connectURL(t, p.consoleURL(user)).Exec(testCtx(t), "SHUTDOWN"); sqlstate(err) != "42501" {
			t.Fatalf("%s SHUTDOWN: %v", user, err)
		}
	}
	c := connectURL(t, p.consoleURL("ops"))
	shutdown(t, c, "SHUTDOWN")
	eventually(t, "the proxy draining", func() bool {
		return tryConnect(testCtx(t), p.url("bob", "bob-pw")) != nil
	})
	eventually(t, "a second SHUTDOWN refused", func() bool {
		_, err := c.Exec(testCtx(t), "SHUTDOWN")
		return sqlstate(err) == "55000"
	})
	// As after SIGTERM, the open session finishes its work.
	if _, err := alice.Exec(testCtx(t), "SELECT 1"); err != nil {
		t.Fatalf("a client while draining: %v", err)
	}
	select {
	case err := <-returned:
		t.Fatalf("Run returned while a client was open: %v", err)
	default:
	}
	alice.Close(testCtx(t))
	select {
	case err := <-returned:
		if err != nil {
			t.Fatalf("Run after SHUTDOWN: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Run did not return after SHUTDOWN")
	}
}

func TestConsoleShutdownWait(t *testing.T) {
	noLeaks(t)
	cfg := consoleConfig(t)
	cfg.Limits.ShutdownTimeout = 200 * time.Millisecond
	p, returned := runProxy(t, cfg)
	alice := p.connect(t, "alice", "alice-pw")
	if _, err := connectURL(t, p.consoleURL("watcher")).Exec(testCtx(t), "SHUTDOWN WAIT"); sqlstate(err) != "42501" {
		t.Fatalf("stats SHUTDOWN WAIT: %v", err)
	}
	c := connectURL(t, p.consoleURL("ops"))
	shutdown(t, c, "SHUTDOWN WAIT")
	eventually(t, "the proxy draining", func() bool {
		return tryConnect(testCtx(t), p.url("bob", "bob-pw")) != nil
	})
	// Well past limits.shutdown_timeout the client is still served.
	time.Sleep(2 * time.Second)
	for i := 0; i < 3; i++ {
		if _, err := alice.Exec(testCtx(t), fmt.Sprintf("SELECT %d", i)); err != nil {
			t.Fatalf("SHUTDOWN WAIT did not wait for the client: %v", err)
		}
	}
	select {
	case err := <-returned:
		t.Fatalf("Run returned while a client was open: %v", err)
	default:
	}
	alice.Close(testCtx(t))
	select {
	case err := <-returned:
		if err != nil {
			t.Fatalf("Run after SHUTDOWN WAIT: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Run did not return once the client left")
	}
}

func TestConsoleSetTenantMaxClientConns(t *testing.T) {
	noLeaks(t)
	p := startProxy(t, consoleConfig(t))
	p.connect(t, "alice", "alice-pw")
	c := connectURL(t, p.consoleURL("ops"))
	if _, err := connectURL(t, p.consoleURL("watcher")).Exec(testCtx(t), "SET TENANT "+dhSlug+" max_client_conns = 1"); sqlstate(err) != "42501" {
		t.Fatalf("stats SET TENANT: %v", err)
	}
	if _, err := c.Exec(testCtx(t), "SET TENANT "+dhSlug+" max_client_conns = 1"); err != nil {
		t.Fatal(err)
	}
	if r := consoleRows(t, c, "SHOW TENANTS WHERE tenant = '"+dhSlug+"'"); len(r) != 1 || r[0]["max_client_conns"] != "1" {
		t.Fatalf("SHOW TENANTS after SET TENANT max_client_conns: %v", r)
	}
	if err := tryConnect(testCtx(t), p.url("alice", "alice-pw")); sqlstate(err) != "53300" {
		t.Fatalf("a client beyond the tenant's new cap: %v", err)
	}
	if err := tryConnect(testCtx(t), p.url("bob", "bob-pw")); err != nil {
		t.Fatalf("another tenant's client: %v", err)
	}
	if _, err := c.Exec(testCtx(t), "SET TENANT "+dhSlug+" max_client_conns = 0"); err != nil {
		t.Fatal(err)
	}
	if err := tryConnect(testCtx(t), p.url("alice", "alice-pw")); err != nil {
		t.Fatalf("after SET TENANT max_client_conns = 0: %v", err)
	}
}
