package migrations

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
)

// DefaultConnectTimeout bounds one connection attempt when the URL sets no
// connect_timeout.
const DefaultConnectTimeout = 10 * time.Second

// Option configures a Migrator.
type Option func(*options)

type options struct {
	fsys   fs.FS
	logger *slog.Logger
	prefix string
}

// WithFS replaces the embedded migrations, e.g. with an fstest.MapFS in
// tests. The files must sit at the root of fsys.
func WithFS(fsys fs.FS) Option { return func(o *options) { o.fsys = fsys } }

// WithLogger sets the logger for progress notes such as waiting for the
// lock. The default discards them.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithRolePrefix sets the tenant role name prefix the audit in Verify
// checks (default "vt_").
func WithRolePrefix(prefix string) Option { return func(o *options) { o.prefix = prefix } }

// Migrator applies, rolls back and inspects the migrations of one database.
// Its methods may be called one after another but not concurrently; run two
// Migrators to run concurrently (they take turns on an advisory lock).
type Migrator struct {
	cfg    *pgx.ConnConfig
	db     *sql.DB
	fsys   fs.FS
	files  []File
	logger *slog.Logger
	prefix string
}

// Result is one migration applied or rolled back.
type Result struct {
	Version int64
	// Name is the file name.
	Name string
	// Direction is "up", "down" or "reapply" (Reapply).
	Direction string
	// Duration is how long the migration's transaction took.
	Duration time.Duration
}

// String renders the result as the CLI prints it, e.g.
// "applied 20251026000001_create_tenants_table.sql (43ms)".
func (r Result) String() string {
	verb := "applied"
	switch r.Direction {
	case "down":
		verb = "rolled back"
	case "reapply":
		verb = "reapplied"
	}
	return fmt.Sprintf("%s %s (%s)", verb, r.Name, formatDuration(r.Duration))
}

func formatDuration(d time.Duration) string {
	if d < time.Millisecond {
		return d.Round(time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

// New returns a Migrator for the database at databaseURL. It does not
// connect yet; every method connects as needed and reports a failure to
// connect as a *ConnectError.
func New(databaseURL string, opts ...Option) (*Migrator, error) {
	o := options{fsys: Embedded(), prefix: "vt_"}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	files, err := ReadFiles(o.fsys)
	if err != nil {
		return nil, err
	}
	cfg, err := parseURL(databaseURL)
	if err != nil {
		return nil, err
	}
	// A migration raises WARNING for what it could not do (e.g. revokes that
	// need a superuser); NOTICEs ("already exists, skipping") are noise.
	logger := o.logger
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		if n.SeverityUnlocalized == "WARNING" || n.Severity == "WARNING" {
			logger.Warn("database warning: " + n.Message)
		}
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(4)
	return &Migrator{cfg: cfg, db: db, fsys: o.fsys, files: files, logger: o.logger, prefix: o.prefix}, nil
}

func parseURL(raw string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(raw)
	if err != nil {
		return nil, urlError(raw)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	return cfg, nil
}

// Connect opens an administrative connection to databaseURL. Failures are
// one line without the password: ErrInvalidURL or a *ConnectError.
func Connect(ctx context.Context, databaseURL string) (*pgx.Conn, error) {
	cfg, err := parseURL(databaseURL)
	if err != nil {
		return nil, err
	}
	return connect(ctx, cfg)
}

func connect(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, connectError(&cfg.Config, err)
	}
	return conn, nil
}

// Connect opens a new connection to the Migrator's database; the caller
// closes it.
func (m *Migrator) Connect(ctx context.Context) (*pgx.Conn, error) { return connect(ctx, m.cfg) }

// Close releases the Migrator's connections.
func (m *Migrator) Close() error { return m.db.Close() }

// Files returns the migration files, oldest first.
func (m *Migrator) Files() []File { return slices.Clone(m.files) }

// provider builds a goose provider for one operation (goose caches whether
// the version table exists, and the last Down removes it).
func (m *Migrator) provider() (*goose.Provider, error) {
	st, err := newStore(m.files)
	if err != nil {
		return nil, err
	}
	return goose.NewProvider(goose.DialectCustom, m.db, m.fsys,
		goose.WithStore(st),
		goose.WithSessionLocker(&sessionLocker{key: lockKey, logger: m.logger}),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(m.logger),
	)
}

// ping checks that the database can be reached.
func (m *Migrator) ping(ctx context.Context) error {
	if err := m.db.PingContext(ctx); err != nil {
		return connectError(&m.cfg.Config, err)
	}
	return nil
}

// checkVersion accepts 0 (only when zeroOK) and the version of a migration.
func (m *Migrator) checkVersion(version int64, zeroOK bool) error {
	if version == 0 && zeroOK {
		return nil
	}
	for _, f := range m.files {
		if f.Version == version {
			return nil
		}
	}
	known := fmt.Sprintf("%d to %d", m.files[0].Version, m.files[len(m.files)-1].Version)
	if zeroOK {
		known = "0 (nothing) or " + known
	}
	return fmt.Errorf("%w %d: the migrations are %s", ErrUnknownVersion, version, known)
}

// Up applies every pending migration, oldest first, and returns what it
// applied (nothing when the database is up to date). It refuses to run when
// an applied migration's file has changed (ErrChecksumMismatch). A failing
// migration is rolled back and reported as a *MigrationError; the ones
// before it stay applied.
func (m *Migrator) Up(ctx context.Context) ([]Result, error) {
	return m.UpTo(ctx, m.files[len(m.files)-1].Version)
}

// UpTo is Up, stopping after version (which must be a migration's version).
func (m *Migrator) UpTo(ctx context.Context, version int64) ([]Result, error) {
	if err := m.checkVersion(version, false); err != nil {
		return nil, err
	}
	if err := m.ping(ctx); err != nil {
		return nil, err
	}
	if err := m.checkChecksums(ctx); err != nil {
		return nil, err
	}
	p, err := m.provider()
	if err != nil {
		return nil, err
	}
	res, err := p.UpTo(ctx, version)
	return m.results(res, err, "up")
}

// Down rolls back the most recently applied migration; nothing when none is
// applied.
func (m *Migrator) Down(ctx context.Context) ([]Result, error) {
	if err := m.ping(ctx); err != nil {
		return nil, err
	}
	p, err := m.provider()
	if err != nil {
		return nil, err
	}
	r, err := p.Down(ctx)
	if errors.Is(err, goose.ErrNoNextVersion) {
		return nil, m.dropBookkeeping(ctx)
	}
	var res []*goose.MigrationResult
	if r != nil {
		res = append(res, r)
	}
	out, err := m.results(res, err, "down")
	if err != nil {
		return out, err
	}
	return out, m.dropBookkeeping(ctx)
}

// DownTo rolls back every migration newer than version, newest first.
// version 0 removes everything the migrations created, and then the
// bookkeeping tables; the cluster-wide group roles stay.
func (m *Migrator) DownTo(ctx context.Context, version int64) ([]Result, error) {
	if err := m.checkVersion(version, true); err != nil {
		return nil, err
	}
	if err := m.ping(ctx); err != nil {
		return nil, err
	}
	p, err := m.provider()
	if err != nil {
		return nil, err
	}
	res, err := p.DownTo(ctx, version)
	out, err := m.results(res, err, "down")
	if err != nil {
		return out, err
	}
	return out, m.dropBookkeeping(ctx)
}

// results converts goose's results, and a partial failure into the results
// that did apply plus a *MigrationError.
func (m *Migrator) results(res []*goose.MigrationResult, err error, direction string) ([]Result, error) {
	var out []Result
	add := func(rs []*goose.MigrationResult) {
		for _, r := range rs {
			out = append(out, Result{Version: r.Source.Version, Name: baseName(r.Source.Path),
				Direction: direction, Duration: r.Duration})
		}
	}
	add(res)
	if err == nil {
		return out, nil
	}
	var pe *goose.PartialError
	if errors.As(err, &pe) {
		add(pe.Applied)
		return out, &MigrationError{Name: baseName(pe.Failed.Source.Path), Direction: direction, Err: pe.Err}
	}
	if isConnectFailure(err) {
		return out, connectError(&m.cfg.Config, err)
	}
	return out, fmt.Errorf("migrate %s: %s", direction, oneLine(err))
}

// dropBookkeeping removes the bookkeeping tables, and schema vital if it is
// then empty, once no migration is applied any more.
func (m *Migrator) dropBookkeeping(ctx context.Context) error {
	tx, err := m.db.BeginTx(ctx, nil)
	if err != nil {
		return connectError(&m.cfg.Config, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	// Wait for any run in progress, then keep others out until commit.
	if _, err := tx.ExecContext(ctx, `SELECT pg_catalog.pg_advisory_xact_lock($1)`, lockKey); err != nil {
		return fmt.Errorf("remove migration bookkeeping: %s", oneLine(err))
	}
	var exists, applied bool
	err = tx.QueryRowContext(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL`, versionTable).Scan(&exists)
	if err != nil || !exists {
		return err
	}
	err = tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM `+versionTable+` WHERE version_id > 0)`).Scan(&applied)
	if err != nil || applied {
		return err
	}
	_, err = tx.ExecContext(ctx, `DROP TABLE IF EXISTS `+checksumTable+`, `+versionTable)
	if err == nil {
		_, err = tx.ExecContext(ctx, `DO $$ BEGIN DROP SCHEMA IF EXISTS vital;
			EXCEPTION WHEN dependent_objects_still_exist THEN NULL; END $$`)
	}
	if err == nil {
		err = tx.Commit()
	}
	if err != nil {
		return fmt.Errorf("remove migration bookkeeping: %s", oneLine(err))
	}
	return nil
}
