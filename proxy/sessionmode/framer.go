package sessionmode

import (
	"encoding/binary"
	"errors"

	"github.com/vitalproxy/vitalproxy/proxy/notify"
)

// inspectLimit is the largest Query or Parse message whose SQL the proxy
// reads to namespace notification channels; a longer one passes unread (a
// channel it names stays unprefixed, so its notifications are dropped).
const inspectLimit = 1 << 20

// errServerProtocol means the server sent a message with an impossible
// length: the session cannot go on.
var errServerProtocol = errors.New("invalid message length from server")

// framer walks the messages of one direction of a session-mode stream. It
// looks at headers only (type and length), except for the few messages it
// must read whole: a client's Query and Parse, whose SQL may name a
// notification channel, and the server's NotificationResponse, which is
// mapped or dropped (see package notify). Everything else passes through
// untouched and without a copy.
type framer struct {
	fromClient bool
	maxLen     int               // client side: longest message body allowed
	ns         *notify.Namespace // nil: no message is read whole

	remaining int64 // body bytes of the current message still to pass
	hdr       [5]byte
	hdrLen    int    // bytes of a split header held in hdr
	msg       []byte // a message being read whole across reads
	want      int    // its full size; 0 when none
	out       []byte // output when data had to be changed

	// What the conversation owes, so that a reset knows whether the
	// backend is idle: requests the server answers with a ReadyForQuery
	// and extended-protocol messages since the last Sync (client side),
	// ReadyForQuery messages and the last one's transaction status
	// (server side).
	requests   int64
	extPending bool
	readies    int64
	status     byte
	// dropped counts notifications kept from the client (server side).
	dropped int64
}

// feed takes the next bytes of the stream and returns what to pass on:
// data itself (or a prefix of it) when nothing changed, else a buffer of
// the framer's own, valid until the next call. Bytes of a split header or
// of a message read whole are held back until complete. A non-nil error
// ends the session after the returned bytes: errClientTerminate before a
// client's Terminate, errProtocol or errMessageTooLarge for a bad client
// header, errServerProtocol for a bad server header.
func (f *framer) feed(data []byte) ([]byte, error) {
	var (
		pos, mark int
		edited    bool
	)
	// replace puts repl where data[from:to] was.
	replace := func(from, to int, repl []byte) {
		if !edited {
			f.out = f.out[:0]
			edited = true
		}
		f.out = append(f.out, data[mark:from]...)
		f.out = append(f.out, repl...)
		mark = to
	}
	result := func(end int) []byte {
		if !edited {
			return data[:end]
		}
		return append(f.out, data[mark:end]...)
	}
	n := len(data)
	for pos < n {
		switch {
		case f.remaining > 0:
			step := min(f.remaining, int64(n-pos))
			pos += int(step)
			f.remaining -= step
		case f.want > 0:
			k := min(f.want-len(f.msg), n-pos)
			f.msg = append(f.msg, data[pos:pos+k]...)
			start := pos
			pos += k
			if len(f.msg) < f.want {
				replace(start, pos, nil)
				continue
			}
			replace(start, pos, f.whole(f.msg))
			f.want = 0
			if cap(f.msg) > 64<<10 {
				f.msg = nil
			} else {
				f.msg = f.msg[:0]
			}
		case f.hdrLen > 0 || n-pos < 5:
			k := min(5-f.hdrLen, n-pos)
			copy(f.hdr[f.hdrLen:], data[pos:pos+k])
			f.hdrLen += k
			start := pos
			pos += k
			if f.hdrLen < 5 {
				replace(start, pos, nil)
				continue
			}
			f.hdrLen = 0
			whole, body, err := f.header(f.hdr[:])
			if err != nil {
				return result(start), err
			}
			if whole {
				f.msg = append(f.msg[:0], f.hdr[:]...)
				f.want = 5 + body
				replace(start, pos, nil)
				continue
			}
			replace(start, pos, f.hdr[:])
			f.remaining = int64(body)
		default:
			whole, body, err := f.header(data[pos : pos+5])
			if err != nil {
				return result(pos), err
			}
			if !whole {
				pos += 5
				f.remaining = int64(body)
				continue
			}
			if size := 5 + body; n-pos >= size {
				if repl, ok := f.edit(data[pos : pos+size]); ok {
					replace(pos, pos+size, repl)
				}
				pos += size
				continue
			}
			f.msg = append(f.msg[:0], data[pos:]...)
			f.want = 5 + body
			replace(pos, n, nil)
			pos = n
		}
	}
	return result(n), nil
}

// idleAfter reports whether, by the count of a session's client and server
// framers, the server answered every request the client sent and is idle
// outside a transaction: a reset then need not end a transaction, a COPY
// or a half-sent extended query.
func idleAfter(client, server *framer) bool {
	return !client.midMessage() && !server.midMessage() && !client.extPending &&
		server.readies == client.requests && server.status == 'I'
}

// midMessage reports whether the stream stopped inside a message.
func (f *framer) midMessage() bool { return f.remaining > 0 || f.hdrLen > 0 || f.want > 0 }

// header checks a message header and says whether the message must be
// read whole, and its body length.
func (f *framer) header(h []byte) (whole bool, body int, err error) {
	typ := h[0]
	length := int64(binary.BigEndian.Uint32(h[1:5]))
	if !f.fromClient {
		// A notification's payload is at most 8000 bytes: a longer one is
		// not PostgreSQL's, and must not pass unread.
		if length < 4 || (typ == 'A' || typ == 'Z') && length-4 > inspectLimit {
			return false, 0, errServerProtocol
		}
		return typ == 'A' && f.ns != nil || typ == 'Z', int(length - 4), nil
	}
	switch {
	case typ == 'X':
		return false, 0, errClientTerminate
	case length < 4:
		return false, 0, errProtocol
	case f.maxLen > 0 && length-4 > int64(f.maxLen):
		return false, 0, errMessageTooLarge
	}
	switch typ {
	case 'Q', 'F':
		f.requests++
	case 'S':
		f.requests++
		f.extPending = false
	case 'P', 'B', 'D', 'E', 'C', 'H':
		f.extPending = true
	}
	whole = (typ == 'Q' || typ == 'P') && f.ns != nil && length > 4 && length-4 <= inspectLimit
	return whole, int(length - 4), nil
}

// whole returns what to send for a message that was read whole.
func (f *framer) whole(msg []byte) []byte {
	if repl, ok := f.edit(msg); ok {
		return repl
	}
	return msg
}

// edit rewrites or drops a message read whole (and notes a ReadyForQuery's
// status); ok is false when the message passes unchanged.
func (f *framer) edit(msg []byte) ([]byte, bool) {
	if f.fromClient {
		return f.ns.QueryMessage(nil, msg)
	}
	if msg[0] == 'Z' {
		f.readies++
		f.status = 0
		if len(msg) == 6 {
			f.status = msg[5]
		}
		return nil, false
	}
	// The sender's pid passes unchanged: it is the backend that ran the
	// NOTIFY, whose pid is the one the client was told when that backend
	// is its own.
	out, ok := f.ns.NotificationMessage(nil, msg)
	if !ok {
		f.dropped++
	}
	return out, true // a dropped notification is replaced by nothing
}
