package proxy

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/proxy/console"
)

// The PgBouncer-compatible database (console.pgbouncer_database) answers
// PgBouncer 1.18's SHOW commands with its columns, in its order and with
// its types. A tenant's pool is the pool of database = the client-facing
// database name and user = the tenant's slug. See docs/console.md.

// processStart is when the proxy process started: the averages of SHOW
// STATS and SHOW STATS_AVERAGES are over the time since.
var processStart = time.Now()

// Column types, in PgBouncer's letters: s text, i int4, N numeric.
const (
	pgbS = console.OIDText
	pgbI = console.OIDInt4
	pgbN = console.OIDNumeric
)

// pgbTable builds a typed table from columns given as name, type pairs.
func pgbTable(cols ...any) *console.Table {
	t := &console.Table{TenantColumn: -1}
	for i := 0; i+1 < len(cols); i += 2 {
		t.Columns = append(t.Columns, cols[i].(string))
		t.Types = append(t.Types, cols[i+1].(uint32))
	}
	return t
}

// pgbScope is the tenants a PgBouncer-compatible SHOW is about.
type pgbScope struct {
	tenants map[string]bool // nil: every tenant
}

func newPgbScope(tenants []string) pgbScope {
	if tenants == nil {
		return pgbScope{}
	}
	m := make(map[string]bool, len(tenants))
	for _, t := range tenants {
		m[t] = true
	}
	return pgbScope{tenants: m}
}

func (sc pgbScope) all() bool { return sc.tenants == nil }

// has reports whether a row of tenant is shown; rows of no tenant are
// shown to unbound users only.
func (sc pgbScope) has(tenant string) bool {
	if sc.tenants == nil {
		return true
	}
	return tenant != "" && sc.tenants[tenant]
}

// upstreamHostPort is the upstream server's first host and port, as
// SHOW DATABASES and SHOW SERVERS report them.
func upstreamHostPort(cfg *config.Config) (string, int) {
	pc, err := pgconn.ParseConfig(cfg.Upstream.URL)
	if err != nil {
		return "", 0
	}
	return pc.Host, int(pc.Port)
}

func itoa(n int) string { return strconv.Itoa(n) }

func b01(v bool) string {
	if v {
		return "1"
	}
	return "0"
}

// pgbTime formats a time as PgBouncer does ("2026-11-01 12:00:00 UTC").
func pgbTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05") + " UTC"
}

func splitHostPort(addr string) (string, string) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, "0"
	}
	return h, p
}

// ShowPgBouncer answers the PgBouncer-compatible database's SHOW topics.
func (b consoleBackend) ShowPgBouncer(_ context.Context, topic string, tenants []string) (*console.Table, error) {
	s, sc := b.s, newPgbScope(tenants)
	switch topic {
	case console.PgBouncerPools:
		return s.pgbPools(sc), nil
	case console.PgBouncerStats:
		return s.pgbStats(sc, true)
	case console.PgBouncerStatsTotals:
		return s.pgbStats(sc, false)
	case console.PgBouncerStatsAverages:
		return s.pgbStatsAverages(sc)
	case console.PgBouncerDatabases:
		return s.pgbDatabases(sc), nil
	case console.PgBouncerLists:
		return s.pgbLists(sc), nil
	case console.PgBouncerConfig:
		return s.pgbConfig(), nil
	case console.PgBouncerClients:
		return s.pgbClients(sc), nil
	case console.PgBouncerServers:
		return s.pgbServers(sc), nil
	case console.PgBouncerUsers:
		return s.pgbUsers(sc), nil
	}
	return nil, console.Errorf(console.CodeSyntax, "unknown SHOW topic %q", topic)
}

// pgbTenants are the tenants in scope, by slug.
func (s *Server) pgbTenants(sc pgbScope) []string {
	var out []string
	for _, t := range s.directory().Tenants() {
		if sc.has(t.Slug) {
			out = append(out, t.Slug)
		}
	}
	sort.Strings(out)
	return out
}

func (s *Server) tenantMode(cfg *config.Config, slug string) string {
	if ts, ok := cfg.Tenants[slug]; ok && ts.PoolMode != "" {
		return ts.PoolMode
	}
	return cfg.Pool.Mode
}

// pgbPools is SHOW POOLS: a row per tenant, and for unbound users one per
// shared pool (isolation mode context) with its idle server connections
// (user: the pooled role), so that the rows add up.
func (s *Server) pgbPools(sc pgbScope) *console.Table {
	t := pgbTable("database", pgbS, "user", pgbS, "cl_active", pgbI, "cl_waiting", pgbI,
		"cl_active_cancel_req", pgbI, "cl_waiting_cancel_req", pgbI, "sv_active", pgbI, "sv_active_cancel", pgbI,
		"sv_being_canceled", pgbI, "sv_idle", pgbI, "sv_used", pgbI, "sv_tested", pgbI, "sv_login", pgbI,
		"maxwait", pgbI, "maxwait_us", pgbI, "pool_mode", pgbS)
	rt := s.rt.Load()
	stats := s.pool.Stats()
	use := poolUseByTenant(stats)
	clients := s.counts.snapshot()
	now := time.Now()
	for _, slug := range s.pgbTenants(sc) {
		u := use[slug]
		if u == nil {
			u = &poolUse{}
		}
		st := s.steer.state(slug, now)
		waiting := u.waiting + st.waiting
		wait := max(u.maxWait, st.maxWait)
		t.Rows = append(t.Rows, []string{rt.upstreamDB, slug, itoa(max(clients[slug]-waiting, 0)), itoa(waiting), "0", "0",
			itoa(u.active), "0", "0", itoa(u.idle), "0", "0", "0",
			strconv.FormatInt(int64(wait/time.Second), 10), strconv.FormatInt(int64(wait%time.Second/time.Microsecond), 10),
			s.tenantMode(rt.cfg, slug)})
	}
	if sc.all() {
		var shared []string
		idle := map[string]int{}
		for _, st := range stats {
			if st.Key.Tenant == "" && st.Key.Shared {
				shared = append(shared, st.Key.Role)
				idle[st.Key.Role] += st.Idle
			}
		}
		sort.Strings(shared)
		for _, role := range slices.Compact(shared) {
			t.Rows = append(t.Rows, []string{rt.upstreamDB, role, "0", "0", "0", "0", "0", "0", "0", itoa(idle[role]),
				"0", "0", "0", "0", "0", "transaction"})
		}
	}
	return t
}

// tenantStats are a tenant's totals since start, read back from the
// metrics registry.
type tenantStats struct {
	tx, c2s, s2c, waits, timeouts float64
	waitSum                       float64 // seconds
}

func (s *Server) statsByTenant() (map[string]*tenantStats, error) {
	mfs, err := s.registry.Gather()
	if err != nil {
		return nil, fmt.Errorf("gather metrics: %w", err)
	}
	rows := map[string]*tenantStats{}
	get := func(tenant string) *tenantStats {
		r := rows[tenant]
		if r == nil {
			r = &tenantStats{}
			rows[tenant] = r
		}
		return r
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			tenant := metricLabel(m, "tenant")
			if tenant == "" {
				continue
			}
			switch mf.GetName() {
			case "vitalproxy_transactions_total":
				get(tenant).tx += m.GetCounter().GetValue()
			case "vitalproxy_bytes_total":
				if metricLabel(m, "direction") == "client_to_server" {
					get(tenant).c2s += m.GetCounter().GetValue()
				} else {
					get(tenant).s2c += m.GetCounter().GetValue()
				}
			case "vitalproxy_pool_wait_seconds":
				get(tenant).waits += float64(m.GetHistogram().GetSampleCount())
				get(tenant).waitSum += m.GetHistogram().GetSampleSum()
			case "vitalproxy_pool_queue_timeouts_total":
				get(tenant).timeouts += m.GetCounter().GetValue()
			}
		}
	}
	return rows, nil
}

// pgbTotals sums the tenants' totals in scope: transactions, bytes
// received from and sent to clients, and the wait time in microseconds.
func (s *Server) pgbTotals(sc pgbScope) (xact, recv, sent, waitUS uint64, err error) {
	rows, err := s.statsByTenant()
	if err != nil {
		return 0, 0, 0, 0, err
	}
	for tenant, r := range rows {
		if !sc.has(tenant) {
			continue
		}
		xact += uint64(r.tx)
		recv += uint64(r.c2s)
		sent += uint64(r.s2c)
		waitUS += uint64(r.waitSum * 1e6)
	}
	return xact, recv, sent, waitUS, nil
}

func u64(n uint64) string { return strconv.FormatUint(n, 10) }

// pgbStats is SHOW STATS (withAverages) or SHOW STATS_TOTALS: one row for
// the client-facing database. Queries and time in transactions and
// queries are not measured (0); averages are per second since the proxy
// started.
func (s *Server) pgbStats(sc pgbScope, withAverages bool) (*console.Table, error) {
	xact, recv, sent, wait, err := s.pgbTotals(sc)
	if err != nil {
		return nil, err
	}
	db := s.rt.Load().upstreamDB
	if !withAverages {
		t := pgbTable("database", pgbS, "xact_count", pgbN, "query_count", pgbN, "bytes_received", pgbN, "bytes_sent", pgbN,
			"xact_time", pgbN, "query_time", pgbN, "wait_time", pgbN)
		t.Rows = [][]string{{db, u64(xact), "0", u64(recv), u64(sent), "0", "0", u64(wait)}}
		return t, nil
	}
	t := pgbTable("database", pgbS, "total_xact_count", pgbN, "total_query_count", pgbN, "total_received", pgbN,
		"total_sent", pgbN, "total_xact_time", pgbN, "total_query_time", pgbN, "total_wait_time", pgbN,
		"avg_xact_count", pgbN, "avg_query_count", pgbN, "avg_recv", pgbN, "avg_sent", pgbN,
		"avg_xact_time", pgbN, "avg_query_time", pgbN, "avg_wait_time", pgbN)
	row := []string{db, u64(xact), "0", u64(recv), u64(sent), "0", "0", u64(wait)}
	t.Rows = [][]string{append(row, pgbAverages(xact, recv, sent, wait)...)}
	return t, nil
}

// pgbAverages are the averages of SHOW STATS: transactions, queries,
// bytes received and sent per second since start, then the average
// transaction, query and wait times in microseconds per transaction.
func pgbAverages(xact, recv, sent, wait uint64) []string {
	secs := uint64(max(time.Since(processStart)/time.Second, 1))
	perXact := func(v uint64) string {
		if xact == 0 {
			return "0"
		}
		return u64(v / xact)
	}
	return []string{u64(xact / secs), "0", u64(recv / secs), u64(sent / secs), "0", "0", perXact(wait)}
}

func (s *Server) pgbStatsAverages(sc pgbScope) (*console.Table, error) {
	xact, recv, sent, wait, err := s.pgbTotals(sc)
	if err != nil {
		return nil, err
	}
	t := pgbTable("database", pgbS, "xact_count", pgbN, "query_count", pgbN, "bytes_received", pgbN, "bytes_sent", pgbN,
		"xact_time", pgbN, "query_time", pgbN, "wait_time", pgbN)
	avg := pgbAverages(xact, recv, sent, wait)
	t.Rows = [][]string{{s.rt.Load().upstreamDB, avg[0], avg[1], avg[2], avg[3], avg[4], avg[5], avg[6]}}
	return t, nil
}

// pgbDatabases is SHOW DATABASES: a row per tenant (force_user: its slug),
// so that each tenant's caps and state have a row of their own.
func (s *Server) pgbDatabases(sc pgbScope) *console.Table {
	t := pgbTable("name", pgbS, "host", pgbS, "port", pgbI, "database", pgbS, "force_user", pgbS, "pool_size", pgbI,
		"min_pool_size", pgbI, "reserve_pool", pgbI, "pool_mode", pgbS, "max_connections", pgbI,
		"current_connections", pgbI, "paused", pgbI, "disabled", pgbI)
	rt := s.rt.Load()
	host, port := upstreamHostPort(rt.cfg)
	use := poolUseByTenant(s.pool.Stats())
	now := time.Now()
	for _, slug := range s.pgbTenants(sc) {
		maxServer, _ := s.tenantLimits(rt.cfg, slug)
		u := use[slug]
		if u == nil {
			u = &poolUse{}
		}
		st := s.steer.state(slug, now)
		t.Rows = append(t.Rows, []string{rt.upstreamDB, host, itoa(port), rt.upstreamDB, slug, itoa(maxServer),
			itoa(rt.cfg.Pool.MinIdlePerTenant), "0", s.tenantMode(rt.cfg, slug), itoa(maxServer),
			itoa(u.active + u.idle), b01(st.paused), b01(st.disabled)})
	}
	return t
}

// pgbLists is SHOW LISTS.
func (s *Server) pgbLists(sc pgbScope) *console.Table {
	t := pgbTable("list", pgbS, "items", pgbI)
	tenants := s.pgbTenants(sc)
	users := 0
	for _, u := range s.directory().Users() {
		if sc.all() || slices.ContainsFunc(u.Tenants, sc.has) {
			users++
		}
	}
	clients, login := 0, 0
	for _, sess := range s.sessionList() {
		info := sess.info.Load()
		switch {
		case info == nil:
			if sc.all() {
				login++
			}
		case sc.has(info.tenant) && (info.tenant != "" || sc.all()):
			clients++
		}
	}
	servers := 0
	for _, sv := range s.pool.Servers() {
		if sc.has(sv.Key.Tenant) {
			servers++
		}
	}
	for _, kv := range []struct {
		name string
		n    int
	}{{"databases", len(tenants)}, {"users", users}, {"pools", len(s.pgbPools(sc).Rows)},
		{"free_clients", 0}, {"used_clients", clients}, {"login_clients", login},
		{"free_servers", 0}, {"used_servers", servers},
		{"dns_names", 0}, {"dns_zones", 0}, {"dns_queries", 0}, {"dns_pending", 0}} {
		t.Rows = append(t.Rows, []string{kv.name, itoa(kv.n)})
	}
	return t
}

// pgbSettings map PgBouncer's settings onto the proxy's keys; seconds
// converts a duration to whole seconds, as PgBouncer shows it.
var pgbSettings = []struct {
	name, key string
	seconds   bool
}{
	{"client_login_timeout", "limits.startup_timeout", true},
	{"default_pool_size", "pool.max_server_conns_per_tenant", false},
	{"idle_transaction_timeout", "pool.idle_in_transaction_timeout", true},
	{"max_client_conn", "limits.max_client_conns", false},
	{"max_db_connections", "pool.max_server_conns", false},
	{"max_packet_size", "limits.max_message_size", false},
	{"max_user_connections", "pool.max_server_conns_per_tenant", false},
	{"min_pool_size", "pool.min_idle_per_tenant", false},
	{"pool_mode", "pool.mode", false},
	{"query_timeout", "pool.statement_timeout", true},
	{"query_wait_timeout", "pool.queue_timeout", true},
	{"server_connect_timeout", "upstream.connect_timeout", true},
	{"server_idle_timeout", "pool.idle_timeout", true},
	{"server_lifetime", "pool.server_lifetime", true},
	{"server_reset_query", "pool.reset_query", false},
}

func pgbSetting(v string, seconds bool) string {
	if !seconds {
		return v
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return v
	}
	return strconv.FormatInt(int64(d/time.Second), 10)
}

// pgbConfig is SHOW CONFIG: PgBouncer's settings that have a counterpart
// in the proxy's configuration, with the running and default values; none
// is changeable with SET. No secrets, and no user names, are among them.
func (s *Server) pgbConfig() *console.Table {
	t := pgbTable("key", pgbS, "value", pgbS, "default", pgbS, "changeable", pgbS)
	running := map[string]string{}
	for _, kv := range s.rt.Load().cfg.Settings() {
		running[kv[0]] = kv[1]
	}
	defaults := config.Defaults()
	host, port := splitHostPort(running["listen"])
	dhost, dport := splitHostPort(fmt.Sprint(defaults["listen"]))
	t.Rows = append(t.Rows, []string{"listen_addr", host, dhost, "no"}, []string{"listen_port", port, dport, "no"})
	for _, st := range pgbSettings {
		def := ""
		if d, ok := defaults[st.key]; ok {
			def = pgbSetting(fmt.Sprint(d), st.seconds)
		}
		t.Rows = append(t.Rows, []string{st.name, pgbSetting(running[st.key], st.seconds), def, "no"})
	}
	sort.Slice(t.Rows, func(i, j int) bool { return t.Rows[i][0] < t.Rows[j][0] })
	return t
}

// pgbSocketColumns are SHOW CLIENTS' and SHOW SERVERS' columns.
func pgbSocketTable() *console.Table {
	return pgbTable("type", pgbS, "user", pgbS, "database", pgbS, "state", pgbS, "addr", pgbS, "port", pgbI,
		"local_addr", pgbS, "local_port", pgbI, "connect_time", pgbS, "request_time", pgbS, "wait", pgbI,
		"wait_us", pgbI, "close_needed", pgbI, "ptr", pgbS, "link", pgbS, "remote_pid", pgbI, "tls", pgbS,
		"application_name", pgbS)
}

// pgbClients is SHOW CLIENTS: admitted sessions. A tenant's client has
// user = its tenant's slug (its pool's user); a console session the
// console user's name and the database it connected to. ptr is the
// client's id (KILL CLIENT in the console database) and link the backend
// pid a session-mode client holds.
func (s *Server) pgbClients(sc pgbScope) *console.Table {
	t := pgbSocketTable()
	rt := s.rt.Load()
	lhost, lport := "", "0"
	if a := s.Addr(); a != nil {
		lhost, lport = splitHostPort(a.String())
	}
	sessions := s.sessionList()
	sort.Slice(sessions, func(i, j int) bool { return sessions[i].start.Before(sessions[j].start) })
	for _, sess := range sessions {
		info := sess.info.Load()
		if info == nil || !sc.has(info.tenant) {
			continue
		}
		user, db := info.tenant, rt.upstreamDB
		if info.tenant == "" {
			user, db = info.user, info.database
		}
		link := ""
		if p := sess.backendPID(); p != 0 {
			link = strconv.FormatUint(uint64(p), 10)
		}
		host, port := splitHostPort(sess.remote)
		ct := pgbTime(info.connectedAt)
		t.Rows = append(t.Rows, []string{"C", user, db, "active", host, port, lhost, lport, ct, ct, "0", "0", "0",
			sess.id, link, "0", "", info.appName})
	}
	return t
}

// pgbServers is SHOW SERVERS: open server connections. ptr and
// remote_pid are the backend's pid, link the id of the session-mode client
// that holds it.
func (s *Server) pgbServers(sc pgbScope) *console.Table {
	t := pgbSocketTable()
	rt := s.rt.Load()
	host, port := upstreamHostPort(rt.cfg)
	holders := map[uint32]string{}
	for _, sess := range s.sessionList() {
		if p := sess.backendPID(); p != 0 {
			holders[p] = sess.id
		}
	}
	servers := s.pool.Servers()
	sort.Slice(servers, func(i, j int) bool { return servers[i].PID < servers[j].PID })
	for _, sv := range servers {
		if !sc.has(sv.Key.Tenant) {
			continue
		}
		user := sv.Key.Tenant
		if user == "" {
			user = sv.Key.Role
		}
		state := "idle"
		if sv.Active {
			state = "active"
		}
		last := sv.LastUsed
		if last.IsZero() {
			last = sv.Created
		}
		pid := strconv.FormatUint(uint64(sv.PID), 10)
		t.Rows = append(t.Rows, []string{"S", user, rt.upstreamDB, state, host, itoa(port), "", "0",
			pgbTime(sv.Created), pgbTime(last), "0", "0", "0", pid, holders[sv.PID], pid, "", ""})
	}
	return t
}

// pgbUsers is SHOW USERS: the proxy's users (a bound user: those that may
// connect to its tenants).
func (s *Server) pgbUsers(sc pgbScope) *console.Table {
	t := pgbTable("name", pgbS, "pool_mode", pgbS)
	users := s.directory().Users()
	sort.Slice(users, func(i, j int) bool { return users[i].Name < users[j].Name })
	for _, u := range users {
		if sc.all() || slices.ContainsFunc(u.Tenants, sc.has) {
			t.Rows = append(t.Rows, []string{u.Name, u.PoolMode})
		}
	}
	return t
}

// pgbDialect is the console dialect of a session that connected to db.
func pgbDialect(cfg *config.Config, db string) console.Dialect {
	if cfg.Console.PgBouncerDatabase != "" && db == cfg.Console.PgBouncerDatabase && db != cfg.Console.Database {
		return console.DialectPgBouncer
	}
	return console.DialectConsole
}
