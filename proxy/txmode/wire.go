package txmode

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// DefaultMaxMessageSize bounds a client message when Options.MaxMessageSize
// is zero. Messages the engine rewrites (Parse, Bind, Describe, Close) are
// held whole in memory; all others are streamed.
const DefaultMaxMessageSize = 64 << 20

// maxServerMessage bounds a message from PostgreSQL (its own limit is 1 GB).
const maxServerMessage = 1<<30 - 1

// Buffer sizes. Client buffers live as long as the client; server buffers
// belong to a backend and are reused by every client it serves.
const (
	clientReadBuffer = 16 << 10
	serverReadBuffer = 32 << 10
	flushThreshold   = 32 << 10
)

// ErrProtocol means the client broke the wire protocol; it was sent a
// FATAL 08P01 error.
var ErrProtocol = errors.New("protocol violation")

// frontendTypes are the message types a client may send after startup.
var frontendTypes = [256]bool{
	'B': true, 'C': true, 'D': true, 'E': true, 'F': true, 'H': true, 'P': true,
	'Q': true, 'S': true, 'X': true, 'c': true, 'd': true, 'f': true,
}

// parseHeader validates a frontend message header (type byte and length)
// and returns the type and the body length.
func parseHeader(hdr []byte, maxBody int) (typ byte, n int, err error) {
	typ = hdr[0]
	if !frontendTypes[typ] {
		return typ, 0, fmt.Errorf("%w: invalid frontend message type %d", ErrProtocol, typ)
	}
	length := binary.BigEndian.Uint32(hdr[1:5])
	if length < 4 {
		return typ, 0, fmt.Errorf("%w: invalid message length %d", ErrProtocol, length)
	}
	if uint64(length)-4 > uint64(maxBody) {
		return typ, 0, fmt.Errorf("%w: message of %d bytes exceeds the limit of %d bytes", ErrProtocol, uint64(length)-4, maxBody)
	}
	return typ, int(length - 4), nil
}

// msgReader buffers reads from one connection. It is not safe for
// concurrent use.
type msgReader struct {
	rd   io.Reader
	buf  []byte
	r, w int
}

func newMsgReader(rd io.Reader, size int) msgReader {
	return msgReader{rd: rd, buf: make([]byte, size)}
}

func (m *msgReader) buffered() int { return m.w - m.r }

// fill reads once, after making room for at least need more bytes past r.
// need must not exceed len(m.buf).
func (m *msgReader) fill(need int) error {
	if m.r == m.w {
		m.r, m.w = 0, 0
	} else if len(m.buf)-m.r < need {
		m.w = copy(m.buf, m.buf[m.r:m.w])
		m.r = 0
	}
	n, err := m.rd.Read(m.buf[m.w:])
	m.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// readMessage reads one whole frontend message, growing big (and returning
// it) for a message larger than the buffer. The body is valid until the
// next call. It is the framer the engine's client loop uses, in one piece,
// for tests and fuzzing.
func readMessage(m *msgReader, maxBody int, big []byte) (typ byte, body, bigOut []byte, err error) {
	for m.buffered() < 5 {
		if err := m.fill(5); err != nil {
			return 0, nil, big, err
		}
	}
	typ, n, err := parseHeader(m.buf[m.r:m.r+5], maxBody)
	if err != nil {
		return typ, nil, big, err
	}
	if 5+n <= len(m.buf) {
		for m.buffered() < 5+n {
			if err := m.fill(5 + n); err != nil {
				return typ, nil, big, err
			}
		}
		body = m.buf[m.r+5 : m.r+5+n]
		m.r += 5 + n
		return typ, body, big, nil
	}
	m.r += 5
	if cap(big) < n {
		big = make([]byte, n)
	}
	big = big[:n]
	got := copy(big, m.buf[m.r:m.w])
	m.r += got
	if got < n {
		if _, err := io.ReadFull(m.rd, big[got:]); err != nil {
			return typ, nil, big, err
		}
	}
	return typ, big, big, nil
}

// cstring splits b at its first NUL.
func cstring(b []byte) (s, rest []byte, ok bool) {
	for i, ch := range b {
		if ch == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return nil, nil, false
}

func appendHeader(dst []byte, typ byte, bodyLen int) []byte {
	return append(dst, typ, byte((bodyLen+4)>>24), byte((bodyLen+4)>>16), byte((bodyLen+4)>>8), byte(bodyLen+4))
}

// appendNamed appends a message whose body is name NUL followed by rest
// (Parse), or a NUL-terminated first field, name NUL, rest (Bind).
func appendParse(dst, name, rest []byte) []byte {
	dst = appendHeader(dst, 'P', len(name)+1+len(rest))
	dst = append(dst, name...)
	dst = append(dst, 0)
	return append(dst, rest...)
}

func appendBind(dst, portal, stmt, rest []byte) []byte {
	dst = appendHeader(dst, 'B', len(portal)+1+len(stmt)+1+len(rest))
	dst = append(dst, portal...)
	dst = append(dst, 0)
	dst = append(dst, stmt...)
	dst = append(dst, 0)
	return append(dst, rest...)
}

// appendTargeted appends a Describe or Close of kind ('S' or 'P') and name.
func appendTargeted(dst []byte, typ, kind byte, name []byte) []byte {
	dst = appendHeader(dst, typ, 1+len(name)+1)
	dst = append(dst, kind)
	dst = append(dst, name...)
	return append(dst, 0)
}

func appendSync(dst []byte) []byte { return append(dst, 'S', 0, 0, 0, 4) }

func appendQuery(dst []byte, sql string) []byte {
	dst = appendHeader(dst, 'Q', len(sql)+1)
	dst = append(dst, sql...)
	return append(dst, 0)
}

func appendCopyFail(dst []byte, msg string) []byte {
	dst = appendHeader(dst, 'f', len(msg)+1)
	dst = append(dst, msg...)
	return append(dst, 0)
}

func appendReady(dst []byte, status byte) []byte { return append(dst, 'Z', 0, 0, 0, 5, status) }

// Severities and SQLSTATEs the engine sends.
const (
	severityError   = "ERROR"
	severityFatal   = "FATAL"
	severityWarning = "WARNING"

	codeProtocolViolation = "08P01"
	codeConnectionFailure = "08006"
	codeTooManyConns      = "53300"
	codeAdminShutdown     = "57P01"
	codeWarning           = "01000"
)

// appendError appends an ErrorResponse ('E') or NoticeResponse ('N').
func appendError(dst []byte, typ byte, severity, code, msg string) []byte {
	n := 4 + 2*len(severity) + len(code) + len(msg) + 4 + 1 // keys, values, NULs, terminator
	dst = appendHeader(dst, typ, n)
	for _, f := range [...]struct {
		k byte
		v string
	}{{'S', severity}, {'V', severity}, {'C', code}, {'M', msg}} {
		dst = append(dst, f.k)
		dst = append(dst, f.v...)
		dst = append(dst, 0)
	}
	return append(dst, 0)
}

// errorFields extracts severity (non-localized when present), code and
// message from an ErrorResponse body.
func errorFields(body []byte) (severity, code, msg string) {
	var localized string
	for len(body) > 0 && body[0] != 0 {
		k := body[0]
		v, rest, ok := cstring(body[1:])
		if !ok {
			break
		}
		switch k {
		case 'V':
			severity = string(v)
		case 'S':
			localized = string(v)
		case 'C':
			code = string(v)
		case 'M':
			msg = string(v)
		}
		body = rest
	}
	if severity == "" {
		severity = localized
	}
	return severity, code, msg
}

// isFatal reports whether an ErrorResponse body has severity FATAL or PANIC.
func isFatal(body []byte) bool {
	sev, _, _ := errorFields(body)
	return sev == "FATAL" || sev == "PANIC"
}
