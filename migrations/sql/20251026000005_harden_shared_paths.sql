-- Migration 5: close the paths between tenants that PostgreSQL shares
-- across a whole database, which Row-Level Security cannot cover.
--
--   * Statistics and lock views (pg_stat_*, pg_statio_*, pg_locks) and the
--     functions behind them (pg_stat_get_*, pg_lock_status, pg_blocking_pids,
--     relation and database sizes) show every session's user name and
--     application_name, the tables other tenants' open transactions write,
--     and whole-table row and size counts. SELECT and EXECUTE are revoked
--     from PUBLIC and granted to the predefined role pg_read_all_stats
--     (pg_monitor includes it), which vital_operator joins: operators and
--     monitoring agents keep seeing everything. Tools that read these views
--     as a tenant (psql's \dt+ and \l+ sizes, dashboards built on
--     pg_stat_activity) get "permission denied" for those parts.
--   * pg_stat_statements, when the extension is installed as this runs: its
--     views and functions, likewise. An extension installed later stays
--     readable by every role until this Up section runs again (vitalproxy
--     migrate reapply 20251026000005); the audit check shared_stats_private
--     reports it meanwhile.
--   * Advisory locks: their keys are database-wide, so a tenant could see,
--     hold or wait on the keys another tenant's application uses. EXECUTE on
--     the pg_catalog.pg_*advisory* functions is revoked from PUBLIC and
--     granted to vital_owner (the migrations' own lock, when the migrating
--     role is not a superuser). Tenant applications cannot use advisory locks.
--   * Large objects live outside every table's RLS and quota, and their
--     owners show in pg_largeobject_metadata: lo_create, lo_creat and
--     lo_from_bytea are revoked from PUBLIC, so tenants cannot create them
--     (server-side lo_import and lo_export are superuser-only already).
--   * resource_sharing_audit.id becomes a random uuid (DEFAULT
--     gen_random_uuid(), like every other key): numbers from one sequence
--     counted other tenants' sharing events between two of one's own.
--
-- Privileges on pg_catalog objects live in each database's own catalogue,
-- and only their owner (the bootstrap superuser) may change them. Run by a
-- role that is not a superuser, this migration changes resource_sharing_audit
-- and whatever it owns itself, skips the rest with a WARNING, and the audit
-- (vitalproxy check, and the proxy's audit at start) fails
-- shared_stats_private and shared_functions_revoked until a superuser runs
-- the Up section again (vitalproxy migrate reapply 20251026000005).
--
-- Each revoke is recorded in vital.migration_objects (kind
-- 'public_privilege', with the role granted instead in detail), so Down
-- gives PUBLIC back exactly what this migration took. vital_operator's
-- membership in pg_read_all_stats is cluster-wide and stays, like the group
-- roles themselves.
--
-- Every statement is idempotent: the Up section may be re-run by hand.

-- +goose Up

-- +goose StatementBegin
DO $$
DECLARE
    r       record;
    super   boolean;
    skipped integer := 0;
BEGIN
    SELECT rolsuper INTO super FROM pg_catalog.pg_roles WHERE rolname = CURRENT_USER;
    FOR r IN
        WITH target(classid, objid, owner, acl, kind, privilege, keeper) AS (
            -- statistics and lock views
            SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, c.oid, c.relowner,
                   COALESCE(c.relacl, pg_catalog.acldefault('r', c.relowner)), 'TABLE', 'SELECT', 'pg_read_all_stats'
              FROM pg_catalog.pg_class c
             WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.relkind = 'v'
               AND (c.relname LIKE 'pg\_stat\_%' OR c.relname LIKE 'pg\_statio\_%' OR c.relname = 'pg_locks')
            UNION ALL
            -- the functions behind them, and sizes
            SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid, p.proowner,
                   COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner)), 'FUNCTION', 'EXECUTE', 'pg_read_all_stats'
              FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
               AND (p.proname LIKE 'pg\_stat\_get\_%'
                    OR p.proname IN ('pg_relation_size', 'pg_total_relation_size', 'pg_table_size', 'pg_indexes_size',
                                     'pg_database_size', 'pg_lock_status', 'pg_blocking_pids',
                                     'pg_safe_snapshot_blocking_pids'))
            UNION ALL
            -- pg_stat_statements' views and functions, if installed
            SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, c.oid, c.relowner,
                   COALESCE(c.relacl, pg_catalog.acldefault('r', c.relowner)), 'TABLE', 'SELECT', 'pg_read_all_stats'
              FROM pg_catalog.pg_extension e
              JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                                         AND d.refobjid = e.oid AND d.deptype = 'e'
                                         AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
              JOIN pg_catalog.pg_class c ON c.oid = d.objid
             WHERE e.extname = 'pg_stat_statements' AND c.relkind = 'v'
            UNION ALL
            SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid, p.proowner,
                   COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner)), 'FUNCTION', 'EXECUTE', 'pg_read_all_stats'
              FROM pg_catalog.pg_extension e
              JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                                         AND d.refobjid = e.oid AND d.deptype = 'e'
                                         AND d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
              JOIN pg_catalog.pg_proc p ON p.oid = d.objid
             WHERE e.extname = 'pg_stat_statements'
            UNION ALL
            -- advisory locks
            SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid, p.proowner,
                   COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner)), 'FUNCTION', 'EXECUTE', 'vital_owner'
              FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace AND p.proname LIKE 'pg\_%advisory%'
            UNION ALL
            -- creating large objects
            SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid, p.proowner,
                   COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner)), 'FUNCTION', 'EXECUTE', NULL
              FROM pg_catalog.pg_proc p
             WHERE p.oid IN ('pg_catalog.lo_create(oid)'::pg_catalog.regprocedure,
                             'pg_catalog.lo_creat(integer)'::pg_catalog.regprocedure,
                             'pg_catalog.lo_from_bytea(oid,bytea)'::pg_catalog.regprocedure)
        )
        SELECT t.kind, t.privilege, t.keeper, t.owner,
               (pg_catalog.pg_identify_object(t.classid, t.objid, 0)).identity AS name
          FROM target t
         WHERE EXISTS (SELECT 1 FROM pg_catalog.aclexplode(t.acl) a
                        WHERE a.grantee = 0 AND a.privilege_type = t.privilege)
         ORDER BY 5
    LOOP
        IF NOT (super OR pg_catalog.pg_has_role(CURRENT_USER, r.owner, 'USAGE')) THEN
            skipped := skipped + 1;
            CONTINUE;
        END IF;
        EXECUTE pg_catalog.format('REVOKE %s ON %s %s FROM PUBLIC', r.privilege, r.kind, r.name);
        INSERT INTO vital.migration_objects (kind, name, detail)
        VALUES ('public_privilege', r.kind || ' ' || r.name, r.keeper)
        ON CONFLICT (kind, name) DO NOTHING;
    END LOOP;

    -- What PUBLIC lost, the keeper role gets (again, on a re-run).
    FOR r IN
        SELECT m.name, m.detail,
               COALESCE((SELECT c.relowner FROM pg_catalog.pg_class c
                          WHERE m.name LIKE 'TABLE %' AND c.oid = pg_catalog.to_regclass(pg_catalog.substr(m.name, 7))),
                        (SELECT p.proowner FROM pg_catalog.pg_proc p
                          WHERE m.name LIKE 'FUNCTION %' AND p.oid = pg_catalog.to_regprocedure(pg_catalog.substr(m.name, 10))))
                   AS owner
          FROM vital.migration_objects m
         WHERE m.kind = 'public_privilege' AND m.detail IS NOT NULL
         ORDER BY m.name
    LOOP
        IF r.owner IS NULL THEN
            CONTINUE; -- dropped since (an extension)
        END IF;
        IF NOT (super OR pg_catalog.pg_has_role(CURRENT_USER, r.owner, 'USAGE')) THEN
            CONTINUE;
        END IF;
        EXECUTE pg_catalog.format('GRANT %s ON %s TO %I',
            CASE WHEN r.name LIKE 'TABLE %' THEN 'SELECT' ELSE 'EXECUTE' END, r.name, r.detail);
    END LOOP;

    IF skipped > 0 THEN
        RAISE WARNING '% privileges of PUBLIC on statistics, lock, advisory-lock and large-object objects were left in place: only a superuser may revoke them. Tenants can still read each other''s activity until a superuser runs: vitalproxy migrate reapply 20251026000005', skipped;
    END IF;
END
$$;
-- +goose StatementEnd

-- Operators (trusted humans) keep seeing every session, lock and statistic.
-- +goose StatementBegin
DO $$
BEGIN
    IF NOT pg_catalog.pg_has_role('vital_operator', 'pg_read_all_stats', 'MEMBER') THEN
        BEGIN
            GRANT pg_read_all_stats TO vital_operator;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'vital_operator was not made a member of pg_read_all_stats: only a superuser may grant it (GRANT pg_read_all_stats TO vital_operator)';
        END;
    END IF;
END
$$;
-- +goose StatementEnd

-- resource_sharing_audit.id: a random uuid instead of one sequence for all
-- tenants. Existing rows get new random ids.
-- +goose StatementBegin
DO $$
BEGIN
    IF (SELECT a.atttypid FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = 'public.resource_sharing_audit'::pg_catalog.regclass
           AND a.attname = 'id' AND NOT a.attisdropped) <> 'pg_catalog.uuid'::pg_catalog.regtype THEN
        ALTER TABLE public.resource_sharing_audit ALTER COLUMN id DROP IDENTITY IF EXISTS;
        ALTER TABLE public.resource_sharing_audit ALTER COLUMN id DROP DEFAULT;
        ALTER TABLE public.resource_sharing_audit
            ALTER COLUMN id SET DATA TYPE uuid USING pg_catalog.gen_random_uuid();
    END IF;
    ALTER TABLE public.resource_sharing_audit ALTER COLUMN id SET DEFAULT pg_catalog.gen_random_uuid();
END
$$;
-- +goose StatementEnd

-- +goose Down

-- resource_sharing_audit.id back to a bigint identity, numbered in the
-- table's physical order (the uuids carry no order).
-- +goose StatementBegin
DO $$
DECLARE
    next bigint;
BEGIN
    IF pg_catalog.to_regclass('public.resource_sharing_audit') IS NULL
       OR (SELECT a.atttypid FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = 'public.resource_sharing_audit'::pg_catalog.regclass
              AND a.attname = 'id' AND NOT a.attisdropped) <> 'pg_catalog.uuid'::pg_catalog.regtype THEN
        RETURN;
    END IF;
    CREATE TEMPORARY SEQUENCE vital_audit_id_down;
    ALTER TABLE public.resource_sharing_audit ALTER COLUMN id DROP DEFAULT;
    ALTER TABLE public.resource_sharing_audit
        ALTER COLUMN id SET DATA TYPE bigint USING pg_catalog.nextval('pg_temp.vital_audit_id_down');
    SELECT CASE WHEN s.is_called THEN s.last_value + 1 ELSE 1 END INTO next FROM pg_temp.vital_audit_id_down s;
    EXECUTE pg_catalog.format(
        'ALTER TABLE public.resource_sharing_audit ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (START WITH %s)', next);
    DROP SEQUENCE pg_temp.vital_audit_id_down;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
DO $$
DECLARE
    r       record;
    owner   oid;
    super   boolean;
    skipped integer := 0;
BEGIN
    IF pg_catalog.to_regclass('vital.migration_objects') IS NULL THEN
        RETURN;
    END IF;
    SELECT rolsuper INTO super FROM pg_catalog.pg_roles WHERE rolname = CURRENT_USER;
    FOR r IN
        SELECT m.name, m.detail FROM vital.migration_objects m WHERE m.kind = 'public_privilege' ORDER BY m.name
    LOOP
        IF r.name LIKE 'TABLE %' THEN
            SELECT c.relowner INTO owner FROM pg_catalog.pg_class c
             WHERE c.oid = pg_catalog.to_regclass(pg_catalog.substr(r.name, 7));
        ELSE
            SELECT p.proowner INTO owner FROM pg_catalog.pg_proc p
             WHERE p.oid = pg_catalog.to_regprocedure(pg_catalog.substr(r.name, 10));
        END IF;
        IF owner IS NULL THEN
            -- dropped since (an extension): nothing to give back
            DELETE FROM vital.migration_objects WHERE kind = 'public_privilege' AND name = r.name;
            CONTINUE;
        END IF;
        IF NOT (super OR pg_catalog.pg_has_role(CURRENT_USER, owner, 'USAGE')) THEN
            skipped := skipped + 1;
            CONTINUE;
        END IF;
        EXECUTE pg_catalog.format('GRANT %s ON %s TO PUBLIC',
            CASE WHEN r.name LIKE 'TABLE %' THEN 'SELECT' ELSE 'EXECUTE' END, r.name);
        IF r.detail IS NOT NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r.detail) THEN
            EXECUTE pg_catalog.format('REVOKE %s ON %s FROM %I',
                CASE WHEN r.name LIKE 'TABLE %' THEN 'SELECT' ELSE 'EXECUTE' END, r.name, r.detail);
        END IF;
        DELETE FROM vital.migration_objects WHERE kind = 'public_privilege' AND name = r.name;
    END LOOP;
    IF skipped > 0 THEN
        RAISE WARNING '% privileges of PUBLIC were not given back: only a superuser may grant them', skipped;
    END IF;
END
$$;
-- +goose StatementEnd
