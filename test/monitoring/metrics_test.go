package monitoring_test

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/proxy"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// prometheusOwn are series Prometheus makes itself, not the proxy.
var prometheusOwn = map[string]bool{"up": true}

// notExercised are metrics the proxy registers but this test does not make
// it produce, with what would: they must still be registered.
var notExercised = map[string]string{
	"vitalproxy_transactions_total": "transaction pool mode",
}

// Test fixture values.
const (
	tenantSlug = "digital-health-startup" // seeded by the migrations
	userName   = "monitoring-user"
	userPass   = "monitoring-pw"
	rolePrefix = "vt_mon_"
	// consoleUser has the same password as userName.
	consoleUser = "monitoring-console"
	consoleDB   = "vitalproxy"
)

var roleSecret = []byte("monitoring-test-role-secret-0123456789")

// startProxy migrates a fresh database, creates the tenant roles and the
// probe tenants, and runs a proxy with the isolation probe enabled until the
// test ends; withStandby adds a streaming standby as a second upstream host.
func startProxy(t *testing.T, withStandby bool) (*proxy.Server, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := pgtest.Shared(t)
	db := c.NewDatabase(t)
	m, err := migrations.New(c.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Up(ctx)
	m.Close()
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	conn, err := pgx.Connect(ctx, c.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	mgr := tenantroles.New(conn, tenantroles.Options{Secret: roleSecret, Prefix: rolePrefix})
	if _, err := mgr.Sync(ctx); err != nil {
		t.Fatalf("tenant sync: %v", err)
	}
	if _, err := mgr.EnsureProbeTenants(ctx); err != nil {
		t.Fatalf("probe tenants: %v", err)
	}

	t.Setenv("VITALPROXY_CONFIG", "")
	cfg, err := config.Load(config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := auth.NewSCRAMVerifier(userPass)
	if err != nil {
		t.Fatal(err)
	}
	up := url.URL{Scheme: "postgres", Host: net.JoinHostPort(c.Host, strconv.Itoa(c.Port)), Path: "/" + db, RawQuery: "sslmode=disable"}
	cfg.Listen = "127.0.0.1:0"
	cfg.Metrics.Listen = ""
	cfg.Upstream.URL = up.String()
	cfg.Upstream.AdminURL = config.Secret(c.URL(db))
	cfg.DatabaseURL = cfg.Upstream.AdminURL
	cfg.RoleSecret = config.Secret(base64.StdEncoding.EncodeToString(roleSecret))
	cfg.RolePrefix = rolePrefix
	cfg.Users = []config.User{{Name: userName, Password: config.Secret(verifier), Tenants: []string{tenantSlug}},
		// Runs one console command (vitalproxy_console_commands_total).
		{Name: consoleUser, Password: config.Secret(verifier), Console: config.ConsoleStats}}
	cfg.Console.Database = consoleDB
	// One server connection for the tenant, so that a second client queues.
	cfg.Tenants = map[string]config.TenantSettings{tenantSlug: {MaxServerConns: 1}}
	cfg.Probe.Enabled = true
	cfg.Probe.Interval = 100 * time.Millisecond
	cfg.Limits.ShutdownTimeout = 10 * time.Second
	if withStandby {
		// A streaming standby as a second upstream host: the proxy runs
		// the topology checker and exports its vitalproxy_upstream_*
		// series (the lag gauges exist for standbys only).
		s, err := c.StartStandby(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Stop)
		cfg.Upstream.Hosts = []string{net.JoinHostPort(s.Host, strconv.Itoa(s.Port))}
		cfg.Upstream.HealthInterval = 200 * time.Millisecond
	}

	srv, err := proxy.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("proxy: %v", err)
			}
		case <-time.After(time.Minute):
			t.Error("proxy did not stop")
		}
	})
	select {
	case <-srv.Ready():
	case err := <-errc:
		t.Fatalf("proxy did not start: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("proxy did not become ready")
	}
	client := url.URL{Scheme: "postgres", User: url.UserPassword(userName, userPass), Host: srv.Addr().String(),
		Path: "/" + db, RawQuery: "sslmode=disable"}
	return srv, client.String()
}

// exported returns the series names g exports (a histogram's as
// _bucket, _sum and _count too).
func exported(t *testing.T, g prometheus.Gatherer) map[string]bool {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, mf := range mfs {
		if len(mf.GetMetric()) == 0 {
			continue
		}
		name := mf.GetName()
		out[name] = true
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			out[name+"_sum"], out[name+"_count"] = true, true
		}
	}
	return out
}

// familyName strips the series suffix of a histogram or summary.
func familyName(series string) string {
	for _, s := range []string{"_bucket", "_sum", "_count"} {
		if strings.HasSuffix(series, s) {
			return strings.TrimSuffix(series, s)
		}
	}
	return series
}

// registered reports whether reg already holds a collector describing
// metric family name: registering another one with that name but other
// labels and help must then fail.
func registered(t *testing.T, reg prometheus.Registerer, name string) bool {
	t.Helper()
	c := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: "registration check of the monitoring test"},
		[]string{"monitoring_test_only"})
	err := reg.Register(c)
	if err == nil {
		reg.Unregister(c)
		return false
	}
	var already prometheus.AlreadyRegisteredError
	return !errors.As(err, &already) && strings.Contains(err.Error(), "previously registered descriptor with the same fully-qualified name")
}

// TestReferencedMetricsExist checks every metric the alert rules and the
// dashboard use against a running proxy.
func TestReferencedMetricsExist(t *testing.T) {
	refs := referencedMetrics(t)
	srv, clientURL := startProxy(t, false)
	g := srv.Gatherer()
	reg, ok := g.(prometheus.Registerer)
	if !ok {
		t.Fatalf("the server's gatherer %T is not a registry", g)
	}

	produceTraffic(t, g, clientURL)

	var names []string
	for n := range refs {
		names = append(names, n)
	}
	sort.Strings(names)
	// Every name is registered by the proxy (or is Prometheus's own).
	for _, n := range names {
		if prometheusOwn[n] {
			continue
		}
		if !registered(t, reg, familyName(n)) {
			t.Errorf("%s, used by %s, is not a metric of the proxy", n, strings.Join(refs[n], "; "))
		}
	}
	// And, but for the few this test cannot produce, exported with values
	// once the probe has run and the clients are gone.
	var missing []string
	waitFor(t, "the referenced metrics", func() bool {
		have := exported(t, g)
		missing = missing[:0]
		for _, n := range names {
			if !have[n] && !prometheusOwn[n] && notExercised[n] == "" {
				missing = append(missing, n)
			}
		}
		return len(missing) == 0 && have["vitalproxy_isolation_probe_success"] &&
			value(t, g, "vitalproxy_isolation_probe_success") == 1
	}, func() {
		for _, n := range missing {
			t.Errorf("%s, used by %s, is not exported by a running proxy", n, strings.Join(refs[n], "; "))
		}
	})
	for n, why := range notExercised {
		if _, used := refs[n]; used {
			t.Logf("%s is checked as registered only: it needs %s", n, why)
		}
	}
}

// produceTraffic makes the proxy produce its traffic metrics: a client that
// holds the tenant's only server connection, a second one that queues for
// it, and a failed login.
func produceTraffic(t *testing.T, g prometheus.Gatherer, clientURL string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first, err := pgx.Connect(ctx, clientURL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	second := make(chan error, 1)
	go func() {
		c, err := pgx.Connect(ctx, clientURL)
		if err == nil {
			_, err = c.Exec(ctx, "SELECT 1")
			c.Close(context.Background())
		}
		second <- err
	}()
	waitFor(t, "a queued client", func() bool { return queued(t, g) })
	first.Close(ctx)
	if err := <-second; err != nil {
		t.Fatalf("queued client: %v", err)
	}
	consoleURL := strings.Replace(strings.Replace(clientURL, userName+":", consoleUser+":", 1), "/"+dbPath(t, clientURL)+"?", "/"+consoleDB+"?", 1)
	cc, err := pgx.Connect(ctx, consoleURL)
	if err != nil {
		t.Fatalf("console: %v", err)
	}
	if _, err := cc.Exec(ctx, "SHOW TENANTS"); err != nil {
		t.Fatalf("console: %v", err)
	}
	cc.Close(ctx)
	bad := strings.Replace(clientURL, ":"+userPass+"@", ":wrong@", 1)
	if c, err := pgx.Connect(ctx, bad); err == nil {
		c.Close(ctx)
		t.Fatal("a wrong password was accepted")
	}
}

// dbPath is the database of a client URL.
func dbPath(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/")
}

// queued reports whether a client waits for a server connection.
func queued(t *testing.T, g prometheus.Gatherer) bool {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "vitalproxy_pool_clients_waiting" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetGauge().GetValue() > 0 {
				return true
			}
		}
	}
	return false
}

// value returns the value of the first series of a gauge or counter.
func value(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			m := mf.GetMetric()[0]
			if m.Gauge != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// waitFor polls cond for up to a minute; on time-out it calls report (if
// given) and fails.
func waitFor(t *testing.T, what string, cond func() bool, report ...func()) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			for _, r := range report {
				r()
			}
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
