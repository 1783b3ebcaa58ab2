package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"
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

// errClientTerminate means the client sent Terminate: the session ends and
// the backend, which never saw it, can be reset and reused.
var errClientTerminate = errors.New("client sent Terminate")

// errMessageTooLarge means a client message exceeded limits.max_message_size.
var errMessageTooLarge = errors.New("client message too large")

// forwardClient copies client messages to the server until the client
// ends. It looks only at message headers (type and length, never bodies) so
// that it can keep Terminate from the backend, which then stays usable, and
// bound the message size; a header split across reads is held back until it
// is whole, so the backend never sees half a header. buf is reused.
func forwardClient(server, client net.Conn, buf []byte, maxLen int) (int64, error) {
	var (
		total     int64
		remaining int64 // body bytes of the current message still to pass
		hdr       [5]byte
		hdrHave   int
	)
	for {
		// Carry a partial header over to the front of the buffer.
		copy(buf, hdr[:hdrHave])
		n, err := client.Read(buf[hdrHave:])
		n += hdrHave
		hdrHave = 0
		pos, send := 0, n
		for pos < n {
			if remaining > 0 {
				step := min(remaining, int64(n-pos))
				pos += int(step)
				remaining -= step
				continue
			}
			if n-pos < 5 {
				hdrHave = copy(hdr[:], buf[pos:n])
				send = pos
				break
			}
			typ := buf[pos]
			length := int64(binary.BigEndian.Uint32(buf[pos+1 : pos+5]))
			if typ == 'X' || length < 4 || (maxLen > 0 && length-4 > int64(maxLen)) {
				if pos > 0 {
					if _, werr := server.Write(buf[:pos]); werr != nil {
						return total, werr
					}
					total += int64(pos)
				}
				switch {
				case typ == 'X':
					return total, errClientTerminate
				case length < 4:
					return total, errProtocol
				default:
					return total, errMessageTooLarge
				}
			}
			pos += 5
			remaining = length - 4
		}
		if send > 0 {
			if _, werr := server.Write(buf[:send]); werr != nil {
				return total, werr
			}
			total += int64(send)
		}
		if err != nil {
			return total, err
		}
	}
}

var errProtocol = errors.New("invalid message length from client")

// clientBufferSize is the client-to-server copy buffer.
const clientBufferSize = 16 << 10

// forward moves bytes unchanged between the client and the backend until one
// side ends; the first end wins. Server-to-client bytes are spliced without
// parsing; client-to-server bytes are framed by header only (see
// forwardClient). It reports whether the backend may be reset and reused:
// true when the client ended first (Terminate or hang-up) and the backend
// was not touched since.
func (s *session) forward(tm tenantMetrics) (endReason, bool) {
	client, server := s.conn, s.backend.Conn.Conn
	if s.srv.loops != nil && isPlain(client) && isPlain(server) {
		if res, ok := s.forwardLoop(s.srv.loops); ok {
			return s.ended(tm, res)
		}
	}
	var first atomic.Int32
	type c2sResult struct {
		n   int64
		err error
	}
	c2sDone := make(chan c2sResult, 1)
	go func() {
		buf := make([]byte, clientBufferSize)
		n, err := forwardClient(server, client, buf, s.rt.cfg.Limits.MaxMessageSize)
		if first.CompareAndSwap(endNone, endClient) {
			// Stop the other direction without closing the backend: it
			// may serve another client after a reset.
			_ = server.SetReadDeadline(time.Unix(1, 0))
		}
		c2sDone <- c2sResult{n, err}
	}()
	n, _ := copyConn(client, server)
	s.s2c = n
	serverFirst := first.CompareAndSwap(endNone, endServer)
	_ = s.transition(stateDraining)
	if serverFirst {
		// Unblock the client reader.
		_ = client.SetReadDeadline(time.Unix(1, 0))
	}
	res := <-c2sDone
	s.c2s = res.n
	var reason endReason
	reusable := false
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
	case errors.Is(res.err, errMessageTooLarge):
		reason = reasonProtocolError
		s.sendFatal(fatal(codeProtocolViolation, "message too large", ""))
	case errors.Is(res.err, errProtocol):
		reason = reasonProtocolError
		s.sendFatal(fatal(codeProtocolViolation, "invalid message length", ""))
	default:
		reason = reasonClientClosed
		reusable = true
	}
	_ = client.Close()
	_ = server.SetReadDeadline(time.Time{})
	tm.c2s.Add(float64(s.c2s))
	tm.s2c.Add(float64(s.s2c))
	return reason, reusable
}
