package pgbouncercompat_test

import (
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	_ "github.com/lib/pq"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/vitalproxy/vitalproxy/config"
)

// scrape collects the PgBouncer-compatible database's metrics once as
// user, failing the test on any scrape error.
func (e *env) scrape(t *testing.T, user string) map[string][]*dto.Metric {
	t.Helper()
	c := &pgbCollector{dsn: e.url(user, pgbDB)}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, err := range c.scrapeErrors() {
		t.Errorf("scrape: %v", err)
	}
	out := map[string][]*dto.Metric{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf.GetMetric()
	}
	return out
}

// value is the value of the series of name with the labels given (name,
// value pairs), failing the test if there is none.
func value(t *testing.T, metrics map[string][]*dto.Metric, name string, labels ...string) float64 {
	t.Helper()
	for _, m := range metrics[name] {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if got[labels[i]] != labels[i+1] {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("%s%q: %v", name, labels, errNoMetric)
	return 0
}

func TestExporterScrape(t *testing.T) {
	noLeaks(t)
	e := startProxy(t, nil)
	// Session mode: each client holds a server connection for its
	// session.
	var conns []*pgx.Conn
	for _, u := range []string{"alice", "alice", "bob"} {
		c := e.connect(t, u, e.db)
		if _, err := c.Exec(testCtx(t), "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	m := e.scrape(t, opsUser)
	if v := value(t, m, "pgbouncer_up"); v != 1 {
		t.Fatalf("pgbouncer_up %v", v)
	}
	for _, vi := range m["pgbouncer_version_info"] {
		if v := vi.GetLabel()[0].GetValue(); !strings.HasPrefix(v, "PgBouncer 1.18.0 (vitalproxy ") {
			t.Errorf("version %q", v)
		}
	}
	if len(m["pgbouncer_version_info"]) != 1 {
		t.Errorf("version_info %v", m["pgbouncer_version_info"])
	}
	for _, c := range []struct {
		tenant         string
		active, server float64
	}{{dhSlug, 2, 2}, {platformSlug, 1, 1}} {
		if v := value(t, m, "pgbouncer_pools_client_active_connections", "database", e.db, "user", c.tenant); v != c.active {
			t.Errorf("%s: client_active_connections %v, want %v", c.tenant, v, c.active)
		}
		if v := value(t, m, "pgbouncer_pools_server_active_connections", "database", e.db, "user", c.tenant); v != c.server {
			t.Errorf("%s: server_active_connections %v, want %v", c.tenant, v, c.server)
		}
		if v := value(t, m, "pgbouncer_pools_client_waiting_connections", "database", e.db, "user", c.tenant); v != 0 {
			t.Errorf("%s: client_waiting_connections %v", c.tenant, v)
		}
		if v := value(t, m, "pgbouncer_databases_current_connections", "name", e.db, "force_user", c.tenant, "pool_mode", "session"); v != c.server {
			t.Errorf("%s: databases current_connections %v, want %v", c.tenant, v, c.server)
		}
	}
	// The stats parse; bytes are counted when sessions end.
	for _, name := range []string{"pgbouncer_stats_totals_received_bytes_total", "pgbouncer_stats_totals_sent_bytes_total",
		"pgbouncer_stats_totals_sql_transactions_pooled_total", "pgbouncer_stats_totals_client_wait_seconds_total"} {
		if v := value(t, m, name, "database", e.db); v < 0 {
			t.Errorf("%s %v", name, v)
		}
	}
	// As in PgBouncer, admin sessions (the scrape's own) are clients too.
	if v := value(t, m, "pgbouncer_used_clients"); v != 4 {
		t.Errorf("used_clients %v, want 4 (3 tenant clients and the scrape's session)", v)
	}
	if v := value(t, m, "pgbouncer_used_servers"); v != 3 {
		t.Errorf("used_servers %v", v)
	}
	if v := value(t, m, "pgbouncer_config_max_client_connections"); v != float64(e.cfg.Limits.MaxClientConns) {
		t.Errorf("config max_client_connections %v", v)
	}

	// Once the clients have left, their bytes are in the totals.
	for _, c := range conns {
		if err := c.Close(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	ops := e.connect(t, opsUser, pgbDB)
	waitFor(t, ops, "SHOW LISTS", func(rows [][]any) bool {
		for _, r := range rows {
			if r[0] == "used_clients" {
				return r[1] == int32(1) // this console session
			}
		}
		return false
	})
	m = e.scrape(t, opsUser)
	if v := value(t, m, "pgbouncer_stats_totals_received_bytes_total", "database", e.db); v <= 0 {
		t.Errorf("received_bytes_total %v after the sessions ended", v)
	}
	if v := value(t, m, "pgbouncer_pools_client_active_connections", "user", dhSlug); v != 0 {
		t.Errorf("client_active_connections %v after the sessions ended", v)
	}
}

// waitFor polls a query over pgx (binary results) until ok accepts its
// rows.
func waitFor(t *testing.T, c *pgx.Conn, q string, ok func([][]any) bool) {
	t.Helper()
	ctx := testCtx(t)
	for {
		rows, err := c.Query(ctx, q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		var all [][]any
		for rows.Next() {
			v, err := rows.Values()
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, v)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if ok(all) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: never as expected; last %v", q, all)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestBoundStatsUser(t *testing.T) {
	noLeaks(t)
	e := startProxy(t, nil)
	e.connect(t, "alice", e.db)
	e.connect(t, "bob", e.db)
	m := e.scrape(t, dhWatchUser)
	if v := value(t, m, "pgbouncer_up"); v != 1 {
		t.Fatalf("pgbouncer_up %v", v)
	}
	for _, name := range []string{"pgbouncer_pools_client_active_connections", "pgbouncer_databases_pool_size"} {
		for _, s := range m[name] {
			for _, l := range s.GetLabel() {
				if (l.GetName() == "user" || l.GetName() == "force_user") && l.GetValue() != dhSlug {
					t.Errorf("%s: a row of %q for a user bound to %s", name, l.GetValue(), dhSlug)
				}
			}
		}
	}
	if v := value(t, m, "pgbouncer_pools_client_active_connections", "user", dhSlug); v != 1 {
		t.Errorf("client_active_connections %v", v)
	}
	if v := value(t, m, "pgbouncer_used_clients"); v != 1 {
		t.Errorf("used_clients %v: counts another tenant's client", v)
	}
	db, err := sql.Open("postgres", e.url(dhWatchUser, pgbDB))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("SHOW CLIENTS")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		n++
	}
	if n != 1 {
		t.Errorf("SHOW CLIENTS: %d rows for the bound user, want its tenant's one client", n)
	}
}

// TestBinaryResults reads the typed columns with pgx, which asks for
// int4 and numeric columns in the binary format.
func TestBinaryResults(t *testing.T) {
	noLeaks(t)
	e := startProxy(t, nil)
	e.connect(t, "alice", e.db)
	c := e.connect(t, opsUser, pgbDB)
	var db, user, mode string
	var clActive, svActive, maxwait int32
	found := false
	rows, err := c.Query(testCtx(t), "SHOW POOLS")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		if vals[1] != dhSlug {
			continue
		}
		found = true
		db, user, mode = vals[0].(string), vals[1].(string), vals[15].(string)
		clActive, svActive, maxwait = vals[2].(int32), vals[6].(int32), vals[13].(int32)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !found || db != e.db || user != dhSlug || mode != "session" || clActive != 1 || svActive != 1 || maxwait != 0 {
		t.Fatalf("SHOW POOLS row: %v %s %s %s cl_active %d sv_active %d maxwait %d", found, db, user, mode, clActive, svActive, maxwait)
	}
	var xacts pgtype.Numeric
	if err := c.QueryRow(testCtx(t), "SHOW STATS_TOTALS").Scan(&db, &xacts, nil, nil, nil, nil, nil, nil); err != nil {
		t.Fatalf("SHOW STATS_TOTALS: %v", err)
	}
	if db != e.db {
		t.Fatalf("stats database %q", db)
	}
}

func TestSteeringRefused(t *testing.T) {
	noLeaks(t)
	e := startProxy(t, nil)
	c := e.connect(t, opsUser, pgbDB)
	for _, q := range []string{"PAUSE", "KILL " + e.db, "RELOAD", "SHUTDOWN"} {
		_, err := c.Exec(testCtx(t), q)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "0A000" {
			t.Errorf("%s: %v, want 0A000", q, err)
		}
	}
	// A user without a console role may not connect.
	_, err := pgx.Connect(testCtx(t), e.url("alice", pgbDB))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "28000" {
		t.Errorf("alice to the pgbouncer database: %v, want 28000", err)
	}
}

func TestDisabled(t *testing.T) {
	noLeaks(t)
	e := startProxy(t, func(c *config.Config) { c.Console.PgBouncerDatabase = "" })
	_, err := pgx.Connect(testCtx(t), e.url(opsUser, pgbDB))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "3D000" {
		t.Fatalf("the disabled pgbouncer database: %v, want 3D000", err)
	}
}
