package proxy

import (
	"io"
	"sync"
)

// copyBufs holds buffers for copies that the kernel cannot splice (TLS on
// either side). A TCP to TCP copy never touches its buffer.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyResult is what one direction's copy ended with.
type copyResult struct {
	toServer bool
	n        int64
	err      error
}

// pump copies src to dst until either fails and reports on done.
func pump(dst io.Writer, src io.Reader, toServer bool, done chan<- copyResult) {
	bp := copyBufs.Get().(*[]byte)
	n, err := io.CopyBuffer(dst, src, *bp)
	copyBufs.Put(bp)
	done <- copyResult{toServer: toServer, n: n, err: err}
}

// forward moves bytes unchanged between the client and the upstream backend
// until one side ends; the first end wins and closes both. Nothing is
// parsed: with plain TCP on both sides io.Copy lets the kernel splice.
// Bytes are counted once, when the copies return.
func (s *session) forward(tm tenantMetrics) endReason {
	client, server := s.conn, s.up.conn
	done := make(chan copyResult, 2)
	go pump(server, client, true, done)
	go pump(client, server, false, done)

	first := <-done
	_ = s.transition(stateDraining)
	var reason endReason
	switch {
	case s.forced.Load():
		reason = reasonShutdown
		s.sendFatal(fatal(codeAdminShutdown, "terminating connection because the proxy is shutting down", ""))
	case !first.toServer:
		// The backend went away (or the client stopped reading, in which
		// case this write fails quietly). A backend that is terminated
		// sends its own FATAL first; one that crashed does not.
		reason = reasonServerClosed
		s.sendFatal(fatal(codeConnectionFailure, "server connection lost", ""))
	default:
		reason = reasonClientClosed
	}
	_ = server.Close()
	_ = client.Close()
	second := <-done
	for _, r := range []copyResult{first, second} {
		if r.toServer {
			s.c2s = r.n
		} else {
			s.s2c = r.n
		}
	}
	tm.c2s.Add(float64(s.c2s))
	tm.s2c.Add(float64(s.s2c))
	return reason
}
