package userstore_test

import (
	"context"
	"testing"

	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

// bootstrapSQL is the part of the database contract the tenant manager
// relies on, standing in for the migrations in these tests.
const bootstrapSQL = `
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vital_owner') THEN CREATE ROLE vital_owner NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vital_tenant') THEN CREATE ROLE vital_tenant NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vital_tenant_writer') THEN CREATE ROLE vital_tenant_writer NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vital_operator') THEN CREATE ROLE vital_operator NOLOGIN; END IF;
  IF NOT pg_has_role('vital_tenant_writer', 'vital_tenant', 'MEMBER') THEN GRANT vital_tenant TO vital_tenant_writer; END IF;
  IF NOT pg_has_role('vital_operator', 'vital_tenant_writer', 'MEMBER') THEN GRANT vital_tenant_writer TO vital_operator; END IF;
END $$;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA vital AUTHORIZATION vital_owner;
CREATE TABLE public.tenants (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name varchar(255) NOT NULL,
  slug varchar(100) NOT NULL UNIQUE,
  type varchar(50) NOT NULL CHECK (type IN ('client', 'solution', 'industry', 'platform')),
  subscription_tier varchar(50) NOT NULL CHECK (subscription_tier IN ('trial', 'starter', 'professional', 'enterprise')),
  status varchar(50) NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'trial', 'inactive')),
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE vital.tenant_roles (
  role_name name PRIMARY KEY,
  tenant_id uuid NOT NULL REFERENCES public.tenants(id) ON DELETE CASCADE,
  capability text NOT NULL CHECK (capability IN ('rw', 'ro', 'admin'))
);
CREATE TABLE vital.proxy_users (
  name text PRIMARY KEY,
  password text NOT NULL,
  tenants text[] NOT NULL,
  read_only boolean NOT NULL DEFAULT false,
  platform_admin boolean NOT NULL DEFAULT false,
  pool_mode text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.agents (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id uuid REFERENCES public.tenants(id),
  name text NOT NULL
);
ALTER TABLE public.agents OWNER TO vital_owner;
GRANT USAGE ON SCHEMA public TO vital_tenant;
GRANT SELECT ON public.agents TO vital_tenant;
GRANT INSERT ON public.agents TO vital_tenant_writer;
`

// migrate prepares database db of cluster c.
func migrate(t testing.TB, c *pgtest.Cluster, db string) {
	t.Helper()
	if err := c.Exec(context.Background(), db, bootstrapSQL); err != nil {
		t.Fatalf("bootstrap schema: %v", err)
	}
}
