package proxy

import (
	"fmt"
	"sync"
	"time"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/config"
)

// clientCounts counts client sessions per tenant and per user, for the
// per-tenant and per-user connection limits. Safe for concurrent use.
type clientCounts struct {
	mu      sync.Mutex
	tenants map[string]int
	users   map[string]int
	// tenantMax are caps set at run time (SET TENANT max_client_conns),
	// over the configured ones.
	tenantMax map[string]int
}

func newClientCounts() *clientCounts {
	return &clientCounts{tenants: map[string]int{}, users: map[string]int{}, tenantMax: map[string]int{}}
}

// admit counts a session of id unless a limit is reached; release undoes
// it.
func (c *clientCounts) admit(cfg *config.Config, id *auth.Identity) error {
	tenantMax := cfg.Pool.MaxClientConnsPerTenant
	if t, ok := cfg.Tenants[id.Tenant.Slug]; ok && t.MaxClientConns > 0 {
		tenantMax = t.MaxClientConns
	}
	userMax := 0
	for _, u := range cfg.Users {
		if u.Name == id.User {
			userMax = u.MaxClientConns
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.tenantMax[id.Tenant.Slug]; ok {
		tenantMax = n
	}
	if tenantMax > 0 && c.tenants[id.Tenant.Slug] >= tenantMax {
		return fmt.Errorf("tenant %q already has %d client connections, its limit", id.Tenant.Slug, tenantMax)
	}
	if userMax > 0 && c.users[id.User] >= userMax {
		return fmt.Errorf("user %q already has %d client connections, its limit", id.User, userMax)
	}
	c.tenants[id.Tenant.Slug]++
	c.users[id.User]++
	return nil
}

// setTenantMax sets tenant's cap on client sessions at run time (0: back
// to the configured cap). Sessions beyond a lowered cap stay.
func (c *clientCounts) setTenantMax(tenant string, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n > 0 {
		c.tenantMax[tenant] = n
	} else {
		delete(c.tenantMax, tenant)
	}
}

// runTenantMax returns tenant's run-time cap on client sessions, if set.
func (c *clientCounts) runTenantMax(tenant string) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.tenantMax[tenant]
	return n, ok
}

// snapshot returns the client sessions per tenant.
func (c *clientCounts) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int, len(c.tenants))
	for t, n := range c.tenants {
		m[t] = n
	}
	return m
}

func (c *clientCounts) release(id *auth.Identity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tenants[id.Tenant.Slug]--; c.tenants[id.Tenant.Slug] <= 0 {
		delete(c.tenants, id.Tenant.Slug)
	}
	if c.users[id.User]--; c.users[id.User] <= 0 {
		delete(c.users, id.User)
	}
}

// sessionPolicy is what the configuration says for one client's session.
type sessionPolicy struct {
	mode string // session or transaction
	// settings are applied on every server connection the client uses,
	// after the client's own startup settings.
	settings map[string]string
}

// policyFor resolves pool mode and timeouts: user over tenant over pool.
func policyFor(cfg *config.Config, id *auth.Identity) sessionPolicy {
	p := sessionPolicy{mode: cfg.Pool.Mode, settings: map[string]string{}}
	stmt, idle := cfg.Pool.StatementTimeout, cfg.Pool.IdleInTransactionTimeout
	if t, ok := cfg.Tenants[id.Tenant.Slug]; ok {
		if t.PoolMode != "" {
			p.mode = t.PoolMode
		}
		if t.StatementTimeout > 0 {
			stmt = t.StatementTimeout
		}
		if t.IdleInTransactionTimeout > 0 {
			idle = t.IdleInTransactionTimeout
		}
	}
	for _, u := range cfg.Users {
		if u.Name != id.User {
			continue
		}
		if u.StatementTimeout > 0 {
			stmt = u.StatementTimeout
		}
	}
	if id.PoolMode != "" {
		p.mode = id.PoolMode
	}
	if stmt > 0 {
		p.settings["statement_timeout"] = millis(stmt)
	}
	if idle > 0 {
		p.settings["idle_in_transaction_session_timeout"] = millis(idle)
	}
	return p
}

func millis(d time.Duration) string { return fmt.Sprintf("%d", d.Milliseconds()) }
