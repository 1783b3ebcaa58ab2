package proxy

import (
	"crypto/tls"
	"net"
	"testing"

	"github.com/vitalproxy/vitalproxy/proxy/sessionmode"
)

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
