package topology_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/vitalproxy/vitalproxy/proxy/topology"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

// patience bounds waiting for the servers; the machine may be busy.
const patience = 2 * time.Minute

// syncBuffer is a log destination safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// harness is a checker of some hosts with its registry and log.
type harness struct {
	*topology.Checker
	reg *prometheus.Registry
	log *syncBuffer
}

// addr is a host:port entry of the upstream host list.
func addr(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// newChecker checks the servers at addrs with admin's superuser
// credentials (every server of these tests has them).
func newChecker(t *testing.T, admin *pgtest.Cluster, sysid uint64, addrs ...string) *harness {
	t.Helper()
	// A multi-host URL with admin's credentials.
	u, err := url.Parse(admin.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	u.Host = strings.Join(addrs, ",")
	hosts, err := topology.ParseHosts(u.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != len(addrs) {
		t.Fatalf("%d hosts from %s", len(hosts), u.Host)
	}
	h := &harness{reg: prometheus.NewRegistry(), log: &syncBuffer{}}
	h.Checker, err = topology.New(topology.Options{
		Hosts:            hosts,
		AdminURL:         admin.URL("postgres"),
		Interval:         100 * time.Millisecond,
		Timeout:          5 * time.Second,
		SystemIdentifier: sysid,
		Registerer:       h.reg,
		Logger:           slog.New(slog.NewTextHandler(h.log, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// checkUntil runs health rounds until cond holds.
func (h *harness) checkUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	for {
		h.Check(ctx)
		if cond() {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not after %v; hosts: %s\nlog:\n%s", what, patience, describe(h.Hosts()), h.log)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func describe(hosts []topology.Host) string {
	var parts []string
	for _, h := range hosts {
		parts = append(parts, fmt.Sprintf("%s %s tl=%d lag=%dB/%v err=%v", h.Name, h.Role, h.Timeline, h.LagBytes, h.Lag, h.Err))
	}
	return strings.Join(parts, "; ")
}

// isPrimary reports whether c's primary is the server at a.
func isPrimary(c *topology.Checker, a string) bool {
	p, ok := c.Primary()
	return ok && p.Name == a
}

func role(c *topology.Checker, a string) topology.Role {
	for _, h := range c.Hosts() {
		if h.Name == a {
			return h.Role
		}
	}
	return ""
}

// value reads the value of series name{labels} from reg; ok is false if
// there is no such series.
func value(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			return metricValue(m), true
		}
	}
	return 0, false
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	}
	return 0
}

func startStandby(t *testing.T, primary *pgtest.Cluster) *pgtest.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	s, err := primary.StartStandby(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

func exec(t *testing.T, c *pgtest.Cluster, db, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := c.Exec(ctx, db, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestPrimaryAndStandby(t *testing.T) {
	p := pgtest.Shared(t)
	s := startStandby(t, p)
	pa, sa := addr(p.Host, p.Port), addr(s.Host, s.Port)
	h := newChecker(t, p, 0, pa, sa)
	h.checkUntil(t, "primary and standby seen", func() bool {
		return isPrimary(h.Checker, pa) && len(h.Standbys(0, 0)) == 1
	})
	primary, _ := h.Primary()
	standby := h.Standbys(0, 0)[0]
	if standby.Name != sa || !standby.InRecovery || primary.InRecovery {
		t.Errorf("hosts: %s", describe(h.Hosts()))
	}
	if primary.SystemIdentifier == 0 || standby.SystemIdentifier != primary.SystemIdentifier || h.SystemIdentifier() != primary.SystemIdentifier {
		t.Errorf("system identifiers: primary %d, standby %d, checker %d", primary.SystemIdentifier, standby.SystemIdentifier, h.SystemIdentifier())
	}
	if primary.Timeline != 1 || standby.Timeline != 1 {
		t.Errorf("timelines: primary %d, standby %d, want 1", primary.Timeline, standby.Timeline)
	}
	if h.SplitBrain() || h.Failovers() != 0 {
		t.Errorf("split brain %v, failovers %d", h.SplitBrain(), h.Failovers())
	}
	for _, tc := range []struct {
		host, role string
	}{{pa, "primary"}, {sa, "standby"}} {
		if v, ok := value(t, h.reg, "vitalproxy_upstream_up", map[string]string{"host": tc.host, "role": tc.role}); !ok || v != 1 {
			t.Errorf("vitalproxy_upstream_up{host=%s,role=%s} = %v, %v", tc.host, tc.role, v, ok)
		}
	}
	if _, ok := value(t, h.reg, "vitalproxy_upstream_replication_lag_bytes", map[string]string{"host": sa}); !ok {
		t.Error("no lag series for the standby")
	}
	if _, ok := value(t, h.reg, "vitalproxy_upstream_replication_lag_bytes", map[string]string{"host": pa}); ok {
		t.Error("a lag series for the primary")
	}
}

func TestLaggingStandbyExcluded(t *testing.T) {
	p := pgtest.Shared(t)
	s := startStandby(t, p)
	pa, sa := addr(p.Host, p.Port), addr(s.Host, s.Port)
	db := p.NewDatabase(t)
	exec(t, p, db, "CREATE TABLE filler (v text)")
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := p.WaitForReplay(ctx, s); err != nil {
		t.Fatal(err)
	}
	h := newChecker(t, p, 0, pa, sa)
	const maxLagBytes = 256 << 10
	h.checkUntil(t, "standby within bounds", func() bool { return len(h.Standbys(maxLagBytes, time.Hour)) == 1 })

	exec(t, s, "postgres", "SELECT pg_wal_replay_pause()")
	// About 10 MB of WAL.
	exec(t, p, db, "INSERT INTO filler SELECT repeat('x', 100) FROM generate_series(1, 50000)")
	h.checkUntil(t, "paused standby excluded", func() bool { return len(h.Standbys(maxLagBytes, 0)) == 0 })
	if got := h.Standbys(0, 0); len(got) != 1 || got[0].LagBytes <= maxLagBytes || got[0].Lag <= 0 {
		t.Errorf("without bounds: %s", describe(got))
	}
	if got := h.Standbys(0, time.Nanosecond); len(got) != 0 {
		t.Errorf("a standby lagging by time passed a 1ns bound: %s", describe(got))
	}
	if v, _ := value(t, h.reg, "vitalproxy_upstream_replication_lag_bytes", map[string]string{"host": sa}); v <= maxLagBytes {
		t.Errorf("lag bytes gauge %v", v)
	}
	if v, _ := value(t, h.reg, "vitalproxy_upstream_replication_lag_seconds", map[string]string{"host": sa}); v <= 0 {
		t.Errorf("lag seconds gauge %v", v)
	}

	exec(t, s, "postgres", "SELECT pg_wal_replay_resume()")
	h.checkUntil(t, "resumed standby back", func() bool { return len(h.Standbys(maxLagBytes, time.Hour)) == 1 })
}

// TestFailover runs the checker in the background, stops the primary as a
// crash would and promotes the standby; then the old primary comes back
// as it was and must stay fenced.
func TestFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	p, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	s := startStandby(t, p)
	pa, sa := addr(p.Host, p.Port), addr(s.Host, s.Port)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), goleak.IgnoreAnyFunction("os/exec.(*Cmd).Wait"))
	h := newChecker(t, p, 0, pa, sa)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- h.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	first, err := h.WaitPrimary(ctx)
	if err != nil || first.Name != pa {
		t.Fatalf("first primary %s, %v; want %s", first.Name, err, pa)
	}
	changed := h.PrimaryChanged()
	if err := p.StopImmediate(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-ctx.Done():
		t.Fatal("no change of primary signalled after the primary stopped")
	}
	if _, ok := h.Primary(); ok {
		t.Errorf("a primary while the only one is down: %s", describe(h.Hosts()))
	}
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	second, err := h.WaitPrimary(ctx)
	if err != nil || second.Name != sa || second.Timeline != 2 {
		t.Fatalf("primary after promotion %s (timeline %d), %v; want %s on timeline 2", second.Name, second.Timeline, err, sa)
	}
	if h.Failovers() != 1 {
		t.Errorf("failovers %d, want 1", h.Failovers())
	}
	if v, _ := value(t, h.reg, "vitalproxy_upstream_failovers_total", nil); v != 1 {
		t.Errorf("vitalproxy_upstream_failovers_total = %v, want 1", v)
	}
	if v, _ := value(t, h.reg, "vitalproxy_upstream_up", map[string]string{"host": pa, "role": "down"}); v != 0 {
		t.Errorf("old primary's up = %v", v)
	}

	// The old primary starts again, out of recovery on timeline 1.
	if err := p.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return role(h.Checker, pa) == topology.RoleFenced }, "old primary fenced", h)
	if !isPrimary(h.Checker, sa) || !h.SplitBrain() || h.Failovers() != 1 {
		t.Errorf("after the old primary came back: split brain %v, failovers %d, hosts %s", h.SplitBrain(), h.Failovers(), describe(h.Hosts()))
	}
	if !strings.Contains(h.log.String(), "older timeline") {
		t.Errorf("no log line on fencing the old primary:\n%s", h.log)
	}
}

// waitFor polls cond while a Run loop checks.
func waitFor(t *testing.T, cond func() bool, what string, h *harness) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v; hosts: %s\nlog:\n%s", what, patience, describe(h.Hosts()), h.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSplitBrain promotes the standby while the primary is still up: the
// promoted one is on a higher timeline and wins.
func TestSplitBrain(t *testing.T) {
	p := pgtest.Shared(t)
	s := startStandby(t, p)
	pa, sa := addr(p.Host, p.Port), addr(s.Host, s.Port)
	h := newChecker(t, p, 0, pa, sa)
	h.checkUntil(t, "primary seen", func() bool { return isPrimary(h.Checker, pa) })
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	h.checkUntil(t, "promoted standby primary", func() bool { return isPrimary(h.Checker, sa) })
	if role(h.Checker, pa) != topology.RoleFenced || !h.SplitBrain() {
		t.Errorf("split brain %v; hosts %s", h.SplitBrain(), describe(h.Hosts()))
	}
	if v, _ := value(t, h.reg, "vitalproxy_upstream_split_brain", nil); v != 1 {
		t.Errorf("vitalproxy_upstream_split_brain = %v, want 1", v)
	}
	if v, ok := value(t, h.reg, "vitalproxy_upstream_up", map[string]string{"host": pa, "role": "fenced"}); !ok || v != 1 {
		t.Errorf("vitalproxy_upstream_up{role=fenced} = %v, %v", v, ok)
	}
	if _, ok := value(t, h.reg, "vitalproxy_upstream_up", map[string]string{"host": pa, "role": "primary"}); ok {
		t.Error("the fenced host still has its primary series")
	}
	if !strings.Contains(h.log.String(), "split brain") {
		t.Errorf("no split brain log line:\n%s", h.log)
	}
}

// TestForeignClusterRefused lists a server of another initdb, which
// accepts the same credentials.
func TestForeignClusterRefused(t *testing.T) {
	p := pgtest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	other, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Stop()
	exec(t, other, "postgres", fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", other.User, p.Password))
	other.Password = p.Password
	pa, oa := addr(p.Host, p.Port), addr(other.Host, other.Port)
	sysid, err := p.QueryValue(ctx, "postgres", "SELECT system_identifier FROM pg_control_system()")
	if err != nil {
		t.Fatal(err)
	}
	configured, _ := strconv.ParseUint(sysid, 10, 64)
	tests := []struct {
		name  string
		sysid uint64
		addrs []string
	}{
		{"learnt from the first primary", 0, []string{pa, oa}},
		{"configured, the foreign host listed first", configured, []string{oa, pa}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newChecker(t, p, tc.sysid, tc.addrs...)
			h.checkUntil(t, "foreign host refused", func() bool { return role(h.Checker, oa) == topology.RoleRefused })
			if !isPrimary(h.Checker, pa) || h.SplitBrain() || h.SystemIdentifier() != configured {
				t.Errorf("split brain %v, system identifier %d (want %d), hosts %s", h.SplitBrain(), h.SystemIdentifier(), configured, describe(h.Hosts()))
			}
			if !strings.Contains(h.log.String(), "another PostgreSQL cluster") {
				t.Errorf("no log line on the refusal:\n%s", h.log)
			}
			if v, ok := value(t, h.reg, "vitalproxy_upstream_up", map[string]string{"host": oa, "role": "refused"}); !ok || v != 1 {
				t.Errorf("up{role=refused} = %v, %v", v, ok)
			}
		})
	}
}

// TestUnreachableAndNotPostgres lists a closed port, a listener that
// answers garbage and one that never answers: all are down, and a round
// ends within the timeout.
func TestUnreachableAndNotPostgres(t *testing.T) {
	p := pgtest.Shared(t)
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // after the listeners' cleanups
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	garbage := listen(t, func(c net.Conn) {
		c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 1000000\r\n\r\n\x00\xff\xff\xff\xff garbage"))
	})
	silent := listen(t, func(net.Conn) {})
	pa := addr(p.Host, p.Port)

	hosts, err := topology.ParseHosts(p.URL("postgres"), []string{closedAddr, garbage, silent})
	if err != nil {
		t.Fatal(err)
	}
	c, err := topology.New(topology.Options{Hosts: hosts, AdminURL: p.URL("postgres"), Timeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(&syncBuffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	for range 2 { // connecting, then reconnecting
		c.Check(ctx)
		if ctx.Err() != nil {
			t.Fatal("a health round did not end")
		}
		if !isPrimary(c, pa) {
			t.Errorf("primary lost: %s", describe(c.Hosts()))
		}
		for _, h := range c.Hosts()[1:] {
			if h.Role != topology.RoleDown || h.Err == nil {
				t.Errorf("%s: role %s, err %v", h.Name, h.Role, h.Err)
			}
		}
	}
	// A cancelled context ends a round at once and changes nothing.
	cancelled, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	c.Check(cancelled)
	if !isPrimary(c, pa) {
		t.Errorf("a cancelled round changed the snapshot: %s", describe(c.Hosts()))
	}
}

// listen serves each connection with serve, then holds it open until the
// test ends; it returns the address.
func listen(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				serve(conn)
				select {
				case <-done:
				case <-time.After(patience):
				}
			})
		}
	})
	t.Cleanup(func() {
		close(done)
		l.Close()
		wg.Wait()
	})
	return l.Addr().String()
}
