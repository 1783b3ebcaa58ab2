//go:build !linux

package sessionmode

import "net"

// Event-loop forwarding is Linux only; elsewhere sessions use the goroutine
// copy.

// Loops is a group of event loops; elsewhere than on Linux there are none.
type Loops struct{}

// NewLoops returns no loops: sessions use the goroutine copy.
func NewLoops(int) (*Loops, error) { return nil, nil }

// Close does nothing.
func (g *Loops) Close() {}

func (f *Forwarder) forwardLoop(*Loops, net.Conn, net.Conn, *Options) (Result, bool) {
	return Result{}, false
}

// Kill reports false: no loop forwards the session.
func (f *Forwarder) Kill() bool { return false }
