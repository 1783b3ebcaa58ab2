package proxy

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	dto "github.com/prometheus/client_model/go"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/proxy/console"
	"github.com/vitalproxy/vitalproxy/proxy/pool"
)

// steering is the operator console's run-time state: paused and disabled
// tenants, limits changed at run time, and authentication failures per
// tenant. None of it is persisted. Safe for concurrent use.
type steering struct {
	// npaused is the number of paused tenants: the pool's gate returns
	// at once while it is zero.
	npaused atomic.Int32

	mu       sync.Mutex
	paused   map[string]chan struct{} // closed on resume
	waits    map[string]map[uint64]time.Time
	nextWait uint64
	disabled map[string]bool
	maxConns map[string]int // SET TENANT max_server_conns
	authFail map[string]uint64
}

func newSteering() *steering {
	return &steering{paused: map[string]chan struct{}{}, waits: map[string]map[uint64]time.Time{},
		disabled: map[string]bool{}, maxConns: map[string]int{}, authFail: map[string]uint64{}}
}

// gate is the pool's Gate: a paused tenant's Acquire waits here until the
// tenant is resumed or ctx ends.
func (st *steering) gate(ctx context.Context, key pool.Key) error {
	if st.npaused.Load() == 0 {
		return nil
	}
	for {
		st.mu.Lock()
		ch := st.paused[key.Tenant]
		if ch == nil {
			st.mu.Unlock()
			return nil
		}
		id := st.nextWait
		st.nextWait++
		if st.waits[key.Tenant] == nil {
			st.waits[key.Tenant] = map[uint64]time.Time{}
		}
		st.waits[key.Tenant][id] = time.Now()
		st.mu.Unlock()
		var err error
		select {
		case <-ch:
		case <-ctx.Done():
			err = ctx.Err()
		}
		st.mu.Lock()
		delete(st.waits[key.Tenant], id)
		if len(st.waits[key.Tenant]) == 0 {
			delete(st.waits, key.Tenant)
		}
		st.mu.Unlock()
		if err != nil {
			return fmt.Errorf("waiting for paused tenant %q: %w", key.Tenant, err)
		}
	}
}

func (st *steering) pause(tenants []string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, t := range tenants {
		if st.paused[t] == nil {
			st.paused[t] = make(chan struct{})
		}
	}
	st.npaused.Store(int32(len(st.paused)))
}

// resume releases tenants (nil: every paused tenant).
func (st *steering) resume(tenants []string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if tenants == nil {
		for t := range st.paused {
			tenants = append(tenants, t)
		}
	}
	for _, t := range tenants {
		if ch := st.paused[t]; ch != nil {
			close(ch)
			delete(st.paused, t)
		}
	}
	st.npaused.Store(int32(len(st.paused)))
}

// tenantState is one tenant's console state for SHOW TENANTS.
type tenantState struct {
	paused, disabled bool
	waiting          int
	maxWait          time.Duration
	authFailures     uint64
}

func (st *steering) state(tenant string, now time.Time) tenantState {
	st.mu.Lock()
	defer st.mu.Unlock()
	ts := tenantState{paused: st.paused[tenant] != nil, disabled: st.disabled[tenant],
		waiting: len(st.waits[tenant]), authFailures: st.authFail[tenant]}
	for _, since := range st.waits[tenant] {
		ts.maxWait = max(ts.maxWait, now.Sub(since))
	}
	return ts
}

func (st *steering) isDisabled(tenant string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.disabled[tenant]
}

func (st *steering) authFailed(tenant string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.authFail[tenant]++
}

// clientInfo is what the console shows of a session once it is admitted;
// it never changes after it is published.
type clientInfo struct {
	user, tenant, mode, console, appName string
	// database is the database a console session connected to.
	database    string
	connectedAt time.Time
}

// consoleBackend is the console's view of the server (console.Backend).
type consoleBackend struct{ s *Server }

var _ console.Backend = consoleBackend{}

func (b consoleBackend) Version() string { return b.s.opts.version }

func (b consoleBackend) TenantExists(slug string) bool {
	_, ok := b.s.directory().Tenant(slug)
	return ok
}

func boolText(v bool) string {
	if v {
		return "t"
	}
	return "f"
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

func (b consoleBackend) Show(_ context.Context, topic string) (*console.Table, error) {
	switch topic {
	case console.TopicTenants:
		return b.s.showTenants(), nil
	case console.TopicPools:
		return b.s.showPools(), nil
	case console.TopicClients:
		return b.s.showClients(), nil
	case console.TopicServers:
		return b.s.showServers(), nil
	case console.TopicStats:
		return b.s.showStats()
	case console.TopicUsers:
		return b.s.showUsers(), nil
	case console.TopicUpstreams:
		return b.s.showUpstreams(), nil
	case console.TopicConfig:
		t := &console.Table{Columns: []string{"key", "value"}, TenantColumn: -1}
		for _, kv := range b.s.rt.Load().cfg.Settings() {
			t.Rows = append(t.Rows, []string{kv[0], kv[1]})
		}
		return t, nil
	}
	return nil, console.Errorf(console.CodeSyntax, "unknown SHOW topic %q", topic)
}

// tenantLimits are a tenant's configured (or run-time) caps.
func (s *Server) tenantLimits(cfg *config.Config, slug string) (maxServer, maxClient int) {
	maxServer, maxClient = cfg.Pool.MaxServerConnsPerTenant, cfg.Pool.MaxClientConnsPerTenant
	if t, ok := cfg.Tenants[slug]; ok {
		if t.MaxServerConns > 0 {
			maxServer = t.MaxServerConns
		}
		if t.MaxClientConns > 0 {
			maxClient = t.MaxClientConns
		}
	}
	s.steer.mu.Lock()
	if n, ok := s.steer.maxConns[slug]; ok {
		maxServer = n
	}
	s.steer.mu.Unlock()
	if n, ok := s.counts.runTenantMax(slug); ok {
		maxClient = n
	}
	return maxServer, maxClient
}

// poolUse sums a tenant's rows of the pool snapshot.
type poolUse struct {
	active, idle, waiting int
	maxWait               time.Duration
}

func poolUseByTenant(stats []pool.Stats) map[string]*poolUse {
	m := map[string]*poolUse{}
	for _, st := range stats {
		if st.Key.Tenant == "" {
			continue
		}
		u := m[st.Key.Tenant]
		if u == nil {
			u = &poolUse{}
			m[st.Key.Tenant] = u
		}
		u.active += st.Active
		u.idle += st.Idle
		u.waiting += st.Waiting
		u.maxWait = max(u.maxWait, st.MaxWait)
	}
	return m
}

func (s *Server) showTenants() *console.Table {
	cfg := s.rt.Load().cfg
	t := &console.Table{Columns: []string{"tenant", "id", "type", "status", "pool_mode", "max_server_conns", "max_client_conns",
		"clients", "server_active", "server_idle", "waiting", "max_wait_ms", "paused", "disabled", "auth_failures"}}
	tenants := s.directory().Tenants()
	sort.Slice(tenants, func(i, j int) bool { return tenants[i].Slug < tenants[j].Slug })
	use := poolUseByTenant(s.pool.Stats())
	clients := s.counts.snapshot()
	now := time.Now()
	for _, tn := range tenants {
		mode := cfg.Pool.Mode
		if ts, ok := cfg.Tenants[tn.Slug]; ok && ts.PoolMode != "" {
			mode = ts.PoolMode
		}
		maxServer, maxClient := s.tenantLimits(cfg, tn.Slug)
		u := use[tn.Slug]
		if u == nil {
			u = &poolUse{}
		}
		st := s.steer.state(tn.Slug, now)
		t.Rows = append(t.Rows, []string{tn.Slug, tn.ID, tn.Type, tn.Status, mode, strconv.Itoa(maxServer), strconv.Itoa(maxClient),
			strconv.Itoa(clients[tn.Slug]), strconv.Itoa(u.active), strconv.Itoa(u.idle), strconv.Itoa(u.waiting + st.waiting),
			ms(max(u.maxWait, st.maxWait)), boolText(st.paused), boolText(st.disabled), strconv.FormatUint(st.authFailures, 10)})
	}
	return t
}

func (s *Server) showPools() *console.Table {
	t := &console.Table{Columns: []string{"tenant", "role", "shared", "active", "idle", "waiting", "max_wait_ms", "opened", "closed", "queue_timeouts"}}
	stats := s.pool.Stats()
	sort.Slice(stats, func(i, j int) bool {
		a, b := stats[i].Key, stats[j].Key
		if a.Tenant != b.Tenant {
			return a.Tenant < b.Tenant
		}
		return a.Role < b.Role
	})
	for _, st := range stats {
		var closed uint64
		for _, n := range st.Closed {
			closed += n
		}
		t.Rows = append(t.Rows, []string{st.Key.Tenant, st.Key.Role, boolText(st.Key.Shared), strconv.Itoa(st.Active), strconv.Itoa(st.Idle),
			strconv.Itoa(st.Waiting), ms(st.MaxWait), strconv.FormatUint(st.Opened, 10), strconv.FormatUint(closed, 10), strconv.FormatUint(st.Timeouts, 10)})
	}
	return t
}

// sessionList returns the tracked sessions, in no particular order.
func (s *Server) sessionList() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		out = append(out, sess)
	}
	return out
}

// backendPID is the pid of the backend a session-mode session holds, or 0.
func (sess *session) backendPID() uint32 {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.backend == nil {
		return 0
	}
	return sess.backend.PID
}

func (s *Server) showClients() *console.Table {
	t := &console.Table{Columns: []string{"id", "user", "tenant", "state", "pool_mode", "console", "remote_addr", "connected_at",
		"application_name", "server_pid"}, TenantColumn: 2}
	sessions := s.sessionList()
	sort.Slice(sessions, func(i, j int) bool { return sessions[i].start.Before(sessions[j].start) })
	for _, sess := range sessions {
		info := sess.info.Load()
		if info == nil {
			info = &clientInfo{connectedAt: sess.start}
		}
		pid := ""
		if p := sess.backendPID(); p != 0 {
			pid = strconv.FormatUint(uint64(p), 10)
		}
		t.Rows = append(t.Rows, []string{sess.id, info.user, info.tenant, sessionState(sess.state.Load()).String(), info.mode, info.console,
			sess.remote, console.Time(info.connectedAt), info.appName, pid})
	}
	return t
}

func (s *Server) showServers() *console.Table {
	t := &console.Table{Columns: []string{"pid", "tenant", "role", "shared", "state", "client_id", "connected_at", "last_used"}, TenantColumn: 1}
	holders := map[uint32]string{}
	for _, sess := range s.sessionList() {
		if p := sess.backendPID(); p != 0 {
			holders[p] = sess.id
		}
	}
	servers := s.pool.Servers()
	sort.Slice(servers, func(i, j int) bool { return servers[i].PID < servers[j].PID })
	for _, sv := range servers {
		state := "idle"
		if sv.Active {
			state = "active"
		}
		t.Rows = append(t.Rows, []string{strconv.FormatUint(uint64(sv.PID), 10), sv.Key.Tenant, sv.Key.Role, boolText(sv.Key.Shared), state,
			holders[sv.PID], console.Time(sv.Created), console.Time(sv.LastUsed)})
	}
	return t
}

func (s *Server) showUsers() *console.Table {
	t := &console.Table{Columns: []string{"user", "tenants", "read_only", "platform_admin", "pool_mode", "console", "source"}, TenantColumn: 1}
	inFile := map[string]bool{}
	for _, u := range s.rt.Load().cfg.Users {
		inFile[u.Name] = true
	}
	for _, u := range s.directory().Users() {
		src := "database"
		if inFile[u.Name] {
			src = "config"
		}
		t.Rows = append(t.Rows, []string{u.Name, strings.Join(u.Tenants, ","), boolText(u.ReadOnly), boolText(u.PlatformAdmin), u.PoolMode, u.Console, src})
	}
	return t
}

// showStats reads the per-tenant counters back from the metrics registry.
func (s *Server) showStats() (*console.Table, error) {
	rows, err := s.statsByTenant()
	if err != nil {
		return nil, err
	}
	t := &console.Table{Columns: []string{"tenant", "transactions", "bytes_client_to_server", "bytes_server_to_client",
		"queued_waits", "avg_wait_ms", "queue_timeouts"}}
	names := make([]string, 0, len(rows))
	for n := range rows {
		names = append(names, n)
	}
	sort.Strings(names)
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }
	for _, n := range names {
		r := rows[n]
		avg := 0.0
		if r.waits > 0 {
			avg = r.waitSum / r.waits * 1000
		}
		t.Rows = append(t.Rows, []string{n, f(r.tx), f(r.c2s), f(r.s2c), f(r.waits), strconv.FormatFloat(avg, 'f', 3, 64), f(r.timeouts)})
	}
	return t, nil
}

// metricLabel is the value of a metric's label ("" without it).
func metricLabel(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// busy describes what still holds the tenants' server connections.
func (s *Server) busy(tenants map[string]bool) []string {
	holders := map[uint32]*session{}
	for _, sess := range s.sessionList() {
		if p := sess.backendPID(); p != 0 {
			holders[p] = sess
		}
	}
	var out []string
	for _, sv := range s.pool.Servers() {
		if !sv.Active || !tenants[sv.Key.Tenant] {
			continue
		}
		d := fmt.Sprintf("tenant %s: server pid %d", sv.Key.Tenant, sv.PID)
		if sess := holders[sv.PID]; sess != nil {
			user := ""
			if info := sess.info.Load(); info != nil {
				user = info.user
			}
			d += fmt.Sprintf(" (client %s, user %s)", sess.id, user)
		}
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

func (b consoleBackend) Pause(ctx context.Context, tenants []string, timeout time.Duration) error {
	s := b.s
	if tenants == nil {
		for _, t := range s.directory().Tenants() {
			tenants = append(tenants, t.Slug)
		}
	}
	s.steer.pause(tenants)
	set := map[string]bool{}
	for _, t := range tenants {
		set[t] = true
	}
	s.logger.Info("tenants paused", "tenants", tenants)
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		busy := s.busy(set)
		if len(busy) == 0 {
			return nil
		}
		if !time.Now().Before(deadline) {
			return &console.Error{Code: console.CodeInUse,
				Message: fmt.Sprintf("paused, but %d server connection(s) still busy after %s: %s", len(busy), timeout, strings.Join(busy, "; ")),
				Hint:    "The pause stays in effect: PAUSE again to wait longer, or RESUME to release it."}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pause: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

func (b consoleBackend) Resume(_ context.Context, tenants []string) error {
	b.s.steer.resume(tenants)
	b.s.logger.Info("tenants resumed", "tenants", tenants)
	return nil
}

func (b consoleBackend) ClientTenant(id string) (string, bool) {
	sess := b.s.sessionByID(id)
	if sess == nil {
		return "", false
	}
	if info := sess.info.Load(); info != nil {
		return info.tenant, true
	}
	return "", true
}

func (s *Server) sessionByID(id string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sess := range s.sessions {
		if sess.id == id {
			return sess
		}
	}
	return nil
}

func (b consoleBackend) KillClient(_ context.Context, id string) error {
	sess := b.s.sessionByID(id)
	if sess == nil {
		return console.Errorf(console.CodeBadValue, "no client with id %q", id)
	}
	b.s.logger.Info("killing a client on a console command", "session", id)
	if sess.isConsole.Load() {
		sess.kill()
	} else {
		sess.endByOperator(operatorEnded("KILL CLIENT " + id))
	}
	return nil
}

func (b consoleBackend) SetDisabled(_ context.Context, tenant string, disabled bool) error {
	st := b.s.steer
	st.mu.Lock()
	if disabled {
		st.disabled[tenant] = true
	} else {
		delete(st.disabled, tenant)
	}
	st.mu.Unlock()
	b.s.logger.Info("tenant admission changed on a console command", "tenant", tenant, "disabled", disabled)
	return nil
}

func (b consoleBackend) SetTenantLimit(_ context.Context, tenant, limit string, value int) error {
	s := b.s
	switch limit {
	case console.LimitMaxServerConns:
	case console.LimitMaxClientConns:
		s.counts.setTenantMax(tenant, value)
		if value == 0 {
			_, value = s.tenantLimits(s.rt.Load().cfg, tenant)
		}
		s.logger.Info("tenant limit changed on a console command", "tenant", tenant, "limit", limit, "value", value)
		return nil
	default:
		return console.Errorf(console.CodeBadValue, "unknown tenant limit %q", limit)
	}
	s.steer.mu.Lock()
	if value > 0 {
		s.steer.maxConns[tenant] = value
	} else {
		delete(s.steer.maxConns, tenant)
	}
	s.steer.mu.Unlock()
	if value == 0 {
		value, _ = s.tenantLimits(s.rt.Load().cfg, tenant)
	}
	s.pool.SetTenantMaxConns(tenant, value)
	s.logger.Info("tenant limit changed on a console command", "tenant", tenant, "limit", limit, "value", value)
	return nil
}

func (b consoleBackend) Reload(ctx context.Context) (string, error) {
	s := b.s
	before, dirBefore := s.rt.Load().cfg.Settings(), s.directory()
	if err := s.Reload(ctx); err != nil {
		return "", console.Errorf(console.CodeInternal, "reload failed, the running configuration stays: %v", err)
	}
	after, dirAfter := s.rt.Load().cfg.Settings(), s.directory()
	return describeChanges(before, after, dirBefore, dirAfter), nil
}

// describeChanges says what a reload changed.
func describeChanges(before, after [][2]string, db, da *auth.Directory) string {
	old := map[string]string{}
	for _, kv := range before {
		old[kv[0]] = kv[1]
	}
	var changed []string
	for _, kv := range after {
		if v, ok := old[kv[0]]; !ok || v != kv[1] {
			changed = append(changed, kv[0])
		}
		delete(old, kv[0])
	}
	for k := range old {
		changed = append(changed, k)
	}
	sort.Strings(changed)
	userNames := func(d *auth.Directory) []string {
		var n []string
		for _, u := range d.Users() {
			n = append(n, u.Name+"|"+u.Verifier+"|"+strings.Join(u.Tenants, ",")+"|"+u.Console+"|"+boolText(u.ReadOnly)+boolText(u.PlatformAdmin)+"|"+u.PoolMode)
		}
		return n
	}
	if !slices.Equal(userNames(db), userNames(da)) {
		changed = append(changed, fmt.Sprintf("users (%d before, %d now)", len(db.Users()), len(da.Users())))
	}
	tenantKeys := func(d *auth.Directory) []string {
		var n []string
		for _, t := range d.Tenants() {
			n = append(n, t.Slug+"|"+t.Status+"|"+t.Type)
		}
		sort.Strings(n)
		return n
	}
	if !slices.Equal(tenantKeys(db), tenantKeys(da)) {
		changed = append(changed, fmt.Sprintf("tenants (%d before, %d now)", len(db.Tenants()), len(da.Tenants())))
	}
	if len(changed) == 0 {
		return "reloaded; nothing changed"
	}
	return "reloaded; changed: " + strings.Join(changed, ", ")
}

// showUpstreams lists the upstream hosts as the health checker last saw
// them; with a single host (no checker) one row without a reading.
func (s *Server) showUpstreams() *console.Table {
	t := &console.Table{Columns: []string{"host", "role", "in_recovery", "timeline", "lag_bytes", "lag_ms", "checked_at", "error"},
		TenantColumn: -1}
	if s.router == nil {
		host := "?"
		if cfg, err := pgconn.ParseConfig(s.rt.Load().cfg.Upstream.URL); err == nil {
			host = net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
		}
		t.Rows = append(t.Rows, []string{host, "unchecked", "", "", "", "", "", "one upstream host: no health checker"})
		return t
	}
	for _, h := range s.router.checker.Hosts() {
		errText := ""
		if h.Err != nil {
			errText = h.Err.Error()
		}
		checked := ""
		if !h.CheckedAt.IsZero() {
			checked = console.Time(h.CheckedAt)
		}
		t.Rows = append(t.Rows, []string{h.Name, string(h.Role), boolText(h.InRecovery), strconv.FormatUint(uint64(h.Timeline), 10),
			strconv.FormatInt(h.LagBytes, 10), ms(h.Lag), checked, errText})
	}
	return t
}
