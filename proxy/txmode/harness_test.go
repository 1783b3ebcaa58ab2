package txmode_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/txmode"
	"github.com/vitalproxy/vitalproxy/proxy/upstream"
	"github.com/vitalproxy/vitalproxy/test/fixture"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Tenants of the fixture used by the tests.
const (
	dh = "digital-health-startup"
	pl = "vital-platform"
)

// env is a migrated database, a pool of its tenants' roles and a front end
// that serves clients in transaction mode.
type env struct {
	c    *pgtest.Cluster
	db   *fixture.DB
	pool *pool.Pool
	fe   *frontEnd
}

// newEnv starts the front end. tweak, when set, adjusts each client's
// options.
func newEnv(t testing.TB, cfg pool.Config, tweak func(*txmode.Options)) *env {
	t.Helper()
	c := pgtest.Shared(t)
	db := fixture.New(t)
	d, err := upstream.NewDialer(c.URLFor("x", "x", db.Name), func(role string) string {
		return auth.RolePassword(fixture.Secret, role)
	}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(cfg, func(ctx context.Context, k pool.Key) (*upstream.Conn, error) {
		return d.Dial(ctx, upstream.Options{Role: k.Role, TenantID: k.TenantID})
	})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{c: c, db: db, pool: p}
	e.fe = startFrontEnd(t, func(user string, params map[string]string) (txmode.Options, error) {
		id, ok := db.TenantIDs[user]
		if !ok {
			return txmode.Options{}, fmt.Errorf("unknown tenant %q", user)
		}
		o := txmode.Options{Pool: p, Key: e.key(user), StartupParams: params, CleanupTimeout: 2 * time.Second, Logger: testLogger}
		o.Key.TenantID = id
		if tweak != nil {
			tweak(&o)
		}
		return o, nil
	})
	t.Cleanup(func() {
		e.fe.close()
		p.Close()
	})
	return e
}

// testLogger discards unless VITALPROXY_TXMODE_LOG is set.
var testLogger = func() *slog.Logger {
	if os.Getenv("VITALPROXY_TXMODE_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}()

// checkLeaks fails t if goroutines started during the test outlive it and
// its cleanups. Call it first in a test.
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

func (e *env) key(slug string) pool.Key {
	return pool.Key{Tenant: slug, TenantID: e.db.TenantIDs[slug], Role: auth.RoleName(fixture.Prefix, slug, auth.ReadWrite)}
}

// url is a libpq URL for the front end as tenant slug.
func (e *env) url(slug string, params ...string) string {
	q := url.Values{"sslmode": {"disable"}}
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	return fmt.Sprintf("postgres://%s@%s/%s?%s", url.PathEscape(slug), e.fe.ln.Addr(), e.db.Name, strings.ReplaceAll(q.Encode(), "+", "%20"))
}

// connect opens a pgx connection through the front end.
func (e *env) connect(t testing.TB, slug string, mode pgx.QueryExecMode, params ...string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(e.url(slug, params...))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("connect as %s: %v", slug, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// super opens a superuser connection straight to the database.
func (e *env) super(t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), e.c.URL(e.db.Name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func (e *env) stats(slug string) pool.Stats {
	for _, s := range e.pool.Stats() {
		if s.Key.Tenant == slug {
			return s
		}
	}
	return pool.Stats{}
}

// frontEnd accepts clients with trust authentication (the real proxy
// authenticates them; this one trusts the user name, which is a tenant
// slug) and serves them with txmode.
type frontEnd struct {
	t    testing.TB
	ln   net.Listener
	opts func(user string, params map[string]string) (txmode.Options, error)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	clients map[uint32]*feClient
	nextPID uint32
	results []runResult
}

type feClient struct {
	c      *txmode.Client
	secret [4]byte
	user   string
}

type runResult struct {
	user string
	err  error
}

func startFrontEnd(t testing.TB, opts func(string, map[string]string) (txmode.Options, error)) *frontEnd {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fe := &frontEnd{t: t, ln: ln, opts: opts, clients: map[uint32]*feClient{}, nextPID: 1000}
	fe.ctx, fe.cancel = context.WithCancel(context.Background())
	fe.wg.Add(1)
	go func() {
		defer fe.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			fe.wg.Add(1)
			go func() {
				defer fe.wg.Done()
				defer conn.Close()
				fe.serve(conn)
			}()
		}
	}()
	return fe
}

// close stops accepting, ends every session and waits for them.
func (fe *frontEnd) close() {
	fe.ln.Close()
	fe.cancel()
	fe.wg.Wait()
}

// client returns the engine's client behind a pgx connection.
func (fe *frontEnd) client(pid uint32) *txmode.Client {
	fe.mu.Lock()
	defer fe.mu.Unlock()
	if c := fe.clients[pid]; c != nil {
		return c.c
	}
	return nil
}

// runErrors returns the errors Run returned so far.
func (fe *frontEnd) runErrors() []runResult {
	fe.mu.Lock()
	defer fe.mu.Unlock()
	var out []runResult
	for _, r := range fe.results {
		if r.err != nil {
			out = append(out, r)
		}
	}
	return out
}

const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
	protocol30        = 196608
)

// readStartup reads one startup packet with exact reads.
func readStartup(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:])) - 4
	if n < 4 || n > 10000 {
		return nil, fmt.Errorf("bad startup packet length %d", n)
	}
	body := make([]byte, n)
	_, err := io.ReadFull(r, body)
	return body, err
}

func (fe *frontEnd) serve(conn net.Conn) {
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	var params map[string]string
	for params == nil {
		pkt, err := readStartup(conn)
		if err != nil {
			return
		}
		switch binary.BigEndian.Uint32(pkt) {
		case codeSSLRequest, codeGSSENCRequest:
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return
			}
		case codeCancelRequest:
			if len(pkt) < 12 {
				return
			}
			pid := binary.BigEndian.Uint32(pkt[4:])
			fe.mu.Lock()
			c := fe.clients[pid]
			fe.mu.Unlock()
			if c != nil && string(c.secret[:]) == string(pkt[8:12]) {
				ctx, cancel := context.WithTimeout(fe.ctx, 10*time.Second)
				_ = c.c.Cancel(ctx)
				cancel()
			}
			return
		case protocol30:
			params = map[string]string{}
			fields := strings.Split(string(pkt[4:]), "\x00")
			for i := 0; i+1 < len(fields); i += 2 {
				if fields[i] != "" {
					params[fields[i]] = fields[i+1]
				}
			}
		default:
			return
		}
	}
	user := params["user"]
	for _, k := range []string{"user", "database", "options", "replication"} {
		delete(params, k)
	}
	fatal := func(code, msg string) {
		b, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", Code: code, Message: msg}).Encode(nil)
		_, _ = conn.Write(b)
	}
	opts, err := fe.opts(user, params)
	if err != nil {
		fatal("28000", err.Error())
		return
	}
	c, err := txmode.NewClient(conn, opts)
	if err != nil {
		fatal("08P01", err.Error())
		return
	}
	ps, err := c.Params(fe.ctx)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			fatal(pgErr.Code, pgErr.Message)
		} else {
			fatal("08006", err.Error())
		}
		return
	}
	fc := &feClient{c: c, user: user}
	_, _ = rand.Read(fc.secret[:])
	fe.mu.Lock()
	fe.nextPID++
	pid := fe.nextPID
	fe.clients[pid] = fc
	fe.mu.Unlock()
	defer func() {
		fe.mu.Lock()
		delete(fe.clients, pid)
		fe.mu.Unlock()
	}()
	var out []byte
	out, _ = (&pgproto3.AuthenticationOk{}).Encode(out)
	names := make([]string, 0, len(ps))
	for k := range ps {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		out, _ = (&pgproto3.ParameterStatus{Name: k, Value: ps[k]}).Encode(out)
	}
	out, _ = (&pgproto3.BackendKeyData{ProcessID: pid, SecretKey: fc.secret[:]}).Encode(out)
	out, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(out)
	if _, err := conn.Write(out); err != nil {
		return
	}
	_ = conn.SetDeadline(time.Time{})
	err = c.Run(fe.ctx)
	fe.mu.Lock()
	fe.results = append(fe.results, runResult{user: user, err: err})
	fe.mu.Unlock()
}
