package startup

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sort"

	"github.com/jackc/pgx/v5/pgproto3"
)

// NewWire returns the wire of conn; maxLen bounds a password message's
// body.
func NewWire(conn net.Conn, maxLen int) *Wire { return &Wire{conn: conn, maxLen: maxLen} }

// Wire is the client connection during authentication (auth.Wire). It
// reads each message with exact-length reads from the socket: nothing past
// the message is consumed. Not safe for concurrent use.
type Wire struct {
	conn   net.Conn
	maxLen int
	buf    []byte
	held   int // leading bytes of buf that Hold encoded and no write sent yet
}

// Send encodes msgs and writes them, after any held messages, in one write.
func (w *Wire) Send(msgs ...pgproto3.BackendMessage) error {
	if err := w.Hold(msgs...); err != nil {
		return err
	}
	b := w.buf[:w.held]
	w.held = 0
	_, err := w.conn.Write(b)
	return err
}

// Hold encodes msgs to be written with the next Send (see auth.Wire).
func (w *Wire) Hold(msgs ...pgproto3.BackendMessage) error {
	b := w.buf[:w.held]
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			return fmt.Errorf("encode %T: %w", m, err)
		}
	}
	w.buf, w.held = b, len(b)
	return nil
}

// ReceivePassword returns the body of the next message, which must be a
// password-type ('p') message: PasswordMessage, SASLInitialResponse or
// SASLResponse. The caller owns the returned slice.
func (w *Wire) ReceivePassword() ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(w.conn, hdr[:]); err != nil {
		return nil, err
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[1:])))
	if hdr[0] == 'X' && n == 4 {
		return nil, ErrClientTerminated
	}
	if hdr[0] != 'p' {
		return nil, protocolError("expected a password message during authentication, got message type %q", hdr[0])
	}
	if n < 4 || n-4 > int64(w.maxLen) {
		return nil, protocolError("invalid message length during authentication")
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(w.conn, body); err != nil {
		return nil, err
	}
	return body, nil
}

// Handover returns the messages that end the startup phase: the upstream's
// ParameterStatus messages (sorted by name), the proxy's BackendKeyData
// with the client's cancel key (pid, secret) and ReadyForQuery.
func Handover(params map[string]string, pid uint32, secret []byte) []pgproto3.BackendMessage {
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	msgs := make([]pgproto3.BackendMessage, 0, len(names)+2)
	for _, k := range names {
		msgs = append(msgs, &pgproto3.ParameterStatus{Name: k, Value: params[k]})
	}
	msgs = append(msgs,
		&pgproto3.BackendKeyData{ProcessID: pid, SecretKey: secret},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	return msgs
}
