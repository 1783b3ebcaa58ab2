package integration_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

// rawClient is a hand-driven protocol connection for tests that need bytes
// no driver would send.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	fe   *pgproto3.Frontend
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// A generous upper bound: no test waits anywhere near this long unless
	// the proxy hangs.
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
}

func (r *rawClient) write(b []byte) {
	r.t.Helper()
	if _, err := r.conn.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *rawClient) send(msgs ...pgproto3.FrontendMessage) {
	r.t.Helper()
	for _, m := range msgs {
		r.fe.Send(m)
	}
	if err := r.fe.Flush(); err != nil {
		r.t.Fatalf("send: %v", err)
	}
}

func (r *rawClient) receive() (pgproto3.BackendMessage, error) {
	return r.fe.Receive()
}

// expectFatal reads until an ErrorResponse, checks its severity and code,
// then checks that the proxy closes the connection.
func (r *rawClient) expectFatal(code string) *pgproto3.ErrorResponse {
	r.t.Helper()
	for {
		msg, err := r.receive()
		if err != nil {
			r.t.Fatalf("want ErrorResponse %s, got %v", code, err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			if e.Severity != "FATAL" || e.Code != code {
				r.t.Fatalf("got %s %s %q, want FATAL %s", e.Severity, e.Code, e.Message, code)
			}
			r.expectClosed()
			return e
		}
	}
}

// expectClosed checks that the next read hits the end of the stream.
func (r *rawClient) expectClosed() {
	r.t.Helper()
	buf := make([]byte, 1)
	for {
		_, err := r.conn.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			r.t.Fatal("the proxy did not close the connection")
		}
		return
	}
}

// startup sends a StartupMessage.
func (r *rawClient) startup(params map[string]string) {
	r.t.Helper()
	r.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params})
}

// scramLogin performs SCRAM-SHA-256 by hand after the StartupMessage. The
// extra messages are written in the same write as the client's final SASL
// message, before the proxy has said AuthenticationOk.
func (r *rawClient) scramLogin(password string, extra ...pgproto3.FrontendMessage) {
	r.t.Helper()
	msg, err := r.receive()
	if err != nil {
		r.t.Fatal(err)
	}
	if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
		r.t.Fatalf("want AuthenticationSASL, got %T", msg)
	}
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		r.t.Fatal(err)
	}
	conv := client.NewConversation()
	first, err := conv.Step("")
	if err != nil {
		r.t.Fatal(err)
	}
	r.send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(first)})
	msg, err = r.receive()
	if err != nil {
		r.t.Fatal(err)
	}
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		r.t.Fatalf("want AuthenticationSASLContinue, got %#v", msg)
	}
	final, err := conv.Step(string(cont.Data))
	if err != nil {
		r.t.Fatal(err)
	}
	r.send(append([]pgproto3.FrontendMessage{&pgproto3.SASLResponse{Data: []byte(final)}}, extra...)...)
	msg, err = r.receive()
	if err != nil {
		r.t.Fatal(err)
	}
	fin, ok := msg.(*pgproto3.AuthenticationSASLFinal)
	if !ok {
		r.t.Fatalf("want AuthenticationSASLFinal, got %#v", msg)
	}
	if _, err := conv.Step(string(fin.Data)); err != nil {
		r.t.Fatalf("server signature: %v", err)
	}
	msg, err = r.receive()
	if err != nil {
		r.t.Fatal(err)
	}
	if _, ok := msg.(*pgproto3.AuthenticationOk); !ok {
		r.t.Fatalf("want AuthenticationOk, got %#v", msg)
	}
}

// readyForQuery reads up to the first ReadyForQuery and returns the
// BackendKeyData seen on the way.
func (r *rawClient) readyForQuery() *pgproto3.BackendKeyData {
	r.t.Helper()
	var key *pgproto3.BackendKeyData
	for {
		msg, err := r.receive()
		if err != nil {
			r.t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.BackendKeyData:
			key = &pgproto3.BackendKeyData{ProcessID: m.ProcessID, SecretKey: append([]byte(nil), m.SecretKey...)}
		case *pgproto3.ErrorResponse:
			r.t.Fatalf("error before ReadyForQuery: %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return key
		}
	}
}

// queryRows reads the results of one simple query up to ReadyForQuery and
// returns the text rows.
func (r *rawClient) queryRows() ([][]string, *pgproto3.ErrorResponse) {
	r.t.Helper()
	var rows [][]string
	var errResp *pgproto3.ErrorResponse
	for {
		msg, err := r.receive()
		if err != nil {
			r.t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			row := make([]string, len(m.Values))
			for i, v := range m.Values {
				row[i] = string(v)
			}
			rows = append(rows, row)
		case *pgproto3.ErrorResponse:
			cp := *m
			errResp = &cp
		case *pgproto3.ReadyForQuery:
			return rows, errResp
		}
	}
}

// sendCancel sends a CancelRequest on a new connection and waits until the
// proxy has processed it (it closes the connection).
func sendCancel(t testing.TB, addr string, pid uint32, key []byte) {
	t.Helper()
	r := dialRaw(t, addr)
	b, err := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: key}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	r.write(b)
	if n, err := io.Copy(io.Discard, r.conn); err != nil || n != 0 {
		t.Fatalf("cancel connection: read %d bytes, %v", n, err)
	}
}

// lengthPrefixed builds a startup-phase packet: length, code, body.
func lengthPrefixed(length uint32, code uint32, body ...byte) []byte {
	b := make([]byte, 8, 8+len(body))
	binary.BigEndian.PutUint32(b, length)
	binary.BigEndian.PutUint32(b[4:], code)
	return append(b, body...)
}

var _ = fmt.Sprint
