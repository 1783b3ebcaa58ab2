// Command idlemem measures the memory a vitalproxy process needs for many
// idle client connections: it starts a throwaway PostgreSQL, builds and runs
// `vitalproxy serve` as its own process (transaction pooling, so idle
// clients hold no server connection), opens the clients and reports the
// proxy's resident set size before and after.
//
//	go run ./test/idlemem -clients 1000
package main

import (
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

func main() {
	clients := flag.Int("clients", 1000, "idle client connections to open")
	mode := flag.String("mode", "transaction", "pool mode of the proxy: transaction or session")
	flag.Parse()
	if err := run(*clients, *mode); err != nil {
		fmt.Fprintln(os.Stderr, "idlemem:", err)
		os.Exit(1)
	}
}

func run(n int, mode string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		return err
	}
	defer c.Stop()
	db, err := c.CreateDatabase(ctx, "idlemem")
	if err != nil {
		return err
	}
	m, err := migrations.New(c.URL(db))
	if err != nil {
		return err
	}
	if _, err := m.Up(ctx); err != nil {
		return err
	}
	m.Close()
	secret := []byte("idlemem-role-secret-0123456789abcdef")
	admin, err := pgx.Connect(ctx, c.URL(db))
	if err != nil {
		return err
	}
	if _, err := tenantroles.New(admin, tenantroles.Options{Secret: secret}).Sync(ctx); err != nil {
		return err
	}
	admin.Close(ctx)

	dir, err := os.MkdirTemp("", "idlemem-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "vitalproxy")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/vitalproxy")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build: %w", err)
	}
	verifier, err := auth.NewSCRAMVerifier("idle-pw")
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`listen: 127.0.0.1:%d
upstream:
  url: postgres://%s:%d/%s?sslmode=disable
  admin_url: %q
role_secret: %s
metrics: {listen: ""}
log: {level: warn}
limits: {max_client_conns: %d}
pool: {mode: %s, max_server_conns: 20}
users:
  - {name: idle, password: %q, tenant: digital-health-startup}
`, port, c.Host, c.Port, db, c.URL(db), base64.StdEncoding.EncodeToString(secret), n+100, mode, verifier)
	cfgFile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		return err
	}
	serve := exec.CommandContext(ctx, bin, "serve", "--config", cfgFile)
	serve.Stderr = os.Stderr
	if err := serve.Start(); err != nil {
		return err
	}
	defer func() {
		_ = serve.Process.Signal(os.Interrupt)
		_ = serve.Wait()
	}()
	url := fmt.Sprintf("postgres://idle:idle-pw@127.0.0.1:%d/%s?sslmode=disable", port, db)
	if err := waitReady(ctx, url); err != nil {
		return err
	}
	before, err := rss(serve.Process.Pid)
	if err != nil {
		return err
	}
	conns := make([]*pgconn.PgConn, 0, n)
	defer func() {
		for _, pc := range conns {
			pc.Close(context.Background())
		}
	}()
	start := time.Now()
	for i := range n {
		pc, err := pgconn.Connect(ctx, url)
		if err != nil {
			return fmt.Errorf("client %d: %w", i, err)
		}
		conns = append(conns, pc)
	}
	// Every client has run one query, then sits idle.
	for _, pc := range conns {
		if _, err := pc.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
			return err
		}
	}
	time.Sleep(2 * time.Second)
	after, err := rss(serve.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Printf("mode %s: %d idle clients opened in %s\n", mode, n, time.Since(start).Round(time.Millisecond))
	fmt.Printf("proxy RSS: %.1f MiB before, %.1f MiB with the clients (%.1f KiB per client)\n",
		float64(before)/1024, float64(after)/1024, float64(after-before)/float64(n))
	return nil
}

func waitReady(ctx context.Context, url string) error {
	deadline := time.Now().Add(time.Minute)
	for {
		pc, err := pgconn.Connect(ctx, url)
		if err == nil {
			pc.Close(ctx)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("proxy did not start: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// rss returns the process's resident set size in KiB.
func rss(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
