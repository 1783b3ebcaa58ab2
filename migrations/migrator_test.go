package migrations_test

import (
	"errors"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/vitalproxy/vitalproxy/migrations"
)

var allFiles = []string{
	"20251026000000_baseline.sql",
	"20251026000001_create_tenants_table.sql",
	"20251026000002_add_tenant_columns_to_resources.sql",
	"20251026000003_update_rls_policies.sql",
	"20251026000004_seed_mvp_tenants.sql",
	"20251026000005_harden_shared_paths.sql",
	"20251026000006_pooled_tenant_context.sql",
	"20251026000007_tenant_scoped_features.sql",
}

func reversed(s []string) []string {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}

func TestEmbeddedFiles(t *testing.T) {
	files, err := migrations.ReadFiles(migrations.Embedded())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range files {
		got = append(got, f.Name)
		if strings.TrimSpace(f.UpSQL()) == "" || strings.TrimSpace(f.DownSQL()) == "" {
			t.Errorf("%s: empty Up or Down section", f.Name)
		}
		if strings.Contains(f.UpSQL(), "+goose Down") {
			t.Errorf("%s: Up section runs into the Down section", f.Name)
		}
	}
	if !slices.Equal(got, allFiles) {
		t.Fatalf("files = %v, want %v", got, allFiles)
	}
	if last := files[len(files)-1].Version; last != migrations.LatestVersion {
		t.Errorf("LatestVersion = %d, newest file has %d", migrations.LatestVersion, last)
	}
}

func TestUpFresh(t *testing.T) {
	db := newTestDB(t)
	m := newMigrator(t, db.url)
	ctx := ctxT(t)
	res, err := m.Up(ctx)
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	if got := names(res); !slices.Equal(got, allFiles) {
		t.Fatalf("applied %v, want %v", got, allFiles)
	}
	for _, r := range res {
		t.Log(r.String()) // the per-migration times on a fresh database
		if r.Direction != "up" || r.Duration <= 0 || !strings.HasPrefix(r.String(), "applied "+r.Name+" (") {
			t.Errorf("result %+v renders as %q", r, r.String())
		}
	}
	st, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if !s.Applied || s.ChecksumState() != "ok" || s.AppliedAt.IsZero() {
			t.Errorf("status %+v: want applied with checksum ok", s)
		}
	}
}

func TestUpTwiceAppliesNothing(t *testing.T) {
	db := migrated(t)
	res, err := newMigrator(t, db.url).Up(ctxT(t))
	if err != nil || len(res) != 0 {
		t.Fatalf("second up = %v, %v; want nothing applied", names(res), err)
	}
}

func TestUpToAndDownOneStep(t *testing.T) {
	db := newTestDB(t)
	m := newMigrator(t, db.url)
	ctx := ctxT(t)
	res, err := m.UpTo(ctx, 20251026000002)
	if err != nil || !slices.Equal(names(res), allFiles[:3]) {
		t.Fatalf("up --to 2 = %v, %v", names(res), err)
	}
	res, err = m.Down(ctx)
	if err != nil || !slices.Equal(names(res), allFiles[2:3]) {
		t.Fatalf("down = %v, %v; want %s", names(res), err, allFiles[2])
	}
	conn := db.admin(t)
	if scalar[bool](t, conn, `SELECT EXISTS (SELECT 1 FROM information_schema.columns
		WHERE table_name = 'agents' AND column_name = 'tenant_id')`) {
		t.Error("agents.tenant_id still exists after rolling back migration 2")
	}
	if !scalar[bool](t, conn, `SELECT to_regclass('public.tenants') IS NOT NULL`) {
		t.Error("tenants is gone, but migration 1 was not rolled back")
	}
}

func TestDownToZeroRemovesEverythingThenUp(t *testing.T) {
	db := migrated(t)
	m := newMigrator(t, db.url)
	ctx := ctxT(t)
	res, err := m.DownTo(ctx, 0)
	if err != nil {
		t.Fatalf("down --to 0: %v", err)
	}
	if got, want := names(res), reversed(allFiles); !slices.Equal(got, want) {
		t.Fatalf("rolled back %v, want %v", got, want)
	}
	conn := db.admin(t)
	left := scalar[[]string](t, conn, `
		SELECT coalesce(array_agg(what ORDER BY what), '{}') FROM (
		    SELECT 'relation ' || c.oid::regclass::text AS what FROM pg_class c
		     WHERE c.relnamespace = 'public'::regnamespace
		    UNION ALL SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p
		     WHERE p.pronamespace = 'public'::regnamespace
		    UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname IN ('vital', 'auth')
		    UNION ALL SELECT 'grant on schema public to ' || a.grantee::regrole::text
		      FROM pg_namespace n, aclexplode(n.nspacl) a
		     WHERE n.nspname = 'public' AND a.grantee <> 0 AND a.grantee::regrole::text LIKE 'vital\_%') x`)
	if len(left) > 0 {
		t.Errorf("left behind after down --to 0: %v", left)
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM pg_roles WHERE rolname IN
		('vital_owner', 'vital_tenant', 'vital_tenant_writer', 'vital_operator')`); n != 4 {
		t.Errorf("%d group roles remain, want all 4 (they are cluster-wide)", n)
	}
	st, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Applied {
			t.Errorf("%s still applied", s.Name)
		}
	}
	res, err = m.Up(ctx)
	if err != nil || len(res) != len(allFiles) {
		t.Fatalf("up after down --to 0 = %v, %v", names(res), err)
	}
	if res, err := m.Down(ctx); err != nil || len(res) != 1 {
		t.Fatalf("down one step = %v, %v", names(res), err)
	}
}

func TestConcurrentUp(t *testing.T) {
	db := newTestDB(t)
	ctx := ctxT(t)
	const runs = 3
	var wg sync.WaitGroup
	results := make([][]migrations.Result, runs)
	errs := make([]error, runs)
	for i := range runs {
		m := newMigrator(t, db.url)
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = m.Up(ctx)
		}()
	}
	wg.Wait()
	var applied []string
	for i := range runs {
		if errs[i] != nil {
			t.Errorf("run %d: %v", i, errs[i])
		}
		applied = append(applied, names(results[i])...)
	}
	slices.Sort(applied)
	if !slices.Equal(applied, allFiles) {
		t.Errorf("together the runs applied %v, want each migration once", applied)
	}
	conn := db.admin(t)
	if n := scalar[int](t, conn, `SELECT count(*) FROM vital.goose_db_version`); n != len(allFiles)+1 {
		t.Errorf("%d version rows, want %d (each migration once plus version 0)", n, len(allFiles)+1)
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM vital.migration_checksums`); n != len(allFiles) {
		t.Errorf("%d checksum rows, want %d", n, len(allFiles))
	}
	if n := scalar[int](t, conn, `SELECT count(*) FROM tenants`); n != 2 {
		t.Errorf("%d tenants, want 2", n)
	}
}

// TestUpWaitsBeforeAnyDDL plays a run in progress (another session holds
// the migration lock) and checks that a second run waits without touching
// the database: goose asks whether anything is pending before it locks,
// and creating the bookkeeping tables then must not race the running
// migrations' DDL on schema vital.
func TestUpWaitsBeforeAnyDDL(t *testing.T) {
	db := newTestDB(t)
	ctx := ctxT(t)
	holder := db.admin(t)
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrations.LockKey); err != nil {
		t.Fatal(err)
	}
	m := newMigrator(t, db.url)
	type upResult struct {
		res []migrations.Result
		err error
	}
	done := make(chan upResult, 1)
	go func() {
		res, err := m.Up(ctx)
		done <- upResult{res, err}
	}()
	watcher := db.admin(t)
	waiting := false
	for !waiting {
		select {
		case r := <-done:
			t.Fatalf("up finished while another run held the lock: %v, %v", names(r.res), r.err)
		case <-time.After(20 * time.Millisecond):
		}
		waiting = scalar[bool](t, watcher, `SELECT EXISTS (SELECT 1 FROM pg_locks
			WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))`)
	}
	if scalar[bool](t, watcher, `SELECT to_regnamespace('vital') IS NOT NULL`) {
		t.Errorf("a waiting run created schema vital before it had the lock")
	}
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock($1)`, migrations.LockKey); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || !slices.Equal(names(r.res), allFiles) {
		t.Fatalf("up after the lock was released = %v, %v", names(r.res), r.err)
	}
}

// editedFS returns the embedded migrations with name's content changed.
func editedFS(t *testing.T, name, content string) fstest.MapFS {
	t.Helper()
	out := fstest.MapFS{}
	err := fs.WalkDir(migrations.Embedded(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(migrations.Embedded(), p)
		out[p] = &fstest.MapFile{Data: b}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if content != "" {
		out[name] = &fstest.MapFile{Data: []byte(content)}
	}
	return out
}

func TestChangedFileIsReportedAndRefused(t *testing.T) {
	db := newTestDB(t)
	ctx := ctxT(t)
	if _, err := newMigrator(t, db.url).UpTo(ctx, 20251026000002); err != nil {
		t.Fatal(err)
	}
	orig, err := fs.ReadFile(migrations.Embedded(), allFiles[1])
	if err != nil {
		t.Fatal(err)
	}
	m := newMigrator(t, db.url, migrations.WithFS(editedFS(t, allFiles[1], string(orig)+"\n-- edited after it was applied\n")))
	st, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		want := map[bool]string{true: "ok", false: ""}[s.Applied]
		if s.Name == allFiles[1] {
			want = "mismatch"
		}
		if got := s.ChecksumState(); got != want {
			t.Errorf("%s: checksum state %q, want %q", s.Name, got, want)
		}
	}
	res, err := m.Up(ctx)
	if !errors.Is(err, migrations.ErrChecksumMismatch) || len(res) != 0 {
		t.Fatalf("up with a changed applied file = %v, %v; want refusal", names(res), err)
	}
	if !strings.Contains(err.Error(), allFiles[1]) {
		t.Errorf("error %q does not name the changed file", err)
	}
	if v := scalar[int64](t, db.admin(t), `SELECT max(version_id) FROM vital.goose_db_version`); v != 20251026000002 {
		t.Errorf("version %d after refused up, want 20251026000002", v)
	}
}

func TestTamperedChecksumRowIsReportedAndRefused(t *testing.T) {
	db := migrated(t)
	db.exec(t, `UPDATE vital.migration_checksums SET checksum = repeat('0', 64) WHERE version = 20251026000003`)
	m := newMigrator(t, db.url)
	ctx := ctxT(t)
	st, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s := st[3]; s.ChecksumState() != "mismatch" {
		t.Errorf("%s: checksum state %q, want mismatch", s.Name, s.ChecksumState())
	}
	if _, err := m.Up(ctx); !errors.Is(err, migrations.ErrChecksumMismatch) {
		t.Fatalf("up = %v, want ErrChecksumMismatch", err)
	}
}

func TestFailedMigrationLeavesPreviousStateAndResumes(t *testing.T) {
	db := newTestDB(t)
	ctx := ctxT(t)
	broken := "-- +goose Up\nCREATE TABLE public.half_applied (id int);\nSELECT 1 / 0;\n-- +goose Down\nSELECT 1;\n"
	m := newMigrator(t, db.url, migrations.WithFS(editedFS(t, allFiles[3], broken)))
	res, err := m.Up(ctx)
	var me *migrations.MigrationError
	if !errors.As(err, &me) || me.Name != allFiles[3] {
		t.Fatalf("up = %v; want a MigrationError for %s", err, allFiles[3])
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "division by zero") {
		t.Errorf("error %q: want one line with the server's message", msg)
	}
	if !slices.Equal(names(res), allFiles[:3]) {
		t.Errorf("applied before the failure: %v, want %v", names(res), allFiles[:3])
	}
	conn := db.admin(t)
	if scalar[bool](t, conn, `SELECT to_regclass('public.half_applied') IS NOT NULL`) {
		t.Error("the failed migration's first statement was kept")
	}
	res, err = newMigrator(t, db.url).Up(ctx)
	if err != nil || !slices.Equal(names(res), allFiles[3:]) {
		t.Fatalf("resumed up = %v, %v; want %v", names(res), err, allFiles[3:])
	}
}

func TestUnknownVersion(t *testing.T) {
	db := newTestDB(t)
	m := newMigrator(t, db.url)
	ctx := ctxT(t)
	for name, run := range map[string]func() error{
		"up":        func() error { _, err := m.UpTo(ctx, 123); return err },
		"up-zero":   func() error { _, err := m.UpTo(ctx, 0); return err },
		"down":      func() error { _, err := m.DownTo(ctx, 20251026000009); return err },
		"plan-up":   func() error { _, err := m.PlanUpTo(ctx, 5); return err },
		"plan-down": func() error { _, err := m.PlanDownTo(ctx, 5); return err },
	} {
		if err := run(); !errors.Is(err, migrations.ErrUnknownVersion) {
			t.Errorf("%s: err = %v, want ErrUnknownVersion", name, err)
		}
	}
	if scalar[bool](t, db.admin(t), `SELECT to_regnamespace('vital') IS NOT NULL`) {
		t.Error("an unknown version still touched the database")
	}
}

func TestPlanChangesNothing(t *testing.T) {
	db := newTestDB(t)
	m := newMigrator(t, db.url)
	ctx := ctxT(t)
	steps, err := m.PlanUp(ctx)
	if err != nil || len(steps) != len(allFiles) {
		t.Fatalf("plan up = %d steps, %v", len(steps), err)
	}
	if !strings.Contains(steps[1].SQL, "CREATE TABLE IF NOT EXISTS public.tenants") || strings.Contains(steps[1].SQL, "DROP TABLE IF EXISTS public.tenants") {
		t.Errorf("plan up of %s does not hold exactly its Up section", steps[1].Name)
	}
	if scalar[bool](t, db.admin(t), `SELECT to_regnamespace('vital') IS NOT NULL`) {
		t.Fatal("plan up changed the database")
	}
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	steps, err = m.PlanDown(ctx)
	last := allFiles[len(allFiles)-1]
	if err != nil || len(steps) != 1 || steps[0].Name != last || !strings.Contains(steps[0].SQL, "DROP VIEW IF EXISTS public.pg_stat_activity") {
		t.Fatalf("plan down = %+v, %v", steps, err)
	}
	steps, err = m.PlanDownTo(ctx, 0)
	if err != nil || len(steps) != len(allFiles) || steps[0].Name != last {
		t.Fatalf("plan down --to 0 = %d steps, %v", len(steps), err)
	}
	if n := scalar[int](t, db.admin(t), `SELECT count(*) FROM tenants`); n != 2 {
		t.Errorf("plan down changed the database: %d tenants", n)
	}
}

func TestConnectionErrors(t *testing.T) {
	db := newTestDB(t)
	ctx := ctxT(t)
	const secret = "s3cr3t-pw-value"
	tests := []struct {
		name, url, want string
	}{
		{"wrong password", db.c.URLFor(db.c.User, secret, db.name), "password authentication failed"},
		{"missing database", db.c.URL("no_such_db_x"), `database "no_such_db_x" does not exist`},
		{"refused", "postgres://u:" + secret + "@127.0.0.1:1/db?sslmode=disable", "connection refused"},
		{"unreachable", "postgres://u:" + secret + "@192.0.2.1:5432/db?sslmode=disable&connect_timeout=1", "cannot connect"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMigrator(t, tt.url)
			_, err := m.Up(ctx)
			var ce *migrations.ConnectError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v (%T), want a ConnectError", err, err)
			}
			msg := err.Error()
			t.Log(msg)
			if !strings.Contains(msg, tt.want) || strings.Contains(msg, secret) || strings.Contains(msg, db.c.Password) || strings.Contains(msg, "\n") {
				t.Errorf("message %q: want one line containing %q and no password", msg, tt.want)
			}
		})
	}
	t.Run("unparsable", func(t *testing.T) {
		_, err := migrations.New("postgres://u:" + secret + "@host:notaport/db")
		if !errors.Is(err, migrations.ErrInvalidURL) || strings.Contains(err.Error(), secret) {
			t.Errorf("err = %v, want ErrInvalidURL without the password", err)
		}
	})
}
