package tenantroles

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Probe tenants: two client tenants that exist only so that the proxy's live
// isolation probe can log in as each and check that it sees its own canary
// agent and not the other's.
const (
	ProbeTenantA = "vitalproxy-probe-a"
	ProbeTenantB = "vitalproxy-probe-b"
)

// ProbeTenants lists the probe tenants' slugs, in probing order.
func ProbeTenants() []string { return []string{ProbeTenantA, ProbeTenantB} }

// ProbeCanaryPrefix starts the name of every probe canary agent; the probe
// looks for agents whose names start with it.
const ProbeCanaryPrefix = "vitalproxy-probe-canary-"

// ProbeCanary returns the name of the canary agent of the probe tenant slug.
func ProbeCanary(slug string) string { return ProbeCanaryPrefix + slug }

// probeTenantNames are the display names of the probe tenants.
var probeTenantNames = map[string]string{
	ProbeTenantA: "vitalproxy isolation probe A",
	ProbeTenantB: "vitalproxy isolation probe B",
}

// EnsureProbeTenants creates what the proxy's isolation probe needs and
// reports what it changed (nothing on a second run):
//
//   - the probe tenants ProbeTenantA and ProbeTenantB (type client) with
//     their login roles, when missing (an existing probe tenant's roles are
//     left to Sync, and its status is left alone: a suspended probe tenant
//     makes the probe fail, which is what its alert is for);
//   - one canary agent per probe tenant, named ProbeCanary(slug), private,
//     live and belonging to that tenant; a canary that was shared, soft
//     deleted or marked as a platform resource is made private and live
//     again.
//
// Canaries are written through the administrative connection with an
// explicit tenant_id, so the connection must not be subject to row-level
// security on public.agents (a superuser or a BYPASSRLS role).
func (m *Manager) EnsureProbeTenants(ctx context.Context) (SyncReport, error) {
	if err := m.checkPrefix(); err != nil {
		return SyncReport{}, err
	}
	if err := m.checkSecret("creating the probe tenants"); err != nil {
		return SyncReport{}, err
	}
	var changes []string
	ids := map[string]string{}
	for _, slug := range ProbeTenants() {
		t, err := m.Get(ctx, slug)
		if errors.Is(err, ErrUnknownTenant) {
			t, err = m.Add(ctx, Spec{Slug: slug, Name: probeTenantNames[slug], Type: TypeClient})
			if errors.Is(err, ErrTenantExists) {
				// Added concurrently by another manager.
				t, err = m.Get(ctx, slug)
			} else if err == nil {
				changes = append(changes, fmt.Sprintf("added probe tenant %s (id %s); login roles: %s", t.Slug, t.ID, strings.Join(t.Roles, ", ")))
			}
		}
		if err != nil {
			return SyncReport{Changes: changes}, fmt.Errorf("probe tenant %s: %w", slug, err)
		}
		ids[slug] = t.ID
	}
	err := m.inTx(ctx, func(s *txState) error {
		var filtered bool
		var user string
		if err := s.tx.QueryRow(ctx, `SELECT row_security_active('public.agents'), current_user::text`).Scan(&filtered, &user); err != nil {
			return fmt.Errorf("check row-level security on agents: %w", err)
		}
		if filtered {
			return errorf(ErrRowSecurity, "row-level security applies to the database user %q on public.agents: create the probe canaries as a superuser or a role with BYPASSRLS", user)
		}
		var cs []string
		for _, slug := range ProbeTenants() {
			c, err := s.ensureCanary(ctx, slug, ids[slug])
			if err != nil {
				return err
			}
			cs = append(cs, c...)
		}
		changes = append(changes, cs...)
		return nil
	})
	if err != nil {
		return SyncReport{Changes: changes}, err
	}
	return SyncReport{Changes: changes}, nil
}

// ensureCanary makes the canary agent of probe tenant slug exist, private and
// live.
func (s *txState) ensureCanary(ctx context.Context, slug, tenantID string) ([]string, error) {
	name := ProbeCanary(slug)
	rows, err := s.tx.Query(ctx, `
		SELECT id::text,
		       is_shared OR sharing_mode <> 'private' OR cardinality(shared_with) > 0
		           OR deleted_at IS NOT NULL OR resource_type <> 'custom'
		FROM public.agents WHERE tenant_id = $1 AND name = $2`, tenantID, name)
	if err != nil {
		return nil, fmt.Errorf("look up canary %s: %w", name, err)
	}
	type canary struct {
		id      string
		drifted bool
	}
	found, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (canary, error) {
		var c canary
		err := r.Scan(&c.id, &c.drifted)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("look up canary %s: %w", name, err)
	}
	if len(found) == 0 {
		_, err := s.tx.Exec(ctx, `
			INSERT INTO public.agents (name, display_name, description, tenant_id, is_shared, sharing_mode, resource_type)
			VALUES ($1, $1, 'Canary row of the vitalproxy isolation probe: only its own tenant may see it.', $2, false, 'private', 'custom')`,
			name, tenantID)
		if err != nil {
			return nil, fmt.Errorf("insert canary %s: %w", name, err)
		}
		return []string{fmt.Sprintf("probe tenant %s: inserted canary agent %s", slug, name)}, nil
	}
	var changes []string
	for _, c := range found {
		if !c.drifted {
			continue
		}
		_, err := s.tx.Exec(ctx, `
			UPDATE public.agents
			SET is_shared = false, sharing_mode = 'private', shared_with = '{}', deleted_at = NULL, resource_type = 'custom'
			WHERE id = $1`, c.id)
		if err != nil {
			return nil, fmt.Errorf("repair canary %s: %w", name, err)
		}
		changes = append(changes, fmt.Sprintf("probe tenant %s: made canary agent %s private and live again", slug, name))
	}
	return changes, nil
}
