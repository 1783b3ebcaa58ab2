package integration_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/migrations/audit"
	"github.com/vitalproxy/vitalproxy/proxy"
)

// unsafeDatabase returns a migrated database whose agents table no longer
// forces row-level security, so the isolation audit fails.
func unsafeDatabase(t testing.TB, f *fixture) string {
	t.Helper()
	ctx := testCtx(t)
	db := f.c.NewDatabase(t)
	m, err := migrations.New(f.c.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Up(ctx)
	m.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.c.Exec(ctx, db, "ALTER TABLE public.agents NO FORCE ROW LEVEL SECURITY"); err != nil {
		t.Fatal(err)
	}
	return db
}

func TestAuditFailureRefusesStart(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	db := unsafeDatabase(t, f)
	cfg := f.configFor(t, f.c, db)

	srv, err := proxy.New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = srv.Run(ctx)
	if !errors.Is(err, proxy.ErrAuditFailed) || !strings.Contains(err.Error(), audit.TenantTablesRLS) {
		t.Fatalf("Run = %v, want an audit failure naming %s", err, audit.TenantTablesRLS)
	}
	select {
	case <-srv.Ready():
		t.Fatal("the proxy became ready")
	default:
	}

	t.Run("unsafe starts anyway", func(t *testing.T) {
		p := startProxy(t, f.configFor(t, f.c, db), proxy.WithUnsafe(true))
		if got := metricValue(t, p.srv.Gatherer(), "vitalproxy_isolation_check", map[string]string{"check": audit.TenantTablesRLS}); got != 0 {
			t.Fatalf("isolation_check{%s} = %v, want 0", audit.TenantTablesRLS, got)
		}
		if got := metricValue(t, p.srv.Gatherer(), "vitalproxy_audit_runs_total", map[string]string{"result": "fail"}); got != 1 {
			t.Fatalf("audit_runs_total{fail} = %v", got)
		}
	})
}

// buildBinary builds cmd/vitalproxy once per test binary.
var builtBinary struct {
	path string
	err  error
	done bool
}

func vitalproxyBinary(t testing.TB) string {
	t.Helper()
	if !builtBinary.done {
		builtBinary.done = true
		dir, err := os.MkdirTemp("", "vp-bin-")
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "vitalproxy")
		// go test puts its own toolchain's bin directory first on PATH.
		cmd := exec.Command("go", "build", "-o", out, "./cmd/vitalproxy")
		cmd.Dir = filepath.Join("..", "..")
		if b, err := cmd.CombinedOutput(); err != nil {
			builtBinary.err = fmt.Errorf("go build: %v\n%s", err, b)
		}
		builtBinary.path = out
	}
	if builtBinary.err != nil {
		t.Fatal(builtBinary.err)
	}
	return builtBinary.path
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestServeCommand runs `vitalproxy serve` as a process: start, readiness,
// SIGHUP reload, SIGTERM drain; and the one-line refusal of a failed audit.
func TestServeCommand(t *testing.T) {
	f := getFixture(t)
	bin := vitalproxyBinary(t)
	base := f.config(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "vitalproxy.yaml")
	writeConfig := func(n int) {
		var b strings.Builder
		b.WriteString("limits:\n  shutdown_timeout: 2s\nusers:\n")
		for _, u := range f.users[:n] {
			fmt.Fprintf(&b, "  - name: %s\n    password: %q\n    tenants: [%s]\n", u.Name, string(u.Password), strings.Join(u.Tenants, ", "))
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig(1)
	env := append(os.Environ(),
		"VITALPROXY_DATABASE_URL="+string(base.Upstream.AdminURL),
		"VITALPROXY_ROLE_SECRET="+string(base.RoleSecret),
		"VITALPROXY_ROLE_PREFIX="+base.RolePrefix,
		"VITALPROXY_CONFIG=",
	)
	listen, metrics := freeAddr(t), freeAddr(t)

	t.Run("runs, reloads and drains", func(t *testing.T) {
		var stderr bytes.Buffer
		cmd := exec.Command(bin, "serve", "--config", path, "--listen", listen, "--metrics-listen", metrics, "--upstream-url", base.Upstream.URL)
		cmd.Env = env
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		defer func() {
			_ = cmd.Process.Kill()
			<-exited
			if t.Failed() {
				t.Logf("serve stderr:\n%s", stderr.String())
			}
		}()
		eventually(t, "/readyz", func() bool {
			select {
			case err := <-exited:
				t.Fatalf("serve exited: %v\n%s", err, stderr.String())
			default:
			}
			c, err := net.DialTimeout("tcp", metrics, time.Second)
			if err != nil {
				return false
			}
			c.Close()
			code, _ := httpGet(t, "http://"+metrics+"/readyz")
			return code == 200
		})
		url := func(user, pw string) string {
			return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", user, pw, listen, f.db)
		}
		ctx := testCtx(t)
		alice := connectURL(t, url("alice", "alice-pw"))
		if err := tryConnect(ctx, url("bob", "bob-pw")); err == nil {
			t.Fatal("bob connected before the reload")
		}
		writeConfig(2)
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		eventually(t, "bob after SIGHUP", func() bool { return tryConnect(ctx, url("bob", "bob-pw")) == nil })
		if err := alice.Ping(ctx); err != nil {
			t.Fatalf("alice after reload: %v", err)
		}
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-exited:
			exited <- err
			if err != nil {
				t.Fatalf("serve exited with %v", err)
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("serve did not exit after SIGTERM")
		}
		if err := alice.Ping(ctx); err == nil {
			t.Fatal("alice's session survived the shutdown")
		}
		if strings.Contains(stderr.String(), string(base.RoleSecret)) {
			t.Fatal("the role secret was logged")
		}
	})

	t.Run("refuses a failed audit in one line", func(t *testing.T) {
		db := unsafeDatabase(t, f)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "serve", "--config", path, "--listen", freeAddr(t), "--metrics-listen", "",
			"--upstream-url", strings.Replace(base.Upstream.URL, "/"+f.db+"?", "/"+db+"?", 1))
		cmd.Env = append(env, "VITALPROXY_DATABASE_URL="+f.c.URL(db), "VITALPROXY_LOG_LEVEL=error")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("exit %v, want 1\n%s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		last := lines[len(lines)-1]
		if !strings.HasPrefix(last, "vitalproxy: isolation audit failed: ") || !strings.Contains(last, audit.TenantTablesRLS) {
			t.Fatalf("last line %q", last)
		}
	})
}
