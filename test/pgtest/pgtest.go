// Package pgtest starts a throwaway PostgreSQL cluster from the machine's
// server binaries for tests, benchmarks and the demo command.
//
// A Cluster lives in a temporary directory, listens on a free loopback port,
// authenticates with SCRAM-SHA-256 and is removed when Stop is called. A
// watchdog process removes it as well if the owning process dies without
// calling Stop (a panic, a kill), so no cluster outlives its test binary.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNoBinaries is returned when initdb, pg_ctl or postgres cannot be found.
var ErrNoBinaries = errors.New("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or under /usr/lib/postgresql/*/bin; install them, e.g. `apt-get install postgresql` (Debian) or set PG_BIN_DIR")

// Cluster is a running throwaway PostgreSQL cluster. Its methods are safe for
// concurrent use.
type Cluster struct {
	// BinDir holds initdb, pg_ctl, postgres, psql and pgbench.
	BinDir string
	// Dir is the temporary directory holding the data directory and logs.
	Dir string
	// Host and Port are the loopback address the server listens on.
	Host string
	Port int
	// User and Password are the bootstrap superuser's credentials.
	User     string
	Password string

	runAs   *syscall.Credential
	mu      sync.Mutex
	stopped bool
	dbSeq   int
}

// FindBinDir returns the directory holding PostgreSQL's server binaries.
// PG_BIN_DIR overrides the search; otherwise PATH is tried, then the newest
// /usr/lib/postgresql/*/bin.
func FindBinDir() (string, error) {
	if d := os.Getenv("PG_BIN_DIR"); d != "" {
		if isExec(filepath.Join(d, "initdb")) {
			return d, nil
		}
		return "", fmt.Errorf("PG_BIN_DIR=%s has no initdb: %w", d, ErrNoBinaries)
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		// Distributions link initdb into a PATH directory; the real bin
		// directory also holds psql and pgbench.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		d := filepath.Dir(p)
		if isExec(filepath.Join(d, "pg_ctl")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "pg_ctl")) {
			return d, nil
		}
	}
	return "", ErrNoBinaries
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// Options tune a cluster. The zero value is fine for tests.
type Options struct {
	// Settings are extra postgresql.conf lines, e.g. "max_connections=300".
	Settings []string
	// KeepLogs keeps nothing but is reserved; logs go to Dir/postgres.log.
}

// Start creates and starts a cluster. Call Stop when done.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	c := &Cluster{BinDir: bin, Host: "127.0.0.1", User: "postgres", Password: randomHex(16)}
	if err := c.newDir(); err != nil {
		return nil, err
	}
	if err := c.start(ctx, opts); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// newDir makes c's temporary directory, owned by the user PostgreSQL runs
// as when the process runs as root.
func (c *Cluster) newDir() error {
	var err error
	c.Dir, err = os.MkdirTemp("", "vitalproxy-pg-")
	if err != nil {
		return fmt.Errorf("create temp dir: %w", err)
	}
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root.
		cred, err := unprivilegedUser()
		if err != nil {
			os.RemoveAll(c.Dir)
			return err
		}
		c.runAs = cred
		if err := os.Chown(c.Dir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.RemoveAll(c.Dir)
			return fmt.Errorf("chown temp dir: %w", err)
		}
	}
	return nil
}

func unprivilegedUser() (*syscall.Credential, error) {
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("running as root and found neither a postgres nor a nobody user to run PostgreSQL as")
}

func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, name), args...)
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.runAs != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.runAs}
	}
	return cmd
}

func (c *Cluster) start(ctx context.Context, opts Options) error {
	data := filepath.Join(c.Dir, "data")
	pwfile := filepath.Join(c.Dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(c.Password+"\n"), 0o600); err != nil {
		return fmt.Errorf("write password file: %w", err)
	}
	if c.runAs != nil {
		if err := os.Chown(pwfile, int(c.runAs.Uid), int(c.runAs.Gid)); err != nil {
			return fmt.Errorf("chown password file: %w", err)
		}
	}
	out, err := c.command(ctx, "initdb", "-D", data, "-U", c.User, "--pwfile", pwfile,
		"--auth=scram-sha-256", "--encoding=UTF8", "--no-sync", "--locale=C").CombinedOutput()
	os.Remove(pwfile)
	if err != nil {
		return fmt.Errorf("initdb: %w: %s", err, tail(out))
	}
	conf := []string{
		"listen_addresses = '127.0.0.1'",
		"unix_socket_directories = ''",
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"max_connections = 300",
		"shared_buffers = 128MB",
		"password_encryption = 'scram-sha-256'",
		"log_min_messages = warning",
		// Streaming standbys (StartStandby) replicate from any cluster;
		// these are PostgreSQL's defaults, stated because standbys rely on
		// them. initdb's pg_hba.conf already admits replication
		// connections from loopback with SCRAM.
		"wal_level = replica",
		"max_wal_senders = 10",
		"hot_standby = on",
	}
	conf = append(conf, opts.Settings...)
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open postgresql.conf: %w", err)
	}
	_, err = f.WriteString("\n" + strings.Join(conf, "\n") + "\n")
	f.Close()
	if err != nil {
		return fmt.Errorf("write postgresql.conf: %w", err)
	}
	c.startWatchdog()
	return c.pgCtlStart(ctx)
}

// pgCtlStart starts the server of c's data directory on a free port,
// retrying with another port when the one it picked was taken meanwhile.
func (c *Cluster) pgCtlStart(ctx context.Context) error {
	data := filepath.Join(c.Dir, "data")
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		c.Port = port
		out, err := c.command(ctx, "pg_ctl", "-D", data, "-l", filepath.Join(c.Dir, "postgres.log"),
			"-o", fmt.Sprintf("-p %d", port), "-w", "-t", "60", "start").CombinedOutput()
		if err == nil {
			return nil
		}
		logText, _ := os.ReadFile(filepath.Join(c.Dir, "postgres.log"))
		lastErr = fmt.Errorf("pg_ctl start: %w: %s %s", err, tail(out), tail(logText))
		if !strings.Contains(string(logText), "in use") {
			break
		}
	}
	return lastErr
}

// startWatchdog launches a detached shell that stops the server and removes
// the directory once this process is gone, whatever way it ended.
func (c *Cluster) startWatchdog() {
	script := fmt.Sprintf(`while kill -0 %d 2>/dev/null; do sleep 1; done; `+
		`if [ -f %[2]s/data/postmaster.pid ]; then kill -QUIT "$(head -1 %[2]s/data/postmaster.pid)" 2>/dev/null; sleep 1; fi; rm -rf %[2]s`,
		os.Getpid(), shellQuote(c.Dir))
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err == nil {
		go cmd.Wait() //nolint:errcheck // reaped only to avoid a zombie
	}
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func tail(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Stop shuts the server down immediately and removes its directory. It is
// safe to call more than once.
func (c *Cluster) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return
	}
	c.stopped = true
	data := filepath.Join(c.Dir, "data")
	if _, err := os.Stat(filepath.Join(data, "postmaster.pid")); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = c.command(ctx, "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop").Run()
		cancel()
	}
	os.RemoveAll(c.Dir)
}

// StartStandby starts a streaming standby of c in a new temporary
// directory: a base backup taken with pg_basebackup -R (so the standby
// replicates from c with the superuser's credentials) started on a free
// loopback port. It is a Cluster of its own with c's superuser; call Stop
// when done. The standby is hot: it serves read-only queries.
func (c *Cluster) StartStandby(ctx context.Context) (*Cluster, error) {
	s := &Cluster{BinDir: c.BinDir, Host: c.Host, User: c.User, Password: c.Password}
	if err := s.newDir(); err != nil {
		return nil, err
	}
	conninfo := fmt.Sprintf("host=%s port=%d user=%s password=%s application_name=%s",
		c.Host, c.Port, c.User, c.Password, filepath.Base(s.Dir))
	s.startWatchdog()
	out, err := s.command(ctx, "pg_basebackup", "-D", filepath.Join(s.Dir, "data"), "-d", conninfo,
		"-R", "-X", "stream", "-c", "fast", "--no-sync").CombinedOutput()
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("pg_basebackup: %w: %s", err, tail(out))
	}
	if err := s.pgCtlStart(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Promote promotes a standby to a primary (pg_ctl promote) and waits until
// it accepts writes.
func (c *Cluster) Promote(ctx context.Context) error {
	out, err := c.command(ctx, "pg_ctl", "-D", filepath.Join(c.Dir, "data"), "-w", "-t", "60", "promote").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl promote: %w: %s", err, tail(out))
	}
	return c.poll(ctx, func(ctx context.Context) (bool, error) {
		v, err := c.QueryValue(ctx, "postgres", "SELECT pg_is_in_recovery()")
		return v == "f", err
	})
}

// StopImmediate stops the server at once (pg_ctl stop -m immediate), as a
// crash would, and keeps its directory: Restart starts it again, Stop
// removes it.
func (c *Cluster) StopImmediate() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := c.command(ctx, "pg_ctl", "-D", filepath.Join(c.Dir, "data"), "-m", "immediate", "-w", "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %w: %s", err, tail(out))
	}
	return nil
}

// Restart starts a server that StopImmediate stopped, on the same port.
func (c *Cluster) Restart(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errors.New("pgtest: restart of a removed cluster")
	}
	data := filepath.Join(c.Dir, "data")
	out, err := c.command(ctx, "pg_ctl", "-D", data, "-l", filepath.Join(c.Dir, "postgres.log"),
		"-o", fmt.Sprintf("-p %d", c.Port), "-w", "-t", "60", "start").CombinedOutput()
	if err != nil {
		logText, _ := os.ReadFile(filepath.Join(c.Dir, "postgres.log"))
		return fmt.Errorf("pg_ctl start: %w: %s %s", err, tail(out), tail(logText))
	}
	return nil
}

// WaitForReplay waits until standby has replayed all the WAL c (its
// primary) had written when WaitForReplay was called.
func (c *Cluster) WaitForReplay(ctx context.Context, standby *Cluster) error {
	lsn, err := c.QueryValue(ctx, "postgres", "SELECT pg_current_wal_lsn()")
	if err != nil {
		return fmt.Errorf("primary's WAL position: %w", err)
	}
	err = standby.poll(ctx, func(ctx context.Context) (bool, error) {
		v, err := standby.QueryValue(ctx, "postgres",
			fmt.Sprintf("SELECT pg_last_wal_replay_lsn() >= '%s'::pg_lsn", lsn))
		return v == "t", err
	})
	if err != nil {
		return fmt.Errorf("standby replay of %s: %w", lsn, err)
	}
	return nil
}

// Timeline returns the timeline the server is on: for a primary the one
// it writes WAL on, for a standby the one of the WAL it last received (or,
// with no WAL receiver running, of its last restartpoint).
func (c *Cluster) Timeline(ctx context.Context) (int, error) {
	v, err := c.QueryValue(ctx, "postgres", TimelineQuery)
	if err != nil {
		return 0, err
	}
	tl, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("timeline %q: %w", v, err)
	}
	return tl, nil
}

// TimelineQuery selects the timeline of the server it runs on; see
// Timeline. pg_control_checkpoint() alone is not enough: a promoted
// server reports its new timeline there only after its first checkpoint,
// and a standby the timeline of its last restartpoint.
const TimelineQuery = `SELECT CASE WHEN pg_is_in_recovery()
	THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), (pg_control_checkpoint()).timeline_id)
	ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END`

// QueryValue runs sql as the superuser in database db and returns the first
// column of its first row as text ("" for NULL).
func (c *Cluster) QueryValue(ctx context.Context, db, sql string) (string, error) {
	conn, err := pgconn.Connect(ctx, c.URL(db))
	if err != nil {
		return "", fmt.Errorf("connect to %s: %w", db, err)
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	if len(res) == 0 || len(res[0].Rows) == 0 || len(res[0].Rows[0]) == 0 {
		return "", fmt.Errorf("%s: no rows", sql)
	}
	return string(res[0].Rows[0][0]), nil
}

// poll calls done every 50ms until it reports true or ctx ends; errors
// (a server still starting, say) are retried, the last is returned.
func (c *Cluster) poll(ctx context.Context, done func(context.Context) (bool, error)) error {
	var lastErr error
	for {
		ok, err := done(ctx)
		if ok && err == nil {
			return nil
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("%w (last error: %w)", ctx.Err(), lastErr)
			}
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// URL returns a superuser connection URL for database db.
func (c *Cluster) URL(db string) string {
	return c.URLFor(c.User, c.Password, db)
}

// URLFor returns a connection URL for the given role and database.
func (c *Cluster) URLFor(user, password, db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password),
		Host: net.JoinHostPort(c.Host, strconv.Itoa(c.Port)), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// Exec runs sql as the superuser in database db.
func (c *Cluster) Exec(ctx context.Context, db, sql string) error {
	conn, err := pgconn.Connect(ctx, c.URL(db))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", db, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		return err
	}
	return nil
}

// CreateDatabase creates a new empty database with a unique name and
// returns its name.
func (c *Cluster) CreateDatabase(ctx context.Context, prefix string) (string, error) {
	c.mu.Lock()
	c.dbSeq++
	name := fmt.Sprintf("%s_%d_%s", sanitize(prefix), c.dbSeq, randomHex(3))
	c.mu.Unlock()
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return name, nil
}

// DropDatabase drops db, terminating its sessions first.
func (c *Cluster) DropDatabase(ctx context.Context, db string) error {
	return c.Exec(ctx, "postgres", fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", sanitize(db)))
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	out := b.String()
	if len(out) > 40 {
		out = out[:40]
	}
	if out == "" {
		out = "db"
	}
	return out
}

// NewDatabase creates a fresh database for one test, dropped when the test
// ends, and returns its name.
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name, err := c.CreateDatabase(ctx, t.Name())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.DropDatabase(ctx, name); err != nil {
			t.Logf("pgtest: drop %s: %v", name, err)
		}
	})
	return name
}

var (
	shared    *Cluster
	sharedErr error
)

// Main is called from TestMain: it starts one cluster for the test binary,
// runs the tests and stops the cluster. A missing server install fails the
// run with a message saying what to install.
func Main(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	shared, sharedErr = Start(ctx, Options{})
	cancel()
	if sharedErr != nil {
		fmt.Fprintf(os.Stderr, "pgtest: cannot start PostgreSQL: %v\n", sharedErr)
		os.Exit(1)
	}
	code := func() int {
		defer shared.Stop()
		return m.Run()
	}()
	runtime.GC()
	os.Exit(code)
}

// Shared returns the cluster that Main started. It fails the test if Main
// was not used.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	if shared == nil {
		t.Fatal("pgtest: no cluster; call pgtest.Main from TestMain")
	}
	return shared
}
