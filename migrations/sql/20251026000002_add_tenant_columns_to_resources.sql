-- Migration 2: tenant and sharing columns on the resource tables.
--
-- agents (from the baseline, or the application's own) gains tenant_id,
-- is_shared, sharing_mode, shared_with and resource_type; tools, prompts and
-- workflows are created with the same columns where they do not exist yet.
-- Tables the migration creates are recorded in vital.migration_objects and
-- dropped by Down; tables that existed before only lose the added columns.
-- The resource tables are handed to vital_owner (a previous owner is
-- recorded and restored by Down).
--
-- tenant_id defaults to current_tenant_id(), so a tenant's INSERT may omit
-- it. Pre-existing rows keep tenant_id NULL until migration 4 assigns them.
-- sharing_mode is private, tenants (shared_with lists the tenants) or global;
-- is_shared must agree with it.
--
-- Triggers enforce tenants.limits.max_agents on a tenant's own
-- (non-platform) agents that are not soft-deleted.

-- +goose Up

-- +goose StatementBegin
DO $$
BEGIN
    IF pg_catalog.to_regclass('public.tools') IS NULL THEN
        CREATE TABLE public.tools (
            id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
            name         text        NOT NULL,
            display_name text,
            description  text,
            tool_type    text,
            config       jsonb       NOT NULL DEFAULT '{}'::jsonb,
            created_by   uuid,
            created_at   timestamptz NOT NULL DEFAULT now(),
            updated_at   timestamptz NOT NULL DEFAULT now(),
            deleted_at   timestamptz
        );
        INSERT INTO vital.migration_objects (kind, name) VALUES ('table', 'public.tools') ON CONFLICT DO NOTHING;
    END IF;
    IF pg_catalog.to_regclass('public.prompts') IS NULL THEN
        CREATE TABLE public.prompts (
            id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
            name         text        NOT NULL,
            display_name text,
            description  text,
            content      text        NOT NULL DEFAULT '',
            variables    text[]      NOT NULL DEFAULT '{}',
            created_by   uuid,
            created_at   timestamptz NOT NULL DEFAULT now(),
            updated_at   timestamptz NOT NULL DEFAULT now(),
            deleted_at   timestamptz
        );
        INSERT INTO vital.migration_objects (kind, name) VALUES ('table', 'public.prompts') ON CONFLICT DO NOTHING;
    END IF;
    IF pg_catalog.to_regclass('public.workflows') IS NULL THEN
        CREATE TABLE public.workflows (
            id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
            name         text        NOT NULL,
            display_name text,
            description  text,
            definition   jsonb       NOT NULL DEFAULT '{}'::jsonb,
            created_by   uuid,
            created_at   timestamptz NOT NULL DEFAULT now(),
            updated_at   timestamptz NOT NULL DEFAULT now(),
            deleted_at   timestamptz
        );
        INSERT INTO vital.migration_objects (kind, name) VALUES ('table', 'public.workflows') ON CONFLICT DO NOTHING;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
DO $$
DECLARE
    t     text;
    rel   regclass;
    owner text;
BEGIN
    FOREACH t IN ARRAY ARRAY['agents', 'tools', 'prompts', 'workflows'] LOOP
        rel := pg_catalog.to_regclass('public.' || t);
        IF rel IS NULL THEN
            RAISE EXCEPTION 'table public.% is missing: apply the baseline migration first', t;
        END IF;
        SELECT pg_catalog.pg_get_userbyid(c.relowner) INTO owner FROM pg_catalog.pg_class c WHERE c.oid = rel;
        IF owner <> 'vital_owner' THEN
            INSERT INTO vital.migration_objects (kind, name, detail) VALUES ('owner', 'public.' || t, owner)
                ON CONFLICT DO NOTHING;
            EXECUTE pg_catalog.format('ALTER TABLE public.%I OWNER TO vital_owner', t);
        END IF;
        EXECUTE pg_catalog.format('REVOKE ALL ON public.%I FROM PUBLIC', t);

        EXECUTE pg_catalog.format(
            'ALTER TABLE public.%1$I
                ADD COLUMN IF NOT EXISTS tenant_id uuid REFERENCES public.tenants (id) ON DELETE CASCADE,
                ADD COLUMN IF NOT EXISTS is_shared boolean NOT NULL DEFAULT false,
                ADD COLUMN IF NOT EXISTS sharing_mode text NOT NULL DEFAULT ''private''
                    CONSTRAINT %1$s_sharing_mode_check CHECK (sharing_mode IN (''private'', ''tenants'', ''global'')),
                ADD COLUMN IF NOT EXISTS shared_with uuid[] NOT NULL DEFAULT ''{}'',
                ADD COLUMN IF NOT EXISTS resource_type text NOT NULL DEFAULT ''custom''
                    CONSTRAINT %1$s_resource_type_check CHECK (resource_type IN (''platform'', ''custom'', ''template''))',
            t);
        EXECUTE pg_catalog.format(
            'ALTER TABLE public.%I ALTER COLUMN tenant_id SET DEFAULT public.current_tenant_id()', t);
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                        WHERE conrelid = rel AND conname = t || '_sharing_consistent') THEN
            EXECUTE pg_catalog.format(
                'ALTER TABLE public.%1$I ADD CONSTRAINT %1$s_sharing_consistent
                    CHECK (is_shared = (sharing_mode <> ''private''))', t);
        END IF;

        EXECUTE pg_catalog.format('CREATE INDEX IF NOT EXISTS %1$s_tenant_id_idx ON public.%1$I (tenant_id)', t);
        EXECUTE pg_catalog.format(
            'CREATE INDEX IF NOT EXISTS %1$s_shared_idx ON public.%1$I (sharing_mode) WHERE is_shared', t);
        EXECUTE pg_catalog.format(
            'CREATE INDEX IF NOT EXISTS %1$s_shared_with_idx ON public.%1$I USING gin (shared_with)
                WHERE sharing_mode = ''tenants''', t);

        IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                    WHERE attrelid = rel AND attname = 'updated_at' AND NOT attisdropped) THEN
            EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %1$s_set_updated_at ON public.%1$I', t);
            EXECUTE pg_catalog.format(
                'CREATE TRIGGER %1$s_set_updated_at BEFORE UPDATE ON public.%1$I
                    FOR EACH ROW EXECUTE FUNCTION vital.set_updated_at()', t);
        END IF;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- Custom agent quota, in two BEFORE triggers that fire in name order.
--
-- agents_agent_limit_1_lock (SECURITY DEFINER) makes concurrent inserts of
-- one tenant take turns on that tenant's row in vital.agent_quota, so the
-- limit holds under concurrency. It locks only for a caller that may write
-- the tenant's rows (the tenant itself, the platform admin role, operators
-- and superusers), and the row lives where no tenant can reach it: unlike a
-- database-wide advisory lock key, no tenant can hold another's quota.
--
-- agents_agent_limit_2_check (SECURITY INVOKER on purpose) counts with the
-- caller's own visibility, which always covers the inserted row's tenant:
-- its own tenant for a tenant role, everything for the platform admin role
-- and superusers (RLS refuses any other row afterwards anyway).
CREATE TABLE IF NOT EXISTS vital.agent_quota (
    tenant_id uuid PRIMARY KEY REFERENCES public.tenants (id) ON DELETE CASCADE
);
ALTER TABLE vital.agent_quota OWNER TO vital_owner;
REVOKE ALL ON vital.agent_quota FROM PUBLIC;

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION vital.lock_agent_quota() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.tenant_id IS NULL OR NEW.deleted_at IS NOT NULL OR NEW.resource_type = 'platform' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.tenant_id IS NOT DISTINCT FROM NEW.tenant_id
       AND OLD.deleted_at IS NULL AND OLD.resource_type <> 'platform' THEN
        RETURN NEW; -- already counted
    END IF;
    IF NEW.tenant_id IS DISTINCT FROM public.current_tenant_id() AND NOT public.is_platform_admin()
       AND NOT pg_catalog.pg_has_role(SESSION_USER, 'vital_operator', 'MEMBER') THEN
        RETURN NEW; -- row-level security refuses this row
    END IF;
    IF NOT EXISTS (SELECT 1 FROM public.tenants t WHERE t.id = NEW.tenant_id AND t.limits ? 'max_agents') THEN
        RETURN NEW;
    END IF;
    INSERT INTO vital.agent_quota (tenant_id) VALUES (NEW.tenant_id) ON CONFLICT DO NOTHING;
    PERFORM 1 FROM vital.agent_quota q WHERE q.tenant_id = NEW.tenant_id FOR UPDATE;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION vital.lock_agent_quota() OWNER TO vital_owner;
REVOKE ALL ON FUNCTION vital.lock_agent_quota() FROM PUBLIC;

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION vital.enforce_agent_limit() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_slug  text;
    v_limit bigint;
    v_count bigint;
BEGIN
    IF NEW.tenant_id IS NULL OR NEW.deleted_at IS NOT NULL OR NEW.resource_type = 'platform' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.tenant_id IS NOT DISTINCT FROM NEW.tenant_id
       AND OLD.deleted_at IS NULL AND OLD.resource_type <> 'platform' THEN
        RETURN NEW; -- already counted
    END IF;
    SELECT t.slug, (t.limits ->> 'max_agents')::bigint INTO v_slug, v_limit
      FROM public.tenants t WHERE t.id = NEW.tenant_id;
    IF v_limit IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT count(*) INTO v_count FROM public.agents a
     WHERE a.tenant_id = NEW.tenant_id AND a.deleted_at IS NULL AND a.resource_type <> 'platform'
       AND a.id IS DISTINCT FROM NEW.id;
    IF v_count >= v_limit THEN
        RAISE EXCEPTION 'tenant "%" has reached its limit of % custom agents', v_slug, v_limit
            USING ERRCODE = '23514',
                  HINT = 'Soft-delete an agent (set deleted_at) or raise limits.max_agents of the tenant.';
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION vital.enforce_agent_limit() OWNER TO vital_owner;
REVOKE ALL ON FUNCTION vital.enforce_agent_limit() FROM PUBLIC;

DROP TRIGGER IF EXISTS agents_agent_limit_1_lock ON public.agents;
CREATE TRIGGER agents_agent_limit_1_lock
    BEFORE INSERT OR UPDATE OF tenant_id, deleted_at, resource_type ON public.agents
    FOR EACH ROW EXECUTE FUNCTION vital.lock_agent_quota();
DROP TRIGGER IF EXISTS agents_agent_limit_2_check ON public.agents;
CREATE TRIGGER agents_agent_limit_2_check
    BEFORE INSERT OR UPDATE OF tenant_id, deleted_at, resource_type ON public.agents
    FOR EACH ROW EXECUTE FUNCTION vital.enforce_agent_limit();

-- +goose Down

DROP TRIGGER IF EXISTS agents_agent_limit_2_check ON public.agents;
DROP TRIGGER IF EXISTS agents_agent_limit_1_lock ON public.agents;
DROP FUNCTION IF EXISTS vital.enforce_agent_limit();
DROP FUNCTION IF EXISTS vital.lock_agent_quota();
DROP TABLE IF EXISTS vital.agent_quota;

-- +goose StatementBegin
DO $$
DECLARE
    t     text;
    owner text;
BEGIN
    FOREACH t IN ARRAY ARRAY['workflows', 'prompts', 'tools', 'agents'] LOOP
        IF pg_catalog.to_regclass('public.' || t) IS NULL THEN
            CONTINUE;
        END IF;
        IF EXISTS (SELECT 1 FROM vital.migration_objects WHERE kind = 'table' AND name = 'public.' || t) THEN
            EXECUTE pg_catalog.format('DROP TABLE public.%I', t);
            DELETE FROM vital.migration_objects WHERE kind IN ('table', 'owner') AND name = 'public.' || t;
            CONTINUE;
        END IF;
        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %1$s_set_updated_at ON public.%1$I', t);
        EXECUTE pg_catalog.format(
            'ALTER TABLE public.%I
                DROP COLUMN IF EXISTS tenant_id,
                DROP COLUMN IF EXISTS is_shared,
                DROP COLUMN IF EXISTS sharing_mode,
                DROP COLUMN IF EXISTS shared_with,
                DROP COLUMN IF EXISTS resource_type', t);
        SELECT detail INTO owner FROM vital.migration_objects WHERE kind = 'owner' AND name = 'public.' || t;
        IF owner IS NOT NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = owner) THEN
            EXECUTE pg_catalog.format('ALTER TABLE public.%I OWNER TO %I', t, owner);
        END IF;
        DELETE FROM vital.migration_objects WHERE kind = 'owner' AND name = 'public.' || t;
    END LOOP;
END
$$;
-- +goose StatementEnd
