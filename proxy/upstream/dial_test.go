package upstream_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/proxy/upstream"
	"github.com/vitalproxy/vitalproxy/test/fixture"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var secret = fixture.Secret

func TestDial(t *testing.T) {
	c := pgtest.Shared(t)
	fx := fixture.New(t)
	db, ids := fx.Name, fx.TenantIDs
	url := c.URLFor("ignored", "ignored", db)
	d, err := upstream.NewDialer(url, func(role string) string { return auth.RolePassword(secret, role) }, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dh := auth.RoleName("vt_", "digital-health-startup", auth.ReadWrite)
	ctx := context.Background()

	tests := []struct {
		name     string
		d        *upstream.Dialer
		role     string
		tenant   string
		wantCode string
	}{
		{"own tenant", d, dh, ids["digital-health-startup"], ""},
		{"no context", d, dh, "", ""},
		{"other tenant is refused", d, dh, ids["vital-platform"], "42501"},
		{"unknown role", d, "vt_nobody_rw", "", "28P01"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := tc.d.Dial(ctx, upstream.Options{Role: tc.role, TenantID: tc.tenant,
				RuntimeParams: map[string]string{"application_name": "dial-test"}})
			if tc.wantCode != "" {
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != tc.wantCode {
					t.Fatalf("err = %v, want SQLSTATE %s", err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Terminate()
			if conn.PID == 0 || len(conn.SecretKey) == 0 || len(conn.Params) == 0 {
				t.Errorf("missing backend data: pid %d key %x params %d", conn.PID, conn.SecretKey, len(conn.Params))
			}
			// The raw connection is usable: hand it to pgconn's frontend.
			cfg, _ := pgconn.ParseConfig(url)
			pc, err := pgconn.Construct(&pgconn.HijackedConn{Conn: conn.Conn, PID: conn.PID, SecretKey: conn.SecretKey,
				ParameterStatuses: map[string]string{}, TxStatus: 'I', Config: cfg})
			if err != nil {
				t.Fatal(err)
			}
			res, err := pc.Exec(ctx, "SELECT session_user, current_tenant_id()::text, current_setting('application_name')").ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			row := res[0].Rows[0]
			if string(row[0]) != tc.role || string(row[1]) != ids["digital-health-startup"] || string(row[2]) != "dial-test" {
				t.Errorf("session: user %s tenant %s app %s", row[0], row[1], row[2])
			}
		})
	}
	// dh's keys and the fake ones PostgreSQL offered for the unknown role.
	before := d.CachedKeys()
	for range 3 {
		conn, err := d.Dial(ctx, upstream.Options{Role: dh, TenantID: ids["digital-health-startup"]})
		if err != nil {
			t.Fatal(err)
		}
		conn.Terminate()
	}
	if after := d.CachedKeys(); before != 2 || after != before {
		t.Errorf("cached keys: %d then %d; want 2 and no new entry for repeated logins", before, after)
	}

	wrong, _ := upstream.NewDialer(url, func(role string) string { return "wrong" }, 10*time.Second)
	_, err = wrong.Dial(ctx, upstream.Options{Role: dh})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Errorf("wrong password: err = %v, want 28P01", err)
	}
	if err != nil && containsAny(err.Error(), "wrong", auth.RolePassword(secret, dh)) {
		t.Errorf("error reveals a password: %v", err)
	}
}

func TestDialUnreachable(t *testing.T) {
	d, err := upstream.NewDialer("postgres://x@127.0.0.1:1/db?sslmode=disable", func(string) string { return "pw" }, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Dial(context.Background(), upstream.Options{Role: "r"}); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if sub != "" && len(s) >= len(sub) {
			for i := 0; i+len(sub) <= len(s); i++ {
				if s[i:i+len(sub)] == sub {
					return true
				}
			}
		}
	}
	return false
}

// TestNewDialerErrorHidesPasswords: a URL pgconn refuses is reported without
// the passwords it carries, in any of the forms libpq accepts (pgconn masks
// them in its message; this keeps that true across upgrades).
func TestNewDialerErrorHidesPasswords(t *testing.T) {
	for _, raw := range []string{
		"postgres://u:topsecret@h/db?sslmode=bogus",
		"postgres://u@h/db?password=topsecret&sslmode=bogus",
		"postgres://u@/db?host=/run/postgresql&sslpassword=topsecret&port=notaport",
		"host=h password=topsecret sslmode=bogus",
		"host=h password='top secret' sslmode=bogus",
	} {
		_, err := upstream.NewDialer(raw, func(string) string { return "" }, time.Second)
		if err == nil {
			t.Errorf("%s: accepted", raw)
			continue
		}
		if strings.Contains(err.Error(), "topsecret") || strings.Contains(err.Error(), "top secret") {
			t.Errorf("error shows the password: %v", err)
		}
		if !strings.Contains(err.Error(), "parse upstream URL") {
			t.Errorf("error %q does not say what failed", err)
		}
	}
}
