package sessionmode

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/vitalproxy/vitalproxy/proxy/notify"
)

// feedAll runs f over data delivered in chunks of the given sizes and
// returns what it passed on and why it stopped.
func feedAll(f *framer, data []byte, chunks []int) ([]byte, error) {
	var sent []byte
	for len(data) > 0 {
		n := len(data)
		if len(chunks) > 0 {
			n = max(1, min(chunks[0], len(data)))
			chunks = chunks[1:]
		}
		// The framer may keep pointers into nothing it is given: hand it
		// a buffer that is overwritten after the call, as the loop's is.
		buf := append([]byte(nil), data[:n]...)
		data = data[n:]
		out, err := f.feed(buf)
		sent = append(sent, out...)
		clear(buf)
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

func frameAll(data []byte, chunks []int, maxLen int) ([]byte, error) {
	return feedAll(&framer{fromClient: true, maxLen: maxLen}, data, chunks)
}

func msg(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestFrame(t *testing.T) {
	q := msg('Q', "SELECT 1\x00")
	tests := []struct {
		name    string
		in      []byte
		chunks  []int
		maxLen  int
		want    []byte
		wantErr error
	}{
		{"whole messages pass", cat(q, q), nil, 0, cat(q, q), nil},
		{"terminate is kept back", cat(q, msg('X', "")), nil, 0, q, errClientTerminate},
		{"terminate split across reads", cat(q, msg('X', "")), []int{len(q) + 2, 1, 1, 1}, 0, q, errClientTerminate},
		{"header split is held until whole", q, []int{3, 1, 1, 100}, 0, q, nil},
		{"bad length", cat(q, []byte{'Q', 0, 0, 0, 2}), nil, 0, q, errProtocol},
		{"too large", cat(q, msg('Q', "0123456789")), nil, 9, q, errMessageTooLarge},
		{"X inside a body is data", msg('d', "X\x00\x00\x00\x04"), []int{1, 1, 1, 1, 1, 1, 1}, 0, msg('d', "X\x00\x00\x00\x04"), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := frameAll(tc.in, tc.chunks, tc.maxLen)
			if !errors.Is(err, tc.wantErr) || !bytes.Equal(got, tc.want) {
				t.Errorf("sent %q err %v, want %q err %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func notification(pid uint32, channel, payload string) []byte {
	body := string(binary.BigEndian.AppendUint32(nil, pid)) + channel + "\x00" + payload + "\x00"
	return msg('A', body)
}

// TestFrameNotify checks the channel namespace in both directions, however
// the stream is cut into reads.
func TestFrameNotify(t *testing.T) {
	ns := notify.New([]byte("0123456789abcdef0123456789abcdef"), "11111111-1111-1111-1111-111111111111")
	other := notify.New([]byte("0123456789abcdef0123456789abcdef"), "22222222-2222-2222-2222-222222222222")
	p := ns.Prefix()
	row := msg('D', "\x00\x01\x00\x00\x00\x01x")
	tests := []struct {
		name       string
		fromClient bool
		in, want   []byte
	}{
		{"listen rewritten", true,
			cat(msg('Q', "SELECT 1\x00"), msg('Q', "LISTEN orders\x00"), msg('S', "")),
			cat(msg('Q', "SELECT 1\x00"), msg('Q', `LISTEN "`+p+`orders"`+"\x00"), msg('S', ""))},
		{"parse rewritten", true,
			cat(msg('P', "s\x00SELECT pg_notify($1, 'x')\x00\x00\x00"), msg('B', "\x00s\x00\x00\x00\x00\x00\x00\x00")),
			cat(msg('P', "s\x00SELECT pg_notify('"+p+"' || ($1)::text, 'x')\x00\x00\x00"), msg('B', "\x00s\x00\x00\x00\x00\x00\x00\x00"))},
		{"other queries untouched", true, cat(msg('Q', "SELECT 'notify'\x00"), msg('d', "LISTEN x")),
			cat(msg('Q', "SELECT 'notify'\x00"), msg('d', "LISTEN x"))},
		{"own notification mapped", false,
			cat(row, notification(7, ns.Channel("orders"), "hi"), row),
			cat(row, notification(7, "orders", "hi"), row)},
		{"sender pids pass unchanged", false,
			notification(1234, ns.Channel("orders"), "hi"), notification(1234, "orders", "hi")},
		{"foreign notifications dropped", false,
			cat(notification(7, other.Channel("orders"), "secret"), row, notification(7, "orders", "raw")),
			row},
	}
	for _, tc := range tests {
		for _, chunks := range [][]int{nil, {1}, {3, 2, 1, 7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {6, 20}} {
			f := &framer{fromClient: tc.fromClient, ns: ns}
			got, err := feedAll(f, tc.in, chunks)
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Errorf("%s (reads %v):\n got %q err %v\nwant %q", tc.name, chunks, got, err, tc.want)
			}
		}
	}
}

// FuzzFrame: however the bytes are split into reads, the framer passes on
// the same bytes and stops for the same reason, what it passes on is a
// sequence of whole headers, and with a namespace the server-side stream
// carries no notification outside it.
func FuzzFrame(f *testing.F) {
	f.Add(cat(msg('Q', "SELECT 1\x00"), msg('X', "")), []byte{3, 1, 7}, true)
	f.Add(msg('P', "\x00SELECT $1\x00\x00\x00"), []byte{1}, true)
	f.Add(msg('Q', "LISTEN a; NOTIFY b\x00"), []byte{4, 4}, true)
	f.Add(cat(notification(1, "vpxxxxxxxxxxxxx_a", "p"), msg('Z', "I")), []byte{2, 9}, false)
	f.Add([]byte{'Q', 0xff, 0xff, 0xff, 0xff}, []byte{2, 2}, true)
	f.Add([]byte{'Q', 0, 0, 0, 1}, []byte{}, true)
	ns := notify.New([]byte("fuzz secret"), "11111111-1111-1111-1111-111111111111")
	f.Fuzz(func(t *testing.T, data []byte, splits []byte, fromClient bool) {
		chunks := make([]int, len(splits))
		for i, s := range splits {
			chunks[i] = int(s)
		}
		for _, space := range []*notify.Namespace{nil, ns} {
			mk := func() *framer { return &framer{fromClient: fromClient, maxLen: 1 << 20, ns: space} }
			whole, wholeErr := feedAll(mk(), data, nil)
			split, splitErr := feedAll(mk(), data, chunks)
			if !bytes.Equal(whole, split) || !errors.Is(splitErr, wholeErr) && !(splitErr == nil && wholeErr == nil) {
				t.Fatalf("whole: %q %v; split: %q %v", whole, wholeErr, split, splitErr)
			}
			// Walk what was passed on: whole headers, and (server side,
			// with a namespace) notifications only when the input had one
			// inside the namespace.
			own := false
			for pos := 0; pos+5 <= len(data); {
				n := int(binary.BigEndian.Uint32(data[pos+1:]))
				if n < 4 || pos+1+n > len(data) {
					break
				}
				if data[pos] == 'A' && n > 8 && bytes.HasPrefix(data[pos+9:pos+1+n], []byte(ns.Prefix())) {
					own = true
				}
				pos += 1 + n
			}
			for pos := 0; pos < len(whole); {
				if len(whole)-pos < 5 {
					t.Fatalf("passed-on bytes end inside a header: %q", whole)
				}
				n := int(binary.BigEndian.Uint32(whole[pos+1:]))
				if !fromClient && space != nil && whole[pos] == 'A' && !own {
					t.Fatalf("a notification outside the namespace passed: %q", whole[pos:])
				}
				pos += 1 + n
			}
		}
	})
}

// TestIdleAfter: a reset may skip ending what the client left only when
// every request was answered and the last answer reported an idle backend.
func TestIdleAfter(t *testing.T) {
	q := msg('Q', "SELECT 1\x00")
	ready := func(status byte) []byte { return msg('Z', string([]byte{status})) }
	ext := cat(msg('P', "\x00SELECT 1\x00\x00\x00"), msg('B', "\x00\x00\x00\x00\x00\x00\x00\x00"), msg('E', "\x00\x00\x00\x00\x00"))
	tests := []struct {
		name           string
		client, server []byte
		want           bool
	}{
		{"nothing sent", nil, nil, true},
		{"query answered", q, cat(msg('C', "SELECT 1\x00"), ready('I')), true},
		{"inside a transaction", msg('Q', "BEGIN\x00"), cat(msg('C', "BEGIN\x00"), ready('T')), false},
		{"failed transaction", q, ready('E'), false},
		{"query not answered yet", q, nil, false},
		{"pipelined, one answered", cat(q, q), ready('I'), false},
		{"extended without Sync", ext, nil, false},
		{"extended synced and answered", cat(ext, msg('S', "")), cat(msg('1', ""), msg('2', ""), msg('C', "SELECT 1\x00"), ready('I')), true},
		{"copy in progress", msg('Q', "COPY t FROM STDIN\x00"), msg('G', "\x00\x00\x00"), false},
		{"server stream cut inside a message", q, cat(msg('C', "SELECT 1\x00"), ready('I'), []byte{'D', 0, 0}), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &framer{fromClient: true}
			s := &framer{status: 'I'}
			if _, err := feedAll(c, tc.client, []int{3, 1}); err != nil {
				t.Fatal(err)
			}
			if _, err := feedAll(s, tc.server, []int{1, 5, 2}); err != nil {
				t.Fatal(err)
			}
			if got := idleAfter(c, s); got != tc.want {
				t.Errorf("idleAfter = %v, want %v", got, tc.want)
			}
		})
	}
}
