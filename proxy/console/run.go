package console

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// run checks cmd's permissions, runs it and counts it. text is the
// statement for the log ("" when not worth logging again).
func (s *session) run(ctx context.Context, cmd *Command, text string) (*result, error) {
	if cmd.Kind == KindEmpty {
		return &result{}, nil
	}
	res, err := s.dispatch(ctx, cmd)
	s.count(cmd.Metric(), text, err)
	return res, err
}

func (s *session) bound() bool { return len(s.opts.Tenants) > 0 }

// mayTenant checks that the user may see or steer tenant.
func (s *session) mayTenant(tenant string) error {
	if s.bound() && !slices.Contains(s.opts.Tenants, tenant) {
		return Errorf(CodePermission, "permission denied for tenant %q: console user %q is bound to %s",
			tenant, s.opts.User, strings.Join(s.opts.Tenants, ", "))
	}
	return nil
}

// scope is the tenants a command without a tenant applies to: the
// user's (nil: every tenant).
func (s *session) scope(tenant string) ([]string, error) {
	if tenant == "" {
		if s.bound() {
			return slices.Clone(s.opts.Tenants), nil
		}
		return nil, nil
	}
	if err := s.mayTenant(tenant); err != nil {
		return nil, err
	}
	if !s.opts.Backend.TenantExists(tenant) {
		return nil, Errorf(CodeBadValue, "tenant %q does not exist", tenant)
	}
	return []string{tenant}, nil
}

func (s *session) requireAdmin(what string) error {
	if s.opts.Role != RoleAdmin {
		return Errorf(CodePermission, "permission denied for %s: console user %q has the %s role, which may only SHOW", what, s.opts.User, s.opts.Role)
	}
	return nil
}

func (s *session) requireUnbound(what string) error {
	if s.bound() {
		return Errorf(CodePermission, "permission denied for %s: console user %q is bound to tenants", what, s.opts.User)
	}
	return nil
}

func (s *session) dispatch(ctx context.Context, cmd *Command) (*result, error) {
	switch cmd.Kind {
	case KindShow:
		return s.show(ctx, cmd)
	case KindPgBouncerShow:
		return s.showPgBouncer(ctx, cmd)
	case KindShowSetting:
		v, ok := s.settings[cmd.Topic]
		if !ok {
			return nil, Errorf(CodeUndefinedObject, "unrecognized configuration parameter %q", cmd.Topic)
		}
		return &result{cols: []string{cmd.Topic}, rows: [][]string{{v}}, tag: "SHOW"}, nil
	case KindSet:
		if cmd.Topic == "RESET" {
			return &result{tag: "RESET"}, nil
		}
		res := &result{tag: "SET"}
		if cmd.Name != "" {
			s.settings[cmd.Name] = cmd.Value
			if name, ok := reported[cmd.Name]; ok {
				res.params = map[string]string{name: cmd.Value}
			}
		}
		return res, nil
	case KindSelect:
		if cmd.Name == "version" {
			return &result{cols: []string{"version"}, rows: [][]string{{"PostgreSQL " + ServerVersion + ", vitalproxy " + s.opts.Backend.Version()}}, tag: "SELECT 1"}, nil
		}
		return &result{cols: []string{cmd.Name}, rows: [][]string{{cmd.Value}}, tag: "SELECT 1"}, nil
	}
	if err := s.requireAdmin(strings.ToUpper(strings.ReplaceAll(string(cmd.Kind), "_", " "))); err != nil {
		return nil, err
	}
	be := s.opts.Backend
	switch cmd.Kind {
	case KindPause:
		tenants, err := s.scope(cmd.Tenant)
		if err != nil {
			return nil, err
		}
		if err := be.Pause(ctx, tenants, cmd.Timeout); err != nil {
			return nil, err
		}
		return &result{tag: "PAUSE"}, nil
	case KindResume:
		tenants, err := s.scope(cmd.Tenant)
		if err != nil {
			return nil, err
		}
		if err := be.Resume(ctx, tenants); err != nil {
			return nil, err
		}
		return &result{tag: "RESUME"}, nil
	case KindKillClient:
		tenant, ok := be.ClientTenant(cmd.ID)
		if !ok || (s.bound() && !slices.Contains(s.opts.Tenants, tenant)) {
			// A bound user learns nothing of other tenants' clients.
			return nil, Errorf(CodeBadValue, "no client with id %q", cmd.ID)
		}
		if err := be.KillClient(ctx, cmd.ID); err != nil {
			return nil, err
		}
		return &result{tag: "KILL"}, nil
	case KindKillTenant, KindKillAll:
		var tenants []string
		if cmd.Kind == KindKillAll {
			if err := s.requireUnbound("KILL ALL"); err != nil {
				return nil, err
			}
		} else {
			var err error
			if tenants, err = s.scope(cmd.Tenant); err != nil {
				return nil, err
			}
		}
		n, err := be.KillTenants(ctx, tenants)
		if err != nil {
			return nil, err
		}
		return &result{tag: "KILL", notices: []string{fmt.Sprintf("%d client session(s) ended", n)}}, nil
	case KindCancel:
		tenant, ok := be.ClientTenant(cmd.ID)
		if !ok || (s.bound() && !slices.Contains(s.opts.Tenants, tenant)) {
			return nil, Errorf(CodeBadValue, "no client with id %q", cmd.ID)
		}
		if err := be.CancelClient(ctx, cmd.ID); err != nil {
			return nil, err
		}
		return &result{tag: "CANCEL"}, nil
	case KindReconnect:
		tenants, err := s.scope(cmd.Tenant)
		if err != nil {
			return nil, err
		}
		closed, marked, err := be.Reconnect(ctx, tenants)
		if err != nil {
			return nil, err
		}
		return &result{tag: "RECONNECT", notices: []string{fmt.Sprintf("%d idle server connection(s) closed, %d to be closed when released", closed, marked)}}, nil
	case KindShutdown:
		if err := s.requireUnbound("SHUTDOWN"); err != nil {
			return nil, err
		}
		if err := be.Shutdown(ctx, cmd.Wait); err != nil {
			return nil, err
		}
		return &result{tag: "SHUTDOWN"}, nil
	case KindDisable, KindEnable:
		if _, err := s.scope(cmd.Tenant); err != nil {
			return nil, err
		}
		if err := be.SetDisabled(ctx, cmd.Tenant, cmd.Kind == KindDisable); err != nil {
			return nil, err
		}
		return &result{tag: strings.ToUpper(string(cmd.Kind))}, nil
	case KindReload:
		if err := s.requireUnbound("RELOAD"); err != nil {
			return nil, err
		}
		changed, err := be.Reload(ctx)
		if err != nil {
			return nil, err
		}
		return &result{tag: "RELOAD", notices: []string{changed}}, nil
	case KindSetTenant:
		if _, err := s.scope(cmd.Tenant); err != nil {
			return nil, err
		}
		if err := be.SetTenantLimit(ctx, cmd.Tenant, cmd.Name, cmd.Int); err != nil {
			return nil, err
		}
		return &result{tag: "SET", notices: []string{fmt.Sprintf("tenant %q: %s = %d until the proxy restarts (not persisted)", cmd.Tenant, cmd.Name, cmd.Int)}}, nil
	}
	return nil, errors.New("console: unhandled command " + string(cmd.Kind))
}

func (s *session) show(ctx context.Context, cmd *Command) (*result, error) {
	switch cmd.Topic {
	case TopicVersion:
		return &result{cols: []string{"version"}, rows: [][]string{{"vitalproxy " + s.opts.Backend.Version()}}}, nil
	case TopicHelp:
		rows := make([][]string, len(Help))
		for i, h := range Help {
			rows[i] = []string{h[0], h[1]}
		}
		return &result{cols: []string{"command", "description"}, rows: rows}, nil
	case TopicConfig:
		if err := s.requireUnbound("SHOW CONFIG"); err != nil {
			return nil, err
		}
	case TopicUpstreams:
		if err := s.requireUnbound("SHOW UPSTREAMS"); err != nil {
			return nil, err
		}
	}
	if cmd.Tenant != "" {
		if err := s.mayTenant(cmd.Tenant); err != nil {
			return nil, err
		}
	}
	t, err := s.opts.Backend.Show(ctx, cmd.Topic)
	if err != nil {
		return nil, err
	}
	rows := t.Rows
	if (cmd.Tenant != "" || s.bound()) && t.TenantColumn >= 0 {
		rows = nil
		for _, r := range t.Rows {
			if s.visible(r[t.TenantColumn], cmd.Tenant) {
				rows = append(rows, r)
			}
		}
	} else if cmd.Tenant != "" || s.bound() {
		rows = nil // rows of no tenant: not for a filter or a bound user
	}
	if rows == nil {
		rows = [][]string{}
	}
	return &result{cols: t.Columns, rows: rows}, nil
}

// visible reports whether a row of the tenants in cell (comma-separated)
// passes the filter and the user's binding.
func (s *session) visible(cell, filter string) bool {
	for _, t := range strings.Split(cell, ",") {
		t = strings.TrimSpace(t)
		if t == "" || (filter != "" && t != filter) {
			continue
		}
		if !s.bound() || slices.Contains(s.opts.Tenants, t) {
			return true
		}
	}
	return false
}

// Help is SHOW HELP's table: each command's syntax and what it does.
var Help = [][2]string{
	{"SHOW TENANTS [WHERE tenant = 'slug']", "every tenant: status, pool mode, limits, clients, server connections, waiting clients, paused, disabled, auth failures"},
	{"SHOW POOLS [WHERE tenant = 'slug']", "every pool of server connections (one per tenant role, or a shared pool)"},
	{"SHOW CLIENTS [WHERE tenant = 'slug']", "every client session, console sessions included"},
	{"SHOW SERVERS [WHERE tenant = 'slug']", "every open server connection, with its backend pid"},
	{"SHOW STATS [WHERE tenant = 'slug']", "per-tenant totals since start: sessions, transactions, bytes, waits"},
	{"SHOW USERS [WHERE tenant = 'slug']", "every proxy user (config file and database), without its verifier"},
	{"SHOW CONFIG", "the running configuration, secrets redacted (unbound users only)"},
	{"SHOW VERSION", "the proxy's version"},
	{"SHOW UPSTREAMS", "the upstream hosts: role (primary, standby, fenced, refused, down), timeline, replication lag, last check"},
	{"SHOW HELP", "this list"},
	{"PAUSE [TENANT slug] [TIMEOUT seconds]", "admin: hold the tenant's (or every tenant's) new transactions and wait until its server connections are idle"},
	{"RESUME [TENANT slug]", "admin: release a paused tenant (or every one)"},
	{"DISABLE TENANT slug", "admin: refuse the tenant's new clients (connected ones go on)"},
	{"ENABLE TENANT slug", "admin: admit the tenant's new clients again"},
	{"KILL CLIENT id", "admin: end one client session (ids from SHOW CLIENTS)"},
	{"KILL TENANT slug", "admin: end every client session of the tenant and close its server connections"},
	{"KILL ALL", "admin, unbound users only: end every client session (not console sessions) and close every server connection"},
	{"CANCEL CLIENT id", "admin: cancel the query the client is running (its session goes on)"},
	{"RECONNECT [TENANT slug]", "admin: close the tenant's (or every) server connections, idle ones now, the others when released"},
	{"SHUTDOWN [WAIT]", "admin, unbound users only: stop the proxy as SIGTERM does; WAIT: wait for every client to leave, without limits.shutdown_timeout"},
	{"SET TENANT slug max_server_conns = n", "admin: change the tenant's cap on server connections until restart (0: back to the configured cap)"},
	{"SET TENANT slug max_client_conns = n", "admin: change the tenant's cap on client connections until restart (0: back to the configured cap)"},
	{"RELOAD", "admin, unbound users only: re-read the configuration, users and tenants"},
}
