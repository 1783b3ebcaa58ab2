package backend

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vitalproxy/vitalproxy/proxy/txmode"
)

// ApplySettings moves the backend's settings from what a reset left
// (from; nil for the server's defaults) to the client's allow-listed
// startup settings (to) in one round trip, if they differ, the way the
// transaction engine applies them (txmode.SettingsQueries), and merges the
// ParameterStatus values the server reports into params. A setting the
// server refuses is a *pgconn.PgError.
func ApplySettings(ctx context.Context, conn net.Conn, from, to map[string]string, params map[string]string) error {
	queries, err := txmode.SettingsQueries(from, to)
	if err != nil || len(queries) == 0 {
		return err
	}
	var buf []byte
	for _, q := range queries {
		buf, _ = (&pgproto3.Query{String: q}).Encode(buf)
	}
	return RoundTrip(ctx, conn, buf, len(queries), func(typ byte, body []byte) error {
		if typ == 'S' {
			var ps pgproto3.ParameterStatus
			if err := ps.Decode(body); err == nil {
				params[ps.Name] = ps.Value
			}
		}
		return nil
	})
}

// exchange writes buf to a backend and hands every message it answers with
// to next until next reports done, all under one deadline (resetTimeout, or
// ctx's if sooner). It is the one place that talks to a backend outside
// forwarding: applying settings, resets, the probe.
func exchange(ctx context.Context, conn net.Conn, buf []byte, next func(typ byte, body []byte) (done bool, err error)) error {
	deadline := time.Now().Add(resetTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	if _, err := conn.Write(buf); err != nil {
		return err
	}
	// Buffered: a reply of several messages costs one read, not two per
	// message. The conversation ends at a ReadyForQuery after which the
	// server sends nothing unasked, so nothing is left in the buffer.
	br := exchangeReaders.Get().(*bufio.Reader)
	br.Reset(conn)
	defer func() {
		br.Reset(nil)
		exchangeReaders.Put(br)
	}()
	var hdr [5]byte
	var body []byte
	for {
		typ, b, err := readServerMessage(br, &hdr, body)
		if err != nil {
			return err
		}
		body = b
		if done, err := next(typ, body); done {
			if err == nil && br.Buffered() > 0 {
				return errors.New("server sent more than the exchange asked for")
			}
			return err
		}
	}
}

// RoundTrip writes buf and reads until the want-th ReadyForQuery, calling
// fn for every other message; an ErrorResponse fails it as a
// *pgconn.PgError (after reading on to the ReadyForQuery, so the
// connection stays in step). The final ReadyForQuery must report an idle
// backend. The body fn gets is valid only until it returns.
func RoundTrip(ctx context.Context, conn net.Conn, buf []byte, want int, fn func(typ byte, body []byte) error) error {
	var failure error
	return exchange(ctx, conn, buf, func(typ byte, body []byte) (bool, error) {
		switch typ {
		case 'E':
			var e pgproto3.ErrorResponse
			_ = e.Decode(body)
			if failure == nil {
				failure = &pgconn.PgError{Severity: e.Severity, Code: e.Code, Message: e.Message}
			}
		case 'Z':
			if want--; want == 0 {
				if failure == nil && (len(body) != 1 || body[0] != 'I') {
					failure = errors.New("backend is not idle")
				}
				return true, failure
			}
		default:
			if err := fn(typ, body); err != nil && failure == nil {
				failure = err
			}
		}
		return false, nil
	})
}

// maxServerMessage bounds one message read while resetting a backend; a
// larger one (a leftover result) is skipped without buffering it.
const maxServerMessage = 1 << 20

var exchangeReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

func readServerMessage(conn io.Reader, hdr *[5]byte, buf []byte) (byte, []byte, error) {
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(uint32(hdr[1])<<24|uint32(hdr[2])<<16|uint32(hdr[3])<<8|uint32(hdr[4])) - 4
	if n < 0 {
		return 0, nil, errors.New("bad message length from server")
	}
	if n > maxServerMessage {
		if _, err := io.CopyN(io.Discard, conn, int64(n)); err != nil {
			return 0, nil, err
		}
		return hdr[0], buf[:0], nil
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	_, err := io.ReadFull(conn, buf)
	return hdr[0], buf, err
}

// resetTimeout bounds resetting a backend for reuse.
const resetTimeout = 5 * time.Second

var uuidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// Reset makes a backend that a session-mode client left behind safe
// for the next client of the same role: whatever the client left (a COPY, a
// half-sent extended query, an open transaction, session state) is ended,
// resetQuery (DISCARD ALL by default) runs, and the tenant context is
// asserted again. The client's protocol state may be unknown, so the last
// query returns a random marker and the reset waits for it. idle says the
// forwarding saw the server answer everything and report itself idle
// outside a transaction: then there is nothing to end first.
//
// keep are the client's startup settings, applied again
// after resetQuery so that the next client with the same ones needs no
// round trip of its own; the caller passes them only when resetQuery is
// DISCARD ALL. It returns the ParameterStatus values the server reported
// during the reset, latest last.
func Reset(ctx context.Context, conn net.Conn, resetQuery, tenantID string, idle bool, keep map[string]string) (map[string]string, error) {
	if !uuidPattern.MatchString(tenantID) {
		return nil, fmt.Errorf("tenant id %q is not a uuid", tenantID)
	}
	marker := newMarker()
	var buf []byte
	if !idle {
		buf, _ = (&pgproto3.CopyFail{Message: "client disconnected"}).Encode(buf)
		buf, _ = (&pgproto3.Sync{}).Encode(buf)
		buf, _ = (&pgproto3.Query{String: "ROLLBACK"}).Encode(buf)
	}
	// The reset's own statements, each of which must succeed: the
	// ReadyForQuery segments just before the marker's are theirs.
	own := 0
	if resetQuery != "" {
		buf, _ = (&pgproto3.Query{String: resetQuery}).Encode(buf)
		own++
	}
	queries, err := txmode.SettingsQueries(nil, keep)
	if err != nil {
		return nil, err
	}
	for _, q := range queries {
		buf, _ = (&pgproto3.Query{String: q}).Encode(buf)
		own++
	}
	// The marker reports whether the session still runs as its login role.
	buf, _ = (&pgproto3.Query{String: fmt.Sprintf(
		"SELECT public.set_tenant_context('%s'), '%s' || CASE WHEN current_user = session_user THEN ':ok' ELSE ':role-changed' END",
		tenantID, marker)}).Encode(buf)

	var (
		seen     bool
		failure  error
		segErr   bool   // an ErrorResponse since the last ReadyForQuery
		segments []bool // whether each finished segment had one, latest last
		reported = map[string]string{}
	)
	err = exchange(ctx, conn, buf, func(typ byte, body []byte) (bool, error) {
		switch {
		case typ == 'S':
			var ps pgproto3.ParameterStatus
			if err := ps.Decode(body); err == nil {
				reported[ps.Name] = ps.Value
			}
		case typ == 'D' && strings.Contains(string(body), marker):
			seen = true
			if !strings.Contains(string(body), marker+":ok") {
				failure = errors.New("backend no longer runs as its login role")
			}
			if len(segments) < own || slices.Contains(segments[len(segments)-own:], true) {
				failure = errors.New("reset statement failed")
			}
		case typ == 'E' && seen:
			failure = errors.New("reset failed")
		case typ == 'E':
			segErr = true
		case typ == 'Z' && seen:
			if failure == nil && (len(body) != 1 || body[0] != 'I') {
				failure = errors.New("backend is not idle after reset")
			}
			return true, failure
		case typ == 'Z':
			segments = append(segments, segErr)
			segErr = false
		}
		return false, nil
	})
	return reported, err
}

func newMarker() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("vitalproxy-reset-%x", b)
}
