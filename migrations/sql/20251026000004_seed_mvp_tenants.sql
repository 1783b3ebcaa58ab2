-- Migration 4: the MVP tenants and the platform's shared resources.
--
--   vital-platform          platform  enterprise    active
--   digital-health-startup  industry  professional  active  (max 50 custom agents)
--
-- Every live resource that existed before the migrations (tenant_id NULL,
-- deleted_at NULL) becomes a platform resource shared globally. Down gives
-- those rows back (tenant_id NULL, private) instead of deleting them, then
-- deletes the two tenants, which removes their own data.
--
-- grant_platform_admin and assign_user_to_dh_startup are SECURITY INVOKER:
-- RLS decides, so only the platform admin role (or an operator/superuser in
-- psql) may grant platform roles, and only the digital-health-startup
-- tenant or the platform admin may assign users to it.

-- +goose Up

INSERT INTO public.tenants (name, slug, type, subscription_tier, status, limits)
VALUES ('VITAL Platform', 'vital-platform', 'platform', 'enterprise', 'active', '{}'::jsonb),
       ('Digital Health Startup', 'digital-health-startup', 'industry', 'professional', 'active',
        '{"max_agents": 50}'::jsonb)
ON CONFLICT (slug) DO NOTHING;

-- +goose StatementBegin
DO $$
DECLARE
    t        text;
    platform uuid;
    live     text;
BEGIN
    SELECT id INTO platform FROM public.tenants WHERE slug = 'vital-platform';
    FOREACH t IN ARRAY ARRAY['agents', 'tools', 'prompts', 'workflows'] LOOP
        live := CASE WHEN EXISTS (
                         SELECT 1 FROM pg_catalog.pg_attribute
                          WHERE attrelid = pg_catalog.to_regclass('public.' || t)
                            AND attname = 'deleted_at' AND NOT attisdropped)
                     THEN ' AND deleted_at IS NULL' ELSE '' END;
        EXECUTE pg_catalog.format(
            'UPDATE public.%I
                SET tenant_id = $1, is_shared = true, sharing_mode = ''global'', resource_type = ''platform''
              WHERE tenant_id IS NULL%s', t, live)
        USING platform;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.grant_platform_admin(p_user_id uuid) RETURNS void
    LANGUAGE sql VOLATILE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO public.user_roles (user_id, tenant_id, role)
    VALUES (p_user_id, public.get_super_admin_tenant_id(), 'platform_admin')
    ON CONFLICT (user_id, tenant_id, role) DO NOTHING
$$;
-- +goose StatementEnd
ALTER FUNCTION public.grant_platform_admin(uuid) OWNER TO vital_owner;
REVOKE ALL ON FUNCTION public.grant_platform_admin(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.grant_platform_admin(uuid) TO vital_tenant_writer;

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.assign_user_to_dh_startup(p_user_id uuid, p_role varchar DEFAULT 'member')
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tenant uuid;
BEGIN
    SELECT t.id INTO v_tenant FROM public.tenants t WHERE t.slug = 'digital-health-startup';
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'tenant digital-health-startup does not exist or is not visible to role %', SESSION_USER
            USING ERRCODE = '42501';
    END IF;
    INSERT INTO public.user_tenants (user_id, tenant_id, role, status)
    VALUES (p_user_id, v_tenant, p_role, 'active')
    ON CONFLICT (user_id, tenant_id) DO UPDATE SET role = EXCLUDED.role, status = 'active';
END
$$;
-- +goose StatementEnd
ALTER FUNCTION public.assign_user_to_dh_startup(uuid, varchar) OWNER TO vital_owner;
REVOKE ALL ON FUNCTION public.assign_user_to_dh_startup(uuid, varchar) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.assign_user_to_dh_startup(uuid, varchar) TO vital_tenant_writer;

REFRESH MATERIALIZED VIEW public.mv_platform_shared_resources;

-- +goose Down

DROP FUNCTION IF EXISTS public.assign_user_to_dh_startup(uuid, varchar);
DROP FUNCTION IF EXISTS public.grant_platform_admin(uuid);

-- +goose StatementBegin
DO $$
DECLARE
    t        text;
    platform uuid;
BEGIN
    SELECT id INTO platform FROM public.tenants WHERE slug = 'vital-platform';
    IF platform IS NULL THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['workflows', 'prompts', 'tools', 'agents'] LOOP
        EXECUTE pg_catalog.format(
            'UPDATE public.%I
                SET tenant_id = NULL, is_shared = false, sharing_mode = ''private'', shared_with = ''{}'',
                    resource_type = ''custom''
              WHERE tenant_id = $1 AND resource_type = ''platform''', t)
        USING platform;
    END LOOP;
END
$$;
-- +goose StatementEnd

DELETE FROM public.tenants WHERE slug IN ('vital-platform', 'digital-health-startup');
REFRESH MATERIALIZED VIEW public.mv_platform_shared_resources;
