package migrations

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pressly/goose/v3/lock"
)

// lockKey is the session-level advisory lock held while migrations run.
// Advisory locks are per database, so runs against different databases of
// one cluster do not wait for each other.
const lockKey int64 = 0x7674_6d69_6772_0001

// sessionLocker holds a session-level advisory lock for the duration of a
// run. Unlike goose's polling locker it waits in the server
// (pg_advisory_lock), so the second of two concurrent runs continues the
// moment the first finishes; cancelling ctx gives up waiting.
type sessionLocker struct {
	key    int64
	logger *slog.Logger
}

var _ lock.SessionLocker = (*sessionLocker)(nil)

// SessionLock takes the lock on conn, waiting for another run to finish if
// need be.
func (l *sessionLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
	var ok bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_catalog.pg_try_advisory_lock($1)`, l.key).Scan(&ok); err != nil {
		if isInsufficientPrivilege(err) {
			// Migration 20251026000005 keeps advisory locks to superusers
			// and vital_owner.
			return fmt.Errorf("take the migration lock: %s: the migrating role must be a superuser or a member of vital_owner (GRANT vital_owner TO <role>, as a superuser)", oneLine(err))
		}
		return fmt.Errorf("take the migration lock: %w", err)
	}
	if ok {
		return nil
	}
	l.logger.InfoContext(ctx, "another migration run holds the lock; waiting for it to finish")
	if _, err := conn.ExecContext(ctx, `SELECT pg_catalog.pg_advisory_lock($1)`, l.key); err != nil {
		return fmt.Errorf("wait for the migration lock: %w", err)
	}
	return nil
}

// SessionUnlock releases the lock. goose calls it with a context that is
// not cancelled with the run's.
func (l *sessionLocker) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	var ok bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_catalog.pg_advisory_unlock($1)`, l.key).Scan(&ok); err != nil {
		return fmt.Errorf("release the migration lock: %w", err)
	}
	if !ok {
		return fmt.Errorf("release the migration lock: it was not held")
	}
	return nil
}

// isInsufficientPrivilege reports a server's "permission denied" (42501).
func isInsufficientPrivilege(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42501"
}
