//go:build unix

package txmode

import (
	"errors"
	"net"
	"syscall"
)

// peekAlive reports whether an idle server connection has nothing to read:
// no end-of-file, no error and no message (an idle backend sends nothing
// unless it is going away). It never blocks and consumes nothing. Over TLS
// it cannot tell (the server may send session tickets) and reports true.
func peekAlive(c net.Conn) bool {
	if _, isTLS := tlsNetConn(c); isTLS {
		return true
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := true
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == nil:
			alive = false // a byte to read, or end-of-file (n == 0)
			_ = n
		case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EINTR):
		default:
			alive = false
		}
		return true
	})
	return alive && err == nil
}
