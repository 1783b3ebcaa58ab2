package txmode

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/proxy/rawio"
)

// idleCheckAfter: a backend idle in the pool longer than this is checked
// for a pending end-of-file or message (a terminated backend) before use.
const idleCheckAfter = time.Second

// serverState is the engine's state of one backend, kept in
// pool.Backend.Data so that it follows the backend from client to client.
// The client that holds the backend owns it; fields shared between a
// client's two goroutines are guarded by that client's mutex (see Client).
type serverState struct {
	conn net.Conn
	// in buffers what the server sent; bytes past the last
	// ReadyForQuery stay with the backend.
	in msgReader
	// wbuf holds client messages on their way to the server; cbuf holds
	// server messages on their way to the client.
	wbuf []byte
	cbuf []byte

	// Prepared statements on this backend.
	stmts map[stmtKey]*srvStmt
	clock uint64 // statement use counter, for LRU
	seg   uint64 // ReadyForQuery-producing messages written so far
	// asked: wbuf holds a message the server answers (a Query or Sync);
	// sendFirst: wbuf goes out as the wait for that answer begins.
	asked, sendFirst bool

	// applied are the client settings in effect (nil: server defaults).
	applied *settings
	// params are the server's reported parameters, as of now.
	params map[string]string
	// dirty: a client changed settings (RESET ALL on release); discard: a
	// client may have left session state (DISCARD ALL on release).
	dirty, discard bool
	// fatal is the message of a FATAL error the server sent before dying.
	fatal string

	// foreign: the backend carries settings the engine cannot represent;
	// it is not used.
	foreign bool

	idleSince time.Time
	// deadline: a read deadline was set to bound a cleanup.
	deadline bool

	// Shared backends (isolation mode context): entered is the tenant id
	// whose context the session carries ("": none, after a reset);
	// enterReady says the enter statement is prepared on it.
	entered    string
	enterReady bool
	// capture asks exec to keep the first DataRow's body in captured.
	capture  bool
	captured []byte
}

// stateOf returns the engine's state of b, creating it on first use.
func stateOf(b *pool.Backend) *serverState {
	if st, ok := b.Data.(*serverState); ok {
		return st
	}
	conn := rawio.Wrap(b.Conn.Conn)
	st := &serverState{
		conn:   conn,
		in:     newMsgReader(conn, serverReadBuffer),
		wbuf:   make([]byte, 0, 4096),
		cbuf:   make([]byte, 0, flushThreshold+4096),
		stmts:  make(map[stmtKey]*srvStmt),
		params: make(map[string]string, len(b.Params)),
	}
	for _, p := range b.Params {
		st.params[p.Name] = p.Value
	}
	// A session-mode reset may have left its client's settings applied:
	// adopt them, so that apply moves from them to what a client wants.
	for k, v := range b.Reported {
		st.params[k] = v
	}
	if len(b.Settings) > 0 {
		if applied, err := newSettings(b.Settings, 0, 0); err == nil {
			st.applied = applied
		} else {
			st.foreign = true
		}
	}
	b.Settings, b.Reported = nil, nil
	st.idleSince = time.Now()
	b.Data = st
	return st
}

func (st *serverState) tick() uint64 {
	st.clock++
	return st.clock
}

// usable reports whether a backend is clean: no bytes left over but
// notices, notifications and parameter statuses (which it consumes), and,
// when now is set and the backend has been idle a while, no pending
// end-of-file.
func (st *serverState) usable(now time.Time) bool {
	if st.foreign {
		return false
	}
	in := &st.in
	for in.buffered() > 0 {
		if in.buffered() < 5 {
			return false
		}
		typ := in.buf[in.r]
		n := int(binary.BigEndian.Uint32(in.buf[in.r+1:])) - 4
		if n < 0 || in.buffered() < 5+n {
			return false
		}
		switch typ {
		case 'N', 'A':
		case 'S':
			st.recordParam(in.buf[in.r+5 : in.r+5+n])
		default:
			return false
		}
		in.r += 5 + n
	}
	if !now.IsZero() && now.Sub(st.idleSince) >= idleCheckAfter {
		return peekAlive(st.conn)
	}
	return true
}

// recordParam notes a ParameterStatus body; it returns the name and value.
func (st *serverState) recordParam(body []byte) (name, value []byte) {
	name, rest, ok := cstring(body)
	if !ok {
		return nil, nil
	}
	value, _, _ = cstring(rest)
	if old, ok := st.params[string(name)]; !ok || old != string(value) {
		st.params[string(name)] = string(value)
	}
	return name, value
}

// errBroken means a backend answered an internal query in a way that leaves
// its state unknown.
var errBroken = errors.New("server connection is not usable")

// exec sends msgs (the engine's own queries) and reads the answers up to
// the wantZ-th ReadyForQuery, swallowing them. It returns the last
// transaction status and the first error the server reported. An I/O
// failure, a FATAL error or a timeout is returned as err.
func (st *serverState) exec(msgs []byte, wantZ int, timeout time.Duration) (status byte, pgErr *pgconn.PgError, err error) {
	if err := st.conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return 0, nil, err
	}
	defer st.conn.SetDeadline(time.Time{}) //nolint:errcheck // a broken conn fails its next read
	if _, err := st.conn.Write(msgs); err != nil {
		return 0, nil, fmt.Errorf("write to server: %w", err)
	}
	in := &st.in
	for z := 0; z < wantZ; {
		for in.buffered() < 5 {
			if err := in.fill(5); err != nil {
				return 0, nil, fmt.Errorf("read from server: %w", err)
			}
		}
		typ := in.buf[in.r]
		n := int(binary.BigEndian.Uint32(in.buf[in.r+1:])) - 4
		if n < 0 || n > maxServerMessage {
			return 0, nil, fmt.Errorf("%w: bad message length from server", errBroken)
		}
		if 5+n > len(in.buf) {
			// Nothing the engine sends has large answers: skip it.
			in.r += 5
			for left := n; left > 0; {
				if in.buffered() == 0 {
					if err := in.fill(1); err != nil {
						return 0, nil, fmt.Errorf("read from server: %w", err)
					}
				}
				k := min(left, in.buffered())
				in.r += k
				left -= k
			}
			continue
		}
		for in.buffered() < 5+n {
			if err := in.fill(5 + n); err != nil {
				return 0, nil, fmt.Errorf("read from server: %w", err)
			}
		}
		body := in.buf[in.r+5 : in.r+5+n]
		in.r += 5 + n
		switch typ {
		case 'Z':
			if n < 1 {
				return 0, nil, fmt.Errorf("%w: empty ReadyForQuery", errBroken)
			}
			status = body[0]
			z++
		case 'E':
			sev, code, msg := errorFields(body)
			if sev == "FATAL" || sev == "PANIC" {
				return 0, nil, fmt.Errorf("%w: %s: %s (SQLSTATE %s)", errBroken, sev, msg, code)
			}
			if pgErr == nil {
				pgErr = &pgconn.PgError{Severity: sev, Code: code, Message: msg}
			}
		case 'S':
			st.recordParam(body)
		case 'D':
			if st.capture {
				st.captured = append(st.captured[:0], body...)
				st.capture = false
			}
		case 'G', 'H', 'W':
			return 0, nil, fmt.Errorf("%w: unexpected COPY from server", errBroken)
		}
	}
	return status, pgErr, nil
}

// fillAfter reads more from the server into st.in, as st.in.fill(need),
// after sending out (nil: nothing), which asks for an answer (see
// Client.askAndWait), through rawio's SendThenRead. What the socket does
// not take at once is written before reading as usual.
func (st *serverState) fillAfter(out []byte, need int) error {
	in := &st.in
	rc, ok := st.conn.(*rawio.Conn)
	if out == nil || !ok || in.r != in.w {
		if out != nil {
			if _, err := st.conn.Write(out); err != nil {
				return fmt.Errorf("write to server: %w", err)
			}
		}
		return in.fill(need)
	}
	in.r, in.w = 0, 0
	sent, n, err := rc.SendThenRead(out, in.buf)
	in.w = n
	if sent < len(out) {
		// The socket was full, or the wait was interrupted before the
		// send (a read deadline does not stop writes): the answer the
		// caller goes on to wait for must have been asked for.
		if _, werr := st.conn.Write(out[sent:]); werr != nil {
			return fmt.Errorf("write to server: %w", werr)
		}
		if err != nil {
			return err
		}
		return in.fill(need)
	}
	if err != nil || n > 0 {
		return err // as fill: one read that made progress
	}
	return in.fill(need)
}

// tlsNetConn returns the transport under a TLS connection.
func tlsNetConn(c net.Conn) (net.Conn, bool) {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn(), true
	}
	return c, false
}
