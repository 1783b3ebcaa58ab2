// Package tenantroles provisions tenants and their PostgreSQL login roles.
//
// Every tenant gets one login role per capability, named by auth.RoleName:
// read-write (member of vital_tenant_writer), read-only (member of
// vital_tenant, so SELECT only) and, for tenants of type platform, admin
// (member of vital_tenant_writer). A tenant role is a member of its group
// role and of nothing else, is never SUPERUSER, BYPASSRLS, CREATEROLE,
// CREATEDB or REPLICATION, and logs in with the password
// auth.RolePassword(secret, role). The database only ever receives a SCRAM
// verifier computed here, never the password. vital.tenant_roles maps each
// role to its tenant and capability; it is the only source of tenant identity
// in the database.
//
// A Manager works over one administrative connection that needs CREATEROLE
// (or superuser). Roles are cluster-wide, so role DDL runs under a lock on
// vital.tenant_roles (not an advisory lock: the migrations keep those from
// PUBLIC) and role creation tolerates a concurrent creator; a transaction
// that loses a race with another database's sync is retried. Sync also
// removes role defaults (ALTER ROLE ... SET) that a tenant role gave itself:
// a pooled backend would keep them past the proxy's session reset.
package tenantroles
