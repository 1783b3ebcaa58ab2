package integration_test

import (
	"context"
	"net/url"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/userstore"
)

// TestConsoleStoreUser: a console role given with `vitalproxy user add
// --console` (the user store) reaches the console like a config-file
// console user: a stats user sees SHOW and may not PAUSE; a store user
// without a console role is refused.
func TestConsoleStoreUser(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	ctx := testCtx(t)
	admin, err := pgx.Connect(ctx, f.c.URL(f.db))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	add := func(name, console string, tenants ...string) {
		v, err := auth.NewSCRAMVerifier(name + "-pw")
		if err != nil {
			t.Fatal(err)
		}
		if err := userstore.Add(ctx, admin, userstore.User{Name: name, Verifier: v, Tenants: tenants, Console: console}); err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
		t.Cleanup(func() { _ = userstore.Remove(context.Background(), admin, name) })
	}
	add("storewatch", "stats")
	add("storeapp", "", dhSlug)

	cfg := consoleConfig(t)
	p := startProxy(t, cfg)
	consoleURL := func(user string) string {
		u := url.URL{Scheme: "postgres", User: url.UserPassword(user, user+"-pw"), Host: p.addr,
			Path: "/" + consoleDB, RawQuery: "sslmode=disable"}
		return u.String()
	}
	c, err := pgx.Connect(ctx, consoleURL("storewatch"))
	if err != nil {
		t.Fatalf("store console user: %v", err)
	}
	defer c.Close(context.Background())
	found := false
	for _, r := range consoleRows(t, c, "SHOW TENANTS") {
		found = found || r["tenant"] == dhSlug
	}
	if !found {
		t.Errorf("SHOW TENANTS as a store stats user lacks %s", dhSlug)
	}
	if _, err := c.Exec(ctx, "PAUSE TENANT "+dhSlug); sqlstate(err) != "42501" {
		t.Errorf("PAUSE as a store stats user: %v, want SQLSTATE 42501", err)
	}
	if err := tryConnect(ctx, consoleURL("storeapp")); sqlstate(err) != "28000" {
		t.Errorf("a store user without a console role reached the console: %v, want SQLSTATE 28000", err)
	}
}

// TestConsoleLoginsBounded: connections to the console database count in
// no client limit, so those still logging in are bounded: past the bound
// the next one is refused (53300) while tenant clients keep connecting.
func TestConsoleLoginsBounded(t *testing.T) {
	noLeaks(t)
	cfg := consoleConfig(t)
	p := startProxy(t, cfg)
	ctx := testCtx(t)
	for i := 0; i < 16; i++ {
		r := dialRaw(t, p.addr)
		r.startup(map[string]string{"user": "ops", "database": consoleDB})
		msg, err := r.receive()
		if err != nil {
			t.Fatalf("console login %d: %v", i, err)
		}
		if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
			t.Fatalf("console login %d: got %T, want the SASL challenge", i, msg)
		}
	}
	r := dialRaw(t, p.addr)
	r.startup(map[string]string{"user": "ops", "database": consoleDB})
	r.expectFatal("53300")
	if err := tryConnect(ctx, p.url("alice", "alice-pw")); err != nil {
		t.Errorf("a tenant client while console logins are pending: %v", err)
	}
}
