// Package auth authenticates proxy clients and derives the credentials the
// proxy uses upstream.
//
// Clients are checked against SCRAM-SHA-256 verifiers (md5 and cleartext
// only where configured) kept in the config file or in the database user
// store, then bound to one tenant. Upstream, every tenant has its own login
// roles (RoleName) whose passwords derive from the proxy's role secret
// (RolePassword), so neither the proxy nor the database stores a tenant
// password in clear.
package auth
