-- Migration 6: a tenant context that shared backends can carry, so that
-- many tenants can share one pool of server connections (isolation.mode:
-- context) without a client ever being able to choose its tenant.
--
-- In role mode (the default) every backend logs in as its tenant's own role
-- and current_tenant_id() maps session_user. That costs one backend login
-- per tenant switch. In context mode the proxy logs in as a pooled role
-- (vital.pooled_roles: one per capability, rw and ro, member of the same
-- group roles as the tenant roles), and before lending a backend to a
-- tenant's transaction it calls enter_tenant_context(<uuid>:<mac>), where
-- mac = HMAC-SHA256(key, 'vitalproxy tenant context v1:' || uuid || ':' ||
-- pg_backend_pid() || ':' || session_user). The key is derived from the
-- proxy's role secret and kept in vital.context_key, which no tenant role
-- can read. current_tenant_id() accepts the context only for a pooled role
-- and only when the MAC verifies for this very backend and role: a client
-- can read its own context (SHOW), but cannot forge another tenant's, nor
-- replay its own on another backend or role. enter_tenant_context first
-- clears what a previous borrower could have left on the session (settings,
-- role, LISTENs, sequences' currval, cursors, temporary objects) and returns
-- the verified tenant, which the proxy compares with the one it meant.
-- A suspended tenant's context is refused.
--
-- On a shared backend some functions would cross tenants: signalling
-- backends of the same role (pg_cancel_backend, pg_terminate_backend) and
-- reading the session's prepared statements (other tenants' statement text).
-- EXECUTE/SELECT on them is revoked from PUBLIC and granted to
-- vital_tenant_session, a group that tenant roles join (pooled roles never
-- do), to vital_operator, and (the signalling functions) to
-- pg_signal_backend: role mode keeps them. Recorded in
-- vital.migration_objects (kind 'public_privilege_pooled') so that Down
-- gives back exactly what this took. As with migration 5, privileges on
-- pg_catalog objects may only be changed by a superuser; another migrating
-- role gets a WARNING and the audit fails shared_functions_revoked until a
-- superuser runs: vitalproxy migrate reapply 20251026000006.
--
-- Every statement is idempotent: the Up section may be re-run by hand.

-- +goose Up

-- +goose StatementBegin
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'vital_tenant_session') THEN
        BEGIN
            CREATE ROLE vital_tenant_session NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION INHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- created meanwhile by a migration of another database
        END;
    END IF;
END
$$;
-- +goose StatementEnd

-- Pooled login roles: written by `vitalproxy tenant sync`.
CREATE TABLE IF NOT EXISTS vital.pooled_roles (
    role_name  name        PRIMARY KEY,
    capability text        NOT NULL UNIQUE CHECK (capability IN ('rw', 'ro')),
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE vital.pooled_roles OWNER TO vital_owner;
REVOKE ALL ON vital.pooled_roles FROM PUBLIC;

-- The context key as HMAC's two padded keys (key XOR ipad, key XOR opad),
-- so verifying costs two sha256 calls. One row; written by sync.
CREATE TABLE IF NOT EXISTS vital.context_key (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
    ikey       bytea       NOT NULL CHECK (pg_catalog.length(ikey) = 64),
    okey       bytea       NOT NULL CHECK (pg_catalog.length(okey) = 64),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE vital.context_key OWNER TO vital_owner;
REVOKE ALL ON vital.context_key FROM PUBLIC;

-- current_tenant_id: a verified context of a pooled role; else the tenant
-- of session_user; else, for vital_operator members, the manual context.
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
ALTER FUNCTION public.current_tenant_id() OWNER TO vital_owner;

-- entered_tenant: the verified tenant of the session's context, refused
-- (42501) when there is none or the tenant may not log in now.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.entered_tenant() RETURNS uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tenant uuid := public.current_tenant_id();
BEGIN
    IF v_tenant IS NULL OR NOT EXISTS (
        SELECT 1 FROM public.tenants t WHERE t.id = v_tenant AND t.status IN ('active', 'trial')) THEN
        RAISE EXCEPTION 'tenant context refused' USING ERRCODE = '42501';
    END IF;
    RETURN v_tenant;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION public.entered_tenant() OWNER TO vital_owner;
REVOKE ALL ON FUNCTION public.entered_tenant() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.entered_tenant() TO vital_tenant;

-- enter_tenant_context: clear what the previous borrower of a shared
-- backend could have left, then set and verify the new context. SECURITY
-- INVOKER without a SET clause: RESET ALL and the context must outlive the
-- call (a SET clause would undo them at its end). Every name is qualified.
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
ALTER FUNCTION public.enter_tenant_context(text) OWNER TO vital_owner;
REVOKE ALL ON FUNCTION public.enter_tenant_context(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.enter_tenant_context(text) TO vital_tenant;

-- Tenant roles join vital_tenant_session (sync keeps it so).
-- +goose StatementBegin
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT tr.role_name FROM vital.tenant_roles tr
              WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = tr.role_name)
                AND NOT pg_catalog.pg_has_role(tr.role_name, 'vital_tenant_session', 'MEMBER')
    LOOP
        EXECUTE pg_catalog.format('GRANT vital_tenant_session TO %I', r.role_name);
    END LOOP;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'tenant roles were not added to vital_tenant_session: run vitalproxy tenant sync';
END
$$;
-- +goose StatementEnd

-- Signalling and prepared-statement functions: tenant roles only.
-- +goose StatementBegin
DO $$
DECLARE
    r       record;
    super   boolean;
    skipped integer := 0;
BEGIN
    SELECT rolsuper INTO super FROM pg_catalog.pg_roles WHERE rolname = CURRENT_USER;
    FOR r IN
        WITH target(classid, objid, owner, acl, kind, privilege) AS (
            SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid, p.proowner,
                   COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner)), 'FUNCTION', 'EXECUTE'
              FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
               AND p.proname IN ('pg_cancel_backend', 'pg_terminate_backend', 'pg_prepared_statement')
            UNION ALL
            SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, c.oid, c.relowner,
                   COALESCE(c.relacl, pg_catalog.acldefault('r', c.relowner)), 'TABLE', 'SELECT'
              FROM pg_catalog.pg_class c
             WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.relname = 'pg_prepared_statements'
        )
        SELECT t.kind, t.privilege, t.owner, (pg_catalog.pg_identify_object(t.classid, t.objid, 0)).identity AS name
          FROM target t
         WHERE EXISTS (SELECT 1 FROM pg_catalog.aclexplode(t.acl) a
                        WHERE a.grantee = 0 AND a.privilege_type = t.privilege)
         ORDER BY 4
    LOOP
        IF NOT (super OR pg_catalog.pg_has_role(CURRENT_USER, r.owner, 'USAGE')) THEN
            skipped := skipped + 1;
            CONTINUE;
        END IF;
        EXECUTE pg_catalog.format('GRANT %s ON %s %s TO vital_tenant_session, vital_operator', r.privilege, r.kind, r.name);
        IF r.kind = 'FUNCTION' AND r.name LIKE '%backend%' THEN
            -- administrators that end sessions (tenant sync) hold pg_signal_backend
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO pg_signal_backend', r.name);
        END IF;
        EXECUTE pg_catalog.format('REVOKE %s ON %s %s FROM PUBLIC', r.privilege, r.kind, r.name);
        INSERT INTO vital.migration_objects (kind, name, detail)
        VALUES ('public_privilege_pooled', r.kind || ' ' || r.name, 'vital_tenant_session')
        ON CONFLICT (kind, name) DO NOTHING;
    END LOOP;
    IF skipped > 0 THEN
        RAISE WARNING '% privileges of PUBLIC on signalling and prepared-statement functions were left in place: only a superuser may revoke them. Tenants sharing pooled backends could signal each other''s backends until a superuser runs: vitalproxy migrate reapply 20251026000006', skipped;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose Down

-- +goose StatementBegin
DO $$
DECLARE
    r     record;
    owner oid;
    super boolean;
BEGIN
    IF pg_catalog.to_regclass('vital.migration_objects') IS NULL THEN
        RETURN;
    END IF;
    SELECT rolsuper INTO super FROM pg_catalog.pg_roles WHERE rolname = CURRENT_USER;
    FOR r IN SELECT m.name FROM vital.migration_objects m WHERE m.kind = 'public_privilege_pooled' ORDER BY m.name
    LOOP
        IF r.name LIKE 'TABLE %' THEN
            SELECT c.relowner INTO owner FROM pg_catalog.pg_class c
             WHERE c.oid = pg_catalog.to_regclass(pg_catalog.substr(r.name, 7));
        ELSE
            SELECT p.proowner INTO owner FROM pg_catalog.pg_proc p
             WHERE p.oid = pg_catalog.to_regprocedure(pg_catalog.substr(r.name, 10));
        END IF;
        IF owner IS NOT NULL AND NOT (super OR pg_catalog.pg_has_role(CURRENT_USER, owner, 'USAGE')) THEN
            RAISE WARNING 'PUBLIC was not given back % : only a superuser may grant it', r.name;
            CONTINUE;
        END IF;
        IF owner IS NOT NULL THEN
            EXECUTE pg_catalog.format('GRANT %s ON %s TO PUBLIC',
                CASE WHEN r.name LIKE 'TABLE %' THEN 'SELECT' ELSE 'EXECUTE' END, r.name);
            EXECUTE pg_catalog.format('REVOKE %s ON %s FROM vital_tenant_session, vital_operator, pg_signal_backend',
                CASE WHEN r.name LIKE 'TABLE %' THEN 'SELECT' ELSE 'EXECUTE' END, r.name);
        END IF;
        DELETE FROM vital.migration_objects WHERE kind = 'public_privilege_pooled' AND name = r.name;
    END LOOP;
END
$$;
-- +goose StatementEnd

DROP FUNCTION IF EXISTS public.enter_tenant_context(text);
DROP FUNCTION IF EXISTS public.entered_tenant();

-- current_tenant_id as migration 1 defines it.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT COALESCE(
        (SELECT tr.tenant_id FROM vital.tenant_roles tr WHERE tr.role_name = SESSION_USER),
        CASE WHEN pg_catalog.pg_has_role(SESSION_USER, 'vital_operator', 'MEMBER')
             THEN NULLIF(pg_catalog.current_setting('vital.tenant_id', true), '')::uuid
        END)
$$;
-- +goose StatementEnd

DROP TABLE IF EXISTS vital.context_key;
DROP TABLE IF EXISTS vital.pooled_roles;
