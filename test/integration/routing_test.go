package integration_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

// routingPatience bounds every wait of the routing test: the machine is
// shared with CI runs, so nothing is asserted on speed.
const routingPatience = 3 * time.Minute

// replicatedFixture is a fixture on a primary of its own with one
// streaming standby made after the fixture was built, so the standby has
// the schema, the tenant roles and the rows. Commits are synchronous
// (synchronous_standby_names = '*'): a commit the primary acknowledged has
// reached the standby's disk, so a failover loses none.
func replicatedFixture(t *testing.T) (*fixture, *pgtest.Cluster, *pgtest.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), routingPatience)
	defer cancel()
	p, err := pgtest.Start(ctx, pgtest.Options{Settings: []string{"synchronous_commit = on"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	f, err := buildFixture(ctx, p, "vt_rt_")
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	// The writer loop's table: the agents table caps a tenant's rows.
	for _, sql := range []string{
		"CREATE TABLE public.failover_writes (name text PRIMARY KEY, tenant_id uuid NOT NULL DEFAULT current_tenant_id())",
		"ALTER TABLE public.failover_writes ENABLE ROW LEVEL SECURITY",
		"ALTER TABLE public.failover_writes FORCE ROW LEVEL SECURITY",
		"CREATE POLICY tenant ON public.failover_writes USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id())",
		"ALTER TABLE public.failover_writes OWNER TO vital_owner",
		"REVOKE ALL ON public.failover_writes FROM PUBLIC",
		"GRANT SELECT ON public.failover_writes TO vital_tenant",
		"GRANT INSERT ON public.failover_writes TO vital_tenant_writer",
	} {
		if err := p.Exec(ctx, f.db, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	s, err := p.StartStandby(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	for _, sql := range []string{"ALTER SYSTEM SET synchronous_standby_names = '*'", "SELECT pg_reload_conf()"} {
		if err := p.Exec(ctx, "postgres", sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if err := p.WaitForReplay(ctx, s); err != nil {
		t.Fatal(err)
	}
	return f, p, s
}

// routingConfig is the fixture's config with the standby as a second
// upstream host and quick health checks.
func routingConfig(t *testing.T, f *fixture, standby *pgtest.Cluster) *config.Config {
	cfg := f.config(t)
	cfg.Upstream.Hosts = []string{net.JoinHostPort(standby.Host, strconv.Itoa(standby.Port))}
	cfg.Upstream.HealthInterval = 200 * time.Millisecond
	cfg.Upstream.HealthTimeout = 2 * time.Second
	cfg.Upstream.FailoverTimeout = 60 * time.Second
	cfg.Pool.QueueTimeout = 60 * time.Second
	return cfg
}

// whereAmI returns pg_is_in_recovery() of the backend serving a new
// session of user, with the session's tenant and how many of the agents
// own and foreign it sees.
func whereAmI(ctx context.Context, r *running, user, pw, own, foreign string) (recovery bool, tenant string, nOwn, nForeign int, err error) {
	conn, err := pgx.Connect(ctx, r.url(user, pw))
	if err != nil {
		return false, "", 0, 0, err
	}
	defer conn.Close(context.Background())
	err = conn.QueryRow(ctx, `SELECT pg_is_in_recovery(), current_tenant_id()::text,
		count(*) FILTER (WHERE name = $1), count(*) FILTER (WHERE name = $2) FROM agents`, own, foreign).
		Scan(&recovery, &tenant, &nOwn, &nForeign)
	return recovery, tenant, nOwn, nForeign, err
}

// pollRecovery polls new sessions of user until pg_is_in_recovery() is
// want.
func pollRecovery(t *testing.T, r *running, user, pw, own, foreign string, want bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), routingPatience)
	defer cancel()
	var last error
	for {
		got, _, _, _, err := whereAmI(ctx, r, user, pw, own, foreign)
		if err == nil && got == want {
			return
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("%s never served with pg_is_in_recovery() = %v (last error: %v)", user, want, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestRoutingPrimaryAndStandby: with a primary and a streaming standby, a
// read-only user's sessions land on the standby and see exactly its
// tenant's rows, a writer's on the primary; while the standby's replay is
// paused and it lags beyond replica.max_lag_bytes the read-only user is
// served by the primary, and back on the standby once replay resumes.
// Then the primary is stopped as a crash would and the standby promoted:
// a transaction-mode writer loop goes on writing on the new primary.
func TestRoutingPrimaryAndStandby(t *testing.T) {
	noLeaks(t)
	f, p, s := replicatedFixture(t)
	cfg := routingConfig(t, f, s)
	cfg.Replica.MaxLagBytes = 64 << 10
	cfg.Replica.MaxLag = 0
	cfg.Console.Database = consoleDB
	opsVerifier, err := auth.NewSCRAMVerifier("ops-pw")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Users = append(cfg.Users, config.User{Name: "ops", Password: config.Secret(opsVerifier), Console: config.ConsoleAdmin})
	r := startProxy(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), routingPatience)
	defer cancel()

	t.Run("SHOW UPSTREAMS", func(t *testing.T) {
		c, err := pgx.Connect(ctx, r.consoleURL("ops"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		roles := map[string]string{}
		for _, row := range consoleRows(t, c, "SHOW UPSTREAMS") {
			roles[row["host"]] = row["role"] + "/" + row["in_recovery"]
		}
		primary := net.JoinHostPort(p.Host, strconv.Itoa(p.Port))
		standby := net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
		if roles[primary] != "primary/f" || roles[standby] != "standby/t" || len(roles) != 2 {
			t.Errorf("SHOW UPSTREAMS: %v, want %s primary/f and %s standby/t", roles, primary, standby)
		}
	})

	t.Run("read-only user on the standby", func(t *testing.T) {
		pollRecovery(t, r, "rita", "rita-pw", f.dhPrivate, f.platformPrivate, true)
		rec, tenant, own, foreign, err := whereAmI(ctx, r, "rita", "rita-pw", f.dhPrivate, f.platformPrivate)
		if err != nil {
			t.Fatal(err)
		}
		if !rec || tenant != f.tenants[dhSlug] || own != 1 || foreign != 0 {
			t.Fatalf("rita: in recovery %v, tenant %s, own rows %d, foreign rows %d", rec, tenant, own, foreign)
		}
	})
	t.Run("writer on the primary", func(t *testing.T) {
		rec, tenant, own, foreign, err := whereAmI(ctx, r, "alice", "alice-pw", f.dhPrivate, f.platformPrivate)
		if err != nil {
			t.Fatal(err)
		}
		if rec || tenant != f.tenants[dhSlug] || own != 1 || foreign != 0 {
			t.Fatalf("alice: in recovery %v, tenant %s, own rows %d, foreign rows %d", rec, tenant, own, foreign)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		mfs, err := r.srv.Gatherer().Gather()
		if err != nil {
			t.Fatal(err)
		}
		up := 0
		for _, mf := range mfs {
			if mf.GetName() == "vitalproxy_upstream_up" {
				up = len(mf.GetMetric())
			}
		}
		if up == 0 {
			t.Fatal("vitalproxy_upstream_up is not exported")
		}
	})
	t.Run("lagging standby falls back to the primary", func(t *testing.T) {
		if err := s.Exec(ctx, "postgres", "SELECT pg_wal_replay_pause()"); err != nil {
			t.Fatal(err)
		}
		for _, sql := range []string{"CREATE TABLE filler (x text)", "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)"} {
			if err := p.Exec(ctx, "postgres", sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		pollRecovery(t, r, "rita", "rita-pw", f.dhPrivate, f.platformPrivate, false)
		// With replica.fallback: error the read-only user is refused.
		strict := routingConfig(t, f, s)
		strict.Replica.MaxLagBytes = cfg.Replica.MaxLagBytes
		strict.Replica.Fallback = config.FallbackError
		rs := startProxy(t, strict)
		_, _, _, _, err := whereAmI(ctx, rs, "rita", "rita-pw", f.dhPrivate, f.platformPrivate)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "53300" {
			t.Fatalf("rita with fallback error and a lagging standby: %v, want ERROR 53300", err)
		}
		t.Logf("fallback error: %s", pgErr.Message)
		if err := rs.stop(); err != nil {
			t.Fatal(err)
		}
		if err := s.Exec(ctx, "postgres", "SELECT pg_wal_replay_resume()"); err != nil {
			t.Fatal(err)
		}
		pollRecovery(t, r, "rita", "rita-pw", f.dhPrivate, f.platformPrivate, true)
	})
	if t.Failed() {
		return
	}
	t.Run("failover", func(t *testing.T) { testFailover(t, f, p, s, r) })
}

// writeResult is what the writer loop saw.
type writeResult struct {
	acked      []string // names of the rows whose INSERT was acknowledged
	failures   []error  // statements that failed
	inRecovery int      // acknowledged INSERTs that ran on a host in recovery
	// firstAfter is when the first write on the new primary was
	// acknowledged.
	firstAfter time.Time
}

// testFailover runs a transaction-mode writer loop through a second proxy,
// stops the primary as a crash would and promotes the standby.
func testFailover(t *testing.T, f *fixture, p, s *pgtest.Cluster, _ *running) {
	cfg := routingConfig(t, f, s)
	cfg.Pool.Mode = "transaction"
	cfg.Pool.MaxServerConns = 4
	cfg.Upstream.FailoverTimeout = 15 * time.Second
	cfg.Metrics.Listen = "127.0.0.1:0"
	r := startProxy(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), routingPatience)
	defer cancel()

	var (
		mu     sync.Mutex
		res    writeResult
		killAt time.Time
	)
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- writerLoop(ctx, r, f, s.Port, stop, &mu, &res, &killAt) }()

	waitAcked := func(n int) {
		t.Helper()
		for {
			mu.Lock()
			got := len(res.acked)
			mu.Unlock()
			if got >= n {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("the writer acknowledged %d writes, want %d", got, n)
			case err := <-done:
				t.Fatalf("the writer stopped: %v", err)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	waitAcked(20)
	mu.Lock()
	killAt = time.Now()
	before := len(res.acked)
	mu.Unlock()
	if err := p.StopImmediate(); err != nil {
		t.Fatal(err)
	}
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	promotedAt := time.Now()
	waitAcked(before + 20)
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("writer: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	pause := res.firstAfter.Sub(killAt)
	t.Logf("failover pause (primary stopped -> first acknowledged write on the new primary): %s (pg_ctl promote returned after %s); writes acknowledged %d, failed %d",
		pause.Round(time.Millisecond), promotedAt.Sub(killAt).Round(time.Millisecond), len(res.acked), len(res.failures))
	if res.firstAfter.IsZero() {
		t.Fatal("no write reached the new primary")
	}
	for _, err := range res.failures {
		t.Logf("failed write: %v", err)
	}
	if len(res.failures) > 1 {
		t.Errorf("%d writes failed, want at most the one in flight", len(res.failures))
	}
	if pause > cfg.Upstream.FailoverTimeout {
		t.Errorf("writes resumed after %s, beyond failover_timeout %s", pause, cfg.Upstream.FailoverTimeout)
	}
	if res.inRecovery != 0 {
		t.Errorf("%d writes ran on a host in recovery", res.inRecovery)
	}
	var found int
	err := pgxQueryRow(ctx, s.URL(f.db), "SELECT count(*) FROM public.failover_writes WHERE name = ANY($1) AND tenant_id = $2", res.acked, f.tenants[dhSlug]).Scan(&found)
	if err != nil {
		t.Fatal(err)
	}
	if found != len(res.acked) {
		t.Errorf("the new primary has %d of the %d acknowledged rows", found, len(res.acked))
	}
	// The administrative connection follows the primary: /readyz (a ping
	// and the schema check on it) answers 200 again with the first
	// primary gone.
	readyz := "http://" + r.srv.MetricsAddr().String() + "/readyz"
	eventually(t, "/readyz 200 after the failover", func() bool {
		code, _ := httpGet(t, readyz)
		return code == 200
	})

	// With no primary left, a writer waits failover_timeout, then gets
	// ERROR 53300.
	if err := s.StopImmediate(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = func() error {
		conn, err := pgx.Connect(ctx, r.url("alice", "alice-pw"))
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, "INSERT INTO failover_writes (name) VALUES ('it-failover-none')")
		return err
	}()
	waited := time.Since(start)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" {
		t.Fatalf("a write with no primary: %v, want ERROR 53300", err)
	}
	if waited < cfg.Upstream.FailoverTimeout/2 {
		t.Errorf("a write with no primary failed after %s, before failover_timeout %s", waited, cfg.Upstream.FailoverTimeout)
	}
	t.Logf("with no primary: %q after %s", pgErr.Message, waited.Round(time.Millisecond))
}

// writerLoop inserts rows of alice's tenant (failover_writes), one transaction each, until
// stop is closed, reconnecting when the proxy closed its connection.
func writerLoop(ctx context.Context, r *running, f *fixture, newPrimaryPort int, stop <-chan struct{}, mu *sync.Mutex, res *writeResult, killAt *time.Time) error {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if conn == nil || conn.IsClosed() {
			c, err := pgx.Connect(ctx, r.url("alice", "alice-pw"))
			if err != nil {
				if ctx.Err() != nil {
					return err
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
			conn = c
		}
		name := fmt.Sprintf("it-failover-%d", i)
		var rec bool
		var port int
		err := conn.QueryRow(ctx, "INSERT INTO failover_writes (name) VALUES ($1) RETURNING pg_is_in_recovery(), inet_server_port()",
			name).Scan(&rec, &port)
		mu.Lock()
		if err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "25006" {
				res.inRecovery++ // refused by a read-only host: routed to a standby
			}
			res.failures = append(res.failures, err)
		} else {
			res.acked = append(res.acked, name)
			if rec {
				res.inRecovery++
			}
			if port == newPrimaryPort && res.firstAfter.IsZero() {
				res.firstAfter = time.Now()
			}
		}
		mu.Unlock()
	}
}

// pgxQueryRow runs one query on a direct connection to url.
func pgxQueryRow(ctx context.Context, url, sql string, args ...any) rowScanner {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return errRow{err}
	}
	return closingRow{conn.QueryRow(ctx, sql, args...), conn}
}

type rowScanner interface{ Scan(dest ...any) error }

type errRow struct{ err error }

func (e errRow) Scan(...any) error { return e.err }

type closingRow struct {
	row  pgx.Row
	conn *pgx.Conn
}

func (c closingRow) Scan(dest ...any) error {
	defer c.conn.Close(context.Background())
	return c.row.Scan(dest...)
}

// TestRoutingPromotionEndsSessionMode: the standby is promoted while the
// primary still runs (a split brain the promoted host wins on its higher
// timeline). A session-mode writer bound to the former primary is ended
// with FATAL 57P01, and a new session writes on the new primary, never on
// the fenced one.
func TestRoutingPromotionEndsSessionMode(t *testing.T) {
	noLeaks(t)
	f, p, s := replicatedFixture(t)
	// The former primary would wait for its (promoted) synchronous
	// standby forever.
	for _, sql := range []string{"ALTER SYSTEM RESET synchronous_standby_names", "SELECT pg_reload_conf()"} {
		if err := p.Exec(context.Background(), "postgres", sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	r := startProxy(t, routingConfig(t, f, s))
	ctx, cancel := context.WithTimeout(context.Background(), routingPatience)
	defer cancel()
	conn := r.connect(t, "alice", "alice-pw")
	var port int
	if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
		t.Fatal(err)
	}
	if port != p.Port {
		t.Fatalf("alice's session is on port %d, want the primary's %d", port, p.Port)
	}
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	// The session is ended once the checker elects the promoted host.
	var err error
	for err == nil {
		select {
		case <-ctx.Done():
			t.Fatal("alice's session on the former primary was not ended")
		case <-time.After(100 * time.Millisecond):
		}
		_, err = conn.Exec(ctx, "SELECT 1")
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || pgErr.Severity != "FATAL" {
		t.Fatalf("alice's session ended with %v, want FATAL 57P01", err)
	}
	t.Logf("session on the former primary: %s %s: %s", pgErr.Severity, pgErr.Code, pgErr.Message)
	again := r.connect(t, "alice", "alice-pw")
	var rec bool
	if err := again.QueryRow(ctx, "INSERT INTO failover_writes (name) VALUES ('it-promoted') RETURNING pg_is_in_recovery(), inet_server_port()").Scan(&rec, &port); err != nil {
		t.Fatal(err)
	}
	if rec || port != s.Port {
		t.Fatalf("a new session wrote on port %d (in recovery %v), want the new primary's %d", port, rec, s.Port)
	}
	var n int
	if err := pgxQueryRow(ctx, p.URL(f.db), "SELECT count(*) FROM public.failover_writes WHERE name = 'it-promoted'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatal("the write reached the fenced former primary")
	}
}
