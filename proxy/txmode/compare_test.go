package txmode_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/upstream"
	"github.com/vitalproxy/vitalproxy/test/fixture"
)

// TestComparePgBouncer compares pgbench select-only throughput through the
// engine with PgBouncer in transaction mode, PostgreSQL itself and a
// session-mode splice. It takes about a minute and a half, so it runs only
// with VITALPROXY_TXMODE_COMPARE=1 (and PgBouncer on PATH or in
// /usr/sbin). It asserts nothing about speed: it logs a table.
//
//	VITALPROXY_TXMODE_COMPARE=1 go test -run TestComparePgBouncer -v ./proxy/txmode/
func TestComparePgBouncer(t *testing.T) {
	if os.Getenv("VITALPROXY_TXMODE_COMPARE") == "" {
		t.Skip("set VITALPROXY_TXMODE_COMPARE=1 to compare with PgBouncer")
	}
	dur := 5 * time.Second
	if s := os.Getenv("VITALPROXY_TXMODE_COMPARE_SECONDS"); s != "" {
		n, _ := strconv.Atoi(s)
		dur = time.Duration(n) * time.Second
	}
	rounds := 3
	const poolSize = 20
	e := newEnv(t, pool.Config{MaxConns: poolSize}, nil)
	initPgbench(t, e, 10)
	role := e.key(dh).Role
	password := auth.RolePassword(fixture.Secret, role)
	cpu := map[string]func() time.Duration{
		"txmode":  selfCPU,
		"session": selfCPU,
		"direct":  func() time.Duration { return 0 },
	}
	endpoints := map[string]string{
		"direct":  fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", role, password, e.c.Host, e.c.Port, e.db.Name),
		"txmode":  e.url(dh),
		"session": startSplice(t, e, dh),
	}
	if u, pid, err := startPgBouncer(t, e, role, poolSize); err != nil {
		t.Logf("no PgBouncer: %v", err)
	} else {
		endpoints["pgbouncer-tx"] = u
		cpu["pgbouncer-tx"] = func() time.Duration { return procCPU(pid) }
	}
	names := make([]string, 0, len(endpoints))
	for n := range endpoints {
		names = append(names, n)
	}
	sort.Strings(names)
	type cell struct{ tps, cpu []float64 }
	results := map[string]*cell{}
	for _, mode := range []string{"simple", "prepared"} {
		for _, clients := range []int{8, 64} {
			for r := 0; r < rounds; r++ {
				for _, n := range names {
					if n == "pgbouncer-tx" && mode == "prepared" {
						continue // PgBouncer before 1.21 has no prepared statements in transaction mode
					}
					before := cpu[n]()
					res := runPgbench(t, e.c.BinDir, endpoints[n], mode, clients, dur)
					used := cpu[n]() - before
					if res.failed != 0 {
						t.Errorf("%s -M %s -c %d: %d failed", n, mode, clients, res.failed)
					}
					k := fmt.Sprintf("%-8s c=%-3d %s", mode, clients, n)
					if results[k] == nil {
						results[k] = &cell{}
					}
					results[k].tps = append(results[k].tps, res.tps)
					if res.processed > 0 {
						results[k].cpu = append(results[k].cpu, float64(used.Microseconds())/float64(res.processed))
					}
				}
			}
		}
	}
	keys := make([]string, 0, len(results))
	for k := range results {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		tps, us := results[k].tps, results[k].cpu
		sort.Float64s(tps)
		sort.Float64s(us)
		fmt.Fprintf(&b, "%s  median %8.0f tps  %5.1f us CPU/txn  (tps %.0f)\n", k, tps[len(tps)/2], us[len(us)/2], tps)
	}
	t.Logf("pgbench -S, %s per run, %d rounds, pool %d:\n%s", dur, rounds, poolSize, b.String())
}

// startSplice serves each client with its own backend, copying bytes both
// ways (what session mode does), for comparison. It returns a URL.
func startSplice(t testing.TB, e *env, slug string) string {
	t.Helper()
	d, err := upstream.NewDialer(e.c.URLFor("x", "x", e.db.Name), func(role string) string {
		return auth.RolePassword(fixture.Secret, role)
	}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	k := e.key(slug)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				if _, err := readStartup(conn); err != nil { // SSLRequest or StartupMessage
					return
				}
				up, err := d.Dial(context.Background(), upstream.Options{Role: k.Role, TenantID: k.TenantID})
				if err != nil {
					return
				}
				defer up.Close()
				var out []byte
				out = append(out, 'R', 0, 0, 0, 8, 0, 0, 0, 0)
				for _, p := range up.Params {
					b, _ := p.Encode(nil)
					out = append(out, b...)
				}
				out = append(out, 'K', 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 1, 'Z', 0, 0, 0, 5, 'I')
				if _, err := conn.Write(out); err != nil {
					return
				}
				done := make(chan struct{})
				go func() { _, _ = io.Copy(up.Conn, conn); up.Conn.Close(); close(done) }()
				_, _ = io.Copy(conn, up.Conn)
				conn.Close()
				<-done
			}()
		}
	}()
	return fmt.Sprintf("postgres://x@%s/%s?sslmode=disable", ln.Addr(), e.db.Name)
}

// startPgBouncer runs PgBouncer in transaction mode in front of the
// database, logging in as role, and returns a URL.
func startPgBouncer(t testing.TB, e *env, role string, poolSize int) (string, int, error) {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		bin = "/usr/sbin/pgbouncer"
		if _, err := os.Stat(bin); err != nil {
			return "", 0, fmt.Errorf("pgbouncer not found")
		}
	}
	dir, err := os.MkdirTemp("", "txmode-pgbouncer-")
	if err != nil {
		return "", 0, err
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return "", 0, fmt.Errorf("running as root and no postgres user for PgBouncer")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return "", 0, err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", 0, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	password := auth.RolePassword(fixture.Secret, role)
	ini := fmt.Sprintf(`[databases]
%s = host=%s port=%d dbname=%s user=%s password=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = any
pool_mode = transaction
max_client_conn = 1000
default_pool_size = %d
min_pool_size = 0
reserve_pool_size = 0
server_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
stats_period = 60
`, e.db.Name, e.c.Host, e.c.Port, e.db.Name, role, password, port, poolSize)
	path := filepath.Join(dir, "pgbouncer.ini")
	if err := os.WriteFile(path, []byte(ini), 0o600); err != nil {
		return "", 0, err
	}
	if cred != nil {
		_ = os.Chown(path, int(cred.Uid), int(cred.Gid))
	}
	cmd := exec.Command(bin, path)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	if err := cmd.Start(); err != nil {
		return "", 0, err
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if i > 100 {
			return "", 0, fmt.Errorf("pgbouncer did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", role, port, e.db.Name), cmd.Process.Pid, nil
}

// selfCPU is the CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is the CPU time process pid has used.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}
