package topology

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
)

// Role is what a host is to the proxy, as the last health check found it.
type Role string

// The roles of a host.
const (
	// RolePrimary: the cluster's one writable host.
	RolePrimary Role = "primary"
	// RoleStandby: a host of the cluster in recovery, serving reads.
	RoleStandby Role = "standby"
	// RoleFenced: out of recovery but not the primary (it lost a split
	// brain, or is a former primary on an older timeline); nothing is sent
	// to it.
	RoleFenced Role = "fenced"
	// RoleRefused: a server of another cluster (another system
	// identifier); nothing is sent to it.
	RoleRefused Role = "refused"
	// RoleUnknown: the host answered but the cluster's system identifier
	// is not known yet (no primary seen, none configured).
	RoleUnknown Role = "unknown"
	// RoleDown: the host did not answer its health check.
	RoleDown Role = "down"
)

// Host is one upstream host as its last health check found it.
type Host struct {
	Endpoint Endpoint
	// Name is Endpoint as host:port, the value of the metrics' host label.
	Name string
	Role Role
	// What the host reported; zero for a host that is down.
	InRecovery       bool
	SystemIdentifier uint64
	Timeline         uint32
	// WALPosition is the host's WAL position (LSN): written for a host
	// out of recovery, replayed for a standby.
	WALPosition uint64
	// LagBytes and Lag are a standby's replication lag: the WAL it has
	// still to replay behind the primary (or, with no primary, behind what
	// it received), and the age of the last transaction it replayed while
	// it has WAL left to replay (0 when it has replayed all it received).
	LagBytes int64
	Lag      time.Duration
	// Err is why a host is down.
	Err error
	// CheckedAt is when the reading was taken.
	CheckedAt time.Time
}

// Up reports whether the host answered its last health check.
func (h Host) Up() bool { return h.Role != RoleDown }

// Defaults of Options.
const (
	DefaultInterval = time.Second
	DefaultTimeout  = time.Second
)

// Options configure a Checker.
type Options struct {
	// Hosts are the upstream servers, from ParseHosts.
	Hosts []Endpoint
	// AdminURL gives the user, password, database and settings of the
	// health connections; its host is ignored (each host's own address and
	// TLS attempts are used). The role must be allowed to call
	// pg_control_system() and pg_control_checkpoint() (a superuser, or
	// granted EXECUTE) and to read pg_stat_wal_receiver.
	AdminURL string
	// Interval is the time between health rounds; DefaultInterval if 0.
	Interval time.Duration
	// Timeout bounds one host's check, connecting included;
	// DefaultTimeout if 0.
	Timeout time.Duration
	// SystemIdentifier is the cluster's system identifier; 0 learns it
	// from the first primary seen.
	SystemIdentifier uint64
	// Registerer receives the vitalproxy_upstream_* series; nil registers
	// none.
	Registerer prometheus.Registerer
	// Logger receives role changes, failovers and refusals; nil is
	// slog.Default().
	Logger *slog.Logger
}

// Checker checks the upstream hosts and keeps the latest snapshot. Its
// methods are safe for concurrent use.
type Checker struct {
	opts    Options
	log     *slog.Logger
	configs []*pgx.ConnConfig
	metrics *metrics

	// roundMu serialises rounds and guards conns, one health connection
	// per host (nil when not connected).
	roundMu sync.Mutex
	conns   []*pgx.Conn

	mu          sync.Mutex
	hosts       []Host
	primary     int // index into hosts, -1 for none
	splitBrain  bool
	changed     chan struct{}
	sysid       uint64
	maxTimeline uint32 // highest timeline of a primary so far
	lastPrimary string // the last host that was primary, kept while none is
	failovers   int
}

// errNotChecked is the Err of a host before its first check.
var errNotChecked = errors.New("not checked yet")

// New returns a Checker of opts.Hosts; Run (or Check) starts checking.
func New(opts Options) (*Checker, error) {
	if len(opts.Hosts) == 0 {
		return nil, ErrNoHosts
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	opts.Hosts = slices.Clone(opts.Hosts)
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	admin, err := pgx.ParseConfig(opts.AdminURL)
	if err != nil {
		return nil, fmt.Errorf("parse admin URL: %w", parseError(err))
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	c := &Checker{
		opts:    opts,
		log:     log.With("component", "topology"),
		metrics: m,
		conns:   make([]*pgx.Conn, len(opts.Hosts)),
		hosts:   make([]Host, len(opts.Hosts)),
		primary: -1,
		changed: make(chan struct{}),
		sysid:   opts.SystemIdentifier,
	}
	for i, ep := range opts.Hosts {
		if len(ep.TLS) == 0 {
			ep.TLS = []*tls.Config{nil}
			c.opts.Hosts[i] = ep
		}
		cfg := admin.Copy()
		cfg.Host, cfg.Port, cfg.TLSConfig = ep.Host, ep.Port, ep.TLS[0]
		cfg.Fallbacks = nil
		for _, t := range ep.TLS[1:] {
			cfg.Fallbacks = append(cfg.Fallbacks, &pgconn.FallbackConfig{Host: ep.Host, Port: ep.Port, TLSConfig: t})
		}
		// Each host is checked for what it is, whatever the URL asks.
		cfg.ValidateConnect = nil
		cfg.ConnectTimeout = opts.Timeout
		cfg.RuntimeParams["application_name"] = "vitalproxy-health"
		c.configs = append(c.configs, cfg)
		c.hosts[i] = Host{Endpoint: ep, Name: ep.String(), Role: RoleDown, Err: errNotChecked}
	}
	return c, nil
}

// Run checks every host now and then every interval until ctx ends, then
// closes the health connections and returns nil.
func (c *Checker) Run(ctx context.Context) error {
	defer c.Close()
	t := time.NewTicker(c.opts.Interval)
	defer t.Stop()
	for {
		c.Check(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Check runs one health round, checking every host at once (each bounded
// by the timeout), and updates the snapshot and the metrics.
func (c *Checker) Check(ctx context.Context) {
	c.roundMu.Lock()
	defer c.roundMu.Unlock()
	readings := make([]reading, len(c.configs))
	var wg sync.WaitGroup
	for i := range c.configs {
		wg.Go(func() { readings[i] = c.probe(ctx, i) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		// Readings cut short by the caller say nothing of the hosts.
		return
	}
	c.evaluate(readings, time.Now())
}

// Close closes the health connections. Check reconnects if called again.
func (c *Checker) Close() {
	c.roundMu.Lock()
	defer c.roundMu.Unlock()
	for i, conn := range c.conns {
		if conn != nil {
			c.closeConn(conn)
			c.conns[i] = nil
		}
	}
}

func (c *Checker) closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), min(c.opts.Timeout, time.Second))
	defer cancel()
	_ = conn.Close(ctx) // the connection is dropped either way
}

// reading is what one host reported.
type reading struct {
	err        error
	inRecovery bool
	sysid      uint64
	timeline   uint32
	lsn        uint64 // written (primary) or replayed (standby)
	receiveLSN uint64 // received (standby); 0 if unknown
	lag        time.Duration
}

// healthQuery reads a host's state in one round trip. The timeline of a
// host out of recovery is that of the WAL it writes (its checkpoint's
// timeline moves only at the first checkpoint after a promotion); for a
// standby, that of the WAL it last received, or of its last restartpoint
// when no WAL receiver runs.
const healthQuery = `SELECT r.rec,
	(pg_control_system()).system_identifier,
	CASE WHEN r.rec
		THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), (pg_control_checkpoint()).timeline_id)
		ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
	(CASE WHEN r.rec THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
	coalesce(pg_last_wal_receive_lsn()::text, ''),
	CASE WHEN NOT r.rec OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
		ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, 0) END
FROM (SELECT pg_is_in_recovery() AS rec) r`

// probe checks host i over its health connection, connecting first if
// needed; a failed check drops the connection.
func (c *Checker) probe(ctx context.Context, i int) reading {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	conn := c.conns[i]
	if conn == nil || conn.IsClosed() {
		var err error
		conn, err = pgx.ConnectConfig(ctx, c.configs[i])
		if err != nil {
			return reading{err: fmt.Errorf("connect: %w", err)}
		}
		c.conns[i] = conn
	}
	var (
		r             reading
		sysid         int64
		timeline      int32
		lsn, received string
		lagSeconds    float64
	)
	err := conn.QueryRow(ctx, healthQuery).Scan(&r.inRecovery, &sysid, &timeline, &lsn, &received, &lagSeconds)
	if err == nil {
		r.sysid, r.timeline = uint64(sysid), uint32(timeline)
		r.lag = time.Duration(max(lagSeconds, 0) * float64(time.Second))
		if r.lsn, err = ParseLSN(lsn); err == nil && received != "" {
			r.receiveLSN, err = ParseLSN(received)
		}
	}
	if err != nil {
		c.closeConn(conn)
		c.conns[i] = nil
		return reading{err: fmt.Errorf("health query: %w", err)}
	}
	return r
}

// ParseLSN parses a WAL position as PostgreSQL prints it, "16/B374D848".
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if ok {
		h, err1 := strconv.ParseUint(hi, 16, 32)
		l, err2 := strconv.ParseUint(lo, 16, 32)
		if err1 == nil && err2 == nil {
			return h<<32 | l, nil
		}
	}
	return 0, fmt.Errorf("invalid WAL position %q", s)
}

// evaluate turns one round of readings into the hosts' roles, elects the
// primary and publishes the snapshot.
func (c *Checker) evaluate(readings []reading, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sysid == 0 {
		for i, r := range readings {
			if r.err == nil && !r.inRecovery {
				c.sysid = r.sysid
				c.log.Info("upstream cluster identified", "system_identifier", c.sysid, "host", c.hosts[i].Name)
				break
			}
		}
	}
	hosts := make([]Host, len(readings))
	var claims []int // hosts of the cluster out of recovery
	for i, r := range readings {
		h := Host{Endpoint: c.hosts[i].Endpoint, Name: c.hosts[i].Name, CheckedAt: now}
		if r.err != nil {
			h.Role, h.Err = RoleDown, r.err
			hosts[i] = h
			continue
		}
		h.InRecovery, h.SystemIdentifier, h.Timeline, h.WALPosition = r.inRecovery, r.sysid, r.timeline, r.lsn
		switch {
		case c.sysid == 0:
			h.Role = RoleUnknown
		case r.sysid != c.sysid:
			h.Role = RoleRefused
		case r.inRecovery:
			h.Role = RoleStandby
		default:
			h.Role = RoleFenced // unless elected below
			claims = append(claims, i)
		}
		hosts[i] = h
	}
	primary, tie := -1, false
	for _, i := range claims {
		tl := hosts[i].Timeline
		switch {
		case tl < c.maxTimeline:
			// A former primary on an older timeline: its history forked
			// off the one a later primary wrote.
		case primary < 0 || tl > hosts[primary].Timeline:
			primary, tie = i, false
		case tl == hosts[primary].Timeline:
			tie = true
		}
	}
	if tie {
		primary = -1
	}
	if primary >= 0 {
		hosts[primary].Role = RolePrimary
		c.maxTimeline = max(c.maxTimeline, hosts[primary].Timeline)
	}
	for i := range hosts {
		h := &hosts[i]
		if h.Role != RoleStandby {
			continue
		}
		ref := readings[i].receiveLSN
		if primary >= 0 {
			ref = hosts[primary].WALPosition
		}
		if ref > h.WALPosition {
			h.LagBytes = int64(ref - h.WALPosition)
		}
		h.Lag = readings[i].lag
	}
	splitBrain := len(claims) > 1
	c.logChanges(hosts, primary, tie, splitBrain)
	c.metrics.record(c.hosts, hosts, splitBrain)

	oldName, newName := "", ""
	if c.primary >= 0 {
		oldName = c.hosts[c.primary].Name
	}
	if primary >= 0 {
		newName = hosts[primary].Name
	}
	c.hosts, c.primary, c.splitBrain = hosts, primary, splitBrain
	if oldName == newName {
		return
	}
	close(c.changed)
	c.changed = make(chan struct{})
	switch {
	case newName == "":
		c.log.Warn("no upstream primary", "last_primary", oldName)
	case c.lastPrimary != "" && c.lastPrimary != newName:
		c.failovers++
		c.metrics.failovers.Inc()
		c.log.Warn("upstream failover", "from", c.lastPrimary, "to", newName, "timeline", hosts[primary].Timeline)
	default:
		c.log.Info("upstream primary", "host", newName, "timeline", hosts[primary].Timeline)
	}
	if newName != "" {
		c.lastPrimary = newName
	}
}

// logChanges logs each host whose role changed, and a split brain when it
// begins.
func (c *Checker) logChanges(hosts []Host, primary int, tie, splitBrain bool) {
	for i, h := range hosts {
		prev := c.hosts[i]
		if prev.Role == h.Role && (prev.Err == nil) == (h.Err == nil) {
			continue
		}
		attrs := []any{"host", h.Name, "role", h.Role, "previous_role", prev.Role}
		switch h.Role {
		case RoleDown:
			c.log.Warn("upstream host down", append(attrs, "err", h.Err)...)
		case RoleRefused:
			c.log.Error("upstream host refused: it belongs to another PostgreSQL cluster",
				append(attrs, "system_identifier", h.SystemIdentifier, "cluster_system_identifier", c.sysid)...)
		case RoleFenced:
			why := "another host of the cluster is primary on a higher timeline"
			switch {
			case h.Timeline < c.maxTimeline:
				why = "it is on an older timeline than a primary seen before (a former primary not rewound)"
			case tie || primary < 0:
				why = "other hosts out of recovery are on the same timeline; no primary until one of them is a standby again"
			}
			c.log.Error("upstream host fenced: out of recovery but not the primary; writes refused",
				append(attrs, "timeline", h.Timeline, "reason", why)...)
		default:
			c.log.Info("upstream host "+string(h.Role), append(attrs, "timeline", h.Timeline)...)
		}
	}
	if splitBrain && !c.splitBrain {
		c.log.Error("upstream split brain: more than one host is out of recovery")
	} else if !splitBrain && c.splitBrain {
		c.log.Info("upstream split brain over")
	}
}

// Primary returns the primary, if there is one.
func (c *Checker) Primary() (Host, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.primary < 0 {
		return Host{}, false
	}
	return c.hosts[c.primary], true
}

// Standbys returns the standbys whose lag is within maxLagBytes and
// maxLag (0: no bound), least lag first.
func (c *Checker) Standbys(maxLagBytes int64, maxLag time.Duration) []Host {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Host
	for _, h := range c.hosts {
		if h.Role != RoleStandby || (maxLagBytes > 0 && h.LagBytes > maxLagBytes) || (maxLag > 0 && h.Lag > maxLag) {
			continue
		}
		out = append(out, h)
	}
	slices.SortStableFunc(out, func(a, b Host) int {
		return cmp.Or(cmp.Compare(a.LagBytes, b.LagBytes), cmp.Compare(a.Lag, b.Lag))
	})
	return out
}

// Hosts returns every host as its last check found it, in list order.
func (c *Checker) Hosts() []Host {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.hosts)
}

// SplitBrain reports whether more than one host of the cluster was out of
// recovery at the last check.
func (c *Checker) SplitBrain() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.splitBrain
}

// Failovers counts the changes of primary from one host to another.
func (c *Checker) Failovers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failovers
}

// SystemIdentifier returns the cluster's system identifier, 0 while it is
// not known.
func (c *Checker) SystemIdentifier() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sysid
}

// PrimaryChanged returns a channel that is closed at the next change of
// primary (a new one, or none). Take the channel, then read Primary, so
// that no change goes unseen.
func (c *Checker) PrimaryChanged() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// WaitPrimary returns the primary once there is one, or ctx's error.
func (c *Checker) WaitPrimary(ctx context.Context) (Host, error) {
	for {
		changed := c.PrimaryChanged()
		if h, ok := c.Primary(); ok {
			return h, nil
		}
		select {
		case <-ctx.Done():
			return Host{}, fmt.Errorf("wait for an upstream primary: %w", ctx.Err())
		case <-changed:
		}
	}
}
