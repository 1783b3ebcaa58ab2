package integration_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The drivers BI tools and applications use besides pgx and lib/pq: the
// PostgreSQL JDBC driver (Metabase, Tableau, DBeaver and every JVM app) and
// psycopg2 (Python apps, Superset, notebooks). Each test runs a real client
// program from testdata against a running proxy. When the runtime or the
// driver is missing the test is skipped with what to install; CI installs
// them and sets VITALPROXY_REQUIRE_DRIVERS=1, which makes a missing driver
// a failure instead.

// needDriver skips the test (or fails it under VITALPROXY_REQUIRE_DRIVERS)
// because what is missing.
func needDriver(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("VITALPROXY_REQUIRE_DRIVERS") != "" {
		t.Fatalf("%s (VITALPROXY_REQUIRE_DRIVERS is set)", what)
	}
	t.Skip(what)
}

// jdbcRuntime returns the java launcher and the PostgreSQL JDBC driver's
// jar (VITALPROXY_JDBC_JAR, else Debian's libpostgresql-jdbc-java).
func jdbcRuntime(t *testing.T) (java, jar string) {
	t.Helper()
	java, err := exec.LookPath("java")
	if err != nil {
		needDriver(t, "no java on PATH (apt-get install default-jre-headless libpostgresql-jdbc-java)")
	}
	jar = os.Getenv("VITALPROXY_JDBC_JAR")
	if jar == "" {
		jar = "/usr/share/java/postgresql.jar"
	}
	if _, err := os.Stat(jar); err != nil {
		needDriver(t, "no PostgreSQL JDBC driver at "+jar+" (apt-get install libpostgresql-jdbc-java, or set VITALPROXY_JDBC_JAR)")
	}
	return java, jar
}

// psycopgPython returns a Python interpreter that can import psycopg2:
// VITALPROXY_PYTHON, else python3 on PATH, else /usr/bin/python3.
func psycopgPython(t *testing.T) string {
	t.Helper()
	var candidates []string
	if p := os.Getenv("VITALPROXY_PYTHON"); p != "" {
		candidates = append(candidates, p)
	}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	candidates = append(candidates, "/usr/bin/python3")
	for _, p := range candidates {
		if exec.Command(p, "-c", "import psycopg2").Run() == nil {
			return p
		}
	}
	needDriver(t, "no python3 with psycopg2 (apt-get install python3-psycopg2, or set VITALPROXY_PYTHON)")
	return ""
}

// preparedCount is how many protocol-level prepared statements transaction
// mode has served so far (hits and misses).
func preparedCount(t *testing.T, r *running) float64 {
	t.Helper()
	g := r.srv.Gatherer()
	return metricValue(t, g, "vitalproxy_prepared_statements_total", map[string]string{"result": "hit"}) +
		metricValue(t, g, "vitalproxy_prepared_statements_total", map[string]string{"result": "miss"})
}

// driverClient is a fixture user with the agent it must see and the one it
// must not.
type driverClient struct{ user, pw, tenantID, own, foreign string }

// driverClients returns the two tenants' clients the driver tests run.
func driverClients(f *fixture) []driverClient {
	return []driverClient{
		{"alice", "alice-pw", f.tenants[dhSlug], f.dhPrivate, f.platformPrivate},
		{"bob", "bob-pw", f.tenants[platformSlug], f.platformPrivate, f.dhPrivate},
	}
}

// driverProxy starts the fixture's proxy in mode; transaction mode gets one
// server connection, which the test's clients share.
func driverProxy(t *testing.T, f *fixture, mode string) *running {
	t.Helper()
	cfg := f.config(t)
	if mode == "transaction" {
		cfg = txConfig(t, f, 1)
	}
	return startProxy(t, cfg)
}

// testdataFile returns the absolute path of a file in testdata.
func testdataFile(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestJDBC: two JDBC clients of different tenants, each on its own thread,
// run a server-side prepared statement (prepareThreshold=1: named from the
// first execution) in and out of transactions, read the catalogue through
// DatabaseMetaData, page through a result one row at a time (a portal
// executed repeatedly inside a transaction, as BI tools fetch) and recover
// from an error in a transaction. In transaction mode they share one server
// connection, so each client's named statements are prepared lazily on a
// backend the other client used.
func TestJDBC(t *testing.T) {
	noLeaks(t)
	java, jar := jdbcRuntime(t)
	f := getFixture(t)
	src := testdataFile(t, "TenantCheck.java")
	const rounds = 40
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			r := driverProxy(t, f, mode)
			url := fmt.Sprintf("jdbc:postgresql://%s:%d/%s", r.host, r.port, f.db)
			args := []string{"-cp", jar, src, url, fmt.Sprint(rounds)}
			for _, c := range driverClients(f) {
				args = append(args, strings.Join([]string{c.user, c.pw, c.tenantID, c.own, c.foreign}, ":"))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, java, args...)
			cmd.Dir = t.TempDir()
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("JDBC client: %v\n%s", err, out)
			}
			for _, c := range driverClients(f) {
				if want := fmt.Sprintf("OK %s %d", c.user, rounds); !strings.Contains(string(out), want) {
					t.Errorf("JDBC client output lacks %q:\n%s", want, out)
				}
			}
			if mode == "transaction" && preparedCount(t, r) < 2*rounds {
				t.Errorf("%v protocol-level prepared statements went through transaction mode, want at least %d (the driver's named statements)",
					preparedCount(t, r), 2*rounds)
			}
		})
	}
}

// TestPsycopg: psycopg2 reads information_schema, runs parameterised
// queries in transactions, recovers from an error and reads through a
// server-side (named) cursor; in both pool modes, for two tenants.
func TestPsycopg(t *testing.T) {
	noLeaks(t)
	python := psycopgPython(t)
	f := getFixture(t)
	script := testdataFile(t, "tenant_check.py")
	const rounds = 20
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			r := driverProxy(t, f, mode)
			for _, c := range driverClients(f) {
				dsn := fmt.Sprintf("host=%s port=%d dbname=%s user=%s password=%s sslmode=disable application_name=tenant-check",
					r.host, r.port, f.db, c.user, c.pw)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				cmd := exec.CommandContext(ctx, python, script, dsn, c.tenantID, c.own, c.foreign, fmt.Sprint(rounds))
				cmd.Dir = t.TempDir()
				out, err := cmd.CombinedOutput()
				cancel()
				if err != nil {
					t.Fatalf("psycopg2 client %s: %v\n%s", c.user, err, out)
				}
				if want := fmt.Sprintf("OK %d", rounds); !strings.Contains(string(out), want) {
					t.Errorf("psycopg2 client %s output lacks %q:\n%s", c.user, want, out)
				}
			}
		})
	}
}
