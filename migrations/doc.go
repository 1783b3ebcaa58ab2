// Package migrations holds vitalproxy's database migrations and runs them.
//
// The SQL files under sql/ are embedded in the binary. They keep the seed
// document's names and order, preceded by a baseline that creates what the
// seed assumes already exists and followed by a migration that closes the
// paths PostgreSQL shares across a database (statistics and lock views,
// advisory locks, large objects, a shared audit sequence):
//
//	20251026000000_baseline.sql
//	20251026000001_create_tenants_table.sql
//	20251026000002_add_tenant_columns_to_resources.sql
//	20251026000003_update_rls_policies.sql
//	20251026000004_seed_mvp_tenants.sql
//	20251026000005_harden_shared_paths.sql
//	20251026000006_pooled_tenant_context.sql
//	20251026000007_tenant_scoped_features.sql
//
// The sixth lets backends shared by many tenants carry a tenant context the
// database verifies (isolation mode context); the seventh gives tenants
// advisory locks and their own sessions' statistics back, scoped per tenant
// (public.pg_advisory_lock and the other advisory-lock functions,
// public.pg_stat_activity, public.pg_stat_ssl).
//
// A Migrator applies and rolls them back with goose's Provider API. Each
// migration runs in one transaction; runs are serialised by a session-level
// advisory lock, so two concurrent runs take turns and neither fails. Applied
// versions live in vital.goose_db_version; the sha256 of each applied file and
// how long it took live in vital.migration_checksums, written in the same
// transaction as the migration itself. A file that changed after it was
// applied is reported by Status and refused by Up.
//
// Verify runs the seed document's post-migration verification as real tenant
// roles, followed by the isolation audit of package audit.
package migrations
