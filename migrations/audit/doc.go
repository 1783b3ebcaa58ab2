// Package audit checks a live database for the properties tenant isolation
// rests on: tenant roles that cannot bypass Row-Level Security or escalate,
// tenant tables with RLS enabled and forced and a policy for every command,
// views that run with the caller's rights, SECURITY DEFINER functions with a
// fixed search_path, materialized views that hold only globally shared rows,
// no table-level UPDATE/DELETE/TRUNCATE for tenant roles, a private schema
// vital, and none of what PostgreSQL shares across a database open to
// tenants: statistics and lock views, advisory locks, large-object creation,
// role defaults.
//
// Run returns one Check per property. `vitalproxy check` prints them, `migrate
// verify` runs them after the seed verification, and the proxy can export
// them as metrics. Run reads catalogues and (for materialized views) data,
// so it needs an administrative connection, ideally a superuser's.
package audit
