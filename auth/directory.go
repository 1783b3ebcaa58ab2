package auth

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/config"
)

// User is a proxy user: who may log in, with which verifier, to which
// tenants and with which capability.
type User struct {
	Name string
	// Verifier is a SCRAM-SHA-256 verifier in PostgreSQL's format, or an
	// md5 hash ("md5" + hex) for md5 authentication.
	Verifier      string
	Tenants       []string // slugs; the first is the default
	ReadOnly      bool
	PlatformAdmin bool
	PoolMode      string // "", "session" or "transaction"
	// Console is the user's console role (config.ConsoleAdmin or
	// config.ConsoleStats), or "" when it may not use the console.
	Console string
}

// Tenant is a tenant as the proxy needs it.
type Tenant struct {
	ID     string
	Slug   string
	Type   string
	Status string
}

// Active reports whether clients may connect to the tenant.
func (t Tenant) Active() bool { return t.Status == "active" || t.Status == "trial" }

// Directory is an immutable snapshot of users and tenants. It is safe for
// concurrent use; a reload builds a new one.
type Directory struct {
	users   map[string]*User
	tenants map[string]Tenant
}

// NewDirectory builds a directory. When two users share a name the first
// wins, so config-file users shadow database users.
func NewDirectory(users []User, tenants []Tenant) *Directory {
	d := &Directory{users: make(map[string]*User, len(users)), tenants: make(map[string]Tenant, len(tenants))}
	for i := range users {
		u := users[i]
		if _, dup := d.users[u.Name]; !dup {
			d.users[u.Name] = &u
		}
	}
	for _, t := range tenants {
		d.tenants[t.Slug] = t
	}
	return d
}

// User returns the named user.
func (d *Directory) User(name string) (*User, bool) {
	u, ok := d.users[name]
	return u, ok
}

// Users returns every user in the snapshot, sorted by name.
func (d *Directory) Users() []User {
	out := make([]User, 0, len(d.users))
	for _, u := range d.users {
		out = append(out, *u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Tenant returns the tenant with the slug.
func (d *Directory) Tenant(slug string) (Tenant, bool) {
	t, ok := d.tenants[slug]
	return t, ok
}

// Tenants returns every tenant in the snapshot.
func (d *Directory) Tenants() []Tenant {
	out := make([]Tenant, 0, len(d.tenants))
	for _, t := range d.tenants {
		out = append(out, t)
	}
	return out
}

// Querier runs a query; *pgx.Conn and *pgxpool.Pool satisfy it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// UsersFromConfig converts the config file's users.
func UsersFromConfig(cfg *config.Config) []User {
	out := make([]User, 0, len(cfg.Users))
	for _, u := range cfg.Users {
		out = append(out, User{
			Name:          u.Name,
			Verifier:      string(u.Password),
			Tenants:       u.AllowedTenants(),
			ReadOnly:      u.ReadOnly,
			PlatformAdmin: u.PlatformAdmin,
			PoolMode:      u.PoolMode,
			Console:       u.Console,
		})
	}
	return out
}

// LoadDirectory reads users from the config file and from the database's
// user store (vital.proxy_users), and tenants from public.tenants, through
// the administrative connection.
func LoadDirectory(ctx context.Context, cfg *config.Config, admin Querier) (*Directory, error) {
	users := UsersFromConfig(cfg)
	// console came with migration 20251026000007; to_jsonb reads it where
	// it exists and gives NULL where it does not.
	rows, err := admin.Query(ctx, `SELECT name, password, tenants, read_only, platform_admin, coalesce(pool_mode, ''),
		coalesce(pg_catalog.to_jsonb(u) ->> 'console', '')
		FROM vital.proxy_users u ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("load users from vital.proxy_users: %w", err)
	}
	for rows.Next() {
		var u User
		if err := rows.Scan(&u.Name, &u.Verifier, &u.Tenants, &u.ReadOnly, &u.PlatformAdmin, &u.PoolMode, &u.Console); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load users: %w", err)
		}
		users = append(users, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load users: %w", err)
	}
	rows, err = admin.Query(ctx, `SELECT id::text, slug, type::text, status::text FROM public.tenants`)
	if err != nil {
		return nil, fmt.Errorf("load tenants: %w", err)
	}
	var tenants []Tenant
	for rows.Next() {
		var t Tenant
		if err := rows.Scan(&t.ID, &t.Slug, &t.Type, &t.Status); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load tenants: %w", err)
		}
		tenants = append(tenants, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load tenants: %w", err)
	}
	return NewDirectory(users, tenants), nil
}

// SplitUser splits a startup user name "user@tenant-slug" into the user and
// the tenant slug. A name that is itself a known user is taken whole, so
// user names may contain '@'.
func (d *Directory) SplitUser(startupUser string) (user, slug string) {
	if _, ok := d.users[startupUser]; ok {
		return startupUser, ""
	}
	i := strings.LastIndexByte(startupUser, '@')
	if i < 0 {
		return startupUser, ""
	}
	return startupUser[:i], startupUser[i+1:]
}
