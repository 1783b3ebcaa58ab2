-- Migration 3: Row-Level Security with sharing on agents, tools, prompts and
-- workflows; the sharing audit; the shared-resources materialized view.
--
-- Isolation rules (the tenant is always (SELECT current_tenant_id()),
-- computed once per query from session_user):
--   * read:  own rows; rows shared globally; rows shared with the tenant
--            (sharing_mode 'tenants' and the tenant in shared_with); the
--            platform admin role reads everything.
--   * write: only rows of the tenant itself (or any row for the platform
--            admin role); the new row must belong to the tenant too, so a
--            tenant can neither insert for another tenant, move a row away,
--            nor touch (or share) another tenant's row. Shared platform rows
--            are readable, not writable. Only a platform tenant may publish
--            globally or mark rows as platform resources.
--   * RLS is enabled and FORCED, and the tables belong to vital_owner, which
--     does not bypass RLS.
--   * Privileges: vital_tenant SELECT; vital_tenant_writer INSERT and
--     column-level UPDATE of everything but id, tenant_id, created_at,
--     created_by and updated_at. No table-level UPDATE, DELETE or TRUNCATE:
--     they would take locks that stall every tenant and TRUNCATE ignores RLS.
--     Deleting is a soft delete (deleted_at). The DELETE policies exist so
--     that a later DELETE grant could not open the tables.
--
-- resource_sharing_audit is written only by a trigger running as
-- vital_owner (tenants cannot forge rows) and shows a tenant only the
-- history of its own resources.
--
-- A materialized view bypasses RLS, so mv_platform_shared_resources holds
-- only globally shared rows, and a trigger refreshes it whenever a globally
-- shared row stops being one, so a row made private never lingers in it.
-- get_accessible_agents(uuid) is SECURITY INVOKER: RLS still applies, the
-- argument can only narrow what the caller sees.

-- +goose Up

CREATE TABLE IF NOT EXISTS public.resource_sharing_audit (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        uuid        NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    resource_table   text        NOT NULL,
    resource_id      uuid        NOT NULL,
    action           text        NOT NULL CHECK (action IN ('shared', 'unshared', 'changed')),
    old_sharing_mode text,
    new_sharing_mode text,
    old_shared_with  uuid[],
    new_shared_with  uuid[],
    changed_by       name        NOT NULL DEFAULT SESSION_USER,
    changed_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS resource_sharing_audit_tenant_idx
    ON public.resource_sharing_audit (tenant_id, changed_at);
ALTER TABLE public.resource_sharing_audit OWNER TO vital_owner;
ALTER TABLE public.resource_sharing_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.resource_sharing_audit FORCE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS resource_sharing_audit_select_isolation ON public.resource_sharing_audit;
CREATE POLICY resource_sharing_audit_select_isolation ON public.resource_sharing_audit FOR SELECT
    USING (tenant_id = (SELECT public.current_tenant_id()) OR (SELECT public.is_platform_admin()));
-- Rows come only from vital.track_sharing(), which runs as vital_owner.
DROP POLICY IF EXISTS resource_sharing_audit_insert_isolation ON public.resource_sharing_audit;
CREATE POLICY resource_sharing_audit_insert_isolation ON public.resource_sharing_audit FOR INSERT
    WITH CHECK (CURRENT_USER = 'vital_owner'::name);
DROP POLICY IF EXISTS resource_sharing_audit_update_isolation ON public.resource_sharing_audit;
CREATE POLICY resource_sharing_audit_update_isolation ON public.resource_sharing_audit FOR UPDATE
    USING (false) WITH CHECK (false);
DROP POLICY IF EXISTS resource_sharing_audit_delete_isolation ON public.resource_sharing_audit;
CREATE POLICY resource_sharing_audit_delete_isolation ON public.resource_sharing_audit FOR DELETE
    USING (false);
REVOKE ALL ON public.resource_sharing_audit FROM PUBLIC;
GRANT SELECT ON public.resource_sharing_audit TO vital_tenant;

-- Only globally shared, live rows: safe to show every tenant.
CREATE MATERIALIZED VIEW IF NOT EXISTS public.mv_platform_shared_resources AS
    SELECT 'agent'::text AS resource_kind, a.id, a.tenant_id, a.name, a.display_name, a.description,
           a.resource_type, a.sharing_mode, a.updated_at
      FROM public.agents a
     WHERE a.is_shared AND a.sharing_mode = 'global' AND a.deleted_at IS NULL
    UNION ALL
    SELECT 'tool'::text, t.id, t.tenant_id, t.name, t.display_name, t.description,
           t.resource_type, t.sharing_mode, t.updated_at
      FROM public.tools t
     WHERE t.is_shared AND t.sharing_mode = 'global' AND t.deleted_at IS NULL
    UNION ALL
    SELECT 'prompt'::text, p.id, p.tenant_id, p.name, p.display_name, p.description,
           p.resource_type, p.sharing_mode, p.updated_at
      FROM public.prompts p
     WHERE p.is_shared AND p.sharing_mode = 'global' AND p.deleted_at IS NULL
    UNION ALL
    SELECT 'workflow'::text, w.id, w.tenant_id, w.name, w.display_name, w.description,
           w.resource_type, w.sharing_mode, w.updated_at
      FROM public.workflows w
     WHERE w.is_shared AND w.sharing_mode = 'global' AND w.deleted_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS mv_platform_shared_resources_key
    ON public.mv_platform_shared_resources (resource_kind, id);
ALTER MATERIALIZED VIEW public.mv_platform_shared_resources OWNER TO vital_owner;
REVOKE ALL ON public.mv_platform_shared_resources FROM PUBLIC;
GRANT SELECT ON public.mv_platform_shared_resources TO vital_tenant;

-- Sharing audit and view refresh, once per statement (transition tables).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION vital.track_sharing() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO public.resource_sharing_audit
               (tenant_id, resource_table, resource_id, action, new_sharing_mode, new_shared_with)
        SELECT n.tenant_id, TG_TABLE_NAME::text, n.id, 'shared', n.sharing_mode, n.shared_with
          FROM new_rows n
         WHERE n.tenant_id IS NOT NULL AND n.sharing_mode <> 'private';
        RETURN NULL;
    END IF;

    INSERT INTO public.resource_sharing_audit
           (tenant_id, resource_table, resource_id, action,
            old_sharing_mode, new_sharing_mode, old_shared_with, new_shared_with)
    SELECT n.tenant_id, TG_TABLE_NAME::text, n.id,
           CASE WHEN n.sharing_mode = 'private' THEN 'unshared'
                WHEN o.sharing_mode = 'private' OR o.tenant_id IS NULL THEN 'shared'
                ELSE 'changed' END,
           o.sharing_mode, n.sharing_mode, o.shared_with, n.shared_with
      FROM old_rows o JOIN new_rows n ON n.id = o.id
     WHERE n.tenant_id IS NOT NULL
       AND (o.sharing_mode IS DISTINCT FROM n.sharing_mode
            OR o.shared_with IS DISTINCT FROM n.shared_with
            OR (o.tenant_id IS DISTINCT FROM n.tenant_id AND n.sharing_mode <> 'private'));

    IF EXISTS (SELECT 1 FROM old_rows o JOIN new_rows n ON n.id = o.id
                WHERE o.is_shared AND o.sharing_mode = 'global'
                  AND (NOT n.is_shared OR n.sharing_mode <> 'global'
                       OR n.tenant_id IS DISTINCT FROM o.tenant_id
                       OR (n.deleted_at IS NOT NULL AND o.deleted_at IS NULL))) THEN
        REFRESH MATERIALIZED VIEW public.mv_platform_shared_resources;
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd
ALTER FUNCTION vital.track_sharing() OWNER TO vital_owner;
REVOKE ALL ON FUNCTION vital.track_sharing() FROM PUBLIC;

-- +goose StatementBegin
DO $$
DECLARE
    t         text;
    rel       regclass;
    cur       constant text := '(SELECT public.current_tenant_id())';
    adm       constant text := '(SELECT public.is_platform_admin())';
    readable  text;
    own       text;
    writable  text;
    cols      text;
    seq       text;
BEGIN
    readable := pg_catalog.format(
        'tenant_id = %1$s
         OR (is_shared AND sharing_mode = ''global'')
         OR (is_shared AND sharing_mode = ''tenants'' AND %1$s = ANY (shared_with))
         OR %2$s', cur, adm);
    own := pg_catalog.format('tenant_id = %1$s OR %2$s', cur, adm);
    writable := pg_catalog.format(
        '%2$s
         OR (tenant_id = %1$s
             AND ((sharing_mode <> ''global'' AND resource_type <> ''platform'')
                  OR (SELECT t.type FROM public.tenants t WHERE t.id = %1$s) = ''platform''))', cur, adm);

    FOREACH t IN ARRAY ARRAY['agents', 'tools', 'prompts', 'workflows'] LOOP
        rel := pg_catalog.to_regclass('public.' || t);
        IF NOT (SELECT c.relrowsecurity FROM pg_catalog.pg_class c WHERE c.oid = rel) THEN
            INSERT INTO vital.migration_objects (kind, name) VALUES ('rls', 'public.' || t) ON CONFLICT DO NOTHING;
        END IF;
        IF NOT (SELECT c.relforcerowsecurity FROM pg_catalog.pg_class c WHERE c.oid = rel) THEN
            INSERT INTO vital.migration_objects (kind, name) VALUES ('force_rls', 'public.' || t) ON CONFLICT DO NOTHING;
        END IF;
        EXECUTE pg_catalog.format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format('ALTER TABLE public.%I FORCE ROW LEVEL SECURITY', t);

        EXECUTE pg_catalog.format('DROP POLICY IF EXISTS %1$I ON public.%2$I', t || '_select_with_sharing', t);
        EXECUTE pg_catalog.format('CREATE POLICY %1$I ON public.%2$I FOR SELECT USING (%3$s)',
                                  t || '_select_with_sharing', t, readable);
        EXECUTE pg_catalog.format('DROP POLICY IF EXISTS %1$I ON public.%2$I', t || '_insert_with_sharing', t);
        EXECUTE pg_catalog.format('CREATE POLICY %1$I ON public.%2$I FOR INSERT WITH CHECK (%3$s)',
                                  t || '_insert_with_sharing', t, writable);
        EXECUTE pg_catalog.format('DROP POLICY IF EXISTS %1$I ON public.%2$I', t || '_update_with_sharing', t);
        EXECUTE pg_catalog.format('CREATE POLICY %1$I ON public.%2$I FOR UPDATE USING (%3$s) WITH CHECK (%4$s)',
                                  t || '_update_with_sharing', t, own, writable);
        EXECUTE pg_catalog.format('DROP POLICY IF EXISTS %1$I ON public.%2$I', t || '_delete_with_sharing', t);
        EXECUTE pg_catalog.format('CREATE POLICY %1$I ON public.%2$I FOR DELETE USING (%3$s)',
                                  t || '_delete_with_sharing', t, own);

        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %1$I ON public.%2$I', t || '_sharing_audit_ins', t);
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER %1$I AFTER INSERT ON public.%2$I REFERENCING NEW TABLE AS new_rows
                FOR EACH STATEMENT EXECUTE FUNCTION vital.track_sharing()', t || '_sharing_audit_ins', t);
        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %1$I ON public.%2$I', t || '_sharing_audit_upd', t);
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER %1$I AFTER UPDATE ON public.%2$I REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
                FOR EACH STATEMENT EXECUTE FUNCTION vital.track_sharing()', t || '_sharing_audit_upd', t);

        EXECUTE pg_catalog.format('REVOKE ALL ON public.%I FROM PUBLIC', t);
        EXECUTE pg_catalog.format('GRANT SELECT ON public.%I TO vital_tenant', t);
        EXECUTE pg_catalog.format('GRANT INSERT ON public.%I TO vital_tenant_writer', t);
        SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
          FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attidentity = '' AND a.attgenerated = ''
           AND a.attname NOT IN ('id', 'tenant_id', 'created_at', 'created_by', 'updated_at');
        EXECUTE pg_catalog.format('GRANT UPDATE (%s) ON public.%I TO vital_tenant_writer', cols, t);
        -- serial columns of tables that existed before need their sequence
        FOR seq IN
            SELECT pg_catalog.pg_get_serial_sequence('public.' || pg_catalog.quote_ident(t), a.attname)
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
        LOOP
            IF seq IS NOT NULL THEN
                EXECUTE pg_catalog.format('GRANT USAGE ON SEQUENCE %s TO vital_tenant_writer', seq);
            END IF;
        END LOOP;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- The seed's get_accessible_agents: agents a tenant may use (its own, the
-- global ones, and those shared with it), within what RLS lets the caller
-- see.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.get_accessible_agents(p_tenant_id uuid) RETURNS SETOF public.agents
    LANGUAGE sql STABLE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.*
      FROM public.agents a
     WHERE a.deleted_at IS NULL
       AND (a.tenant_id = p_tenant_id
            OR (a.is_shared AND a.sharing_mode = 'global')
            OR (a.is_shared AND a.sharing_mode = 'tenants' AND p_tenant_id = ANY (a.shared_with)))
     ORDER BY a.name, a.id
$$;
-- +goose StatementEnd
ALTER FUNCTION public.get_accessible_agents(uuid) OWNER TO vital_owner;
REVOKE ALL ON FUNCTION public.get_accessible_agents(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.get_accessible_agents(uuid) TO vital_tenant;

-- +goose Down

DROP FUNCTION IF EXISTS public.get_accessible_agents(uuid);
DROP MATERIALIZED VIEW IF EXISTS public.mv_platform_shared_resources;

-- +goose StatementBegin
DO $$
DECLARE
    t   text;
    rel regclass;
    cmd text;
    seq text;
BEGIN
    FOREACH t IN ARRAY ARRAY['workflows', 'prompts', 'tools', 'agents'] LOOP
        rel := pg_catalog.to_regclass('public.' || t);
        IF rel IS NULL THEN
            CONTINUE;
        END IF;
        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %1$I ON public.%2$I', t || '_sharing_audit_ins', t);
        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %1$I ON public.%2$I', t || '_sharing_audit_upd', t);
        FOREACH cmd IN ARRAY ARRAY['select', 'insert', 'update', 'delete'] LOOP
            EXECUTE pg_catalog.format('DROP POLICY IF EXISTS %1$I ON public.%2$I', t || '_' || cmd || '_with_sharing', t);
        END LOOP;
        EXECUTE pg_catalog.format('REVOKE ALL ON public.%I FROM vital_tenant, vital_tenant_writer', t);
        FOR seq IN
            SELECT pg_catalog.pg_get_serial_sequence('public.' || pg_catalog.quote_ident(t), a.attname)
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
        LOOP
            IF seq IS NOT NULL THEN
                EXECUTE pg_catalog.format('REVOKE ALL ON SEQUENCE %s FROM vital_tenant_writer', seq);
            END IF;
        END LOOP;
        IF EXISTS (SELECT 1 FROM vital.migration_objects WHERE kind = 'force_rls' AND name = 'public.' || t) THEN
            EXECUTE pg_catalog.format('ALTER TABLE public.%I NO FORCE ROW LEVEL SECURITY', t);
        END IF;
        IF EXISTS (SELECT 1 FROM vital.migration_objects WHERE kind = 'rls' AND name = 'public.' || t) THEN
            EXECUTE pg_catalog.format('ALTER TABLE public.%I DISABLE ROW LEVEL SECURITY', t);
        END IF;
        DELETE FROM vital.migration_objects WHERE kind IN ('rls', 'force_rls') AND name = 'public.' || t;
    END LOOP;
END
$$;
-- +goose StatementEnd

DROP FUNCTION IF EXISTS vital.track_sharing();
DROP TABLE IF EXISTS public.resource_sharing_audit;
