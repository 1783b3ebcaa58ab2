//go:build linux

package sessionmode

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vitalproxy/vitalproxy/proxy/rawio"
)

// The event loops forward session-mode bytes between plain sockets the way
// PgBouncer does: each loop owns an epoll set of many sessions, reads a
// socket that is ready and writes what it read to its peer. Per message
// that is one receive and one send system call, with no speculative read
// that finds nothing, no goroutine wake-up per session and no user-space
// copy beyond one shared buffer per loop. TLS sessions keep the goroutine
// copy (see Forwarder.Run).

// loopBufferSize is each loop's read buffer, shared by its sessions.
const loopBufferSize = 64 << 10

// Loops is a group of event loops that sessions are spread over. Safe for
// concurrent use.
type Loops struct {
	loops []*evLoop
	next  atomic.Uint32
}

// NewLoops starts n event loops; Close stops them.
func NewLoops(n int) (*Loops, error) {
	g := &Loops{}
	for range n {
		l, err := newEvLoop()
		if err != nil {
			g.Close()
			return nil, err
		}
		g.loops = append(g.loops, l)
	}
	return g, nil
}

func (g *Loops) pick() *evLoop {
	return g.loops[int(g.next.Add(1))%len(g.loops)]
}

// Close stops the loops; the sessions they still forward end as if the
// server had gone.
func (g *Loops) Close() {
	for _, l := range g.loops {
		l.stop()
	}
}

// fwdResult says how a forwarded session ended.
type fwdResult struct {
	clientEnded bool  // the client side ended first (EOF, Terminate, error)
	serverSplit bool  // a stream to or from the server stopped inside a message
	idle        bool  // the server answered everything and is idle (see idleAfter)
	err         error // errClientTerminate, errMessageTooLarge, errProtocol or an I/O error
	c2s, s2c    int64
	dropped     int64 // notifications kept from the client
}

// fwdJob is one session's pair of sockets inside a loop. The loop owns every
// field except done and the fds, which the session closes after done.
type fwdJob struct {
	clientFd, serverFd int
	done               chan fwdResult

	// Message framing of each direction (see framer).
	fromClient, fromServer framer
	// Bytes that could not be written yet, by destination fd.
	toClient, toServer []byte
	c2s, s2c           int64
	finished           bool
}

type evLoop struct {
	epfd, wakeFd int
	epoll        *os.File // epfd, registered with Go's poller
	rc           syscall.RawConn
	mu           sync.Mutex
	adds         []*fwdJob
	quit         bool
	jobs         map[int]*fwdJob // by fd
	buf          []byte
	wg           sync.WaitGroup
}

func newEvLoop() (*evLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wfd)}); err != nil {
		unix.Close(epfd)
		unix.Close(wfd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	// The set is waited for in Go's poller, which needs it non-blocking.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(wfd)
		return nil, fmt.Errorf("epoll set: %w", err)
	}
	epoll := os.NewFile(uintptr(epfd), "epoll")
	rc, err := epoll.SyscallConn()
	if err != nil {
		epoll.Close()
		unix.Close(wfd)
		return nil, fmt.Errorf("epoll set: %w", err)
	}
	l := &evLoop{epfd: epfd, epoll: epoll, rc: rc, wakeFd: wfd, jobs: map[int]*fwdJob{}, buf: make([]byte, loopBufferSize)}
	l.wg.Add(1)
	go l.run()
	return l, nil
}

func (l *evLoop) wake() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(l.wakeFd, one[:])
}

// add hands a job to the loop; its result arrives on j.done.
func (l *evLoop) add(j *fwdJob) {
	l.mu.Lock()
	if l.quit {
		l.mu.Unlock()
		j.done <- fwdResult{err: net.ErrClosed}
		return
	}
	l.adds = append(l.adds, j)
	l.mu.Unlock()
	l.wake()
}

func (l *evLoop) stop() {
	l.mu.Lock()
	l.quit = true
	l.mu.Unlock()
	l.wake()
	l.wg.Wait()
}

func (l *evLoop) run() {
	defer l.wg.Done()
	defer unix.Close(l.wakeFd)
	defer l.epoll.Close()
	events := make([]unix.EpollEvent, 128)
	// The loop waits for its epoll set in Go's own network poller (the set
	// is itself a pollable descriptor): a parked goroutine rather than a
	// thread blocked in epoll_wait, which the runtime's monitor would keep
	// waking up to take back its P. The callback runs with the set's
	// readiness reset, so an event that arrives after its last poll found
	// nothing wakes it again: none is lost.
	stopped := false
	err := l.rc.Read(func(uintptr) bool {
		for {
			n, err := epollPoll(l.epfd, events)
			switch {
			case errors.Is(err, unix.EINTR):
				continue
			case err != nil:
				l.failAll(err)
				stopped = true
				return true
			case n == 0:
				return false
			}
			if l.dispatch(events[:n]) {
				l.failAll(net.ErrClosed)
				stopped = true
				return true
			}
		}
	})
	if err != nil && !stopped {
		l.failAll(err)
	}
}

// dispatch handles a batch of events; it reports whether the loop must
// stop.
func (l *evLoop) dispatch(events []unix.EpollEvent) bool {
	for _, ev := range events {
		fd := int(ev.Fd)
		if fd == l.wakeFd {
			if l.drainWake() {
				return true
			}
			continue
		}
		j := l.jobs[fd]
		if j == nil || j.finished {
			continue
		}
		if ev.Events&unix.EPOLLOUT != 0 {
			l.flush(j, fd)
		}
		if !j.finished && ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 {
			l.pump(j, fd)
		}
	}
	return false
}

// drainWake registers new jobs; it reports whether the loop must stop.
func (l *evLoop) drainWake() bool {
	var b [8]byte
	_, _ = unix.Read(l.wakeFd, b[:])
	l.mu.Lock()
	adds, quit := l.adds, l.quit
	l.adds = nil
	l.mu.Unlock()
	for _, j := range adds {
		l.jobs[j.clientFd] = j
		l.jobs[j.serverFd] = j
		for _, fd := range []int{j.clientFd, j.serverFd} {
			if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}); err != nil {
				l.finish(j, fd == j.clientFd, err)
				break
			}
		}
	}
	return quit
}

func (l *evLoop) failAll(err error) {
	for fd, j := range l.jobs {
		if !j.finished {
			l.finish(j, fd == j.clientFd, err)
		}
	}
}

// finish ends a job: the loop forgets its fds and tells the session.
func (l *evLoop) finish(j *fwdJob, clientEnded bool, err error) {
	j.finished = true
	for _, fd := range []int{j.clientFd, j.serverFd} {
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		delete(l.jobs, fd)
	}
	j.done <- fwdResult{clientEnded: clientEnded, err: err, c2s: j.c2s, s2c: j.s2c,
		serverSplit: j.fromServer.midMessage() || j.fromClient.midMessage() || len(j.toServer) > 0,
		idle:        idleAfter(&j.fromClient, &j.fromServer), dropped: j.fromServer.dropped}
}

// pump reads what fd has and passes it on to its peer.
func (l *evLoop) pump(j *fwdJob, fd int) {
	fromClient := fd == j.clientFd
	peer, fr := j.serverFd, &j.fromClient
	if !fromClient {
		peer, fr = j.clientFd, &j.fromServer
	}
	n, err := rawio.Recv(fd, l.buf)
	if err == unix.EAGAIN || err == unix.EINTR {
		return
	}
	if n <= 0 {
		if err == nil {
			err = errEOF
		}
		l.finish(j, fromClient, err)
		return
	}
	data, stop := fr.feed(l.buf[:n])
	if len(data) > 0 {
		if !l.write(j, peer, data) {
			return
		}
		if fromClient {
			j.c2s += int64(len(data))
		} else {
			j.s2c += int64(len(data))
		}
	}
	if stop != nil {
		// A bad server header ends the session as a lost server does.
		l.finish(j, fromClient, stop)
	}
}

var errEOF = errors.New("EOF")

// epollPoll is epoll_wait with a zero timeout, without the scheduler's
// syscall bookkeeping (it cannot block).
func epollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// write sends data to fd, keeping what the socket does not take and
// pausing the source until it drains. It reports false when the job ended.
func (l *evLoop) write(j *fwdJob, fd int, data []byte) bool {
	pending := &j.toServer
	src := j.clientFd
	if fd == j.clientFd {
		pending = &j.toClient
		src = j.serverFd
	}
	if len(*pending) > 0 {
		*pending = append(*pending, data...)
		return true
	}
	for len(data) > 0 {
		n, err := rawio.Send(fd, data)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			*pending = append((*pending)[:0], data...)
			// Backpressure: stop reading the source, wait for room.
			_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, src, &unix.EpollEvent{Events: unix.EPOLLRDHUP, Fd: int32(src)})
			_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP, Fd: int32(fd)})
			return true
		}
		if err != nil {
			l.finish(j, fd == j.clientFd, err)
			return false
		}
		data = data[n:]
	}
	return true
}

// flush writes pending bytes to fd once it has room again.
func (l *evLoop) flush(j *fwdJob, fd int) {
	pending := &j.toServer
	src := j.clientFd
	if fd == j.clientFd {
		pending = &j.toClient
		src = j.serverFd
	}
	for len(*pending) > 0 {
		n, err := rawio.Send(fd, *pending)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			l.finish(j, fd == j.clientFd, err)
			return
		}
		*pending = (*pending)[n:]
	}
	*pending = nil
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)})
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, src, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(src)})
}

// dupFd returns a duplicate of c's socket descriptor for the loop; the
// session closes it. The original stays open and unused meanwhile.
func dupFd(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	return nfd, derr
}

// forwardLoop forwards the session through an event loop. It reports
// ok=false when the sockets cannot be handed over (then nothing was
// forwarded and the caller uses the goroutine copy).
//
// The loop works on duplicates of the two sockets, and the Go connections
// are closed: that takes the sockets out of the runtime's own poller, which
// would otherwise be woken for every packet the loop handles. A backend that
// may be reused gets a new Go connection afterwards (see ended).
func (f *Forwarder) forwardLoop(g *Loops, client, server net.Conn, o *Options) (Result, bool) {
	cfd, err := dupFd(client)
	if err != nil {
		return Result{}, false
	}
	sfd, err := dupFd(server)
	if err != nil {
		unix.Close(cfd)
		return Result{}, false
	}
	_ = client.Close()
	_ = server.Close()
	j := &fwdJob{clientFd: cfd, serverFd: sfd, done: make(chan fwdResult, 1)}
	j.fromClient, j.fromServer = o.framers()
	f.mu.Lock()
	f.serverFd, f.looping = sfd, true
	f.mu.Unlock()
	if o.Forced.Load() {
		_ = unix.Shutdown(sfd, unix.SHUT_RDWR)
	}
	g.pick().add(j)
	return f.ended(<-j.done, cfd, sfd, o), true
}

// ended turns an event loop's result into the session's, telling the
// client when needed, and releases the loop's descriptors: the client's is
// closed, the backend's becomes the backend's Go connection again when it
// may be reused.
func (f *Forwarder) ended(fr fwdResult, cfd, sfd int, o *Options) Result {
	res := Result{C2S: fr.c2s, S2C: fr.s2c, Dropped: fr.dropped}
	f.mu.Lock()
	f.looping = false
	f.mu.Unlock()
	tell := func(code, message string) {
		if b, err := fatalMessage(code, message); err == nil {
			_, _ = unix.Write(cfd, b)
		}
	}
	switch {
	case o.Forced.Load():
		res.End = EndShutdown
		tell(codeAdminShutdown, o.forcedMessage())
	case !fr.clientEnded:
		res.End = EndServer
		tell(codeConnectionFailure, "server connection lost")
	case errors.Is(fr.err, errMessageTooLarge):
		res.End = EndProtocol
		tell(codeProtocolViolation, "message too large")
	case errors.Is(fr.err, errProtocol):
		res.End = EndProtocol
		tell(codeProtocolViolation, "invalid message length")
	default:
		res.End = EndClient
		// A backend whose stream stopped inside a message (or with bytes
		// still owed to it) is out of step: not worth a reset.
		res.Reusable = !fr.serverSplit
		res.Idle = fr.idle
	}
	unix.Close(cfd)
	if res.Reusable {
		file := os.NewFile(uintptr(sfd), "backend")
		nc, err := net.FileConn(file)
		file.Close()
		if err != nil {
			res.Reusable = false
			return res
		}
		res.Server = nc
		return res
	}
	unix.Close(sfd)
	return res
}

// Kill makes a session that an event loop forwards end, from any
// goroutine: the backend socket is shut down (the loop holds the only
// descriptor). It reports false when no loop forwards the session; then
// closing the backend connection ends the forwarding.
func (f *Forwarder) Kill() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.looping {
		return false
	}
	_ = unix.Shutdown(f.serverFd, unix.SHUT_RDWR)
	return true
}
