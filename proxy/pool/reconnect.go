package pool

// Reconnect makes the pool open new backends for tenant ("": every
// tenant): its idle backends are closed now and those lent out when they
// are released, whatever the borrower says. A shared pool's idle backends
// belong to no tenant and are closed only for every tenant; those lent to
// tenant are marked. It returns how many backends it closed and marked.
func (p *Pool) Reconnect(tenant string) (closed, marked int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		for _, k := range p.pools {
			if tenant != "" && k.key.Tenant != tenant {
				continue
			}
			for _, b := range k.idle {
				p.discard(k, b, ReasonReconnect)
				closed++
			}
			clear(k.idle)
			k.idle = k.idle[:0]
		}
	}
	// What is left of the tenant's backends is lent out.
	for b := range p.conns {
		if (tenant == "" || b.Key.Tenant == tenant) && !b.retire {
			b.retire = true
			marked++
		}
	}
	if closed > 0 {
		for p.grantNext(nil) {
		}
	}
	return closed, marked
}
