package migrations

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strings"
	"time"
)

// MigrationStatus is the state of one migration in the database.
type MigrationStatus struct {
	Version int64
	// Name is the file name; empty for a version applied to the database
	// that no file of this binary has.
	Name    string
	Applied bool
	// AppliedAt and Duration are set for applied migrations.
	AppliedAt time.Time
	Duration  time.Duration
	// Checksum is the sha256 of the file; AppliedChecksum the one recorded
	// when it was applied (empty when none was recorded).
	Checksum        string
	AppliedChecksum string
}

// ChecksumState says whether an applied migration's file is the one that
// was applied: "ok", "mismatch", "unrecorded" (applied without a checksum),
// "no file" (applied, unknown to this binary); empty for a pending one.
func (s MigrationStatus) ChecksumState() string {
	switch {
	case !s.Applied:
		return ""
	case s.Name == "":
		return "no file"
	case s.AppliedChecksum == "":
		return "unrecorded"
	case s.AppliedChecksum != s.Checksum:
		return "mismatch"
	}
	return "ok"
}

// ChecksumError lists applied migrations whose files changed.
type ChecksumError struct {
	Changed []MigrationStatus
}

func (e *ChecksumError) Error() string {
	names := make([]string, len(e.Changed))
	for i, s := range e.Changed {
		names[i] = s.Name
	}
	return fmt.Sprintf("%v: %s changed after it was applied; restore the applied file (or roll it back first) before migrating up",
		ErrChecksumMismatch, strings.Join(names, ", "))
}

// Unwrap makes errors.Is(err, ErrChecksumMismatch) hold.
func (e *ChecksumError) Unwrap() error { return ErrChecksumMismatch }

// Status reports every migration, oldest first, plus any applied version no
// file knows. It only reads: a database never migrated shows everything
// pending and is left untouched.
func (m *Migrator) Status(ctx context.Context) ([]MigrationStatus, error) {
	if err := m.ping(ctx); err != nil {
		return nil, err
	}
	return m.status(ctx)
}

type appliedRow struct {
	at       time.Time
	duration time.Duration
	checksum string
}

func (m *Migrator) status(ctx context.Context) ([]MigrationStatus, error) {
	applied, err := m.applied(ctx)
	if err != nil {
		return nil, fmt.Errorf("read migration status: %s", oneLine(err))
	}
	out := make([]MigrationStatus, 0, len(m.files))
	for _, f := range m.files {
		s := MigrationStatus{Version: f.Version, Name: f.Name, Checksum: f.Checksum}
		if a, ok := applied[f.Version]; ok {
			s.Applied, s.AppliedAt, s.Duration, s.AppliedChecksum = true, a.at, a.duration, a.checksum
			delete(applied, f.Version)
		}
		out = append(out, s)
	}
	for v, a := range applied {
		out = append(out, MigrationStatus{Version: v, Applied: true, AppliedAt: a.at, Duration: a.duration, AppliedChecksum: a.checksum})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// applied reads the applied versions from the bookkeeping tables, if any.
func (m *Migrator) applied(ctx context.Context) (map[int64]appliedRow, error) {
	var hasVersions, hasChecksums bool
	err := m.db.QueryRowContext(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL, pg_catalog.to_regclass($2) IS NOT NULL`,
		versionTable, checksumTable).Scan(&hasVersions, &hasChecksums)
	if err != nil || !hasVersions {
		return map[int64]appliedRow{}, err
	}
	q := `SELECT v.version_id, max(v.tstamp)::timestamptz, NULL::timestamptz, NULL::float8, NULL::text
	        FROM ` + versionTable + ` v WHERE v.version_id > 0 AND v.is_applied GROUP BY v.version_id`
	if hasChecksums {
		q = `SELECT v.version_id, max(v.tstamp)::timestamptz, c.applied_at, c.duration_ms, c.checksum
		       FROM ` + versionTable + ` v LEFT JOIN ` + checksumTable + ` c ON c.version = v.version_id
		      WHERE v.version_id > 0 AND v.is_applied
		      GROUP BY v.version_id, c.applied_at, c.duration_ms, c.checksum`
	}
	rows, err := m.db.QueryContext(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[int64]appliedRow{}
	for rows.Next() {
		var v int64
		var tstamp time.Time
		var at sql.NullTime
		var ms sql.NullFloat64
		var sum sql.NullString
		if err := rows.Scan(&v, &tstamp, &at, &ms, &sum); err != nil {
			return nil, err
		}
		a := appliedRow{at: tstamp, checksum: sum.String}
		if at.Valid {
			a.at = at.Time
		}
		if ms.Valid {
			a.duration = time.Duration(ms.Float64 * float64(time.Millisecond))
		}
		out[v] = a
	}
	return out, rows.Err()
}

// checkChecksums fails with a *ChecksumError when an applied file changed.
func (m *Migrator) checkChecksums(ctx context.Context) error {
	st, err := m.status(ctx)
	if err != nil {
		return err
	}
	var changed []MigrationStatus
	for _, s := range st {
		if s.ChecksumState() == "mismatch" {
			changed = append(changed, s)
		}
	}
	if len(changed) > 0 {
		return &ChecksumError{Changed: changed}
	}
	return nil
}
