//go:build !linux

package rawio

import "net"

// Wrap returns c: raw socket I/O is Linux only.
func Wrap(c net.Conn) net.Conn { return c }
