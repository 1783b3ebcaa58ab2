//go:build unix

package upstream

import (
	"crypto/tls"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Alive reports whether an idle server connection is still usable: the
// socket must have nothing to read. A backend that was terminated has sent
// its FATAL and closed; one that was idle has sent nothing. It does not
// block.
func (c *Conn) Alive() bool {
	nc := c.Conn
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	var b [1]byte
	if err := rc.Control(func(fd uintptr) {
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		alive = n < 0 && (err == unix.EAGAIN || err == unix.EWOULDBLOCK)
	}); err != nil {
		return false
	}
	return alive
}

var _ net.Conn = (*Conn)(nil)
