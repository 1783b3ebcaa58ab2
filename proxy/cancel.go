package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vitalproxy/vitalproxy/proxy/observe"
)

// cancelKey is what the proxy tells a client in BackendKeyData: a process
// id and a random 4-byte secret (protocol 3.0). In session mode the pid is
// the real pid of the backend bound to the client; in transaction mode and
// for console sessions, which have no backend of their own, it is random.
// The secret is always the proxy's own, never the server's.
type cancelKey struct {
	pid    uint32
	secret [4]byte
}

// canceler forwards a cancel request to the upstream backend of one
// session.
type canceler interface {
	cancel(ctx context.Context) error
}

// cancelEntry is one live key. Its mutex serialises forwarding a cancel
// with revoking the key (cancelMap.remove): once remove returns, no cancel
// sent with the key is still on its way to the backend, which may then be
// reset and serve another client under the same pid.
type cancelEntry struct {
	secret [4]byte

	mu     sync.Mutex
	target canceler // nil once the key is removed
}

// cancel forwards the request unless the key was removed meanwhile.
func (e *cancelEntry) cancel(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.target == nil {
		return nil
	}
	return e.target.cancel(ctx)
}

// cancelMap maps the keys the proxy handed out to the sessions' upstream
// backends. It is keyed by (pid, secret): real pids are unique per
// upstream server at any one time, but the same pid may be live on two
// servers, may equal a random pid of a transaction-mode session, and comes
// back when a pooled backend serves its next client (with a new secret).
// Safe for concurrent use.
type cancelMap struct {
	mu sync.Mutex
	m  map[uint32][]*cancelEntry
	// decoy is compared with the secret of a request for an unknown pid,
	// so that a lookup does the same work whether or not the pid is live.
	decoy [4]byte
}

func newCancelMap() *cancelMap {
	c := &cancelMap{m: make(map[uint32][]*cancelEntry)}
	_, _ = rand.Read(c.decoy[:])
	return c
}

// register draws a fresh random key for target and records it. The pid is
// kept in 1..MaxInt32 because some drivers keep it in a signed 32-bit int,
// and is one no live key used when it was drawn (sharing a pid with another
// key is harmless: the secrets tell them apart).
func (c *cancelMap) register(target canceler) (cancelKey, error) {
	var b [4]byte
	for range 100 {
		if _, err := rand.Read(b[:]); err != nil {
			return cancelKey{}, fmt.Errorf("draw cancel key: %w", err)
		}
		pid := binary.BigEndian.Uint32(b[:]) % math.MaxInt32
		if pid == 0 {
			continue
		}
		c.mu.Lock()
		taken := len(c.m[pid]) > 0
		c.mu.Unlock()
		if !taken {
			return c.registerPID(pid, target)
		}
	}
	return cancelKey{}, fmt.Errorf("draw cancel key: no free process id")
}

// registerPID records target under pid (a real backend pid) with a fresh
// random secret, one that no other live key for pid has.
func (c *cancelMap) registerPID(pid uint32, target canceler) (cancelKey, error) {
	if pid == 0 {
		return cancelKey{}, fmt.Errorf("register cancel key: process id 0")
	}
	k := cancelKey{pid: pid}
	for range 100 {
		if _, err := rand.Read(k.secret[:]); err != nil {
			return cancelKey{}, fmt.Errorf("draw cancel secret: %w", err)
		}
		c.mu.Lock()
		taken := false
		for _, e := range c.m[pid] {
			taken = taken || e.secret == k.secret
		}
		if !taken {
			c.m[pid] = append(c.m[pid], &cancelEntry{secret: k.secret, target: target})
		}
		c.mu.Unlock()
		if !taken {
			return k, nil
		}
	}
	return cancelKey{}, fmt.Errorf("draw cancel secret: no free secret for process id %d", pid)
}

// remove forgets k. It waits for a cancel being forwarded with k to finish
// (at most cancelTimeout), so that a backend the caller then hands to the
// pool can no longer be reached with k.
func (c *cancelMap) remove(k cancelKey) {
	var gone *cancelEntry
	c.mu.Lock()
	entries := c.m[k.pid]
	for i, e := range entries {
		if e.secret == k.secret {
			gone = e
			entries = append(entries[:i:i], entries[i+1:]...)
			break
		}
	}
	if len(entries) == 0 {
		delete(c.m, k.pid)
	} else {
		c.m[k.pid] = entries
	}
	c.mu.Unlock()
	if gone != nil {
		gone.mu.Lock()
		gone.target = nil
		gone.mu.Unlock()
	}
}

// cancelLookup is the outcome of a lookup, also the metric label.
type cancelLookup string

const (
	cancelFound   cancelLookup = observe.CancelForwarded
	cancelUnknown cancelLookup = observe.CancelUnknown
	// cancelRefused: the pid is live but the key is wrong (a guess or a
	// forgery).
	cancelRefused cancelLookup = observe.CancelRefused
)

// lookup returns the target for (pid, secret). Every secret live under pid
// (or the decoy, for an unknown pid) is compared in constant time, without
// stopping at a match.
func (c *cancelMap) lookup(pid uint32, secret []byte) (canceler, cancelLookup) {
	c.mu.Lock()
	defer c.mu.Unlock()
	entries := c.m[pid]
	if len(entries) == 0 {
		subtle.ConstantTimeCompare(c.decoy[:], secret)
		return nil, cancelUnknown
	}
	var found *cancelEntry
	for _, e := range entries {
		if subtle.ConstantTimeCompare(e.secret[:], secret) == 1 {
			found = e
		}
	}
	if found == nil {
		return nil, cancelRefused
	}
	return found, cancelFound
}

// len returns the number of live entries.
func (c *cancelMap) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, entries := range c.m {
		n += len(entries)
	}
	return n
}

// cancelTimeout bounds forwarding one cancel request upstream.
const cancelTimeout = 10 * time.Second

// serveCancel forwards a client's CancelRequest if it names a live session
// with the right key; otherwise it drops it silently, as PostgreSQL does.
// A request that cancels nothing gets its connection closed at once, before
// anything is logged or counted, so that an unknown pid and a live pid with
// a wrong secret look the same from outside: no answer, the same prompt
// close. A forwarded one is closed once the backend was signalled, as
// PostgreSQL does.
func (s *session) serveCancel(ctx context.Context, req *pgproto3.CancelRequest) {
	target, result := s.srv.cancels.lookup(req.ProcessID, req.SecretKey)
	if target == nil {
		_ = s.conn.Close()
	} else {
		cctx, cancel := context.WithTimeout(ctx, cancelTimeout)
		err := target.cancel(cctx)
		cancel()
		if err != nil {
			result = observe.CancelError
			s.logger.Warn("cancel request not delivered", "error", err)
		}
	}
	if result == cancelRefused {
		s.logger.Warn("cancel request with a wrong key for a live session refused")
	}
	s.srv.metrics.CancelRequest(string(result))
}
