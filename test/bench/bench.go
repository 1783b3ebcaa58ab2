package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

const (
	// benchTenant is the tenant every endpoint's role belongs to.
	benchTenant = "digital-health-startup"
	// txTenant is the tenant of the transaction-mode proxy endpoint.
	txTenant   = "bench-tx"
	rolePrefix = tenantroles.DefaultPrefix
	benchDB    = "bench"
	// sampleInterval is how often server connections are counted.
	sampleInterval = time.Second
)

// clusterSettings tune the throwaway cluster for a small benchmark box: the
// whole data set in shared_buffers, no checkpoints or parallel plans during
// the runs.
var clusterSettings = []string{
	"max_connections = 300",
	"shared_buffers = 512MB",
	"work_mem = 8MB",
	"max_wal_size = 8GB",
	"checkpoint_timeout = 30min",
	"max_parallel_workers_per_gather = 0",
	"jit = off",
}

// bench is one benchmark run's shared state.
type bench struct {
	opts     options
	stdout   io.Writer
	stderr   io.Writer
	cluster  *pgtest.Cluster
	db       string
	adminURL string
	admin    *pgx.Conn
	// sampler is the connection the server-connection sampler uses.
	sampler *pgx.Conn
	secret  []byte
	rwRole  string
	pgbench string
	// postmaster is the cluster's postmaster pid; eps the started
	// endpoints.
	postmaster int
	eps        []*endpoint
	// pgbouncerClients raises PgBouncer's max_client_conn above its 1000
	// when more clients connect at once.
	pgbouncerClients int
}

// runResult is one pgbench run of one workload against one endpoint.
type runResult struct {
	Workload string
	Endpoint string
	Round    int
	// Status is "ok", "failed" or "n/a".
	Status       string
	Reason       string
	TPS          float64
	LatencyMS    float64
	ConnMS       float64
	Transactions int64
	// CPU is the endpoint process's CPU time over the run (HasCPU false
	// when not measured).
	CPU    time.Duration
	HasCPU bool
	// ServerConns is the largest number of tenant-role backends the
	// endpoint's process held during the run (-1 when not measured).
	ServerConns int
	// BusyPct is how busy the machine was, ForeignPct how much of it went
	// to processes outside the benchmark, in percent of all CPUs.
	BusyPct    float64
	ForeignPct float64
}

// CPUPerTxn returns the endpoint's CPU microseconds per transaction.
func (r runResult) CPUPerTxn() (float64, bool) {
	if !r.HasCPU || r.Transactions <= 0 {
		return 0, false
	}
	return float64(r.CPU.Microseconds()) / float64(r.Transactions), true
}

func (o options) validate() error {
	switch {
	case o.duration < time.Second:
		return errors.New("-duration must be at least 1s")
	case o.repeats < 1:
		return errors.New("-repeats must be at least 1")
	case o.scale < 1:
		return errors.New("-scale must be at least 1")
	case o.warmup < 0:
		return errors.New("-warmup must not be negative")
	case o.maxForeign < 0 || o.foreignRetries < 0:
		return errors.New("-max-foreign and -foreign-retries must not be negative")
	case o.sessionPool < 1 || o.txPool < 1:
		return errors.New("-session-pool and -tx-pool must be at least 1")
	}
	return nil
}

// run sets everything up, measures and reports. Everything it starts is
// stopped before it returns.
func run(ctx context.Context, o options, stdout, stderr io.Writer) (*report, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	wls, err := selectWorkloads(o.workloads)
	if err != nil {
		return nil, err
	}
	kinds, err := selectEndpoints(o.endpoints)
	if err != nil {
		return nil, err
	}
	b := &bench{opts: o, stdout: stdout, stderr: stderr}
	defer b.close()
	if err := b.setup(ctx); err != nil {
		return nil, err
	}

	rep := &report{Options: o}
	for _, w := range wls {
		rep.Workloads = append(rep.Workloads, w.name)
	}
	var eps []*endpoint
	defer func() {
		for i := len(eps) - 1; i >= 0; i-- {
			eps[i].stop()
		}
	}()
	for _, k := range kinds {
		ep, err := k.start(ctx, b)
		var skip *skipError
		if errors.As(err, &skip) {
			logf(stderr, "%s", skip.reason)
			rep.Notes = append(rep.Notes, skip.reason)
			continue
		}
		if err != nil {
			return nil, err
		}
		eps = append(eps, ep)
		b.eps = eps
		if err := checkLogin(ctx, ep); err != nil {
			return nil, fmt.Errorf("%s: login as %s failed: %w", ep.name, ep.user, err)
		}
		desc := ep.mode
		if desc == "" {
			desc = "no pooler"
		}
		logf(stderr, "endpoint %s ready on %s:%d (%s, user %s)", ep.name, ep.host, ep.port, desc, ep.user)
	}
	if len(eps) == 0 {
		return nil, errors.New("no endpoint could be started")
	}
	for _, ep := range eps {
		rep.Endpoints = append(rep.Endpoints, endpointInfo{Name: ep.name, Kind: ep.kind, Mode: ep.mode, Pool: ep.pool})
	}
	rep.Env = b.environment()

	seconds := pgbenchSeconds(o.duration)
	if o.warmup > 0 {
		warm := []string{"-S", "-M", "simple", "-c", "64", "-j", "2"}
		for _, ep := range eps {
			logf(stderr, "warm-up %s (%ds, -S -c 64)", ep.name, pgbenchSeconds(o.warmup))
			if _, _, err := runPgbench(ctx, b.pgbench, ep, warm, pgbenchSeconds(o.warmup), false); err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				logf(stderr, "  warm-up of %s failed (continuing): %s", ep.name, oneLine(err))
			}
		}
	}

	stopProfile, err := b.startProfile(eps)
	if err != nil {
		return nil, err
	}
	defer stopProfile()

	total := len(wls) * o.repeats * len(eps)
	logf(stderr, "plan: %d workloads x %d rounds x %d endpoints = %d runs of %ds (about %s)", len(wls), o.repeats, len(eps), total,
		seconds, (time.Duration(total*(seconds+1)) * time.Second).Round(time.Second))
	for _, w := range wls {
		logf(stderr, "workload %s: pgbench %s -T %d", w.name, strings.Join(w.args, " "), seconds)
		if w.writes {
			if _, err := b.admin.Exec(ctx, "VACUUM pgbench_branches, pgbench_tellers"); err != nil {
				return nil, fmt.Errorf("vacuum: %w", err)
			}
		}
		if _, err := b.admin.Exec(ctx, "CHECKPOINT"); err != nil {
			return nil, fmt.Errorf("checkpoint: %w", err)
		}
		for round := 1; round <= o.repeats; round++ {
			for _, ep := range eps {
				r := b.runOne(ctx, ep, w, round, seconds)
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				rep.Results = append(rep.Results, r)
			}
		}
	}
	stopProfile()
	if o.cpuProfile != "" && hasProxy(eps) {
		rep.Notes = append(rep.Notes, fmt.Sprintf("CPU profile of the measured runs: %s; the proxies' goroutines carry the label endpoint=<name> (go tool pprof -tagfocus=endpoint=vitalproxy %s)", o.cpuProfile, o.cpuProfile))
	}

	rep.summarize()
	if err := rep.writeText(stdout); err != nil {
		return rep, err
	}
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(rep.markdown()), 0o644); err != nil {
			return rep, fmt.Errorf("write %s: %w", o.out, err)
		}
		logf(stderr, "results written to %s", o.out)
	}
	return rep, nil
}

func hasProxy(eps []*endpoint) bool {
	for _, ep := range eps {
		if ep.kind == "vitalproxy" {
			return true
		}
	}
	return false
}

// startProfile starts the CPU profile when asked for and a proxy endpoint
// runs. The returned function stops it; it may be called twice.
func (b *bench) startProfile(eps []*endpoint) (func(), error) {
	if b.opts.cpuProfile == "" || !hasProxy(eps) {
		return func() {}, nil
	}
	f, err := os.Create(b.opts.cpuProfile)
	if err != nil {
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	stopped := false
	return func() {
		if stopped {
			return
		}
		stopped = true
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// runOne runs one workload against one endpoint and measures it.
// A run during which other processes used more than -max-foreign percent
// of the machine is redone up to -foreign-retries times.
func (b *bench) runOne(ctx context.Context, ep *endpoint, w workload, round, seconds int) runResult {
	if ep.skip != nil {
		if why := ep.skip(w); why != "" {
			return runResult{Workload: w.name, Endpoint: ep.name, Round: round, ServerConns: -1, Status: "n/a", Reason: why}
		}
	}
	for attempt := 0; ; attempt++ {
		r := b.measure(ctx, ep, w, round, seconds)
		if r.Status != "ok" || b.opts.maxForeign <= 0 || r.ForeignPct <= b.opts.maxForeign ||
			attempt >= b.opts.foreignRetries || ctx.Err() != nil {
			return r
		}
		logf(b.stderr, "    other processes used %.0f%% of the machine (> %.0f%%): redoing this run", r.ForeignPct, b.opts.maxForeign)
		select {
		case <-ctx.Done():
			return r
		case <-time.After(2 * time.Second):
		}
	}
}

// measure runs pgbench once against ep and measures the endpoint and the
// machine meanwhile.
func (b *bench) measure(ctx context.Context, ep *endpoint, w workload, round, seconds int) runResult {
	r := runResult{Workload: w.name, Endpoint: ep.name, Round: round, ServerConns: -1}
	var sampler *connSampler
	if ep.pid > 0 {
		sampler = startConnSampler(ctx, b.sampler, ep.pid, b.cluster.Port, ep.role, b.db, sampleInterval)
	}
	meter := &machineMeter{postmaster: b.postmaster, others: b.pgbouncerCPU}
	meter.start()
	var c0 time.Duration
	var cpuErr error
	if ep.cpu != nil {
		c0, cpuErr = ep.cpu()
	}
	res, out, err := runPgbench(ctx, b.pgbench, ep, w.args, seconds, w.connect)
	if ep.cpu != nil && cpuErr == nil {
		c1, err := ep.cpu()
		if err == nil {
			r.CPU, r.HasCPU = c1-c0, true
		}
	}
	if sampler != nil {
		n, serr := sampler.stop()
		if serr == nil {
			r.ServerConns = n
		}
	}
	r.BusyPct, r.ForeignPct = meter.stop()
	r.TPS, r.LatencyMS, r.ConnMS, r.Transactions = res.TPS, res.LatencyMS, res.ConnMS, res.Transactions
	if err != nil {
		r.Status, r.Reason = "failed", oneLine(err)
		logf(b.stderr, "  FAILED %s %s round %d: %s", w.name, ep.name, round, r.Reason)
		if os.Getenv("BENCH_VERBOSE") != "" {
			fmt.Fprintln(b.stderr, out)
		}
		return r
	}
	r.Status = "ok"
	line := fmt.Sprintf("  %-15s %-18s round %d: tps=%.0f lat=%.3fms", w.name, ep.name, round, r.TPS, r.LatencyMS)
	if r.ConnMS > 0 {
		line += fmt.Sprintf(" conn=%.3fms", r.ConnMS)
	}
	if us, ok := r.CPUPerTxn(); ok {
		line += fmt.Sprintf(" cpu=%.1fus/txn", us)
	}
	if r.ServerConns >= 0 {
		line += fmt.Sprintf(" server_conns=%d", r.ServerConns)
	}
	line += fmt.Sprintf(" busy=%.0f%% foreign=%.0f%%", r.BusyPct, r.ForeignPct)
	logf(b.stderr, "%s", line)
	return r
}

// setup starts the cluster and prepares the database: migrations, tenant
// roles, pgbench's tables and the grants a tenant role needs to run the
// workloads.
func (b *bench) setup(ctx context.Context) error {
	logf(b.stderr, "starting a throwaway PostgreSQL")
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: clusterSettings})
	if err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	b.cluster = c
	if data, err := os.ReadFile(filepath.Join(c.Dir, "data", "postmaster.pid")); err == nil {
		b.postmaster, _ = strconv.Atoi(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]))
	}
	b.pgbench = filepath.Join(c.BinDir, "pgbench")
	if _, err := os.Stat(b.pgbench); err != nil {
		p, lerr := exec.LookPath("pgbench")
		if lerr != nil {
			return errors.New("pgbench not found next to the server binaries nor on PATH (apt-get install postgresql-client)")
		}
		b.pgbench = p
	}
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+benchDB); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	b.db = benchDB
	b.adminURL = c.URL(benchDB)

	logf(b.stderr, "migrations and tenant roles")
	m, err := migrations.New(b.adminURL, migrations.WithRolePrefix(rolePrefix))
	if err != nil {
		return err
	}
	_, err = m.Up(ctx)
	m.Close()
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	b.admin, err = migrations.Connect(ctx, b.adminURL)
	if err != nil {
		return err
	}
	b.sampler, err = migrations.Connect(ctx, b.adminURL)
	if err != nil {
		return err
	}
	b.secret = make([]byte, 32)
	if _, err := rand.Read(b.secret); err != nil {
		return err
	}
	tm := tenantroles.New(b.admin, tenantroles.Options{Secret: b.secret, Prefix: rolePrefix})
	if _, err := tm.Sync(ctx); err != nil {
		return fmt.Errorf("tenant roles: %w", err)
	}
	// The transaction-mode proxy serves a tenant of its own: both proxies
	// run in this process, and their server connections are told apart by
	// role.
	if _, err := tm.Add(ctx, tenantroles.Spec{Slug: txTenant, Name: "Benchmark (transaction mode)", Type: "industry"}); err != nil {
		return fmt.Errorf("add tenant %s: %w", txTenant, err)
	}
	b.rwRole = auth.RoleName(rolePrefix, benchTenant, auth.ReadWrite)

	logf(b.stderr, "pgbench -i -s %d", b.opts.scale)
	cmd := exec.CommandContext(ctx, b.pgbench, "-i", "-q", "-s", strconv.Itoa(b.opts.scale),
		"-h", c.Host, "-p", strconv.Itoa(c.Port), "-U", c.User, b.db)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+c.Password, "PGSSLMODE=disable", "LC_ALL=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %w: %s", err, lastLine(string(out)))
	}
	// A tenant role reads the tables; the writer group may change only the
	// balance columns and append history (column-level UPDATE, no DELETE
	// or TRUNCATE), which is what tpcb needs and what the isolation audit
	// allows.
	grants := `
		GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO vital_tenant;
		GRANT UPDATE (abalance) ON pgbench_accounts TO vital_tenant_writer;
		GRANT UPDATE (bbalance) ON pgbench_branches TO vital_tenant_writer;
		GRANT UPDATE (tbalance) ON pgbench_tellers TO vital_tenant_writer;
		GRANT INSERT ON pgbench_history TO vital_tenant_writer;`
	if _, err := b.admin.Exec(ctx, grants); err != nil {
		return fmt.Errorf("grant pgbench tables: %w", err)
	}
	for _, q := range []string{"VACUUM ANALYZE", "CHECKPOINT"} {
		if _, err := b.admin.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// pgbouncerCPU returns the CPU seconds of the running PgBouncers.
func (b *bench) pgbouncerCPU() float64 {
	var t time.Duration
	for _, ep := range b.eps {
		if ep.kind == "pgbouncer" && ep.cpu != nil {
			if d, err := ep.cpu(); err == nil {
				t += d
			}
		}
	}
	return t.Seconds()
}

// close stops the cluster.
func (b *bench) close() {
	for _, c := range []*pgx.Conn{b.admin, b.sampler} {
		if c != nil {
			c.Close(context.Background())
		}
	}
	if b.cluster != nil {
		b.cluster.Stop()
	}
}

// environmentHost describes the machine.
func (b *bench) environmentHost() string {
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "model name") {
				if i := strings.IndexByte(l, ':'); i >= 0 {
					cpu = strings.TrimSpace(l[i+1:])
				}
				break
			}
		}
	}
	return fmt.Sprintf("host: %s/%s, %d CPUs (%s), %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), cpu, runtime.Version())
}

// environment describes the machine and the run.
func (b *bench) environment() []string {
	version := func(bin string) string {
		out, err := exec.Command(bin, "--version").Output()
		if err != nil {
			return "unknown"
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	env := []string{
		b.environmentHost(),
		fmt.Sprintf("postgres: %s; pgbench: %s", version(filepath.Join(b.cluster.BinDir, "postgres")), version(b.pgbench)),
	}
	if bin := findPgBouncer(b.opts.pgbouncer); bin != "" {
		v, _, _ := pgbouncerVersion(bin)
		env = append(env, fmt.Sprintf("pgbouncer: %s (session pool %d, transaction pool %d)", v, b.opts.sessionPool, b.opts.txPool))
	}
	env = append(env,
		fmt.Sprintf("run: -T %ds, %d interleaved rounds, warm-up %s, scale %d, max-foreign %.0f%% (retries %d)", pgbenchSeconds(b.opts.duration), b.opts.repeats, b.opts.warmup, b.opts.scale, b.opts.maxForeign, b.opts.foreignRetries),
		"pg: "+strings.Join(clusterSettings, ", ")+", fsync = off, synchronous_commit = off",
		fmt.Sprintf("roles: every endpoint logs in as or through a tenant's read-write role, never a superuser: %s (tenant %s), for vitalproxy-tx %s (tenant %s, same privileges)",
			b.rwRole, benchTenant, auth.RoleName(rolePrefix, txTenant, auth.ReadWrite), txTenant),
	)
	return env
}

func randomHex(n int) string {
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		panic(err)
	}
	return hex.EncodeToString(buf)
}
