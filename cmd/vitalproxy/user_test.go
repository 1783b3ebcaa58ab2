package main

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/auth"
)

// storedVerifier reads a user's verifier straight from the table.
func (e *cliEnv) storedVerifier(t *testing.T, name string) string {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var v string
	if err := conn.QueryRow(context.Background(), `SELECT password FROM vital.proxy_users WHERE name = $1`, name).Scan(&v); err != nil {
		t.Fatalf("verifier of %s: %v", name, err)
	}
	return v
}

// verifies reports whether verifier (PostgreSQL's format) is one of
// password, by recomputing it with the stored salt and iteration count.
func verifies(t *testing.T, verifier, password string) bool {
	t.Helper()
	rest, ok := strings.CutPrefix(verifier, "SCRAM-SHA-256$")
	if !ok {
		t.Fatalf("not a SCRAM-SHA-256 verifier: %.20q", verifier)
	}
	params, _, _ := strings.Cut(rest, "$")
	iter, salt64, _ := strings.Cut(params, ":")
	salt, err := base64.StdEncoding.DecodeString(salt64)
	if err != nil || iter != "4096" {
		t.Fatalf("bad verifier parameters %q", params)
	}
	want, err := auth.SCRAMVerifier(password, salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	return want == verifier
}

func TestUserCommands(t *testing.T) {
	e := newCLIEnv(t)
	e.mustRun(t, "", "tenant", "add", "--slug", "acme", "--name", "Acme", "--type", "client")
	e.mustRun(t, "", "tenant", "add", "--slug", "globex", "--name", "Globex", "--type", "industry")
	// vital-platform (a platform tenant) is seeded by the migrations.
	const (
		alicePW = "alice-secret-pw"
		newPW   = "alice-new-secret"
		rootPW  = "root-secret-pw"
	)
	steps := []struct {
		name, stdin string
		args        []string
		wantErr     string
		want        []string
		check       func(t *testing.T)
	}{
		{name: "add", stdin: alicePW + "\n", args: []string{"user", "add", "alice", "--tenant", "acme", "--tenant", "globex", "--pool-mode", "transaction"},
			want: []string{"added user alice (tenants: acme, globex)"},
			check: func(t *testing.T) {
				if v := e.storedVerifier(t, "alice"); !verifies(t, v, alicePW) || verifies(t, v, "other") {
					t.Fatal("stored verifier does not match exactly the password")
				}
			}},
		{name: "add/platform-admin", stdin: rootPW, args: []string{"user", "add", "root", "--tenant", "vital-platform", "--platform-admin"},
			want: []string{"added user root"}},
		{name: "add/read-only", stdin: "ro-secret-pw\r\n", args: []string{"user", "add", "reader", "--tenant", "globex,acme", "--read-only"},
			check: func(t *testing.T) {
				if !verifies(t, e.storedVerifier(t, "reader"), "ro-secret-pw") {
					t.Fatal("CRLF not stripped")
				}
			}},
		{name: "add/duplicate", stdin: "x-secret\n", args: []string{"user", "add", "alice", "--tenant", "acme"}, wantErr: `user "alice" already exists`},
		{name: "add/unknown-tenant", stdin: "x-secret\n", args: []string{"user", "add", "bob", "--tenant", "nope"}, wantErr: `unknown tenant "nope"`},
		{name: "add/admin-client", stdin: "x-secret\n", args: []string{"user", "add", "bob", "--tenant", "acme", "--platform-admin"},
			wantErr: `platform admin is only for platform tenants, and tenant "acme" is of type client`},
		{name: "add/bad-pool-mode", stdin: "x-secret\n", args: []string{"user", "add", "bob", "--tenant", "acme", "--pool-mode", "statement"},
			wantErr: `invalid pool mode "statement": must be session or transaction`},
		{name: "add/empty-password", stdin: "\n", args: []string{"user", "add", "bob", "--tenant", "acme"}, wantErr: "empty password refused"},
		{name: "add/no-tenant", stdin: "x-secret\n", args: []string{"user", "add", "bob"}, wantErr: `user "bob" needs at least one tenant (or a console role)`},
		{name: "list", args: []string{"user", "list"},
			want: []string{"NAME", "TENANTS", "alice", "acme,globex", "transaction", "root", "vital-platform", "true", "reader", "globex,acme", "default"},
			check: func(t *testing.T) {
				out := e.outputs[len(e.outputs)-2]
				if strings.Contains(out, "SCRAM") {
					t.Fatalf("user list shows a verifier:\n%s", out)
				}
			}},
		{name: "set-password", stdin: newPW + "\n", args: []string{"user", "set-password", "alice"},
			want: []string{"changed the password of user alice"},
			check: func(t *testing.T) {
				if v := e.storedVerifier(t, "alice"); !verifies(t, v, newPW) || verifies(t, v, alicePW) {
					t.Fatal("password not replaced")
				}
			}},
		{name: "set-password/unknown", stdin: "x-secret\n", args: []string{"user", "set-password", "ghost"}, wantErr: `unknown user "ghost"`},
		{name: "set-password/empty", stdin: "", args: []string{"user", "set-password", "alice"}, wantErr: "empty password refused"},
		{name: "remove", args: []string{"user", "remove", "reader"}, want: []string{"removed user reader"}},
		{name: "remove/unknown", args: []string{"user", "remove", "reader"}, wantErr: `unknown user "reader"`},
		{name: "list/after-remove", args: []string{"user", "list"},
			check: func(t *testing.T) {
				if out := e.outputs[len(e.outputs)-2]; strings.Contains(out, "reader") {
					t.Fatalf("removed user listed:\n%s", out)
				}
			}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			out, err := e.run(t, st.stdin, st.args...)
			switch {
			case st.wantErr == "" && err != nil:
				t.Fatalf("%v: %v", st.args, err)
			case st.wantErr != "" && err == nil:
				t.Fatalf("%v succeeded, want error %q", st.args, st.wantErr)
			case st.wantErr != "" && !strings.HasPrefix(err.Error(), st.wantErr):
				t.Fatalf("%v: error %q, want %q", st.args, err.Error(), st.wantErr)
			}
			for _, w := range st.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if st.check != nil {
				st.check(t)
			}
		})
	}
	e.checkNoSecrets(t, alicePW, newPW, rootPW, "ro-secret-pw", "x-secret", string(cliSecret),
		base64.StdEncoding.EncodeToString(cliSecret))
}
