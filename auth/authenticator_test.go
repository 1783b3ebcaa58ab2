package auth_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vitalproxy/vitalproxy/auth"
)

// backendWire adapts pgproto3.Backend to auth.Wire for a test server.
type backendWire struct{ be *pgproto3.Backend }

func (w backendWire) Send(msgs ...pgproto3.BackendMessage) error {
	for _, m := range msgs {
		switch m.(type) {
		case *pgproto3.AuthenticationSASL:
			w.be.SetAuthType(pgproto3.AuthTypeSASL)
		case *pgproto3.AuthenticationSASLContinue:
			w.be.SetAuthType(pgproto3.AuthTypeSASLContinue)
		case *pgproto3.AuthenticationMD5Password:
			w.be.SetAuthType(pgproto3.AuthTypeMD5Password)
		case *pgproto3.AuthenticationCleartextPassword:
			w.be.SetAuthType(pgproto3.AuthTypeCleartextPassword)
		}
		w.be.Send(m)
	}
	return w.be.Flush()
}

// Hold writes at once: the test client reads each message as it comes.
func (w backendWire) Hold(msgs ...pgproto3.BackendMessage) error { return w.Send(msgs...) }

func (w backendWire) ReceivePassword() ([]byte, error) {
	msg, err := w.be.Receive()
	if err != nil {
		return nil, err
	}
	switch m := msg.(type) {
	case *pgproto3.PasswordMessage:
		return m.Encode(nil)
	case *pgproto3.SASLInitialResponse:
		return m.Encode(nil)
	case *pgproto3.SASLResponse:
		return m.Encode(nil)
	}
	return nil, fmt.Errorf("unexpected %T", msg)
}

// encoded bodies include the 5-byte header; strip it.
type bodyWire struct{ backendWire }

func (w bodyWire) ReceivePassword() ([]byte, error) {
	b, err := w.backendWire.ReceivePassword()
	if err != nil {
		return nil, err
	}
	return b[5:], nil
}

// serveOnce runs one authentication on a real loopback connection from
// pgconn and returns the outcome.
func serveOnce(t *testing.T, a *auth.Authenticator, dir *auth.Directory, connString string) (*auth.Identity, error, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		id  *auth.Identity
		err error
	}
	done := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		be := pgproto3.NewBackend(conn, conn)
		sm, err := be.ReceiveStartupMessage()
		if err != nil {
			done <- result{err: err}
			return
		}
		startup := sm.(*pgproto3.StartupMessage)
		w := bodyWire{backendWire{be}}
		id, err := a.Authenticate(context.Background(), dir, w, auth.Request{StartupUser: startup.Parameters["user"]})
		if err != nil {
			var ae *auth.Error
			if errors.As(err, &ae) {
				be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: ae.Code, Message: ae.Message})
				be.Flush()
			}
			done <- result{err: err}
			return
		}
		be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		be.Flush()
		done <- result{id: id}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc, clientErr := pgconn.Connect(ctx, strings.Replace(connString, "ADDR", ln.Addr().String(), 1))
	if clientErr == nil {
		cc.Close(ctx)
	}
	ln.Close() // unblocks Accept if the client never connected
	r := <-done
	return r.id, r.err, clientErr
}

func mustVerifier(t *testing.T, pw string) string {
	t.Helper()
	v, err := auth.NewSCRAMVerifier(pw)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestAuthenticate(t *testing.T) {
	tenants := []auth.Tenant{
		{ID: "11111111-1111-1111-1111-111111111111", Slug: "vital-platform", Type: "platform", Status: "active"},
		{ID: "22222222-2222-2222-2222-222222222222", Slug: "digital-health-startup", Type: "industry", Status: "active"},
		{ID: "33333333-3333-3333-3333-333333333333", Slug: "frozen", Type: "client", Status: "suspended"},
	}
	users := []auth.User{
		{Name: "dh-app", Verifier: mustVerifier(t, "s3cret"), Tenants: []string{"digital-health-startup"}},
		{Name: "analyst", Verifier: mustVerifier(t, "look"), Tenants: []string{"digital-health-startup", "vital-platform"}, ReadOnly: true},
		{Name: "ops", Verifier: mustVerifier(t, "root"), Tenants: []string{"vital-platform"}, PlatformAdmin: true},
		{Name: "legacy", Verifier: auth.MD5Hash("legacy", "old"), Tenants: []string{"digital-health-startup"}},
		{Name: "cold", Verifier: mustVerifier(t, "brr"), Tenants: []string{"frozen"}},
	}
	dir := auth.NewDirectory(users, tenants)
	scramOnly := auth.NewAuthenticator(auth.Options{RolePrefix: "vt_"})
	withMD5 := auth.NewAuthenticator(auth.Options{RolePrefix: "vt_", Methods: []string{"scram-sha-256", "md5"}})

	tests := []struct {
		name     string
		a        *auth.Authenticator
		user, pw string
		wantRole string
		wantCode string
		reason   string
	}{
		{"scram/ok", scramOnly, "dh-app", "s3cret", "vt_digital_health_startup_rw", "", ""},
		{"scram/wrong password", scramOnly, "dh-app", "nope", "", "28P01", "bad_password"},
		{"scram/unknown user", scramOnly, "ghost", "nope", "", "28P01", "unknown_user"},
		{"tenant/default is first", scramOnly, "analyst", "look", "vt_digital_health_startup_ro", "", ""},
		{"tenant/picked with @", scramOnly, "analyst@vital-platform", "look", "vt_vital_platform_ro", "", ""},
		{"tenant/not allowed", scramOnly, "dh-app@vital-platform", "s3cret", "", "28000", "tenant_not_allowed"},
		{"tenant/unknown", scramOnly, "dh-app@nowhere", "s3cret", "", "28000", "tenant_not_allowed"},
		{"tenant/suspended", scramOnly, "cold", "brr", "", "28000", "suspended_tenant"},
		{"capability/platform admin", scramOnly, "ops", "root", "vt_vital_platform_admin", "", ""},
		{"md5/ok when configured", withMD5, "legacy", "old", "vt_digital_health_startup_rw", "", ""},
		{"md5/wrong password", withMD5, "legacy", "bad", "", "28P01", "bad_password"},
		{"md5/not configured", scramOnly, "legacy", "old", "", "28P01", "no_method"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u := url.URL{Scheme: "postgres", User: url.UserPassword(tc.user, tc.pw), Host: "ADDR", Path: "/app", RawQuery: "sslmode=disable"}
			conn := u.String()
			id, srvErr, cliErr := serveOnce(t, tc.a, dir, conn)
			if tc.wantCode == "" {
				if srvErr != nil || cliErr != nil {
					t.Fatalf("server err %v, client err %v", srvErr, cliErr)
				}
				if id.Role != tc.wantRole {
					t.Errorf("role = %q, want %q", id.Role, tc.wantRole)
				}
				return
			}
			var ae *auth.Error
			if !errors.As(srvErr, &ae) {
				t.Fatalf("server err = %v, want *auth.Error", srvErr)
			}
			if ae.Code != tc.wantCode || ae.Reason != tc.reason {
				t.Errorf("code/reason = %s/%s, want %s/%s", ae.Code, ae.Reason, tc.wantCode, tc.reason)
			}
			var pgErr *pgconn.PgError
			if !errors.As(cliErr, &pgErr) || pgErr.Code != tc.wantCode {
				t.Errorf("client err = %v, want SQLSTATE %s", cliErr, tc.wantCode)
			}
			if strings.Contains(cliErr.Error(), tc.pw) {
				t.Errorf("client error reveals the password: %v", cliErr)
			}
		})
	}
}

func TestUnknownAndKnownUsersLookAlike(t *testing.T) {
	dir := auth.NewDirectory([]auth.User{{Name: "real", Verifier: mustVerifier(t, "x"), Tenants: []string{"t"}}}, nil)
	a := auth.NewAuthenticator(auth.Options{RolePrefix: "vt_"})
	_, _, known := serveOnce(t, a, dir, "postgres://real:wrong@ADDR/app?sslmode=disable")
	_, _, unknown := serveOnce(t, a, dir, "postgres://ghost:wrong@ADDR/app?sslmode=disable")
	var k, u *pgconn.PgError
	if !errors.As(known, &k) || !errors.As(unknown, &u) {
		t.Fatalf("errors: %v / %v", known, unknown)
	}
	if strings.Replace(k.Message, `"real"`, "USER", 1) != strings.Replace(u.Message, `"ghost"`, "USER", 1) || k.Code != u.Code {
		t.Errorf("known user: %s %q; unknown user: %s %q", k.Code, k.Message, u.Code, u.Message)
	}
}

func TestParseSCRAMVerifier(t *testing.T) {
	good := mustVerifier(t, "pw")
	tests := []struct {
		in string
		ok bool
	}{
		{good, true},
		{"", false},
		{"md5abc", false},
		{"SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB", false},
		{"SCRAM-SHA-256$x:c2FsdA==$" + strings.Repeat("A", 44) + ":" + strings.Repeat("A", 44), false},
		{strings.Replace(good, "$", "", 1), false},
	}
	for _, tc := range tests {
		_, err := auth.ParseSCRAMVerifier(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseSCRAMVerifier(%q) err = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
	if !auth.VerifyPlaintext(good, "u", "pw") || auth.VerifyPlaintext(good, "u", "pw2") {
		t.Error("VerifyPlaintext disagrees with the verifier")
	}
}

func FuzzParseSCRAMVerifier(f *testing.F) {
	f.Add("SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$" + strings.Repeat("A", 43) + "=:" + strings.Repeat("B", 43) + "=")
	f.Add("SCRAM-SHA-256$$:")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = auth.ParseSCRAMVerifier(s)
	})
}

func TestRoleName(t *testing.T) {
	long := strings.Repeat("a", 80)
	tests := []struct{ slug, want string }{
		{"digital-health-startup", "vt_digital_health_startup_rw"},
		{"vital-platform", "vt_vital_platform_rw"},
	}
	for _, tc := range tests {
		if got := auth.RoleName("vt_", tc.slug, auth.ReadWrite); got != tc.want {
			t.Errorf("RoleName(%q) = %q, want %q", tc.slug, got, tc.want)
		}
	}
	a := auth.RoleName("vt_", long, auth.Admin)
	b := auth.RoleName("vt_", long+"b", auth.Admin)
	if len(a) > 63 || len(b) > 63 || a == b {
		t.Errorf("long slugs: %q (%d) %q (%d)", a, len(a), b, len(b))
	}
}
