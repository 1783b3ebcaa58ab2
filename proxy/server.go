package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/proxy/notify"
	"github.com/vitalproxy/vitalproxy/proxy/observe"
	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/rawio"
	"github.com/vitalproxy/vitalproxy/proxy/sessionmode"
	"github.com/vitalproxy/vitalproxy/proxy/topology"
	"github.com/vitalproxy/vitalproxy/proxy/upstream"
)

// Default intervals of the background work; see the With options.
const (
	DefaultDirectoryRefresh = 10 * time.Second
	DefaultConfigPoll       = 3 * time.Second
)

// Option tunes a Server.
type Option func(*options)

type options struct {
	unsafe     bool
	version    string
	loader     func() (*config.Config, error)
	refresh    time.Duration
	configPoll time.Duration
}

// WithUnsafe lets the server start although the isolation audit fails. The
// failures, and the fact that the server runs unsafe, are logged at WARN on
// every start.
func WithUnsafe(unsafe bool) Option { return func(o *options) { o.unsafe = unsafe } }

// WithVersion sets the version reported by vitalproxy_build_info.
func WithVersion(v string) Option { return func(o *options) { o.version = v } }

// WithConfigLoader gives the server a way to re-read its configuration on
// Reload and when the config file changes. Without it Reload only refreshes
// users and tenants from the database.
func WithConfigLoader(load func() (*config.Config, error)) Option {
	return func(o *options) { o.loader = load }
}

// WithDirectoryRefresh sets how often users and tenants are re-read from the
// database (DefaultDirectoryRefresh); zero or less turns it off.
func WithDirectoryRefresh(d time.Duration) Option { return func(o *options) { o.refresh = d } }

// WithConfigPoll sets how often the config file's modification time is
// checked (DefaultConfigPoll); zero or less turns it off.
func WithConfigPoll(d time.Duration) Option { return func(o *options) { o.configPoll = d } }

// runtimeConfig is one generation of configuration; a reload swaps in a new
// one and sessions keep the generation they started with.
type runtimeConfig struct {
	cfg        *config.Config
	auth       *auth.Authenticator
	dialer     *upstream.Dialer
	upstreamDB string
	secret     []byte
	// contextKey signs the tenant contexts of shared backends.
	contextKey []byte
	tls        *tls.Config
	// namespaces caches each tenant's notification channel namespace,
	// derived from secret (see channels).
	namespaces sync.Map // tenant id -> *notify.Namespace
}

// channels returns a tenant's notification channel namespace, derived once
// per runtime configuration rather than at every session's start.
func (rt *runtimeConfig) channels(tenantID string) *notify.Namespace {
	if ns, ok := rt.namespaces.Load(tenantID); ok {
		return ns.(*notify.Namespace)
	}
	ns, _ := rt.namespaces.LoadOrStore(tenantID, notify.New(rt.secret, tenantID))
	return ns.(*notify.Namespace)
}

func buildRuntime(cfg *config.Config) (*runtimeConfig, error) {
	if err := cfg.RequireServe(); err != nil {
		return nil, err
	}
	secret, err := cfg.RoleSecretBytes()
	if err != nil {
		return nil, err
	}
	dialer, err := upstream.NewDialer(cfg.Upstream.URL, func(role string) string { return auth.RolePassword(secret, role) },
		cfg.Upstream.ConnectTimeout)
	if err != nil {
		// pgconn's error may quote the URL with its password.
		return nil, errors.New("upstream.url cannot be parsed as a PostgreSQL connection URL")
	}
	if cfg.Console.Database == dialer.Database() {
		return nil, fmt.Errorf("console.database %q is the upstream database's name; pick another name for the console", cfg.Console.Database)
	}
	if cfg.Console.PgBouncerDatabase != "" && cfg.Console.PgBouncerDatabase == dialer.Database() {
		return nil, fmt.Errorf("console.pgbouncer_database %q is the upstream database's name; pick another name or set it empty", cfg.Console.PgBouncerDatabase)
	}
	tc, err := buildTLS(cfg.TLS)
	if err != nil {
		return nil, err
	}
	return &runtimeConfig{
		cfg:        cfg,
		auth:       auth.NewAuthenticator(auth.Options{Methods: cfg.Auth.Methods, RolePrefix: cfg.RolePrefix, Secret: secret}),
		dialer:     dialer,
		upstreamDB: dialer.Database(),
		secret:     secret,
		contextKey: auth.ContextKey(secret),
		tls:        tc,
	}, nil
}

// buildTLS loads the client-facing certificate; nil when TLS is off.
func buildTLS(t config.TLS) (*tls.Config, error) {
	if !t.Enabled() {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: load certificate: %w", err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if t.ClientCAFile != "" {
		pem, err := os.ReadFile(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: read client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls: client_ca_file %s holds no PEM certificate", t.ClientCAFile)
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return c, nil
}

// Server is the proxy. Build it with New and start it with Run; its methods
// are safe for concurrent use.
type Server struct {
	logger   *slog.Logger
	opts     options
	registry *prometheus.Registry
	metrics  *observe.Metrics
	cancels  *cancelMap
	admin    *adminConn
	counts   *clientCounts
	// steer is the operator console's run-time state.
	steer *steering

	rt  atomic.Pointer[runtimeConfig]
	dir atomic.Pointer[auth.Directory]
	// pool lends server connections to sessions; built by Run.
	pool *pool.Pool
	// recycling tracks backends being reset after their client left.
	recycling sync.WaitGroup
	// loops forward plain-socket sessions (nil: goroutine copies).
	loops *sessionmode.Loops
	// router picks the upstream host of each backend when there are
	// several (nil: a single upstream host).
	router *router

	started  atomic.Bool
	draining atomic.Bool
	// stopRun stops Run as a cancelled context does (console SHUTDOWN);
	// drainAll: the drain waits for every client (SHUTDOWN WAIT).
	stopRun  atomic.Pointer[context.CancelFunc]
	drainAll atomic.Bool
	ready    chan struct{}
	// consoleLogins counts console sessions still authenticating (they
	// are exempt from limits.max_client_conns; see maxConsoleLogins).
	consoleLogins atomic.Int64
	// clients counts sessions past the StartupMessage, for
	// limits.max_client_conns.
	clients atomic.Int64

	mu          sync.Mutex
	addr        net.Addr
	socketAddr  net.Addr
	metricsAddr net.Addr
	sessions    map[*session]struct{}
	sessionWG   sync.WaitGroup

	reloadMu sync.Mutex
	// fileStamp is the config file's modification time and size at the
	// last load.
	fileStamp string
}

// New checks cfg and builds a Server; it does no I/O. Run starts it.
func New(cfg *config.Config, logger *slog.Logger, opts ...Option) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	o := options{version: "dev", refresh: DefaultDirectoryRefresh, configPoll: DefaultConfigPoll}
	for _, opt := range opts {
		opt(&o)
	}
	rt, err := buildRuntime(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Upstream.AdminURL == "" {
		return nil, errors.New("no admin connection: set upstream.admin_url or database_url (the proxy reads users and tenants through it)")
	}
	reg := prometheus.NewRegistry()
	observe.RegisterRuntime(reg)
	s := &Server{
		logger:    logger,
		opts:      o,
		registry:  reg,
		metrics:   observe.NewMetrics(reg, cfg.Metrics.TenantLabelCap, o.version),
		cancels:   newCancelMap(),
		counts:    newClientCounts(),
		steer:     newSteering(),
		admin:     newAdminConn(string(cfg.Upstream.AdminURL)),
		ready:     make(chan struct{}),
		sessions:  make(map[*session]struct{}),
		fileStamp: fileStamp(cfg.File),
	}
	s.rt.Store(rt)
	if s.router, err = newRouter(cfg, reg, logger); err != nil {
		return nil, err
	}
	if r := s.router; r != nil {
		// The administrative connection follows the primary.
		s.admin.primary = func() (topology.Endpoint, bool) {
			h, ok := r.checker.Primary()
			if !ok {
				return topology.Endpoint{}, false
			}
			ep, ok := r.hosts[h.Name]
			return ep, ok
		}
	}
	return s, nil
}

// Ready is closed once the server accepts clients.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the TCP address clients connect to (with the real port when
// listen was port 0), or nil before Ready or without a TCP listener.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// SocketAddr returns the Unix socket address, or nil.
func (s *Server) SocketAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.socketAddr
}

// MetricsAddr returns the address of the /metrics, /healthz and /readyz
// endpoint, or nil before Ready or when metrics.listen is empty.
func (s *Server) MetricsAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.metricsAddr
}

// Gatherer returns the server's private metrics registry.
func (s *Server) Gatherer() prometheus.Gatherer { return s.registry }

func (s *Server) directory() *auth.Directory { return s.dir.Load() }

// Run starts the server and blocks until ctx is cancelled and the sessions
// have drained (or limits.shutdown_timeout passed and they were closed). It
// fails before accepting anyone when the admin database is unreachable, the
// users and tenants cannot be loaded, a listener cannot be opened, or the
// isolation audit fails (unless WithUnsafe).
func (s *Server) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return ErrAlreadyStarted
	}
	ctx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	s.stopRun.Store(&stopRun)
	defer s.admin.close()
	rt := s.rt.Load()
	if s.opts.unsafe {
		s.logger.Warn("running with --unsafe: the proxy starts even if the isolation audit fails; tenant isolation is not verified")
	}
	if err := s.audit(ctx, true); err != nil {
		return startErr(ctx, err)
	}
	dir, err := s.loadDirectory(ctx, rt.cfg)
	if err != nil {
		return startErr(ctx, err)
	}
	s.dir.Store(dir)
	s.pool, err = s.newPool(poolSettingsFrom(rt.cfg))
	if err != nil {
		return err
	}
	defer s.pool.Close()
	if s.loops, err = sessionmode.NewLoops(forwardLoops()); err != nil {
		s.logger.Warn("event-loop forwarding unavailable; using goroutine copies", "error", err)
		s.loops = nil
	}
	if s.loops != nil {
		defer s.loops.Close()
	}
	s.metrics.WatchPool(s.registry, s.pool, func() *upstream.Dialer { return s.rt.Load().dialer })

	listeners, err := s.listen(rt.cfg)
	if err != nil {
		return err
	}
	httpSrv, err := s.startHTTP(rt.cfg)
	if err != nil {
		for _, l := range listeners {
			_ = l.Close()
		}
		return err
	}

	// Sessions live in their own context, cancelled only when the drain
	// deadline passes: a SIGTERM stops accepting but lets them finish.
	sessCtx, killSessions := context.WithCancel(context.WithoutCancel(ctx))
	defer killSessions()
	bgCtx, stopBackground := context.WithCancel(ctx)
	var bg sync.WaitGroup
	if r := s.router; r != nil {
		s.startRouter(bgCtx, &bg, r)
	}
	bg.Add(1)
	go func() {
		defer bg.Done()
		s.background(bgCtx)
	}()
	s.startProbe(bgCtx, &bg, rt.cfg.Probe)
	var accepting sync.WaitGroup
	for _, l := range listeners {
		accepting.Add(1)
		go func() {
			defer accepting.Done()
			s.acceptLoop(sessCtx, l)
		}()
	}
	if httpSrv != nil {
		bg.Add(1)
		go func() {
			defer bg.Done()
			httpSrv.Serve()
		}()
	}
	s.logger.Info("proxy ready", s.readyAttrs()...)
	close(s.ready)

	<-ctx.Done()
	s.draining.Store(true)
	for _, l := range listeners {
		_ = l.Close()
	}
	accepting.Wait()
	s.drain(s.drainTimeout(rt.cfg.Limits.ShutdownTimeout), killSessions)
	s.recycling.Wait()
	stopBackground()
	if httpSrv != nil {
		httpSrv.Shutdown()
	}
	bg.Wait()
	s.logger.Info("proxy stopped")
	return nil
}

// startErr returns err unless ctx was cancelled during start-up, which is
// a shutdown, not a failure.
func startErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (s *Server) readyAttrs() []any {
	var attrs []any
	if a := s.Addr(); a != nil {
		attrs = append(attrs, "listen", a.String())
	}
	if a := s.SocketAddr(); a != nil {
		attrs = append(attrs, "socket", a.String())
	}
	if a := s.MetricsAddr(); a != nil {
		attrs = append(attrs, "metrics_listen", a.String())
	}
	return attrs
}

// listen opens the TCP listener and the Unix socket.
func (s *Server) listen(cfg *config.Config) ([]net.Listener, error) {
	var ls []net.Listener
	closeAll := func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}
	port := 5432
	if cfg.Listen != "" {
		l, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
		}
		ls = append(ls, l)
		s.mu.Lock()
		s.addr = l.Addr()
		s.mu.Unlock()
		if ta, ok := l.Addr().(*net.TCPAddr); ok {
			port = ta.Port
		}
	}
	if cfg.ListenSocketDir != "" {
		path := filepath.Join(cfg.ListenSocketDir, ".s.PGSQL."+strconv.Itoa(port))
		if err := removeStaleSocket(path); err != nil {
			closeAll()
			return nil, err
		}
		l, err := net.Listen("unix", path)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("listen on %s: %w", path, err)
		}
		_ = os.Chmod(path, 0o777)
		ls = append(ls, l)
		s.mu.Lock()
		s.socketAddr = l.Addr()
		s.mu.Unlock()
	}
	return ls, nil
}

// removeStaleSocket removes a socket file left by a process that is gone,
// and refuses to take over one that still answers.
func removeStaleSocket(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		_ = c.Close()
		return fmt.Errorf("%s is in use by another process", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

// acceptLoop accepts clients until l is closed.
func (s *Server) acceptLoop(ctx context.Context, l net.Listener) {
	var backoff time.Duration
	for {
		conn, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait and retry.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff < time.Second {
				backoff *= 2
			}
			s.logger.Warn("accept failed", "error", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		sess := newSession(s, acceptedConn(conn), s.rt.Load())
		sctx, cancel := context.WithCancel(ctx)
		sess.cancel = cancel
		s.track(sess)
		go func() {
			defer s.untrack(sess)
			defer cancel()
			sess.run(sctx)
		}()
	}
}

// acceptedConn is the connection a session serves for an accepted socket:
// start-up, authentication and transaction mode read and write it with raw
// system calls (see rawio); session mode's event loops take it over (see
// sessionmode.Plain).
func acceptedConn(c net.Conn) net.Conn { return rawio.Wrap(c) }

// track registers a session for the drain.
func (s *Server) track(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions[sess] = struct{}{}
	s.sessionWG.Add(1)
}

func (s *Server) untrack(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
	s.sessionWG.Done()
}

// endSuspended closes the sessions on shared backends (isolation mode
// context) of tenants that dir no longer lists as active. A suspended
// tenant's roles cannot log in and their sessions are terminated, but a
// shared backend that entered its context could keep serving it; the
// database refuses it the next context switch, and this ends it sooner.
func (s *Server) endSuspended(dir *auth.Directory) {
	var end []*session
	s.mu.Lock()
	for sess := range s.sessions {
		slug := sess.pooledTenant.Load()
		if slug == nil {
			continue
		}
		if t, ok := dir.Tenant(*slug); !ok || !t.Active() {
			end = append(end, sess)
		}
	}
	s.mu.Unlock()
	for _, sess := range end {
		s.logger.Info("ending a session of a tenant that is no longer active", "tenant", *sess.pooledTenant.Load(), "session", sess.id)
		sess.forceClose()
	}
}

// drain waits up to timeout for the sessions to end, then closes the rest.
func (s *Server) drain(timeout time.Duration, kill context.CancelFunc) {
	done := make(chan struct{})
	go func() {
		s.sessionWG.Wait()
		close(done)
	}()
	s.mu.Lock()
	n := len(s.sessions)
	s.mu.Unlock()
	if n > 0 {
		s.logger.Info("draining sessions", "sessions", n, "timeout", timeout.String())
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	// Console sessions work while the others drain, and end with them.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-done:
			return
		case <-timer.C:
			break wait
		case <-tick.C:
			if s.onlyConsoleLeft() {
				break wait
			}
		}
	}
	s.mu.Lock()
	left := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		left = append(left, sess)
	}
	s.mu.Unlock()
	if s.onlyConsoleLeft() {
		s.logger.Info("sessions drained; closing the console sessions", "sessions", len(left))
	} else {
		s.logger.Warn("drain deadline passed, closing sessions", "sessions", len(left))
	}
	for _, sess := range left {
		sess.forceClose()
	}
	kill()
	<-done
}

// onlyConsoleLeft reports whether every open session is a console session.
func (s *Server) onlyConsoleLeft() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sess := range s.sessions {
		if !sess.isConsole.Load() {
			return false
		}
	}
	return true
}

// poolSettings are the pool limits taken from the configuration at start.
type poolSettings struct {
	maxConns, maxPerTenant, minIdle int
	tenantMax, tenantMinIdle        map[string]int
	queueTimeout                    time.Duration
	idleTimeout, lifetime           time.Duration
}

func poolSettingsFrom(cfg *config.Config) poolSettings {
	ps := poolSettings{
		maxConns:      cfg.Pool.MaxServerConns,
		maxPerTenant:  cfg.Pool.MaxServerConnsPerTenant,
		tenantMax:     map[string]int{},
		minIdle:       cfg.Pool.MinIdlePerTenant,
		tenantMinIdle: map[string]int{},
		queueTimeout:  cfg.Pool.QueueTimeout,
		idleTimeout:   cfg.Pool.IdleTimeout,
		lifetime:      cfg.Pool.ServerLifetime,
	}
	for slug, t := range cfg.Tenants {
		if t.MaxServerConns > 0 {
			ps.tenantMax[slug] = t.MaxServerConns
		}
		if t.MinIdle > 0 {
			ps.tenantMinIdle[slug] = t.MinIdle
		}
	}
	return ps
}

// forwardLoops is how many event loops forward sessions: one per CPU the Go
// scheduler may use.
func forwardLoops() int { return max(1, runtime.GOMAXPROCS(0)/2) }
