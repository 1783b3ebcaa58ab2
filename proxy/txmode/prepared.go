package txmode

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
)

// Protocol-level prepared statements in transaction mode.
//
// A client's named statement is identified by a key: a hash of the Parse
// body (query text and parameter types) salted with the client's startup
// settings, so clients of one pool with the same settings and query share
// one server-side statement, named "vp_" and the key in hex. Each backend
// records which keys it has prepared (serverState.stmts); a client's Bind or
// Describe of a statement the serving backend lacks is preceded by an
// injected Parse, whose ParseComplete is swallowed. Responses to be
// swallowed are found with a FIFO of expected ParseComplete ('1'),
// CloseComplete ('3') and ReadyForQuery ('Z') messages in the order the
// server answers them; after an error the server skips to the next Sync,
// so the entries of a segment left at its ReadyForQuery were never
// answered, and what they would have prepared or closed is unknown.
//
// The backend's record of a statement is one of: pending (a Parse was sent
// in segment seg), present (ParseComplete received), closing (a Close was
// sent in segment seg to make room) or unknown (a Parse or Close was
// skipped after an error, or the client ran SQL-level DEALLOCATE).
// Unknown statements are closed and prepared again before use, since
// closing a statement that does not exist is not an error.

type stmtKey [16]byte

type stmtState uint8

const (
	stmtPending stmtState = iota
	stmtPresent
	stmtClosing
	stmtUnknown
)

// clientStmt is one of the client's named statements.
type clientStmt struct {
	key   stmtKey
	name  []byte // server-side name
	parse []byte // Parse body after the name
	hints uint8
}

// srvStmt is a statement on one backend.
type srvStmt struct {
	key     stmtKey
	name    []byte
	state   stmtState
	seg     uint64
	lastUse uint64
}

// expect is an answer the server owes: '1', '3' or 'Z'.
type expect struct {
	kind    byte
	swallow bool
	ss      *srvStmt // what a '1' or '3' confirms
	seg     uint64
}

// fifo is a ring of expected answers; it grows as needed and never
// shrinks.
type fifo struct {
	buf     []expect
	head, n int
}

func (q *fifo) push(e expect) {
	if q.n == len(q.buf) {
		nb := make([]expect, max(16, 2*len(q.buf)))
		for i := 0; i < q.n; i++ {
			nb[i] = q.buf[(q.head+i)%len(q.buf)]
		}
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.n)%len(q.buf)] = e
	q.n++
}

func (q *fifo) pop() expect {
	e := q.buf[q.head]
	q.buf[q.head] = expect{}
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	return e
}

func (q *fifo) reset() {
	for q.n > 0 {
		q.pop()
	}
	q.head = 0
}

// closedName is what a client's Close of one of its statements is sent as:
// server-side statements are shared, so the client's name is only
// forgotten, and closing a statement that does not exist still yields the
// CloseComplete the client waits for, in order.
var closedName = []byte("vp_closed")

// emptyParse is the body of Parse("", ""): it yields a ParseComplete when
// a client prepares a statement the backend already has.
var emptyParse = []byte{0, 0, 0}

// statement returns the client's statement for a Parse of name with body
// rest, reusing the current one when nothing changed. Caller holds c.mu.
func (c *Client) statement(name, rest []byte) *clientStmt {
	if cs := c.stmts[string(name)]; cs != nil && bytes.Equal(cs.parse, rest) {
		return cs
	}
	h := sha256.New()
	if c.dirtyAttach {
		// Settings changed in this transaction: the statement may
		// resolve names differently, so it is the client's own.
		h.Write(c.privSalt[:])
	} else {
		h.Write(c.stmtSalt[:])
	}
	h.Write(rest)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	cs := &clientStmt{parse: bytes.Clone(rest)}
	copy(cs.key[:], sum[:])
	cs.name = make([]byte, 3+hex.EncodedLen(len(cs.key)))
	copy(cs.name, "vp_")
	hex.Encode(cs.name[3:], cs.key[:])
	if q, _, ok := cstring(rest); ok {
		cs.hints = scanHints(q)
	}
	c.stmts[string(name)] = cs
	return cs
}

// parse forwards a client's Parse. Caller holds c.mu and the backend.
func (c *Client) parse(st *serverState, msg, body []byte) {
	name, rest, ok := cstring(body)
	if !ok || len(name) == 0 {
		if ok {
			c.unnamed = append(c.unnamed[:0], rest...)
			c.hasUnnamed, c.unnamedHere = true, true
			c.unnamedHints = 0
			if q, _, ok := cstring(rest); ok {
				c.unnamedHints = scanHints(q)
			}
		}
		st.wbuf = append(st.wbuf, msg...)
		c.q.push(expect{kind: '1'})
		return
	}
	cs := c.statement(name, rest)
	ss := st.stmts[cs.key]
	switch {
	case ss == nil:
		c.makeRoom(st)
		ss = c.addStmt(st, cs)
		st.wbuf = appendParse(st.wbuf, cs.name, cs.parse)
		c.q.push(expect{kind: '1', ss: ss, seg: st.seg})
	case ss.state == stmtPresent || ss.state == stmtPending && ss.seg == st.seg:
		// Already prepared here (by this client or another): answer the
		// client's Parse with an empty unnamed one. That replaces the
		// unnamed statement, which is re-sent if the client uses its own.
		ss.lastUse = st.tick()
		st.wbuf = appendParse(st.wbuf, nil, emptyParse)
		c.unnamedHere = false
		c.q.push(expect{kind: '1'})
	default:
		st.wbuf = appendTargeted(st.wbuf, 'C', 'S', cs.name)
		c.q.push(expect{kind: '3', swallow: true})
		ss.state, ss.seg, ss.lastUse = stmtPending, st.seg, st.tick()
		st.wbuf = appendParse(st.wbuf, cs.name, cs.parse)
		c.q.push(expect{kind: '1', ss: ss, seg: st.seg})
	}
}

// bind forwards a client's Bind, naming the server-side statement. Caller
// holds c.mu and the backend.
func (c *Client) bind(st *serverState, msg, body []byte) {
	portal, rest, ok := cstring(body)
	var stmt []byte
	if ok {
		stmt, rest, ok = cstring(rest)
	}
	if !ok {
		st.wbuf = append(st.wbuf, msg...)
		return
	}
	if len(stmt) == 0 {
		c.ensureUnnamed(st)
		st.wbuf = append(st.wbuf, msg...)
		return
	}
	cs := c.stmts[string(stmt)]
	if cs == nil {
		// Not one of the client's protocol-level statements (perhaps an
		// SQL-level PREPARE in this transaction): the server decides.
		st.wbuf = append(st.wbuf, msg...)
		return
	}
	c.ensure(st, cs)
	if cs.hints != 0 {
		c.applyHints(st, cs.hints)
	}
	st.wbuf = appendBind(st.wbuf, portal, cs.name, rest)
}

// describe forwards a client's Describe. Caller holds c.mu and the backend.
func (c *Client) describe(st *serverState, msg, body []byte) {
	if len(body) >= 2 && body[0] == 'S' {
		name, _, ok := cstring(body[1:])
		if ok && len(name) == 0 {
			c.ensureUnnamed(st)
		} else if ok {
			if cs := c.stmts[string(name)]; cs != nil {
				c.ensure(st, cs)
				st.wbuf = appendTargeted(st.wbuf, 'D', 'S', cs.name)
				return
			}
		}
	}
	st.wbuf = append(st.wbuf, msg...)
}

// closeStmt forwards a client's Close. Caller holds c.mu and the backend.
func (c *Client) closeStmt(st *serverState, msg, body []byte) {
	c.q.push(expect{kind: '3'})
	if len(body) >= 2 && body[0] == 'S' {
		name, _, ok := cstring(body[1:])
		switch {
		case ok && len(name) == 0:
			c.hasUnnamed = false
		case ok:
			if cs := c.stmts[string(name)]; cs != nil {
				delete(c.stmts, string(name))
				st.wbuf = appendTargeted(st.wbuf, 'C', 'S', closedName)
				return
			}
		}
	}
	st.wbuf = append(st.wbuf, msg...)
}

// ensure prepares cs on the backend unless it is there (or being prepared
// in the current segment). Caller holds c.mu and the backend.
func (c *Client) ensure(st *serverState, cs *clientStmt) {
	ss := st.stmts[cs.key]
	switch {
	case ss != nil && (ss.state == stmtPresent || ss.state == stmtPending && ss.seg == st.seg):
		ss.lastUse = st.tick()
		if c.opts.Hooks.OnPrepared != nil {
			c.opts.Hooks.OnPrepared(true)
		}
		return
	case ss == nil:
		c.makeRoom(st)
		ss = c.addStmt(st, cs)
	default:
		st.wbuf = appendTargeted(st.wbuf, 'C', 'S', cs.name)
		c.q.push(expect{kind: '3', swallow: true})
		ss.state, ss.seg, ss.lastUse = stmtPending, st.seg, st.tick()
	}
	st.wbuf = appendParse(st.wbuf, cs.name, cs.parse)
	c.q.push(expect{kind: '1', swallow: true, ss: ss, seg: st.seg})
	if c.opts.Hooks.OnPrepared != nil {
		c.opts.Hooks.OnPrepared(false)
	}
}

// ensureUnnamed re-sends the client's unnamed statement when this backend
// has not seen it since the client attached. Caller holds c.mu.
func (c *Client) ensureUnnamed(st *serverState) {
	if !c.hasUnnamed {
		return
	}
	if !c.unnamedHere {
		st.wbuf = appendParse(st.wbuf, nil, c.unnamed)
		c.q.push(expect{kind: '1', swallow: true})
		c.unnamedHere = true
	}
	if c.unnamedHints != 0 {
		c.applyHints(st, c.unnamedHints)
	}
}

func (c *Client) addStmt(st *serverState, cs *clientStmt) *srvStmt {
	ss := &srvStmt{key: cs.key, name: cs.name, state: stmtPending, seg: st.seg, lastUse: st.tick()}
	st.stmts[cs.key] = ss
	return ss
}

// makeRoom closes the least recently used statement when the backend holds
// as many as allowed. Caller holds c.mu.
func (c *Client) makeRoom(st *serverState) {
	if len(st.stmts) < c.opts.MaxPreparedPerBackend {
		return
	}
	var victim *srvStmt
	for _, ss := range st.stmts {
		if ss.state == stmtPending || ss.state == stmtClosing {
			continue
		}
		if victim == nil || ss.lastUse < victim.lastUse {
			victim = ss
		}
	}
	if victim == nil {
		return
	}
	st.wbuf = appendTargeted(st.wbuf, 'C', 'S', victim.name)
	victim.state, victim.seg = stmtClosing, st.seg
	c.q.push(expect{kind: '3', swallow: true, ss: victim, seg: st.seg})
}

// confirm applies a ParseComplete or CloseComplete the server sent for e.
func confirm(st *serverState, e expect) {
	ss := e.ss
	if ss == nil || ss.seg != e.seg {
		return
	}
	switch {
	case e.kind == '1' && ss.state == stmtPending:
		ss.state = stmtPresent
	case e.kind == '3' && ss.state == stmtClosing:
		if st.stmts[ss.key] == ss {
			delete(st.stmts, ss.key)
		}
	}
}

// skipped marks what an unanswered '1' or '3' entry would have done as
// unknown.
func skipped(e expect) {
	ss := e.ss
	if ss == nil || ss.seg != e.seg {
		return
	}
	if ss.state == stmtPending || ss.state == stmtClosing {
		ss.state = stmtUnknown
	}
}

// applyHints records what a statement may leave behind. Caller holds c.mu.
func (c *Client) applyHints(st *serverState, h uint8) {
	if h&hintDiscard != 0 {
		st.discard = true
	}
	if h&hintReset != 0 {
		st.dirty = true
		c.dirtyAttach = true
	}
}
