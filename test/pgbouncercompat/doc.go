// Package pgbouncercompat tests the PgBouncer-compatible database
// (console.pgbouncer_database) the way PgBouncer's monitoring tools use
// it: a collector that scrapes it as the Prometheus community's
// pgbouncer_exporter does (lib/pq, the simple query protocol, its queries,
// column names and value parsing), pgx with binary results, and, where
// PgBouncer is installed, a comparison of every SHOW's columns and types
// with the real PgBouncer's.
package pgbouncercompat
