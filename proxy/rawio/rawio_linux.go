package rawio

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Recv receives into p from the non-blocking socket fd. It returns 0 and
// nil at end-of-file, and unix.EAGAIN when nothing is there yet.
func Recv(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), 0, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// Send sends from p on the non-blocking socket fd, without SIGPIPE. It
// returns unix.EAGAIN when the socket takes nothing now.
func Send(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), unix.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// Conn is a net.Conn whose Read and Write use Recv and Send through the
// runtime's poller (deadlines and Close work as for the wrapped
// connection). Like any net.Conn it is safe for concurrent use.
type Conn struct {
	net.Conn
	rc syscall.RawConn

	// rmu and wmu guard the state of a Read and of a Write (both for
	// SendThenRead, rmu first).
	rmu, wmu sync.Mutex

	// State of the Read and the Write in progress, kept here so that
	// the callbacks handed to rc are made once, not per call.
	rp      []byte
	rn      int
	rerr    error
	wp      []byte
	wn      int
	werr    error
	armed   bool // SendThenRead sent everything and waits
	readFn  func(uintptr) bool
	writeFn func(uintptr) bool
	askFn   func(uintptr) bool
}

// Wrap returns c as a *Conn when c is a plain TCP or Unix socket, else c
// itself (a TLS connection, for one, keeps its own Read and Write).
func Wrap(c net.Conn) net.Conn {
	var rc syscall.RawConn
	var err error
	switch t := c.(type) {
	case *net.TCPConn:
		rc, err = t.SyscallConn()
	case *net.UnixConn:
		rc, err = t.SyscallConn()
	default:
		return c
	}
	if err != nil {
		return c
	}
	w := &Conn{Conn: c, rc: rc}
	w.readFn, w.writeFn, w.askFn = w.recv, w.send, w.ask
	return w
}

// SyscallConn returns the wrapped socket's raw connection.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// Read reads like the wrapped connection's Read.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rp, c.rn, c.rerr = p, 0, nil
	err := c.rc.Read(c.readFn)
	n := c.rn
	c.rp = nil
	if err != nil {
		return 0, c.result("read", err, nil)
	}
	return n, c.result("read", nil, c.rerr)
}

func (c *Conn) recv(fd uintptr) bool {
	for {
		n, err := Recv(int(fd), c.rp)
		switch {
		case err == nil && n == 0:
			c.rerr = io.EOF
		case err == nil:
			c.rn = n
		case err == unix.EINTR: // Recv returns the bare errno
			continue
		case err == unix.EAGAIN:
			return false
		default:
			c.rerr = err
		}
		return true
	}
}

// SendThenRead sends out, then reads into p like Read. When all of out
// goes at once it waits for the poller to report an answer before it
// receives, which saves a receive that would find nothing: the caller must
// know that out asks the peer for an answer (a request arriving before it
// is sent could otherwise go unnoticed). It returns how much of out it
// sent; when the socket took less, it returns without reading (n is 0,
// err nil), and the caller writes the rest and reads itself.
func (c *Conn) SendThenRead(out, p []byte) (sent, n int, err error) {
	if len(out) == 0 || len(p) == 0 {
		n, err = c.Read(p)
		return 0, n, err
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wp, c.wn, c.werr, c.armed = out, 0, nil, false
	c.rp, c.rn, c.rerr = p, 0, nil
	err = c.rc.Read(c.askFn)
	sent, n = c.wn, c.rn
	c.wp, c.rp = nil, nil
	switch {
	case c.werr != nil:
		return sent, 0, c.result("write", nil, c.werr)
	case err != nil:
		return sent, 0, c.result("read", err, nil)
	}
	return sent, n, c.result("read", nil, c.rerr)
}

func (c *Conn) ask(fd uintptr) bool {
	if c.armed {
		return c.recv(fd)
	}
	if !c.send(fd) || c.werr != nil {
		return true // the caller sends the rest, or fails
	}
	// The poller was reset before the send: whatever the peer answers
	// arrives later and is reported.
	c.armed = true
	return false
}

// Write writes all of p like the wrapped connection's Write.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wp, c.wn, c.werr = p, 0, nil
	err := c.rc.Write(c.writeFn)
	n := c.wn
	c.wp = nil
	return n, c.result("write", err, c.werr)
}

// send sends what is left of wp. It reports false when the socket takes
// no more now; a failure is left in werr.
func (c *Conn) send(fd uintptr) bool {
	for c.wn < len(c.wp) {
		n, err := Send(int(fd), c.wp[c.wn:])
		switch {
		case err == nil:
			c.wn += n
		case err == unix.EINTR: // Send returns the bare errno
		case err == unix.EAGAIN:
			return false
		default:
			c.werr = err
			return true
		}
	}
	return true
}

// result is the error of a read or write: pollErr from the runtime's
// poller (deadline, closed), else sysErr from recvfrom or sendto; io.EOF
// stays as it is.
func (c *Conn) result(op string, pollErr, sysErr error) error {
	switch {
	case pollErr != nil:
		return c.opError(op, pollErr)
	case sysErr == nil || sysErr == io.EOF:
		return sysErr
	case op == "read":
		return c.opError(op, os.NewSyscallError("recvfrom", sysErr))
	default:
		return c.opError(op, os.NewSyscallError("sendto", sysErr))
	}
}

func (c *Conn) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return err
	}
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
