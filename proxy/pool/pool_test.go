package pool_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/upstream"
	"github.com/vitalproxy/vitalproxy/test/fixture"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type env struct {
	db     *fixture.DB
	dialer *upstream.Dialer
	dh, pl pool.Key
	dials  atomic.Int64
}

func newEnv(t *testing.T) *env {
	t.Helper()
	c := pgtest.Shared(t)
	fx := fixture.New(t)
	d, err := upstream.NewDialer(c.URLFor("x", "x", fx.Name), func(role string) string {
		return auth.RolePassword(fixture.Secret, role)
	}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	key := func(slug string) pool.Key {
		return pool.Key{Tenant: slug, TenantID: fx.TenantIDs[slug], Role: auth.RoleName(fixture.Prefix, slug, auth.ReadWrite)}
	}
	return &env{db: fx, dialer: d, dh: key("digital-health-startup"), pl: key("vital-platform")}
}

func (e *env) dial(ctx context.Context, k pool.Key) (*upstream.Conn, error) {
	e.dials.Add(1)
	return e.dialer.Dial(ctx, upstream.Options{Role: k.Role, TenantID: k.TenantID})
}

func newPool(t *testing.T, e *env, cfg pool.Config) *pool.Pool {
	t.Helper()
	p, err := pool.New(cfg, e.dial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func acquire(t *testing.T, p *pool.Pool, k pool.Key) *pool.Backend {
	t.Helper()
	b, err := p.Acquire(context.Background(), k)
	if err != nil {
		t.Fatalf("acquire %s: %v", k.Role, err)
	}
	if b.Key != k {
		t.Fatalf("got a backend of %v for %v", b.Key, k)
	}
	return b
}

// serverBackends counts the roles' sessions in pg_stat_activity.
func serverBackends(t *testing.T, e *env) int {
	t.Helper()
	c := pgtest.Shared(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.URL(e.db.Name))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = ANY($1)",
		[]string{e.dh.Role, e.pl.Role}).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func stats(p *pool.Pool, k pool.Key) pool.Stats {
	for _, s := range p.Stats() {
		if s.Key == k {
			return s
		}
	}
	return pool.Stats{Key: k}
}

func TestReuseKeepsOneBackendPerRole(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 4})
	b := acquire(t, p, e.dh)
	pid := b.PID
	p.Release(b, true)
	b = acquire(t, p, e.dh)
	if b.PID != pid || !b.Reused {
		t.Errorf("second acquire: pid %d (was %d), reused %v", b.PID, pid, b.Reused)
	}
	p.Release(b, true)
	other := acquire(t, p, e.pl)
	if other.PID == pid {
		t.Fatal("a backend of one tenant's role was lent to another tenant")
	}
	p.Release(other, true)
	if n := e.dials.Load(); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}
	p.Release(acquire(t, p, e.dh), false)
	if s := stats(p, e.dh); s.Closed[pool.ReasonBroken] != 1 || s.Idle != 0 {
		t.Errorf("after releasing a broken backend: %+v", s)
	}
}

func TestQueueTimeout(t *testing.T) {
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 1, QueueTimeout: 200 * time.Millisecond})
	held := acquire(t, p, e.dh)
	defer p.Release(held, true)
	_, err := p.Acquire(context.Background(), e.dh)
	if !errors.Is(err, pool.ErrQueueTimeout) {
		t.Fatalf("err = %v, want ErrQueueTimeout", err)
	}
	if s := stats(p, e.dh); s.Timeouts != 1 {
		t.Errorf("timeouts = %d", s.Timeouts)
	}
}

func TestIdleBackendOfAnotherTenantIsEvicted(t *testing.T) {
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 2})
	a1, a2 := acquire(t, p, e.dh), acquire(t, p, e.dh)
	p.Release(a1, true)
	p.Release(a2, true)
	b := acquire(t, p, e.pl) // cap reached, dh has idle backends: one goes
	defer p.Release(b, true)
	if s := stats(p, e.dh); s.Closed[pool.ReasonEvicted] != 1 || s.Idle != 1 {
		t.Errorf("dh pool after eviction: %+v", s)
	}
	if p.Total() != 2 {
		t.Errorf("total = %d, want 2", p.Total())
	}
}

func TestWaiterOfAnotherTenantGetsTheFreedSlot(t *testing.T) {
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 2, QueueTimeout: 30 * time.Second})
	a1, a2 := acquire(t, p, e.dh), acquire(t, p, e.dh)
	got := make(chan *pool.Backend)
	go func() {
		b, err := p.Acquire(context.Background(), e.pl)
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	for stats(p, e.pl).Waiting == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	p.Release(a1, true)
	b := <-got
	if b == nil || b.Key != e.pl {
		t.Fatalf("waiter got %+v", b)
	}
	p.Release(b, true)
	p.Release(a2, true)
	if n := serverBackends(t, e); n > 2 {
		t.Errorf("%d server backends open, cap is 2", n)
	}
}

// TestBusyTenantCannotStarveAnother: many clients of one tenant hammer a
// small budget while one client of another tenant keeps getting served.
func TestBusyTenantCannotStarveAnother(t *testing.T) {
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 2, QueueTimeout: 20 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var busyOps atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				b, err := p.Acquire(ctx, e.dh)
				if err != nil {
					return
				}
				time.Sleep(2 * time.Millisecond)
				p.Release(b, true)
				busyOps.Add(1)
			}
		}()
	}
	for busyOps.Load() < 20 {
		time.Sleep(5 * time.Millisecond)
	}
	for i := range 10 {
		b, err := p.Acquire(context.Background(), e.pl)
		if err != nil {
			t.Fatalf("quiet tenant's acquire %d: %v", i, err)
		}
		if p.Total() > 2 {
			t.Errorf("total %d exceeds the cap", p.Total())
		}
		p.Release(b, true)
	}
	cancel()
	wg.Wait()
	if s := stats(p, e.pl); s.Timeouts != 0 {
		t.Errorf("quiet tenant timed out %d times", s.Timeouts)
	}
}

func TestPerTenantCap(t *testing.T) {
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 10, MaxConnsPerTenant: 1, QueueTimeout: 100 * time.Millisecond})
	a := acquire(t, p, e.dh)
	if _, err := p.Acquire(context.Background(), e.dh); !errors.Is(err, pool.ErrQueueTimeout) {
		t.Errorf("second dh backend: err = %v, want queue timeout at the tenant cap", err)
	}
	b := acquire(t, p, e.pl) // other tenants are not affected
	p.Release(a, true)
	p.Release(b, true)
}

func TestIdleTimeoutAndClose(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	e := newEnv(t)
	p, err := pool.New(pool.Config{MaxConns: 2, IdleTimeout: 50 * time.Millisecond}, e.dial)
	if err != nil {
		t.Fatal(err)
	}
	p.Release(acquire(t, p, e.dh), true)
	deadline := time.Now().Add(20 * time.Second)
	for stats(p, e.dh).Closed[pool.ReasonIdle] == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s := stats(p, e.dh); s.Closed[pool.ReasonIdle] != 1 || p.Total() != 0 {
		t.Errorf("after idle timeout: %+v total %d", s, p.Total())
	}
	p.Close()
	if _, err := p.Acquire(context.Background(), e.dh); !errors.Is(err, pool.ErrClosed) {
		t.Errorf("acquire after close: %v", err)
	}
	time.Sleep(100 * time.Millisecond) // let the discard goroutines finish
}

func TestMinIdleWarmsUsedPools(t *testing.T) {
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 4, MinIdle: 2})
	p.Release(acquire(t, p, e.dh), true)
	deadline := time.Now().Add(30 * time.Second)
	for stats(p, e.dh).Idle < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if s := stats(p, e.dh); s.Idle != 2 || s.Opened != 2 {
		t.Errorf("dh pool: %+v, want 2 idle backends", s)
	}
	if s := stats(p, e.pl); s.Opened != 0 {
		t.Errorf("an unused pool was warmed: %+v", s)
	}
}

func TestDeadIdleBackendIsNeverLent(t *testing.T) {
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 2})
	b := acquire(t, p, e.dh)
	pid := b.PID
	p.Release(b, true)
	c := pgtest.Shared(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.URL(e.db.Name))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1, 10000)", int(pid)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // idle long enough to be checked
	b = acquire(t, p, e.dh)
	defer p.Release(b, true)
	if b.PID == pid {
		t.Fatal("a terminated backend was lent again")
	}
	if s := stats(p, e.dh); s.Closed[pool.ReasonBroken] != 1 {
		t.Errorf("stats %+v, want the dead backend closed as broken", s)
	}
}

// TestQueueTimeoutsShareOneTimer checks that every waiter gets its own
// full queue timeout, also when it queued behind others whose timeout the
// pool's one expiry timer was armed for.
func TestQueueTimeoutsShareOneTimer(t *testing.T) {
	e := newEnv(t)
	const timeout = 300 * time.Millisecond
	p := newPool(t, e, pool.Config{MaxConns: 1, QueueTimeout: timeout})
	held := acquire(t, p, e.dh)
	defer p.Release(held, true)

	type result struct {
		waited time.Duration
		err    error
	}
	results := make(chan result, 3)
	for i := range 3 {
		go func() {
			start := time.Now()
			_, err := p.Acquire(context.Background(), []pool.Key{e.dh, e.pl, e.dh}[i])
			results <- result{time.Since(start), err}
		}()
		time.Sleep(timeout / 3) // later waiters' deadlines fall after the first's
	}
	for range 3 {
		r := <-results
		if !errors.Is(r.err, pool.ErrQueueTimeout) {
			t.Fatalf("err = %v, want ErrQueueTimeout", r.err)
		}
		if r.waited < timeout {
			t.Errorf("a waiter gave up after %v, before its queue timeout of %v", r.waited, timeout)
		}
	}
	if got := stats(p, e.dh).Timeouts + stats(p, e.pl).Timeouts; got != 3 {
		t.Errorf("timeouts counted = %d, want 3", got)
	}
	// The pool still serves after the timeouts: the released backend
	// reaches the next client.
	p.Release(held, true)
	p.Release(acquire(t, p, e.dh), true)
}

// TestCancelledWaitLeavesTheQueue checks that a waiter whose context ends
// gets the context's error, is not counted as a queue timeout and does not
// swallow the next backend released.
func TestCancelledWaitLeavesTheQueue(t *testing.T) {
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 1, QueueTimeout: 20 * time.Second})
	held := acquire(t, p, e.dh)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.Acquire(ctx, e.dh); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's deadline", err)
	}
	if s := stats(p, e.dh); s.Timeouts != 0 || s.Waiting != 0 {
		t.Errorf("after a cancelled wait: %+v", s)
	}
	p.Release(held, true)
	if s := stats(p, e.dh); s.Idle != 1 {
		t.Errorf("the released backend went to nobody: %+v", s)
	}
	b := acquire(t, p, e.dh)
	if b != held {
		t.Errorf("a new backend was dialled instead of reusing the idle one")
	}
	p.Release(b, true)
}

// TestCloseEndsWaits checks that Close fails every queued Acquire with
// ErrClosed at once.
func TestCloseEndsWaits(t *testing.T) {
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 1})
	held := acquire(t, p, e.dh)
	errs := make(chan error, 2)
	for _, k := range []pool.Key{e.dh, e.pl} {
		go func() {
			_, err := p.Acquire(context.Background(), k)
			errs <- err
		}()
	}
	for deadline := time.Now().Add(20 * time.Second); stats(p, e.dh).Waiting+stats(p, e.pl).Waiting < 2; {
		if time.Now().After(deadline) {
			t.Fatal("the waiters never queued")
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.Close()
	for range 2 {
		if err := <-errs; !errors.Is(err, pool.ErrClosed) {
			t.Errorf("err = %v, want ErrClosed", err)
		}
	}
	p.Release(held, true)
}

// TestRecycledWaitersCarryNoGrant races releases against waits that give
// up at about the same moment, many times over: a wait that gives up as
// it is granted must still take the backend (none may leak), and a
// recycled waiter must not hand a stale grant to a later Acquire.
func TestRecycledWaitersCarryNoGrant(t *testing.T) {
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 2, QueueTimeout: 20 * time.Second})
	// Two backends up front: from then on every Acquire reuses one or
	// waits, and none dials (a dial would fail on the short contexts).
	first, second := acquire(t, p, e.dh), acquire(t, p, e.dh)
	p.Release(first, true)
	p.Release(second, true)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration((w+i)%4)*time.Millisecond)
				b, err := p.Acquire(ctx, e.dh)
				cancel()
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("acquire: %v", err)
					}
					continue
				}
				if b.Key != e.dh {
					t.Errorf("got a backend of %v", b.Key)
				}
				time.Sleep(time.Millisecond)
				p.Release(b, true)
			}
		}()
	}
	wg.Wait()
	if s := stats(p, e.dh); s.Active != 0 || s.Waiting != 0 || s.Idle != 2 || p.Total() != 2 || e.dials.Load() != 2 {
		t.Fatalf("after the race: %+v, total %d, dials %d", s, p.Total(), e.dials.Load())
	}
	// Both slots are still usable.
	a, b := acquire(t, p, e.dh), acquire(t, p, e.dh)
	p.Release(a, true)
	p.Release(b, true)
}

// sharedKey is a key of the shared pool borrowed for tenant slug.
func (e *env) sharedKey(slug string) pool.Key {
	return pool.Key{Tenant: slug, Role: e.dh.Role, Shared: true}
}

// TestSharedBackendServesTenantsInTurn checks that one shared backend
// serves every tenant's waiters, the releasing tenant's next waiter once
// ahead of the rotation, then the others in the order they came.
func TestSharedBackendServesTenantsInTurn(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 1})
	a, b, c := e.sharedKey("tenant-a"), e.sharedKey("tenant-b"), e.sharedKey("tenant-c")
	first := acquire(t, p, a)
	order := make(chan string, 4)
	var wg sync.WaitGroup
	wait := func(k pool.Key) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := p.Acquire(context.Background(), k)
			if err != nil {
				t.Errorf("acquire for %s: %v", k.Tenant, err)
				return
			}
			if got.Key != k || got.PID != first.PID {
				t.Errorf("%s got key %v pid %d, want its own key on pid %d", k.Tenant, got.Key, got.PID, first.PID)
			}
			order <- k.Tenant
			p.Release(got, true)
		}()
		// Let it queue before the next one.
		deadline := time.Now().Add(5 * time.Second)
		for stats(p, k).Waiting == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	wait(b)
	wait(c)
	wait(a)
	if s := stats(p, a.PoolKey()); s.Active != 1 || s.Waiting != 3 {
		t.Fatalf("shared pool before release: %+v", s)
	}
	p.Release(first, true)
	wg.Wait()
	close(order)
	var got []string
	for o := range order {
		got = append(got, o)
	}
	want := []string{"tenant-a", "tenant-b", "tenant-c"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("served %v, want %v", got, want)
	}
	if n := e.dials.Load(); n != 1 {
		t.Errorf("dials = %d, want 1: one backend serves every tenant", n)
	}
	if s := stats(p, a.PoolKey()); s.Active != 0 || s.Idle != 1 || s.Waiting != 0 {
		t.Errorf("shared pool after: %+v", s)
	}
}

// TestSharedPoolPerTenantCap checks that a tenant's cap counts the shared
// backends it borrowed, not the idle ones, and that another tenant is
// served meanwhile.
func TestSharedPoolPerTenantCap(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 3, MaxConnsPerTenant: 1})
	a, b := e.sharedKey("tenant-a"), e.sharedKey("tenant-b")
	held := acquire(t, p, a)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.Acquire(ctx, a); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a second backend for tenant-a at its cap: err = %v, want a wait until the deadline", err)
	}
	other := acquire(t, p, b)
	if other.PID == held.PID {
		t.Fatal("one backend lent twice")
	}
	if sa, sb := stats(p, a), stats(p, b); sa.Active != 1 || sb.Active != 1 {
		t.Errorf("per-tenant rows: %+v, %+v", sa, sb)
	}
	if s := stats(p, a.PoolKey()); s.Active != 2 {
		t.Errorf("shared pool row: %+v", s)
	}
	p.Release(held, true)
	// tenant-b is at its cap too, although a shared backend is idle.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := p.Acquire(ctx2, b); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("tenant-b beyond its cap: err = %v", err)
	}
	p.Release(other, true)
	again := acquire(t, p, b)
	p.Release(again, true)
	if n := e.dials.Load(); n != 2 {
		t.Errorf("dials = %d, want 2", n)
	}
	if s := stats(p, a.PoolKey()); s.Idle != 2 || s.Active != 0 {
		t.Errorf("shared pool at the end: %+v", s)
	}
}

// TestRetireHost: backends of one role on two hosts live in two pools;
// retiring a host closes its idle backends and makes a lent one close when
// released, while the other host's pool keeps its backends.
func TestRetireHost(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 4})
	onA, onB := e.dh, e.dh
	onA.Host, onB.Host = "a:5432", "b:5432"
	a1, a2, b1 := acquire(t, p, onA), acquire(t, p, onA), acquire(t, p, onB)
	p.Release(a1, true)
	p.Release(b1, true)
	if got := p.Total(); got != 3 {
		t.Fatalf("total %d, want 3", got)
	}
	if n := p.RetireHost("a:5432"); n != 1 {
		t.Fatalf("RetireHost closed %d idle backends, want 1", n)
	}
	p.Release(a2, true) // dialled before the retirement: closed
	if got := p.Total(); got != 1 {
		t.Fatalf("total %d after retiring host a, want 1 (host b's)", got)
	}
	dials := e.dials.Load()
	b2 := acquire(t, p, onB)
	if e.dials.Load() != dials {
		t.Fatal("host b's idle backend was not reused")
	}
	a3 := acquire(t, p, onA) // dialled after: kept
	p.Release(a3, true)
	p.Release(b2, true)
	if got := p.Total(); got != 2 {
		t.Fatalf("total %d, want 2", got)
	}
	var retired uint64
	for _, st := range p.Stats() {
		retired += st.Closed[pool.ReasonRetired]
	}
	if retired != 2 {
		t.Fatalf("%d backends closed as retired, want 2", retired)
	}
}
