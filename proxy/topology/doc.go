// Package topology knows which upstream PostgreSQL server is the primary and
// which are usable standbys.
//
// ParseHosts reads the upstream host list: the hosts of a libpq multi-host
// URL (postgres://h1:5432,h2:5433/app, parsed by pgconn.ParseConfig, each
// host with its own TLS attempts) and an optional list of further
// host:port entries, which take the URL's database and TLS settings.
//
// A Checker keeps one administrative connection per host and, every
// interval, reads from each whether it is in recovery, its system
// identifier, its timeline and its WAL position, and for a standby its
// replication lag behind the primary in bytes and in time. From one round
// of readings it decides each host's Role:
//
//   - a host whose system identifier is not the cluster's (configured, or
//     learnt from the first primary seen) is refused and logged;
//   - a host out of recovery is the primary only if no other host of the
//     cluster out of recovery is on a higher timeline, and if its timeline
//     is not below that of a primary seen before (a former primary that
//     comes back without having been rewound). Two or more hosts out of
//     recovery are a split brain: all but the winner are fenced, and with
//     two on the same highest timeline none is the primary (writes are
//     refused rather than sent to the wrong history);
//   - a host in recovery of the cluster is a standby.
//
// The result is a snapshot read with Primary, Standbys (healthy standbys
// within lag bounds, least lag first) and Hosts; PrimaryChanged signals a
// change of primary, and WaitPrimary waits for one. The Prometheus series
// vitalproxy_upstream_* are registered on the registry given in Options.
//
// It may call no package of the module.
package topology
