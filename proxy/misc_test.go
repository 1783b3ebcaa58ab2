package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vitalproxy/vitalproxy/proxy/sessionmode"
)

type fakeTarget struct{ n int }

func (f *fakeTarget) cancel(context.Context) error { f.n++; return nil }

func TestCancelMap(t *testing.T) {
	m := newCancelMap()
	a, b := &fakeTarget{}, &fakeTarget{}
	ka, err := m.register(a)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := m.register(b)
	if err != nil {
		t.Fatal(err)
	}
	if ka.pid == 0 || ka.pid > 1<<31-1 || ka.pid == kb.pid {
		t.Fatalf("pids %d %d", ka.pid, kb.pid)
	}
	wrong := ka.secret
	wrong[0] ^= 1
	tests := []struct {
		name   string
		pid    uint32
		secret []byte
		want   canceler
		result cancelLookup
	}{
		{"right key", ka.pid, ka.secret[:], a, cancelFound},
		{"other session's key", ka.pid, kb.secret[:], nil, cancelRefused},
		{"wrong key", ka.pid, wrong[:], nil, cancelRefused},
		{"short key", ka.pid, ka.secret[:3], nil, cancelRefused},
		{"unknown pid", ka.pid ^ kb.pid ^ 1, ka.secret[:], nil, cancelUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, res := m.lookup(tt.pid, tt.secret)
			if got != tt.want || res != tt.result {
				t.Fatalf("lookup = %v %s, want %v %s", got, res, tt.want, tt.result)
			}
		})
	}
	m.remove(ka)
	if _, res := m.lookup(ka.pid, ka.secret[:]); res != cancelUnknown {
		t.Fatalf("removed key still found: %s", res)
	}
	if m.len() != 1 {
		t.Fatalf("len = %d", m.len())
	}
}

func TestSessionTransitions(t *testing.T) {
	legal := [][]sessionState{
		{stateStartup, stateTLS, stateStartup, stateAuthenticating, stateConnecting, stateInjecting, stateForwarding, stateDraining, stateClosed},
		{stateStartup, stateClosed},
		{stateStartup, stateAuthenticating, stateClosed},
	}
	for _, path := range legal {
		s := &session{}
		for _, st := range path[1:] {
			if err := s.transition(st); err != nil {
				t.Fatalf("path %v: %v", path, err)
			}
		}
	}
	illegal := [][2]sessionState{
		{stateStartup, stateForwarding},
		{stateAuthenticating, stateInjecting},
		{stateConnecting, stateForwarding},
		{stateTLS, stateTLS},
		{stateClosed, stateStartup},
		{stateClosed, stateClosed},
		{stateForwarding, stateAuthenticating},
	}
	for _, p := range illegal {
		s := &session{}
		s.state.Store(int32(p[0]))
		if err := s.transition(p[1]); err == nil {
			t.Errorf("%s -> %s allowed", p[0], p[1])
		}
	}
}

func TestTenantLabelsCap(t *testing.T) {
	l := newTenantLabels(2)
	got := []string{l.label("a"), l.label("b"), l.label("c"), l.label("a"), l.label("d")}
	want := []string{"a", "b", otherTenant, "a", otherTenant}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("labels %v, want %v", got, want)
	}
	var wg sync.WaitGroup
	l = newTenantLabels(10)
	for i := range 50 {
		wg.Add(1)
		go func() { defer wg.Done(); l.label(string(rune('a' + i%26))) }()
	}
	wg.Wait()
	if len(l.seen) != 10 {
		t.Fatalf("seen %d tenants, cap 10", len(l.seen))
	}
}

func TestMetricsLintAndValues(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, 1, "v1.2.3")
	tm := m.forTenant("digital-health-startup")
	other := m.forTenant("vital-platform")
	tm.connections.Inc()
	tm.c2s.Add(10)
	other.s2c.Add(5)
	m.cancelRequests.WithLabelValues(string(cancelUnknown)).Inc()
	m.connectionAttempts.WithLabelValues(reasonAuthFailed.String()).Inc()
	m.sessionSetup.Observe(0.01)
	m.isolationCheck.WithLabelValues("tenant_roles_safe").Set(1)

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	checks := []struct {
		c    prometheus.Collector
		want float64
	}{
		{m.bytes.WithLabelValues("digital-health-startup", dirClientToServer), 10},
		{m.bytes.WithLabelValues(otherTenant, dirServerToClient), 5},
		{m.clientConnections.WithLabelValues("digital-health-startup"), 1},
		{m.cancelRequests.WithLabelValues("unknown"), 1},
		{m.cancelRequests.WithLabelValues("forwarded"), 0},
		{m.connectionAttempts.WithLabelValues("auth_failed"), 1},
	}
	for i, c := range checks {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("check %d: got %v, want %v", i, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.buildInfo); n != 1 {
		t.Errorf("build_info series = %d", n)
	}
	const want = `
# HELP vitalproxy_build_info Build information; always 1.
# TYPE vitalproxy_build_info gauge
`
	if err := testutil.CollectAndCompare(m.buildInfo, strings.NewReader(want+buildInfoLine())); err != nil {
		t.Error(err)
	}
}

func buildInfoLine() string {
	return `vitalproxy_build_info{goversion="` + runtime.Version() + `",version="v1.2.3"} 1` + "\n"
}

// TestAcceptedConnIsPlain: accepted sockets must stay eligible for the
// event loops (a wrapper they do not recognise sends every session-mode
// session to the slower goroutine copy, which no other test notices).
func TestAcceptedConnIsPlain(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	dialed, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dialed.Close()
	raw := <-accepted
	if raw == nil {
		t.Fatal("accept failed")
	}
	defer raw.Close()
	pipeA, pipeB := net.Pipe()
	defer pipeA.Close()
	defer pipeB.Close()
	for _, tc := range []struct {
		name string
		conn net.Conn
		want bool
	}{
		{"accepted TCP socket", acceptedConn(raw), true},
		{"plain TCP socket", dialed, true},
		{"TLS over an accepted socket", tls.Server(acceptedConn(raw), &tls.Config{}), false},
		{"in-memory pipe", acceptedConn(pipeA), false},
	} {
		if got := sessionmode.Plain(tc.conn); got != tc.want {
			t.Errorf("sessionmode.Plain(%s, %T) = %v, want %v", tc.name, tc.conn, got, tc.want)
		}
	}
}
