-- Migration 1: tenants, user associations, and the functions that say who
-- the current tenant is.
--
-- Tenant identity comes from authentication, not from a setting a client
-- could change: current_tenant_id() maps session_user through
-- vital.tenant_roles, a table no tenant role can read or write. session_user
-- cannot be changed by SET, SET ROLE, RESET, DISCARD or a function's SET
-- clause; only a superuser session could, and tenant traffic never runs as
-- one. Members of vital_operator (trusted humans, and superusers) may set a
-- context by hand with set_tenant_context(uuid) so the seed's manual checks
-- still work in psql.
--
-- tenants, user_tenants and user_roles have RLS enabled and forced from the
-- start: a tenant sees its own row and the platform tenant in tenants, and
-- only its own rows elsewhere; the platform admin role sees everything.
--
-- SECURITY DEFINER functions pin search_path to pg_catalog, pg_temp and
-- schema-qualify everything. Functions that take a tenant or user id are
-- SECURITY INVOKER: RLS applies, so they only narrow what the caller sees.

-- +goose Up

CREATE TABLE IF NOT EXISTS public.tenants (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name              text        NOT NULL,
    slug              text        NOT NULL,
    type              text        NOT NULL,
    parent_tenant_id  uuid        REFERENCES public.tenants (id) ON DELETE SET NULL,
    subscription_tier text        NOT NULL DEFAULT 'starter',
    status            text        NOT NULL DEFAULT 'active',
    domain            text,
    settings          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- Quotas, e.g. {"max_agents": 50}: max_agents bounds the tenant's own
    -- (non-platform) agents and is enforced by a trigger on agents.
    limits            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenants_slug_key UNIQUE (slug),
    CONSTRAINT tenants_domain_key UNIQUE (domain),
    CONSTRAINT tenants_slug_check CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    CONSTRAINT tenants_type_check CHECK (type IN ('client', 'solution', 'industry', 'platform')),
    CONSTRAINT tenants_subscription_tier_check
        CHECK (subscription_tier IN ('free', 'starter', 'professional', 'enterprise')),
    CONSTRAINT tenants_status_check CHECK (status IN ('active', 'trial', 'suspended', 'cancelled')),
    CONSTRAINT tenants_limits_check CHECK (jsonb_typeof(limits) = 'object')
);
CREATE INDEX IF NOT EXISTS tenants_type_idx ON public.tenants (type);
ALTER TABLE public.tenants OWNER TO vital_owner;

-- The only source of tenant identity: login role -> tenant. Written by
-- `vitalproxy tenant` (package auth/tenantroles); no tenant role may read it.
CREATE TABLE IF NOT EXISTS vital.tenant_roles (
    role_name  name        PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    capability text        NOT NULL CHECK (capability IN ('rw', 'ro', 'admin')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS tenant_roles_tenant_id_idx ON vital.tenant_roles (tenant_id);
ALTER TABLE vital.tenant_roles OWNER TO vital_owner;
REVOKE ALL ON vital.tenant_roles FROM PUBLIC;

-- The admin capability sees every tenant's rows: only a platform tenant's
-- role may have it.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION vital.check_tenant_role() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.capability = 'admin' AND NOT EXISTS (
        SELECT 1 FROM public.tenants t WHERE t.id = NEW.tenant_id AND t.type = 'platform') THEN
        RAISE EXCEPTION 'role %: the admin capability is only for roles of a platform tenant', NEW.role_name
            USING ERRCODE = '23514';
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION vital.check_tenant_role() OWNER TO vital_owner;
REVOKE ALL ON FUNCTION vital.check_tenant_role() FROM PUBLIC;
DROP TRIGGER IF EXISTS tenant_roles_check ON vital.tenant_roles;
CREATE TRIGGER tenant_roles_check BEFORE INSERT OR UPDATE ON vital.tenant_roles
    FOR EACH ROW EXECUTE FUNCTION vital.check_tenant_role();

-- updated_at maintenance for every table that has the column.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION vital.set_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION vital.set_updated_at() OWNER TO vital_owner;
REVOKE ALL ON FUNCTION vital.set_updated_at() FROM PUBLIC;
DROP TRIGGER IF EXISTS tenants_set_updated_at ON public.tenants;
CREATE TRIGGER tenants_set_updated_at BEFORE UPDATE ON public.tenants
    FOR EACH ROW EXECUTE FUNCTION vital.set_updated_at();

-- current_tenant_id: the tenant of session_user; for vital_operator members
-- without a mapping, the context set by set_tenant_context (NULL if none).
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
ALTER FUNCTION public.current_tenant_id() OWNER TO vital_owner;

-- is_platform_admin(): session_user is a platform tenant's admin role.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.is_platform_admin() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM vital.tenant_roles tr
                    WHERE tr.role_name = SESSION_USER AND tr.capability = 'admin')
$$;
-- +goose StatementEnd
ALTER FUNCTION public.is_platform_admin() OWNER TO vital_owner;

-- set_tenant_context: asserts the tenant of a tenant role (42501 on
-- mismatch), sets the manual context of an operator, refuses anyone else.
-- The value is published in vital.tenant_id for application code; policies
-- never trust it for tenant roles.
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
ALTER FUNCTION public.set_tenant_context(uuid) OWNER TO vital_owner;

-- get_super_admin_tenant_id: the platform tenant (every tenant may see it).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.get_super_admin_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.id FROM public.tenants t
     WHERE t.type = 'platform'
     ORDER BY (t.slug = 'vital-platform') DESC, t.created_at, t.id
     LIMIT 1
$$;
-- +goose StatementEnd
ALTER FUNCTION public.get_super_admin_tenant_id() OWNER TO vital_owner;

CREATE TABLE IF NOT EXISTS public.user_tenants (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid        NOT NULL,
    tenant_id  uuid        NOT NULL DEFAULT public.current_tenant_id()
                           REFERENCES public.tenants (id) ON DELETE CASCADE,
    role       text        NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    status     text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'invited', 'suspended')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_tenants_user_tenant_key UNIQUE (user_id, tenant_id)
);
CREATE INDEX IF NOT EXISTS user_tenants_tenant_id_idx ON public.user_tenants (tenant_id);
ALTER TABLE public.user_tenants OWNER TO vital_owner;
DROP TRIGGER IF EXISTS user_tenants_set_updated_at ON public.user_tenants;
CREATE TRIGGER user_tenants_set_updated_at BEFORE UPDATE ON public.user_tenants
    FOR EACH ROW EXECUTE FUNCTION vital.set_updated_at();

CREATE TABLE IF NOT EXISTS public.user_roles (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid        NOT NULL,
    tenant_id  uuid        NOT NULL DEFAULT public.current_tenant_id()
                           REFERENCES public.tenants (id) ON DELETE CASCADE,
    role       text        NOT NULL
        CHECK (role IN ('super_admin', 'platform_admin', 'tenant_admin', 'editor', 'viewer')),
    granted_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT user_roles_user_tenant_role_key UNIQUE (user_id, tenant_id, role)
);
CREATE INDEX IF NOT EXISTS user_roles_tenant_id_idx ON public.user_roles (tenant_id);
ALTER TABLE public.user_roles OWNER TO vital_owner;

-- Users live in auth.users (Supabase's, or the baseline's).
-- +goose StatementBegin
DO $$
BEGIN
    IF pg_catalog.to_regclass('auth.users') IS NULL THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                    WHERE conname = 'user_tenants_user_id_fkey' AND conrelid = 'public.user_tenants'::regclass) THEN
        ALTER TABLE public.user_tenants ADD CONSTRAINT user_tenants_user_id_fkey
            FOREIGN KEY (user_id) REFERENCES auth.users (id) ON DELETE CASCADE;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                    WHERE conname = 'user_roles_user_id_fkey' AND conrelid = 'public.user_roles'::regclass) THEN
        ALTER TABLE public.user_roles ADD CONSTRAINT user_roles_user_id_fkey
            FOREIGN KEY (user_id) REFERENCES auth.users (id) ON DELETE CASCADE;
    END IF;
END
$$;
-- +goose StatementEnd

-- is_platform_admin(user): the user holds a platform admin role. INVOKER:
-- answers only from user_roles rows the caller may see.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.is_platform_admin(p_user_id uuid) RETURNS boolean
    LANGUAGE sql STABLE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1 FROM public.user_roles ur
         WHERE ur.user_id = p_user_id
           AND ur.role IN ('platform_admin', 'super_admin')
           AND ur.revoked_at IS NULL
           AND ur.tenant_id = public.get_super_admin_tenant_id())
$$;
-- +goose StatementEnd
ALTER FUNCTION public.is_platform_admin(uuid) OWNER TO vital_owner;

-- has_tenant_access(user, tenant): an active membership the caller may see.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.has_tenant_access(p_user_id uuid, p_tenant_id uuid) RETURNS boolean
    LANGUAGE sql STABLE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1 FROM public.user_tenants ut
         WHERE ut.user_id = p_user_id AND ut.tenant_id = p_tenant_id AND ut.status = 'active')
$$;
-- +goose StatementEnd
ALTER FUNCTION public.has_tenant_access(uuid, uuid) OWNER TO vital_owner;

-- Row-Level Security, enabled and forced (the owner is filtered too).
ALTER TABLE public.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.tenants FORCE ROW LEVEL SECURITY;
ALTER TABLE public.user_tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.user_tenants FORCE ROW LEVEL SECURITY;
ALTER TABLE public.user_roles ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.user_roles FORCE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS tenants_select_isolation ON public.tenants;
CREATE POLICY tenants_select_isolation ON public.tenants FOR SELECT
    USING (id = (SELECT public.current_tenant_id()) OR type = 'platform' OR (SELECT public.is_platform_admin()));
DROP POLICY IF EXISTS tenants_insert_isolation ON public.tenants;
CREATE POLICY tenants_insert_isolation ON public.tenants FOR INSERT
    WITH CHECK ((SELECT public.is_platform_admin()));
DROP POLICY IF EXISTS tenants_update_isolation ON public.tenants;
CREATE POLICY tenants_update_isolation ON public.tenants FOR UPDATE
    USING ((SELECT public.is_platform_admin())) WITH CHECK ((SELECT public.is_platform_admin()));
DROP POLICY IF EXISTS tenants_delete_isolation ON public.tenants;
CREATE POLICY tenants_delete_isolation ON public.tenants FOR DELETE
    USING ((SELECT public.is_platform_admin()));

DROP POLICY IF EXISTS user_tenants_select_isolation ON public.user_tenants;
CREATE POLICY user_tenants_select_isolation ON public.user_tenants FOR SELECT
    USING (tenant_id = (SELECT public.current_tenant_id()) OR (SELECT public.is_platform_admin()));
DROP POLICY IF EXISTS user_tenants_insert_isolation ON public.user_tenants;
CREATE POLICY user_tenants_insert_isolation ON public.user_tenants FOR INSERT
    WITH CHECK (tenant_id = (SELECT public.current_tenant_id()) OR (SELECT public.is_platform_admin()));
DROP POLICY IF EXISTS user_tenants_update_isolation ON public.user_tenants;
CREATE POLICY user_tenants_update_isolation ON public.user_tenants FOR UPDATE
    USING (tenant_id = (SELECT public.current_tenant_id()) OR (SELECT public.is_platform_admin()))
    WITH CHECK (tenant_id = (SELECT public.current_tenant_id()) OR (SELECT public.is_platform_admin()));
DROP POLICY IF EXISTS user_tenants_delete_isolation ON public.user_tenants;
CREATE POLICY user_tenants_delete_isolation ON public.user_tenants FOR DELETE
    USING (tenant_id = (SELECT public.current_tenant_id()) OR (SELECT public.is_platform_admin()));

-- Only the platform admin role may hand out platform-wide roles.
DROP POLICY IF EXISTS user_roles_select_isolation ON public.user_roles;
CREATE POLICY user_roles_select_isolation ON public.user_roles FOR SELECT
    USING (tenant_id = (SELECT public.current_tenant_id()) OR (SELECT public.is_platform_admin()));
DROP POLICY IF EXISTS user_roles_insert_isolation ON public.user_roles;
CREATE POLICY user_roles_insert_isolation ON public.user_roles FOR INSERT
    WITH CHECK ((SELECT public.is_platform_admin())
                OR (tenant_id = (SELECT public.current_tenant_id()) AND role NOT IN ('platform_admin', 'super_admin')));
DROP POLICY IF EXISTS user_roles_update_isolation ON public.user_roles;
CREATE POLICY user_roles_update_isolation ON public.user_roles FOR UPDATE
    USING (tenant_id = (SELECT public.current_tenant_id()) OR (SELECT public.is_platform_admin()))
    WITH CHECK ((SELECT public.is_platform_admin())
                OR (tenant_id = (SELECT public.current_tenant_id()) AND role NOT IN ('platform_admin', 'super_admin')));
DROP POLICY IF EXISTS user_roles_delete_isolation ON public.user_roles;
CREATE POLICY user_roles_delete_isolation ON public.user_roles FOR DELETE
    USING (tenant_id = (SELECT public.current_tenant_id()) OR (SELECT public.is_platform_admin()));

-- Privileges: SELECT for readers; INSERT and column-level UPDATE for
-- writers (never table-level UPDATE, DELETE or TRUNCATE).
REVOKE ALL ON public.tenants, public.user_tenants, public.user_roles FROM PUBLIC;
GRANT SELECT ON public.tenants, public.user_tenants, public.user_roles TO vital_tenant;
GRANT INSERT ON public.user_tenants, public.user_roles TO vital_tenant_writer;
GRANT UPDATE (role, status) ON public.user_tenants TO vital_tenant_writer;
GRANT UPDATE (revoked_at) ON public.user_roles TO vital_tenant_writer;

REVOKE ALL ON FUNCTION public.current_tenant_id() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.is_platform_admin() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.set_tenant_context(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.get_super_admin_tenant_id() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.is_platform_admin(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.has_tenant_access(uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.current_tenant_id() TO vital_tenant;
GRANT EXECUTE ON FUNCTION public.is_platform_admin() TO vital_tenant;
GRANT EXECUTE ON FUNCTION public.set_tenant_context(uuid) TO vital_tenant;
GRANT EXECUTE ON FUNCTION public.get_super_admin_tenant_id() TO vital_tenant;
GRANT EXECUTE ON FUNCTION public.is_platform_admin(uuid) TO vital_tenant;
GRANT EXECUTE ON FUNCTION public.has_tenant_access(uuid, uuid) TO vital_tenant;

-- +goose Down

DROP FUNCTION IF EXISTS public.has_tenant_access(uuid, uuid);
DROP FUNCTION IF EXISTS public.is_platform_admin(uuid);
DROP TABLE IF EXISTS public.user_roles;
DROP TABLE IF EXISTS public.user_tenants;
DROP TABLE IF EXISTS vital.tenant_roles;
DROP TABLE IF EXISTS public.tenants;
DROP FUNCTION IF EXISTS public.get_super_admin_tenant_id();
DROP FUNCTION IF EXISTS public.set_tenant_context(uuid);
DROP FUNCTION IF EXISTS public.is_platform_admin();
DROP FUNCTION IF EXISTS public.current_tenant_id();
DROP FUNCTION IF EXISTS vital.set_updated_at();
DROP FUNCTION IF EXISTS vital.check_tenant_role();
