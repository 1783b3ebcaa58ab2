package integration_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/lib/pq"

	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

func TestLibPQ(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	p := startProxy(t, f.config(t))
	ctx := testCtx(t)
	db, err := sql.Open("postgres", p.url("alice", "alice-pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(3)

	var tenant string
	if err := db.QueryRowContext(ctx, "SELECT current_setting('vital.tenant_id', true)").Scan(&tenant); err != nil {
		t.Fatal(err)
	}
	if tenant != f.tenants[dhSlug] {
		t.Fatalf("tenant %q", tenant)
	}
	stmt, err := db.PrepareContext(ctx, "SELECT count(*) FROM agents WHERE name = $1")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	for name, want := range map[string]int{f.dhPrivate: 1, f.platformShared: 1, f.platformPrivate: 0} {
		var n int
		if err := stmt.QueryRowContext(ctx, name).Scan(&n); err != nil || n != want {
			t.Fatalf("%s: %d %v, want %d", name, n, err, want)
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "SELECT 1/0"); err == nil {
		t.Fatal("division by zero succeeded")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	var s string
	if err := db.QueryRowContext(ctx, "SELECT repeat('q', 2000000)").Scan(&s); err != nil || len(s) != 2000000 {
		t.Fatalf("large value: %d %v", len(s), err)
	}
}

func TestPsqlAndPgbench(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	p := startProxy(t, f.config(t))
	env := append(os.Environ(), "PGPASSWORD=alice-pw", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=60", "LC_ALL=C")
	run := func(t *testing.T, name string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, clientTool(t, f.c.BinDir, name), args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	conn := []string{"-h", p.host, "-p", strconv.Itoa(p.port), "-U", "alice", "-d", f.db}

	t.Run("psql/query", func(t *testing.T) {
		out := run(t, "psql", append(conn, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c",
			"SELECT current_setting('vital.tenant_id', true), count(*) FROM agents WHERE name LIKE 'it-%'")...)
		if got, want := strings.TrimSpace(out), f.tenants[dhSlug]+"|2"; got != want {
			t.Fatalf("psql printed %q, want %q", got, want)
		}
	})
	t.Run("psql/script with copy and error", func(t *testing.T) {
		script := filepath.Join(t.TempDir(), "s.sql")
		body := "CREATE TEMP TABLE t (i int);\n\\copy t FROM stdin\n1\n2\n3\n\\.\nSELECT 1/0;\nSELECT 'sum=' || sum(i) FROM t;\n"
		if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		out := run(t, "psql", append(conn, "-X", "-A", "-t", "-f", script)...)
		if !strings.Contains(out, "division by zero") || !strings.Contains(out, "sum=6") {
			t.Fatalf("psql output:\n%s", out)
		}
	})
	for _, mode := range []string{"simple", "extended", "prepared"} {
		t.Run("pgbench/"+mode, func(t *testing.T) {
			script := filepath.Join(t.TempDir(), "bench.sql")
			body := "\\set n random(1, 1000)\nSELECT count(*) FROM agents WHERE name <> :n::text;\nSELECT current_setting('vital.tenant_id', true);\n"
			if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			out := run(t, "pgbench", append(conn, "-n", "-c", "4", "-j", "2", "-t", "50", "-M", mode, "-f", script)...)
			if !strings.Contains(out, "number of transactions actually processed: 200/200") {
				t.Fatalf("pgbench output:\n%s", out)
			}
		})
	}
	t.Run("pgbench/connect per transaction", func(t *testing.T) {
		script := filepath.Join(t.TempDir(), "bench.sql")
		if err := os.WriteFile(script, []byte("SELECT 1;\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out := run(t, "pgbench", append(conn, "-n", "-C", "-c", "2", "-t", "20", "-f", script)...)
		if !strings.Contains(out, "number of transactions actually processed: 40/40") {
			t.Fatalf("pgbench output:\n%s", out)
		}
	})
}

// clientTool finds a PostgreSQL client program (psql, pgbench): next to the
// server binaries, in the newest /usr/lib/postgresql/*/bin, or on PATH.
func clientTool(t testing.TB, binDir, name string) string {
	t.Helper()
	candidates := []string{filepath.Join(binDir, name)}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range dirs {
		candidates = append(candidates, filepath.Join(d, name))
	}
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return c
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found next to the server binaries or on PATH", name)
	}
	return p
}

// writeCert writes a self-signed certificate (which is also its own CA) for
// 127.0.0.1 and localhost, and returns the certificate and key paths.
func writeCert(t testing.TB, dir, cn string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// serverUser returns the uid and gid PostgreSQL runs as when the tests run
// as root (see pgtest), or -1s.
func serverUser(t testing.TB) (int, int) {
	if os.Geteuid() != 0 {
		return -1, -1
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return uid, gid
	}
	t.Fatal("no postgres or nobody user")
	return -1, -1
}

// TestTLSBothSides runs TLS between client and proxy and between proxy and
// a cluster that requires it.
func TestTLSBothSides(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	dir, err := os.MkdirTemp("", "vp-tls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey := writeCert(t, dir, "upstream")
	if uid, gid := serverUser(t); uid >= 0 {
		for _, p := range []string{srvCert, srvKey} {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx := testCtx(t)
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: []string{
		"ssl = on",
		fmt.Sprintf("ssl_cert_file = '%s'", srvCert),
		fmt.Sprintf("ssl_key_file = '%s'", srvKey),
	}})
	if err != nil {
		t.Fatalf("start a TLS cluster: %v", err)
	}
	t.Cleanup(c.Stop)
	db, err := c.CreateDatabase(ctx, "tls")
	if err != nil {
		t.Fatal(err)
	}
	tf := *f
	if err := prepareDatabase(ctx, c.URL(db), f.secret, f.prefix, &tf); err != nil {
		t.Fatal(err)
	}
	cfg := f.configFor(t, c, db)
	cfg.Upstream.URL = strings.Replace(cfg.Upstream.URL, "sslmode=disable", "sslmode=verify-full&sslrootcert="+srvCert, 1)
	proxyCert, proxyKey := writeCert(t, dir, "proxy")
	cfg.TLS.CertFile, cfg.TLS.KeyFile = proxyCert, proxyKey
	p := startProxy(t, cfg)

	url := strings.Replace(p.url("alice", "alice-pw"), "sslmode=disable", "sslmode=verify-full&sslrootcert="+proxyCert, 1)
	url = strings.Replace(url, "@127.0.0.1:", "@localhost:", 1)
	conn := connectURL(t, url)
	if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatalf("client connection is %T, not TLS", conn.PgConn().Conn())
	}
	var upstreamTLS bool
	var tenant string
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid(), current_setting('vital.tenant_id', true)").Scan(&pid, &tenant); err != nil {
		t.Fatal(err)
	}
	// Statistics views are not readable by tenant roles: ask as the superuser.
	admin := connectURL(t, c.URL(db))
	if err := admin.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = $1", pid).Scan(&upstreamTLS); err != nil {
		t.Fatal(err)
	}
	if !upstreamTLS || tenant != tf.tenants[dhSlug] {
		t.Fatalf("upstream ssl=%v tenant=%q", upstreamTLS, tenant)
	}
	var s string
	if err := conn.QueryRow(ctx, "SELECT repeat('t', 3000000)").Scan(&s); err != nil || len(s) != 3000000 {
		t.Fatalf("large value over TLS: %d %v", len(s), err)
	}
	// Notifications over TLS stay in the tenant's namespace: the own
	// channel arrives under its own name, another tenant's never does.
	other := connectURL(t, strings.Replace(url, "alice:alice-pw", "bob:bob-pw", 1))
	if _, err := conn.Exec(ctx, "LISTEN tls_chan"); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, "NOTIFY tls_chan, 'foreign'"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_notify('tls_chan', 'own')"); err != nil {
		t.Fatal(err)
	}
	if ch, payload, _ := nextNotification(t, ctx, conn); ch != "tls_chan" || payload != "own" {
		t.Fatalf("over TLS: got %q on %q, want %q on %q", payload, ch, "own", "tls_chan")
	}
	// A cancel over TLS reaches the TLS backend.
	errc := make(chan error, 1)
	go func() { _, err := conn.Exec(ctx, "SELECT pg_sleep(600)"); errc <- err }()
	waitActiveOn(t, c.URL(db), "pg_sleep(600)")
	if err := conn.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "57014") {
		t.Fatalf("want query_canceled, got %v", err)
	}
}
