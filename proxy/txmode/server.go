package txmode

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
)

// rollbackMsg ends what a departed client left open.
var rollbackMsg = appendQuery(nil, "ROLLBACK")

// listenNotice warns a client that LISTEN does not outlive its transaction.
var listenNotice = appendError(nil, 'N', severityWarning, codeWarning,
	"LISTEN has no lasting effect in transaction pooling mode: the server connection is reset when the transaction ends; use a session-mode user for LISTEN/NOTIFY")

// Outcomes of serverLoop.
const (
	loopContinue = iota
	loopReleased // the backend went back to the pool (or was closed)
	loopIdle     // a transaction block is open and nothing is in flight
	loopAsync    // handed to the server goroutine (COPY IN)
	loopLost     // the backend died; serverLost handled it
)

// serve is the server goroutine, started the first time the client needs
// one: it serves each backend handed to it (goAsync) until the server owes
// nothing more, then waits for the next.
func (c *Client) serve() {
	defer close(c.sDone)
	for b := range c.attachCh {
		c.mu.Lock()
		c.serverLoop(b, stateOf(b), true)
		c.mu.Unlock()
	}
}

// goAsync hands the attached backend to the server goroutine, so that the
// client goroutine can read the client while the server answers. Caller
// holds c.mu.
func (c *Client) goAsync() {
	if !c.sStarted {
		c.sStarted = true
		go c.serve()
	}
	c.async = true
	c.attachCh <- c.b
}

// serverLoop copies b's messages to the client until the server owes
// nothing (or, on the client goroutine, until COPY IN needs the client read
// concurrently). async tells whether it runs on the server goroutine.
// Caller holds c.mu; it is released during I/O.
func (c *Client) serverLoop(b *pool.Backend, st *serverState, async bool) int {
	in := &st.in
	// On the client goroutine, a wait for the server that lasts is
	// interrupted by the watchdog; the server goroutine then waits instead,
	// so that the client is read again (it may leave, or pipeline more).
	inline := !async && !c.gone
	for {
		if in.buffered() < 5 {
			var err error
			if inline {
				err = c.waitServer(st)
				if errors.Is(err, errInterrupted) {
					c.goAsync()
					return loopAsync
				}
			} else {
				err = c.readServer(st, 5)
			}
			if err != nil {
				c.serverLost(b, st, err)
				return loopLost
			}
			continue
		}
		typ := in.buf[in.r]
		n := int(binary.BigEndian.Uint32(in.buf[in.r+1:])) - 4
		if n < 0 || n > maxServerMessage {
			c.serverLost(b, st, fmt.Errorf("%w: message length %d from server", errBroken, n))
			return loopLost
		}
		if 5+n > len(in.buf) {
			if err := c.streamToClient(st, n); err != nil {
				c.serverLost(b, st, err)
				return loopLost
			}
			continue
		}
		for in.buffered() < 5+n {
			if err := c.readServer(st, 5+n); err != nil {
				c.serverLost(b, st, err)
				return loopLost
			}
		}
		msg := in.buf[in.r : in.r+5+n]
		in.r += 5 + n
		switch typ {
		case 'Z':
			if n != 1 {
				c.serverLost(b, st, fmt.Errorf("%w: ReadyForQuery of %d bytes", errBroken, n))
				return loopLost
			}
			r, err := c.ready(b, st, msg, async)
			if err != nil {
				c.serverLost(b, st, err)
				return loopLost
			}
			if r != loopContinue {
				return r
			}
		case '1', '3':
			if c.q.n == 0 || c.q.buf[c.q.head].kind != typ {
				c.serverLost(b, st, fmt.Errorf("%w: unexpected %q from server", errBroken, typ))
				return loopLost
			}
			e := c.q.pop()
			confirm(st, e)
			if !e.swallow {
				c.toClient(st, msg)
			}
		case 'C':
			c.toClient(st, msg)
			if a := tagAction(msg[5:]); a != 0 {
				c.commandTag(st, a)
				if a == actionListen {
					c.toClient(st, listenNotice)
				}
			}
		case 'S':
			c.toClient(st, msg)
			name, value := st.recordParam(msg[5:])
			if lower := strings.ToLower(string(name)); reportedSettings[lower] {
				c.want = c.want.with(lower, string(value))
			}
			st.dirty = true
		case 'E':
			if isFatal(msg[5:]) {
				// The backend is going away: the client hears it from
				// serverLost, in words that fit transaction mode.
				_, _, st.fatal = errorFields(msg[5:])
				continue
			}
			c.toClient(st, msg)
		case 'G', 'W':
			c.toClient(st, msg)
			if !async && !c.gone {
				// COPY FROM STDIN: the client must be read while the
				// server waits.
				c.flushClient(st)
				c.goAsync()
				return loopAsync
			}
		case 'A':
			if ns := c.opts.Channels; ns == nil {
				c.toClient(st, msg)
			} else if m, ok := ns.NotificationMessage(c.notification[:0], msg); ok {
				c.notification = m
				c.toClient(st, m)
			} else if h := c.opts.Hooks.OnNotificationDropped; h != nil {
				h()
			}
		case 'R', 'K', 'v':
			c.serverLost(b, st, fmt.Errorf("%w: unexpected %q from server", errBroken, typ))
			return loopLost
		default:
			c.toClient(st, msg)
		}
	}
}

// readServer flushes what is on its way to the client, then reads more
// from the server. Caller holds c.mu; it is released during I/O.
func (c *Client) readServer(st *serverState, need int) error {
	c.flushClient(st)
	out := c.takeSendFirst(st)
	c.mu.Unlock()
	err := st.fillAfter(out, need)
	c.mu.Lock()
	c.sentFirst(st, out)
	return err
}

// takeSendFirst returns wbuf when askAndWait left it to be sent as the
// wait for its answer begins. Caller holds c.mu.
func (c *Client) takeSendFirst(st *serverState) []byte {
	if !st.sendFirst {
		return nil
	}
	st.sendFirst = false
	return st.wbuf
}

// sentFirst records that out, taken by takeSendFirst, went to the server
// (or failed, with the connection). Caller holds c.mu.
func (c *Client) sentFirst(st *serverState, out []byte) {
	if out != nil {
		c.c2s.Add(int64(len(out)))
		st.wbuf, st.asked = out[:0], false
	}
}

// errInterrupted: the watchdog ended a wait for the server.
var errInterrupted = errors.New("wait for the server handed over")

// waitServer is readServer for the client goroutine between messages: the
// watchdog may interrupt a long wait (errInterrupted). Caller holds c.mu.
func (c *Client) waitServer(st *serverState) error {
	c.flushClient(st)
	c.waitSt = st
	c.waitSince.Store(dog.tick.Load())
	out := c.takeSendFirst(st)
	c.mu.Unlock()
	err := st.fillAfter(out, 5)
	c.mu.Lock()
	c.sentFirst(st, out)
	c.waitSince.Store(0)
	c.waitSt = nil
	if c.interrupted {
		c.interrupted = false
		if derr := st.conn.SetReadDeadline(time.Time{}); derr != nil && err == nil {
			err = derr
		}
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			return errInterrupted
		}
	}
	return err
}

// toClient queues a server message for the client. Caller holds c.mu.
func (c *Client) toClient(st *serverState, msg []byte) {
	st.cbuf = append(st.cbuf, msg...)
	if len(st.cbuf) >= flushThreshold {
		c.flushClient(st)
	}
}

// flushClient writes what is queued for the client, or drops it when the
// client is gone. Caller holds c.mu; it is released during the write.
func (c *Client) flushClient(st *serverState) {
	if len(st.cbuf) == 0 {
		return
	}
	if !c.discardOut.Load() {
		c.mu.Unlock()
		n, err := c.conn.Write(st.cbuf)
		c.mu.Lock()
		c.s2c.Add(int64(n))
		if err != nil {
			// The client stopped reading or left: stop the client
			// goroutine's read too, and let it clean up.
			c.discardOut.Store(true)
			_ = c.conn.SetReadDeadline(aLongTimeAgo)
		}
	}
	st.cbuf = st.cbuf[:0]
}

// streamToClient copies a message larger than the read buffer (a big
// DataRow or CopyData) to the client without holding it whole. Caller
// holds c.mu.
func (c *Client) streamToClient(st *serverState, n int) error {
	in := &st.in
	typ := in.buf[in.r]
	switch typ {
	case 'Z', '1', '3', 'C', 'S', 'G', 'W', 'R', 'K', 'v', 'A':
		// A NotificationResponse this long is not PostgreSQL's, and must
		// not pass unread (see Options.Channels).
		return fmt.Errorf("%w: message %q of %d bytes from server", errBroken, typ, n)
	}
	st.cbuf = append(st.cbuf, in.buf[in.r:in.r+5]...)
	in.r += 5
	for left := n; left > 0; {
		if in.buffered() == 0 {
			if err := c.readServer(st, 1); err != nil {
				return err
			}
		}
		k := min(left, in.buffered())
		st.cbuf = append(st.cbuf, in.buf[in.r:in.r+k]...)
		in.r += k
		left -= k
		if len(st.cbuf) >= flushThreshold {
			c.flushClient(st)
		}
	}
	return nil
}

// ready handles a ReadyForQuery. When the server owes nothing more it
// returns the backend to the pool if the transaction is over (loopReleased)
// or keeps it for the client (loopIdle). Caller holds c.mu.
func (c *Client) ready(b *pool.Backend, st *serverState, msg []byte, async bool) (int, error) {
	status := msg[5]
	var e expect
	found := false
	for c.q.n > 0 {
		e = c.q.pop()
		if e.kind == 'Z' {
			found = true
			break
		}
		skipped(e)
	}
	if !found {
		return 0, fmt.Errorf("%w: unexpected ReadyForQuery from server", errBroken)
	}
	c.pending--
	c.txStatus = status
	if !e.swallow {
		c.toClient(st, msg)
	}
	if c.pending != 0 || c.partial {
		return loopContinue, nil
	}
	if c.gone && status != 'I' {
		// The client left a transaction open: roll it back.
		c.q.push(expect{kind: 'Z', swallow: true})
		c.pending++
		st.seg++
		c.mu.Unlock()
		_, err := st.conn.Write(rollbackMsg)
		c.mu.Lock()
		if err != nil {
			return 0, fmt.Errorf("write to server: %w", err)
		}
		return loopContinue, nil
	}
	c.flushClient(st)
	// On the server goroutine, the client goroutine may be writing more;
	// a cancel request on its way must arrive before the backend moves on.
	for c.pending == 0 && !c.partial && (async && c.holding || status == 'I' && c.cancelling > 0) {
		c.sWaiting = true
		c.cond.Wait()
	}
	c.sWaiting = false
	if c.pending != 0 || c.partial {
		return loopContinue, nil // the client sent more meanwhile
	}
	c.async = false
	if status != 'I' {
		return loopIdle, nil
	}
	c.b, c.st = nil, nil
	c.q.reset()
	attachedAt := c.attachedAt
	c.mu.Unlock()
	c.release(b, st, attachedAt)
	c.mu.Lock()
	return loopReleased, nil
}

// release returns a backend after its transaction, resetting its session
// state first when a client changed it. attachedAt is when the client
// asked for it.
func (c *Client) release(b *pool.Backend, st *serverState, attachedAt time.Time) {
	// Nothing may stay in the read buffer: the next borrower may read the
	// connection without it (session mode does).
	ok := st.usable(time.Time{})
	if ok && st.deadline {
		st.deadline = false
		ok = st.conn.SetReadDeadline(time.Time{}) == nil
	}
	if ok && (st.dirty || st.discard) {
		ok = c.reset(b, st)
	}
	st.idleSince = time.Now()
	if c.opts.Hooks.OnTransaction != nil {
		c.opts.Hooks.OnTransaction(st.idleSince.Sub(attachedAt))
	}
	c.opts.Pool.Release(b, ok)
}

// reset runs RESET ROLE and RESET ALL (or DISCARD ALL when the client may
// have left session state behind) and re-asserts the tenant context that
// those clear, and reports whether the backend is clean.
func (c *Client) reset(b *pool.Backend, st *serverState) bool {
	msgs := c.resetMsgs
	if st.discard {
		msgs = c.discardMsgs
	}
	status, pgErr, err := st.exec(msgs, c.resetZ, c.opts.CleanupTimeout)
	ok := err == nil && pgErr == nil && status == 'I'
	// RESET ALL and DISCARD ALL clear a shared backend's tenant context.
	st.entered = ""
	if ok {
		st.applied = nil
		if st.discard {
			clear(st.stmts)
			st.enterReady = false
		}
		st.dirty, st.discard = false, false
	} else {
		if err == nil && pgErr != nil {
			err = pgErr
		}
		c.log.Warn("resetting a server connection failed; closing it", "pid", b.PID, "error", err)
	}
	if c.opts.Hooks.OnReset != nil {
		c.opts.Hooks.OnReset(ok)
	}
	return ok
}

// serverLost handles a backend that died or misbehaved: it is closed, and
// the client is told. A client in the middle of an autocommit request gets
// an ERROR for each request in flight and goes on with a new backend; a
// client inside a transaction block has lost the transaction and its
// session ends with FATAL. Caller holds c.mu.
func (c *Client) serverLost(b *pool.Backend, st *serverState, cause error) {
	if c.opts.Hooks.OnServerLost != nil {
		c.opts.Hooks.OnServerLost()
	}
	c.flushClient(st)
	pending, partial, inTx := c.pending, c.partial, c.txStatus != 'I'
	c.b, c.st = nil, nil
	c.pending, c.partial, c.async = 0, false, false
	c.q.reset()
	if c.gone {
		if errors.Is(cause, os.ErrDeadlineExceeded) {
			// Still running something: stop it before closing.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = b.Cancel(ctx)
			cancel()
		}
		c.log.Debug("closing a server connection the departed client left unclean", "pid", b.PID, "cause", cause)
		c.opts.Pool.Release(b, false)
		return
	}
	msg := "server connection lost"
	if st.fatal != "" {
		msg += ": " + st.fatal
	}
	c.log.Warn("server connection lost", "pid", b.PID, "in_transaction", inTx, "cause", cause, "server_message", st.fatal)
	c.opts.Pool.Release(b, false)
	// Written under the lock so that nothing the client goroutine sends
	// on its own (a ReadyForQuery after skipping) comes first.
	if inTx {
		c.endErr = fmt.Errorf("%w: %s", ErrServerLost, msg)
		c.discardOut.Store(true)
		_ = c.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if n, err := c.conn.Write(appendError(nil, 'E', severityFatal, codeConnectionFailure,
			msg+"; the transaction was rolled back")); err == nil {
			c.s2c.Add(int64(n))
		}
		_ = c.conn.SetReadDeadline(aLongTimeAgo)
		return
	}
	var out []byte
	for range pending {
		out = appendError(out, 'E', severityError, codeConnectionFailure, msg)
		out = appendReady(out, 'I')
	}
	if partial {
		out = appendError(out, 'E', severityError, codeConnectionFailure, msg)
		c.skip = true
	}
	if len(out) > 0 {
		n, err := c.conn.Write(out)
		c.s2c.Add(int64(n))
		if err != nil {
			c.discardOut.Store(true)
			_ = c.conn.SetReadDeadline(aLongTimeAgo)
		}
	}
}

// Command tags that change what must be reset.
const (
	actionSet = iota + 1
	actionDiscardAll
	actionDeallocateAll
	actionDeallocate
	actionListen
	actionSessionState
)

// tagAction classifies a CommandComplete body (tag and NUL) without
// allocating; most tags need nothing.
func tagAction(body []byte) int {
	if len(body) < 4 {
		return 0
	}
	tag := body[:len(body)-1]
	switch tag[0] {
	case 'S':
		if string(tag) == "SET" {
			return actionSet
		}
	case 'R':
		if string(tag) == "RESET" {
			return actionSet
		}
	case 'D':
		switch string(tag) {
		case "DISCARD ALL":
			return actionDiscardAll
		case "DEALLOCATE ALL":
			return actionDeallocateAll
		case "DEALLOCATE":
			return actionDeallocate
		}
	case 'L':
		if string(tag) == "LISTEN" {
			return actionListen
		}
	case 'P':
		if string(tag) == "PREPARE" {
			return actionSessionState
		}
	case 'C':
		if string(tag) == "CREATE TABLE" || string(tag) == "CREATE TABLE AS" {
			return actionSessionState
		}
	}
	return 0
}

// commandTag records the effect of a command tag. Caller holds c.mu.
func (c *Client) commandTag(st *serverState, a int) {
	switch a {
	case actionSet:
		st.dirty = true
		c.dirtyAttach = true
	case actionDiscardAll:
		// Settings, statements and the published tenant context are
		// gone; the release re-asserts the context.
		st.dirty = true
		c.dirtyAttach = true
		clear(st.stmts)
		st.enterReady = false
	case actionDeallocateAll:
		clear(st.stmts)
		st.enterReady = false
	case actionDeallocate:
		for _, ss := range st.stmts {
			ss.state = stmtUnknown
		}
		st.enterReady = false
	case actionListen, actionSessionState:
		st.discard = true
	}
}
