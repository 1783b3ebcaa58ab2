// Package userstore keeps proxy users in the database table
// vital.proxy_users: a name, a SCRAM-SHA-256 verifier in PostgreSQL's format
// (never a password), the tenant slugs the user may connect to (the first is
// the default), and the user's capability and pool mode.
//
// The functions take the caller's connection (a *pgx.Conn, pool or
// transaction) and hold no state, so they are safe for concurrent use to the
// extent the connection is.
package userstore

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Sentinel errors, returned wrapped in an error whose message names the user
// or tenant at fault; test for them with errors.Is.
var (
	// ErrUserExists: a user with that name already exists.
	ErrUserExists = errors.New("user already exists")
	// ErrUnknownUser: no user has that name.
	ErrUnknownUser = errors.New("unknown user")
	// ErrUnknownTenant: a tenant slug names no tenant.
	ErrUnknownTenant = errors.New("unknown tenant")
	// ErrInvalid: the user's fields are not acceptable.
	ErrInvalid = errors.New("invalid user")
	// ErrNotMigrated: vital.proxy_users does not exist.
	ErrNotMigrated = errors.New("database not migrated")
	// ErrRowSecurity: row-level security hides tenants from the connection's
	// role, so tenant slugs cannot be checked.
	ErrRowSecurity = errors.New("tenants hidden by row-level security")
)

type detailError struct {
	sentinel error
	msg      string
}

func (e *detailError) Error() string { return e.msg }
func (e *detailError) Unwrap() error { return e.sentinel }

func errorf(sentinel error, format string, args ...any) error {
	return &detailError{sentinel: sentinel, msg: fmt.Sprintf(format, args...)}
}

// Querier runs queries; *pgx.Conn, *pgxpool.Pool and pgx.Tx satisfy it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// DB runs statements and queries; *pgx.Conn, *pgxpool.Pool and pgx.Tx
// satisfy it.
type DB interface {
	Querier
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// User is a proxy user.
type User struct {
	Name string
	// Verifier is the SCRAM-SHA-256 verifier ("SCRAM-SHA-256$<iter>:<salt>$
	// <StoredKey>:<ServerKey>"); List leaves it empty.
	Verifier string
	// Tenants are the slugs the user may connect to; the first is the
	// default.
	Tenants       []string
	ReadOnly      bool
	PlatformAdmin bool
	// PoolMode is "session", "transaction" or "" for the proxy's default.
	PoolMode string
	// Console is the user's operator console role: "admin", "stats" or ""
	// (none). A console user may have no tenants (console only).
	Console string
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,62}$`)

// ValidateName checks a user name: 1 to 63 characters from [A-Za-z0-9_.+-]
// (no '@', which separates a user from a tenant at login).
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return errorf(ErrInvalid, "invalid user name %q: use 1 to 63 letters, digits and '_', '.', '+', '-'", name)
	}
	return nil
}

// ValidateVerifier checks that v is a well-formed SCRAM-SHA-256 verifier in
// PostgreSQL's format. The message never repeats v.
func ValidateVerifier(v string) error {
	bad := errorf(ErrInvalid, "password must be a SCRAM-SHA-256 verifier (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, see `vitalproxy passwd`)")
	rest, ok := strings.CutPrefix(v, "SCRAM-SHA-256$")
	if !ok {
		return bad
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return bad
	}
	iter, salt, ok := strings.Cut(params, ":")
	if !ok {
		return bad
	}
	if n, err := strconv.Atoi(iter); err != nil || n < 1 {
		return bad
	}
	stored, server, ok := strings.Cut(keys, ":")
	if !ok {
		return bad
	}
	for _, part := range []struct {
		s    string
		size int
	}{{salt, 0}, {stored, 32}, {server, 32}} {
		b, err := base64.StdEncoding.DecodeString(part.s)
		if err != nil || len(b) == 0 || (part.size > 0 && len(b) != part.size) {
			return bad
		}
	}
	return nil
}

func validatePoolMode(mode string) error {
	switch mode {
	case "", "session", "transaction":
		return nil
	}
	return errorf(ErrInvalid, "invalid pool mode %q: must be session or transaction", mode)
}

// checkTenants checks that every slug names a tenant and, for a platform
// admin, that every tenant is of type platform.
func checkTenants(ctx context.Context, db DB, u User) error {
	switch u.Console {
	case "", "admin", "stats":
	default:
		return errorf(ErrInvalid, "console must be admin or stats, not %q", u.Console)
	}
	if len(u.Tenants) == 0 {
		if u.Console != "" {
			return nil // a console-only user
		}
		return errorf(ErrInvalid, "user %q needs at least one tenant (or a console role)", u.Name)
	}
	seen := map[string]bool{}
	for _, s := range u.Tenants {
		if seen[s] {
			return errorf(ErrInvalid, "tenant %q is listed twice", s)
		}
		seen[s] = true
	}
	var filtered bool
	if err := db.QueryRow(ctx, `SELECT row_security_active('public.tenants')`).Scan(&filtered); err != nil {
		return fmt.Errorf("look up tenants: %w", err)
	}
	if filtered {
		return errorf(ErrRowSecurity, "row-level security hides tenants from this database user: manage users as a superuser or a role with BYPASSRLS")
	}
	rows, err := db.Query(ctx, `SELECT slug::text, type::text FROM public.tenants WHERE slug = ANY ($1::text[])`, u.Tenants)
	if err != nil {
		return fmt.Errorf("look up tenants: %w", err)
	}
	types := map[string]string{}
	var slug, typ string
	if _, err := pgx.ForEachRow(rows, []any{&slug, &typ}, func() error {
		types[slug] = typ
		return nil
	}); err != nil {
		return fmt.Errorf("look up tenants: %w", err)
	}
	for _, s := range u.Tenants {
		t, ok := types[s]
		switch {
		case !ok:
			return errorf(ErrUnknownTenant, "unknown tenant %q", s)
		case u.PlatformAdmin && t != "platform":
			return errorf(ErrInvalid, "platform admin is only for platform tenants, and tenant %q is of type %s", s, t)
		}
	}
	return nil
}

// checkTable fails with ErrNotMigrated unless vital.proxy_users exists.
func checkTable(ctx context.Context, q Querier) error {
	rows, err := q.Query(ctx, `SELECT to_regclass('vital.proxy_users') IS NOT NULL`)
	if err != nil {
		return fmt.Errorf("check schema: %w", err)
	}
	ok, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[bool])
	if err != nil {
		return fmt.Errorf("check schema: %w", err)
	}
	if !ok {
		return errorf(ErrNotMigrated, "the database has no vital.proxy_users table: run `vitalproxy migrate up` first")
	}
	return nil
}

// Check runs every check Add makes except the verifier's: the name, the
// pool mode, that read-only and platform admin are not combined, that no
// user has the name yet, that the tenants exist and that a platform admin's
// tenants are all of type platform. It lets a caller refuse a user before
// asking for a password.
func Check(ctx context.Context, db DB, u User) error {
	if err := ValidateName(u.Name); err != nil {
		return err
	}
	if err := validatePoolMode(u.PoolMode); err != nil {
		return err
	}
	if u.ReadOnly && u.PlatformAdmin {
		return errorf(ErrInvalid, "a user cannot be both read-only and platform admin")
	}
	if err := checkTable(ctx, db); err != nil {
		return err
	}
	var exists bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM vital.proxy_users WHERE name = $1)`, u.Name).Scan(&exists); err != nil {
		return fmt.Errorf("look up user %q: %w", u.Name, err)
	}
	if exists {
		return userExists(u.Name)
	}
	return checkTenants(ctx, db, u)
}

func userExists(name string) error { return errorf(ErrUserExists, "user %q already exists", name) }

// Add stores a new user after the checks of Check and of ValidateVerifier.
func Add(ctx context.Context, db DB, u User) error {
	if err := ValidateVerifier(u.Verifier); err != nil {
		return err
	}
	if err := Check(ctx, db, u); err != nil {
		return err
	}
	tenants := u.Tenants
	if tenants == nil {
		tenants = []string{}
	}
	_, err := db.Exec(ctx, `
		INSERT INTO vital.proxy_users (name, password, tenants, read_only, platform_admin, pool_mode, console)
		VALUES ($1, $2, $3, $4, $5, NULLIF($6, ''), NULLIF($7, ''))`,
		u.Name, u.Verifier, tenants, u.ReadOnly, u.PlatformAdmin, u.PoolMode, u.Console)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return userExists(u.Name)
	}
	if err != nil {
		return fmt.Errorf("add user %q: %w", u.Name, err)
	}
	return nil
}

// Remove deletes a user.
func Remove(ctx context.Context, db DB, name string) error {
	if err := checkTable(ctx, db); err != nil {
		return err
	}
	tag, err := db.Exec(ctx, `DELETE FROM vital.proxy_users WHERE name = $1`, name)
	if err != nil {
		return fmt.Errorf("remove user %q: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return unknownUser(name)
	}
	return nil
}

func unknownUser(name string) error { return errorf(ErrUnknownUser, "unknown user %q", name) }

// SetPassword replaces a user's verifier.
func SetPassword(ctx context.Context, db DB, name, verifier string) error {
	if err := ValidateVerifier(verifier); err != nil {
		return err
	}
	if err := checkTable(ctx, db); err != nil {
		return err
	}
	tag, err := db.Exec(ctx, `UPDATE vital.proxy_users SET password = $2, updated_at = now() WHERE name = $1`, name, verifier)
	if err != nil {
		return fmt.Errorf("set password of %q: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return unknownUser(name)
	}
	return nil
}

// List returns every user ordered by name, without verifiers.
func List(ctx context.Context, q Querier) ([]User, error) {
	us, err := Load(ctx, q)
	for i := range us {
		us[i].Verifier = ""
	}
	return us, err
}

// Load returns every user ordered by name, with verifiers, for the proxy's
// authenticator.
func Load(ctx context.Context, q Querier) ([]User, error) {
	return load(ctx, q, "")
}

// Get returns one user, with its verifier.
func Get(ctx context.Context, q Querier, name string) (User, error) {
	us, err := load(ctx, q, name)
	if err != nil {
		return User{}, err
	}
	if len(us) == 0 {
		return User{}, unknownUser(name)
	}
	return us[0], nil
}

func load(ctx context.Context, q Querier, name string) ([]User, error) {
	if err := checkTable(ctx, q); err != nil {
		return nil, err
	}
	rows, err := q.Query(ctx, `
		SELECT name, password, tenants, read_only, platform_admin, coalesce(pool_mode, ''),
		       coalesce(pg_catalog.to_jsonb(u) ->> 'console', '')
		FROM vital.proxy_users u WHERE $1 = '' OR name = $1 ORDER BY name`, name)
	if err != nil {
		return nil, fmt.Errorf("load users: %w", err)
	}
	us, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (User, error) {
		var u User
		err := r.Scan(&u.Name, &u.Verifier, &u.Tenants, &u.ReadOnly, &u.PlatformAdmin, &u.PoolMode, &u.Console)
		return u, err
	})
	if err != nil {
		return nil, fmt.Errorf("load users: %w", err)
	}
	return us, nil
}
