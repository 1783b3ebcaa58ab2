package integration_test

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// nextNotification waits for conn's next notification.
func nextNotification(t *testing.T, ctx context.Context, conn *pgx.Conn) (channel, payload string, pid uint32) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := conn.WaitForNotification(wctx)
	if err != nil {
		t.Fatalf("waiting for a notification: %v", err)
	}
	return n.Channel, n.Payload, n.PID
}

// TestNotifyWithinTenant: LISTEN/NOTIFY through the proxy works among one
// tenant's clients (other users of the tenant, another proxy in
// transaction mode, pg_notify with parameters, quoted names, UNLISTEN),
// with channel names and process ids as the client knows them, while
// another tenant's notifications on the same names never arrive.
func TestNotifyWithinTenant(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	sess := startProxy(t, f.config(t))
	tx := startProxy(t, txConfig(t, f, 4))
	ctx := testCtx(t)

	listener := sess.connect(t, "alice", "alice-pw")
	for _, stmt := range []string{"LISTEN orders", `LISTEN "Mixed Case"`} {
		if _, err := listener.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	run := func(conn *pgx.Conn, sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	expect := func(what, wantChannel, wantPayload string) uint32 {
		t.Helper()
		ch, payload, pid := nextNotification(t, ctx, listener)
		if ch != wantChannel || payload != wantPayload {
			t.Fatalf("%s: got %q on %q, want %q on %q", what, payload, ch, wantPayload, wantChannel)
		}
		return pid
	}

	// Another tenant on the same names, first: were it delivered, it
	// would arrive before what follows.
	other := sess.connect(t, "bob", "bob-pw")
	run(other, "NOTIFY orders, 'from-bob'")
	run(other, "SELECT pg_notify($1, $2)", "Mixed Case", "from-bob")

	rita := sess.connect(t, "rita", "rita-pw") // read-only user of the same tenant
	run(rita, "NOTIFY orders, 'from-rita'")
	expect("NOTIFY from another user of the tenant", "orders", "from-rita")

	txClient := connectURL(t, tx.url("alice", "alice-pw"))
	run(txClient, "SELECT pg_notify($1, $2)", "Mixed Case", "from-transaction-mode")
	expect("pg_notify from a transaction-mode proxy", "Mixed Case", "from-transaction-mode")

	run(listener, "NOTIFY ORDERS, 'self'")
	if pid := expect("own NOTIFY", "orders", "self"); pid != listener.PgConn().PID() {
		t.Fatalf("own notification carries pid %d, want the pid the proxy gave the client (%d)", pid, listener.PgConn().PID())
	}

	run(listener, "UNLISTEN orders")
	run(rita, "NOTIFY orders, 'after-unlisten'")
	run(rita, `NOTIFY "Mixed Case", 'still-listening'`)
	expect("after UNLISTEN", "Mixed Case", "still-listening")

	// A channel named out of the proxy's sight (dynamic SQL) is not in the
	// namespace: what is sent on it is kept from the client, and counted.
	raw := sess.connect(t, "alice", "alice-pw")
	run(raw, "DO $$BEGIN EXECUTE 'LISTEN raw_chan'; END$$")
	run(raw, "LISTEN own_chan")
	run(other, "DO $$BEGIN EXECUTE 'NOTIFY raw_chan, ''around the proxy'''; END$$")
	run(raw, "NOTIFY own_chan, 'after'")
	if ch, payload, _ := nextNotification(t, ctx, raw); ch != "own_chan" || payload != "after" {
		t.Fatalf("got %q on %q, want only the namespaced notification", payload, ch)
	}
	raw.Close(ctx)
	eventually(t, "the dropped notification is counted", func() bool {
		return metricValue(t, sess.srv.Gatherer(), "vitalproxy_notifications_dropped_total", map[string]string{"tenant": dhSlug}) == 1
	})

	// psql prints notifications with their channel and pid.
	env := append(os.Environ(), "PGPASSWORD=alice-pw", "PGSSLMODE=disable", "LC_ALL=C")
	cmd := exec.CommandContext(ctx, clientTool(t, f.c.BinDir, "psql"), "-X", "-h", sess.host, "-p", strconv.Itoa(sess.port),
		"-U", "alice", "-d", f.db, "-c", "LISTEN psql_chan", "-c", "NOTIFY psql_chan, 'hi'")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `Asynchronous notification "psql_chan" with payload "hi" received from server process with PID`) {
		t.Fatalf("psql did not report its notification:\n%s", out)
	}
}
