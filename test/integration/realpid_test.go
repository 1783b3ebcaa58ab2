package integration_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
)

// cancellingConn opens a pgx connection through the proxy whose context
// cancellation sends a CancelRequest (with the key the proxy gave it)
// instead of closing the connection, closed when the test ends.
func cancellingConn(t *testing.T, r *running, user, password string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(r.url(user, password))
	if err != nil {
		t.Fatal(err)
	}
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: time.Minute}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// goExec runs sql on conn in the background; the channel gets its error.
func goExec(ctx context.Context, conn *pgx.Conn, sql string) <-chan error {
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, sql)
		errc <- err
	}()
	return errc
}

// waitCancelled waits for a goExec result and checks it is query_canceled.
func waitCancelled(t *testing.T, errc <-chan error) {
	t.Helper()
	select {
	case err := <-errc:
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
			t.Fatalf("want query_canceled (57014), got %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the statement was not cancelled")
	}
}

// waitDone waits for a goExec result and checks the statement completed.
func waitDone(t *testing.T, errc <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("%s: the statement did not complete: %v", what, err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s: the statement did not complete", what)
	}
}

// TestSessionModeRealPIDs: in session mode a client is told its backend's
// real pid (with the proxy's own cancel secret), so that what its driver
// knows agrees with pg_backend_pid(), pg_stat_activity and
// pg_terminate_backend, while cancel requests still need the proxy's key.
func TestSessionModeRealPIDs(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	r := startProxy(t, f.config(t))
	ctx := testCtx(t)

	t.Run("the driver's pid is the backend's", func(t *testing.T) {
		for _, tc := range []struct{ user, password string }{
			{"alice", "alice-pw"},
			{"rita", "rita-pw"}, // read-only role
			{"bob", "bob-pw"},   // another tenant
			{"multi@" + dhSlug, "multi-pw"},
		} {
			t.Run(tc.user, func(t *testing.T) {
				app := "realpid-" + tc.user
				conn := connectURL(t, r.url(tc.user, tc.password, "application_name="+app))
				pid := conn.PgConn().PID()
				if got := backendPID(t, conn); uint32(got) != pid {
					t.Fatalf("BackendKeyData pid %d, pg_backend_pid() %d", pid, got)
				}
				var seen uint32
				if err := conn.QueryRow(ctx, "SELECT pid FROM public.pg_stat_activity WHERE application_name = $1", app).Scan(&seen); err != nil {
					t.Fatalf("own row in pg_stat_activity: %v", err)
				}
				if seen != pid {
					t.Fatalf("pg_stat_activity pid %d, the driver's %d", seen, pid)
				}
			})
		}
	})

	t.Run("pg_terminate_backend with the pid the driver knows", func(t *testing.T) {
		victim := connectURL(t, r.url("alice", "alice-pw"))
		killer := connectURL(t, r.url("alice", "alice-pw"))
		var ok bool
		if err := killer.QueryRow(ctx, "SELECT pg_terminate_backend($1)", victim.PgConn().PID()).Scan(&ok); err != nil || !ok {
			t.Fatalf("pg_terminate_backend: %v %v", ok, err)
		}
		eventually(t, "the terminated client notices", func() bool {
			return victim.Ping(ctx) != nil
		})
		if err := killer.Ping(ctx); err != nil {
			t.Fatalf("the terminating client: %v", err)
		}
	})

	t.Run("pgx cancels a statement on context cancellation", func(t *testing.T) {
		conn := cancellingConn(t, r, "alice", "alice-pw")
		pid := conn.PgConn().PID()
		qctx, cancel := context.WithCancel(ctx)
		defer cancel()
		errc := goExec(qctx, conn, "SELECT pg_sleep(30) /* realpid-ctx */")
		waitActive(t, f, "realpid-ctx")
		cancel()
		waitCancelled(t, errc)
		if err := conn.Ping(ctx); err != nil {
			t.Fatalf("the connection after the cancel: %v", err)
		}
		if got := backendPID(t, conn); uint32(got) != pid {
			t.Fatalf("pg_backend_pid() %d after the cancel, want %d", got, pid)
		}
	})

	t.Run("a forged key cancels nothing", func(t *testing.T) {
		victim := connectURL(t, r.url("alice", "alice-pw"))
		other := connectURL(t, r.url("alice", "alice-pw")) // same tenant and role
		pid, secret := victim.PgConn().PID(), victim.PgConn().SecretKey()
		flip := func(i int) []byte {
			b := append([]byte(nil), secret...)
			b[i] ^= 0xff
			return b
		}
		upstream := net.JoinHostPort(f.c.Host, strconv.Itoa(f.c.Port))
		forgeries := []struct {
			name   string
			addr   string
			pid    uint32
			secret []byte
		}{
			{"wrong secret, first byte", r.addr, pid, flip(0)},
			{"wrong secret, last byte", r.addr, pid, flip(len(secret) - 1)},
			{"another client's secret", r.addr, pid, other.PgConn().SecretKey()},
			{"another client's pid", r.addr, other.PgConn().PID(), secret},
			// The secret is the proxy's own: PostgreSQL does not know it.
			{"the right key straight to PostgreSQL", upstream, pid, secret},
		}
		refused := func() float64 {
			return metricValue(t, r.srv.Gatherer(), "vitalproxy_cancel_requests_total", map[string]string{"result": "refused"})
		}
		before := refused()
		errc := goExec(ctx, victim, "SELECT pg_sleep(4) /* realpid-forged */")
		waitActive(t, f, "realpid-forged")
		for _, fg := range forgeries {
			// sendCancel also checks that the answer is the same for all:
			// nothing, then the connection closed.
			sendCancel(t, fg.addr, fg.pid, fg.secret)
		}
		waitDone(t, errc, "forged cancels")
		if got := refused() - before; got != 4 {
			t.Errorf("refused cancel requests: %v, want 4", got)
		}
		// The victim's own key still works.
		errc = goExec(ctx, victim, "SELECT pg_sleep(600) /* realpid-own-key */")
		waitActive(t, f, "realpid-own-key")
		sendCancel(t, r.addr, pid, secret)
		waitCancelled(t, errc)
	})

	t.Run("an earlier client's key does not reach the backend's next client", func(t *testing.T) {
		// A proxy of its own: its pool holds only the backend under test.
		p := startProxy(t, f.config(t))
		first := connectURL(t, p.url("alice", "alice-pw"))
		oldPID, oldSecret := first.PgConn().PID(), append([]byte(nil), first.PgConn().SecretKey()...)
		base := (float64Collector{p}).value(t)
		if err := first.Close(ctx); err != nil {
			t.Fatal(err)
		}
		waitResetValue(t, p, base+1)

		second := cancellingConn(t, p, "alice", "alice-pw")
		if second.PgConn().PID() != oldPID {
			t.Fatalf("the next client got pid %d, want the reused backend's %d", second.PgConn().PID(), oldPID)
		}
		if string(second.PgConn().SecretKey()) == string(oldSecret) {
			t.Fatal("the next client got the earlier client's secret")
		}
		errc := goExec(ctx, second, "SELECT pg_sleep(4) /* realpid-reused */")
		waitActive(t, f, "realpid-reused")
		sendCancel(t, p.addr, oldPID, oldSecret)
		waitDone(t, errc, "the earlier client's key")
		if got := metricValue(t, p.srv.Gatherer(), "vitalproxy_cancel_requests_total", map[string]string{"result": "refused"}); got != 1 {
			t.Errorf("refused cancel requests: %v, want 1", got)
		}
		// The next client's own key does cancel.
		qctx, cancel := context.WithCancel(ctx)
		defer cancel()
		errc = goExec(qctx, second, "SELECT pg_sleep(600) /* realpid-reused-own */")
		waitActive(t, f, "realpid-reused-own")
		cancel()
		waitCancelled(t, errc)
	})
}

// TestNotificationPIDs: a NotificationResponse carries the pid of the
// backend that ran the NOTIFY, which is what pg_backend_pid() told the
// notifying session and, in session mode, the pid its driver was given.
func TestNotificationPIDs(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	sess := startProxy(t, f.config(t))
	tx := startProxy(t, txConfig(t, f, 2))
	ctx := testCtx(t)

	listener := sess.connect(t, "alice", "alice-pw")
	if _, err := listener.Exec(ctx, "LISTEN pid_chan"); err != nil {
		t.Fatal(err)
	}
	sessionNotifier := func(conn *pgx.Conn) func(t *testing.T, payload string) uint32 {
		return func(t *testing.T, payload string) uint32 {
			t.Helper()
			pid := backendPID(t, conn)
			if uint32(pid) != conn.PgConn().PID() {
				t.Fatalf("notifier: pg_backend_pid() %d, driver's pid %d", pid, conn.PgConn().PID())
			}
			if _, err := conn.Exec(ctx, "SELECT pg_notify('pid_chan', $1)", payload); err != nil {
				t.Fatal(err)
			}
			return uint32(pid)
		}
	}
	txClient := connectURL(t, tx.url("alice", "alice-pw"))
	tests := []struct {
		name string
		// notify sends payload on pid_chan and returns the pid the
		// notifying session saw as its own.
		notify func(t *testing.T, payload string) uint32
	}{
		{"the listener itself", sessionNotifier(listener)},
		{"another session-mode client of the tenant", sessionNotifier(sess.connect(t, "rita", "rita-pw"))},
		{"a transaction-mode client", func(t *testing.T, payload string) uint32 {
			// Whichever backend runs the statement sends the notification.
			var pid uint32
			if err := txClient.QueryRow(ctx, "SELECT pg_backend_pid() FROM (SELECT pg_notify('pid_chan', $1)) n", payload).Scan(&pid); err != nil {
				t.Fatal(err)
			}
			return pid
		}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			payload := fmt.Sprintf("n%d", i)
			want := tc.notify(t, payload)
			ch, got, pid := nextNotification(t, ctx, listener)
			if ch != "pid_chan" || got != payload {
				t.Fatalf("got %q on %q, want %q on pid_chan", got, ch, payload)
			}
			if pid != want {
				t.Fatalf("notification pid %d, the notifier's pg_backend_pid() %d", pid, want)
			}
		})
	}
}
