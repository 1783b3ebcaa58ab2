// Package isolation holds vitalproxy's tenant isolation attack suite.
//
// The suite lives in the package's tests. It migrates a throwaway database,
// creates three client tenants with their own login roles, and has each
// tenant write private marker rows (random strings and ids) through its own
// read-write role, so that Row-Level Security's WITH CHECK is exercised on
// the way in. Then every attack case runs twice, once with tenant A
// attacking tenant B and once the other way round, first with a direct
// login as the attacker's tenant role and then through an in-process proxy.
//
// A case is a named attack in a category (context, read, write, ddl,
// disturb, proxy) at a level ("sql": anything a tenant session may send;
// "proxy": raw protocol at the proxy). It passes only if the victim's
// markers stay invisible to the attacker, unchanged (a checksum of the
// victim's rows, read by the victim) and unguessable. Positive controls keep
// cases from passing vacuously: the victim's own session must find all of
// its markers and the attacker's session must find all of its own.
//
// Paths that are known to be open carry the reason in the case table
// (expectOpen). The run fails when such a case turns out closed (so the table
// is kept honest) and when any other case turns out open. Every run logs a
// table of outcomes; set VITALPROXY_ISOLATION_REPORT to a file name to have
// it appended there as well.
package isolation
