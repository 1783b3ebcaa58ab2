package pgbouncercompat_test

import (
	"bytes"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pgbouncerBin is where Debian installs PgBouncer.
const pgbouncerBin = "/usr/sbin/pgbouncer"

// startPgBouncer runs the real PgBouncer with an admin user "ops" and
// returns its admin database's URL, or skips the test without it.
func startPgBouncer(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(pgbouncerBin); err != nil {
		t.Skipf("PgBouncer is not installed at %s", pgbouncerBin)
	}
	dir := t.TempDir()
	// PgBouncer runs as nobody under root: let it read the files.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	ini := fmt.Sprintf(`[databases]
app = host=127.0.0.1 port=1 dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
admin_users = ops
`, port, filepath.Join(dir, "users.txt"))
	for name, body := range map[string]string{"pgbouncer.ini": ini, "users.txt": `"ops" "x"` + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(pgbouncerBin, filepath.Join(dir, "pgbouncer.ini"))
	if os.Geteuid() == 0 {
		// PgBouncer refuses to run as root.
		u, err := user.Lookup("nobody")
		if err != nil {
			t.Skipf("running as root without a nobody user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start PgBouncer: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	dsn := fmt.Sprintf("postgres://ops@127.0.0.1:%d/pgbouncer?sslmode=disable", port)
	deadline := time.After(time.Minute)
	for {
		db, err := sql.Open("postgres", dsn)
		if err == nil {
			var v string
			err = db.QueryRow("SHOW VERSION").Scan(&v)
			_ = db.Close()
		}
		if err == nil {
			return dsn
		}
		select {
		case <-done:
			t.Fatalf("PgBouncer exited: %s", out.String())
		case <-deadline:
			t.Fatalf("PgBouncer did not start: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// columns are a SHOW's column names and type names, as lib/pq reports
// them.
func columns(t *testing.T, dsn, show string) []string {
	t.Helper()
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("SHOW " + show)
	if err != nil {
		t.Fatalf("SHOW %s: %v", show, err)
	}
	defer rows.Close()
	types, err := rows.ColumnTypes()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ct := range types {
		out = append(out, ct.Name()+" "+ct.DatabaseTypeName())
	}
	return out
}

// TestColumnsMatchPgBouncer compares every SHOW's columns, their order
// and their types with the real PgBouncer's.
func TestColumnsMatchPgBouncer(t *testing.T) {
	real := startPgBouncer(t)
	noLeaks(t)
	e := startProxy(t, nil)
	ours := e.url(opsUser, pgbDB)
	for _, show := range []string{"POOLS", "STATS", "STATS_TOTALS", "STATS_AVERAGES", "DATABASES", "LISTS", "CONFIG",
		"CLIENTS", "SERVERS", "VERSION", "USERS"} {
		want, got := columns(t, real, show), columns(t, ours, show)
		if !slices.Equal(got, want) {
			t.Errorf("SHOW %s:\n got %q\nwant %q", show, got, want)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a process's output and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
