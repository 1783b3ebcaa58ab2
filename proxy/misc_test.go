package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"testing"

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
