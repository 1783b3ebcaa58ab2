package proxy

import (
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/vitalproxy/vitalproxy/proxy/rawio"
)

// tlsCopyBuffer is the server-to-client copy buffer of the goroutine
// path (TLS on either side): one TLS record.
const tlsCopyBuffer = 16 << 10

// isPlain reports whether c is a plain TCP or Unix socket, which the event
// loops can forward (TLS needs the goroutine copy).
func isPlain(c net.Conn) bool {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn, *rawio.Conn:
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

// pipe copies src to dst through fr until either fails or fr stops the
// session; buf is reused.
func pipe(dst, src net.Conn, fr *framer, buf []byte) (int64, error) {
	var total int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			out, stop := fr.feed(buf[:n])
			if len(out) > 0 {
				if _, werr := dst.Write(out); werr != nil {
					return total, werr
				}
				total += int64(len(out))
			}
			if stop != nil {
				return total, stop
			}
		}
		if err != nil {
			return total, err
		}
	}
}

// framers returns the session's client and server framers: header-only
// framing that bounds client messages and keeps Terminate from the
// backend, plus the tenant's notification channel namespace.
func (s *session) framers() (fromClient, fromServer framer) {
	ns := s.rt.channels(s.tenantID)
	var backendPID uint32
	if s.backend != nil && s.backend.Conn != nil {
		backendPID = s.backend.PID
	}
	fromClient = framer{fromClient: true, maxLen: s.rt.cfg.Limits.MaxMessageSize, ns: ns}
	// The proxy consumed the backend's ReadyForQuery before handing over.
	fromServer = framer{ns: ns, backendPID: backendPID, clientPID: s.key.pid, status: 'I'}
	return fromClient, fromServer
}

var errProtocol = errors.New("invalid message length from client")

// clientBufferSize is the client-to-server copy buffer.
const clientBufferSize = 16 << 10

// forward moves bytes between the client and the backend until one side
// ends; the first end wins. Both directions are framed by header (see
// framer); only a Query, a Parse or a NotificationResponse is ever read
// whole, to keep notification channels in the tenant's namespace. It
// reports whether the backend may be reset and reused: true when the client
// ended first (Terminate or hang-up) and the backend was not touched since.
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
	fromClient, fromServer := s.framers()
	go func() {
		buf := make([]byte, clientBufferSize)
		n, err := pipe(server, client, &fromClient, buf)
		if first.CompareAndSwap(endNone, endClient) {
			// Stop the other direction without closing the backend: it
			// may serve another client after a reset.
			_ = server.SetReadDeadline(time.Unix(1, 0))
		}
		c2sDone <- c2sResult{n, err}
	}()
	n, _ := pipe(client, server, &fromServer, make([]byte, tlsCopyBuffer))
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
		reusable = !fromServer.midMessage() && !fromClient.midMessage()
		s.idleAtEnd = idleAfter(&fromClient, &fromServer)
	}
	_ = client.Close()
	_ = server.SetReadDeadline(time.Time{})
	tm.c2s.Add(float64(s.c2s))
	tm.s2c.Add(float64(s.s2c))
	tm.dropped.Add(float64(fromServer.dropped))
	return reason, reusable
}
