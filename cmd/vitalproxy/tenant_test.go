package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// cliSecret is the role secret the CLI tests configure.
var cliSecret = []byte("cli-test-secret-0123456789abcdef")

var cliPrefixSeq atomic.Int64

// cliEnv is a migrated database and the environment the CLI reads.
type cliEnv struct {
	c      *pgtest.Cluster
	db     string
	url    string
	prefix string
	// outputs collects everything the commands printed or returned, for
	// the secrets check.
	outputs []string
}

func newCLIEnv(t *testing.T) *cliEnv {
	t.Helper()
	c := pgtest.Shared(t)
	db := c.NewDatabase(t)
	m, err := migrations.New(c.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Up(context.Background()); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	e := &cliEnv{c: c, db: db, url: c.URL(db), prefix: fmt.Sprintf("c%d_", cliPrefixSeq.Add(1))}
	t.Setenv("VITALPROXY_CONFIG", "")
	t.Setenv("VITALPROXY_DATABASE_URL", e.url)
	t.Setenv("VITALPROXY_ROLE_SECRET", base64.StdEncoding.EncodeToString(cliSecret))
	t.Setenv("VITALPROXY_ROLE_PREFIX", e.prefix)
	// Roles for the tenants the migrations seed.
	e.mustRun(t, "", "tenant", "sync")
	return e
}

// run executes the CLI in-process with stdin and returns what it printed
// and the error main would print.
func (e *cliEnv) run(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCommand()
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	err := root.ExecuteContext(context.Background())
	e.outputs = append(e.outputs, out.String(), errOut.String())
	if err != nil {
		e.outputs = append(e.outputs, err.Error())
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error has several lines: %q", args, err.Error())
		}
	}
	return out.String() + errOut.String(), err
}

func (e *cliEnv) mustRun(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := e.run(t, stdin, args...)
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return out
}

func (e *cliEnv) sql(t *testing.T, sql string) {
	t.Helper()
	if err := e.c.Exec(context.Background(), e.db, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (e *cliEnv) role(slug string, c auth.Capability) string { return auth.RoleName(e.prefix, slug, c) }

func (e *cliEnv) login(role string) error {
	pc, err := pgconn.Connect(context.Background(), e.c.URLFor(role, auth.RolePassword(cliSecret, role), e.db))
	if err == nil {
		pc.Close(context.Background())
	}
	return err
}

// checkNoSecrets fails if any output or error holds one of secrets.
func (e *cliEnv) checkNoSecrets(t *testing.T, secrets ...string) {
	t.Helper()
	all := strings.Join(e.outputs, "\n")
	for _, s := range secrets {
		if s != "" && strings.Contains(all, s) {
			t.Errorf("a secret (%d bytes) appears in the CLI's output", len(s))
		}
	}
}

func TestTenantCommands(t *testing.T) {
	e := newCLIEnv(t)
	steps := []struct {
		name    string
		args    []string
		env     map[string]string
		sql     string
		wantErr string
		want    []string
		check   func(t *testing.T)
	}{
		{name: "add/client", args: []string{"tenant", "add", "--slug", "acme", "--name", "Acme Pharma", "--type", "client"},
			want: []string{"added tenant acme (client, tier starter, id ", "login roles: " + e.role("acme", auth.ReadWrite) + ", " + e.role("acme", auth.ReadOnly)},
			check: func(t *testing.T) {
				for _, c := range []auth.Capability{auth.ReadWrite, auth.ReadOnly} {
					if err := e.login(e.role("acme", c)); err != nil {
						t.Errorf("login as %s: %v", e.role("acme", c), err)
					}
				}
			}},
		{name: "add/platform", args: []string{"tenant", "add", "--slug", "pharma-platform", "--name", "Pharma", "--type", "platform", "--tier", "enterprise"},
			want: []string{e.role("pharma-platform", auth.Admin)},
			check: func(t *testing.T) {
				if err := e.login(e.role("pharma-platform", auth.Admin)); err != nil {
					t.Error(err)
				}
			}},
		{name: "add/duplicate", args: []string{"tenant", "add", "--slug", "acme", "--name", "Again", "--type", "client"},
			wantErr: `tenant "acme" already exists`},
		{name: "add/bad-type", args: []string{"tenant", "add", "--slug", "x", "--name", "X", "--type", "galaxy"},
			wantErr: `invalid tenant type "galaxy": must be one of client, solution, industry, platform`},
		{name: "add/bad-slug", args: []string{"tenant", "add", "--slug", "Bad_Slug", "--name", "X", "--type", "client"},
			wantErr: `invalid tenant slug "Bad_Slug": use 1 to 63 lower-case letters, digits and '-', starting with a letter or digit`},
		{name: "add/bad-tier", args: []string{"tenant", "add", "--slug", "x", "--name", "X", "--type", "client", "--tier", "gold"},
			wantErr: `invalid subscription tier "gold": must be one of free, starter, professional, enterprise`},
		{name: "add/missing-flag", args: []string{"tenant", "add", "--slug", "x", "--type", "client"},
			wantErr: `required flag(s) "name" not set`},
		{name: "list", args: []string{"tenant", "list"},
			want: []string{"SLUG", "acme", "Acme Pharma", "client", "starter", "active", e.role("acme", auth.ReadWrite) + "," + e.role("acme", auth.ReadOnly),
				"pharma-platform", "enterprise"}},
		{name: "sync/clean", args: []string{"tenant", "sync"}, want: []string{"tenant roles are in sync: nothing changed"}},
		{name: "sync/drift", sql: "ALTER ROLE " + e.role("acme", auth.ReadOnly) + " BYPASSRLS; GRANT pg_read_all_data TO " + e.role("acme", auth.ReadWrite),
			args: []string{"tenant", "sync"},
			want: []string{
				"role " + e.role("acme", auth.ReadOnly) + ": set NOBYPASSRLS",
				"role " + e.role("acme", auth.ReadWrite) + ": revoked membership in pg_read_all_data",
				"2 change(s)",
			}},
		{name: "suspend", args: []string{"tenant", "suspend", "acme"}, want: []string{"suspended tenant acme"},
			check: func(t *testing.T) {
				if err := e.login(e.role("acme", auth.ReadWrite)); err == nil {
					t.Error("a suspended tenant's role logged in")
				}
			}},
		{name: "list/suspended", args: []string{"tenant", "list"}, want: []string{"suspended"}},
		{name: "resume", args: []string{"tenant", "resume", "acme"}, want: []string{"resumed tenant acme"},
			check: func(t *testing.T) {
				if err := e.login(e.role("acme", auth.ReadWrite)); err != nil {
					t.Error(err)
				}
			}},
		{name: "suspend/unknown", args: []string{"tenant", "suspend", "nope"}, wantErr: `unknown tenant "nope"`},
		{name: "suspend/no-arg", args: []string{"tenant", "suspend"}, wantErr: "accepts 1 arg(s), received 0"},
		{name: "no-secret/add", env: map[string]string{"VITALPROXY_ROLE_SECRET": ""},
			args:    []string{"tenant", "add", "--slug", "nosecret", "--name", "X", "--type", "client"},
			wantErr: "vitalproxy tenant add needs the role secret (tenant role passwords derive from it): set role_secret (VITALPROXY_ROLE_SECRET, base64) or role_secret_file"},
		{name: "no-secret/sync", env: map[string]string{"VITALPROXY_ROLE_SECRET": ""}, args: []string{"tenant", "sync"},
			wantErr: "vitalproxy tenant sync needs the role secret"},
		{name: "no-secret/list", env: map[string]string{"VITALPROXY_ROLE_SECRET": ""}, args: []string{"tenant", "list"}, want: []string{"acme"}},
		{name: "no-secret/suspend", env: map[string]string{"VITALPROXY_ROLE_SECRET": ""}, args: []string{"tenant", "suspend", "acme"}},
		{name: "no-secret/resume", env: map[string]string{"VITALPROXY_ROLE_SECRET": ""}, args: []string{"tenant", "resume", "acme"}},
		{name: "flag/database-url", env: map[string]string{"VITALPROXY_DATABASE_URL": ""},
			args: []string{"tenant", "list", "--database-url", e.url}, want: []string{"acme"}},
		{name: "no-database-url", env: map[string]string{"VITALPROXY_DATABASE_URL": ""}, args: []string{"tenant", "list"},
			wantErr: "no database URL: pass --database-url or set VITALPROXY_DATABASE_URL"},
		{name: "bad-password-url", env: map[string]string{"VITALPROXY_DATABASE_URL": e.c.URLFor(e.c.User, "wrong-db-password", e.db)},
			args: []string{"tenant", "list"}, wantErr: "connect to the database: "},
		{name: "sync/after-all", args: []string{"tenant", "sync"}, want: []string{"nothing changed"}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			for k, v := range st.env {
				t.Setenv(k, v)
			}
			if st.sql != "" {
				e.sql(t, st.sql)
			}
			out, err := e.run(t, "", st.args...)
			switch {
			case st.wantErr == "" && err != nil:
				t.Fatalf("%v: %v", st.args, err)
			case st.wantErr != "" && err == nil:
				t.Fatalf("%v succeeded, want error %q; output:\n%s", st.args, st.wantErr, out)
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
	secrets := []string{string(cliSecret), base64.StdEncoding.EncodeToString(cliSecret), "wrong-db-password", e.c.Password}
	for _, slug := range []string{"acme", "pharma-platform", "vital-platform", "digital-health-startup"} {
		for _, c := range []auth.Capability{auth.ReadWrite, auth.ReadOnly, auth.Admin} {
			secrets = append(secrets, auth.RolePassword(cliSecret, e.role(slug, c)))
		}
	}
	e.checkNoSecrets(t, secrets...)
}

func TestTenantHelp(t *testing.T) {
	var out bytes.Buffer
	root := newRootCommand()
	root.SetArgs([]string{"tenant"})
	root.SetOut(&out)
	root.SetErr(io.Discard)
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"add", "list", "suspend", "resume", "sync"} {
		if !strings.Contains(out.String(), sub) {
			t.Errorf("help lacks %s", sub)
		}
	}
}
