// Package config loads vitalproxy's configuration from a YAML file,
// VITALPROXY_* environment variables and command-line flags (in rising order
// of precedence) into one validated, typed Config. Nothing reads viper after
// Load returns.
package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// EnvPrefix prefixes every environment variable: upstream.url is read from
// VITALPROXY_UPSTREAM_URL.
const EnvPrefix = "VITALPROXY"

// Secret is a string that never prints itself.
type Secret string

// String redacts the secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// GoString redacts the secret in %#v.
func (s Secret) GoString() string { return s.String() }

// Config is the whole configuration. It is read-only after Load; a reload
// builds a new Config.
type Config struct {
	// DatabaseURL is the administrative connection used by migrate, tenant,
	// user and check (a role that owns the schema, e.g. a superuser).
	DatabaseURL Secret `mapstructure:"database_url"`
	// Listen is the TCP address the proxy accepts clients on.
	Listen string `mapstructure:"listen"`
	// ListenSocketDir, when set, also accepts clients on a Unix socket
	// .s.PGSQL.<port> in that directory.
	ListenSocketDir string `mapstructure:"listen_socket_dir"`

	Upstream Upstream `mapstructure:"upstream"`

	// RoleSecret is the base64 secret tenant role passwords derive from.
	RoleSecret Secret `mapstructure:"role_secret"`
	// RoleSecretFile names a file holding RoleSecret instead.
	RoleSecretFile string `mapstructure:"role_secret_file"`
	// RolePrefix starts every tenant login role's name.
	RolePrefix string `mapstructure:"role_prefix"`

	TLS     TLS     `mapstructure:"tls"`
	Auth    Auth    `mapstructure:"auth"`
	Metrics Metrics `mapstructure:"metrics"`
	Log     Log     `mapstructure:"log"`
	Limits  Limits  `mapstructure:"limits"`
	Pool    Pool    `mapstructure:"pool"`
	Audit   Audit   `mapstructure:"audit"`
	Probe   Probe   `mapstructure:"probe"`

	// Users are proxy users defined in the file (users may also live in the
	// database, managed by `vitalproxy user`).
	Users []User `mapstructure:"users"`
	// Tenants holds per-tenant overrides keyed by tenant slug.
	Tenants map[string]TenantSettings `mapstructure:"tenants"`

	// File is the config file that was read, if any.
	File string `mapstructure:"-"`
}

// Upstream says where tenant roles log in.
type Upstream struct {
	// URL is the PostgreSQL tenants connect to; its user and password are
	// ignored (they come from the tenant role).
	URL string `mapstructure:"url"`
	// AdminURL is used for the user store, tenant list and audits; never
	// for tenant traffic. Defaults to DatabaseURL.
	AdminURL Secret `mapstructure:"admin_url"`
	// ConnectTimeout bounds one upstream login.
	ConnectTimeout time.Duration `mapstructure:"connect_timeout"`
}

// TLS configures the client-facing TLS listener.
type TLS struct {
	CertFile     string `mapstructure:"cert_file"`
	KeyFile      string `mapstructure:"key_file"`
	ClientCAFile string `mapstructure:"client_ca_file"`
}

// Enabled reports whether a certificate is configured.
func (t TLS) Enabled() bool { return t.CertFile != "" }

// Auth picks the client authentication methods.
type Auth struct {
	// Methods allowed, in preference order: scram-sha-256, md5, password
	// (cleartext, only over TLS), cert.
	Methods []string `mapstructure:"methods"`
}

// Metrics configures the HTTP endpoint with /metrics, /healthz and /readyz.
type Metrics struct {
	Listen string `mapstructure:"listen"`
	// TenantLabelCap bounds distinct tenant label values; the rest are
	// reported as tenant="other".
	TenantLabelCap int `mapstructure:"tenant_label_cap"`
}

// Log configures structured logging.
type Log struct {
	Level  string `mapstructure:"level"`  // debug, info, warn, error
	Format string `mapstructure:"format"` // text or json
}

// Limits bound what a client may cost the proxy.
type Limits struct {
	StartupTimeout   time.Duration `mapstructure:"startup_timeout"`
	MaxStartupPacket int           `mapstructure:"max_startup_packet"`
	MaxMessageSize   int           `mapstructure:"max_message_size"`
	ShutdownTimeout  time.Duration `mapstructure:"shutdown_timeout"`
	MaxClientConns   int           `mapstructure:"max_client_conns"`
}

// Pool configures server connection pooling.
type Pool struct {
	Mode                     string        `mapstructure:"mode"` // session or transaction
	ResetQuery               string        `mapstructure:"reset_query"`
	MaxServerConns           int           `mapstructure:"max_server_conns"`
	MaxServerConnsPerTenant  int           `mapstructure:"max_server_conns_per_tenant"`
	MinIdlePerTenant         int           `mapstructure:"min_idle_per_tenant"`
	QueueTimeout             time.Duration `mapstructure:"queue_timeout"`
	IdleTimeout              time.Duration `mapstructure:"idle_timeout"`
	ServerLifetime           time.Duration `mapstructure:"server_lifetime"`
	StatementTimeout         time.Duration `mapstructure:"statement_timeout"`
	IdleInTransactionTimeout time.Duration `mapstructure:"idle_in_transaction_timeout"`
	MaxClientConnsPerTenant  int           `mapstructure:"max_client_conns_per_tenant"`
}

// Audit schedules the isolation audit.
type Audit struct {
	Interval time.Duration `mapstructure:"interval"`
}

// Probe configures the live isolation probe.
type Probe struct {
	Enabled  bool          `mapstructure:"enabled"`
	Interval time.Duration `mapstructure:"interval"`
}

// User is a proxy user defined in the config file.
type User struct {
	Name string `mapstructure:"name"`
	// Password is a SCRAM-SHA-256 verifier in PostgreSQL's format (or an
	// md5 hash "md5..." for md5 auth). Plain text is refused.
	Password         Secret        `mapstructure:"password"`
	Tenant           string        `mapstructure:"tenant"`
	Tenants          []string      `mapstructure:"tenants"`
	ReadOnly         bool          `mapstructure:"read_only"`
	PlatformAdmin    bool          `mapstructure:"platform_admin"`
	PoolMode         string        `mapstructure:"pool_mode"`
	MaxClientConns   int           `mapstructure:"max_client_conns"`
	StatementTimeout time.Duration `mapstructure:"statement_timeout"`
}

// AllowedTenants returns the tenant slugs the user may connect to.
func (u User) AllowedTenants() []string {
	if u.Tenant != "" {
		return append([]string{u.Tenant}, u.Tenants...)
	}
	return u.Tenants
}

// TenantSettings are per-tenant overrides.
type TenantSettings struct {
	MaxServerConns           int           `mapstructure:"max_server_conns"`
	MinIdle                  int           `mapstructure:"min_idle"`
	MaxClientConns           int           `mapstructure:"max_client_conns"`
	StatementTimeout         time.Duration `mapstructure:"statement_timeout"`
	IdleInTransactionTimeout time.Duration `mapstructure:"idle_in_transaction_timeout"`
	PoolMode                 string        `mapstructure:"pool_mode"`
}

// defaults lists every key with its default, so environment variables work
// for every key (viper only maps env vars onto keys it knows).
var defaults = map[string]any{
	"database_url":                     "",
	"listen":                           "127.0.0.1:6432",
	"listen_socket_dir":                "",
	"upstream.url":                     "",
	"upstream.admin_url":               "",
	"upstream.connect_timeout":         "10s",
	"role_secret":                      "",
	"role_secret_file":                 "",
	"role_prefix":                      "vt_",
	"tls.cert_file":                    "",
	"tls.key_file":                     "",
	"tls.client_ca_file":               "",
	"auth.methods":                     []string{"scram-sha-256"},
	"metrics.listen":                   "127.0.0.1:9930",
	"metrics.tenant_label_cap":         100,
	"log.level":                        "info",
	"log.format":                       "text",
	"limits.startup_timeout":           "15s",
	"limits.max_startup_packet":        10000,
	"limits.max_message_size":          1 << 30,
	"limits.shutdown_timeout":          "30s",
	"limits.max_client_conns":          10000,
	"pool.mode":                        "session",
	"pool.reset_query":                 "DISCARD ALL",
	"pool.max_server_conns":            90,
	"pool.max_server_conns_per_tenant": 0,
	"pool.min_idle_per_tenant":         0,
	"pool.queue_timeout":               "30s",
	"pool.idle_timeout":                "10m",
	"pool.server_lifetime":             "1h",
	"pool.statement_timeout":           "0s",
	"pool.idle_in_transaction_timeout": "0s",
	"pool.max_client_conns_per_tenant": 0,
	"audit.interval":                   "5m",
	"probe.enabled":                    false,
	"probe.interval":                   "30s",
}

// Options says where Load reads from.
type Options struct {
	// File is the YAML config file; empty means none (VITALPROXY_CONFIG is
	// consulted too).
	File string
	// Flags are the command's flags; FlagKeys maps a flag name onto the
	// config key it sets. Only flags the user changed override.
	Flags    *pflag.FlagSet
	FlagKeys map[string]string
}

// Load reads and validates the configuration.
func Load(opts Options) (*Config, error) {
	v := viper.New()
	for k, d := range defaults {
		v.SetDefault(k, d)
	}
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	file := opts.File
	if file == "" {
		file = os.Getenv(EnvPrefix + "_CONFIG")
	}
	if file != "" {
		v.SetConfigFile(file)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("read config file %s: %w", file, err)
		}
	}
	if opts.Flags != nil {
		for name, key := range opts.FlagKeys {
			f := opts.Flags.Lookup(name)
			if f == nil {
				return nil, fmt.Errorf("config: unknown flag %q", name)
			}
			if err := v.BindPFlag(key, f); err != nil {
				return nil, fmt.Errorf("bind flag %s: %w", name, err)
			}
		}
	}
	var c Config
	dec := viper.DecodeHook(mapstructure.ComposeDecodeHookFunc(
		mapstructure.StringToTimeDurationHookFunc(),
		mapstructure.StringToSliceHookFunc(","),
	))
	if err := v.Unmarshal(&c, dec, func(dc *mapstructure.DecoderConfig) { dc.ErrorUnused = true }); err != nil {
		// mapstructure reports on several lines; keep the CLI's one line.
		return nil, fmt.Errorf("config: %s", strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "decoding failed due to the following error(s):", "")), " "))
	}
	c.File = file
	if c.Upstream.AdminURL == "" {
		c.Upstream.AdminURL = c.DatabaseURL
	}
	if c.RoleSecret == "" && c.RoleSecretFile != "" {
		b, err := os.ReadFile(c.RoleSecretFile)
		if err != nil {
			return nil, fmt.Errorf("read role_secret_file: %w", err)
		}
		c.RoleSecret = Secret(strings.TrimSpace(string(b)))
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks settings that are wrong whatever the command.
func (c *Config) Validate() error {
	var errs []error
	if c.RoleSecret != "" {
		if _, err := c.RoleSecretBytes(); err != nil {
			errs = append(errs, err)
		}
	}
	switch c.Pool.Mode {
	case "session", "transaction":
	default:
		errs = append(errs, fmt.Errorf("pool.mode must be session or transaction, not %q", c.Pool.Mode))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format must be text or json, not %q", c.Log.Format))
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level must be debug, info, warn or error, not %q", c.Log.Level))
	}
	for _, m := range c.Auth.Methods {
		switch m {
		case "scram-sha-256", "md5", "password", "cert":
		default:
			errs = append(errs, fmt.Errorf("auth.methods: unknown method %q (scram-sha-256, md5, password, cert)", m))
		}
		if m == "password" && !c.TLS.Enabled() {
			errs = append(errs, errors.New("auth.methods: password (cleartext) needs tls.cert_file: cleartext passwords are only accepted over TLS"))
		}
		if m == "cert" && c.TLS.ClientCAFile == "" {
			errs = append(errs, errors.New("auth.methods: cert needs tls.client_ca_file"))
		}
	}
	if c.TLS.Enabled() != (c.TLS.KeyFile != "") {
		errs = append(errs, errors.New("tls: cert_file and key_file go together"))
	}
	if c.Limits.MaxStartupPacket < 64 || c.Limits.MaxMessageSize < 1024 {
		errs = append(errs, errors.New("limits: max_startup_packet must be at least 64 and max_message_size at least 1024"))
	}
	seen := map[string]bool{}
	for i, u := range c.Users {
		switch {
		case u.Name == "":
			errs = append(errs, fmt.Errorf("users[%d]: name is required", i))
		case seen[u.Name]:
			errs = append(errs, fmt.Errorf("users[%d]: duplicate user %q", i, u.Name))
		case len(u.AllowedTenants()) == 0:
			errs = append(errs, fmt.Errorf("user %q: tenant or tenants is required", u.Name))
		case u.Password == "":
			errs = append(errs, fmt.Errorf("user %q: password (a SCRAM-SHA-256 verifier from `vitalproxy passwd`) is required", u.Name))
		case !strings.HasPrefix(string(u.Password), "SCRAM-SHA-256$") && !strings.HasPrefix(string(u.Password), "md5"):
			errs = append(errs, fmt.Errorf("user %q: password must be a SCRAM-SHA-256 verifier (see `vitalproxy passwd`), not plain text", u.Name))
		}
		switch u.PoolMode {
		case "", "session", "transaction":
		default:
			errs = append(errs, fmt.Errorf("user %q: pool_mode must be session or transaction", u.Name))
		}
		seen[u.Name] = true
	}
	return joinErrors(errs)
}

// joinErrors joins errors on one line, so that a CLI prints one line.
func joinErrors(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return fmt.Errorf("%s", strings.Join(msgs, "; "))
}

// RoleSecretBytes decodes the base64 role secret.
func (c *Config) RoleSecretBytes() ([]byte, error) {
	if c.RoleSecret == "" {
		return nil, errors.New("role_secret is not set (VITALPROXY_ROLE_SECRET, base64; e.g. `openssl rand -base64 32`)")
	}
	b, err := base64.StdEncoding.DecodeString(string(c.RoleSecret))
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(string(c.RoleSecret))
	}
	if err != nil {
		return nil, errors.New("role_secret is not valid base64")
	}
	if len(b) < 16 {
		return nil, errors.New("role_secret must decode to at least 16 bytes")
	}
	return b, nil
}

// RequireDatabaseURL checks that the administrative URL is set and parses.
func (c *Config) RequireDatabaseURL() error {
	if c.DatabaseURL == "" {
		return errors.New("no database URL: pass --database-url or set VITALPROXY_DATABASE_URL")
	}
	return checkURL("database URL", string(c.DatabaseURL))
}

// RequireServe checks what `serve` needs.
func (c *Config) RequireServe() error {
	var errs []error
	if c.Upstream.URL == "" {
		errs = append(errs, errors.New("upstream.url is not set (VITALPROXY_UPSTREAM_URL or --upstream-url)"))
	} else if err := checkURL("upstream.url", c.Upstream.URL); err != nil {
		errs = append(errs, err)
	}
	if c.Upstream.AdminURL != "" {
		if err := checkURL("upstream.admin_url", string(c.Upstream.AdminURL)); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := c.RoleSecretBytes(); err != nil {
		errs = append(errs, err)
	}
	if c.Upstream.AdminURL == "" {
		errs = append(errs, errors.New("no admin connection: set upstream.admin_url or database_url (users, tenants and the isolation audit are read through it)"))
	}
	if c.Listen == "" && c.ListenSocketDir == "" {
		errs = append(errs, errors.New("listen or listen_socket_dir is required"))
	}
	return joinErrors(errs)
}

// checkURL reports a URL that is not a postgres:// URL with a host, naming
// it as what and without echoing it (it may hold a password). The host is in
// the authority or, as libpq allows, in a host parameter (a Unix socket
// directory: postgres:///app?host=/run/postgresql).
func checkURL(what, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || (u.Host == "" && u.Query().Get("host") == "") {
		return fmt.Errorf("%s is not a postgres:// URL with a host (or a host= parameter)", what)
	}
	return nil
}

// Redacted returns a URL with its password replaced, for logs.
func Redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "[unparsable URL]"
	}
	// libpq also takes secrets as parameters.
	q := u.Query()
	for _, k := range []string{"password", "sslpassword"} {
		if q.Has(k) {
			q.Set(k, "xxxxx")
			u.RawQuery = q.Encode()
		}
	}
	return u.Redacted()
}
