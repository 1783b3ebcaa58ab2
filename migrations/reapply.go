package migrations

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrNotApplied: Reapply was asked for a migration that is not applied.
var ErrNotApplied = errors.New("migration not applied")

// Reapply runs the Up section of an applied migration again, in one
// transaction under the migration lock, and leaves the bookkeeping as it is.
// Every Up section is idempotent, so this only completes what the first run
// could not do: 20251026000005 revokes privileges on pg_catalog objects only
// when a superuser runs it, and covers pg_stat_statements only if it was
// installed by then. It refuses a migration that is not applied
// (ErrNotApplied) or whose file changed since (ErrChecksumMismatch); a
// failure rolls the whole run back and is a *MigrationError.
func (m *Migrator) Reapply(ctx context.Context, version int64) (Result, error) {
	if err := m.checkVersion(version, false); err != nil {
		return Result{}, err
	}
	if err := m.ping(ctx); err != nil {
		return Result{}, err
	}
	st, err := m.status(ctx)
	if err != nil {
		return Result{}, err
	}
	var f File
	for _, file := range m.files {
		if file.Version == version {
			f = file
		}
	}
	for _, s := range st {
		if s.Version != version {
			continue
		}
		if !s.Applied {
			return Result{}, fmt.Errorf("%w: %s is pending; apply it with migrate up", ErrNotApplied, f.Name)
		}
		if s.ChecksumState() == "mismatch" {
			return Result{}, &ChecksumError{Changed: []MigrationStatus{s}}
		}
	}
	conn, err := m.Connect(ctx)
	if err != nil {
		return Result{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	start := time.Now()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return Result{}, connectError(&m.cfg.Config, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	// Waits for a run in progress (its session-level lock uses the same key).
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_advisory_xact_lock($1)`, lockKey); err != nil {
		return Result{}, fmt.Errorf("take the migration lock: %s", oneLine(err))
	}
	if _, err := tx.Exec(ctx, f.UpSQL()); err != nil {
		return Result{}, &MigrationError{Name: f.Name, Direction: "reapply", Err: err}
	}
	if err := tx.Commit(ctx); err != nil {
		return Result{}, &MigrationError{Name: f.Name, Direction: "reapply", Err: err}
	}
	return Result{Version: version, Name: f.Name, Direction: "reapply", Duration: time.Since(start)}, nil
}
