package tenantroles

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/auth"
)

// txState is one attempt of a Manager transaction.
type txState struct {
	m  *Manager
	tx pgx.Tx
	// version is server_version_num; canReadAuthid says whether stored
	// verifiers can be compared (superuser) or must be re-set blindly.
	version       int
	canReadAuthid bool
	// pooled: the database has the tables and group of context mode
	// (migration 20251026000006).
	pooled bool
}

// maxAttempts bounds retries of a transaction that lost a race on the
// cluster-wide role catalogue.
const maxAttempts = 5

// inTx runs fn in a transaction holding a lock on lockTable, retrying the
// whole transaction when it lost a race with a concurrent role change (from
// another database, which the lock cannot see).
func (m *Manager) inTx(ctx context.Context, fn func(*txState) error) error {
	for attempt := 1; ; attempt++ {
		err := m.tryTx(ctx, fn)
		if err == nil || attempt == maxAttempts || !retryable(err) {
			return err
		}
		delay := time.Duration(attempt)*20*time.Millisecond + rand.N(20*time.Millisecond)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
	}
}

func (m *Manager) tryTx(ctx context.Context, fn func(*txState) error) (err error) {
	tx, err := m.conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	defer func() {
		if err != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = tx.Rollback(rctx)
		}
	}()
	// An unmigrated database has no table to lock; fn says so.
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, lockTable).Scan(&exists); err != nil {
		return fmt.Errorf("take tenant role lock: %w", err)
	}
	if exists {
		if _, err := tx.Exec(ctx, `LOCK TABLE `+lockTable+` IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return fmt.Errorf("take tenant role lock: %w", err)
		}
	}
	if err := fn(&txState{m: m, tx: tx}); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// retryable reports whether err is a lost race worth retrying.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "40001", "40P01": // serialization failure, deadlock
		return true
	case "23505", "42710": // duplicate catalogue row: another creator won
		return strings.HasPrefix(pgErr.ConstraintName, "pg_") || pgErr.Code == "42710"
	case "XX000":
		return strings.Contains(pgErr.Message, "concurrently")
	}
	return false
}

type queryRower interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// checkTables fails with ErrNotMigrated unless public.tenants and
// vital.tenant_roles exist, and with ErrRowSecurity when row-level security
// filters public.tenants for the connection's role.
func checkTables(ctx context.Context, q queryRower) error {
	var tenants, roles bool
	err := q.QueryRow(ctx, `SELECT to_regclass('public.tenants') IS NOT NULL, to_regclass('vital.tenant_roles') IS NOT NULL`).
		Scan(&tenants, &roles)
	if err != nil {
		return fmt.Errorf("check schema: %w", err)
	}
	switch {
	case !tenants:
		return errorf(ErrNotMigrated, "the database has no public.tenants table: run `vitalproxy migrate up` first")
	case !roles:
		return errorf(ErrNotMigrated, "the database has no vital.tenant_roles table: run `vitalproxy migrate up` first")
	}
	var filtered bool
	var user string
	if err := q.QueryRow(ctx, `SELECT row_security_active('public.tenants'), current_user::text`).Scan(&filtered, &user); err != nil {
		return fmt.Errorf("check row-level security: %w", err)
	}
	if filtered {
		return errorf(ErrRowSecurity, "row-level security hides tenants from the database user %q: manage tenants as a superuser or a role with BYPASSRLS", user)
	}
	return nil
}

// checkReady checks the schema, the group roles and that the connection may
// manage roles, and records the server's capabilities.
func (s *txState) checkReady(ctx context.Context) error {
	var user string
	var super, createRole bool
	err := s.tx.QueryRow(ctx, `
		SELECT current_user::text, rolsuper, rolcreaterole,
		       current_setting('server_version_num')::int,
		       has_table_privilege('pg_catalog.pg_authid', 'SELECT')
		FROM pg_roles WHERE rolname = current_user`).Scan(&user, &super, &createRole, &s.version, &s.canReadAuthid)
	if err != nil {
		return fmt.Errorf("check privileges: %w", err)
	}
	if !super && !createRole {
		return errorf(ErrCannotManageRoles, "the database user %q cannot create or alter roles: it needs CREATEROLE (ALTER ROLE %s CREATEROLE) or superuser",
			user, quoteIdent(user))
	}
	if err := checkTables(ctx, s.tx); err != nil {
		return err
	}
	for _, g := range []string{GroupReader, GroupWriter} {
		var ok bool
		if err := s.tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, g).Scan(&ok); err != nil {
			return fmt.Errorf("check group roles: %w", err)
		}
		if !ok {
			return errorf(ErrNotMigrated, "group role %s does not exist: run `vitalproxy migrate up` first", g)
		}
	}
	err = s.tx.QueryRow(ctx, `SELECT to_regclass('vital.pooled_roles') IS NOT NULL AND to_regclass('vital.context_key') IS NOT NULL
		AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, GroupSession).Scan(&s.pooled)
	if err != nil {
		return fmt.Errorf("check context mode tables: %w", err)
	}
	return nil
}

// reconcilePooled brings the pooled roles of context mode to their wanted
// state, records them in vital.pooled_roles and stores the context key.
// allRoles names every tenant and pooled role.
func (s *txState) reconcilePooled(ctx context.Context, allRoles map[string]bool) ([]string, error) {
	var changes []string
	want := s.m.pooledRoles()
	for _, w := range want {
		c, err := s.reconcileRole(ctx, tenantRow{}, w, true, allRoles)
		if err != nil {
			return nil, err
		}
		changes = append(changes, c...)
	}
	names := []string{want[0].name, want[1].name}
	tag, err := s.tx.Exec(ctx, `DELETE FROM vital.pooled_roles WHERE role_name::text <> ALL ($1)`, names)
	if err != nil {
		return nil, fmt.Errorf("remove stale pooled roles: %w", err)
	}
	if tag.RowsAffected() > 0 {
		changes = append(changes, fmt.Sprintf("removed %d stale vital.pooled_roles row(s)", tag.RowsAffected()))
	}
	ikey, okey := auth.ContextKeyPads(auth.ContextKey(s.m.secret))
	var same bool
	err = s.tx.QueryRow(ctx, `SELECT ikey = $1 AND okey = $2 FROM vital.context_key`, ikey, okey).Scan(&same)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if _, err := s.tx.Exec(ctx, `INSERT INTO vital.context_key (ikey, okey) VALUES ($1, $2)`, ikey, okey); err != nil {
			return nil, fmt.Errorf("store the tenant context key: %w", err)
		}
		changes = append(changes, "stored the tenant context key")
	case err != nil:
		return nil, fmt.Errorf("read the tenant context key: %w", err)
	case !same:
		if _, err := s.tx.Exec(ctx, `UPDATE vital.context_key SET ikey = $1, okey = $2, updated_at = now()`, ikey, okey); err != nil {
			return nil, fmt.Errorf("store the tenant context key: %w", err)
		}
		changes = append(changes, "replaced the tenant context key (the role secret changed)")
	}
	return changes, nil
}

// roleState is a role's row of pg_roles.
type roleState struct {
	oid                                       uint32
	super, inherit, createRole, createDB      bool
	canLogin, replication, bypassRLS, expires bool
	connLimit                                 int32
}

func (s *txState) roleState(ctx context.Context, name string) (roleState, bool, error) {
	var st roleState
	err := s.tx.QueryRow(ctx, `
		SELECT oid, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls,
		       rolvaliduntil IS NOT NULL AND rolvaliduntil <> 'infinity', rolconnlimit
		FROM pg_roles WHERE rolname = $1`, name).Scan(&st.oid, &st.super, &st.inherit, &st.createRole, &st.createDB,
		&st.canLogin, &st.replication, &st.bypassRLS, &st.expires, &st.connLimit)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("read role %s: %w", name, err)
	}
	return st, true, nil
}

// reconcile brings tenant t's login roles to their wanted state and returns
// what it changed. tenantRoles, when not nil, names every tenant role of the
// database: their memberships in t's roles are revoked.
func (s *txState) reconcile(ctx context.Context, t tenantRow, tenantRoles map[string]bool) ([]string, error) {
	login := loginAllowed(t.Status)
	var changes []string
	for _, w := range s.m.wantRoles(t.Slug, t.Type) {
		w.session = s.pooled
		c, err := s.reconcileRole(ctx, t, w, login, tenantRoles)
		if err != nil {
			return nil, err
		}
		changes = append(changes, c...)
	}
	return changes, nil
}

func (s *txState) reconcileRole(ctx context.Context, t tenantRow, w roleSpec, login bool, tenantRoles map[string]bool) ([]string, error) {
	var changes []string
	note := func(format string, args ...any) {
		changes = append(changes, fmt.Sprintf("role %s: ", w.name)+fmt.Sprintf(format, args...))
	}
	ident := quoteIdent(w.name)
	password := auth.RolePassword(s.m.secret, w.name)

	st, found, err := s.roleState(ctx, w.name)
	if err != nil {
		return nil, err
	}
	created := false
	if !found {
		if created, err = s.createRole(ctx, w.name, login, password); err != nil {
			return nil, err
		}
		switch {
		case created && w.pooled:
			changes = append(changes, fmt.Sprintf("created pooled role %s (%s, shared by the tenants in context mode)", w.name, w.cap))
		case created:
			changes = append(changes, fmt.Sprintf("created role %s (tenant %s, %s)", w.name, t.Slug, w.cap))
		}
		if st, found, err = s.roleState(ctx, w.name); err != nil {
			return nil, err
		}
		if !found {
			return nil, fmt.Errorf("role %s vanished right after it was created", w.name)
		}
	}

	// Attributes.
	var fix []string
	flag := func(bad bool, attr string) {
		if bad {
			fix = append(fix, attr)
		}
	}
	flag(st.super, "NOSUPERUSER")
	flag(st.bypassRLS, "NOBYPASSRLS")
	flag(st.createRole, "NOCREATEROLE")
	flag(st.createDB, "NOCREATEDB")
	flag(st.replication, "NOREPLICATION")
	flag(!st.inherit, "INHERIT")
	flag(st.canLogin && !login, "NOLOGIN")
	flag(!st.canLogin && login, "LOGIN")
	flag(st.connLimit != -1, "CONNECTION LIMIT -1")
	flag(st.expires, "VALID UNTIL 'infinity'")
	if len(fix) > 0 {
		if _, err := s.tx.Exec(ctx, "ALTER ROLE "+ident+" WITH "+strings.Join(fix, " ")); err != nil {
			return nil, fmt.Errorf("alter role %s: %w", w.name, err)
		}
		note("set %s", strings.Join(fix, " "))
	}

	// Password: the role was created with it; otherwise compare when the
	// stored verifier is readable, else re-set it (not reported: nothing
	// shows it had drifted).
	if !created {
		ok := false
		if s.canReadAuthid {
			var stored *string
			if err := s.tx.QueryRow(ctx, `SELECT rolpassword FROM pg_authid WHERE oid = $1`, st.oid).Scan(&stored); err != nil {
				return nil, fmt.Errorf("read password of %s: %w", w.name, err)
			}
			ok = stored != nil && verifierMatches(*stored, password)
		}
		if !ok {
			if err := s.setPassword(ctx, w.name, password); err != nil {
				return nil, err
			}
			if s.canReadAuthid {
				note("password reset")
			}
		}
	}

	// Role defaults (ALTER ROLE ... SET, which a role may do to itself):
	// a pooled backend keeps them past the proxy's reset, so a tenant role
	// has none.
	c, err := s.resetSettings(ctx, w.name, st.oid)
	if err != nil {
		return nil, err
	}
	changes = append(changes, c...)

	// Memberships of the role.
	c, err = s.fixMemberships(ctx, w, st.oid, created)
	if err != nil {
		return nil, err
	}
	changes = append(changes, c...)

	// Other tenant roles (and the group roles, which every tenant role is
	// in) must not be members of this one: membership would let them
	// signal its backends and read its sessions' query text.
	if tenantRoles != nil {
		c, err := s.revokeMembers(ctx, w.name, st.oid, tenantRoles)
		if err != nil {
			return nil, err
		}
		changes = append(changes, c...)
	}

	if w.pooled {
		c, err := s.recordPooled(ctx, w)
		return append(changes, c...), err
	}

	// Mapping row.
	var tid, capability string
	err = s.tx.QueryRow(ctx, `SELECT tenant_id::text, capability::text FROM vital.tenant_roles WHERE role_name = $1`, w.name).
		Scan(&tid, &capability)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if _, err := s.tx.Exec(ctx, `INSERT INTO vital.tenant_roles (role_name, tenant_id, capability) VALUES ($1, $2, $3)`,
			w.name, t.ID, string(w.cap)); err != nil {
			return nil, fmt.Errorf("map role %s: %w", w.name, err)
		}
		if !created {
			note("added vital.tenant_roles row")
		}
	case err != nil:
		return nil, fmt.Errorf("read mapping of %s: %w", w.name, err)
	case tid != t.ID || capability != string(w.cap):
		if _, err := s.tx.Exec(ctx, `UPDATE vital.tenant_roles SET tenant_id = $2, capability = $3 WHERE role_name = $1`,
			w.name, t.ID, string(w.cap)); err != nil {
			return nil, fmt.Errorf("map role %s: %w", w.name, err)
		}
		note("repaired vital.tenant_roles row (was tenant %s, %s)", tid, capability)
	}
	return changes, nil
}

// recordPooled makes vital.pooled_roles name w for its capability.
func (s *txState) recordPooled(ctx context.Context, w roleSpec) ([]string, error) {
	var name string
	err := s.tx.QueryRow(ctx, `SELECT role_name::text FROM vital.pooled_roles WHERE capability = $1`, string(w.cap)).Scan(&name)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if _, err := s.tx.Exec(ctx, `INSERT INTO vital.pooled_roles (role_name, capability) VALUES ($1, $2)`, w.name, string(w.cap)); err != nil {
			return nil, fmt.Errorf("record pooled role %s: %w", w.name, err)
		}
		return []string{fmt.Sprintf("role %s: recorded as the pooled %s role", w.name, w.cap)}, nil
	case err != nil:
		return nil, fmt.Errorf("read pooled roles: %w", err)
	case name != w.name:
		if _, err := s.tx.Exec(ctx, `UPDATE vital.pooled_roles SET role_name = $1 WHERE capability = $2`, w.name, string(w.cap)); err != nil {
			return nil, fmt.Errorf("record pooled role %s: %w", w.name, err)
		}
		return []string{fmt.Sprintf("role %s: recorded as the pooled %s role (was %s)", w.name, w.cap, name)}, nil
	}
	return nil, nil
}

// createRole creates a login role with safe attributes and its password
// verifier. It reports false when a concurrent session created the role
// first.
func (s *txState) createRole(ctx context.Context, name string, login bool, password string) (bool, error) {
	verifier, err := auth.NewSCRAMVerifier(password)
	if err != nil {
		return false, err
	}
	lit, err := quoteLiteral(verifier)
	if err != nil {
		return false, err
	}
	loginAttr := "NOLOGIN"
	if login {
		loginAttr = "LOGIN"
	}
	sp, err := s.tx.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("savepoint: %w", err)
	}
	_, err = sp.Exec(ctx, "CREATE ROLE "+quoteIdent(name)+" WITH "+loginAttr+
		" NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1 PASSWORD "+lit)
	if err != nil {
		_ = sp.Rollback(ctx)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "42710" || (pgErr.Code == "23505" && strings.HasPrefix(pgErr.ConstraintName, "pg_authid"))) {
			return false, nil
		}
		return false, fmt.Errorf("create role %s: %w", name, err)
	}
	if err := sp.Commit(ctx); err != nil {
		return false, fmt.Errorf("release savepoint: %w", err)
	}
	return true, nil
}

// setPassword stores a fresh SCRAM verifier of password for role; the
// password itself never leaves this process.
func (s *txState) setPassword(ctx context.Context, role, password string) error {
	verifier, err := auth.NewSCRAMVerifier(password)
	if err != nil {
		return err
	}
	lit, err := quoteLiteral(verifier)
	if err != nil {
		return err
	}
	if _, err := s.tx.Exec(ctx, "ALTER ROLE "+quoteIdent(role)+" WITH PASSWORD "+lit); err != nil {
		return fmt.Errorf("set password of %s: %w", role, err)
	}
	return nil
}

// resetSettings removes the role's defaults, for every database and in
// each database, and reports the names of the settings removed (never their
// values).
func (s *txState) resetSettings(ctx context.Context, role string, oid uint32) ([]string, error) {
	rows, err := s.tx.Query(ctx, `
		SELECT s.setdatabase = 0, coalesce(d.datname::text, ''),
		       array(SELECT split_part(c, '=', 1) FROM unnest(s.setconfig) AS c ORDER BY 1)
		FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase
		WHERE s.setrole = $1 ORDER BY 2`, oid)
	if err != nil {
		return nil, fmt.Errorf("read role defaults of %s: %w", role, err)
	}
	type setting struct {
		all  bool
		db   string
		keys []string
	}
	found, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (setting, error) {
		var st setting
		err := r.Scan(&st.all, &st.db, &st.keys)
		return st, err
	})
	if err != nil {
		return nil, fmt.Errorf("read role defaults of %s: %w", role, err)
	}
	var changes []string
	for _, st := range found {
		stmt, where := "ALTER ROLE "+quoteIdent(role)+" RESET ALL", "in every database"
		if !st.all {
			if st.db == "" {
				continue // the database is being dropped
			}
			stmt = "ALTER ROLE " + quoteIdent(role) + " IN DATABASE " + quoteIdent(st.db) + " RESET ALL"
			where = "in database " + st.db
		}
		if _, err := s.tx.Exec(ctx, stmt); err != nil {
			return nil, fmt.Errorf("reset role defaults of %s %s: %w", role, where, err)
		}
		changes = append(changes, fmt.Sprintf("role %s: removed role defaults for %s %s", role, strings.Join(st.keys, ", "), where))
	}
	return changes, nil
}

// membership is one row of pg_auth_members.
type membership struct {
	role, grantor  string
	admin, inherit bool
}

func (s *txState) memberships(ctx context.Context, oid uint32) ([]membership, error) {
	q := `SELECT g.rolname::text, ''::text, m.admin_option, true
		FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = $1`
	if s.version >= 160000 {
		q = `SELECT g.rolname::text, coalesce(gr.rolname::text, ''), m.admin_option, m.inherit_option
		FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid LEFT JOIN pg_roles gr ON gr.oid = m.grantor
		WHERE m.member = $1`
	}
	rows, err := s.tx.Query(ctx, q, oid)
	if err != nil {
		return nil, fmt.Errorf("read memberships: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (membership, error) {
		var m membership
		err := r.Scan(&m.role, &m.grantor, &m.admin, &m.inherit)
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("read memberships: %w", err)
	}
	return out, nil
}

// grantedBy names the grantor of a membership on servers that record one
// grant per grantor (16+), where REVOKE only removes the named grantor's.
func (s *txState) grantedBy(m membership) string {
	if s.version >= 160000 && m.grantor != "" {
		return " GRANTED BY " + quoteIdent(m.grantor)
	}
	return ""
}

// fixMemberships makes the role a member of exactly its group role, without
// ADMIN OPTION and (on 16+) inheriting its privileges.
func (s *txState) fixMemberships(ctx context.Context, w roleSpec, oid uint32, created bool) ([]string, error) {
	ident := quoteIdent(w.name)
	ms, err := s.memberships(ctx, oid)
	if err != nil {
		return nil, fmt.Errorf("role %s: %w", w.name, err)
	}
	var changes []string
	groups := w.groups()
	inGroup := map[string]bool{}
	for _, m := range ms {
		var stmt, what string
		switch {
		case !slices.Contains(groups, m.role):
			stmt = "REVOKE " + quoteIdent(m.role) + " FROM " + ident + s.grantedBy(m)
			what = "revoked membership in " + m.role
		case m.admin:
			stmt = "REVOKE ADMIN OPTION FOR " + quoteIdent(m.role) + " FROM " + ident + s.grantedBy(m)
			what = "revoked ADMIN OPTION on " + m.role
			inGroup[m.role] = inGroup[m.role] || m.inherit
		case !m.inherit:
			stmt = "GRANT " + quoteIdent(m.role) + " TO " + ident + " WITH INHERIT TRUE" + s.grantedBy(m)
			what = "made membership in " + m.role + " inherit"
			inGroup[m.role] = true
		default:
			inGroup[m.role] = true
			continue
		}
		if _, err := s.tx.Exec(ctx, stmt); err != nil {
			return nil, fmt.Errorf("role %s: %s: %w", w.name, what, err)
		}
		changes = append(changes, fmt.Sprintf("role %s: %s", w.name, what))
	}
	for _, g := range groups {
		if inGroup[g] {
			continue
		}
		if _, err := s.tx.Exec(ctx, "GRANT "+quoteIdent(g)+" TO "+ident); err != nil {
			return nil, fmt.Errorf("grant %s to %s: %w", g, w.name, err)
		}
		if !created {
			changes = append(changes, fmt.Sprintf("role %s: granted membership in %s", w.name, g))
		}
	}
	// Verify: a grant made by a role the connection cannot speak for may
	// have survived the REVOKE.
	ms, err = s.memberships(ctx, oid)
	if err != nil {
		return nil, fmt.Errorf("role %s: %w", w.name, err)
	}
	for _, m := range ms {
		if !slices.Contains(groups, m.role) || m.admin {
			return nil, fmt.Errorf("role %s is still a member of %s after the repair (a grant the administrative user cannot revoke); revoke it as a superuser", w.name, m.role)
		}
	}
	return changes, nil
}

// revokeMembers revokes membership in role from tenant roles and the
// tenant group roles.
func (s *txState) revokeMembers(ctx context.Context, role string, oid uint32, tenantRoles map[string]bool) ([]string, error) {
	names := []string{GroupReader, GroupWriter, GroupSession}
	for r := range tenantRoles {
		names = append(names, r)
	}
	q := `SELECT mem.rolname::text, ''::text, m.admin_option, true
		FROM pg_auth_members m JOIN pg_roles mem ON mem.oid = m.member
		WHERE m.roleid = $1 AND mem.rolname = ANY ($2::text[]) ORDER BY 1`
	if s.version >= 160000 {
		q = `SELECT mem.rolname::text, coalesce(gr.rolname::text, ''), m.admin_option, m.inherit_option
		FROM pg_auth_members m JOIN pg_roles mem ON mem.oid = m.member LEFT JOIN pg_roles gr ON gr.oid = m.grantor
		WHERE m.roleid = $1 AND mem.rolname = ANY ($2::text[]) ORDER BY 1`
	}
	rows, err := s.tx.Query(ctx, q, oid, names)
	if err != nil {
		return nil, fmt.Errorf("read members of %s: %w", role, err)
	}
	members, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (membership, error) {
		var m membership
		err := r.Scan(&m.role, &m.grantor, &m.admin, &m.inherit)
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("read members of %s: %w", role, err)
	}
	var changes []string
	for _, m := range members {
		if _, err := s.tx.Exec(ctx, "REVOKE "+quoteIdent(role)+" FROM "+quoteIdent(m.role)+s.grantedBy(m)); err != nil {
			return nil, fmt.Errorf("revoke %s from %s: %w", role, m.role, err)
		}
		changes = append(changes, fmt.Sprintf("role %s: revoked its membership granted to %s", role, m.role))
	}
	return changes, nil
}

// maxVerifyIterations bounds the work of checking a stored verifier; one
// with more iterations than this is treated as drift and replaced.
const maxVerifyIterations = 100000

// verifierMatches reports whether stored is a SCRAM-SHA-256 verifier (in
// PostgreSQL's format) of password.
func verifierMatches(stored, password string) bool {
	rest, ok := strings.CutPrefix(stored, "SCRAM-SHA-256$")
	if !ok {
		return false
	}
	params, _, ok := strings.Cut(rest, "$")
	if !ok {
		return false
	}
	iterStr, saltB64, ok := strings.Cut(params, ":")
	if !ok {
		return false
	}
	iter, err := strconv.Atoi(iterStr)
	if err != nil || iter < 1 || iter > maxVerifyIterations {
		return false
	}
	salt, err := base64.StdEncoding.DecodeString(saltB64)
	if err != nil || len(salt) == 0 {
		return false
	}
	want, err := auth.SCRAMVerifier(password, salt, iter)
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(want), []byte(stored)) == 1
}
