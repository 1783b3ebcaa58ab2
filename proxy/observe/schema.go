package observe

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/migrations"
)

// schemaVersionSQL reads the newest applied migration from the migrations'
// bookkeeping table.
const schemaVersionSQL = `SELECT max(version_id) FROM vital.goose_db_version WHERE is_applied AND version_id > 0`

// SchemaCurrent reports, as an error saying what to do, whether the
// database schema is behind or ahead of the migration this binary was
// built with (migrations.LatestVersion). /readyz calls it through the
// admin connection.
func SchemaCurrent(ctx context.Context, c *pgx.Conn) error {
	var v *int64
	err := c.QueryRow(ctx, schemaVersionSQL).Scan(&v)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
		return errors.New("the database is not migrated (run vitalproxy migrate up)")
	}
	if err != nil {
		return fmt.Errorf("read the schema version: %w", err)
	}
	if v == nil {
		return errors.New("the database is not migrated (run vitalproxy migrate up)")
	}
	if *v != migrations.LatestVersion {
		return fmt.Errorf("the database schema is at version %d, this proxy expects %d (run vitalproxy migrate up with the matching release)",
			*v, migrations.LatestVersion)
	}
	return nil
}
