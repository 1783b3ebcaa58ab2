package tenantroles

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/auth"
)

// Sentinel errors, returned wrapped in an error whose message names the
// tenant or value at fault; test for them with errors.Is.
var (
	// ErrTenantExists: a tenant with that slug already exists.
	ErrTenantExists = errors.New("tenant already exists")
	// ErrUnknownTenant: no tenant has that slug.
	ErrUnknownTenant = errors.New("unknown tenant")
	// ErrInvalidSlug: the slug is not ^[a-z0-9][a-z0-9-]{0,62}$.
	ErrInvalidSlug = errors.New("invalid tenant slug")
	// ErrInvalidType: the type is not one of Types.
	ErrInvalidType = errors.New("invalid tenant type")
	// ErrInvalidTier: the tenants table does not allow the subscription tier.
	ErrInvalidTier = errors.New("invalid subscription tier")
	// ErrInvalidName: the display name is empty or holds control characters.
	ErrInvalidName = errors.New("invalid tenant name")
	// ErrInvalidPrefix: Options.Prefix is not a usable role name prefix.
	ErrInvalidPrefix = errors.New("invalid role prefix")
	// ErrNoSecret: creating or repairing roles needs the role secret.
	ErrNoSecret = errors.New("no role secret")
	// ErrNotMigrated: the tables or group roles the manager relies on are
	// missing.
	ErrNotMigrated = errors.New("database not migrated")
	// ErrCannotManageRoles: the connection's role has neither CREATEROLE nor
	// SUPERUSER.
	ErrCannotManageRoles = errors.New("cannot manage roles")
	// ErrRowSecurity: row-level security hides tenants from the
	// connection's role, so it cannot manage all of them (a sync would take
	// the roles of hidden tenants for stale ones).
	ErrRowSecurity = errors.New("tenants hidden by row-level security")
)

// detailError carries a one-line message for the user and a sentinel for
// errors.Is.
type detailError struct {
	sentinel error
	msg      string
}

func (e *detailError) Error() string { return e.msg }
func (e *detailError) Unwrap() error { return e.sentinel }

func errorf(sentinel error, format string, args ...any) error {
	return &detailError{sentinel: sentinel, msg: fmt.Sprintf(format, args...)}
}

// Tenant types.
const (
	TypeClient   = "client"
	TypeSolution = "solution"
	TypeIndustry = "industry"
	TypePlatform = "platform"
)

// Types lists the tenant types the tenants table accepts.
var Types = []string{TypeClient, TypeSolution, TypeIndustry, TypePlatform}

// Tenant statuses: Suspend and Resume set suspended and active; roles of
// active and trial tenants may log in.
const (
	StatusActive    = "active"
	StatusTrial     = "trial"
	StatusSuspended = "suspended"
)

// loginAllowed reports whether roles of a tenant with status may log in:
// only active and trial tenants'. Any other status (suspended, cancelled, or
// one this code does not know) locks the roles out.
func loginAllowed(status string) bool { return status == StatusActive || status == StatusTrial }

// Group roles tenant login roles belong to (created by the migrations).
const (
	GroupReader = "vital_tenant"
	GroupWriter = "vital_tenant_writer"
	// GroupSession is the group of tenant roles (never the pooled roles)
	// that keeps what is only safe on a backend of one tenant: signalling
	// its own backends, reading its session's prepared statements.
	GroupSession = "vital_tenant_session"
)

// DefaultPrefix is used when Options.Prefix is empty.
const DefaultPrefix = "vt_"

// DefaultTier is the subscription tier of a new tenant when Spec.Tier is
// empty and the tenants table has no default of its own (if the table's
// CHECK constraint does not allow it either, the first allowed tier is used).
const DefaultTier = "starter"

// lockTable is locked (SHARE ROW EXCLUSIVE, which conflicts with itself)
// around tenant role DDL. A table lock rather than an advisory lock: the
// migrations keep the advisory-lock functions from PUBLIC, and a manager
// that is not a superuser needs the table's privileges anyway. It serialises
// managers working on the same database, and lets the proxy read the table
// meanwhile; races across databases of one cluster are absorbed by tolerant
// role creation and retries.
const lockTable = "vital.tenant_roles"

var (
	slugRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	prefixRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,29}$`)
)

// Options configure a Manager.
type Options struct {
	// Secret is the proxy's role secret; role passwords derive from it.
	// Add and Sync need it; List, Get, Suspend and Resume do not.
	Secret []byte
	// Prefix starts every tenant role name; DefaultPrefix when empty.
	Prefix string
}

// Spec describes a tenant to add.
type Spec struct {
	Slug string
	Name string
	Type string
	// Tier is the subscription tier; empty means the table's default (or
	// DefaultTier).
	Tier string
}

// Tenant is a tenant and the login roles mapped to it.
type Tenant struct {
	ID     string
	Slug   string
	Name   string
	Type   string
	Tier   string
	Status string
	// Roles are the login roles vital.tenant_roles maps to the tenant, in
	// the order rw, ro, admin.
	Roles []string
}

// SyncReport says what Sync changed. Changes is empty when nothing had
// drifted.
type SyncReport struct {
	Changes []string
}

// Manager provisions tenants and their roles over one administrative
// connection. It is not safe for concurrent use (neither is the connection);
// use one Manager per connection.
type Manager struct {
	conn   *pgx.Conn
	secret []byte
	prefix string
}

// New returns a Manager working over conn, which the caller keeps owning.
func New(conn *pgx.Conn, opts Options) *Manager {
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Manager{conn: conn, secret: slices.Clone(opts.Secret), prefix: prefix}
}

// ValidateSlug checks a tenant slug.
func ValidateSlug(slug string) error {
	if !slugRE.MatchString(slug) {
		return errorf(ErrInvalidSlug, "invalid tenant slug %q: use 1 to 63 lower-case letters, digits and '-', starting with a letter or digit", slug)
	}
	return nil
}

// ValidateType checks a tenant type.
func ValidateType(typ string) error {
	if !slices.Contains(Types, typ) {
		return errorf(ErrInvalidType, "invalid tenant type %q: must be one of %s", typ, strings.Join(Types, ", "))
	}
	return nil
}

func validateName(name string) error {
	if strings.TrimSpace(name) == "" {
		return errorf(ErrInvalidName, "tenant name must not be empty")
	}
	if strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return errorf(ErrInvalidName, "tenant name must not contain control characters")
	}
	return nil
}

func (m *Manager) checkPrefix() error {
	if !prefixRE.MatchString(m.prefix) {
		return errorf(ErrInvalidPrefix, "invalid role prefix %q: use up to 30 lower-case letters, digits and '_', not starting with a digit", m.prefix)
	}
	return nil
}

func (m *Manager) checkSecret(what string) error {
	if len(m.secret) == 0 {
		return errorf(ErrNoSecret, "%s needs the role secret (role passwords derive from it): set role_secret (VITALPROXY_ROLE_SECRET, base64) or role_secret_file", what)
	}
	return nil
}

// roleSpec is one login role a tenant (or, pooled, context mode) should
// have.
type roleSpec struct {
	name  string
	cap   auth.Capability
	group string
	// session: also a member of GroupSession (tenant roles, when the
	// database has it).
	session bool
	// pooled: a pooled role of context mode, recorded in
	// vital.pooled_roles instead of vital.tenant_roles.
	pooled bool
}

// groups are the roles w must be a member of, exactly.
func (w roleSpec) groups() []string {
	if w.session {
		return []string{w.group, GroupSession}
	}
	return []string{w.group}
}

// pooledRoles are the login roles backends shared by many tenants use.
func (m *Manager) pooledRoles() []roleSpec {
	return []roleSpec{
		{name: auth.PooledRoleName(m.prefix, auth.ReadWrite), cap: auth.ReadWrite, group: GroupWriter, pooled: true},
		{name: auth.PooledRoleName(m.prefix, auth.ReadOnly), cap: auth.ReadOnly, group: GroupReader, pooled: true},
	}
}

// wantRoles lists the login roles tenant t should have.
func (m *Manager) wantRoles(slug, typ string) []roleSpec {
	rs := []roleSpec{
		{name: auth.RoleName(m.prefix, slug, auth.ReadWrite), cap: auth.ReadWrite, group: GroupWriter},
		{name: auth.RoleName(m.prefix, slug, auth.ReadOnly), cap: auth.ReadOnly, group: GroupReader},
	}
	if typ == TypePlatform {
		rs = append(rs, roleSpec{name: auth.RoleName(m.prefix, slug, auth.Admin), cap: auth.Admin, group: GroupWriter})
	}
	return rs
}

// Add creates a tenant and its login roles in one transaction: on any
// failure nothing is left behind (roles created before the failure are
// rolled back with the rest).
func (m *Manager) Add(ctx context.Context, spec Spec) (Tenant, error) {
	if err := ValidateSlug(spec.Slug); err != nil {
		return Tenant{}, err
	}
	if err := ValidateType(spec.Type); err != nil {
		return Tenant{}, err
	}
	if err := validateName(spec.Name); err != nil {
		return Tenant{}, err
	}
	if err := m.checkPrefix(); err != nil {
		return Tenant{}, err
	}
	if err := m.checkSecret("adding a tenant"); err != nil {
		return Tenant{}, err
	}
	var out Tenant
	err := m.inTx(ctx, func(s *txState) error {
		if err := s.checkReady(ctx); err != nil {
			return err
		}
		var exists bool
		if err := s.tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM public.tenants WHERE slug = $1)`, spec.Slug).Scan(&exists); err != nil {
			return fmt.Errorf("look up tenant %q: %w", spec.Slug, err)
		}
		if exists {
			return errorf(ErrTenantExists, "tenant %q already exists", spec.Slug)
		}
		tier, err := s.pickTier(ctx, spec.Tier)
		if err != nil {
			return err
		}
		row := tenantRow{Slug: spec.Slug, Name: spec.Name, Type: spec.Type}
		q := `INSERT INTO public.tenants (name, slug, type, status) VALUES ($1, $2, $3, $4)`
		args := []any{spec.Name, spec.Slug, spec.Type, StatusActive}
		if tier != "" {
			q = `INSERT INTO public.tenants (name, slug, type, status, subscription_tier) VALUES ($1, $2, $3, $4, $5)`
			args = append(args, tier)
		}
		q += ` RETURNING id::text, coalesce(subscription_tier::text, ''), status::text`
		if err := s.tx.QueryRow(ctx, q, args...).Scan(&row.ID, &row.Tier, &row.Status); err != nil {
			return s.insertError(ctx, spec, err)
		}
		if _, err := s.reconcile(ctx, row, nil); err != nil {
			return err
		}
		out = row.tenant()
		return s.fillRoles(ctx, &out)
	})
	if err != nil {
		return Tenant{}, err
	}
	return out, nil
}

// insertError turns a failed tenant INSERT into a clear error.
func (s *txState) insertError(ctx context.Context, spec Spec, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "23505" && strings.Contains(pgErr.ConstraintName, "slug"):
			return errorf(ErrTenantExists, "tenant %q already exists", spec.Slug)
		case pgErr.Code == "23514" && strings.Contains(pgErr.ConstraintName, "tier"):
			return errorf(ErrInvalidTier, "invalid subscription tier %q", spec.Tier)
		case pgErr.Code == "23514" && strings.Contains(pgErr.ConstraintName, "type"):
			return errorf(ErrInvalidType, "invalid tenant type %q: must be one of %s", spec.Type, strings.Join(Types, ", "))
		}
	}
	return fmt.Errorf("insert tenant %q: %w", spec.Slug, err)
}

// pickTier validates tier against the tenants table's CHECK constraint and
// picks the default when tier is empty. An empty result means "let the
// column default apply".
func (s *txState) pickTier(ctx context.Context, tier string) (string, error) {
	var hasDefault bool
	err := s.tx.QueryRow(ctx, `
		SELECT a.atthasdef
		FROM pg_attribute a
		WHERE a.attrelid = 'public.tenants'::regclass AND a.attname = 'subscription_tier' AND NOT a.attisdropped`).Scan(&hasDefault)
	if errors.Is(err, pgx.ErrNoRows) {
		if tier != "" {
			return "", errorf(ErrInvalidTier, "the tenants table has no subscription_tier column; drop --tier")
		}
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("inspect tenants.subscription_tier: %w", err)
	}
	allowed, err := s.allowedTiers(ctx)
	if err != nil {
		return "", err
	}
	if tier == "" {
		switch {
		case hasDefault:
			return "", nil
		case len(allowed) == 0 || slices.Contains(allowed, DefaultTier):
			return DefaultTier, nil
		default:
			return allowed[0], nil
		}
	}
	if len(allowed) > 0 && !slices.Contains(allowed, tier) {
		return "", errorf(ErrInvalidTier, "invalid subscription tier %q: must be one of %s", tier, strings.Join(allowed, ", "))
	}
	return tier, nil
}

var literalRE = regexp.MustCompile(`'((?:[^']|'')*)'`)

// allowedTiers reads the string literals of the CHECK constraints on
// tenants.subscription_tier (nil when unconstrained).
func (s *txState) allowedTiers(ctx context.Context) ([]string, error) {
	rows, err := s.tx.Query(ctx, `
		SELECT pg_get_constraintdef(c.oid)
		FROM pg_constraint c
		JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
		WHERE c.conrelid = 'public.tenants'::regclass AND c.contype = 'c'
		  AND a.attname = 'subscription_tier' AND cardinality(c.conkey) = 1`)
	if err != nil {
		return nil, fmt.Errorf("read tier constraint: %w", err)
	}
	defs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read tier constraint: %w", err)
	}
	var allowed []string
	for _, def := range defs {
		for _, m := range literalRE.FindAllStringSubmatch(def, -1) {
			v := strings.ReplaceAll(m[1], "''", "'")
			if !slices.Contains(allowed, v) {
				allowed = append(allowed, v)
			}
		}
	}
	return allowed, nil
}

// List returns every tenant, ordered by slug.
func (m *Manager) List(ctx context.Context) ([]Tenant, error) {
	return m.list(ctx, "")
}

// Get returns the tenant with the given slug, or an error wrapping
// ErrUnknownTenant.
func (m *Manager) Get(ctx context.Context, slug string) (Tenant, error) {
	ts, err := m.list(ctx, slug)
	if err != nil {
		return Tenant{}, err
	}
	if len(ts) == 0 {
		return Tenant{}, unknownTenant(slug)
	}
	return ts[0], nil
}

func unknownTenant(slug string) error {
	return errorf(ErrUnknownTenant, "unknown tenant %q", slug)
}

const selectTenants = `
	SELECT t.id::text, t.slug::text, coalesce(t.name::text, ''), t.type::text,
	       coalesce(t.subscription_tier::text, ''), coalesce(t.status::text, '')
	FROM public.tenants t`

func (m *Manager) list(ctx context.Context, slug string) ([]Tenant, error) {
	if err := checkTables(ctx, m.conn); err != nil {
		return nil, err
	}
	q := selectTenants + ` ORDER BY t.slug`
	var args []any
	if slug != "" {
		q = selectTenants + ` WHERE t.slug = $1`
		args = append(args, slug)
	}
	rows, err := m.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list tenants: %w", err)
	}
	trs, err := pgx.CollectRows(rows, scanTenantRow)
	if err != nil {
		return nil, fmt.Errorf("list tenants: %w", err)
	}
	rows, err = m.conn.Query(ctx, `
		SELECT tenant_id::text, role_name::text FROM vital.tenant_roles
		ORDER BY tenant_id, CASE capability WHEN 'rw' THEN 0 WHEN 'ro' THEN 1 ELSE 2 END, role_name`)
	if err != nil {
		return nil, fmt.Errorf("list tenant roles: %w", err)
	}
	roles := map[string][]string{}
	var id, role string
	_, err = pgx.ForEachRow(rows, []any{&id, &role}, func() error {
		roles[id] = append(roles[id], role)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tenant roles: %w", err)
	}
	out := make([]Tenant, 0, len(trs))
	for _, r := range trs {
		t := r.tenant()
		t.Roles = roles[t.ID]
		out = append(out, t)
	}
	return out, nil
}

// Suspend marks the tenant suspended, makes its roles NOLOGIN and then
// terminates the sessions its roles still have. It is idempotent. The
// secret is not needed.
func (m *Manager) Suspend(ctx context.Context, slug string) error {
	return m.setStatus(ctx, slug, StatusSuspended)
}

// Resume marks the tenant active and lets its mapped roles log in again.
// Roles that are missing or drifted are left for Sync to repair.
func (m *Manager) Resume(ctx context.Context, slug string) error {
	return m.setStatus(ctx, slug, StatusActive)
}

func (m *Manager) setStatus(ctx context.Context, slug, status string) error {
	if err := m.checkPrefix(); err != nil {
		return err
	}
	login := loginAllowed(status)
	var locked []string
	err := m.inTx(ctx, func(s *txState) error {
		locked = nil
		if err := s.checkReady(ctx); err != nil {
			return err
		}
		var id, typ string
		err := s.tx.QueryRow(ctx, `UPDATE public.tenants SET status = $2 WHERE slug = $1 RETURNING id::text, type::text`,
			slug, status).Scan(&id, &typ)
		if errors.Is(err, pgx.ErrNoRows) {
			return unknownTenant(slug)
		}
		if err != nil {
			return fmt.Errorf("set tenant %q %s: %w", slug, status, err)
		}
		names, err := s.tenantRoleNames(ctx, id, m.wantRoles(slug, typ))
		if err != nil {
			return err
		}
		for _, name := range names {
			var canLogin bool
			err := s.tx.QueryRow(ctx, `SELECT rolcanlogin FROM pg_roles WHERE rolname = $1`, name).Scan(&canLogin)
			if errors.Is(err, pgx.ErrNoRows) {
				continue
			}
			if err != nil {
				return fmt.Errorf("read role %s: %w", name, err)
			}
			if !login {
				locked = append(locked, name)
			}
			if canLogin == login {
				continue
			}
			attr := "NOLOGIN"
			if login {
				attr = "LOGIN"
			}
			if _, err := s.tx.Exec(ctx, `ALTER ROLE `+quoteIdent(name)+` WITH `+attr); err != nil {
				return fmt.Errorf("alter role %s %s: %w", name, attr, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if _, err := terminate(ctx, m.conn, locked); err != nil {
		return fmt.Errorf("tenant %q is suspended and its roles cannot log in, but its live sessions could not be ended: %w", slug, err)
	}
	return nil
}

// tenantRoleNames returns the roles mapped to tenant id plus the expected
// role names, without duplicates.
func (s *txState) tenantRoleNames(ctx context.Context, id string, want []roleSpec) ([]string, error) {
	rows, err := s.tx.Query(ctx, `SELECT role_name::text FROM vital.tenant_roles WHERE tenant_id = $1 ORDER BY role_name`, id)
	if err != nil {
		return nil, fmt.Errorf("read tenant roles: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read tenant roles: %w", err)
	}
	for _, w := range want {
		if !slices.Contains(names, w.name) {
			names = append(names, w.name)
		}
	}
	return names, nil
}

// terminate ends the sessions of roles (waiting up to 5s each) and returns
// how many sessions each role had.
func terminate(ctx context.Context, conn *pgx.Conn, roles []string) (map[string]int, error) {
	if len(roles) == 0 {
		return nil, nil
	}
	// The call sits in the select list of a materialised CTE's result so
	// that it only ever runs for rows that passed the filter (a WHERE
	// clause may evaluate it first).
	rows, err := conn.Query(ctx, `
		WITH s AS MATERIALIZED (
			SELECT pid, usename::text AS usename FROM pg_catalog.pg_stat_activity
			WHERE usename = ANY ($1::text[]) AND pid <> pg_backend_pid()
		)
		SELECT usename, pg_catalog.pg_terminate_backend(pid, 5000) FROM s`, roles)
	if err != nil {
		return nil, fmt.Errorf("terminate sessions: %w", err)
	}
	out := map[string]int{}
	var role string
	var ok bool
	if _, err := pgx.ForEachRow(rows, []any{&role, &ok}, func() error {
		if ok {
			out[role]++
		}
		return nil
	}); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42501" {
			// The migrations keep the statistics views from PUBLIC.
			return nil, fmt.Errorf("terminate sessions: %w (the database user needs pg_read_all_stats to list sessions and pg_signal_backend to end them)", err)
		}
		return nil, fmt.Errorf("terminate sessions: %w", err)
	}
	return out, nil
}

// Sync creates missing tenant roles and repairs drift for every tenant:
// role attributes (LOGIN only while the tenant is active), memberships
// (exactly the group role; memberships of other tenant roles in it are
// revoked), the password and the vital.tenant_roles rows (stale rows are
// deleted). Sessions of suspended tenants' roles are terminated. It is
// idempotent: a second run reports no changes.
func (m *Manager) Sync(ctx context.Context) (SyncReport, error) {
	if err := m.checkPrefix(); err != nil {
		return SyncReport{}, err
	}
	if err := m.checkSecret("syncing tenant roles"); err != nil {
		return SyncReport{}, err
	}
	var changes, locked []string
	err := m.inTx(ctx, func(s *txState) error {
		changes, locked = nil, nil
		if err := s.checkReady(ctx); err != nil {
			return err
		}
		rows, err := s.tx.Query(ctx, selectTenants+` ORDER BY t.slug`)
		if err != nil {
			return fmt.Errorf("list tenants: %w", err)
		}
		tenants, err := pgx.CollectRows(rows, scanTenantRow)
		if err != nil {
			return fmt.Errorf("list tenants: %w", err)
		}
		expected := map[string]bool{}
		for _, t := range tenants {
			for _, w := range m.wantRoles(t.Slug, t.Type) {
				expected[w.name] = true
			}
		}
		rows, err = s.tx.Query(ctx, `SELECT role_name::text FROM vital.tenant_roles ORDER BY role_name`)
		if err != nil {
			return fmt.Errorf("read tenant roles: %w", err)
		}
		mapped, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("read tenant roles: %w", err)
		}
		all := map[string]bool{}
		for r := range expected {
			all[r] = true
		}
		for _, r := range mapped {
			all[r] = true
		}
		if s.pooled {
			for _, w := range m.pooledRoles() {
				all[w.name] = true
			}
		}
		for _, t := range tenants {
			c, err := s.reconcile(ctx, t, all)
			if err != nil {
				return err
			}
			changes = append(changes, c...)
			if !loginAllowed(t.Status) {
				for _, w := range m.wantRoles(t.Slug, t.Type) {
					locked = append(locked, w.name)
				}
			}
		}
		for _, r := range mapped {
			if expected[r] {
				continue
			}
			if _, err := s.tx.Exec(ctx, `DELETE FROM vital.tenant_roles WHERE role_name = $1`, r); err != nil {
				return fmt.Errorf("delete stale mapping of %s: %w", r, err)
			}
			changes = append(changes, fmt.Sprintf("removed stale vital.tenant_roles row for role %s (the role itself is left in place)", r))
		}
		if s.pooled {
			c, err := s.reconcilePooled(ctx, all)
			if err != nil {
				return err
			}
			changes = append(changes, c...)
		}
		return nil
	})
	if err != nil {
		return SyncReport{}, err
	}
	ended, err := terminate(ctx, m.conn, locked)
	if err != nil {
		return SyncReport{Changes: changes}, fmt.Errorf("roles are synced, but live sessions of suspended tenants could not be ended: %w", err)
	}
	for _, r := range locked {
		if n := ended[r]; n > 0 {
			changes = append(changes, fmt.Sprintf("role %s: terminated %d session(s) of a suspended tenant", r, n))
		}
	}
	return SyncReport{Changes: changes}, nil
}

// tenantRow is a row of public.tenants.
type tenantRow struct {
	ID, Slug, Name, Type, Tier, Status string
}

func scanTenantRow(row pgx.CollectableRow) (tenantRow, error) {
	var t tenantRow
	err := row.Scan(&t.ID, &t.Slug, &t.Name, &t.Type, &t.Tier, &t.Status)
	return t, err
}

func (t tenantRow) tenant() Tenant {
	return Tenant{ID: t.ID, Slug: t.Slug, Name: t.Name, Type: t.Type, Tier: t.Tier, Status: t.Status}
}

func (s *txState) fillRoles(ctx context.Context, t *Tenant) error {
	rows, err := s.tx.Query(ctx, `
		SELECT role_name::text FROM vital.tenant_roles WHERE tenant_id = $1
		ORDER BY CASE capability WHEN 'rw' THEN 0 WHEN 'ro' THEN 1 ELSE 2 END, role_name`, t.ID)
	if err != nil {
		return fmt.Errorf("read tenant roles: %w", err)
	}
	t.Roles, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read tenant roles: %w", err)
	}
	return nil
}
