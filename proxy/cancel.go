package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"math"
	"sync"

	"github.com/vitalproxy/vitalproxy/proxy/observe"
)

// cancelKey is what the proxy tells a client in BackendKeyData: a random
// process id and a random 4-byte secret (protocol 3.0).
type cancelKey struct {
	pid    uint32
	secret [4]byte
}

// canceler forwards a cancel request to the upstream backend of one
// session.
type canceler interface {
	cancel(ctx context.Context) error
}

type cancelEntry struct {
	secret [4]byte
	target canceler
}

// cancelMap maps the keys the proxy handed out to the sessions' upstream
// backends. Safe for concurrent use.
type cancelMap struct {
	mu sync.Mutex
	m  map[uint32]cancelEntry
}

func newCancelMap() *cancelMap { return &cancelMap{m: make(map[uint32]cancelEntry)} }

// register draws a fresh random key for target and records it. The pid is
// kept in 1..MaxInt32 because some drivers keep it in a signed 32-bit int.
func (c *cancelMap) register(target canceler) (cancelKey, error) {
	var b [8]byte
	for range 100 {
		if _, err := rand.Read(b[:]); err != nil {
			return cancelKey{}, fmt.Errorf("draw cancel key: %w", err)
		}
		pid := binary.BigEndian.Uint32(b[:4]) % math.MaxInt32
		if pid == 0 {
			continue
		}
		k := cancelKey{pid: pid}
		copy(k.secret[:], b[4:])
		c.mu.Lock()
		_, taken := c.m[pid]
		if !taken {
			c.m[pid] = cancelEntry{secret: k.secret, target: target}
		}
		c.mu.Unlock()
		if !taken {
			return k, nil
		}
	}
	return cancelKey{}, fmt.Errorf("draw cancel key: no free process id")
}

// remove forgets k.
func (c *cancelMap) remove(k cancelKey) {
	c.mu.Lock()
	if e, ok := c.m[k.pid]; ok && e.secret == k.secret {
		delete(c.m, k.pid)
	}
	c.mu.Unlock()
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

// lookup returns the target for (pid, secret), comparing the secret in
// constant time.
func (c *cancelMap) lookup(pid uint32, secret []byte) (canceler, cancelLookup) {
	c.mu.Lock()
	e, ok := c.m[pid]
	c.mu.Unlock()
	if !ok {
		return nil, cancelUnknown
	}
	if subtle.ConstantTimeCompare(e.secret[:], secret) != 1 {
		return nil, cancelRefused
	}
	return e.target, cancelFound
}

// len returns the number of live entries.
func (c *cancelMap) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
