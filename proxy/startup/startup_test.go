package startup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

func startupBytes(t testing.TB, version uint32, params map[string]string) []byte {
	t.Helper()
	b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	binary.BigEndian.PutUint32(b[4:], version)
	return b
}

func packet(code uint32, extra ...byte) []byte {
	b := make([]byte, 8, 8+len(extra))
	binary.BigEndian.PutUint32(b, uint32(8+len(extra)))
	binary.BigEndian.PutUint32(b[4:], code)
	return append(b, extra...)
}

func TestReadPacket(t *testing.T) {
	huge := make([]byte, 8)
	binary.BigEndian.PutUint32(huge, 1<<30)
	negative := []byte{0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0}
	cancel := packet(cancelRequestCode, 0, 0, 0, 42, 1, 2, 3, 4)
	tests := []struct {
		name     string
		in       []byte
		kind     PacketKind
		code     string // SQLSTATE of the Error, "" for none
		wantEOF  bool
		checkMsg func(t *testing.T, p *Packet)
	}{
		{name: "startup/3.0", in: startupBytes(t, protocolV3, map[string]string{"user": "alice", "database": "db"}), kind: PacketStartup,
			checkMsg: func(t *testing.T, p *Packet) {
				if p.Startup.Parameters["user"] != "alice" || p.Minor != 0 {
					t.Errorf("got %+v minor %d", p.Startup.Parameters, p.Minor)
				}
			}},
		{name: "startup/3.2 negotiates", in: startupBytes(t, protocolV3|2, map[string]string{"user": "a", "_pq_.x": "1"}), kind: PacketStartup,
			checkMsg: func(t *testing.T, p *Packet) {
				if p.Minor != 2 || len(p.UnknownOptions) != 1 || p.UnknownOptions[0] != "_pq_.x" {
					t.Errorf("minor %d unknown %v", p.Minor, p.UnknownOptions)
				}
				if _, ok := p.Startup.Parameters["_pq_.x"]; ok {
					t.Error("protocol option left in parameters")
				}
			}},
		{name: "startup/3.7 negotiates", in: startupBytes(t, protocolV3|7, map[string]string{"user": "a"}), kind: PacketStartup},
		{name: "ssl", in: packet(sslRequestCode), kind: PacketSSLRequest},
		{name: "gssenc", in: packet(gssEncRequestCode), kind: PacketGSSENCRequest},
		{name: "cancel", in: cancel, kind: PacketCancel,
			checkMsg: func(t *testing.T, p *Packet) {
				if p.Cancel.ProcessID != 42 || !bytes.Equal(p.Cancel.SecretKey, []byte{1, 2, 3, 4}) {
					t.Errorf("cancel %+v", p.Cancel)
				}
			}},
		{name: "bad/protocol 2", in: startupBytes(t, 2<<16, map[string]string{"user": "a"}), code: codeFeatureNotSupported},
		{name: "bad/protocol 4", in: startupBytes(t, 4<<16, map[string]string{"user": "a"}), code: codeProtocolViolation},
		{name: "bad/unknown code", in: packet(12345678), code: codeProtocolViolation},
		{name: "bad/huge length", in: huge, code: codeProtocolViolation},
		{name: "bad/negative length", in: negative, code: codeProtocolViolation},
		{name: "bad/short length", in: []byte{0, 0, 0, 4, 0, 0, 0, 0}, code: codeProtocolViolation},
		{name: "bad/ssl with body", in: packet(sslRequestCode, 1), code: codeProtocolViolation},
		{name: "bad/cancel short", in: packet(cancelRequestCode, 0, 0, 0, 1), code: codeProtocolViolation},
		{name: "bad/cancel long key", in: packet(cancelRequestCode, 0, 0, 0, 1, 1, 2, 3, 4, 5), code: codeProtocolViolation},
		{name: "bad/no terminator", in: append(packet(protocolV3), 'u', 0, 'a'), code: codeProtocolViolation},
		{name: "bad/no params", in: append(packet(protocolV3), 0), code: codeProtocolViolation},
		{name: "truncated/body", in: startupBytes(t, protocolV3, map[string]string{"user": "alice"})[:12], code: codeProtocolViolation},
		{name: "truncated/header", in: []byte{0, 0}, wantEOF: true},
		{name: "empty", in: nil, wantEOF: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ReadPacket(bytes.NewReader(tt.in), 10000)
			if tt.wantEOF {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("err = %v, want EOF", err)
				}
				return
			}
			if tt.code != "" {
				var se *Error
				if !errors.As(err, &se) || se.Code != tt.code {
					t.Fatalf("err = %v, want Error %s", err, tt.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Kind != tt.kind {
				t.Fatalf("kind = %d, want %d", p.Kind, tt.kind)
			}
			if tt.checkMsg != nil {
				tt.checkMsg(t, p)
			}
		})
	}
}

// TestReadPacketLeavesPipelinedBytes checks the framing rule: bytes
// after the packet stay unread.
func TestReadPacketLeavesPipelinedBytes(t *testing.T) {
	sm := startupBytes(t, protocolV3, map[string]string{"user": "alice"})
	q, _ := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
	r := bytes.NewReader(append(sm, q...))
	if _, err := ReadPacket(r, 10000); err != nil {
		t.Fatal(err)
	}
	if r.Len() != len(q) {
		t.Fatalf("%d bytes left, want %d", r.Len(), len(q))
	}
}

func TestFilterParams(t *testing.T) {
	tests := []struct {
		name    string
		in      map[string]string
		runtime map[string]string
		code    string
	}{
		{name: "allowed", in: map[string]string{"user": "u", "database": "d", "application_name": "app", "DateStyle": "ISO", "client_encoding": "UTF8"},
			runtime: map[string]string{"application_name": "app", "DateStyle": "ISO", "client_encoding": "UTF8"}},
		{name: "options -c allowed", in: map[string]string{"user": "u", "options": "-c statement_timeout=5s --search-path=a\\ b"},
			runtime: map[string]string{"statement_timeout": "5s", "search_path": "a b"}},
		{name: "options -c split", in: map[string]string{"user": "u", "options": "-c  application_name=x"},
			runtime: map[string]string{"application_name": "x"}},
		{name: "unknown dropped", in: map[string]string{"user": "u", "geqo_effort": "3"}, runtime: map[string]string{}},
		{name: "replication off", in: map[string]string{"user": "u", "replication": "false"}, runtime: map[string]string{}},
		{name: "refused/role", in: map[string]string{"user": "u", "role": "postgres"}, code: codeInsufficientPriv},
		{name: "refused/session_authorization", in: map[string]string{"user": "u", "session_authorization": "postgres"}, code: codeInsufficientPriv},
		{name: "refused/custom setting", in: map[string]string{"user": "u", "vital.tenant_id": "x"}, code: codeInsufficientPriv},
		{name: "refused/row_security", in: map[string]string{"user": "u", "Row_Security": "off"}, code: codeInsufficientPriv},
		{name: "refused/options role", in: map[string]string{"user": "u", "options": "-c role=postgres"}, code: codeInsufficientPriv},
		{name: "refused/options long role", in: map[string]string{"user": "u", "options": "--role=postgres"}, code: codeInsufficientPriv},
		{name: "refused/options custom", in: map[string]string{"user": "u", "options": "-cvital.tenant_id=x"}, code: codeInsufficientPriv},
		{name: "refused/options switch", in: map[string]string{"user": "u", "options": "-B 100"}, code: codeInsufficientPriv},
		{name: "refused/options dangling -c", in: map[string]string{"user": "u", "options": "-c"}, code: codeProtocolViolation},
		{name: "refused/replication", in: map[string]string{"user": "u", "replication": "database"}, code: codeFeatureNotSupported},
		{name: "refused/no user", in: map[string]string{"database": "d"}, code: codeInvalidAuthSpec},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sp, err := FilterParams(tt.in)
			if tt.code != "" {
				var se *Error
				if !errors.As(err, &se) || se.Code != tt.code {
					t.Fatalf("err = %v, want %s", err, tt.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(sp.Runtime) != len(tt.runtime) {
				t.Fatalf("runtime = %v, want %v", sp.Runtime, tt.runtime)
			}
			for k, v := range tt.runtime {
				if sp.Runtime[k] != v {
					t.Errorf("runtime[%s] = %q, want %q", k, sp.Runtime[k], v)
				}
			}
		})
	}
}

func TestWireReceivePassword(t *testing.T) {
	pw, _ := (&pgproto3.PasswordMessage{Password: "secret"}).Encode(nil)
	q, _ := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
	term, _ := (&pgproto3.Terminate{}).Encode(nil)
	big := []byte{'p', 0, 0, 0x10, 0}
	tests := []struct {
		name string
		in   []byte
		want string
		err  func(error) bool
	}{
		{name: "password", in: pw, want: "secret\x00"},
		{name: "query refused", in: q, err: func(err error) bool {
			var se *Error
			return errors.As(err, &se) && se.Code == codeProtocolViolation
		}},
		{name: "terminate", in: term, err: func(err error) bool { return errors.Is(err, ErrClientTerminated) }},
		{name: "too long", in: big, err: func(err error) bool {
			var se *Error
			return errors.As(err, &se) && se.Code == codeProtocolViolation
		}},
		{name: "truncated", in: pw[:7], err: func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c1, c2 := net.Pipe()
			defer c1.Close()
			go func() { _, _ = c2.Write(tt.in); c2.Close() }()
			w := NewWire(c1, 1000)
			body, err := w.ReceivePassword()
			if tt.err != nil {
				if !tt.err(err) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(body) != tt.want {
				t.Fatalf("body = %q", body)
			}
		})
	}
}

// TestWireHold: held messages go out with the next Send, all in one
// write, in order; Hold alone writes nothing.
func TestWireHold(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	w := NewWire(c1, 1000)
	// Any write now fails at once: Hold must not write.
	_ = c1.SetWriteDeadline(time.Unix(1, 0))
	final := &pgproto3.AuthenticationSASLFinal{Data: []byte("v=signature")}
	if err := w.Hold(final); err != nil {
		t.Fatal(err)
	}
	if err := w.Hold(&pgproto3.AuthenticationOk{}); err != nil {
		t.Fatal(err)
	}
	_ = c1.SetWriteDeadline(time.Time{})
	// readOnce returns what one read of c2 gets: one write of c1 (net.Pipe).
	readOnce := func() <-chan []byte {
		got := make(chan []byte, 1)
		go func() {
			buf := make([]byte, 4096)
			n, _ := c2.Read(buf)
			got <- buf[:n]
		}()
		return got
	}
	got := readOnce()
	if err := w.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'}); err != nil {
		t.Fatal(err)
	}
	var want []byte
	for _, m := range []pgproto3.BackendMessage{final, &pgproto3.AuthenticationOk{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}} {
		want, _ = m.Encode(want)
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("first read = %q, want the held messages and the sent one in one write: %q", b, want)
	}
	// Nothing stays held after a Send.
	got = readOnce()
	if err := w.Send(&pgproto3.ReadyForQuery{TxStatus: 'T'}); err != nil {
		t.Fatal(err)
	}
	if b, want := <-got, []byte{'Z', 0, 0, 0, 5, 'T'}; !bytes.Equal(b, want) {
		t.Fatalf("second write = %q, want %q", b, want)
	}
}

func FuzzParsePacket(f *testing.F) {
	f.Add(startupBytes(f, protocolV3, map[string]string{"user": "alice", "database": "db", "options": "-c a=b"})[4:])
	f.Add(packet(sslRequestCode)[4:])
	f.Add(packet(cancelRequestCode, 0, 0, 0, 42, 1, 2, 3, 4)[4:])
	f.Add(startupBytes(f, protocolV3|2, map[string]string{"user": "a", "_pq_.x": "1"})[4:])
	f.Add([]byte{0, 3, 0, 0, 0})
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := parsePacket(body)
		if err != nil {
			var se *Error
			if !errors.As(err, &se) || se.Code == "" {
				t.Fatalf("error without SQLSTATE: %v", err)
			}
			return
		}
		if p.Kind == PacketStartup {
			sp, err := FilterParams(p.Startup.Parameters)
			if err != nil {
				return
			}
			for k := range sp.Runtime {
				if !allowedParams[strings.ToLower(k)] {
					t.Fatalf("forwarded %q", k)
				}
			}
		}
	})
}

func FuzzParseOptions(f *testing.F) {
	f.Add("-c a=b --c-d=e -cf=g")
	f.Add("-c\\ role=x")
	f.Fuzz(func(t *testing.T, s string) {
		settings, err := parseOptions(s)
		if err != nil {
			return
		}
		for _, kv := range settings {
			if kv[0] == "" {
				t.Fatalf("empty name from %q", s)
			}
		}
	})
}
