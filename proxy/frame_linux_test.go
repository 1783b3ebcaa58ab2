//go:build linux

package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// frameAll runs the framer over data delivered in chunks of the given
// sizes and returns what would have reached the server and why it stopped.
func frameAll(data []byte, chunks []int, maxLen int) ([]byte, error) {
	j := &fwdJob{maxLen: maxLen}
	var sent []byte
	for len(data) > 0 {
		n := len(data)
		if len(chunks) > 0 {
			n = max(1, min(chunks[0], len(data)))
			chunks = chunks[1:]
		}
		buf := append(append([]byte(nil), j.carry[:j.carryLen]...), data[:n]...)
		j.carryLen = 0
		data = data[n:]
		send, err := j.frame(buf)
		sent = append(sent, buf[:send]...)
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

func msg(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

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
		{"whole messages pass", append(append([]byte{}, q...), q...), nil, 0, append(append([]byte{}, q...), q...), nil},
		{"terminate is kept back", append(append([]byte{}, q...), msg('X', "")...), nil, 0, q, errClientTerminate},
		{"terminate split across reads", append(append([]byte{}, q...), msg('X', "")...), []int{len(q) + 2, 1, 1, 1}, 0, q, errClientTerminate},
		{"header split is held until whole", q, []int{3, 1, 1, 100}, 0, q, nil},
		{"bad length", append(append([]byte{}, q...), 'Q', 0, 0, 0, 2), nil, 0, q, errProtocol},
		{"too large", append(append([]byte{}, q...), msg('Q', "0123456789")...), nil, 9, q, errMessageTooLarge},
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

// FuzzFrame: however the client's bytes are split into reads, the server
// receives the same bytes and the framer stops for the same reason, and it
// never passes on a partial header.
func FuzzFrame(f *testing.F) {
	f.Add(append(msg('Q', "SELECT 1\x00"), msg('X', "")...), []byte{3, 1, 7})
	f.Add(msg('P', "\x00SELECT $1\x00\x00\x00"), []byte{1})
	f.Add([]byte{'Q', 0xff, 0xff, 0xff, 0xff}, []byte{2, 2})
	f.Add([]byte{'Q', 0, 0, 0, 1}, []byte{})
	f.Fuzz(func(t *testing.T, data []byte, splits []byte) {
		chunks := make([]int, len(splits))
		for i, s := range splits {
			chunks[i] = int(s)
		}
		whole, wholeErr := frameAll(data, nil, 1<<20)
		split, splitErr := frameAll(data, chunks, 1<<20)
		if !bytes.Equal(whole, split) || !errors.Is(splitErr, wholeErr) && !(splitErr == nil && wholeErr == nil) {
			t.Fatalf("whole: %q %v; split: %q %v", whole, wholeErr, split, splitErr)
		}
		// What was sent is a sequence of whole headers (bodies may be cut).
		j := &fwdJob{}
		if send, _ := j.frame(whole); send != len(whole) || j.carryLen != 0 {
			t.Fatalf("sent bytes end inside a header: %q", whole)
		}
	})
}
