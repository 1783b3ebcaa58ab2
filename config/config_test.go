package config_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/vitalproxy/vitalproxy/config"
)

func TestPrecedence(t *testing.T) {
	tests := []struct {
		name       string
		file       string
		env        map[string]string
		flags      []string
		wantListen string
		wantMode   string
	}{
		{name: "default", wantListen: "127.0.0.1:6432", wantMode: "session"},
		{name: "file over default", file: "testdata/full.yaml", wantListen: "127.0.0.1:7000", wantMode: "transaction"},
		{name: "env over file", file: "testdata/full.yaml", env: map[string]string{"VITALPROXY_LISTEN": "127.0.0.1:7001", "VITALPROXY_POOL_MODE": "session"},
			wantListen: "127.0.0.1:7001", wantMode: "session"},
		{name: "flag over env", file: "testdata/full.yaml", env: map[string]string{"VITALPROXY_LISTEN": "127.0.0.1:7001"},
			flags: []string{"--listen=127.0.0.1:7002"}, wantListen: "127.0.0.1:7002", wantMode: "transaction"},
		{name: "unset flag does not override", file: "testdata/full.yaml", flags: []string{}, wantListen: "127.0.0.1:7000", wantMode: "transaction"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("VITALPROXY_CONFIG", "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			fs.String("listen", "", "")
			if err := fs.Parse(tc.flags); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(config.Options{File: tc.file, Flags: fs, FlagKeys: map[string]string{"listen": "listen"}})
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Listen != tc.wantListen || cfg.Pool.Mode != tc.wantMode {
				t.Errorf("listen %q mode %q, want %q %q", cfg.Listen, cfg.Pool.Mode, tc.wantListen, tc.wantMode)
			}
		})
	}
}

func TestFileValues(t *testing.T) {
	t.Setenv("VITALPROXY_CONFIG", "")
	cfg, err := config.Load(config.Options{File: "testdata/full.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Pool.QueueTimeout != 5*time.Second || len(cfg.Users) != 2 || !cfg.Users[1].ReadOnly ||
		cfg.Tenants["digital-health-startup"].MaxServerConns != 5 || cfg.Upstream.AdminURL != cfg.DatabaseURL {
		t.Errorf("unexpected config: %+v", cfg)
	}
	if got := cfg.Users[1].AllowedTenants(); len(got) != 2 {
		t.Errorf("analyst tenants = %v", got)
	}
	if err := cfg.RequireServe(); err != nil {
		t.Errorf("RequireServe: %v", err)
	}
	// Secrets never print.
	for _, s := range []string{fmt.Sprintf("%v", cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg)} {
		if strings.Contains(s, "file-secret") || strings.Contains(s, "ZmlsZS1yb2xl") || strings.Contains(s, "c3RvcmVk") {
			t.Errorf("a secret is printed: %s", s)
		}
	}
}

func TestInvalid(t *testing.T) {
	tests := []struct {
		name, file string
		env        map[string]string
		want       []string
	}{
		{name: "plaintext password", file: "testdata/plaintext_password.yaml", want: []string{"must be a SCRAM-SHA-256 verifier"}},
		{name: "unknown key", file: "testdata/unknown_key.yaml", want: []string{"lisen"}},
		{name: "bad values", file: "testdata/bad_values.yaml",
			want: []string{"pool.mode", "log.format", "cleartext passwords are only accepted over TLS"}},
		{name: "bad topology", file: "testdata/bad_topology.yaml",
			want: []string{`upstream.hosts[0]: "h3:70000" is not a valid port`, `upstream.hosts[1]: "postgres://h4" is not a plain host`,
				"upstream.health_interval must be positive", "upstream.health_timeout must be positive",
				"upstream.failover_timeout must not be negative", "replica.max_lag_bytes must not be negative",
				"replica.max_lag must not be negative", `replica.fallback must be primary or error, not "standby"`,
				`user "reader": route must be primary or replica`, "tenants.digital-health-startup.route must be primary or replica"}},
		{name: "missing file", file: "testdata/nope.yaml", want: []string{"read config file"}},
		{name: "bad secret", env: map[string]string{"VITALPROXY_ROLE_SECRET": "not base64!"}, want: []string{"role_secret is not valid base64"}},
		{name: "short secret", env: map[string]string{"VITALPROXY_ROLE_SECRET": "c2hvcnQ="}, want: []string{"at least 16 bytes"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("VITALPROXY_CONFIG", "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := config.Load(config.Options{File: tc.file})
			if err == nil {
				t.Fatal("invalid config accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error reveals the password: %v", err)
			}
		})
	}
}

func TestRequire(t *testing.T) {
	t.Setenv("VITALPROXY_CONFIG", "")
	cfg, err := config.Load(config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.RequireDatabaseURL(); err == nil || !strings.Contains(err.Error(), "--database-url") {
		t.Errorf("RequireDatabaseURL = %v", err)
	}
	err = cfg.RequireServe()
	for _, w := range []string{"upstream.url", "role_secret", "admin connection"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("RequireServe = %v, want it to mention %s", err, w)
		}
	}
	t.Setenv("VITALPROXY_DATABASE_URL", "postgres://u:topsecret@/db")
	cfg, _ = config.Load(config.Options{})
	if err := cfg.RequireDatabaseURL(); err == nil || strings.Contains(err.Error(), "topsecret") {
		t.Errorf("URL without host: %v", err)
	}
	// A Unix socket directory as libpq's host parameter is a host.
	t.Setenv("VITALPROXY_DATABASE_URL", "postgres://u@/db?host=/run/postgresql&port=5433")
	cfg, _ = config.Load(config.Options{})
	if err := cfg.RequireDatabaseURL(); err != nil {
		t.Errorf("URL with a socket directory as host parameter: %v", err)
	}
	for _, raw := range []string{
		"postgres://u:topsecret@h/db",
		"postgres://u@h/db?password=topsecret",
		"postgres://u@/db?host=/run/postgresql&password=topsecret&sslpassword=topsecret",
		"postgres://u:topsecret@h1:5432,h2:5433/db",
		"host=h1,h2 user=u password=topsecret dbname=db",
		"host=h user=u password = 'top secret' sslpassword=topsecret",
	} {
		got := config.Redacted(raw)
		if strings.Contains(got, "topsecret") || strings.Contains(got, "top secret") || !strings.Contains(got, "xxxxx") {
			t.Errorf("Redacted(%s) = %s", raw, got)
		}
	}
}

func TestConsoleUsersAndSettings(t *testing.T) {
	t.Setenv("VITALPROXY_CONFIG", "")
	t.Setenv("VITALPROXY_CONSOLE_DATABASE", "")
	c, err := config.Load(config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Console.Database != "vitalproxy" {
		t.Fatalf("console.database default %q", c.Console.Database)
	}
	v := config.Secret("SCRAM-SHA-256$4096:c2FsdA==$a:b")
	c.Users = []config.User{{Name: "ops", Password: v, Console: config.ConsoleAdmin}}
	if err := c.Validate(); err != nil {
		t.Fatalf("a console-only user without tenants: %v", err)
	}
	c.Users = []config.User{{Name: "ops", Password: v, Console: "root"}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "console must be admin or stats") {
		t.Fatalf("console: root: %v", err)
	}
	c.Users = nil
	c.RoleSecret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"
	c.Upstream.URL = "postgres://u:hunter2@db/app"
	for _, kv := range c.Settings() {
		if strings.Contains(kv[1], "hunter2") || strings.Contains(kv[1], string(c.RoleSecret)) {
			t.Errorf("Settings leaks a secret: %v", kv)
		}
	}
}

func TestTopologySettings(t *testing.T) {
	t.Setenv("VITALPROXY_CONFIG", "")
	cfg, err := config.Load(config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	u := cfg.Upstream
	if len(u.Hosts) != 0 || u.HealthInterval != time.Second || u.HealthTimeout != time.Second || u.FailoverTimeout != 30*time.Second {
		t.Errorf("upstream defaults: %+v", u)
	}
	if r := cfg.Replica; r.MaxLagBytes != 16<<20 || r.MaxLag != 5*time.Second || r.Fallback != config.FallbackPrimary {
		t.Errorf("replica defaults: %+v", r)
	}

	t.Setenv("VITALPROXY_UPSTREAM_HOSTS", "h2:5433,[::1]:5434,h4")
	t.Setenv("VITALPROXY_REPLICA_FALLBACK", "error")
	cfg, err = config.Load(config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.Upstream.Hosts, " "); got != "h2:5433 [::1]:5434 h4" || cfg.Replica.Fallback != config.FallbackError {
		t.Errorf("from the environment: hosts %q, fallback %q", got, cfg.Replica.Fallback)
	}

	cfg.Tenants = map[string]config.TenantSettings{"t1": {Route: config.RouteReplica}}
	tests := []struct {
		user config.User
		slug string
		want string
	}{
		{config.User{}, "t0", config.RoutePrimary},
		{config.User{}, "t1", config.RouteReplica},
		{config.User{Route: config.RoutePrimary}, "t1", config.RoutePrimary},
		{config.User{Route: config.RouteReplica}, "t0", config.RouteReplica},
	}
	for _, tc := range tests {
		if got := cfg.RouteFor(tc.user, tc.slug); got != tc.want {
			t.Errorf("RouteFor(%+v, %s) = %s, want %s", tc.user.Route, tc.slug, got, tc.want)
		}
	}
}

func TestRequireServeHostList(t *testing.T) {
	tests := []struct {
		url, want string
	}{
		{"postgres://u:hunter2@h1:5432,h2:5433/app", ""},
		{"postgres://u:hunter2@h1:5432,h2:x/app", "upstream.url cannot be parsed: invalid port"},
		{"postgres://u:hunter2@h1:5432,h2:5433/app?sslmode=sometimes", "upstream.url cannot be parsed: failed to configure TLS (sslmode is invalid)"},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			t.Setenv("VITALPROXY_CONFIG", "")
			t.Setenv("VITALPROXY_UPSTREAM_URL", tc.url)
			t.Setenv("VITALPROXY_DATABASE_URL", "postgres://admin@db/app")
			t.Setenv("VITALPROXY_ROLE_SECRET", "ZmlsZS1yb2xlLXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm")
			cfg, err := config.Load(config.Options{})
			if err != nil {
				t.Fatal(err)
			}
			err = cfg.RequireServe()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("RequireServe = %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("RequireServe = %v, want it to mention %q", err, tc.want)
			case err != nil && strings.Contains(err.Error(), "hunter2"):
				t.Errorf("the error reveals the password: %v", err)
			}
		})
	}
}
