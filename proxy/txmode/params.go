package txmode

import (
	"context"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
)

// paramsCache remembers, per pool key, what the server reports at login
// and how it reports each client setting it has accepted, so that a client
// whose settings have all been seen before is answered without borrowing a
// backend (a saturated pool must not refuse new connections).
type paramsCache struct {
	mu    sync.Mutex
	base  map[string]string  // reported at login
	names map[string]string  // lower-case name -> name as reported
	seen  map[setting]string // accepted client setting -> reported value ("" if not reported)
}

type cacheKey struct {
	pool *pool.Pool
	key  pool.Key
}

// caches holds one paramsCache per pool and key; pools live as long as
// the proxy, so entries are never removed.
var caches sync.Map

func cacheFor(p *pool.Pool, k pool.Key) *paramsCache {
	if v, ok := caches.Load(cacheKey{p, k}); ok {
		return v.(*paramsCache)
	}
	v, _ := caches.LoadOrStore(cacheKey{p, k}, &paramsCache{names: map[string]string{}, seen: map[setting]string{}})
	return v.(*paramsCache)
}

// lookup returns the parameters a client with settings want sees, if every
// setting has been accepted before.
func (pc *paramsCache) lookup(want *settings) (map[string]string, bool) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.base == nil {
		return nil, false
	}
	out := maps.Clone(pc.base)
	for _, p := range want.pairs {
		v, ok := pc.seen[p]
		if !ok {
			return nil, false
		}
		if name, ok := pc.names[p.name]; ok {
			out[name] = v
		}
	}
	return out, true
}

// learn records what a backend reports with want applied.
func (pc *paramsCache) learn(login map[string]string, reported map[string]string, want *settings) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.base = login
	for name := range reported {
		pc.names[strings.ToLower(name)] = name
	}
	if len(pc.seen) > 10000 {
		clear(pc.seen) // bound it; clients' settings are few in practice
	}
	for _, p := range want.pairs {
		v := ""
		if name, ok := pc.names[p.name]; ok {
			v = reported[name]
		}
		pc.seen[p] = v
	}
}

// Params returns the parameters the client should be told as
// ParameterStatus messages before ReadyForQuery: what the server reports
// (server_version, server_encoding, ...) with the client's settings
// (application_name, DateStyle, ...) as the server reports them. The first
// time a setting is seen it is applied on a backend borrowed for the
// purpose, so a value the server refuses fails the login like it would
// without the proxy (a *pgconn.PgError); after that the answer comes from
// a cache and needs no backend. Pool errors (pool.ErrQueueTimeout, ...)
// are returned as they are. Call it before Run, not during.
func (c *Client) Params(ctx context.Context) (map[string]string, error) {
	c.mu.Lock()
	want := c.want
	c.mu.Unlock()
	pc := cacheFor(c.opts.Pool, c.opts.Key)
	if params, ok := pc.lookup(want); ok {
		return params, nil
	}
	b, st, err := c.acquire(ctx, want, time.Now())
	if err != nil {
		return nil, err
	}
	login := make(map[string]string, len(b.Params))
	for _, p := range b.Params {
		login[p.Name] = p.Value
	}
	pc.learn(login, st.params, want)
	params := maps.Clone(st.params)
	st.idleSince = time.Now()
	c.opts.Pool.Release(b, true)
	return params, nil
}
