package console

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestParse(t *testing.T) {
	good := map[string]Command{
		"SHOW TENANTS": {Kind: KindShow, Topic: TopicTenants},
		"show pools where tenant = 'acme-clinic';": {Kind: KindShow, Topic: TopicPools, Tenant: "acme-clinic"},
		"SHOW clients WHERE tenant = acme":         {Kind: KindShow, Topic: TopicClients, Tenant: "acme"},
		"PAUSE":                                    {Kind: KindPause, Timeout: DefaultPauseTimeout},
		"pause tenant a-b timeout 2.5":             {Kind: KindPause, Tenant: "a-b", Timeout: 2500 * time.Millisecond},
		"RESUME TENANT x":                          {Kind: KindResume, Tenant: "x"},
		"KILL CLIENT 0a1b":                         {Kind: KindKillClient, ID: "0a1b"},
		"kill tenant 'a-b'":                        {Kind: KindKillTenant, Tenant: "a-b"},
		"KILL ALL;":                                {Kind: KindKillAll},
		"CANCEL CLIENT 0a1b":                       {Kind: KindCancel, ID: "0a1b"},
		"RECONNECT":                                {Kind: KindReconnect},
		"reconnect tenant x":                       {Kind: KindReconnect, Tenant: "x"},
		"SHUTDOWN":                                 {Kind: KindShutdown},
		"shutdown wait":                            {Kind: KindShutdown, Wait: true},
		"DISABLE TENANT x":                         {Kind: KindDisable, Tenant: "x"},
		"enable tenant x":                          {Kind: KindEnable, Tenant: "x"},
		"RELOAD":                                   {Kind: KindReload},
		"SET TENANT x max_server_conns = 5":        {Kind: KindSetTenant, Tenant: "x", Name: LimitMaxServerConns, Value: "5", Int: 5},
		"SET TENANT x max_client_conns TO 0":       {Kind: KindSetTenant, Tenant: "x", Name: LimitMaxClientConns, Value: "0"},
		"SET extra_float_digits = 3":               {Kind: KindSet, Name: "extra_float_digits", Value: "3"},
		"SET application_name TO 'psql'":           {Kind: KindSet, Name: "application_name", Value: "psql"},
		"SET DateStyle = 'ISO', 'MDY'":             {Kind: KindSet, Name: "datestyle", Value: "ISO, MDY"},
		"SHOW server_version":                      {Kind: KindShowSetting, Topic: "server_version"},
		"SHOW TRANSACTION ISOLATION LEVEL":         {Kind: KindShowSetting, Topic: "transaction_isolation"},
		"SELECT 1":                                 {Kind: KindSelect, Name: "?column?", Value: "1"},
		"select version()":                         {Kind: KindSelect, Name: "version"},
		"-- ping":                                  {Kind: KindEmpty},
		"/* c */ SHOW HELP -- x":                   {Kind: KindShow, Topic: TopicHelp},
	}
	for in, want := range good {
		got, err := Parse(in)
		if err != nil {
			t.Errorf("Parse(%q): %v", in, err)
			continue
		}
		if *got != want {
			t.Errorf("Parse(%q) = %+v, want %+v", in, *got, want)
		}
	}
	bad := map[string]string{
		"FROB":                                  CodeSyntax,
		"SHOW TENANTS WHERE user = 'x'":         CodeSyntax,
		"SHOW TENANTS extra":                    CodeSyntax,
		"SHOW VERSION WHERE tenant = 'x'":       CodeSyntax,
		"SHOW UPSTREAMS WHERE tenant = 'x'":     CodeSyntax,
		"PAUSE TENANT":                          CodeSyntax,
		"PAUSE TIMEOUT -1":                      CodeBadValue,
		"PAUSE TIMEOUT soon":                    CodeBadValue,
		"KILL x":                                CodeSyntax,
		"KILL":                                  CodeSyntax,
		"KILL ALL x":                            CodeSyntax,
		"KILL TENANT":                           CodeSyntax,
		"CANCEL 1":                              CodeSyntax,
		"CANCEL CLIENT":                         CodeSyntax,
		"RECONNECT x":                           CodeSyntax,
		"SHUTDOWN NOW":                          CodeSyntax,
		"SET TENANT x max_server_conns = many":  CodeBadValue,
		"SET TENANT x min_idle = 1":             CodeBadValue,
		"SELECT * FROM pg_stat_activity":        CodeSyntax,
		"SHOW TENANTS WHERE tenant = 'unclosed": CodeSyntax,
		"/* unclosed":                           CodeSyntax,
		strings.Repeat("x", MaxCommandLen+1):    CodeTooLong,
	}
	for in, code := range bad {
		_, err := Parse(in)
		var ce *Error
		if !errors.As(err, &ce) || ce.Code != code {
			t.Errorf("Parse(%.40q) = %v, want SQLSTATE %s", in, err, code)
		}
	}
}

func TestSplitStatements(t *testing.T) {
	got := SplitStatements("SHOW TENANTS; SET a = 'x;y'; -- c;\n ;SHOW HELP")
	if len(got) != 3 || strings.TrimSpace(got[2]) != "SHOW HELP" || !strings.Contains(got[1], "'x;y'") {
		t.Fatalf("%q", got)
	}
}

// fakeBackend records what the console asked of it.
type fakeBackend struct {
	mu       sync.Mutex
	paused   []string
	killed   []string
	canceled []string
	// calls are the other steering calls: name:tenants.
	calls   []string
	clients map[string]string // id -> tenant
	// pgbScopes are ShowPgBouncer's calls: topic:tenants.
	pgbScopes []string
}

func (f *fakeBackend) Show(_ context.Context, topic string) (*Table, error) {
	switch topic {
	case TopicTenants:
		return &Table{Columns: []string{"tenant", "clients"}, Rows: [][]string{{"a", "1"}, {"b", "2"}}}, nil
	case TopicUsers:
		return &Table{Columns: []string{"user", "tenants"}, Rows: [][]string{{"u1", "a,b"}, {"u2", "b"}}, TenantColumn: 1}, nil
	case TopicConfig:
		return &Table{Columns: []string{"key", "value"}, Rows: [][]string{{"role_secret", "[redacted]"}}, TenantColumn: -1}, nil
	}
	return &Table{Columns: []string{"x"}, TenantColumn: -1}, nil
}
func (f *fakeBackend) TenantExists(slug string) bool { return slug == "a" || slug == "b" }
func (f *fakeBackend) Pause(_ context.Context, tenants []string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paused = append(f.paused, strings.Join(tenants, ","))
	return nil
}
func (f *fakeBackend) Resume(context.Context, []string) error { return nil }
func (f *fakeBackend) ClientTenant(id string) (string, bool) {
	t, ok := f.clients[id]
	return t, ok
}
func (f *fakeBackend) KillClient(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.killed = append(f.killed, id)
	return nil
}
func (f *fakeBackend) KillTenants(_ context.Context, tenants []string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "kill:"+strings.Join(tenants, ","))
	return len(tenants), nil
}
func (f *fakeBackend) CancelClient(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.canceled = append(f.canceled, id)
	return nil
}
func (f *fakeBackend) Reconnect(_ context.Context, tenants []string) (int, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "reconnect:"+strings.Join(tenants, ","))
	return 1, 2, nil
}
func (f *fakeBackend) Shutdown(_ context.Context, wait bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("shutdown:%t", wait))
	return nil
}
func (f *fakeBackend) SetDisabled(context.Context, string, bool) error { return nil }
func (f *fakeBackend) Reload(context.Context) (string, error) {
	return "reloaded; nothing changed", nil
}
func (f *fakeBackend) SetTenantLimit(context.Context, string, string, int) error { return nil }
func (f *fakeBackend) Version() string                                           { return "test" }

func (f *fakeBackend) ShowPgBouncer(_ context.Context, topic string, tenants []string) (*Table, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pgbScopes = append(f.pgbScopes, topic+":"+strings.Join(tenants, ","))
	return &Table{Columns: []string{"database", "user", "cl_active", "total_xact_count", "total_sent"},
		Types: []uint32{OIDText, OIDText, OIDInt4, OIDNumeric, OIDInt8},
		Rows:  [][]string{{"app", "a", "3", "123456789", "70000"}}}, nil
}

// client is the frontend end of a console session over a pipe.
type client struct {
	t  *testing.T
	fe *pgproto3.Frontend
	c  net.Conn
}

func startSession(t *testing.T, be Backend, role string, tenants []string) (*client, map[string]int) {
	t.Helper()
	srv, cli := net.Pipe()
	counts := map[string]int{}
	var mu sync.Mutex
	done := make(chan error, 1)
	go func() {
		done <- Serve(context.Background(), srv, Options{Backend: be, User: "ops", Role: role, Tenants: tenants,
			MaxMessageSize: 1 << 20, Count: func(c, r string) { mu.Lock(); counts[c+"/"+r]++; mu.Unlock() }})
	}()
	t.Cleanup(func() {
		_ = cli.Close()
		if err := <-done; err != nil && !strings.Contains(t.Name(), "Huge") {
			t.Errorf("Serve: %v", err)
		}
		_ = srv.Close()
	})
	_ = cli.SetDeadline(time.Now().Add(30 * time.Second))
	return &client{t: t, fe: pgproto3.NewFrontend(cli, cli), c: cli}, counts
}

func (c *client) send(msgs ...pgproto3.FrontendMessage) {
	c.t.Helper()
	for _, m := range msgs {
		c.fe.Send(m)
	}
	if err := c.fe.Flush(); err != nil {
		c.t.Fatal(err)
	}
}

// until reads messages up to ReadyForQuery and returns them as short
// strings: "T:col,col", "D:v,v", "C:tag", "E:code", "Z", and so on.
func (c *client) until() []string {
	c.t.Helper()
	var out []string
	for {
		m, err := c.fe.Receive()
		if err != nil {
			c.t.Fatalf("receive: %v (so far %q)", err, out)
		}
		switch m := m.(type) {
		case *pgproto3.RowDescription:
			var names []string
			for _, f := range m.Fields {
				names = append(names, string(f.Name))
			}
			out = append(out, "T:"+strings.Join(names, ","))
		case *pgproto3.DataRow:
			var vals []string
			for _, v := range m.Values {
				vals = append(vals, string(v))
			}
			out = append(out, "D:"+strings.Join(vals, ","))
		case *pgproto3.CommandComplete:
			out = append(out, "C:"+string(m.CommandTag))
		case *pgproto3.ErrorResponse:
			out = append(out, "E:"+m.Code)
		case *pgproto3.NoticeResponse:
			out = append(out, "N")
		case *pgproto3.ParameterStatus:
			out = append(out, "S:"+m.Name+"="+m.Value)
		case *pgproto3.EmptyQueryResponse:
			out = append(out, "I")
		case *pgproto3.ParseComplete:
			out = append(out, "1")
		case *pgproto3.BindComplete:
			out = append(out, "2")
		case *pgproto3.ParameterDescription:
			out = append(out, "t")
		case *pgproto3.NoData:
			out = append(out, "n")
		case *pgproto3.PortalSuspended:
			out = append(out, "s")
		case *pgproto3.ReadyForQuery:
			return append(out, "Z")
		default:
			out = append(out, "?")
		}
	}
}

func (c *client) query(q string) string {
	c.t.Helper()
	c.send(&pgproto3.Query{String: q})
	return strings.Join(c.until(), " ")
}

func TestSimpleProtocol(t *testing.T) {
	be := &fakeBackend{}
	c, counts := startSession(t, be, RoleAdmin, nil)
	for _, tc := range [][2]string{
		{"SHOW TENANTS", "T:tenant,clients D:a,1 D:b,2 C:SHOW 2 Z"},
		{"SHOW TENANTS WHERE tenant = 'b'", "T:tenant,clients D:b,2 C:SHOW 1 Z"},
		{"SHOW USERS WHERE tenant = 'a'", "T:user,tenants D:u1,a,b C:SHOW 1 Z"},
		{"", "I Z"},
		{"-- ping", "I Z"},
		{"SELECT 1", "T:?column? D:1 C:SELECT 1 Z"},
		{"SET application_name = 'x'", "C:SET S:application_name=x Z"},
		{"SHOW application_name", "T:application_name D:x C:SHOW Z"},
		{"SHOW nonsense", "E:42704 Z"},
		{"FROB", "E:42601 Z"},
		{"SHOW HELP; FROB; SHOW TENANTS", ""}, // checked below
		{"PAUSE TENANT a TIMEOUT 1", "C:PAUSE Z"},
		{"PAUSE TENANT nope", "E:22023 Z"},
		{"KILL CLIENT nope", "E:22023 Z"},
		{strings.Repeat("x", MaxCommandLen+1), "E:54000 Z"},
	} {
		q, want := tc[0], tc[1]
		got := c.query(q)
		if want == "" {
			if !strings.HasPrefix(got, "T:command,description") || !strings.HasSuffix(got, "E:42601 Z") {
				t.Errorf("%q: %s", q, got)
			}
			continue
		}
		if got != want {
			t.Errorf("%.40q:\n got %s\nwant %s", q, got, want)
		}
	}
	if len(be.paused) != 1 || be.paused[0] != "a" {
		t.Errorf("paused %q", be.paused)
	}
	if counts["show_tenants/ok"] == 0 || counts["other/error"] == 0 || counts["pause/ok"] != 1 {
		t.Errorf("counts %v", counts)
	}
}

func TestPermissions(t *testing.T) {
	be := &fakeBackend{clients: map[string]string{"c1": "a", "c2": "b"}}
	stats, counts := startSession(t, be, RoleStats, nil)
	for _, q := range []string{"PAUSE", "RESUME", "KILL CLIENT c1", "RELOAD", "DISABLE TENANT a", "SET TENANT a max_server_conns = 1",
		"KILL TENANT a", "KILL ALL", "CANCEL CLIENT c1", "RECONNECT", "RECONNECT TENANT a", "SHUTDOWN", "SHUTDOWN WAIT"} {
		if got := stats.query(q); got != "E:42501 Z" {
			t.Errorf("stats %q: %s", q, got)
		}
	}
	if got := stats.query("SHOW CONFIG"); !strings.Contains(got, "D:role_secret,[redacted]") {
		t.Errorf("stats SHOW CONFIG: %s", got)
	}
	if counts["pause/denied"] != 1 {
		t.Errorf("counts %v", counts)
	}

	bound, _ := startSession(t, be, RoleAdmin, []string{"b"})
	for q, want := range map[string]string{
		"SHOW USERS":                    "T:user,tenants D:u1,a,b D:u2,b C:SHOW 2 Z",
		"SHOW USERS WHERE tenant = 'a'": "E:42501 Z",
		"SHOW CONFIG":                   "E:42501 Z",
		"RELOAD":                        "E:42501 Z",
		"PAUSE TENANT a":                "E:42501 Z",
		"KILL CLIENT c1":                "E:22023 Z",
		"KILL CLIENT c2":                "C:KILL Z",
		"PAUSE":                         "C:PAUSE Z",
		"KILL TENANT a":                 "E:42501 Z",
		"KILL ALL":                      "E:42501 Z",
		"SHUTDOWN":                      "E:42501 Z",
		"SHUTDOWN WAIT":                 "E:42501 Z",
		"RECONNECT TENANT a":            "E:42501 Z",
		"CANCEL CLIENT c1":              "E:22023 Z",
		"CANCEL CLIENT c2":              "C:CANCEL Z",
	} {
		if got := bound.query(q); got != want {
			t.Errorf("bound %q:\n got %s\nwant %s", q, got, want)
		}
	}
	if len(be.killed) != 1 || be.killed[0] != "c2" {
		t.Errorf("killed %q", be.killed)
	}
	if len(be.paused) != 1 || be.paused[0] != "b" {
		t.Errorf("a bound user's PAUSE paused %q", be.paused)
	}
}

func TestExtendedProtocol(t *testing.T) {
	c, _ := startSession(t, &fakeBackend{}, RoleAdmin, nil)
	// Unnamed statement, described, bound and executed.
	c.send(&pgproto3.Parse{Query: "SHOW TENANTS"}, &pgproto3.Describe{ObjectType: 'S'},
		&pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got, want := strings.Join(c.until(), " "), "1 t T:tenant,clients 2 T:tenant,clients D:a,1 D:b,2 C:SHOW 2 Z"; got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
	// A named statement, executed twice, one row at a time.
	c.send(&pgproto3.Parse{Name: "s1", Query: "SHOW TENANTS"}, &pgproto3.Bind{PreparedStatement: "s1"},
		&pgproto3.Execute{MaxRows: 1}, &pgproto3.Execute{MaxRows: 1}, &pgproto3.Sync{})
	if got, want := strings.Join(c.until(), " "), "1 2 D:a,1 s D:b,2 C:SHOW 2 Z"; got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
	// An error skips to Sync, and the session goes on.
	c.send(&pgproto3.Parse{Query: "FROB"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got, want := strings.Join(c.until(), " "), "E:42601 Z"; got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
	c.send(&pgproto3.Parse{Query: "PAUSE TENANT a"}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got, want := strings.Join(c.until(), " "), "1 2 n C:PAUSE Z"; got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
	c.send(&pgproto3.Bind{PreparedStatement: "nope"}, &pgproto3.Sync{})
	if got, want := strings.Join(c.until(), " "), "E:26000 Z"; got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
	if got := c.query("SELECT 1"); got != "T:?column? D:1 C:SELECT 1 Z" {
		t.Errorf("after errors: %s", got)
	}
}

func TestHugeMessageEndsSession(t *testing.T) {
	c, _ := startSession(t, &fakeBackend{}, RoleAdmin, nil)
	msg, _ := (&pgproto3.Query{String: strings.Repeat("x", 2<<20)}).Encode(nil)
	go func() { _, _ = c.c.Write(msg) }()
	m, err := c.fe.Receive()
	if e, ok := m.(*pgproto3.ErrorResponse); err != nil || !ok || e.Code != CodeProtocol {
		t.Fatalf("%T %v %v", m, m, err)
	}
}

func TestSteeringCommands(t *testing.T) {
	be := &fakeBackend{clients: map[string]string{"c1": "a", "c2": "b"}}
	admin, counts := startSession(t, be, RoleAdmin, nil)
	for _, tc := range [][2]string{
		{"KILL TENANT a", "N C:KILL Z"},
		{"KILL TENANT nope", "E:22023 Z"},
		{"KILL ALL", "N C:KILL Z"},
		{"KILL", "E:42601 Z"},
		{"CANCEL CLIENT c1", "C:CANCEL Z"},
		{"CANCEL CLIENT nope", "E:22023 Z"},
		{"RECONNECT TENANT b", "N C:RECONNECT Z"},
		{"RECONNECT", "N C:RECONNECT Z"},
		{"SHUTDOWN WAIT", "C:SHUTDOWN Z"},
	} {
		if got := admin.query(tc[0]); got != tc[1] {
			t.Errorf("%q:\n got %s\nwant %s", tc[0], got, tc[1])
		}
	}
	want := []string{"kill:a", "kill:", "reconnect:b", "reconnect:", "shutdown:true"}
	if fmt.Sprint(be.calls) != fmt.Sprint(want) || fmt.Sprint(be.canceled) != "[c1]" {
		t.Errorf("calls %q, canceled %q", be.calls, be.canceled)
	}
	for _, k := range []string{"kill_tenant/ok", "kill_tenant/error", "kill_all/ok", "cancel_client/ok", "reconnect/ok", "shutdown/ok"} {
		if counts[k] == 0 {
			t.Errorf("%s not counted: %v", k, counts)
		}
	}

	be.calls = nil
	bound, _ := startSession(t, be, RoleAdmin, []string{"b"})
	for _, q := range []string{"KILL TENANT b", "RECONNECT"} {
		if got := bound.query(q); got != "N C:"+strings.Fields(q)[0]+" Z" {
			t.Errorf("bound %q: %s", q, got)
		}
	}
	if fmt.Sprint(be.calls) != "[kill:b reconnect:b]" {
		t.Errorf("a bound user's calls %q", be.calls)
	}
}
