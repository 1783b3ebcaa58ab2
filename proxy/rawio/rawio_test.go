//go:build linux

package rawio

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// pair returns two connected sockets of the network, the first wrapped.
func pair(t *testing.T, network string) (*Conn, net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	w, ok := Wrap(c).(*Conn)
	if !ok {
		t.Fatalf("Wrap(%T) did not wrap", c)
	}
	t.Cleanup(func() { w.Close(); peer.Close() })
	return w, peer
}

func TestConn(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			t.Run("round trip", func(t *testing.T) {
				w, peer := pair(t, network)
				if n, err := w.Write([]byte("ping")); n != 4 || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
				got := make([]byte, 4)
				if _, err := io.ReadFull(peer, got); err != nil || string(got) != "ping" {
					t.Fatalf("peer read %q, %v", got, err)
				}
				if _, err := peer.Write([]byte("pong")); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(w, got); err != nil || string(got) != "pong" {
					t.Fatalf("Read %q, %v", got, err)
				}
			})
			t.Run("write larger than the socket takes at once", func(t *testing.T) {
				w, peer := pair(t, network)
				big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
				done := make(chan []byte)
				go func() {
					got, _ := io.ReadAll(peer)
					done <- got
				}()
				n, err := w.Write(big)
				if n != len(big) || err != nil {
					t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(big))
				}
				w.Close()
				if got := <-done; !bytes.Equal(got, big) {
					t.Fatalf("peer read %d bytes, not what was written", len(got))
				}
			})
			t.Run("end of file", func(t *testing.T) {
				w, peer := pair(t, network)
				peer.Close()
				if n, err := w.Read(make([]byte, 8)); n != 0 || err != io.EOF {
					t.Fatalf("Read = %d, %v; want 0, io.EOF", n, err)
				}
			})
			t.Run("read deadline", func(t *testing.T) {
				w, _ := pair(t, network)
				if err := w.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
					t.Fatal(err)
				}
				if _, err := w.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("Read = %v; want a deadline error", err)
				}
			})
			t.Run("closed while reading", func(t *testing.T) {
				w, _ := pair(t, network)
				go func() {
					time.Sleep(20 * time.Millisecond)
					w.Close()
				}()
				if _, err := w.Read(make([]byte, 8)); !errors.Is(err, net.ErrClosed) {
					t.Fatalf("Read = %v; want net.ErrClosed", err)
				}
			})
			t.Run("write after the peer left", func(t *testing.T) {
				w, peer := pair(t, network)
				peer.Close()
				var err error
				for i := 0; i < 100 && err == nil; i++ {
					_, err = w.Write(make([]byte, 64<<10))
				}
				var oe *net.OpError
				if !errors.As(err, &oe) || oe.Op != "write" {
					t.Fatalf("Write = %v; want a write *net.OpError", err)
				}
			})
		})
	}
}

func TestWrapLeavesOtherConns(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := Wrap(a); got != a {
		t.Errorf("Wrap(net.Pipe) = %T, want it unchanged", got)
	}
	w, _ := pair(t, "tcp")
	tc := tls.Client(w.Conn, &tls.Config{InsecureSkipVerify: true})
	if got := Wrap(tc); got != net.Conn(tc) {
		t.Errorf("Wrap(*tls.Conn) = %T, want it unchanged", got)
	}
}

func TestSendThenRead(t *testing.T) {
	// answer makes the peer read n bytes, then send reply (or close).
	answer := func(peer net.Conn, n int, reply string) <-chan error {
		done := make(chan error, 1)
		go func() {
			if _, err := io.ReadFull(peer, make([]byte, n)); err != nil {
				done <- err
				return
			}
			if reply == "" {
				done <- peer.Close()
				return
			}
			_, err := peer.Write([]byte(reply))
			done <- err
		}()
		return done
	}
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			t.Run("answer", func(t *testing.T) {
				w, peer := pair(t, network)
				done := answer(peer, 3, "pong")
				buf := make([]byte, 16)
				sent, n, err := w.SendThenRead([]byte("ask"), buf)
				if sent != 3 || err != nil || string(buf[:n]) != "pong" {
					t.Fatalf("SendThenRead = %d, %q, %v; want 3, \"pong\", nil", sent, buf[:n], err)
				}
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			})
			t.Run("data already waiting is read", func(t *testing.T) {
				w, peer := pair(t, network)
				if _, err := peer.Write([]byte("early")); err != nil {
					t.Fatal(err)
				}
				time.Sleep(10 * time.Millisecond) // the poller has seen it
				done := answer(peer, 3, "late")
				var got []byte
				buf := make([]byte, 16)
				_, n, err := w.SendThenRead([]byte("ask"), buf)
				got = append(got, buf[:n]...)
				for err == nil && len(got) < len("earlylate") {
					n, err = w.Read(buf)
					got = append(got, buf[:n]...)
				}
				if err != nil || string(got) != "earlylate" {
					t.Fatalf("read %q, %v; want \"earlylate\"", got, err)
				}
				<-done
			})
			t.Run("end of file after the send", func(t *testing.T) {
				w, peer := pair(t, network)
				done := answer(peer, 3, "")
				sent, n, err := w.SendThenRead([]byte("ask"), make([]byte, 16))
				if sent != 3 || n != 0 || err != io.EOF {
					t.Fatalf("SendThenRead = %d, %d, %v; want 3, 0, io.EOF", sent, n, err)
				}
				<-done
			})
			t.Run("socket full: returns without reading", func(t *testing.T) {
				w, peer := pair(t, network)
				big := bytes.Repeat([]byte("x"), 16<<20)
				sent, n, err := w.SendThenRead(big, make([]byte, 16))
				if sent == 0 || sent >= len(big) || n != 0 || err != nil {
					t.Fatalf("SendThenRead = %d, %d, %v; want part sent, 0, nil", sent, n, err)
				}
				done := answer(peer, len(big), "ok")
				if _, err := w.Write(big[sent:]); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 2)
				if _, err := io.ReadFull(w, buf); err != nil || string(buf) != "ok" {
					t.Fatalf("read %q, %v", buf, err)
				}
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			})
			t.Run("interrupted by a read deadline after the send", func(t *testing.T) {
				w, peer := pair(t, network)
				if err := w.SetReadDeadline(time.Now().Add(30 * time.Millisecond)); err != nil {
					t.Fatal(err)
				}
				sent, _, err := w.SendThenRead([]byte("ask"), make([]byte, 16))
				if sent != 3 || !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("SendThenRead = %d, %v; want 3 and a deadline error", sent, err)
				}
				got := make([]byte, 3)
				if _, err := io.ReadFull(peer, got); err != nil || string(got) != "ask" {
					t.Fatalf("peer read %q, %v", got, err)
				}
			})
		})
	}
}

// TestConcurrentWrites: writers sharing a Conn, as net.Conn allows, never
// interleave inside one Write.
func TestConcurrentWrites(t *testing.T) {
	w, peer := pair(t, "tcp")
	const writers, rounds, size = 4, 200, 3000
	done := make(chan error, writers)
	for i := 0; i < writers; i++ {
		msg := bytes.Repeat([]byte{byte('a' + i)}, size)
		go func() {
			for r := 0; r < rounds; r++ {
				if _, err := w.Write(msg); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	got := make([]byte, writers*rounds*size)
	// A broken Write may lose bytes: fail rather than wait for them.
	if err := peer.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatalf("reading what the writers sent: %v", err)
	}
	for i := 0; i < writers; i++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	for off := 0; off < len(got); off += size {
		chunk := got[off : off+size]
		if !bytes.Equal(chunk, bytes.Repeat(chunk[:1], size)) {
			t.Fatalf("write at offset %d interleaved with another", off)
		}
	}
}
