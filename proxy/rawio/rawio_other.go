//go:build !linux

package rawio

import "net"

// Conn is a socket that Wrap returned; elsewhere than on Linux there are
// none.
type Conn struct{ net.Conn }

// Wrap returns c: raw socket I/O is Linux only.
func Wrap(c net.Conn) net.Conn { return c }

// SendThenRead writes out, then reads into p.
func (c *Conn) SendThenRead(out, p []byte) (sent, n int, err error) {
	if sent, err = c.Write(out); err != nil {
		return sent, 0, err
	}
	n, err = c.Read(p)
	return sent, n, err
}
