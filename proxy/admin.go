package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// adminTimeout bounds one use of the admin connection.
const adminTimeout = 30 * time.Second

// adminConn is the one administrative connection (user store, tenant list,
// audit, readiness). It is never used for tenant traffic. It connects
// lazily and reconnects after a failure; uses are serialised. Safe for
// concurrent use.
type adminConn struct {
	url  string
	mu   sync.Mutex
	conn *pgx.Conn
}

func newAdminConn(url string) *adminConn { return &adminConn{url: url} }

// with runs fn on the connection, connecting first if needed.
func (a *adminConn) with(ctx context.Context, fn func(*pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conn == nil || a.conn.IsClosed() {
		cfg, err := pgx.ParseConfig(a.url)
		if err != nil {
			return errors.New("the admin database URL cannot be parsed")
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
