package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/proxy/topology"
)

// adminTimeout bounds one use of the admin connection.
const adminTimeout = 30 * time.Second

// adminConn is the one administrative connection (user store, tenant list,
// audit, readiness). It is never used for tenant traffic. It connects
// lazily and reconnects after a failure; uses are serialised. Safe for
// concurrent use.
type adminConn struct {
	url string
	// primary, when set, names the host to connect to instead of the
	// URL's: the upstream topology's current primary (ok false: none
	// known, the URL's hosts are used).
	primary func() (topology.Endpoint, bool)
	// stale asks the next use to connect afresh (set without waiting for
	// a use in progress).
	stale atomic.Bool
	mu    sync.Mutex
	conn  *pgx.Conn
}

func newAdminConn(url string) *adminConn { return &adminConn{url: url} }

// reset makes the next use connect afresh (to a new primary). It does not
// wait for a use in progress.
func (a *adminConn) reset() { a.stale.Store(true) }

// with runs fn on the connection, connecting first if needed.
func (a *adminConn) with(ctx context.Context, fn func(*pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stale.Swap(false) {
		a.closeLocked()
	}
	if a.conn == nil || a.conn.IsClosed() {
		cfg, err := pgx.ParseConfig(a.url)
		if err != nil {
			return errors.New("the admin database URL cannot be parsed")
		}
		if a.primary != nil {
			if ep, ok := a.primary(); ok {
				// The URL's credentials and TLS settings, on the primary.
				cfg.Host, cfg.Port, cfg.Fallbacks = ep.Host, ep.Port, nil
			}
		}
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return fmt.Errorf("connect to the admin database: %w", err)
		}
		a.conn = c
	}
	err := fn(a.conn)
	var pgErr *pgconn.PgError
	if err != nil && !errors.As(err, &pgErr) {
		// A network failure or a cancelled query may leave the connection
		// in doubt: start afresh next time.
		a.closeLocked()
	}
	return err
}

func (a *adminConn) closeLocked() {
	if a.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = a.conn.Close(ctx)
		cancel()
		a.conn = nil
	}
}

func (a *adminConn) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closeLocked()
}
