-- Baseline: what the four seed migrations assume already exists, created
-- only where it is missing. Existing objects are left alone; what this
-- migration creates is recorded in vital.migration_objects so that Down
-- removes exactly that and nothing the database had before.
--
-- Security notes (see also 20251026000003_update_rls_policies.sql):
--   * The four group roles are cluster-wide, NOLOGIN and carry no dangerous
--     attribute (SUPERUSER, BYPASSRLS, CREATEROLE, CREATEDB, REPLICATION).
--     Down leaves them in place: other databases of the cluster may use them.
--   * CREATE on schema public is revoked from PUBLIC (PostgreSQL 15 does
--     this by default; older clusters and dumps may not). Down does not give
--     it back.
--   * Schema vital is private: no privilege for PUBLIC or any tenant role.
--     It holds the tenant identity mapping (vital.tenant_roles) and the proxy
--     user store (vital.proxy_users).
--
-- Every statement is idempotent: the Up section may be re-run by hand.

-- +goose Up

-- +goose StatementBegin
DO $$
DECLARE
    r text;
    bad boolean;
BEGIN
    FOREACH r IN ARRAY ARRAY['vital_owner', 'vital_tenant', 'vital_tenant_writer', 'vital_operator'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE pg_catalog.format(
                    'CREATE ROLE %I NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION INHERIT', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- created meanwhile by a migration of another database
            END;
        END IF;
        -- Repair a group role that was given a dangerous attribute. Only
        -- touched when wrong: changing SUPERUSER/BYPASSRLS/REPLICATION needs
        -- a superuser, and a non-superuser migrating a clean cluster must not
        -- trip over that.
        SELECT rolsuper OR rolbypassrls OR rolcanlogin OR rolcreaterole OR rolcreatedb OR rolreplication
          INTO bad FROM pg_catalog.pg_roles WHERE rolname = r;
        IF bad THEN
            EXECUTE pg_catalog.format(
                'ALTER ROLE %I NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION', r);
        END IF;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- vital_tenant_writer is a member of vital_tenant, vital_operator of
-- vital_tenant_writer. A migrating role that is not a superuser joins
-- vital_owner so that it can hand objects to it.
-- +goose StatementBegin
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT * FROM (VALUES ('vital_tenant', 'vital_tenant_writer'),
                                   ('vital_tenant_writer', 'vital_operator')) AS v(grp, member)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                        WHERE m.roleid = pg_catalog.to_regrole(g.grp)
                          AND m.member = pg_catalog.to_regrole(g.member)) THEN
            BEGIN
                EXECUTE pg_catalog.format('GRANT %I TO %I', g.grp, g.member);
            EXCEPTION WHEN unique_violation THEN
                NULL; -- granted meanwhile by a migration of another database
            END;
        END IF;
    END LOOP;
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
       AND NOT pg_catalog.pg_has_role(current_user, 'vital_owner', 'MEMBER') THEN
        EXECUTE pg_catalog.format('GRANT vital_owner TO %I', current_user);
    END IF;
END
$$;
-- +goose StatementEnd

REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO vital_tenant;
-- ALTER ... OWNER TO vital_owner needs the new owner to hold CREATE on the
-- schema (when the migrating role is not a superuser).
GRANT CREATE ON SCHEMA public TO vital_owner;

CREATE SCHEMA IF NOT EXISTS vital;
ALTER SCHEMA vital OWNER TO vital_owner;
REVOKE ALL ON SCHEMA vital FROM PUBLIC;

-- What the migrations created (kind, name) or changed (kind 'owner': the
-- previous owner of a table that existed before), so Down undoes exactly that.
CREATE TABLE IF NOT EXISTS vital.migration_objects (
    kind       text        NOT NULL,
    name       text        NOT NULL,
    detail     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);
ALTER TABLE vital.migration_objects OWNER TO vital_owner;
REVOKE ALL ON vital.migration_objects FROM PUBLIC;

-- Proxy users managed by `vitalproxy user`. Passwords are SCRAM-SHA-256
-- verifiers in PostgreSQL's format (or md5 hashes), never plain text.
CREATE TABLE IF NOT EXISTS vital.proxy_users (
    name           text        PRIMARY KEY,
    password       text        NOT NULL
        CONSTRAINT proxy_users_password_check CHECK (password LIKE 'SCRAM-SHA-256$%' OR password LIKE 'md5%'),
    tenants        text[]      NOT NULL,
    read_only      boolean     NOT NULL DEFAULT false,
    platform_admin boolean     NOT NULL DEFAULT false,
    pool_mode      text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE vital.proxy_users OWNER TO vital_owner;
REVOKE ALL ON vital.proxy_users FROM PUBLIC;

-- The agents table the seed migrations extend, and a Supabase-compatible
-- auth.users when the database has no auth schema (a Supabase database
-- already has one and it is left alone).
-- +goose StatementBegin
DO $$
BEGIN
    IF pg_catalog.to_regclass('public.agents') IS NULL THEN
        CREATE TABLE public.agents (
            id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
            name          text        NOT NULL,
            display_name  text,
            description   text,
            system_prompt text,
            model         text,
            capabilities  text[]      NOT NULL DEFAULT '{}',
            metadata      jsonb       NOT NULL DEFAULT '{}'::jsonb,
            created_by    uuid,
            created_at    timestamptz NOT NULL DEFAULT now(),
            updated_at    timestamptz NOT NULL DEFAULT now(),
            deleted_at    timestamptz
        );
        ALTER TABLE public.agents OWNER TO vital_owner;
        REVOKE ALL ON public.agents FROM PUBLIC;
        INSERT INTO vital.migration_objects (kind, name) VALUES ('table', 'public.agents')
            ON CONFLICT DO NOTHING;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'auth') THEN
        CREATE SCHEMA auth;
        ALTER SCHEMA auth OWNER TO vital_owner;
        REVOKE ALL ON SCHEMA auth FROM PUBLIC;
        CREATE TABLE auth.users (
            id                 uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
            instance_id        uuid,
            aud                varchar(255),
            role               varchar(255),
            email              varchar(255) UNIQUE,
            encrypted_password varchar(255),
            email_confirmed_at timestamptz,
            phone              text UNIQUE,
            raw_app_meta_data  jsonb,
            raw_user_meta_data jsonb,
            is_super_admin     boolean,
            last_sign_in_at    timestamptz,
            created_at         timestamptz  DEFAULT now(),
            updated_at         timestamptz  DEFAULT now(),
            deleted_at         timestamptz
        );
        ALTER TABLE auth.users OWNER TO vital_owner;
        REVOKE ALL ON auth.users FROM PUBLIC;
        INSERT INTO vital.migration_objects (kind, name) VALUES ('schema', 'auth')
            ON CONFLICT DO NOTHING;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose Down

-- +goose StatementBegin
DO $$
BEGIN
    IF pg_catalog.to_regclass('vital.migration_objects') IS NULL THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM vital.migration_objects WHERE kind = 'table' AND name = 'public.agents') THEN
        DROP TABLE IF EXISTS public.agents;
    END IF;
    IF EXISTS (SELECT 1 FROM vital.migration_objects WHERE kind = 'schema' AND name = 'auth') THEN
        DROP TABLE IF EXISTS auth.users;
        DROP SCHEMA IF EXISTS auth;
    END IF;
END
$$;
-- +goose StatementEnd

DROP TABLE IF EXISTS vital.proxy_users;
DROP TABLE IF EXISTS vital.migration_objects;
REVOKE USAGE ON SCHEMA public FROM vital_tenant;
REVOKE CREATE ON SCHEMA public FROM vital_owner;

-- The schema goes when nothing else lives in it (the migration runner keeps
-- its own bookkeeping there and removes it after the last Down).
-- +goose StatementBegin
DO $$
BEGIN
    DROP SCHEMA IF EXISTS vital;
EXCEPTION WHEN dependent_objects_still_exist THEN
    NULL;
END
$$;
-- +goose StatementEnd
