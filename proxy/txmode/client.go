package txmode

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/rawio"
)

// ErrServerLost means the backend died while the client was inside a
// transaction block; the client was sent FATAL 08006 and the session ended.
var ErrServerLost = errors.New("server connection lost inside a transaction block")

// errTerminate is the client's Terminate message.
var errTerminate = errors.New("client sent Terminate")

// maxAcquireAttempts bounds how many unusable backends one acquisition
// skips before it gives up.
const maxAcquireAttempts = 4

// setTenantContextSQL re-asserts the tenant context after a reset (the
// tenant id is a bind parameter) and fails, dividing by zero, unless the
// session runs as its login role again.
const setTenantContextSQL = "SELECT public.set_tenant_context($1::uuid), 1 / (current_user = session_user)::int"

// aLongTimeAgo is a deadline that has passed.
var aLongTimeAgo = time.Unix(1, 0)

// Client is one client connection served in transaction mode: it borrows a
// backend from the pool when a transaction starts and returns it when the
// server reports the transaction over (ReadyForQuery 'I' with nothing else
// in flight).
//
// Run's goroutine reads client messages, rewrites prepared-statement names
// and writes them to the backend; when the client has sent everything a
// round trip needs (a Sync, a Query) it reads the backend's answers
// itself, copies them to the client and returns the backend when the
// transaction is over. No goroutine is woken per transaction. When the
// client must be read while the server answers (COPY FROM STDIN, extended
// protocol without Sync, as with Flush), a second goroutine, started once,
// reads the backend until the server owes nothing. The state they share is
// guarded by mu; Cancel may be called from any goroutine.
type Client struct {
	conn net.Conn
	opts Options
	log  *slog.Logger

	// Owned by Run's goroutine.
	in           msgReader
	big          []byte // body of a rewritten message larger than in.buf
	out          []byte // the engine's own messages to the client
	rewritten    []byte // a Query or Parse whose channels were namespaced
	notification []byte // a NotificationResponse mapped out of the namespace
	stmts        map[string]*clientStmt
	unnamed      []byte // the client's unnamed statement (Parse body after the name)
	hasUnnamed   bool
	unnamedHints uint8
	midStream    bool // a message is half written to the server
	stmtSalt     [32]byte
	privSalt     [16]byte
	resetMsgs    []byte
	discardMsgs  []byte
	resetZ       int

	attachCh   chan *pool.Backend
	sDone      chan struct{}
	discardOut atomic.Bool   // the client is gone: drop what the server sends
	waitSince  atomic.Uint64 // watchdog tick when the client goroutine began waiting for the server; 0: not waiting
	c2s, s2c   atomic.Int64
	ran        atomic.Bool

	mu   sync.Mutex
	cond sync.Cond // on mu: holding or cancelling changed
	// Guarded by mu.
	b           *pool.Backend
	st          *serverState
	wst         *serverState // backend whose wbuf the client goroutine fills
	pending     int          // ReadyForQuery messages the server owes
	partial     bool         // extended-protocol messages sent since the last Sync
	holding     bool         // the client goroutine is writing to the backend
	async       bool         // the server goroutine is reading the backend
	sStarted    bool         // the server goroutine runs
	sWaiting    bool         // waiting on cond for !holding or no cancelling
	gone        bool         // the client left; the backend is being cleaned
	cancelling  int
	txStatus    byte
	q           fifo
	want        *settings // settings the client expects
	skip        bool      // drop client messages up to the next Sync
	unnamedHere bool      // the backend has the client's unnamed statement
	dirtyAttach bool      // settings changed since the backend was attached
	attachedAt  time.Time
	endErr      error        // why the server goroutine ended the session
	waitSt      *serverState // backend the client goroutine waits on
	interrupted bool         // the watchdog set a past read deadline on waitSt
}

// NewClient prepares to serve conn, a client that has been authenticated
// and told AuthenticationOk, its ParameterStatus messages, BackendKeyData
// and ReadyForQuery. No byte past its last startup or authentication
// message may have been read from conn. The caller keeps ownership of conn
// and closes it after Run returns.
func NewClient(conn net.Conn, opts Options) (*Client, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	startup, err := newSettings(opts.StartupParams, opts.StatementTimeout, opts.IdleInTransactionTimeout)
	if err != nil {
		return nil, err
	}
	conn = rawio.Wrap(conn)
	c := &Client{
		conn:     conn,
		opts:     opts,
		log:      opts.Logger,
		in:       newMsgReader(conn, clientReadBuffer),
		stmts:    make(map[string]*clientStmt),
		attachCh: make(chan *pool.Backend, 1),
		sDone:    make(chan struct{}),
		txStatus: 'I',
		want:     startup,
	}
	c.cond.L = &c.mu
	h := sha256.New()
	for _, p := range startup.pairs {
		h.Write([]byte(p.name))
		h.Write([]byte{0})
		h.Write([]byte(p.value))
		h.Write([]byte{0})
	}
	h.Sum(c.stmtSalt[:0])
	if _, err := rand.Read(c.privSalt[:]); err != nil {
		return nil, fmt.Errorf("txmode: %w", err)
	}
	c.resetMsgs = appendQuery(nil, "RESET ROLE; RESET ALL")
	c.discardMsgs = appendQuery(nil, "DISCARD ALL")
	c.resetZ = 1
	if id := opts.Key.TenantID; id != "" && !opts.Key.Shared {
		var ctxMsgs []byte
		ctxMsgs, _ = (&pgproto3.Parse{Query: setTenantContextSQL}).Encode(ctxMsgs)
		ctxMsgs, _ = (&pgproto3.Bind{Parameters: [][]byte{[]byte(id)}}).Encode(ctxMsgs)
		ctxMsgs, _ = (&pgproto3.Execute{}).Encode(ctxMsgs)
		ctxMsgs = appendSync(ctxMsgs)
		c.resetMsgs = append(c.resetMsgs, ctxMsgs...)
		c.discardMsgs = append(c.discardMsgs, ctxMsgs...)
		c.resetZ = 2
	}
	return c, nil
}

// BytesFromClient and BytesToClient count the bytes moved so far.
func (c *Client) BytesFromClient() int64 { return c.c2s.Load() }

// BytesToClient counts the bytes written to the client so far.
func (c *Client) BytesToClient() int64 { return c.s2c.Load() }

// Cancel asks PostgreSQL to cancel what the backend serving the client is
// running now. Without a backend it does nothing. The backend is not
// returned to the pool until the cancel request has been delivered, so the
// request cannot reach the backend's next client.
func (c *Client) Cancel(ctx context.Context) error {
	c.mu.Lock()
	b := c.b
	if b == nil {
		c.mu.Unlock()
		return nil
	}
	c.cancelling++
	c.mu.Unlock()
	err := b.Cancel(ctx)
	c.mu.Lock()
	c.cancelling--
	if c.sWaiting {
		c.cond.Broadcast()
	}
	c.mu.Unlock()
	return err
}

// Run serves the client until it leaves, ctx ends or the session fails. It
// always returns its backend to the pool, clean, or closes it. It returns
// nil when the client terminated or disconnected; an error wrapping
// ErrProtocol or ErrServerLost after telling the client (FATAL); an error
// wrapping pool.ErrClosed after telling the client the proxy is shutting
// down; ctx's error when ctx ended (nothing was sent: the caller may send
// its own FATAL). Run may be called once.
func (c *Client) Run(ctx context.Context) error {
	if !c.ran.CompareAndSwap(false, true) {
		return errors.New("txmode: Run called twice")
	}
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetReadDeadline(aLongTimeAgo) })
	dog.add(c)
	c.mu.Lock()
	err := c.loop(ctx)
	c.finish(err) // unlocks
	dog.remove(c)
	stop()
	_ = c.conn.SetDeadline(time.Time{})

	c.mu.Lock()
	endErr := c.endErr
	c.mu.Unlock()
	switch {
	case endErr != nil:
		return endErr
	case errors.Is(err, ErrProtocol):
		c.sendFatal(codeProtocolViolation, protocolMessage(err))
		return err
	case errors.Is(err, pool.ErrClosed):
		c.sendFatal(codeAdminShutdown, "terminating connection because the proxy is shutting down")
		return err
	case ctx.Err() != nil:
		return fmt.Errorf("txmode: %w", ctx.Err())
	case errors.Is(err, errTerminate), isDisconnect(err):
		return nil
	default:
		return err
	}
}

func protocolMessage(err error) string {
	msg := err.Error()
	if p := ErrProtocol.Error() + ": "; len(msg) > len(p) && msg[:len(p)] == p {
		return msg[len(p):]
	}
	return msg
}

// isDisconnect reports whether err is a client read or write failure: the
// client is gone (or stopped reading and was cut off).
func isDisconnect(err error) bool {
	var ce *clientIOError
	return errors.As(err, &ce)
}

// clientIOError wraps a failed read from or write to the client.
type clientIOError struct{ err error }

func (e *clientIOError) Error() string { return "client connection: " + e.err.Error() }
func (e *clientIOError) Unwrap() error { return e.err }

// sendFatal tells the client why the session ends, best effort.
func (c *Client) sendFatal(code, msg string) {
	_ = c.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	n, _ := c.conn.Write(appendError(nil, 'E', severityFatal, code, msg))
	c.s2c.Add(int64(n))
}

// finish cleans the backend, if any, and stops the server goroutine. Caller
// holds c.mu; finish releases it.
func (c *Client) finish(cause error) {
	c.gone = true
	c.discardOut.Store(true)
	// The server goroutine may be blocked writing to a client that no
	// longer reads.
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.opts.CleanupTimeout))
	if c.b != nil {
		b, st := c.b, c.st
		c.log.Debug("client left with a backend attached", "pid", b.PID, "cause", cause)
		if c.midStream {
			// Half a message went out: the backend cannot be cleaned.
			st.deadline = true
			_ = st.conn.SetDeadline(aLongTimeAgo)
		} else {
			// End any COPY FROM STDIN and extended-protocol segment;
			// what is left open is rolled back when the server has
			// answered.
			c.hold()
			st.wbuf = appendCopyFail(st.wbuf, "client disconnected")
			st.wbuf = appendSync(st.wbuf)
			c.expectZ(true)
			c.partial = false
			_ = st.conn.SetReadDeadline(time.Now().Add(c.opts.CleanupTimeout))
			st.deadline = true
		}
		c.flushServer()
		if !c.async && c.b == b {
			c.serverLoop(b, st, false)
		}
	} else {
		c.flushServer()
	}
	started := c.sStarted
	c.mu.Unlock()
	if started {
		close(c.attachCh)
		<-c.sDone
	}
}

// loop reads and forwards client messages. Caller holds c.mu; loop returns
// with it held.
func (c *Client) loop(ctx context.Context) error {
	for {
		if c.in.buffered() < 5 {
			if err := c.readClient(5); err != nil {
				return err
			}
			continue
		}
		typ, n, err := parseHeader(c.in.buf[c.in.r:c.in.r+5], c.opts.MaxMessageSize)
		if err != nil {
			return err
		}
		switch typ {
		case 'X':
			return errTerminate
		case 'P', 'B', 'D', 'C':
			msg, err := c.readWhole(n)
			if err != nil {
				return err
			}
			if err := c.extended(ctx, typ, msg); err != nil {
				return err
			}
		default:
			if 5+n > len(c.in.buf) {
				if err := c.large(ctx, typ, n); err != nil {
					return err
				}
				continue
			}
			for c.in.buffered() < 5+n {
				if err := c.readClient(5 + n); err != nil {
					return err
				}
			}
			msg := c.in.buf[c.in.r : c.in.r+5+n]
			c.in.r += 5 + n
			if err := c.simple(ctx, typ, msg); err != nil {
				return err
			}
		}
		if c.holding && len(c.wst.wbuf) >= flushThreshold {
			c.bigWrite()
		}
	}
}

// bigWrite writes a large wbuf. Answers to what went before may fill the
// server's output while it is written, so the server goroutine reads them
// meanwhile. Caller holds c.mu and the backend.
func (c *Client) bigWrite() {
	if !c.async && c.b != nil && c.b.Data == c.wst {
		c.goAsync()
	}
	c.writeServer()
}

// readClient flushes what is on its way to the server, waits for the
// server's answers when the client has asked for them all (see Client),
// then reads more from the client, to have at least need bytes buffered
// eventually. Caller holds c.mu; it is released while blocked.
func (c *Client) readClient(need int) error {
	c.beforeClientRead()
	c.mu.Unlock()
	err := c.in.fill(need)
	c.mu.Lock()
	if err != nil {
		return &clientIOError{err}
	}
	return nil
}

// beforeClientRead is done before the client goroutine blocks on the
// client: what is on its way to the server is written, then, if the server
// owes answers to a complete request, they are read and forwarded here (no
// second goroutine is involved); if the client may be waiting for answers
// to an unfinished one (Flush), the server goroutine reads them meanwhile.
// Caller holds c.mu.
func (c *Client) beforeClientRead() {
	if c.askAndWait() {
		c.serverLoop(c.b, c.st, false)
		return
	}
	c.flushServer()
	if c.b != nil && !c.async && !c.midStream {
		switch {
		case c.partial:
			c.goAsync()
		case c.pending > 0:
			c.serverLoop(c.b, c.st, false)
		}
	}
}

// askAndWait reports whether what is on its way to the server asks for an
// answer that the client goroutine is about to wait for, on a plain
// socket with nothing left unread: then wbuf is sent as the wait begins
// (waitServer), saving a receive that would find nothing. It ends the
// hold. Caller holds c.mu.
func (c *Client) askAndWait() bool {
	st := c.wst
	if !c.holding || st == nil || st != c.st || c.b == nil || c.async || c.gone || c.midStream || c.partial ||
		c.pending == 0 || !st.asked || c.sWaiting || st.in.buffered() != 0 || len(st.wbuf) == 0 {
		return false
	}
	if _, ok := st.conn.(*rawio.Conn); !ok {
		return false
	}
	st.sendFirst = true
	c.holding, c.wst = false, nil
	return true
}

// readWhole returns the whole current message (header included), which is
// consumed. A message larger than the read buffer goes to c.big. Caller
// holds c.mu.
func (c *Client) readWhole(n int) ([]byte, error) {
	if 5+n <= len(c.in.buf) {
		for c.in.buffered() < 5+n {
			if err := c.readClient(5 + n); err != nil {
				return nil, err
			}
		}
		msg := c.in.buf[c.in.r : c.in.r+5+n]
		c.in.r += 5 + n
		return msg, nil
	}
	if cap(c.big) < 5+n {
		c.big = make([]byte, 5+n)
	}
	msg := c.big[:5+n]
	got := copy(msg, c.in.buf[c.in.r:c.in.w])
	c.in.r += got
	if got < len(msg) {
		c.beforeClientRead()
		c.mu.Unlock()
		_, err := io.ReadFull(c.conn, msg[got:])
		c.mu.Lock()
		if err != nil {
			return nil, &clientIOError{err}
		}
	}
	if cap(c.big) > 1<<20 {
		defer func() { c.big = nil }() // don't keep a large buffer for an idle client
	}
	return msg, nil
}

// hold marks the attached backend as being written to, so that the server
// goroutine does not return it meanwhile. Caller holds c.mu.
func (c *Client) hold() {
	if !c.holding {
		c.holding, c.wst = true, c.st
	}
}

// busy reports whether the backend has a reason to see a message that
// asks for no answer (Flush, COPY data): something is in flight or being
// written. Caller holds c.mu.
func (c *Client) busy() bool {
	return c.b != nil && (c.holding || c.pending > 0 || c.partial)
}

// expectZ records a message that the server answers with ReadyForQuery.
// Caller holds c.mu and the backend.
func (c *Client) expectZ(swallow bool) {
	c.q.push(expect{kind: 'Z', swallow: swallow})
	c.pending++
	c.wst.seg++
	c.wst.asked = true
}

// extended forwards Parse, Bind, Describe and Close. Caller holds c.mu.
func (c *Client) extended(ctx context.Context, typ byte, msg []byte) error {
	if c.skip {
		return nil
	}
	if c.b == nil {
		if err := c.attach(ctx); err != nil {
			return c.refuse(ctx, err, typ)
		}
	}
	c.hold()
	c.partial = true
	st := c.st
	if typ == 'P' && c.opts.Channels != nil {
		if m, ok := c.opts.Channels.QueryMessage(c.rewritten[:0], msg); ok {
			c.rewritten, msg = m, m
		}
	}
	body := msg[5:]
	switch typ {
	case 'P':
		c.parse(st, msg, body)
	case 'B':
		c.bind(st, msg, body)
	case 'D':
		c.describe(st, msg, body)
	case 'C':
		c.closeStmt(st, msg, body)
	}
	return nil
}

// simple forwards every other message that fits the read buffer. Caller
// holds c.mu.
func (c *Client) simple(ctx context.Context, typ byte, msg []byte) error {
	switch typ {
	case 'S':
		if c.skip || c.b == nil {
			// Nothing in flight: answer for the server.
			c.skip = false
			return c.writeClient(appendReady(c.out[:0], 'I'))
		}
		c.hold()
		c.wst.wbuf = append(c.wst.wbuf, msg...)
		c.partial = false
		c.expectZ(false)
	case 'Q', 'F':
		if c.skip {
			return nil
		}
		if c.b == nil {
			if err := c.attach(ctx); err != nil {
				return c.refuse(ctx, err, typ)
			}
		}
		c.hold()
		c.beginSimple()
		if typ == 'Q' && c.opts.Channels != nil {
			if m, ok := c.opts.Channels.QueryMessage(c.rewritten[:0], msg); ok {
				c.rewritten, msg = m, m
			}
		}
		c.wst.wbuf = append(c.wst.wbuf, msg...)
		c.expectZ(false)
		if typ == 'Q' {
			if h := scanHints(msg[5:]); h != 0 {
				c.applyHints(c.wst, h)
			}
		}
	case 'E':
		if c.skip {
			return nil
		}
		if c.b == nil {
			if err := c.attach(ctx); err != nil {
				return c.refuse(ctx, err, typ)
			}
		}
		c.hold()
		c.partial = true
		c.wst.wbuf = append(c.wst.wbuf, msg...)
	case 'H', 'd', 'c', 'f':
		if c.skip || !c.busy() {
			return nil // nothing to flush; COPY data outside COPY is ignored
		}
		c.hold()
		c.wst.wbuf = append(c.wst.wbuf, msg...)
	}
	return nil
}

// beginSimple ends an extended-protocol segment that a Query or
// FunctionCall interrupts with a Sync of the engine's own, so that every
// ReadyForQuery can be counted. Caller holds c.mu and the backend.
func (c *Client) beginSimple() {
	if c.partial {
		c.wst.wbuf = appendSync(c.wst.wbuf)
		c.expectZ(true)
		c.partial = false
	}
}

// large streams a Query, FunctionCall, CopyData or CopyFail larger than
// the read buffer. Caller holds c.mu.
func (c *Client) large(ctx context.Context, typ byte, n int) error {
	forward := false
	switch typ {
	case 'Q', 'F':
		if !c.skip {
			if c.b == nil {
				if err := c.attach(ctx); err != nil {
					if err := c.refuse(ctx, err, typ); err != nil {
						return err
					}
					break
				}
			}
			c.hold()
			c.beginSimple()
			c.expectZ(false)
			forward = true
		}
	case 'd', 'f':
		forward = !c.skip && c.busy()
		if forward {
			c.hold()
		}
	default:
		return fmt.Errorf("%w: message type %q of %d bytes is too long", ErrProtocol, typ, n)
	}
	c.in.r += 5
	var st *serverState
	if forward {
		if !c.async && c.b != nil && c.b.Data == c.wst {
			c.goAsync()
		}
		st = c.wst
		st.wbuf = appendHeader(st.wbuf, typ, n)
		c.midStream = true
	}
	for left := n; left > 0; {
		if c.in.buffered() == 0 {
			if forward {
				c.writeServer()
			}
			c.mu.Unlock()
			err := c.in.fill(1)
			c.mu.Lock()
			if err != nil {
				return &clientIOError{err}
			}
		}
		k := min(left, c.in.buffered())
		chunk := c.in.buf[c.in.r : c.in.r+k]
		c.in.r += k
		left -= k
		if !forward {
			continue
		}
		if typ == 'Q' {
			if h := scanHints(chunk); h != 0 {
				c.applyHints(st, h)
			}
		}
		st.wbuf = append(st.wbuf, chunk...)
		if len(st.wbuf) >= flushThreshold {
			c.bigWrite()
		}
	}
	c.midStream = false
	return nil
}

// writeServer writes wbuf to the backend being written to, keeping the
// hold. Caller holds c.mu; it is released during the write.
func (c *Client) writeServer() {
	st := c.wst
	if st == nil || len(st.wbuf) == 0 {
		return
	}
	if c.sWaiting {
		// Whatever was added may need answers: let the server
		// goroutine read again before this write can block.
		c.cond.Broadcast()
	}
	buf := st.wbuf
	c.mu.Unlock()
	_, err := st.conn.Write(buf)
	c.mu.Lock()
	c.c2s.Add(int64(len(buf)))
	st.wbuf, st.asked = buf[:0], false
	if err != nil {
		// The server goroutine's read fails too and discards it.
		c.log.Debug("write to server failed", "error", err)
		_ = st.conn.Close()
	}
}

// flushServer writes wbuf and ends the hold. Caller holds c.mu.
func (c *Client) flushServer() {
	if !c.holding {
		return
	}
	c.writeServer()
	c.holding, c.wst = false, nil
	if c.sWaiting {
		c.cond.Broadcast()
	}
}

// writeClient writes the engine's own message to the client. Caller holds
// c.mu (released during the write) and no backend is serving the client.
func (c *Client) writeClient(b []byte) error {
	c.out = b[:0]
	c.mu.Unlock()
	n, err := c.conn.Write(b)
	c.mu.Lock()
	c.s2c.Add(int64(n))
	if err != nil {
		return &clientIOError{err}
	}
	return nil
}

// attach borrows a backend for the client. Caller holds c.mu; it is
// released while waiting.
func (c *Client) attach(ctx context.Context) error {
	c.flushServer() // leftovers for a backend that died
	want := c.want
	c.mu.Unlock()
	start := time.Now()
	b, st, err := c.acquire(ctx, want, start)
	c.mu.Lock()
	if err != nil {
		return err
	}
	c.b, c.st = b, st
	c.pending, c.partial, c.txStatus = 0, false, 'I'
	c.q.reset()
	c.unnamedHere, c.dirtyAttach = false, false
	c.attachedAt = start
	return nil
}

// queueTimeoutError is pool.ErrQueueTimeout with how long the client waited.
type queueTimeoutError struct{ waited time.Duration }

func (e *queueTimeoutError) Error() string { return pool.ErrQueueTimeout.Error() }
func (e *queueTimeoutError) Unwrap() error { return pool.ErrQueueTimeout }

// acquire borrows a usable backend with want applied; start is about now.
func (c *Client) acquire(ctx context.Context, want *settings, start time.Time) (*pool.Backend, *serverState, error) {
	var lastErr error
	failed, rerouted := "", false
	for i := range maxAcquireAttempts {
		if i > 0 {
			start = time.Now()
		}
		key := c.opts.Key
		if c.opts.Route != nil {
			host, err := c.opts.Route(ctx, failed)
			if err != nil {
				return nil, nil, err
			}
			key.Host = host
		}
		b, err := c.opts.Pool.Acquire(ctx, key)
		if err != nil {
			if errors.Is(err, pool.ErrQueueTimeout) {
				return nil, nil, &queueTimeoutError{waited: time.Since(start)}
			}
			if c.opts.Route != nil && !rerouted && ctx.Err() == nil && pool.DialFailed(err) {
				c.log.Info("upstream host unreachable; routing again", "host", key.Host, "error", err)
				failed, rerouted = key.Host, true
				lastErr = err
				continue
			}
			return nil, nil, err
		}
		st := stateOf(b)
		if !st.usable(start) {
			c.log.Debug("discarding an unusable pooled backend", "pid", b.PID, "buffered", st.in.buffered(), "idle", time.Since(st.idleSince))
			c.opts.Pool.Release(b, false)
			lastErr = errBroken
			continue
		}
		if c.opts.Key.Shared && st.entered != c.opts.Key.TenantID {
			if err := c.enter(b, st, want); err != nil {
				c.opts.Pool.Release(b, false)
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) {
					return nil, nil, pgErr
				}
				c.log.Warn("entering the tenant context on a shared server connection failed; closing it", "pid", b.PID, "error", err)
				lastErr = err
				continue
			}
		}
		if err := c.apply(st, want); err != nil {
			c.opts.Pool.Release(b, false)
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				return nil, nil, pgErr
			}
			c.log.Debug("applying settings failed", "pid", b.PID, "error", err)
			lastErr = err
			continue
		}
		return b, st, nil
	}
	return nil, nil, fmt.Errorf("no usable server connection: %w", lastErr)
}

// enterName is the enter statement's name on shared backends; random per
// process, so that no client can guess it.
var enterName = func() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return fmt.Sprintf("vp_enter_%x", b)
}()

// enterSQL clears the session state a previous borrower left and enters
// the signed context given; it returns the tenant the database verified.
const enterSQL = "SELECT public.enter_tenant_context($1)::text"

// enter makes shared backend b carry the client's tenant context and
// settings want, in one round trip, and checks the tenant the database
// verified.
func (c *Client) enter(b *pool.Backend, st *serverState, want *settings) error {
	var msgs []byte
	if !st.enterReady {
		msgs, _ = (&pgproto3.Close{ObjectType: 'S', Name: enterName}).Encode(msgs)
		msgs, _ = (&pgproto3.Parse{Name: enterName, Query: enterSQL}).Encode(msgs)
	}
	msgs, _ = (&pgproto3.Bind{PreparedStatement: enterName, Parameters: [][]byte{[]byte(c.opts.EnterContext(b.PID))}}).Encode(msgs)
	msgs, _ = (&pgproto3.Execute{}).Encode(msgs)
	msgs = appendSync(msgs)
	// enter_tenant_context runs RESET ALL: apply from the defaults.
	queries := applyQueries(nil, want)
	for _, q := range queries {
		msgs = appendQuery(msgs, q)
	}
	st.entered, st.applied = "", nil // unknown until it succeeds
	st.capture, st.captured = true, st.captured[:0]
	status, pgErr, err := st.exec(msgs, 1+len(queries), c.opts.CleanupTimeout)
	st.capture = false
	ok := false
	defer func() {
		if c.opts.Hooks.OnContextSwitch != nil {
			c.opts.Hooks.OnContextSwitch(ok)
		}
	}()
	switch {
	case err != nil:
		return err
	case pgErr != nil:
		st.enterReady = false
		return pgErr
	case status != 'I':
		return fmt.Errorf("%w: transaction status %q after entering the tenant context", errBroken, status)
	}
	st.enterReady = true
	if got := dataRowText(st.captured); got != c.opts.Key.TenantID {
		return fmt.Errorf("%w: the server verified tenant %q, not %q", errBroken, got, c.opts.Key.TenantID)
	}
	st.entered, st.applied = c.opts.Key.TenantID, want
	ok = true
	return nil
}

// dataRowText returns the first column of a DataRow body as text ("" when
// NULL or malformed).
func dataRowText(body []byte) string {
	if len(body) < 6 || binary.BigEndian.Uint16(body) < 1 {
		return ""
	}
	n := int32(binary.BigEndian.Uint32(body[2:]))
	if n < 0 || int(n) > len(body)-6 {
		return ""
	}
	return string(body[6 : 6+n])
}

// apply moves the backend's settings to want with one round trip.
func (c *Client) apply(st *serverState, want *settings) error {
	if st.applied.equal(want) {
		return nil
	}
	queries := applyQueries(st.applied, want)
	var msgs []byte
	for _, q := range queries {
		msgs = appendQuery(msgs, q)
	}
	st.applied = nil // unknown until it succeeds
	status, pgErr, err := st.exec(msgs, len(queries), c.opts.CleanupTimeout)
	if err != nil {
		return err
	}
	if pgErr != nil {
		return pgErr
	}
	if status != 'I' {
		return fmt.Errorf("%w: transaction status %q after applying settings", errBroken, status)
	}
	st.applied = want
	return nil
}

// refuse answers the current client message when no backend could be had:
// an ERROR (53300 when the pool's queue timed out) and, as PostgreSQL
// does after an error, ReadyForQuery for a Query or FunctionCall or
// skipping to the next Sync for the extended protocol. Errors after which
// the session cannot go on are returned. Caller holds c.mu.
func (c *Client) refuse(ctx context.Context, err error, typ byte) error {
	var qt *queueTimeoutError
	var pgErr *pgconn.PgError
	var out []byte
	switch {
	case errors.As(err, &qt):
		waited := qt.waited.Round(time.Second)
		if waited == 0 {
			waited = qt.waited.Round(time.Millisecond)
		}
		msg := fmt.Sprintf("no server connection available for tenant %s within %s; try again later", c.opts.Key.Tenant, waited)
		c.log.Info("no server connection in time", "waited_seconds", qt.waited.Seconds())
		if c.opts.Hooks.OnQueueTimeout != nil {
			c.opts.Hooks.OnQueueTimeout()
		}
		out = appendError(c.out[:0], 'E', severityError, codeTooManyConns, msg)
	case errors.Is(err, pool.ErrClosed), ctx.Err() != nil:
		return err
	case errors.As(err, &pgErr) && len(pgErr.Code) == 5 && pgErr.Code[:2] == "28":
		// The login role was refused (tenant suspended, ...).
		c.sendFatal(pgErr.Code, pgErr.Message)
		return fmt.Errorf("txmode: the server refused the login role: %w", err)
	case errors.As(err, &pgErr):
		out = appendError(c.out[:0], 'E', severityError, pgErr.Code, pgErr.Message)
	default:
		c.log.Warn("no server connection", "error", err)
		out = appendError(c.out[:0], 'E', severityError, codeConnectionFailure, "could not connect to the database server")
	}
	if typ == 'Q' || typ == 'F' {
		out = appendReady(out, 'I')
	} else {
		c.skip = true
	}
	return c.writeClient(out)
}
