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
	c.Dir, err = os.MkdirTemp("", "vitalproxy-pg-")
	if err != nil {
		return nil, fmt.Errorf("create temp dir: %w", err)
	}
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root.
		cred, err := unprivilegedUser()
		if err != nil {
			os.RemoveAll(c.Dir)
			return nil, err
		}
		c.runAs = cred
		if err := os.Chown(c.Dir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.RemoveAll(c.Dir)
			return nil, fmt.Errorf("chown temp dir: %w", err)
		}
	}
	if err := c.start(ctx, opts); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
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
