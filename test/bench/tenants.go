package main

// The many-tenants mode (-tenants): how the proxy's transaction pool
// shares one server-connection budget among many tenants, against one
// tenant alone, PgBouncer (one pool, one login role, no isolation: an
// upper reference) and direct PostgreSQL.
//
// Setup creates N tenants at once (rows in public.tenants, then one
// tenantroles Sync creates their roles) and gives each rowsPerTenant rows
// of public.agents, which row-level security keeps to their tenant. Each
// client of a case is one connection of a tenant, all opened before the
// measured window, looping one autocommit transaction: a point select of
// one of its tenant's agents (or count(*) of the agents it sees) over the
// extended protocol with a prepared statement, or the simple protocol.

import (
	"context"
	cryptorand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

const (
	// rowsPerTenant is how many agents each benchmark tenant owns.
	rowsPerTenant = 10
	// tenantSlugPrefix starts the benchmark tenants' slugs.
	tenantSlugPrefix = "bench-t"
	// tenantUser is the proxy user every client logs in as, with
	// @<tenant-slug>.
	tenantUser = "bench"
	// directReserve is what direct leaves of max_connections.
	directReserve = 10
	// settleMax bounds how long a run waits for the previous one's server
	// logins to stop.
	settleMax = 60 * time.Second
	// zipfS is the exponent of the zipf case's tenant popularity.
	zipfS = 1.1
)

// Default settings of the many-tenants mode.
const (
	defaultTenantCases     = "single,T200xC2,T1000xC1,zipf"
	defaultTenantEndpoints = "vitalproxy-role,vitalproxy-context,pgbouncer,direct"
)

// tenantEndpointNames are the endpoints of the many-tenants mode, in the
// order each round runs them.
var tenantEndpointNames = []string{"vitalproxy-role", "vitalproxy-context", "pgbouncer", "direct"}

// tenantCase is one client population.
type tenantCase struct {
	Name string
	// Tenants is how many tenants the case draws from (tenants 0..n-1).
	Tenants int
	// TenantOf is each client's tenant index.
	TenantOf []int
	// Desc describes the case in the report.
	Desc string
}

// Clients returns how many connections the case opens.
func (c tenantCase) Clients() int { return len(c.TenantOf) }

// ActiveTenants returns how many tenants have at least one client.
func (c tenantCase) ActiveTenants() int {
	seen := map[int]bool{}
	for _, t := range c.TenantOf {
		seen[t] = true
	}
	return len(seen)
}

var reTenantCase = regexp.MustCompile(`^T(\d+)xC(\d+)$`)

// parseTenantCases reads -cases: single (1 tenant x 400 clients: the
// client count of T200xC2 and zipf), TxC (T
// tenants x C clients each) and zipf (400 clients over 200 tenants, each
// client's tenant drawn from a Zipf distribution with s=1.1, seeded so
// every run draws the same).
func parseTenantCases(list string) ([]tenantCase, error) {
	var out []tenantCase
	seen := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if seen[name] {
			return nil, fmt.Errorf("case %q given twice", name)
		}
		seen[name] = true
		var c tenantCase
		switch {
		case name == "single":
			c = spreadCase(name, 1, 400)
			c.Desc = "1 tenant x 400 clients (the baseline)"
		case name == "zipf":
			const tenants, clients = 200, 400
			c = tenantCase{Name: name, Tenants: tenants}
			r := rand.New(rand.NewPCG(1, 2))
			z := rand.NewZipf(r, zipfS, 1, tenants-1)
			for range clients {
				c.TenantOf = append(c.TenantOf, int(z.Uint64()))
			}
			c.Desc = fmt.Sprintf("%d clients over %d tenants, each client's tenant drawn by Zipf s=%.1f (%d tenants got clients; the busiest %d)",
				clients, tenants, zipfS, c.ActiveTenants(), maxClientsPerTenant(c))
		default:
			m := reTenantCase.FindStringSubmatch(name)
			if m == nil {
				return nil, fmt.Errorf("unknown case %q (have single, TxC such as T200xC2, zipf)", name)
			}
			t, err1 := strconv.Atoi(m[1])
			cl, err2 := strconv.Atoi(m[2])
			if err1 != nil || err2 != nil || t < 1 || cl < 1 || t > 100000 || t*cl > 100000 {
				return nil, fmt.Errorf("case %q: tenants and clients must be at least 1 (and at most 100000 connections)", name)
			}
			c = spreadCase(name, t, cl)
			c.Desc = fmt.Sprintf("%d tenants x %d clients (%d connections)", t, cl, t*cl)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("-cases names no case")
	}
	return out, nil
}

func spreadCase(name string, tenants, clientsPer int) tenantCase {
	c := tenantCase{Name: name, Tenants: tenants}
	for t := range tenants {
		for range clientsPer {
			c.TenantOf = append(c.TenantOf, t)
		}
	}
	return c
}

func maxClientsPerTenant(c tenantCase) int {
	n := map[int]int{}
	best := 0
	for _, t := range c.TenantOf {
		n[t]++
		best = max(best, n[t])
	}
	return best
}

// selectTenantEndpoints applies -tenant-endpoints, keeping the canonical
// order.
func selectTenantEndpoints(list string) ([]string, error) {
	var want []string
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !slices.Contains(tenantEndpointNames, name) {
			return nil, fmt.Errorf("unknown endpoint %q (have %s)", name, strings.Join(tenantEndpointNames, ", "))
		}
		want = append(want, name)
	}
	var out []string
	for _, n := range tenantEndpointNames {
		if slices.Contains(want, n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("-tenant-endpoints names no endpoint")
	}
	return out, nil
}

// poolTenant is one tenant the setup created.
type poolTenant struct {
	Slug, ID, Role string
	// Agents are the ids of its rows in public.agents.
	Agents []string
}

// tenantBench is one many-tenants run's state.
type tenantBench struct {
	*bench
	cases   []tenantCase
	tenants []poolTenant
	// maxConns is the cluster's max_connections; directCap the most
	// connections direct may open.
	maxConns, directCap int
	pgVersion           string
}

// tenantEndpoint is a started endpoint of the many-tenants mode.
type tenantEndpoint struct {
	*endpoint
	// unnamed: the extended protocol without named prepared statements.
	unnamed bool
	note    string
}

func (o options) validateTenants() error {
	switch {
	case o.duration < time.Second:
		return errors.New("-duration must be at least 1s")
	case o.repeats < 1:
		return errors.New("-repeats must be at least 1")
	case o.warmup < 0:
		return errors.New("-warmup must not be negative")
	case o.budget < 1:
		return errors.New("-budget must be at least 1")
	case o.protocol != "extended" && o.protocol != "simple":
		return fmt.Errorf("-protocol must be extended or simple, not %q", o.protocol)
	case o.tenantQuery != "point" && o.tenantQuery != "count":
		return fmt.Errorf("-tenant-query must be point or count, not %q", o.tenantQuery)
	case o.maxForeign < 0 || o.foreignRetries < 0:
		return errors.New("-max-foreign and -foreign-retries must not be negative")
	}
	return nil
}

// runTenants runs the many-tenants mode. Everything it starts is stopped
// before it returns.
func runTenants(ctx context.Context, o options, stdout, stderr io.Writer) (*tenantReport, error) {
	if err := o.validateTenants(); err != nil {
		return nil, err
	}
	cases, err := parseTenantCases(o.cases)
	if err != nil {
		return nil, err
	}
	names, err := selectTenantEndpoints(o.tenantEndpoints)
	if err != nil {
		return nil, err
	}
	n := 0
	for _, c := range cases {
		n = max(n, c.Tenants)
	}
	poolers := 0
	for _, name := range names {
		if name != "direct" {
			poolers++
		}
	}
	tb := &tenantBench{bench: &bench{opts: o, stdout: stdout, stderr: stderr}, cases: cases}
	defer tb.close()
	// Room for what the poolers may keep open besides direct's clients.
	tb.maxConns = 300 + poolers*o.budget
	tb.directCap = tb.maxConns - directReserve - poolers*o.budget
	if err := tb.setup(ctx, n); err != nil {
		return nil, err
	}

	rep := &tenantReport{Options: o, Cases: cases}
	var eps []*tenantEndpoint
	defer func() {
		for i := len(eps) - 1; i >= 0; i-- {
			eps[i].stop()
		}
	}()
	for _, name := range names {
		ep, err := tb.startEndpoint(ctx, name)
		if err == nil {
			err = tb.checkEndpoint(ctx, ep)
			if err != nil {
				ep.stop()
				err = &skipError{reason: fmt.Sprintf("%s: skipped: a client's first transaction failed: %s", name, oneLine(err))}
			}
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			var skip *skipError
			reason := err.Error()
			if errors.As(err, &skip) {
				reason = skip.reason
			}
			reason = oneLine(errors.New(reason))
			if !strings.HasPrefix(reason, name) {
				reason = name + ": skipped: " + reason
			}
			logf(stderr, "%s", reason)
			rep.Skipped = append(rep.Skipped, skippedEndpoint{Name: name, Reason: reason})
			continue
		}
		eps = append(eps, ep)
		tb.eps = append(tb.eps, ep.endpoint)
		logf(stderr, "endpoint %s ready on %s:%d%s", ep.name, ep.host, ep.port, map[bool]string{true: " (" + ep.note + ")", false: ""}[ep.note != ""])
		if ep.note != "" {
			rep.Notes = append(rep.Notes, ep.name+": "+ep.note)
		}
	}
	if len(eps) == 0 {
		return nil, errors.New("no endpoint could be started")
	}
	for _, ep := range eps {
		rep.Endpoints = append(rep.Endpoints, ep.name)
	}
	rep.Env = tb.environment()

	total := o.repeats * len(cases) * len(eps)
	logf(stderr, "plan: %d rounds x %d cases x %d endpoints = %d runs of %s (+ %s warm-up and the connections each)", o.repeats, len(cases), len(eps), total, o.duration, o.warmup)
	for round := 1; round <= o.repeats; round++ {
		for _, c := range cases {
			for _, ep := range eps {
				r := tb.runCase(ctx, ep, c, round)
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				rep.Runs = append(rep.Runs, r)
			}
		}
	}
	rep.summarize()
	md := rep.markdown()
	if _, err := io.WriteString(stdout, "\n"+md); err != nil {
		return rep, err
	}
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(md), 0o644); err != nil {
			return rep, fmt.Errorf("write %s: %w", o.out, err)
		}
		logf(stderr, "results written to %s", o.out)
	}
	return rep, nil
}

// setup starts the cluster, migrates it and creates n tenants, their roles
// and their rows.
func (tb *tenantBench) setup(ctx context.Context, n int) error {
	logf(tb.stderr, "starting a throwaway PostgreSQL (max_connections = %d)", tb.maxConns)
	settings := append(slices.Clone(clusterSettings), fmt.Sprintf("max_connections = %d", tb.maxConns))
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: settings})
	if err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	tb.cluster = c
	if data, err := os.ReadFile(filepath.Join(c.Dir, "data", "postmaster.pid")); err == nil {
		tb.postmaster, _ = strconv.Atoi(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]))
	}
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+benchDB); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	tb.db = benchDB
	tb.adminURL = c.URL(benchDB)

	logf(tb.stderr, "migrations")
	m, err := migrations.New(tb.adminURL, migrations.WithRolePrefix(rolePrefix))
	if err != nil {
		return err
	}
	_, err = m.Up(ctx)
	m.Close()
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	if tb.admin, err = migrations.Connect(ctx, tb.adminURL); err != nil {
		return err
	}
	if tb.sampler, err = migrations.Connect(ctx, tb.adminURL); err != nil {
		return err
	}
	if err := tb.admin.QueryRow(ctx, "SHOW server_version").Scan(&tb.pgVersion); err != nil {
		return err
	}
	tb.secret = make([]byte, 32)
	if _, err := cryptorand.Read(tb.secret); err != nil {
		return err
	}

	start := time.Now()
	width := max(4, len(strconv.Itoa(n)))
	if _, err := tb.admin.Exec(ctx, `INSERT INTO public.tenants (name, slug, type, status)
		SELECT 'Benchmark tenant ' || i, $2 || lpad(i::text, $3, '0'), 'client', 'active'
		FROM generate_series(1, $1::int) AS i`, n, tenantSlugPrefix, width); err != nil {
		return fmt.Errorf("insert %d tenants: %w", n, err)
	}
	tm := tenantroles.New(tb.admin, tenantroles.Options{Secret: tb.secret, Prefix: rolePrefix})
	if _, err := tm.Sync(ctx); err != nil {
		return fmt.Errorf("tenant roles: %w", err)
	}
	logf(tb.stderr, "%d tenants and their roles created in %s (one tenantroles sync)", n, time.Since(start).Round(time.Millisecond))

	if _, err := tb.admin.Exec(ctx, `INSERT INTO public.agents (name, tenant_id)
		SELECT 'agent-' || g, t.id FROM public.tenants t CROSS JOIN generate_series(1, $1::int) AS g
		WHERE t.slug LIKE $2 || '%'`, rowsPerTenant, tenantSlugPrefix); err != nil {
		return fmt.Errorf("load public.agents: %w", err)
	}
	rows, err := tb.admin.Query(ctx, `SELECT t.slug, t.id::text, array_agg(a.id::text ORDER BY a.id)
		FROM public.tenants t JOIN public.agents a ON a.tenant_id = t.id
		WHERE t.slug LIKE $1 || '%' GROUP BY t.slug, t.id ORDER BY t.slug`, tenantSlugPrefix)
	if err != nil {
		return fmt.Errorf("read tenants back: %w", err)
	}
	for rows.Next() {
		var t poolTenant
		if err := rows.Scan(&t.Slug, &t.ID, &t.Agents); err != nil {
			rows.Close()
			return err
		}
		t.Role = auth.RoleName(rolePrefix, t.Slug, auth.ReadWrite)
		tb.tenants = append(tb.tenants, t)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(tb.tenants) != n {
		return fmt.Errorf("created %d tenants with rows, want %d", len(tb.tenants), n)
	}
	var others int
	if err := tb.admin.QueryRow(ctx, `SELECT count(*) FROM public.agents WHERE tenant_id IS NULL OR is_shared`).Scan(&others); err != nil {
		return err
	}
	if others != 0 {
		return fmt.Errorf("public.agents has %d shared or tenant-less rows: the expected answers would be wrong", others)
	}
	tb.rwRole = tb.tenants[0].Role
	for _, q := range []string{"VACUUM ANALYZE", "CHECKPOINT"} {
		if _, err := tb.admin.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// startEndpoint starts one endpoint of the many-tenants mode.
func (tb *tenantBench) startEndpoint(ctx context.Context, name string) (*tenantEndpoint, error) {
	switch name {
	case "vitalproxy-role":
		return tb.startTenantProxy(ctx, name, "")
	case "vitalproxy-context":
		dir, err := os.MkdirTemp("", "vitalproxy-bench-context-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		file := filepath.Join(dir, "vitalproxy.yaml")
		if err := os.WriteFile(file, []byte("isolation:\n  mode: context\n"), 0o600); err != nil {
			return nil, err
		}
		return tb.startTenantProxy(ctx, name, file)
	case "pgbouncer":
		tb.pgbouncerClients = 0
		for _, c := range tb.cases {
			tb.pgbouncerClients = max(tb.pgbouncerClients, c.Clients()+100)
		}
		ep, err := startPgBouncer(ctx, tb.bench, name, "transaction", tb.opts.budget)
		if err != nil {
			return nil, err
		}
		te := &tenantEndpoint{endpoint: ep}
		version, major, minor := pgbouncerVersion(findPgBouncer(tb.opts.pgbouncer))
		if tb.opts.protocol == "extended" && (major < 1 || (major == 1 && minor < 21)) {
			te.unnamed = true
			te.note = fmt.Sprintf("%s keeps no named prepared statements in transaction mode (1.21+ does): its clients use the extended protocol with the unnamed statement (Parse/Bind/Execute per transaction)", version)
		}
		return te, nil
	case "direct":
		return &tenantEndpoint{endpoint: &endpoint{name: name, kind: "direct", host: tb.cluster.Host, port: tb.cluster.Port,
			db: tb.db, stop: func() {}}}, nil
	}
	return nil, fmt.Errorf("unknown endpoint %q", name)
}

// startTenantProxy runs the proxy in pool.mode transaction with the budget
// as pool.max_server_conns and no per-tenant cap; every benchmark tenant is
// reachable as bench@<slug>. file, when not "", is a config file read
// first (the isolation mode).
func (tb *tenantBench) startTenantProxy(ctx context.Context, name, file string) (*tenantEndpoint, error) {
	cfg, err := proxyBaseConfig(tb.bench, file)
	if err != nil {
		return nil, &skipError{reason: fmt.Sprintf("%s: skipped: config refused: %s", name, oneLine(err))}
	}
	password := randomHex(16)
	verifier, err := auth.NewSCRAMVerifier(password)
	if err != nil {
		return nil, err
	}
	cfg.Pool.Mode = "transaction"
	cfg.Pool.MaxServerConns = tb.opts.budget
	cfg.Pool.MaxServerConnsPerTenant = 0
	cfg.Pool.MinIdlePerTenant = 0
	slugs := make([]string, len(tb.tenants))
	for i, t := range tb.tenants {
		slugs[i] = t.Slug
	}
	cfg.Users = []config.User{{Name: tenantUser, Password: config.Secret(verifier), Tenants: slugs, PoolMode: "transaction"}}
	ep, err := serveProxy(ctx, tb.bench, name, cfg, true)
	if err != nil {
		return nil, err
	}
	ep.user, ep.password, ep.pool = tenantUser, password, tb.opts.budget
	return &tenantEndpoint{endpoint: ep}, nil
}

// query returns the SQL every client runs.
func (tb *tenantBench) query() string {
	if tb.opts.tenantQuery == "count" {
		return "SELECT count(*) FROM public.agents"
	}
	return "SELECT tenant_id FROM public.agents WHERE id = $1"
}

// client returns the connection settings of the i-th client of tenant t
// on ep.
func (tb *tenantBench) client(ep *tenantEndpoint, t poolTenant, i int) loadClient {
	c := loadClient{Host: ep.host, Port: ep.port, Database: tb.db}
	// The tenant whose rows the connection sees.
	seen := t
	switch ep.kind {
	case "vitalproxy":
		c.User, c.Password = ep.user+"@"+t.Slug, ep.password
	case "pgbouncer":
		// One login role for every client: it sees its own tenant's
		// rows, so the clients read those.
		c.User, c.Password = ep.user, ep.password
		seen = tb.tenants[0]
	default:
		c.User, c.Password = t.Role, auth.RolePassword(tb.secret, t.Role)
	}
	if tb.opts.tenantQuery == "count" {
		c.Expect = strconv.Itoa(rowsPerTenant)
		return c
	}
	c.Expect = seen.ID
	k := len(seen.Agents)
	for j := range k {
		c.Args = append(c.Args, seen.Agents[(i+j)%k])
	}
	return c
}

// spec returns the load of case c on ep.
func (tb *tenantBench) spec(ep *tenantEndpoint, c tenantCase) *loadSpec {
	s := &loadSpec{Protocol: tb.opts.protocol, Unnamed: ep.unnamed, Query: tb.query(),
		Warmup: tb.opts.warmup, Duration: tb.opts.duration, ConnectParallel: 16, ConnectTimeout: 60 * time.Second}
	perTenant := map[int]int{}
	for _, ti := range c.TenantOf {
		s.Clients = append(s.Clients, tb.client(ep, tb.tenants[ti], perTenant[ti]))
		perTenant[ti]++
	}
	return s
}

// checkEndpoint runs one transaction as the first and the last tenant.
func (tb *tenantBench) checkEndpoint(ctx context.Context, ep *tenantEndpoint) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	spec := &loadSpec{Protocol: tb.opts.protocol, Unnamed: ep.unnamed, Query: tb.query(), ConnectTimeout: 20 * time.Second}
	for _, t := range []poolTenant{tb.tenants[0], tb.tenants[len(tb.tenants)-1]} {
		lc, err := dialLoadConn(ctx, spec, tb.client(ep, t, 0))
		if err != nil {
			return err
		}
		wrong, err := lc.once(ctx)
		lc.close()
		if err != nil {
			return fmt.Errorf("as tenant %s: %w", t.Slug, err)
		}
		if wrong != "" {
			return fmt.Errorf("as tenant %s: %s", t.Slug, wrong)
		}
	}
	return nil
}

// tenantRun is one case on one endpoint in one round.
type tenantRun struct {
	Case     string
	Endpoint string
	Round    int
	// Status is "ok", "failed" or "n/a".
	Status string
	Reason string
	TPS    float64
	Txns   int64
	Errors int64
	Wrong  int64
	// FirstWrong describes the first unexpected answer.
	FirstWrong string
	P50ms      float64
	P99ms      float64
	// TenantMin, TenantMed and TenantMax are per-tenant TPS over the
	// tenants that had clients; Starved counts those with no
	// transaction.
	TenantMin, TenantMed, TenantMax float64
	Starved                         int
	// ProxyCPU is the endpoint process's CPU time over the window (HasCPU
	// false when not measured); PGCPU the cluster's.
	ProxyCPU time.Duration
	HasCPU   bool
	PGCPU    time.Duration
	// Logins are the backends PostgreSQL started during the window (-1
	// when not measured).
	Logins      int64
	Elapsed     time.Duration
	ConnectTime time.Duration
	BusyPct     float64
	ForeignPct  float64
}

// sessions returns pg_stat_database.sessions of the benchmark database
// (PostgreSQL 14+), -1 when unavailable.
func (tb *tenantBench) sessions(ctx context.Context) int64 {
	var n int64
	if err := tb.sampler.QueryRow(ctx, `SELECT sessions FROM pg_catalog.pg_stat_database WHERE datname = $1`, tb.db).Scan(&n); err != nil {
		return -1
	}
	return n
}

// settle waits, up to settleMax, until PostgreSQL has seen no new session
// for a second: a pooler may still be opening server connections for the
// previous run's clients, which must not burden the next run.
func (tb *tenantBench) settle(ctx context.Context) {
	start := time.Now()
	first := tb.sessions(ctx)
	last := first
	for time.Since(start) < settleMax && last >= 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		n := tb.sessions(ctx)
		if n == last {
			break
		}
		last = n
	}
	if d := time.Since(start); d > 3*time.Second {
		logf(tb.stderr, "    waited %s for the previous run's server logins to stop (%d logins after its clients had gone)", d.Round(time.Second), last-first)
	}
}

// runCase runs case c against ep once, redoing it when -max-foreign says
// other processes disturbed it.
func (tb *tenantBench) runCase(ctx context.Context, ep *tenantEndpoint, c tenantCase, round int) tenantRun {
	if ep.kind == "direct" && c.Clients() > tb.directCap {
		return tenantRun{Case: c.Name, Endpoint: ep.name, Round: round, Status: "n/a", Logins: -1,
			Reason: fmt.Sprintf("skipped: %d connections > max_connections %d - %d - the poolers' %d", c.Clients(), tb.maxConns, directReserve, tb.maxConns-directReserve-tb.directCap)}
	}
	for attempt := 0; ; attempt++ {
		tb.settle(ctx)
		r := tb.measureCase(ctx, ep, c, round)
		if r.Status != "ok" || tb.opts.maxForeign <= 0 || r.ForeignPct <= tb.opts.maxForeign ||
			attempt >= tb.opts.foreignRetries || ctx.Err() != nil {
			return r
		}
		logf(tb.stderr, "    other processes used %.0f%% of the machine (> %.0f%%): redoing this run", r.ForeignPct, tb.opts.maxForeign)
	}
}

// measureCase runs the load generator once and reads the counters at the
// measured window's edges.
func (tb *tenantBench) measureCase(ctx context.Context, ep *tenantEndpoint, c tenantCase, round int) tenantRun {
	r := tenantRun{Case: c.Name, Endpoint: ep.name, Round: round, Logins: -1}
	spec := tb.spec(ep, c)
	runCtx, cancel := context.WithTimeout(ctx, 3*time.Minute+tb.opts.warmup+tb.opts.duration)
	defer cancel()
	child, err := startLoadChild(runCtx, spec)
	if err != nil {
		r.Status, r.Reason = "failed", oneLine(err)
		return r
	}
	childCPU := func() float64 {
		d, err := procCPU(child.cmd.Process.Pid)
		if err != nil {
			return 0
		}
		return d.Seconds()
	}
	meter := &machineMeter{postmaster: tb.postmaster, others: func() float64 { return tb.pgbouncerCPU() + childCPU() }}
	var sess0, sess1 int64
	var pg0, pg1 float64
	var c0, c1 time.Duration
	var cpuErr error
	started, stopped := false, false
	res, err := child.run(func() {
		started = true
		sess0 = tb.sessions(ctx)
		pg0 = scanProcs(tb.postmaster).cluster
		meter.start()
		if ep.cpu != nil {
			c0, cpuErr = ep.cpu()
		}
	}, func() {
		stopped = true
		if ep.cpu != nil && cpuErr == nil {
			c1, cpuErr = ep.cpu()
		}
		r.BusyPct, r.ForeignPct = meter.stop()
		pg1 = scanProcs(tb.postmaster).cluster
		sess1 = tb.sessions(ctx)
	})
	if err == nil && (!started || !stopped) {
		err = errors.New("the load generator reported no measured window")
	}
	if err != nil {
		r.Status, r.Reason = "failed", oneLine(err)
		logf(tb.stderr, "  FAILED %s %s round %d: %s", c.Name, ep.name, round, r.Reason)
		return r
	}
	if ep.cpu != nil && cpuErr == nil {
		r.ProxyCPU, r.HasCPU = c1-c0, true
	}
	r.PGCPU = time.Duration((pg1 - pg0) * float64(time.Second))
	if sess0 >= 0 && sess1 >= 0 {
		r.Logins = sess1 - sess0
	}
	r.ConnectTime, r.Elapsed = res.ConnectTime, res.Elapsed
	r.Txns, r.Errors, r.Wrong = res.total()
	r.FirstWrong = res.FirstWrong
	secs := res.Elapsed.Seconds()
	if secs > 0 {
		r.TPS = float64(r.Txns) / secs
	}
	r.P50ms, r.P99ms = res.P50us/1000, res.P99us/1000
	perTenant := map[int]int64{}
	for i, ti := range c.TenantOf {
		perTenant[ti] += res.Txns[i]
	}
	var tps []float64
	for _, n := range perTenant {
		if n == 0 {
			r.Starved++
		}
		if secs > 0 {
			tps = append(tps, float64(n)/secs)
		}
	}
	if len(tps) > 0 {
		r.TenantMin, r.TenantMed, r.TenantMax = slices.Min(tps), median(tps), slices.Max(tps)
	}
	switch {
	case r.Txns == 0:
		r.Status, r.Reason = "failed", "no transaction completed"
		if res.FirstError != "" {
			r.Reason += ": " + res.FirstError
		} else if res.FirstWrong != "" {
			r.Reason += " with the expected answer: " + res.FirstWrong
		}
	default:
		r.Status = "ok"
		if res.FirstError != "" {
			r.Reason = res.FirstError
		}
	}
	line := fmt.Sprintf("  %-9s %-19s round %d: tps=%.0f p50=%.3fms p99=%.3fms tenant tps %.1f/%.1f/%.1f",
		c.Name, ep.name, round, r.TPS, r.P50ms, r.P99ms, r.TenantMin, r.TenantMed, r.TenantMax)
	if r.HasCPU && r.Txns > 0 {
		line += fmt.Sprintf(" cpu=%.1fus/txn", float64(r.ProxyCPU.Microseconds())/float64(r.Txns))
	}
	if r.Txns > 0 {
		line += fmt.Sprintf(" pg=%.1fus/txn", float64(r.PGCPU.Microseconds())/float64(r.Txns))
	}
	line += fmt.Sprintf(" logins=%d connect=%s busy=%.0f%% foreign=%.0f%%", r.Logins, r.ConnectTime.Round(time.Millisecond), r.BusyPct, r.ForeignPct)
	if r.Errors > 0 || r.Wrong > 0 {
		line += fmt.Sprintf(" errors=%d wrong=%d", r.Errors, r.Wrong)
	}
	if r.Status != "ok" {
		line += " FAILED: " + r.Reason
	}
	logf(tb.stderr, "%s", line)
	return r
}

// environment describes the machine and the run.
func (tb *tenantBench) environment() []string {
	base := tb.bench.environmentHost()
	o := tb.opts
	caseNames := make([]string, len(tb.cases))
	for i, c := range tb.cases {
		caseNames[i] = c.Name
	}
	env := []string{
		base,
		"postgres: " + tb.pgVersion,
	}
	if bin := findPgBouncer(o.pgbouncer); bin != "" {
		v, _, _ := pgbouncerVersion(bin)
		env = append(env, "pgbouncer: "+v)
	}
	q := "point select of one of the tenant's agents by id (`" + tb.query() + "`)"
	if o.tenantQuery == "count" {
		q = "`" + tb.query() + "` (row-level security leaves the tenant's own rows)"
	}
	env = append(env,
		fmt.Sprintf("tenants: %d (%d rows each in public.agents, row-level security by tenant); cases %s", len(tb.tenants), rowsPerTenant, strings.Join(caseNames, ", ")),
		fmt.Sprintf("workload: each client one connection, looping one autocommit transaction: %s over the %s protocol%s", q, o.protocol,
			map[bool]string{true: " with a prepared statement", false: ""}[o.protocol == "extended"]),
		fmt.Sprintf("budget: %d server connections (vitalproxy pool.max_server_conns, no per-tenant cap; PgBouncer default_pool_size of its one pool)", o.budget),
		fmt.Sprintf("run: %s measured after %s warm-up, %d interleaved rounds (round > case > endpoint), max-foreign %.0f%% (retries %d)", o.duration, o.warmup, o.repeats, o.maxForeign, o.foreignRetries),
		fmt.Sprintf("pg: max_connections = %d (direct opens at most %d), %s, fsync = off, synchronous_commit = off", tb.maxConns, tb.directCap, strings.Join(clusterSettings[1:], ", ")),
	)
	return env
}
