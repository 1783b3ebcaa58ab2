package integration_test

import (
	"context"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/config"
)

// consoleDB is the console database's name in these tests.
const consoleDB = "vitalproxy"

// consoleConfig is the fixture's configuration with three console users:
// ops (admin), watcher (stats) and dhops (admin, bound to the
// digital-health tenant).
func consoleConfig(t *testing.T) *config.Config {
	t.Helper()
	f := getFixture(t)
	cfg := f.config(t)
	cfg.Console.Database = consoleDB
	for _, u := range []config.User{
		{Name: "ops", Console: config.ConsoleAdmin},
		{Name: "watcher", Console: config.ConsoleStats},
		{Name: "dhops", Console: config.ConsoleAdmin, Tenants: []string{dhSlug}},
	} {
		v, err := auth.NewSCRAMVerifier(u.Name + "-pw")
		if err != nil {
			t.Fatal(err)
		}
		u.Password = config.Secret(v)
		cfg.Users = append(cfg.Users, u)
	}
	return cfg
}

// consoleURL is a console connection URL for user.
func (r *running) consoleURL(user string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, user+"-pw"), Host: r.addr,
		Path: "/" + consoleDB, RawQuery: "sslmode=disable"}
	return u.String()
}

// rows runs a console query and returns its rows as maps of column name to
// value.
func consoleRows(t *testing.T, c *pgx.Conn, q string) []map[string]string {
	t.Helper()
	rows, err := c.Query(testCtx(t), q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	var out []map[string]string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for i, fd := range rows.FieldDescriptions() {
			m[fd.Name], _ = vals[i].(string)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return out
}

// sqlstate returns err's SQLSTATE, or "".
func sqlstate(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func TestConsolePsql(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	cfg := consoleConfig(t)
	// The one client slot goes to alice; the console is exempt.
	cfg.Limits.MaxClientConns = 1
	p := startProxy(t, cfg)
	p.connect(t, "alice", "alice-pw")
	if err := tryConnect(testCtx(t), p.url("bob", "bob-pw")); err == nil {
		t.Fatal("a second tenant client got past limits.max_client_conns = 1")
	}

	psql := func(t *testing.T, user, cmd string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		c := exec.CommandContext(ctx, clientTool(t, f.c.BinDir, "psql"), "-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1",
			"-h", p.host, "-p", strconv.Itoa(p.port), "-U", user, "-d", consoleDB, "-c", cmd)
		c.Env = append(os.Environ(), "PGPASSWORD="+user+"-pw", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=60", "LC_ALL=C",
			"PGOPTIONS=", "PGAPPNAME=console-test")
		out, err := c.CombinedOutput()
		return string(out), err
	}
	out, err := psql(t, "ops", "SHOW TENANTS")
	if err != nil {
		t.Fatalf("psql SHOW TENANTS: %v\n%s", err, out)
	}
	var dh []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if cols := strings.Split(line, "|"); cols[0] == dhSlug {
			dh = cols
		}
	}
	// tenant, id, type, status, pool_mode, max_server_conns,
	// max_client_conns, clients, ...
	if len(dh) < 15 || dh[1] != f.tenants[dhSlug] || dh[7] != "1" || dh[12] != "f" {
		t.Fatalf("SHOW TENANTS row of %s: %q\n%s", dhSlug, dh, out)
	}
	out, err = psql(t, "ops", "SHOW CLIENTS WHERE tenant = '"+dhSlug+"'")
	if err != nil || !strings.Contains(out, "|alice|"+dhSlug+"|") || strings.Contains(out, "console-test") {
		t.Fatalf("SHOW CLIENTS WHERE tenant: %v\n%s", err, out)
	}
	out, err = psql(t, "ops", "SHOW CONFIG")
	if err != nil || !strings.Contains(out, "role_secret|[redacted]") || strings.Contains(out, base64Secret(cfg)) {
		t.Fatalf("SHOW CONFIG: %v\n%s", err, out)
	}
	out, err = psql(t, "watcher", "PAUSE TENANT "+dhSlug)
	if err == nil || !strings.Contains(out, "permission denied") {
		t.Fatalf("a stats user paused a tenant: %v\n%s", err, out)
	}
	out, err = psql(t, "alice", "SHOW TENANTS")
	if err == nil || !strings.Contains(out, "may not use the console") {
		t.Fatalf("a tenant user reached the console: %v\n%s", err, out)
	}
}

func base64Secret(cfg *config.Config) string { return string(cfg.RoleSecret) }

func TestConsoleExtendedProtocol(t *testing.T) {
	noLeaks(t)
	p := startProxy(t, consoleConfig(t))
	alice := p.connect(t, "alice", "alice-pw")
	var alicePID uint32
	if err := alice.QueryRow(testCtx(t), "SELECT pg_backend_pid()").Scan(&alicePID); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			cc, err := pgx.ParseConfig(p.consoleURL("ops"))
			if err != nil {
				t.Fatal(err)
			}
			cc.DefaultQueryExecMode = mode
			c, err := pgx.ConnectConfig(testCtx(t), cc)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer c.Close(context.Background())
			if err := c.Ping(testCtx(t)); err != nil {
				t.Fatalf("ping: %v", err)
			}
			if v := c.PgConn().ParameterStatus("server_version"); v == "" {
				t.Error("no server_version")
			}
			// SHOW SERVERS joins with pg_stat_activity by pid.
			found := false
			for _, r := range consoleRows(t, c, "SHOW SERVERS") {
				if r["pid"] == strconv.FormatUint(uint64(alicePID), 10) {
					found = r["tenant"] == dhSlug && r["state"] == "active" && r["client_id"] != ""
				}
			}
			if !found {
				t.Errorf("alice's backend %d is not in SHOW SERVERS: %v", alicePID, consoleRows(t, c, "SHOW SERVERS"))
			}
			// Bad input: an error, and the session goes on.
			for q, code := range map[string]string{"FROB": "42601", "SHOW TENANTS WHERE user = 'x'": "42601",
				"SET TENANT " + dhSlug + " max_server_conns = lots": "22023", "SHOW " + strings.Repeat("x", 20000): "54000"} {
				_, err := c.Exec(testCtx(t), q)
				if got := sqlstate(err); got != code {
					t.Errorf("%.40s: %v, want %s", q, err, code)
				}
			}
			var one string
			if err := c.QueryRow(testCtx(t), "SELECT 1").Scan(&one); err != nil || one != "1" {
				t.Fatalf("SELECT 1 after errors: %q %v", one, err)
			}
			if _, err := c.Exec(testCtx(t), "SET application_name = 'x'"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestConsoleTenantBoundUser(t *testing.T) {
	noLeaks(t)
	p := startProxy(t, consoleConfig(t))
	p.connect(t, "alice", "alice-pw")
	p.connect(t, "bob", "bob-pw")
	c := connectURL(t, p.consoleURL("dhops"))
	for _, q := range []string{"SHOW TENANTS", "SHOW CLIENTS", "SHOW POOLS", "SHOW SERVERS", "SHOW USERS"} {
		rows := consoleRows(t, c, q)
		if len(rows) == 0 {
			t.Errorf("%s: no rows", q)
		}
		for _, r := range rows {
			col := r["tenant"]
			if q == "SHOW USERS" {
				col = r["tenants"]
			}
			if !slices.Contains(strings.Split(col, ","), dhSlug) {
				t.Errorf("%s shows a row of another tenant to a bound user: %v", q, r)
			}
		}
	}
	for q, code := range map[string]string{"PAUSE TENANT " + platformSlug: "42501", "SHOW CONFIG": "42501", "RELOAD": "42501",
		"SHOW CLIENTS WHERE tenant = '" + platformSlug + "'": "42501"} {
		if _, err := c.Exec(testCtx(t), q); sqlstate(err) != code {
			t.Errorf("%s: %v, want %s", q, err, code)
		}
	}
	// Its own tenant it may steer.
	if _, err := c.Exec(testCtx(t), "SET TENANT "+dhSlug+" max_server_conns = 3"); err != nil {
		t.Fatal(err)
	}
	if r := consoleRows(t, c, "SHOW TENANTS"); len(r) != 1 || r[0]["max_server_conns"] != "3" {
		t.Fatalf("after SET TENANT: %v", r)
	}
}

func TestConsoleKillClient(t *testing.T) {
	noLeaks(t)
	p := startProxy(t, consoleConfig(t))
	first := p.connect(t, "alice", "alice-pw")
	c := connectURL(t, p.consoleURL("ops"))
	ids := func() []string {
		var out []string
		for _, r := range consoleRows(t, c, "SHOW CLIENTS WHERE tenant = '"+dhSlug+"'") {
			out = append(out, r["id"])
		}
		return out
	}
	before := ids()
	second := p.connect(t, "alice", "alice-pw")
	var secondID string
	for _, id := range ids() {
		if !slices.Contains(before, id) {
			secondID = id
		}
	}
	if secondID == "" {
		t.Fatal("the second client is not in SHOW CLIENTS")
	}
	if _, err := c.Exec(testCtx(t), "KILL CLIENT "+secondID); err != nil {
		t.Fatal(err)
	}
	if _, err := second.Exec(testCtx(t), "SELECT 1"); err == nil {
		t.Fatal("the killed client still runs queries")
	}
	if _, err := first.Exec(testCtx(t), "SELECT 1"); err != nil {
		t.Fatalf("the other client was hurt: %v", err)
	}
	eventually(t, "the killed client gone from SHOW CLIENTS", func() bool { return !slices.Contains(ids(), secondID) })
	if got := ids(); len(got) != 1 || got[0] != before[0] {
		t.Fatalf("clients left %v, want %v", got, before)
	}
	if _, err := c.Exec(testCtx(t), "KILL CLIENT "+secondID); sqlstate(err) != "22023" {
		t.Fatalf("killing a gone client: %v", err)
	}
	// The stats user may not.
	w := connectURL(t, p.consoleURL("watcher"))
	if _, err := w.Exec(testCtx(t), "KILL CLIENT "+before[0]); sqlstate(err) != "42501" {
		t.Fatalf("stats KILL: %v", err)
	}
}

// loop runs transactions on c until stop, counting the ones that committed;
// its first error is reported on errc.
func loop(ctx context.Context, c *pgx.Conn, n *atomic.Int64, errc chan<- error, wg *sync.WaitGroup) {
	defer wg.Done()
	for ctx.Err() == nil {
		err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "SELECT count(*) FROM agents")
			return err
		})
		if err != nil {
			if ctx.Err() == nil {
				errc <- err
			}
			return
		}
		n.Add(1)
	}
}

func TestConsolePauseTenant(t *testing.T) {
	noLeaks(t)
	cfg := consoleConfig(t)
	cfg.Pool.Mode = "transaction"
	p := startProxy(t, cfg)
	a := p.connect(t, "alice", "alice-pw")
	b := p.connect(t, "bob", "bob-pw")
	c := connectURL(t, p.consoleURL("ops"))

	ctx, stop := context.WithCancel(context.Background())
	var na, nb atomic.Int64
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go loop(ctx, a, &na, errc, &wg)
	go loop(ctx, b, &nb, errc, &wg)
	defer func() {
		stop()
		_, _ = c.Exec(context.Background(), "RESUME")
		wg.Wait()
	}()
	eventually(t, "both tenants running transactions", func() bool { return na.Load() > 0 && nb.Load() > 0 })

	if _, err := c.Exec(testCtx(t), "PAUSE TENANT "+dhSlug+" TIMEOUT 60"); err != nil {
		t.Fatalf("PAUSE: %v", err)
	}
	held := func() bool {
		for _, r := range consoleRows(t, c, "SHOW TENANTS WHERE tenant = '"+dhSlug+"'") {
			return r["paused"] == "t" && r["waiting"] == "1" && r["server_active"] == "0"
		}
		return false
	}
	eventually(t, "alice's next transaction waiting on the pause", held)
	// A is held: while B commits many transactions, A commits none.
	pausedAt := na.Load()
	bAt := nb.Load()
	eventually(t, "bob's transactions going on", func() bool { return nb.Load() >= bAt+50 })
	if got := na.Load(); got != pausedAt {
		t.Fatalf("alice committed %d transactions while paused", got-pausedAt)
	}
	for _, r := range consoleRows(t, c, "SHOW TENANTS WHERE tenant = '"+platformSlug+"'") {
		if r["paused"] != "f" || r["waiting"] != "0" {
			t.Fatalf("the other tenant is held: %v", r)
		}
	}
	// A stats user cannot lift it.
	w := connectURL(t, p.consoleURL("watcher"))
	if _, err := w.Exec(testCtx(t), "RESUME TENANT "+dhSlug); sqlstate(err) != "42501" {
		t.Fatalf("stats RESUME: %v", err)
	}
	if _, err := c.Exec(testCtx(t), "RESUME TENANT "+dhSlug); err != nil {
		t.Fatalf("RESUME: %v", err)
	}
	eventually(t, "alice's transactions going on again", func() bool { return na.Load() >= pausedAt+10 })
	select {
	case err := <-errc:
		t.Fatalf("a looping client failed: %v", err)
	default:
	}
}

func TestConsolePauseTimeoutNamesBusyClient(t *testing.T) {
	noLeaks(t)
	p := startProxy(t, consoleConfig(t)) // session mode: a client holds its backend
	p.connect(t, "alice", "alice-pw")
	c := connectURL(t, p.consoleURL("ops"))
	_, err := c.Exec(testCtx(t), "PAUSE TENANT "+dhSlug+" TIMEOUT 0.2")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "55006" || !strings.Contains(pgErr.Message, "user alice") {
		t.Fatalf("PAUSE with a busy session: %v", err)
	}
	// The pause stays: a new client of the tenant waits; RESUME lets it in.
	connected := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(testCtx(t), p.url("alice", "alice-pw"))
		if err == nil {
			conn.Close(context.Background())
		}
		connected <- err
	}()
	eventually(t, "the new client waiting on the pause", func() bool {
		r := consoleRows(t, c, "SHOW TENANTS WHERE tenant = '"+dhSlug+"'")
		return len(r) == 1 && r[0]["waiting"] == "1"
	})
	if _, err := c.Exec(testCtx(t), "RESUME"); err != nil {
		t.Fatal(err)
	}
	if err := <-connected; err != nil {
		t.Fatalf("the waiting client after RESUME: %v", err)
	}
}

func TestConsoleDisableTenant(t *testing.T) {
	noLeaks(t)
	p := startProxy(t, consoleConfig(t))
	c := connectURL(t, p.consoleURL("ops"))
	if _, err := c.Exec(testCtx(t), "DISABLE TENANT "+dhSlug); err != nil {
		t.Fatal(err)
	}
	if err := tryConnect(testCtx(t), p.url("alice", "alice-pw")); sqlstate(err) != "57P03" {
		t.Fatalf("a client of a disabled tenant: %v", err)
	}
	if err := tryConnect(testCtx(t), p.url("bob", "bob-pw")); err != nil {
		t.Fatalf("another tenant's client: %v", err)
	}
	if _, err := c.Exec(testCtx(t), "ENABLE TENANT "+dhSlug); err != nil {
		t.Fatal(err)
	}
	if err := tryConnect(testCtx(t), p.url("alice", "alice-pw")); err != nil {
		t.Fatalf("after ENABLE: %v", err)
	}
	var notice string
	cc, _ := pgx.ParseConfig(p.consoleURL("ops"))
	cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notice = n.Message }
	rc, err := pgx.ConnectConfig(testCtx(t), cc)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(context.Background())
	if _, err := rc.Exec(testCtx(t), "RELOAD"); err != nil || !strings.HasPrefix(notice, "reloaded") {
		t.Fatalf("RELOAD: %v %q", err, notice)
	}
}

func TestConsoleDuringDrain(t *testing.T) {
	noLeaks(t)
	cfg := consoleConfig(t)
	cfg.Limits.ShutdownTimeout = 5 * time.Minute
	p := startProxy(t, cfg)
	alice := p.connect(t, "alice", "alice-pw")
	c := connectURL(t, p.consoleURL("ops"))
	stopped := make(chan error, 1)
	go func() { stopped <- p.stop() }()
	eventually(t, "the proxy draining", func() bool {
		return tryConnect(testCtx(t), p.url("bob", "bob-pw")) != nil
	})
	// The console keeps working while alice's session drains.
	if r := consoleRows(t, c, "SHOW CLIENTS WHERE tenant = '"+dhSlug+"'"); len(r) != 1 || r[0]["user"] != "alice" {
		t.Fatalf("SHOW CLIENTS while draining: %v", r)
	}
	select {
	case <-stopped:
		t.Fatal("Run returned while a tenant session was open")
	default:
	}
	// Once the tenant session ends, the drain does not wait for the
	// console session (limits.shutdown_timeout is far away).
	alice.Close(testCtx(t))
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Run waited for the console session")
	}
	if _, err := c.Exec(testCtx(t), "SELECT 1"); err == nil {
		t.Fatal("the console session outlived the proxy")
	}
}
