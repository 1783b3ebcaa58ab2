package proxy

import (
	"io"
	"net"
	"sync/atomic"
)

// tlsCopyBuffer is the copy buffer size when the kernel cannot splice
// (TLS on either side): one TLS record.
const tlsCopyBuffer = 16 << 10

// copyConn copies src to dst until either fails. Between two plain
// sockets io.Copy hands the work to the kernel (splice) and no user-space
// buffer exists; otherwise one small buffer lives as long as the copy.
func copyConn(dst, src net.Conn) (int64, error) {
	if isPlain(dst) && isPlain(src) {
		return io.Copy(dst, src)
	}
	buf := make([]byte, tlsCopyBuffer)
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
}

func isPlain(c net.Conn) bool {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
		return true
	}
	return false
}

// Which direction ended first.
const (
	endNone int32 = iota
	endClient
	endServer
)

// forward moves bytes unchanged between the client and the upstream backend
// until one side ends; the first end wins and closes both. Nothing is
// parsed. The client-to-server copy runs in its own goroutine, the other
// in the session's. Bytes are counted once, when the copies return.
func (s *session) forward(tm tenantMetrics) endReason {
	client, server := s.conn, s.up.conn
	var first atomic.Int32
	c2sDone := make(chan int64, 1)
	go func() {
		n, _ := copyConn(server, client)
		if first.CompareAndSwap(endNone, endClient) {
			// Unblock the other direction.
			_ = server.Close()
		}
		c2sDone <- n
	}()
	n, _ := copyConn(client, server)
	s.s2c = n
	serverFirst := first.CompareAndSwap(endNone, endServer)
	_ = s.transition(stateDraining)
	var reason endReason
	switch {
	case s.forced.Load():
		reason = reasonShutdown
		s.sendFatal(fatal(codeAdminShutdown, "terminating connection because the proxy is shutting down", ""))
	case serverFirst:
		// The backend went away (or the client stopped reading, in which
		// case this write fails quietly). A backend that is terminated
		// sends its own FATAL first; one that crashed does not.
		reason = reasonServerClosed
		s.sendFatal(fatal(codeConnectionFailure, "server connection lost", ""))
	default:
		reason = reasonClientClosed
	}
	_ = server.Close()
	_ = client.Close()
	s.c2s = <-c2sDone
	tm.c2s.Add(float64(s.c2s))
	tm.s2c.Add(float64(s.s2c))
	return reason
}
