package txmode

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// chunkReader returns at most n bytes per Read, as a socket may.
type chunkReader struct {
	b []byte
	n int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	k := min(len(p), r.n, len(r.b))
	copy(p, r.b[:k])
	r.b = r.b[k:]
	return k, nil
}

func msg(typ byte, body string) []byte {
	return append(appendHeader(nil, typ, len(body)), body...)
}

func TestParseHeader(t *testing.T) {
	tests := []struct {
		name    string
		hdr     []byte
		max     int
		wantTyp byte
		wantN   int
		wantErr string
	}{
		{"query", []byte{'Q', 0, 0, 0, 9}, 100, 'Q', 5, ""},
		{"sync", []byte{'S', 0, 0, 0, 4}, 100, 'S', 0, ""},
		{"at the limit", []byte{'d', 0, 0, 0, 104}, 100, 'd', 100, ""},
		{"over the limit", []byte{'d', 0, 0, 0, 105}, 100, 0, 0, "exceeds the limit"},
		{"huge length", []byte{'Q', 0xff, 0xff, 0xff, 0xff}, 1 << 30, 0, 0, "exceeds the limit"},
		{"length below 4", []byte{'Q', 0, 0, 0, 3}, 100, 0, 0, "invalid message length"},
		{"startup packet", []byte{0, 0, 0, 8, 4}, 100, 0, 0, "invalid frontend message type"},
		{"backend type", []byte{'Z', 0, 0, 0, 5}, 100, 0, 0, "invalid frontend message type"},
		{"password after startup", []byte{'p', 0, 0, 0, 5}, 100, 0, 0, "invalid frontend message type"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			typ, n, err := parseHeader(tc.hdr, tc.max)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || typ != tc.wantTyp || n != tc.wantN {
				t.Fatalf("got %q %d %v", typ, n, err)
			}
		})
	}
}

func TestReadMessage(t *testing.T) {
	var stream []byte
	stream = append(stream, msg('Q', "SELECT 1\x00")...)
	stream = append(stream, msg('P', "s1\x00SELECT $1\x00\x00\x00")...)
	big := strings.Repeat("x", 100)
	stream = append(stream, msg('d', big)...)
	stream = append(stream, msg('S', "")...)
	for _, chunk := range []int{1, 3, 7, 64, 1000} {
		m := newMsgReader(&chunkReader{b: stream, n: chunk}, 32)
		var big2 []byte
		var got []string
		for {
			typ, body, b2, err := readMessage(&m, 1000, big2)
			big2 = b2
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("chunk %d: %v", chunk, err)
			}
			got = append(got, string(typ)+":"+string(body))
		}
		want := []string{"Q:SELECT 1\x00", "P:s1\x00SELECT $1\x00\x00\x00", "d:" + big, "S:"}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("chunk %d: got %q", chunk, got)
		}
	}
}

// FuzzReadMessage feeds arbitrary bytes to the client-side framer: it
// must never panic, never return a body longer than the limit, and what it
// returns must re-encode to exactly the bytes it consumed.
func FuzzReadMessage(f *testing.F) {
	f.Add(msg('Q', "SELECT 1\x00"), 4)
	f.Add(append(msg('P', "a\x00SELECT 1\x00\x00\x00"), msg('S', "")...), 1)
	f.Add(append(msg('B', "\x00a\x00\x00\x00\x00\x00\x00\x00"), msg('X', "")...), 2)
	f.Add([]byte{'Q', 0, 0, 0, 3}, 5)
	f.Add([]byte{'Q', 0xff, 0xff, 0xff, 0xff}, 5)
	f.Add([]byte{0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f}, 8)
	f.Add(msg('d', strings.Repeat("z", 300)), 17)
	f.Fuzz(func(t *testing.T, data []byte, chunk int) {
		if chunk < 1 {
			chunk = 1
		}
		const limit = 256
		m := newMsgReader(&chunkReader{b: data, n: chunk}, 64)
		var out, big []byte
		for {
			typ, body, b2, err := readMessage(&m, limit, big)
			big = b2
			if err != nil {
				break
			}
			if len(body) > limit {
				t.Fatalf("body of %d bytes over the limit", len(body))
			}
			out = append(out, typ, 0, 0, 0, 0)
			binary.BigEndian.PutUint32(out[len(out)-4:], uint32(len(body)+4))
			out = append(out, body...)
		}
		if !bytes.HasPrefix(data, out) {
			t.Fatalf("re-encoded messages are not a prefix of the input")
		}
	})
}

func TestSettings(t *testing.T) {
	s, err := newSettings(map[string]string{"Application_Name": "app", "DateStyle": "ISO", "search_path": "a, b"}, 1500*time.Millisecond, 0)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := s.get("statement_timeout"); v != "1500ms" {
		t.Errorf("statement_timeout = %q", v)
	}
	if _, ok := s.get("idle_in_transaction_session_timeout"); ok {
		t.Error("idle_in_transaction_session_timeout set without a timeout")
	}
	own, _ := newSettings(map[string]string{"statement_timeout": "9s"}, time.Second, 0)
	if v, _ := own.get("statement_timeout"); v != "9s" {
		t.Errorf("the client's own statement_timeout = %q", v)
	}
	for _, bad := range []string{"role", "session_authorization", "vital.tenant_id", "a b", "x;DROP", ""} {
		if _, err := newSettings(map[string]string{bad: "v"}, 0, 0); err == nil {
			t.Errorf("setting %q accepted", bad)
		}
	}
	if !s.equal(s.with("datestyle", "ISO")) || s.equal(s.with("datestyle", "German")) {
		t.Error("with/equal")
	}
	var none *settings
	if !none.equal(&settings{}) || none.equal(s) {
		t.Error("nil settings")
	}

	tests := []struct {
		name     string
		from, to *settings
		want     []string
	}{
		{"fresh backend", nil, s, []string{"SELECT pg_catalog.set_config($vp$application_name$vp$, $vp$app$vp$, false), " +
			"pg_catalog.set_config($vp$datestyle$vp$, $vp$ISO$vp$, false), pg_catalog.set_config($vp$search_path$vp$, $vp$a, b$vp$, false), " +
			"pg_catalog.set_config($vp$statement_timeout$vp$, $vp$1500ms$vp$, false)"}},
		{"same", s, s, nil},
		{"to defaults", s, nil, []string{"RESET application_name; RESET datestyle; RESET search_path; RESET statement_timeout"}},
		{"encoding first", nil, none.with("client_encoding", "LATIN1").with("application_name", "x"),
			[]string{"SELECT pg_catalog.set_config($vp$client_encoding$vp$, $vp$LATIN1$vp$, false)",
				"SELECT pg_catalog.set_config($vp$application_name$vp$, $vp$x$vp$, false)"}},
		{"one changed", s, s.with("application_name", "other"), []string{"SELECT pg_catalog.set_config($vp$application_name$vp$, $vp$other$vp$, false)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := applyQueries(tc.from, tc.to); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestDollarQuote(t *testing.T) {
	for _, v := range []string{"", "plain", "it's", `back\slash`, "$vp$", "ends with $vp", "$vp0$ and $vp$", "$", "$$"} {
		q := dollarQuote(v)
		tag := q[:strings.IndexByte(q[1:], '$')+2]
		inner := q[len(tag) : len(q)-len(tag)]
		if inner != v || strings.Contains(v+tag[:len(tag)-1], tag) || !strings.HasSuffix(q, tag) {
			t.Errorf("dollarQuote(%q) = %q", v, q)
		}
		// The closing tag's first occurrence after the opening one is the
		// end of the literal.
		if i := strings.Index(q[len(tag):], tag); i != len(v) {
			t.Errorf("dollarQuote(%q) = %q closes early", v, q)
		}
	}
}

func TestScanHints(t *testing.T) {
	tests := []struct {
		q    string
		want uint8
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 1", 0},
		{"create temp table t (x int)", hintDiscard},
		{"CREATE TEMPORARY TABLE t AS SELECT 1", hintDiscard},
		{"select * into pg_temp.x from y", hintDiscard},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", hintDiscard},
		{"SELECT pg_advisory_lock(1)", hintDiscard},
		{"SELECT pg_try_advisory_lock_shared(1)", hintDiscard},
		{"SELECT pg_advisory_xact_lock(1)", 0},
		{"SELECT set_config('search_path', 'x', false)", hintReset},
		{"listen ch", hintDiscard},
		{"SELECT attempts, template, temperature FROM t", 0},
		{"PREPARE p AS SELECT 1", hintDiscard},
	}
	for _, tc := range tests {
		if got := scanHints([]byte(tc.q)); got != tc.want {
			t.Errorf("scanHints(%q) = %d, want %d", tc.q, got, tc.want)
		}
	}
}

func TestTagAction(t *testing.T) {
	tests := map[string]int{
		"SELECT 1": 0, "SET": actionSet, "RESET": actionSet, "DISCARD ALL": actionDiscardAll,
		"DISCARD PLANS": 0, "DEALLOCATE ALL": actionDeallocateAll, "DEALLOCATE": actionDeallocate,
		"LISTEN": actionListen, "PREPARE": actionSessionState, "CREATE TABLE": actionSessionState,
		"INSERT 0 1": 0, "": 0,
	}
	for tag, want := range tests {
		if got := tagAction(append([]byte(tag), 0)); got != want {
			t.Errorf("tagAction(%q) = %d, want %d", tag, got, want)
		}
	}
}

func TestErrorEncoding(t *testing.T) {
	b := appendError(nil, 'E', severityError, codeTooManyConns, "no server connection")
	if n := int(binary.BigEndian.Uint32(b[1:5])); n != len(b)-1 {
		t.Fatalf("length field %d, message %d", n, len(b)-1)
	}
	sev, code, m := errorFields(b[5:])
	if sev != "ERROR" || code != "53300" || m != "no server connection" || isFatal(b[5:]) {
		t.Errorf("decoded %q %q %q", sev, code, m)
	}
	if !isFatal(appendError(nil, 'E', severityFatal, "57P01", "bye")[5:]) {
		t.Error("FATAL not recognised")
	}
}

func TestFIFO(t *testing.T) {
	var q fifo
	for round := range 3 {
		for i := range 40 {
			q.push(expect{kind: 'Z', seg: uint64(round*100 + i)})
		}
		for i := range 40 {
			if e := q.pop(); e.seg != uint64(round*100+i) {
				t.Fatalf("round %d: popped %d, want %d", round, e.seg, round*100+i)
			}
		}
	}
	q.push(expect{kind: '1'})
	q.reset()
	if q.n != 0 {
		t.Fatal("reset")
	}
}

func TestIsUUID(t *testing.T) {
	for s, want := range map[string]bool{
		"0c6a41a8-8ab3-4a5f-9d3c-0d0f3a7b1e2f": true,
		"0C6A41A8-8AB3-4A5F-9D3C-0D0F3A7B1E2F": true,
		"0c6a41a8-8ab3-4a5f-9d3c-0d0f3a7b1e2":  false,
		"0c6a41a8x8ab3-4a5f-9d3c-0d0f3a7b1e2f": false,
		"'); DROP TABLE x; --aaaaaaaaaaaaaaaa": false,
	} {
		if isUUID(s) != want {
			t.Errorf("isUUID(%q) = %v", s, !want)
		}
	}
}

func TestSettingsQueries(t *testing.T) {
	tests := []struct {
		name     string
		from, to map[string]string
		want     []string
		wantErr  bool
	}{
		{"nothing", nil, nil, nil, false},
		{"same, names in any case", map[string]string{"datestyle": "ISO"}, map[string]string{"DateStyle": "ISO"}, nil, false},
		{"from defaults", nil, map[string]string{"timezone": "UTC", "application_name": "it's"},
			[]string{"SELECT pg_catalog.set_config($vp$application_name$vp$, $vp$it's$vp$, false), pg_catalog.set_config($vp$timezone$vp$, $vp$UTC$vp$, false)"}, false},
		{"to defaults", map[string]string{"timezone": "UTC"}, nil, []string{"RESET timezone"}, false},
		{"changed, dropped and added", map[string]string{"a": "1", "b": "2"}, map[string]string{"b": "3", "c": "4"},
			[]string{"RESET a; SELECT pg_catalog.set_config($vp$b$vp$, $vp$3$vp$, false), pg_catalog.set_config($vp$c$vp$, $vp$4$vp$, false)"}, false},
		{"bad name", nil, map[string]string{"x; DROP": "1"}, nil, true},
		{"refused name", map[string]string{"role": "x"}, nil, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SettingsQueries(tc.from, tc.to)
			if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
				t.Errorf("SettingsQueries = %q, %v; want %q (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}
