-- Migration 7: give back, scoped to the calling tenant, two features that
-- migration 5 revoked because PostgreSQL shares them across a database.
--
--   * Advisory locks. public.pg_advisory_lock and every other advisory-lock
--     function (the bigint and the (integer, integer) forms, session and
--     transaction level, shared, try_, unlock, unlock_all: 21 functions,
--     the same names and argument types as pg_catalog's) take the lock of
--     a key that belongs to the calling tenant (public.current_tenant_id();
--     none: 42501). The tenant's 64-bit key is put through a permutation
--     keyed by the tenant and a random secret of this database
--     (vital.advisory_lock_key, which no tenant role can read): a
--     four-round Feistel network whose round function is sha256 under that
--     secret. Within a tenant the mapping is one-to-one, so two keys of one
--     tenant never share a lock, and the bigint and the two-integer forms
--     stay apart as they are in PostgreSQL. Across tenants, 64 bits cannot
--     hold a 128-bit tenant id and a 64-bit key, so no mapping can be free
--     of collisions: a given key of one tenant and a given key of another
--     land on the same lock with probability 2^-64, and no tenant can tell
--     which of its keys would, since that needs the secret. pg_locks stays
--     closed to tenants; operators see the permuted keys there.
--     pg_advisory_unlock_all releases the calling backend's locks, which
--     are all the caller's own, and needs no tenant.
--     Callers without a tenant that may execute pg_catalog's function
--     (superusers, vital_owner) get it unchanged, key and all.
--   * Own sessions. public.pg_stat_activity and public.pg_stat_ssl are
--     views with pg_catalog's columns that show a tenant role the sessions
--     of its own tenant's roles, query text included, and nothing of other
--     tenants: a read-write role sees its tenant's rw and ro sessions, a
--     read-only role its ro sessions, an admin role all three (never the
--     sessions of a role that may see more than the caller). Backends of
--     the pooled roles of context mode cannot be told apart by tenant: a
--     session there sees only its own backend. Members of
--     pg_read_all_stats see every session, exactly as pg_catalog shows
--     them. The functions behind the views are SECURITY DEFINER owned by
--     vital_owner, which joins pg_read_all_stats for them (a superuser's
--     grant, cluster-wide like the group roles: Down leaves it).
--
-- pg_catalog comes first in name resolution unless a search_path names it:
-- with PostgreSQL's default search_path ("$user", public) an unqualified
-- pg_advisory_lock(1) or pg_stat_activity would mean pg_catalog's, which
-- tenants may not use (42501), never an unscoped lock. So this migration
-- gives the database the default search_path "$user", public, pg_catalog
-- (unless it has a default search_path already), and unqualified calls
-- reach the shims and views. A client's own search_path decides for its
-- session: naming public before pg_catalog keeps them, leaving pg_catalog
-- out or first gives 42501. No tenant role may create objects in public,
-- so this only brings these functions and views forward.
--
-- enter_tenant_context (migration 6) also runs pg_advisory_unlock_all: a
-- session-level advisory lock one tenant left on a shared backend is
-- released before the backend serves another tenant.
--
-- Large objects stay as migration 5 left them (no tenant role may create
-- them): see docs/security.md for what was measured.
--
-- Every statement is idempotent: the Up section may be re-run by hand.

-- +goose Up

-- The secret the advisory-lock keys are permuted with: 256 bits from
-- pg_strong_random (three random uuids), made once and kept on re-runs.
CREATE TABLE IF NOT EXISTS vital.advisory_lock_key (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
    key        bytea       NOT NULL CHECK (pg_catalog.length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE vital.advisory_lock_key OWNER TO vital_owner;
REVOKE ALL ON vital.advisory_lock_key FROM PUBLIC;
INSERT INTO vital.advisory_lock_key (key)
VALUES (pg_catalog.sha256(pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
                          || pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
                          || pg_catalog.uuid_send(pg_catalog.gen_random_uuid())))
ON CONFLICT (id) DO NOTHING;

-- advisory_lock_tag: the lock key (as 64 bits) for key (p_hi, p_lo) of the
-- calling tenant, in form 1 (bigint keys) or 2 (two-integer keys). NULL
-- when the caller has no tenant but may execute p_original itself: the key
-- is then used as it is. Only vital_owner (the shims' owner) may call it.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION vital.advisory_lock_tag(p_form integer, p_hi integer, p_lo integer,
                                                   p_original pg_catalog.regprocedure)
    RETURNS bigint
    LANGUAGE plpgsql STABLE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tenant uuid := public.current_tenant_id();
    v_key    bytea;
    v_l      integer := p_hi;
    v_r      integer := p_lo;
    v_f      integer;
BEGIN
    IF v_tenant IS NULL THEN
        IF pg_catalog.has_function_privilege(SESSION_USER, p_original, 'EXECUTE') THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'advisory locks need a tenant context' USING ERRCODE = '42501';
    END IF;
    SELECT pg_catalog.sha256(k.key || pg_catalog.uuid_send(v_tenant)) INTO v_key FROM vital.advisory_lock_key k;
    IF v_key IS NULL THEN
        RAISE EXCEPTION 'vital.advisory_lock_key is empty (run: vitalproxy migrate reapply 20251026000007)'
            USING ERRCODE = '55000';
    END IF;
    -- Feistel rounds: (L, R) := (R, L xor F(form, round, R)), F the first
    -- 32 bits of sha256(tenant key || form || round || R).
    FOR i IN 1..4 LOOP
        v_f := ('x' || pg_catalog.encode(pg_catalog.substr(pg_catalog.sha256(
                   v_key || pg_catalog.int4send(p_form) || pg_catalog.int4send(i) || pg_catalog.int4send(v_r)),
                   1, 4), 'hex'))::bit(32)::integer;
        SELECT v_r, v_l # v_f INTO v_l, v_r;
    END LOOP;
    RETURN (v_l::bigint << 32) | (v_r::bigint & 4294967295);
END
$$;
-- +goose StatementEnd
ALTER FUNCTION vital.advisory_lock_tag(integer, integer, integer, pg_catalog.regprocedure) OWNER TO vital_owner;
REVOKE ALL ON FUNCTION vital.advisory_lock_tag(integer, integer, integer, pg_catalog.regprocedure) FROM PUBLIC;

-- The shims: public.<name>(bigint) and public.<name>(integer, integer) for
-- each advisory-lock function of pg_catalog, same result types, STRICT
-- like the originals.
-- +goose StatementBegin
DO $do$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT v.name, v.result
          FROM (VALUES ('pg_advisory_lock', 'void'), ('pg_advisory_lock_shared', 'void'),
                       ('pg_advisory_unlock', 'boolean'), ('pg_advisory_unlock_shared', 'boolean'),
                       ('pg_advisory_xact_lock', 'void'), ('pg_advisory_xact_lock_shared', 'void'),
                       ('pg_try_advisory_lock', 'boolean'), ('pg_try_advisory_lock_shared', 'boolean'),
                       ('pg_try_advisory_xact_lock', 'boolean'), ('pg_try_advisory_xact_lock_shared', 'boolean'))
               AS v(name, result)
    LOOP
        EXECUTE pg_catalog.format($f$
            CREATE OR REPLACE FUNCTION public.%1$I(bigint) RETURNS %2$s
                LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
                SET search_path = pg_catalog, pg_temp
            AS $b$
            DECLARE
                v_tag bigint := vital.advisory_lock_tag(1, ($1 >> 32)::integer, (($1 << 32) >> 32)::integer,
                                                        'pg_catalog.%1$I(bigint)');
            BEGIN
                %3$s pg_catalog.%1$I(COALESCE(v_tag, $1));
            END
            $b$$f$, r.name, r.result, CASE WHEN r.result = 'void' THEN 'PERFORM' ELSE 'RETURN' END);
        EXECUTE pg_catalog.format($f$
            CREATE OR REPLACE FUNCTION public.%1$I(integer, integer) RETURNS %2$s
                LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
                SET search_path = pg_catalog, pg_temp
            AS $b$
            DECLARE
                v_tag bigint := vital.advisory_lock_tag(2, $1, $2, 'pg_catalog.%1$I(integer,integer)');
            BEGIN
                IF v_tag IS NULL THEN
                    %3$s pg_catalog.%1$I($1, $2);
                ELSE
                    %3$s pg_catalog.%1$I((v_tag >> 32)::integer, ((v_tag << 32) >> 32)::integer);
                END IF;
            END
            $b$$f$, r.name, r.result, CASE WHEN r.result = 'void' THEN 'PERFORM' ELSE 'RETURN' END);
        EXECUTE pg_catalog.format('ALTER FUNCTION public.%1$I(bigint) OWNER TO vital_owner', r.name);
        EXECUTE pg_catalog.format('ALTER FUNCTION public.%1$I(integer, integer) OWNER TO vital_owner', r.name);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION public.%1$I(bigint), public.%1$I(integer, integer) FROM PUBLIC', r.name);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION public.%1$I(bigint), public.%1$I(integer, integer) TO PUBLIC', r.name);
    END LOOP;
END
$do$;
-- +goose StatementEnd

-- pg_advisory_unlock_all releases the calling backend's session-level
-- advisory locks: on a backend of one tenant role, or on a shared backend
-- since its tenant entered, only the caller's own. No tenant needed (the
-- reset of enter_tenant_context calls it before the context is set).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.pg_advisory_unlock_all() RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_catalog.pg_advisory_unlock_all();
END
$$;
-- +goose StatementEnd
ALTER FUNCTION public.pg_advisory_unlock_all() OWNER TO vital_owner;
REVOKE ALL ON FUNCTION public.pg_advisory_unlock_all() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.pg_advisory_unlock_all() TO PUBLIC;

-- current_tenant_id as migration 6 defines it, verifying the context with
-- less work (it runs on every query of a shared backend): no pattern
-- matching before the MAC, which covers the tenant id.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.current_tenant_id() RETURNS uuid
    LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ctx    text := pg_catalog.current_setting('vital.tenant_context', true);
    v_tenant uuid;
    v_ikey   bytea;
    v_okey   bytea;
    v_tid    text;
BEGIN
    IF v_ctx IS NOT NULL AND v_ctx <> '' THEN
        SELECT k.ikey, k.okey INTO v_ikey, v_okey
          FROM vital.context_key k JOIN vital.pooled_roles p ON p.role_name = SESSION_USER;
        IF FOUND THEN
            -- The MAC covers the tenant id: once it verifies, the id is the
            -- one the proxy signed, so no format check is needed before.
            -- Comparing hashes of both hex strings keeps the comparison's
            -- timing from telling anything about the expected MAC.
            v_tid := pg_catalog.substr(v_ctx, 1, 36);
            IF pg_catalog.length(v_ctx) = 101 AND pg_catalog.substr(v_ctx, 37, 1) = ':'
               AND pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.encode(pg_catalog.sha256(v_okey || pg_catalog.sha256(v_ikey
                   || pg_catalog.convert_to('vitalproxy tenant context v1:' || v_tid || ':' || pg_catalog.pg_backend_pid()::text
                   || ':' || SESSION_USER, 'UTF8'))), 'hex'), 'UTF8'))
               = pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.substr(v_ctx, 38), 'UTF8')) THEN
                RETURN v_tid::uuid;
            END IF;
            RETURN NULL;
        END IF;
    END IF;
    SELECT tr.tenant_id INTO v_tenant FROM vital.tenant_roles tr WHERE tr.role_name = SESSION_USER;
    IF FOUND THEN
        RETURN v_tenant;
    END IF;
    IF pg_catalog.pg_has_role(SESSION_USER, 'vital_operator', 'MEMBER') THEN
        RETURN NULLIF(pg_catalog.current_setting('vital.tenant_id', true), '')::uuid;
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- set_tenant_context: as migration 1 defines it, and a pooled role of
-- context mode may assert the tenant its verified context names
-- (applications written for role mode call it with their own tenant),
-- never another (42501).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.set_tenant_context(p_tenant_id uuid) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_mapped uuid;
BEGIN
    SELECT tr.tenant_id INTO v_mapped FROM vital.tenant_roles tr WHERE tr.role_name = SESSION_USER;
    IF FOUND THEN
        IF p_tenant_id IS DISTINCT FROM v_mapped THEN
            RAISE EXCEPTION 'tenant context %: not the tenant of role %', p_tenant_id, SESSION_USER
                USING ERRCODE = '42501';
        END IF;
    ELSIF EXISTS (SELECT 1 FROM vital.pooled_roles p WHERE p.role_name = SESSION_USER) THEN
        v_mapped := public.current_tenant_id();
        IF v_mapped IS NULL OR p_tenant_id IS DISTINCT FROM v_mapped THEN
            RAISE EXCEPTION 'tenant context %: not the tenant of this session', p_tenant_id
                USING ERRCODE = '42501';
        END IF;
    ELSIF NOT pg_catalog.pg_has_role(SESSION_USER, 'vital_operator', 'MEMBER') THEN
        RAISE EXCEPTION 'role % may not set a tenant context', SESSION_USER
            USING ERRCODE = '42501';
    END IF;
    PERFORM pg_catalog.set_config('vital.tenant_id', COALESCE(p_tenant_id::text, ''), false);
END
$$;
-- +goose StatementEnd
ALTER FUNCTION public.set_tenant_context(uuid) OWNER TO vital_owner;

-- enter_tenant_context as migration 6 defines it, with
-- pg_advisory_unlock_all in the reset, and publishing the tenant in
-- vital.tenant_id for application code as set_tenant_context does.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.enter_tenant_context(p_context text) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
DECLARE
    v_tenant uuid;
BEGIN
    RESET ALL;
    RESET ROLE;
    UNLISTEN *;
    DISCARD SEQUENCES;
    EXECUTE 'CLOSE ALL';
    IF pg_catalog.pg_my_temp_schema() <> 0 THEN
        DISCARD TEMP;
    END IF;
    PERFORM public.pg_advisory_unlock_all();
    PERFORM pg_catalog.set_config('vital.tenant_context', p_context, false);
    v_tenant := public.entered_tenant();
    -- Published for application code, as set_tenant_context does.
    PERFORM pg_catalog.set_config('vital.tenant_id', v_tenant::text, false);
    RETURN v_tenant;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION public.enter_tenant_context(text) OWNER TO vital_owner;
REVOKE ALL ON FUNCTION public.enter_tenant_context(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.enter_tenant_context(text) TO vital_tenant;

-- vital_owner reads every session's row (query text included) for the
-- definer functions below. Only a superuser may grant it. Like the group
-- roles, the membership is cluster-wide and stays after Down (another
-- database's migration may rely on it).
-- +goose StatementBegin
DO $$
BEGIN
    IF NOT pg_catalog.pg_has_role('vital_owner', 'pg_read_all_stats', 'MEMBER') THEN
        BEGIN
            GRANT pg_read_all_stats TO vital_owner;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'vital_owner was not made a member of pg_read_all_stats: only a superuser may grant it. Tenants get "permission denied" from public.pg_stat_activity until a superuser runs: vitalproxy migrate reapply 20251026000007';
        END;
    END IF;
END
$$;
-- +goose StatementEnd

-- tenant_stat_activity: pg_stat_activity's rows the caller may see (see
-- the top of this file).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.tenant_stat_activity() RETURNS SETOF pg_catalog.pg_stat_activity
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tenant uuid;
    v_rank   integer;
BEGIN
    IF pg_catalog.pg_has_role(SESSION_USER, 'pg_read_all_stats', 'USAGE') THEN
        RETURN QUERY SELECT * FROM pg_catalog.pg_stat_activity;
        RETURN;
    END IF;
    v_tenant := public.current_tenant_id();
    IF v_tenant IS NULL THEN
        -- No tenant (say, a pooled role no proxy has entered a context in):
        -- only the session itself.
        RETURN QUERY SELECT a.* FROM pg_catalog.pg_stat_activity a WHERE a.pid = pg_catalog.pg_backend_pid();
        RETURN;
    END IF;
    -- What the caller's role may see: ro 1, rw 2, admin 3.
    SELECT CASE tr.capability WHEN 'ro' THEN 1 WHEN 'rw' THEN 2 WHEN 'admin' THEN 3 END INTO v_rank
      FROM vital.tenant_roles tr WHERE tr.role_name = SESSION_USER AND tr.tenant_id = v_tenant;
    IF v_rank IS NULL THEN
        SELECT CASE p.capability WHEN 'ro' THEN 1 WHEN 'rw' THEN 2 END INTO v_rank
          FROM vital.pooled_roles p WHERE p.role_name = SESSION_USER;
    END IF;
    RETURN QUERY
        SELECT a.* FROM pg_catalog.pg_stat_activity a
         WHERE a.pid = pg_catalog.pg_backend_pid()
            OR EXISTS (SELECT 1 FROM vital.tenant_roles tr
                        WHERE tr.role_name = a.usename AND tr.tenant_id = v_tenant
                          AND CASE tr.capability WHEN 'ro' THEN 1 WHEN 'rw' THEN 2 ELSE 3 END
                              <= COALESCE(v_rank, 0));
END
$$;
-- +goose StatementEnd
ALTER FUNCTION public.tenant_stat_activity() OWNER TO vital_owner;
REVOKE ALL ON FUNCTION public.tenant_stat_activity() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.tenant_stat_activity() TO PUBLIC;

-- tenant_stat_ssl: pg_stat_ssl's rows of the backends tenant_stat_activity
-- shows.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.tenant_stat_ssl() RETURNS SETOF pg_catalog.pg_stat_ssl
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.pg_has_role(SESSION_USER, 'pg_read_all_stats', 'USAGE') THEN
        RETURN QUERY SELECT * FROM pg_catalog.pg_stat_ssl;
        RETURN;
    END IF;
    RETURN QUERY
        SELECT s.* FROM pg_catalog.pg_stat_ssl s
         WHERE s.pid IN (SELECT a.pid FROM public.tenant_stat_activity() a);
END
$$;
-- +goose StatementEnd
ALTER FUNCTION public.tenant_stat_ssl() OWNER TO vital_owner;
REVOKE ALL ON FUNCTION public.tenant_stat_ssl() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.tenant_stat_ssl() TO PUBLIC;

CREATE OR REPLACE VIEW public.pg_stat_activity WITH (security_invoker = true) AS
    SELECT * FROM public.tenant_stat_activity();
ALTER VIEW public.pg_stat_activity OWNER TO vital_owner;
REVOKE ALL ON public.pg_stat_activity FROM PUBLIC;
GRANT SELECT ON public.pg_stat_activity TO PUBLIC;

CREATE OR REPLACE VIEW public.pg_stat_ssl WITH (security_invoker = true) AS
    SELECT * FROM public.tenant_stat_ssl();
ALTER VIEW public.pg_stat_ssl OWNER TO vital_owner;
REVOKE ALL ON public.pg_stat_ssl FROM PUBLIC;
GRANT SELECT ON public.pg_stat_ssl TO PUBLIC;

-- The shims and views are PUBLIC's, since with this search_path every
-- session's unqualified calls reach them: tenants get their scoped
-- versions, callers that may use pg_catalog's get those unchanged
-- (pg_read_all_stats members every session), anyone else without a tenant
-- their own session only, or 42501 for advisory locks as before.
--
-- Unqualified calls reach the shims and views: the database's default
-- search_path puts public before pg_catalog ("$user", public, pg_catalog),
-- unless the database already has a default search_path of its own (then
-- it is left alone: name public before pg_catalog there, or call the
-- public.* names). RESET ALL and DISCARD ALL keep a database default.
-- Only the database owner or a superuser may set it; recorded in
-- vital.migration_objects (kind 'database_search_path') so that Down
-- resets exactly what this set.
-- +goose StatementBegin
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_db_role_setting s CROSS JOIN LATERAL pg_catalog.unnest(s.setconfig) AS cfg
         WHERE s.setrole = 0
           AND s.setdatabase = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
           AND pg_catalog.split_part(cfg, '=', 1) = 'search_path') THEN
        BEGIN
            EXECUTE pg_catalog.format('ALTER DATABASE %I SET search_path = "$user", public, pg_catalog', pg_catalog.current_database());
            INSERT INTO vital.migration_objects (kind, name, detail)
            VALUES ('database_search_path', pg_catalog.current_database(), '"$user", public, pg_catalog')
            ON CONFLICT (kind, name) DO NOTHING;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'the database default search_path was not set (only its owner or a superuser may): unqualified pg_advisory_lock and pg_stat_activity keep meaning pg_catalog''s, which tenants may not use; call public.pg_advisory_lock, or run: ALTER DATABASE % SET search_path = "$user", public, pg_catalog', pg_catalog.quote_ident(pg_catalog.current_database());
        END;
    END IF;
END
$$;
-- +goose StatementEnd

-- Console roles of the user store's users (vitalproxy user add --console):
-- admin or stats, as users[].console in the config file.
ALTER TABLE vital.proxy_users ADD COLUMN IF NOT EXISTS console text
    CONSTRAINT proxy_users_console_check CHECK (console IN ('admin', 'stats'));

-- +goose Down

ALTER TABLE vital.proxy_users DROP COLUMN IF EXISTS console;

-- +goose StatementBegin
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM vital.migration_objects m
                WHERE m.kind = 'database_search_path' AND m.name = pg_catalog.current_database()) THEN
        EXECUTE pg_catalog.format('ALTER DATABASE %I RESET search_path', pg_catalog.current_database());
        DELETE FROM vital.migration_objects
         WHERE kind = 'database_search_path' AND name = pg_catalog.current_database();
    END IF;
END
$$;
-- +goose StatementEnd

DROP VIEW IF EXISTS public.pg_stat_ssl;
DROP VIEW IF EXISTS public.pg_stat_activity;
DROP FUNCTION IF EXISTS public.tenant_stat_ssl();
DROP FUNCTION IF EXISTS public.tenant_stat_activity();

-- current_tenant_id as migration 6 defines it.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.current_tenant_id() RETURNS uuid
    LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ctx    text := pg_catalog.current_setting('vital.tenant_context', true);
    v_tenant uuid;
    v_ikey   bytea;
    v_okey   bytea;
    v_tid    text;
    v_mac    text;
BEGIN
    IF v_ctx IS NOT NULL AND v_ctx <> '' THEN
        SELECT k.ikey, k.okey INTO v_ikey, v_okey
          FROM vital.context_key k JOIN vital.pooled_roles p ON p.role_name = SESSION_USER;
        IF FOUND THEN
            v_tid := pg_catalog.substr(v_ctx, 1, 36);
            v_mac := pg_catalog.substr(v_ctx, 38);
            IF pg_catalog.length(v_ctx) <> 101 OR pg_catalog.substr(v_ctx, 37, 1) <> ':'
               OR v_tid !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
               OR v_mac !~ '^[0-9a-f]{64}$' THEN
                RETURN NULL;
            END IF;
            -- Hashing both sides again makes the comparison's timing say
            -- nothing about the expected MAC.
            IF pg_catalog.sha256(pg_catalog.sha256(v_okey || pg_catalog.sha256(v_ikey || pg_catalog.convert_to(
                   'vitalproxy tenant context v1:' || v_tid || ':' || pg_catalog.pg_backend_pid()::text
                   || ':' || SESSION_USER, 'UTF8'))))
               = pg_catalog.sha256(pg_catalog.decode(v_mac, 'hex')) THEN
                RETURN v_tid::uuid;
            END IF;
            RETURN NULL;
        END IF;
    END IF;
    SELECT tr.tenant_id INTO v_tenant FROM vital.tenant_roles tr WHERE tr.role_name = SESSION_USER;
    IF FOUND THEN
        RETURN v_tenant;
    END IF;
    IF pg_catalog.pg_has_role(SESSION_USER, 'vital_operator', 'MEMBER') THEN
        RETURN NULLIF(pg_catalog.current_setting('vital.tenant_id', true), '')::uuid;
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- set_tenant_context as migration 1 defines it.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.set_tenant_context(p_tenant_id uuid) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_mapped uuid;
BEGIN
    SELECT tr.tenant_id INTO v_mapped FROM vital.tenant_roles tr WHERE tr.role_name = SESSION_USER;
    IF FOUND THEN
        IF p_tenant_id IS DISTINCT FROM v_mapped THEN
            RAISE EXCEPTION 'tenant context %: not the tenant of role %', p_tenant_id, SESSION_USER
                USING ERRCODE = '42501';
        END IF;
    ELSIF NOT pg_catalog.pg_has_role(SESSION_USER, 'vital_operator', 'MEMBER') THEN
        RAISE EXCEPTION 'role % may not set a tenant context', SESSION_USER
            USING ERRCODE = '42501';
    END IF;
    PERFORM pg_catalog.set_config('vital.tenant_id', COALESCE(p_tenant_id::text, ''), false);
END
$$;
-- +goose StatementEnd

-- enter_tenant_context as migration 6 defines it.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.enter_tenant_context(p_context text) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
BEGIN
    RESET ALL;
    RESET ROLE;
    UNLISTEN *;
    DISCARD SEQUENCES;
    EXECUTE 'CLOSE ALL';
    IF pg_catalog.pg_my_temp_schema() <> 0 THEN
        DISCARD TEMP;
    END IF;
    PERFORM pg_catalog.set_config('vital.tenant_context', p_context, false);
    RETURN public.entered_tenant();
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT v.name
          FROM (VALUES ('pg_advisory_lock'), ('pg_advisory_lock_shared'), ('pg_advisory_unlock'),
                       ('pg_advisory_unlock_shared'), ('pg_advisory_xact_lock'), ('pg_advisory_xact_lock_shared'),
                       ('pg_try_advisory_lock'), ('pg_try_advisory_lock_shared'), ('pg_try_advisory_xact_lock'),
                       ('pg_try_advisory_xact_lock_shared')) AS v(name)
    LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION IF EXISTS public.%1$I(bigint), public.%1$I(integer, integer)', r.name);
    END LOOP;
END
$$;
-- +goose StatementEnd
DROP FUNCTION IF EXISTS public.pg_advisory_unlock_all();
DROP FUNCTION IF EXISTS vital.advisory_lock_tag(integer, integer, integer, pg_catalog.regprocedure);
DROP TABLE IF EXISTS vital.advisory_lock_key;
