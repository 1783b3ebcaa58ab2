package sessionmode

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vitalproxy/vitalproxy/proxy/notify"
	"github.com/vitalproxy/vitalproxy/proxy/rawio"
)

// tlsCopyBuffer is the server-to-client copy buffer of the goroutine
// path (TLS on either side): one TLS record.
const tlsCopyBuffer = 16 << 10

// Plain reports whether c is a plain TCP or Unix socket, which the event
// loops can forward (TLS needs the goroutine copy).
func Plain(c net.Conn) bool {
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

// Options are what Run needs to know about one session.
type Options struct {
	// Loops forward plain sockets; nil: goroutine copies.
	Loops *Loops
	// MaxMessageSize bounds a client message's body (0: no bound).
	MaxMessageSize int
	// Channels is the tenant's notification channel namespace (nil: no
	// message is read whole).
	Channels *notify.Namespace
	// Forced is set, from another goroutine, when the proxy closes the
	// session because the drain deadline passed.
	Forced *atomic.Bool
	// ForcedMessage, when set and holding a message once Forced is set,
	// is what the client is told (FATAL 57P01) instead of the shutdown
	// message.
	ForcedMessage *atomic.Pointer[string]
}

// forcedMessage is the FATAL message of a forced end.
func (o *Options) forcedMessage() string {
	if o.ForcedMessage != nil {
		if m := o.ForcedMessage.Load(); m != nil {
			return *m
		}
	}
	return "terminating connection because the proxy is shutting down"
}

// framers returns the session's client and server framers: header-only
// framing that bounds client messages and keeps Terminate from the
// backend, plus the tenant's notification channel namespace.
func (o *Options) framers() (fromClient, fromServer framer) {
	fromClient = framer{fromClient: true, maxLen: o.MaxMessageSize, ns: o.Channels}
	// The proxy consumed the backend's ReadyForQuery before handing over.
	fromServer = framer{ns: o.Channels, status: 'I'}
	return fromClient, fromServer
}

var errProtocol = errors.New("invalid message length from client")

// clientBufferSize is the client-to-server copy buffer.
const clientBufferSize = 16 << 10

// End says why forwarding ended.
type End int

// The ends of forwarding.
const (
	// EndClient: the client ended the session (Terminate or hang-up).
	EndClient End = iota
	// EndServer: the backend went away (or sent a bad header).
	EndServer
	// EndShutdown: Options.Forced was set.
	EndShutdown
	// EndProtocol: the client sent a bad or too large message header.
	EndProtocol
)

// Result says how a forwarded session ended. Unless it ended with
// EndClient, the client was told why with a FATAL ErrorResponse.
type Result struct {
	End End
	// Reusable: the client ended first and the backend is in step (no
	// stream stopped inside a message), so it may be reset and reused.
	Reusable bool
	// Idle (EndClient only): the server answered every request and is
	// idle outside a transaction, so a reset has nothing to end first.
	Idle bool
	// Server is the backend connection to reset when Reusable: the event
	// loops hand the socket back as a new connection.
	Server net.Conn
	// Bytes passed on in each direction, and notifications kept from the
	// client.
	C2S, S2C, Dropped int64
}

// Forwarder forwards one session-mode session. The zero value is ready;
// Run belongs to the session's goroutine, Kill may be called from any.
type Forwarder struct {
	mu sync.Mutex
	// serverFd is the backend descriptor an event loop forwards, valid
	// while looping.
	serverFd int
	looping  bool
}

// Run moves bytes between client and server until one side ends; the
// first end wins. Both directions are framed by header (see framer); only
// a Query, a Parse or a NotificationResponse is ever read whole, to keep
// notification channels in the tenant's namespace. Plain sockets go to an
// event loop when o.Loops is set, anything else (TLS) through one
// goroutine per direction. Run closes the client connection; the server
// connection is Result.Server when reusable, else closed or to be closed
// by the caller.
func (f *Forwarder) Run(client, server net.Conn, o Options) Result {
	if o.Loops != nil && Plain(client) && Plain(server) {
		if res, ok := f.forwardLoop(o.Loops, client, server, &o); ok {
			return res
		}
	}
	var first atomic.Int32
	type c2sResult struct {
		n   int64
		err error
	}
	c2sDone := make(chan c2sResult, 1)
	fromClient, fromServer := o.framers()
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
	var res Result
	res.S2C, _ = pipe(client, server, &fromServer, make([]byte, tlsCopyBuffer))
	serverFirst := first.CompareAndSwap(endNone, endServer)
	if serverFirst {
		// Unblock the client reader.
		_ = client.SetReadDeadline(time.Unix(1, 0))
	}
	c2s := <-c2sDone
	res.C2S = c2s.n
	switch {
	case o.Forced.Load():
		res.End = EndShutdown
		sendFatal(client, codeAdminShutdown, o.forcedMessage())
	case serverFirst:
		// The backend went away (or the client stopped reading, in which
		// case this write fails quietly). A backend that is terminated
		// sends its own FATAL first; one that crashed does not.
		res.End = EndServer
		sendFatal(client, codeConnectionFailure, "server connection lost")
	case errors.Is(c2s.err, errMessageTooLarge):
		res.End = EndProtocol
		sendFatal(client, codeProtocolViolation, "message too large")
	case errors.Is(c2s.err, errProtocol):
		res.End = EndProtocol
		sendFatal(client, codeProtocolViolation, "invalid message length")
	default:
		res.End = EndClient
		res.Reusable = !fromServer.midMessage() && !fromClient.midMessage()
		res.Idle = idleAfter(&fromClient, &fromServer)
	}
	_ = client.Close()
	_ = server.SetReadDeadline(time.Time{})
	if res.Reusable {
		res.Server = server
	}
	res.Dropped = fromServer.dropped
	return res
}

// SQLSTATE codes of the FATAL messages that end forwarding.
const (
	codeProtocolViolation = "08P01"
	codeConnectionFailure = "08006"
	codeAdminShutdown     = "57P01"
)

// fatalMessage encodes a FATAL ErrorResponse.
func fatalMessage(code, message string) ([]byte, error) {
	return (&pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                code,
		Message:             message,
	}).Encode(nil)
}

// sendFatal writes one FATAL ErrorResponse to the client, best effort,
// under its own short deadline.
func sendFatal(c net.Conn, code, message string) {
	b, err := fatalMessage(code, message)
	if err != nil {
		return
	}
	_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = c.Write(b)
}
