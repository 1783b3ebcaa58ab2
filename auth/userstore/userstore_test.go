package userstore_test

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/xdg-go/scram"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/userstore"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func setup(t *testing.T) *pgx.Conn {
	t.Helper()
	c := pgtest.Shared(t)
	db := c.NewDatabase(t)
	migrate(t, c, db)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	// The migrations seed vital-platform (platform) and
	// digital-health-startup.
	_, err = conn.Exec(ctx, `INSERT INTO public.tenants (name, slug, type) VALUES
		('Acme', 'acme', 'client'), ('Globex', 'globex', 'industry')`)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func verifier(t *testing.T, pw string) string {
	t.Helper()
	v, err := auth.NewSCRAMVerifier(pw)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// scramLogin runs a full SCRAM-SHA-256 exchange (xdg-go/scram on both
// sides) of a client knowing password against a server knowing only the
// stored verifier.
func scramLogin(t *testing.T, stored, password string) bool {
	t.Helper()
	creds := parseVerifier(t, stored)
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	if err != nil {
		t.Fatal(err)
	}
	cl, err := scram.SHA256.NewClient("u", password, "")
	if err != nil {
		t.Fatal(err)
	}
	cc, sc := cl.NewConversation(), srv.NewConversation()
	msg := ""
	for !cc.Done() {
		if msg, err = cc.Step(msg); err != nil {
			return false
		}
		if sc.Done() {
			break
		}
		if msg, err = sc.Step(msg); err != nil {
			return false
		}
	}
	return sc.Valid() && cc.Valid()
}

func parseVerifier(t *testing.T, v string) scram.StoredCredentials {
	t.Helper()
	rest, ok := strings.CutPrefix(v, "SCRAM-SHA-256$4096:")
	if !ok {
		t.Fatalf("not a 4096-iteration SCRAM-SHA-256 verifier")
	}
	salt, keys, _ := strings.Cut(rest, "$")
	stored, server, _ := strings.Cut(keys, ":")
	dec := func(s string) []byte {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatalf("decode verifier: %v", err)
		}
		return b
	}
	return scram.StoredCredentials{KeyFactors: scram.KeyFactors{Salt: string(dec(salt)), Iters: 4096},
		StoredKey: dec(stored), ServerKey: dec(server)}
}

func TestRoundTrip(t *testing.T) {
	conn := setup(t)
	ctx := context.Background()
	users := []userstore.User{
		{Name: "alice", Verifier: verifier(t, "alice-pw"), Tenants: []string{"acme", "globex"}, PoolMode: "transaction"},
		{Name: "bob.ro", Verifier: verifier(t, "bob-pw"), Tenants: []string{"globex"}, ReadOnly: true},
		{Name: "ops", Verifier: verifier(t, "ops-pw"), Console: "admin"},
		{Name: "root", Verifier: verifier(t, "root-pw"), Tenants: []string{"vital-platform"}, PlatformAdmin: true, PoolMode: "session"},
		{Name: "watch", Verifier: verifier(t, "watch-pw"), Tenants: []string{"acme"}, Console: "stats"},
	}
	for _, u := range users {
		if err := userstore.Add(ctx, conn, u); err != nil {
			t.Fatalf("Add %s: %v", u.Name, err)
		}
	}
	t.Run("load", func(t *testing.T) {
		got, err := userstore.Load(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(users) {
			t.Fatalf("Load = %+v", got)
		}
		for i, u := range users {
			g := got[i]
			if g.Name != u.Name || g.Verifier != u.Verifier || strings.Join(g.Tenants, ",") != strings.Join(u.Tenants, ",") ||
				g.ReadOnly != u.ReadOnly || g.PlatformAdmin != u.PlatformAdmin || g.PoolMode != u.PoolMode || g.Console != u.Console {
				t.Errorf("user %d = %+v, want %+v", i, g, u)
			}
		}
		if !scramLogin(t, got[0].Verifier, "alice-pw") || scramLogin(t, got[0].Verifier, "wrong") {
			t.Fatal("stored verifier does not authenticate exactly the password")
		}
	})
	t.Run("list/no-verifier", func(t *testing.T) {
		got, err := userstore.List(ctx, conn)
		if err != nil || len(got) != len(users) {
			t.Fatalf("List = %+v, %v", got, err)
		}
		for _, u := range got {
			if u.Verifier != "" {
				t.Errorf("List shows the verifier of %s", u.Name)
			}
		}
	})
	t.Run("set-password", func(t *testing.T) {
		if err := userstore.SetPassword(ctx, conn, "alice", verifier(t, "new-pw")); err != nil {
			t.Fatal(err)
		}
		u, err := userstore.Get(ctx, conn, "alice")
		if err != nil {
			t.Fatal(err)
		}
		if !scramLogin(t, u.Verifier, "new-pw") || scramLogin(t, u.Verifier, "alice-pw") {
			t.Fatal("password not replaced")
		}
		var plain int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM vital.proxy_users WHERE password LIKE '%-pw%'`).Scan(&plain); err != nil || plain != 0 {
			t.Fatalf("plaintext stored? %d %v", plain, err)
		}
	})
	t.Run("remove", func(t *testing.T) {
		if err := userstore.Remove(ctx, conn, "bob.ro"); err != nil {
			t.Fatal(err)
		}
		if _, err := userstore.Get(ctx, conn, "bob.ro"); !errors.Is(err, userstore.ErrUnknownUser) {
			t.Fatalf("Get after Remove = %v", err)
		}
	})
}

func TestRejects(t *testing.T) {
	conn := setup(t)
	ctx := context.Background()
	v := verifier(t, "pw")
	if err := userstore.Add(ctx, conn, userstore.User{Name: "taken", Verifier: v, Tenants: []string{"acme"}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		run     func() error
		want    error
		wantMsg string
	}{
		{name: "add/duplicate", run: func() error {
			return userstore.Add(ctx, conn, userstore.User{Name: "taken", Verifier: v, Tenants: []string{"acme"}})
		}, want: userstore.ErrUserExists, wantMsg: `user "taken" already exists`},
		{name: "add/unknown-tenant", run: func() error {
			return userstore.Add(ctx, conn, userstore.User{Name: "x", Verifier: v, Tenants: []string{"acme", "nope"}})
		}, want: userstore.ErrUnknownTenant, wantMsg: `unknown tenant "nope"`},
		{name: "add/no-tenant", run: func() error {
			return userstore.Add(ctx, conn, userstore.User{Name: "x", Verifier: v})
		}, want: userstore.ErrInvalid},
		{name: "add/bad-console", run: func() error {
			return userstore.Add(ctx, conn, userstore.User{Name: "x", Verifier: v, Console: "root"})
		}, want: userstore.ErrInvalid, wantMsg: `console must be admin or stats, not "root"`},
		{name: "add/twice-tenant", run: func() error {
			return userstore.Add(ctx, conn, userstore.User{Name: "x", Verifier: v, Tenants: []string{"acme", "acme"}})
		}, want: userstore.ErrInvalid},
		{name: "add/admin-not-platform", run: func() error {
			return userstore.Add(ctx, conn, userstore.User{Name: "x", Verifier: v, Tenants: []string{"acme"}, PlatformAdmin: true})
		}, want: userstore.ErrInvalid, wantMsg: `platform admin is only for platform tenants, and tenant "acme" is of type client`},
		{name: "add/admin-read-only", run: func() error {
			return userstore.Add(ctx, conn, userstore.User{Name: "x", Verifier: v, Tenants: []string{"vital-platform"}, PlatformAdmin: true, ReadOnly: true})
		}, want: userstore.ErrInvalid},
		{name: "add/name-at", run: func() error {
			return userstore.Add(ctx, conn, userstore.User{Name: "a@acme", Verifier: v, Tenants: []string{"acme"}})
		}, want: userstore.ErrInvalid},
		{name: "add/plaintext", run: func() error {
			return userstore.Add(ctx, conn, userstore.User{Name: "x", Verifier: "hunter2hunter2", Tenants: []string{"acme"}})
		}, want: userstore.ErrInvalid},
		{name: "add/pool-mode", run: func() error {
			return userstore.Add(ctx, conn, userstore.User{Name: "x", Verifier: v, Tenants: []string{"acme"}, PoolMode: "statement"})
		}, want: userstore.ErrInvalid},
		{name: "remove/unknown", run: func() error { return userstore.Remove(ctx, conn, "ghost") },
			want: userstore.ErrUnknownUser, wantMsg: `unknown user "ghost"`},
		{name: "set-password/unknown", run: func() error { return userstore.SetPassword(ctx, conn, "ghost", v) },
			want: userstore.ErrUnknownUser},
		{name: "set-password/plaintext", run: func() error { return userstore.SetPassword(ctx, conn, "taken", "hunter2") },
			want: userstore.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if tt.wantMsg != "" && err.Error() != tt.wantMsg {
				t.Fatalf("message = %q, want %q", err.Error(), tt.wantMsg)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("message repeats the password: %q", err.Error())
			}
		})
	}
	us, err := userstore.Load(ctx, conn)
	if err != nil || len(us) != 1 {
		t.Fatalf("users after rejects = %+v, %v", us, err)
	}
}

func TestValidateVerifier(t *testing.T) {
	good := "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$" + base64.StdEncoding.EncodeToString(make([]byte, 32)) + ":" +
		base64.StdEncoding.EncodeToString(make([]byte, 32))
	tests := []struct {
		name, v string
		ok      bool
	}{
		{"good", good, true},
		{"generated", verifier(t, "x"), true},
		{"md5", "md5d41d8cd98f00b204e9800998ecf8427e", false},
		{"no-keys", "SCRAM-SHA-256$4096:c2FsdHNhbHQ=", false},
		{"zero-iterations", strings.Replace(good, "4096", "0", 1), false},
		{"short-key", strings.Replace(good, "$AAAA", "$AA==", 1), false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run("verifier/"+tt.name, func(t *testing.T) {
			if err := userstore.ValidateVerifier(tt.v); (err == nil) != tt.ok {
				t.Fatalf("ValidateVerifier = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestRowSecurity(t *testing.T) {
	conn := setup(t)
	ctx := context.Background()
	role := "filtered_user_admin"
	if _, err := conn.Exec(ctx, `CREATE ROLE `+role+` LOGIN PASSWORD 'pw';
		GRANT USAGE ON SCHEMA vital TO `+role+`; GRANT SELECT ON public.tenants TO `+role+`;
		GRANT SELECT, INSERT ON vital.proxy_users TO `+role); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = conn.Exec(context.Background(), `DROP OWNED BY `+role+`; DROP ROLE `+role)
	})
	c := pgtest.Shared(t)
	var db string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	weak, err := pgx.Connect(ctx, c.URLFor(role, "pw", db))
	if err != nil {
		t.Fatal(err)
	}
	defer weak.Close(ctx)
	err = userstore.Add(ctx, weak, userstore.User{Name: "x", Verifier: verifier(t, "pw"), Tenants: []string{"acme"}})
	if !errors.Is(err, userstore.ErrRowSecurity) {
		t.Fatalf("Add = %v", err)
	}
}

func TestNotMigrated(t *testing.T) {
	c := pgtest.Shared(t)
	db := c.NewDatabase(t)
	conn, err := pgx.Connect(context.Background(), c.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := userstore.Load(context.Background(), conn); !errors.Is(err, userstore.ErrNotMigrated) {
		t.Fatalf("Load = %v", err)
	}
}
