// Package pool keeps server connections per tenant role under one global
// budget shared fairly across tenants.
//
// A backend only ever serves the role it logged in as, so pools are keyed by
// role and a backend can never carry one tenant's session state to another
// tenant. PostgreSQL's max_connections is one number however many tenants
// there are, so all pools draw on one cap (MaxConns): idle capacity is lent
// to busy tenants and taken back when a tenant without a backend waits (the
// least recently used idle backend of another pool is closed for it).
// Waiting clients are served round-robin across tenants, FIFO within one.
//
// A shared key (Key.Shared, isolation mode context) names a pool of
// backends that any tenant's transaction may borrow: they log in as a
// pooled role, and the borrower enters its tenant's context before use.
// Per-tenant caps then count the backends a tenant has borrowed, and a
// released shared backend goes to the next tenant in the rotation (after
// at most sharedAffinity more transactions of the tenant that released it,
// which saves a context switch).
package pool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/proxy/upstream"
)

// ErrQueueTimeout means no backend became free within Config.QueueTimeout.
var ErrQueueTimeout = errors.New("no server connection became free in time")

// aliveCheckAfter is how long a backend must have been idle before
// Acquire checks that it is still alive.
const aliveCheckAfter = 100 * time.Millisecond

// ErrClosed means the pool was closed.
var ErrClosed = errors.New("pool is closed")

// DialFailed reports whether Acquire's err means a backend could not be
// dialled: the host did not answer, or is starting up or shutting down
// (57P03); not another ErrorResponse of the server, a queue timeout, the
// pool's shutdown or a cancellation. Another host, or the same after a
// health check, may then be tried.
func DialFailed(err error) bool {
	if err == nil || errors.Is(err, ErrQueueTimeout) || errors.Is(err, ErrClosed) || errors.Is(err, context.Canceled) {
		return false
	}
	var pgErr *pgconn.PgError
	return !errors.As(err, &pgErr) || pgErr.Code == "57P03"
}

// Key names a pool: one login role of one tenant, or (Shared) a pooled
// role whose backends serve any tenant, borrowed on behalf of Tenant; on
// one upstream host (Host) when the proxy routes between several.
type Key struct {
	Tenant   string // slug: fairness, caps and metrics
	TenantID string // asserted with set_tenant_context on every new backend (role keys)
	Role     string
	Shared   bool
	// Host is the upstream host (host:port, topology.Host.Name) the
	// backends are connected to; empty with a single upstream, whose
	// address the dial function knows. Backends of one role on two hosts
	// live in two pools, so a backend to a standby is never lent to a
	// session routed to the primary.
	Host string
}

// PoolKey is the pool a key's backends live in: the key itself, or for a
// shared key the pooled role (on its host) alone.
func (k Key) PoolKey() Key {
	if k.Shared {
		return Key{Role: k.Role, Shared: true, Host: k.Host}
	}
	return k
}

// sharedAffinity is how many transactions in a row a released shared
// backend may serve for the tenant that released it, ahead of the
// rotation, when that tenant has clients waiting.
const sharedAffinity = 1

// DialFunc opens a backend for key.
type DialFunc func(ctx context.Context, key Key) (*upstream.Conn, error)

// Config tunes a Pool.
type Config struct {
	// MaxConns caps server connections across all pools (required).
	MaxConns int
	// MaxConnsPerTenant caps one tenant's server connections; 0 = no cap
	// beyond MaxConns. TenantMaxConns overrides it per tenant slug.
	MaxConnsPerTenant int
	TenantMaxConns    map[string]int
	// QueueTimeout bounds how long Acquire waits; 0 waits for ctx alone.
	QueueTimeout time.Duration
	// IdleTimeout closes backends idle this long; 0 keeps them.
	IdleTimeout time.Duration
	// Lifetime closes backends this old when released; 0 keeps them.
	Lifetime time.Duration
	// MinIdle keeps at least this many idle backends in every pool that
	// has been used (within the budget); TenantMinIdle overrides it per
	// tenant slug. Topped up by the reaper once a second.
	MinIdle       int
	TenantMinIdle map[string]int
	// OnWait, when set, observes how long each queued Acquire waited.
	OnWait func(tenant string, waited time.Duration, ok bool)
	// Gate, when set, runs at the start of every Acquire; Acquire fails
	// with its error. It may block (a paused tenant waits in it).
	Gate func(ctx context.Context, key Key) error
}

// Backend is a server connection lent out by a Pool. The borrower has it
// to itself until Release.
type Backend struct {
	*upstream.Conn
	Key      Key
	created  time.Time
	lastUsed time.Time
	// Reused is true when the backend served a client before.
	Reused bool
	// epoch is its host's retirement count when it was dialled (see
	// RetireHost).
	epoch uint64
	// streak counts transactions in a row served out of turn for the same
	// tenant (shared backends).
	streak int
	// retire: closed when released (Reconnect). Guarded by Pool.mu.
	retire bool
	// Data is free for the borrower (e.g. which settings were applied).
	Data any
	// Settings and Reported are what a session-mode reset left on the
	// backend for its next borrower: settings applied beyond the role's
	// defaults (names case-insensitive) and the latest values the
	// server reported since login (ParameterStatus). Both nil: the
	// server's defaults. A borrower that takes the backend over clears
	// them.
	Settings, Reported map[string]string
}

// Reason says why a backend was closed.
type Reason string

// Reasons for closing a backend.
const (
	ReasonBroken   Reason = "broken"   // the borrower said it is unusable
	ReasonIdle     Reason = "idle"     // idle longer than IdleTimeout
	ReasonLifetime Reason = "lifetime" // older than Lifetime
	ReasonEvicted  Reason = "evicted"  // closed to make room for another tenant
	ReasonShutdown Reason = "shutdown"
	// ReasonReconnect: an operator asked for new backends (Reconnect).
	ReasonReconnect Reason = "reconnect"
	// ReasonRoleDefaults: the backend logged in while its role had
	// defaults of its own (see upstream.Conn.RoleDefaults).
	ReasonRoleDefaults Reason = "role_defaults"
	// ReasonRetired: its upstream host was retired (RetireHost), because
	// it stopped or started being the primary.
	ReasonRetired Reason = "host_retired"
)

// Stats is a snapshot of one pool. A shared pool has a row of its own (Key
// is its PoolKey: no tenant) with its backends, and one row per tenant
// using it (Key.Shared with the tenant) with what that tenant has borrowed
// (Active), waits for (Waiting) and the queue timeouts it had; Idle,
// Opened and Closed are the shared pool's alone.
type Stats struct {
	Key      Key
	Active   int // lent out
	Idle     int
	Waiting  int
	Opened   uint64
	Closed   map[Reason]uint64
	Timeouts uint64
	// MaxWait is how long the longest-waiting client of the row has
	// waited so far (0: none waits).
	MaxWait time.Duration
}

// ServerInfo describes one open server connection (see Servers).
type ServerInfo struct {
	PID    uint32
	Key    Key // its pool's key; for a lent shared backend, the borrower's
	Active bool
	// Created is when it logged in; LastUsed when it was last released.
	Created, LastUsed time.Time
}

type keyPool struct {
	key    Key
	idle   []*Backend // most recently used last
	active int
	opened uint64
	closed map[Reason]uint64
	tmo    uint64
	// uses are, for a shared pool, its borrowers by tenant slug.
	uses map[string]*tenantUse
}

// tenantUse is one tenant's use of a shared pool.
type tenantUse struct {
	key  Key
	lent int
	tmo  uint64
}

func (k *keyPool) use(key Key) *tenantUse {
	u := k.uses[key.Tenant]
	if u == nil {
		u = &tenantUse{key: key}
		k.uses[key.Tenant] = u
	}
	return u
}

type waiter struct {
	key      Key
	since    time.Time
	deadline time.Time // zero: no queue timeout
	// ready receives the waiter's one grant; it is buffered, so the
	// sender (holding mu) never blocks.
	ready chan grant
}

// waiters recycles waiters: a waiter leaves Acquire with ready empty (it
// received its one grant, or left the queue before any was sent), so
// neither it nor its channel is allocated again per wait.
var waiters = sync.Pool{New: func() any { return &waiter{ready: make(chan grant, 1)} }}

// grant is a backend to use, the right to dial one, or why the wait
// ended without either (queue timeout, pool closed).
type grant struct {
	b    *Backend
	slot bool
	err  error
}

// Pool is safe for concurrent use.
type Pool struct {
	cfg  Config
	dial DialFunc

	mu       sync.Mutex
	closed   bool
	total    int // backends open or being dialled
	perTen   map[string]int
	pools    map[Key]*keyPool
	queues   map[string][]*waiter // by tenant
	rotation []string             // tenants with waiters, next served first
	done     chan struct{}
	wg       sync.WaitGroup

	// One timer serves every waiter's queue timeout: it is armed for the
	// earliest deadline in the queues (expiryAt), so a wait costs no timer
	// of its own.
	expiry   *time.Timer
	expiryAt time.Time // zero: not armed
	// conns holds every open backend, lent or idle (for Servers and
	// Reconnect); kept at dial and close, not per loan.
	conns map[*Backend]struct{}
	// epochs counts each host's retirements (RetireHost); a backend
	// dialled before the latest is closed instead of kept.
	epochs map[string]uint64
}

// New returns a pool; Close stops its reaper.
func New(cfg Config, dial DialFunc) (*Pool, error) {
	if cfg.MaxConns < 1 {
		return nil, fmt.Errorf("pool: MaxConns must be at least 1, got %d", cfg.MaxConns)
	}
	p := &Pool{cfg: cfg, dial: dial, perTen: map[string]int{}, pools: map[Key]*keyPool{},
		queues: map[string][]*waiter{}, done: make(chan struct{}), conns: map[*Backend]struct{}{},
		epochs: map[string]uint64{}}
	if cfg.IdleTimeout > 0 || cfg.MinIdle > 0 || len(cfg.TenantMinIdle) > 0 {
		p.wg.Add(1)
		go p.reap()
	}
	return p, nil
}

func (p *Pool) tenantCap(tenant string) int {
	if n, ok := p.cfg.TenantMaxConns[tenant]; ok && n > 0 {
		return n
	}
	return p.cfg.MaxConnsPerTenant
}

func (p *Pool) kp(key Key) *keyPool {
	pk := key.PoolKey()
	k := p.pools[pk]
	if k == nil {
		k = &keyPool{key: pk, closed: map[Reason]uint64{}}
		if pk.Shared {
			k.uses = map[string]*tenantUse{}
		}
		p.pools[pk] = k
	}
	return k
}

// atCap reports whether tenant may not have one more backend.
func (p *Pool) atCap(tenant string) bool {
	c := p.tenantCap(tenant)
	return c > 0 && p.perTen[tenant] >= c
}

// lend marks shared backend b as borrowed for key. Caller holds mu.
func (p *Pool) lend(k *keyPool, b *Backend, key Key) {
	b.Key = key
	p.perTen[key.Tenant]++
	if key.Tenant != "" {
		k.use(key).lent++
	}
}

// unlend undoes lend (and the slot counted for a dial). Caller holds mu.
func (p *Pool) unlend(k *keyPool, b *Backend) {
	t := b.Key.Tenant
	if p.perTen[t]--; p.perTen[t] <= 0 {
		delete(p.perTen, t)
	}
	if u := k.uses[t]; u != nil {
		u.lent--
	}
	b.Key = k.key
}

// Acquire lends a backend of key, reusing an idle one, dialling a new one
// within the budget, or waiting in the tenant's queue.
func (p *Pool) Acquire(ctx context.Context, key Key) (*Backend, error) {
	if p.cfg.Gate != nil {
		if err := p.cfg.Gate(ctx, key); err != nil {
			return nil, err
		}
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	k := p.kp(key)
	if b := p.takeIdle(k, key); b != nil {
		p.mu.Unlock()
		return b, nil
	}
	if p.reserveSlot(key) {
		k.active++
		p.mu.Unlock()
		return p.open(ctx, key)
	}
	start := time.Now()
	w := waiters.Get().(*waiter)
	w.key, w.since, w.deadline = key, start, time.Time{}
	if p.cfg.QueueTimeout > 0 {
		w.deadline = start.Add(p.cfg.QueueTimeout)
		p.armExpiry(w.deadline)
	}
	p.enqueue(w)
	p.mu.Unlock()

	var g grant
	select {
	case g = <-w.ready:
	case <-ctx.Done():
		p.mu.Lock()
		left := p.dequeue(w)
		p.mu.Unlock()
		if left {
			waiters.Put(w)
			p.observe(key.Tenant, start, false)
			return nil, ctx.Err()
		}
		// Granted while giving up: take it anyway.
		g = <-w.ready
	}
	waiters.Put(w)
	if g.err != nil {
		p.observe(key.Tenant, start, false)
		return nil, g.err
	}
	p.observe(key.Tenant, start, true)
	return p.use(ctx, key, g)
}

// armExpiry makes sure the expiry timer fires by deadline. Caller holds
// mu.
func (p *Pool) armExpiry(deadline time.Time) {
	if !p.expiryAt.IsZero() && !deadline.Before(p.expiryAt) {
		return
	}
	p.expiryAt = deadline
	d := time.Until(deadline)
	if p.expiry == nil {
		p.expiry = time.AfterFunc(d, p.expire)
		return
	}
	p.expiry.Reset(d)
}

// expire ends the waits whose queue timeout has passed with
// ErrQueueTimeout and arms the timer for the next deadline.
func (p *Pool) expire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expiryAt = time.Time{}
	if p.closed {
		return
	}
	now := time.Now()
	var next time.Time
	for _, tenant := range slices.Clone(p.rotation) {
		for _, w := range slices.Clone(p.queues[tenant]) {
			switch {
			case w.deadline.IsZero():
			case !w.deadline.After(now):
				p.dequeue(w)
				k := p.kp(w.key)
				k.tmo++
				if k.uses != nil {
					k.use(w.key).tmo++
				}
				w.ready <- grant{err: ErrQueueTimeout}
			case next.IsZero() || w.deadline.Before(next):
				next = w.deadline
			}
		}
	}
	if !next.IsZero() {
		p.armExpiry(next)
	}
}

func (p *Pool) observe(tenant string, start time.Time, ok bool) {
	if p.cfg.OnWait != nil {
		p.cfg.OnWait(tenant, time.Since(start), ok)
	}
}

func (p *Pool) use(ctx context.Context, key Key, g grant) (*Backend, error) {
	if g.b != nil {
		return g.b, nil
	}
	return p.open(ctx, key)
}

// open dials a backend into a reserved slot (already counted as active).
func (p *Pool) open(ctx context.Context, key Key) (*Backend, error) {
	var epoch uint64
	if key.Host != "" {
		p.mu.Lock()
		epoch = p.epochs[key.Host]
		p.mu.Unlock()
	}
	c, err := p.dial(ctx, key)
	p.mu.Lock()
	defer p.mu.Unlock()
	k := p.kp(key)
	if err != nil {
		k.active--
		p.freeSlot(key)
		return nil, err
	}
	k.opened++
	now := time.Now()
	b := &Backend{Conn: c, Key: key, created: now, lastUsed: now, epoch: epoch}
	p.conns[b] = struct{}{}
	if k.uses != nil && key.Tenant != "" {
		k.use(key).lent++ // its slot is already counted in perTen
	}
	return b, nil
}

// takeIdle pops the most recently used idle backend of k that is still
// alive, for key; dead ones (terminated, crashed) are discarded, never lent.
// Caller holds mu.
func (p *Pool) takeIdle(k *keyPool, key Key) *Backend {
	if k.uses != nil && p.atCap(key.Tenant) {
		return nil
	}
	for n := len(k.idle); n > 0; n = len(k.idle) {
		b := k.idle[n-1]
		k.idle = k.idle[:n-1]
		// A backend used moments ago is alive; checking costs a system
		// call, so only longer-idle ones are looked at.
		if time.Since(b.lastUsed) > aliveCheckAfter && !b.Alive() {
			p.discard(k, b, ReasonBroken)
			continue
		}
		k.active++
		b.Reused = true
		b.streak = 0
		if k.uses != nil {
			p.lend(k, b, key)
		}
		return b
	}
	return nil
}

// reserveSlot counts a new backend for key if the budget allows, closing
// another pool's least recently used idle backend when the global cap is
// reached. Caller holds mu.
func (p *Pool) reserveSlot(key Key) bool {
	if c := p.tenantCap(key.Tenant); c > 0 && p.perTen[key.Tenant] >= c {
		return false
	}
	if p.total >= p.cfg.MaxConns && !p.evictLRU(key) {
		return false
	}
	p.total++
	p.perTen[key.Tenant]++
	return true
}

// evictLRU closes the least recently used idle backend of a pool other than
// key's. Caller holds mu.
func (p *Pool) evictLRU(key Key) bool {
	var victim *keyPool
	own := key.PoolKey()
	for _, k := range p.pools {
		if k.key == own || len(k.idle) == 0 {
			continue
		}
		if victim == nil || k.idle[0].lastUsed.Before(victim.idle[0].lastUsed) {
			victim = k
		}
	}
	if victim == nil {
		return false
	}
	b := victim.idle[0]
	victim.idle = victim.idle[1:]
	p.discard(victim, b, ReasonEvicted)
	return true
}

// discard closes b and frees its slot without granting it. Caller holds mu.
func (p *Pool) discard(k *keyPool, b *Backend, why Reason) {
	delete(p.conns, b)
	k.closed[why]++
	p.total--
	if !b.Key.Shared {
		p.perTen[b.Key.Tenant]-- // a shared backend was unlent first
	}
	go b.Terminate() //nolint:errcheck // best effort; the socket is closed either way
}

// freeSlot returns a slot to the budget and passes it to the next waiter
// that may use it. Caller holds mu.
func (p *Pool) freeSlot(key Key) {
	p.total--
	p.perTen[key.Tenant]--
	p.grantNext(nil)
}

// Release returns a backend. A reusable backend must be idle (ReadyForQuery
// 'I', session state reset); anything else is closed.
func (p *Pool) Release(b *Backend, reusable bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := p.kp(b.Key)
	k.active--
	prev := b.Key
	if k.uses != nil {
		p.unlend(k, b)
	}
	now := time.Now()
	switch {
	case p.closed:
		p.discard(k, b, ReasonShutdown)
		return
	case !reusable:
		p.discard(k, b, ReasonBroken)
		p.grantNext(nil)
		return
	case b.retire:
		p.discard(k, b, ReasonReconnect)
		p.grantNext(nil)
		return
	case p.cfg.Lifetime > 0 && now.Sub(b.created) > p.cfg.Lifetime:
		p.discard(k, b, ReasonLifetime)
		p.grantNext(nil)
		return
	case b.Conn != nil && b.RoleDefaults:
		p.discard(k, b, ReasonRoleDefaults)
		p.grantNext(nil)
		return
	case b.Key.Host != "" && b.epoch != p.epochs[b.Key.Host]:
		p.discard(k, b, ReasonRetired)
		p.grantNext(nil)
		return
	}
	b.lastUsed = now
	if k.uses != nil && p.serveAgain(k, b, prev) {
		return
	}
	p.grantNext(b)
}

// serveAgain hands shared backend b straight to the next waiter of the
// tenant that released it (key prev), at most sharedAffinity times in a
// row, and reports whether it did. Caller holds mu.
func (p *Pool) serveAgain(k *keyPool, b *Backend, prev Key) bool {
	if b.streak >= sharedAffinity || prev.Tenant == "" || p.atCap(prev.Tenant) {
		return false
	}
	q := p.queues[prev.Tenant]
	for _, w := range q {
		if w.key.PoolKey() != k.key {
			continue
		}
		p.dequeue(w)
		b.streak++
		k.active++
		b.Reused = true
		p.lend(k, b, w.key)
		w.ready <- grant{b: b}
		return true
	}
	return false
}

// grantNext serves the next waiter, round-robin across tenants, and
// reports whether it served one. b, when not nil, is a just-released healthy
// backend: handed to a waiter of its key, closed to make room for another
// tenant's waiter, or kept idle. Caller holds mu.
func (p *Pool) grantNext(b *Backend) bool {
	for range len(p.rotation) {
		tenant := p.rotation[0]
		w := p.queues[tenant][0]
		if b != nil && b.Key.Shared && w.key.PoolKey() == b.Key && !p.atCap(tenant) {
			p.pop(tenant)
			k := p.kp(b.Key)
			k.active++
			b.Reused = true
			b.streak = 0
			p.lend(k, b, w.key)
			w.ready <- grant{b: b}
			return true
		}
		if b != nil && !b.Key.Shared && w.key == b.Key {
			p.pop(tenant)
			p.kp(b.Key).active++
			b.Reused = true
			w.ready <- grant{b: b}
			return true
		}
		if p.atCap(tenant) {
			// At its cap: only its own releases can serve it.
			p.rotation = append(p.rotation[1:], tenant)
			continue
		}
		if b != nil {
			p.discard(p.kp(b.Key), b, ReasonEvicted)
			b = nil
		}
		if p.reserveSlot(w.key) {
			p.pop(tenant)
			p.kp(w.key).active++
			w.ready <- grant{slot: true}
			return true
		}
		p.rotation = append(p.rotation[1:], tenant)
	}
	if b != nil {
		k := p.kp(b.Key)
		k.idle = append(k.idle, b)
	}
	return false
}

func (p *Pool) enqueue(w *waiter) {
	t := w.key.Tenant
	if len(p.queues[t]) == 0 {
		p.rotation = append(p.rotation, t)
	}
	p.queues[t] = append(p.queues[t], w)
}

// pop removes tenant's first waiter and moves tenant to the back of the
// rotation (or out of it).
func (p *Pool) pop(tenant string) {
	q := p.queues[tenant][1:]
	p.rotation = p.rotation[1:]
	if len(q) == 0 {
		delete(p.queues, tenant)
		return
	}
	p.queues[tenant] = q
	p.rotation = append(p.rotation, tenant)
}

// dequeue removes w if it is still waiting. Caller holds mu.
func (p *Pool) dequeue(w *waiter) bool {
	t := w.key.Tenant
	q := p.queues[t]
	for i, x := range q {
		if x != w {
			continue
		}
		q = append(q[:i:i], q[i+1:]...)
		if len(q) == 0 {
			delete(p.queues, t)
			for j, r := range p.rotation {
				if r == t {
					p.rotation = append(p.rotation[:j:j], p.rotation[j+1:]...)
					break
				}
			}
		} else {
			p.queues[t] = q
		}
		return true
	}
	return false
}

func (p *Pool) reap() {
	defer p.wg.Done()
	every := time.Second
	if p.cfg.IdleTimeout > 0 {
		every = min(p.cfg.IdleTimeout/2, time.Second) + time.Millisecond
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-p.done:
			return
		case now := <-tick.C:
			p.mu.Lock()
			for _, k := range p.pools {
				keep := k.idle[:0]
				for _, b := range k.idle {
					if p.cfg.IdleTimeout > 0 && now.Sub(b.lastUsed) > p.cfg.IdleTimeout && len(keep) >= p.minIdle(k.key.Tenant) {
						p.discard(k, b, ReasonIdle)
						continue
					}
					keep = append(keep, b)
				}
				clear(k.idle[len(keep):])
				k.idle = keep
			}
			for p.grantNext(nil) {
			}
			warm := p.warmUpKeys()
			p.mu.Unlock()
			for _, key := range warm {
				if b, err := p.open(context.Background(), key); err == nil {
					p.Release(b, true)
				}
			}
		}
	}
}

func (p *Pool) minIdle(tenant string) int {
	if n, ok := p.cfg.TenantMinIdle[tenant]; ok {
		return n
	}
	return p.cfg.MinIdle
}

// warmUpKeys reserves a slot for each backend needed to bring pools up to
// their minimum idle count; nobody waiting comes first. Caller holds mu.
func (p *Pool) warmUpKeys() []Key {
	if len(p.rotation) > 0 || p.closed {
		return nil
	}
	var keys []Key
	for _, k := range p.pools {
		for need := p.minIdle(k.key.Tenant) - len(k.idle); need > 0; need-- {
			if p.total >= p.cfg.MaxConns || !p.reserveSlot(k.key) {
				break
			}
			k.active++
			keys = append(keys, k.key)
		}
	}
	return keys
}

// Stats returns a snapshot of every pool.
func (p *Pool) Stats() []Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Stats, 0, len(p.pools))
	for _, k := range p.pools {
		s := Stats{Key: k.key, Active: k.active, Idle: len(k.idle), Opened: k.opened,
			Timeouts: k.tmo, Closed: make(map[Reason]uint64, len(k.closed))}
		for r, n := range k.closed {
			s.Closed[r] = n
		}
		now := time.Now()
		if k.uses == nil {
			for _, w := range p.queues[k.key.Tenant] {
				if w.key == k.key {
					s.Waiting++
					s.MaxWait = max(s.MaxWait, now.Sub(w.since))
				}
			}
			out = append(out, s)
			continue
		}
		waiting := map[string]int{}
		waited := map[string]time.Duration{}
		for t, q := range p.queues {
			for _, w := range q {
				if w.key.PoolKey() == k.key {
					waiting[t]++
					s.Waiting++
					waited[t] = max(waited[t], now.Sub(w.since))
					s.MaxWait = max(s.MaxWait, waited[t])
				}
			}
		}
		out = append(out, s)
		for t, u := range k.uses {
			if u.lent == 0 && waiting[t] == 0 && u.tmo == 0 {
				continue
			}
			out = append(out, Stats{Key: u.key, Active: u.lent, Waiting: waiting[t], MaxWait: waited[t], Timeouts: u.tmo, Closed: map[Reason]uint64{}})
		}
	}
	return out
}

// Servers returns every open server connection, idle or lent out (not
// those being dialled).
func (p *Pool) Servers() []ServerInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	idle := map[*Backend]bool{}
	for _, k := range p.pools {
		for _, b := range k.idle {
			idle[b] = true
		}
	}
	out := make([]ServerInfo, 0, len(p.conns))
	for b := range p.conns {
		out = append(out, ServerInfo{PID: b.PID, Key: b.Key, Active: !idle[b], Created: b.created, LastUsed: b.lastUsed})
	}
	return out
}

// SetTenantMaxConns changes tenant's cap on server connections at run time
// (0: back to MaxConnsPerTenant). A lower cap takes effect as backends are
// released; a higher one serves waiting clients at once.
func (p *Pool) SetTenantMaxConns(tenant string, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := make(map[string]int, len(p.cfg.TenantMaxConns)+1)
	for t, c := range p.cfg.TenantMaxConns {
		m[t] = c
	}
	if n > 0 {
		m[tenant] = n
	} else {
		delete(m, tenant)
	}
	p.cfg.TenantMaxConns = m
	for p.grantNext(nil) {
	}
}

// RetireHost closes the idle backends to host (a Key.Host) and makes those
// lent out, or being dialled, close when released instead of returning
// to their pool. The proxy retires a host when it stops or starts being
// the primary. It returns how many idle backends it closed.
func (p *Pool) RetireHost(host string) int {
	if host == "" {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.epochs[host]++
	n := 0
	for _, k := range p.pools {
		if k.key.Host != host || len(k.idle) == 0 {
			continue
		}
		for _, b := range k.idle {
			p.discard(k, b, ReasonRetired)
			n++
		}
		clear(k.idle)
		k.idle = k.idle[:0]
	}
	for p.grantNext(nil) {
	}
	return n
}

// Total is the number of server connections open or being opened.
func (p *Pool) Total() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total
}

// Close closes idle backends, fails waiters and stops the reaper. Backends
// lent out are closed when released.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.done)
	if p.expiry != nil {
		p.expiry.Stop()
	}
	for _, q := range p.queues {
		for _, w := range q {
			w.ready <- grant{err: ErrClosed}
		}
	}
	clear(p.queues)
	p.rotation = nil
	for _, k := range p.pools {
		for _, b := range k.idle {
			p.discard(k, b, ReasonShutdown)
		}
		k.idle = nil
	}
	p.mu.Unlock()
	p.wg.Wait()
}
