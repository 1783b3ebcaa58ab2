package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/proxy"
)

// endpoint is one place pgbench connects to.
type endpoint struct {
	name string
	// mode is "session" or "transaction" for poolers, "" for direct.
	mode string
	// kind is "direct", "vitalproxy" or "pgbouncer".
	kind     string
	host     string
	port     int
	user     string
	password string
	db       string
	// cpu returns the CPU time the endpoint's own process used so far; nil
	// when it is not measured.
	cpu func() (time.Duration, error)
	// skip returns why the workload does not apply, or "".
	skip func(w workload) string
	// role is the PostgreSQL role the endpoint's server connections use.
	role string
	// pid is the process holding the endpoint's server connections (0 =
	// none: direct).
	pid int
	// pool is the most server connections the endpoint should use (0 = as
	// many as clients).
	pool int
	// stop releases what the endpoint started.
	stop func()
}

// skipError says an endpoint cannot run here, and why.
type skipError struct{ reason string }

func (e *skipError) Error() string { return e.reason }

// endpointKind starts one endpoint.
type endpointKind struct {
	name  string
	start func(ctx context.Context, b *bench) (*endpoint, error)
}

// endpointKinds are the available endpoints, in the order each round runs
// them. Add a new one here.
var endpointKinds = []endpointKind{
	{name: "direct", start: startDirect},
	{name: "vitalproxy", start: func(ctx context.Context, b *bench) (*endpoint, error) {
		return startProxy(ctx, b, "vitalproxy", "session", benchTenant)
	}},
	{name: "vitalproxy-tx", start: func(ctx context.Context, b *bench) (*endpoint, error) {
		return startProxy(ctx, b, "vitalproxy-tx", "transaction", txTenant)
	}},
	{name: "pgbouncer-session", start: func(ctx context.Context, b *bench) (*endpoint, error) {
		return startPgBouncer(ctx, b, "pgbouncer-session", "session", b.opts.sessionPool)
	}},
	{name: "pgbouncer-tx", start: func(ctx context.Context, b *bench) (*endpoint, error) {
		return startPgBouncer(ctx, b, "pgbouncer-tx", "transaction", b.opts.txPool)
	}},
}

func endpointNames() []string {
	out := make([]string, 0, len(endpointKinds))
	for _, k := range endpointKinds {
		out = append(out, k.name)
	}
	return out
}

// selectEndpoints applies the -endpoints filter.
func selectEndpoints(filter string) ([]endpointKind, error) {
	filter = strings.TrimSpace(filter)
	if filter == "" || filter == "all" {
		return slices.Clone(endpointKinds), nil
	}
	var want []string
	for _, name := range strings.Split(filter, ",") {
		name = strings.TrimSpace(name)
		if !slices.ContainsFunc(endpointKinds, func(k endpointKind) bool { return k.name == name }) {
			return nil, fmt.Errorf("unknown endpoint %q (have %s)", name, strings.Join(endpointNames(), ", "))
		}
		want = append(want, name)
	}
	var out []endpointKind
	for _, k := range endpointKinds {
		if slices.Contains(want, k.name) {
			out = append(out, k)
		}
	}
	return out, nil
}

// startDirect logs in to PostgreSQL as the tenant's read-write role.
func startDirect(_ context.Context, b *bench) (*endpoint, error) {
	return &endpoint{name: "direct", kind: "direct", host: b.cluster.Host, port: b.cluster.Port, role: b.rwRole,
		user: b.rwRole, password: auth.RolePassword(b.secret, b.rwRole), db: b.db, stop: func() {}}, nil
}

// startProxy runs the proxy in-process with one config user, "bench",
// mapped to tenant. Its goroutines carry the pprof label endpoint=<name>.
func startProxy(ctx context.Context, b *bench, name, mode, tenant string) (*endpoint, error) {
	cfg, err := proxyBaseConfig(b, "")
	if err != nil {
		return nil, fmt.Errorf("%s: default config: %w", name, err)
	}
	password := randomHex(16)
	verifier, err := auth.NewSCRAMVerifier(password)
	if err != nil {
		return nil, err
	}
	cfg.Pool.Mode = mode
	pool := 0
	if mode == "transaction" {
		pool = b.opts.txPool
		cfg.Pool.MaxServerConnsPerTenant = pool
		if cfg.Pool.MaxServerConns < pool {
			cfg.Pool.MaxServerConns = pool
		}
	}
	cfg.Users = []config.User{{Name: "bench", Password: config.Secret(verifier), Tenant: tenant, PoolMode: mode}}
	ep, err := serveProxy(ctx, b, name, cfg, mode != "session")
	if err != nil {
		return nil, err
	}
	ep.user, ep.password, ep.pool = "bench", password, pool
	ep.role = auth.RoleName(rolePrefix, tenant, auth.ReadWrite)
	if mode == "transaction" {
		if err := probeTxMode(ctx, ep); err != nil {
			ep.stop()
			return nil, &skipError{reason: fmt.Sprintf("%s: skipped: %s", name, oneLine(err))}
		}
	}
	return ep, nil
}

// proxyBaseConfig loads the configuration (from file when not "", else the
// defaults) and points it at the benchmark's cluster: tenants log in
// upstream as their own roles, clients on a free loopback port, no TLS, no
// metrics listener, no users or tenant overrides yet.
func proxyBaseConfig(b *bench, file string) (*config.Config, error) {
	cfg, err := config.Load(config.Options{File: file})
	if err != nil {
		return nil, err
	}
	cfg.DatabaseURL = config.Secret(b.adminURL)
	// Tenants log in upstream as their own roles: no user in the URL.
	upstream := b.cluster.URLFor("", "", b.db)
	if u, err := url.Parse(upstream); err == nil {
		u.User = nil
		upstream = u.String()
	}
	// The other upstream keys keep their defaults.
	cfg.Upstream.URL, cfg.Upstream.Hosts = upstream, nil
	cfg.Upstream.AdminURL = config.Secret(b.adminURL)
	cfg.Upstream.ConnectTimeout = 10 * time.Second
	cfg.RoleSecret = config.Secret(base64.StdEncoding.EncodeToString(b.secret))
	cfg.RoleSecretFile = ""
	cfg.RolePrefix = rolePrefix
	cfg.Listen = "127.0.0.1:0"
	cfg.ListenSocketDir = ""
	cfg.Metrics.Listen = ""
	cfg.TLS = config.TLS{}
	cfg.Auth.Methods = []string{"scram-sha-256"}
	cfg.Log.Level = b.opts.proxyLogLevel
	cfg.Limits.ShutdownTimeout = 2 * time.Second
	cfg.Users = nil
	cfg.Tenants = nil
	cfg.File = ""
	return cfg, nil
}

// serveProxy runs the proxy configured by cfg in-process until the
// endpoint's stop. Its goroutines carry the pprof label endpoint=<name>.
// A refused configuration is a *skipError; so is a proxy that fails to
// start when skippable. The caller fills in the endpoint's user, password,
// role and pool.
func serveProxy(ctx context.Context, b *bench, name string, cfg *config.Config, skippable bool) (*endpoint, error) {
	mode := cfg.Pool.Mode
	if err := cfg.Validate(); err != nil {
		return nil, &skipError{reason: fmt.Sprintf("%s: config refused: %s", name, oneLine(err))}
	}
	level := slog.LevelWarn
	_ = level.UnmarshalText([]byte(b.opts.proxyLogLevel))
	logger := slog.New(slog.NewTextHandler(b.stderr, &slog.HandlerOptions{Level: level})).With("endpoint", name)
	srv, err := proxy.New(cfg, logger, proxy.WithDirectoryRefresh(0), proxy.WithConfigPoll(0))
	if err != nil {
		if skippable {
			return nil, &skipError{reason: fmt.Sprintf("%s: the proxy refused pool.mode %s: %s", name, mode, oneLine(err))}
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go pprof.Do(runCtx, pprof.Labels("endpoint", name), func(ctx context.Context) { done <- srv.Run(ctx) })
	select {
	case <-srv.Ready():
	case err := <-done:
		cancel()
		if err == nil {
			err = errors.New("stopped before it was ready")
		}
		if skippable {
			return nil, &skipError{reason: fmt.Sprintf("%s: the proxy did not start with pool.mode %s: %s", name, mode, oneLine(err))}
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	case <-ctx.Done():
		cancel()
		<-done
		return nil, ctx.Err()
	}
	ta, ok := srv.Addr().(*net.TCPAddr)
	if !ok {
		cancel()
		<-done
		return nil, fmt.Errorf("%s: no TCP address", name)
	}
	return &endpoint{name: name, kind: "vitalproxy", mode: mode, host: "127.0.0.1", port: ta.Port,
		db: b.db, cpu: selfCPU, pid: os.Getpid(),
		stop: func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
			}
		}}, nil
}

// probeTxMode checks that a transaction-mode endpoint serves more clients
// at once than it has server connections: it holds pool+1 client
// connections open and runs a query on each. A proxy that ignores
// pool.mode transaction (session mode with the pool's limit) leaves the
// last client waiting.
func probeTxMode(ctx context.Context, ep *endpoint) error {
	n := ep.pool + 1
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conns := make([]*pgx.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg, err := endpointConfig(ep)
			if err != nil {
				errs[i] = err
				return
			}
			cfg.ConnectTimeout = 5 * time.Second
			c, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				errs[i] = err
				return
			}
			conns[i] = c
			var one int
			errs[i] = c.QueryRow(ctx, "SELECT 1").Scan(&one)
		}()
	}
	wg.Wait()
	failed := 0
	var first error
	for i := range n {
		if conns[i] != nil {
			conns[i].Close(context.WithoutCancel(ctx))
		}
		if errs[i] != nil {
			failed++
			if first == nil {
				first = errs[i]
			}
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d clients could not connect and query with a pool of %d server connections (%v): pool.mode transaction is not in effect in this build",
			failed, n, ep.pool, first)
	}
	return nil
}

// findPgBouncer returns the PgBouncer binary, or "".
func findPgBouncer(override string) string {
	if override != "" {
		return override
	}
	if st, err := os.Stat("/usr/sbin/pgbouncer"); err == nil && !st.IsDir() {
		return "/usr/sbin/pgbouncer"
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	return ""
}

var rePgBouncerVersion = regexp.MustCompile(`PgBouncer (\d+)\.(\d+)`)

// pgbouncerVersion returns the first line of `pgbouncer --version` and
// the major and minor version.
func pgbouncerVersion(bin string) (string, int, int) {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "", 0, 0
	}
	first := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	m := rePgBouncerVersion.FindStringSubmatch(first)
	if m == nil {
		return first, 0, 0
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	return first, major, minor
}

// runAsUser returns the credentials to run a server as when this process
// is root (PgBouncer refuses to run as root): postgres, else nobody.
func runAsUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("running as root and found neither a postgres nor a nobody user to run PgBouncer as")
}

// startPgBouncer runs PgBouncer in front of the cluster. Clients and
// PgBouncer's server logins use the tenant's read-write role: the auth_file
// holds the role's SCRAM verifier copied from pg_authid, so PgBouncer can
// log in upstream with the client's SCRAM keys.
func startPgBouncer(ctx context.Context, b *bench, name, mode string, pool int) (*endpoint, error) {
	bin := findPgBouncer(b.opts.pgbouncer)
	if bin == "" {
		return nil, &skipError{reason: "pgbouncer not installed (apt-get install pgbouncer): skipped"}
	}
	version, major, minor := pgbouncerVersion(bin)
	cred, err := runAsUser()
	if err != nil {
		return nil, err
	}
	var verifier string
	if err := b.admin.QueryRow(ctx, `SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1`, b.rwRole).Scan(&verifier); err != nil {
		return nil, fmt.Errorf("%s: read the role's SCRAM verifier: %w", name, err)
	}
	if !strings.HasPrefix(verifier, "SCRAM-SHA-256$") {
		return nil, fmt.Errorf("%s: role %s has no SCRAM verifier", name, b.rwRole)
	}
	dir, err := os.MkdirTemp("", "vitalproxy-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*endpoint, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return fail(err)
	}
	userlist := filepath.Join(dir, "userlist.txt")
	ini := filepath.Join(dir, "pgbouncer.ini")
	prepared := ""
	if major > 1 || (major == 1 && minor >= 21) {
		prepared = "max_prepared_statements = 200\n"
	}
	files := map[string]string{
		userlist: fmt.Sprintf("%q %q\n", b.rwRole, verifier),
		ini: fmt.Sprintf(`[databases]
%s = host=%s port=%d dbname=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %s
pool_mode = %s
max_client_conn = %d
default_pool_size = %d
min_pool_size = 0
reserve_pool_size = 0
server_lifetime = 7200
server_idle_timeout = 7200
server_tls_sslmode = disable
client_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 60
%s`, b.db, b.cluster.Host, b.cluster.Port, b.db, port, userlist, mode, max(1000, b.pgbouncerClients), pool, prepared),
	}
	for path, content := range files {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			return fail(err)
		}
	}
	if cred != nil {
		for _, p := range []string{dir, userlist, ini} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return fail(fmt.Errorf("%s: chown %s: %w", name, p, err))
			}
		}
	}
	logPath := filepath.Join(dir, "pgbouncer.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return fail(err)
	}
	cmd := exec.Command(bin, ini)
	cmd.Dir = dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Its own process group: a Ctrl-C reaches the harness, which stops
	// PgBouncer in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fail(fmt.Errorf("%s: start %s: %w", name, bin, err))
	}
	logFile.Close()
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		os.RemoveAll(dir)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-exited:
			logText, _ := os.ReadFile(logPath)
			os.RemoveAll(dir)
			return nil, fmt.Errorf("%s exited at start: %s", name, lastLine(string(logText)))
		default:
		}
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("%s did not accept connections within 15s", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pid := cmd.Process.Pid
	ep := &endpoint{name: name, kind: "pgbouncer", mode: mode, host: "127.0.0.1", port: port,
		user: b.rwRole, password: auth.RolePassword(b.secret, b.rwRole), db: b.db, pool: pool, pid: pid, role: b.rwRole,
		cpu: func() (time.Duration, error) { return procCPU(pid) }, stop: stop}
	if mode == "transaction" && prepared == "" {
		ep.skip = func(w workload) string {
			if w.prepared {
				return fmt.Sprintf("%s has no -M prepared support in transaction mode (1.21+ does)", version)
			}
			return ""
		}
	}
	return ep, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// endpointConfig returns a pgx configuration that logs in to ep as
// pgbench does (plain TCP, the endpoint's user).
func endpointConfig(ep *endpoint) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Password, cfg.Database = ep.host, uint16(ep.port), ep.user, ep.password, ep.db
	cfg.TLSConfig = nil
	cfg.Fallbacks = nil
	cfg.ConnectTimeout = 10 * time.Second
	return cfg, nil
}

// checkLogin connects to ep as pgbench will and reads a pgbench table.
func checkLogin(ctx context.Context, ep *endpoint) error {
	cfg, err := endpointConfig(ep)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var n int
	return conn.QueryRow(ctx, "SELECT count(*) FROM pgbench_branches").Scan(&n)
}
