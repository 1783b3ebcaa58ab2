package auth

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Wire is the client connection during authentication; the proxy
// implements it with its own framing and size limits.
type Wire interface {
	// Send encodes, writes and flushes messages.
	Send(msgs ...pgproto3.BackendMessage) error
	// Hold is for messages that ask nothing of the client
	// (AuthenticationSASLFinal, AuthenticationOk): they are written no
	// later than with the next Send, in its write, which saves the client
	// a wake-up per message. A session that fails first never sends them.
	Hold(msgs ...pgproto3.BackendMessage) error
	// ReceivePassword returns the body of the next 'p' message (password,
	// SASL initial response or SASL response); another message type is an
	// error.
	ReceivePassword() ([]byte, error)
}

// Request describes the client being authenticated.
type Request struct {
	// StartupUser is the user of the StartupMessage, "user" or
	// "user@tenant-slug".
	StartupUser string
	// TLS is true when the client connection is encrypted.
	TLS bool
	// PeerCertificate is the client's verified TLS certificate, or nil.
	PeerCertificate *x509.Certificate
	// Console is true when the client asked for the console database: the
	// user must have a console role, and it is bound to no single tenant.
	Console bool
}

// Identity is an authenticated client bound to one tenant.
type Identity struct {
	User       string
	Tenant     Tenant
	Capability Capability
	// Role is the upstream login role for the tenant and capability.
	Role     string
	PoolMode string
	// Console is the console role of a console session (Request.Console);
	// Tenant is then zero and ConsoleTenants are the tenants it may see
	// (none: every tenant).
	Console        string
	ConsoleTenants []string
}

// Options configure an Authenticator.
type Options struct {
	// Methods in preference order: scram-sha-256, md5, password, cert.
	Methods []string
	// RolePrefix starts tenant role names (see RoleName).
	RolePrefix string
	// Secret makes the fake credentials of unknown users unguessable.
	Secret []byte
}

// Authenticator checks client credentials and resolves the tenant. It is
// safe for concurrent use.
type Authenticator struct {
	opts Options
}

// Method names accepted in Options.Methods.
const (
	MethodSCRAM    = "scram-sha-256"
	MethodMD5      = "md5"
	MethodPassword = "password"
	MethodCert     = "cert"
)

// NewAuthenticator returns an Authenticator; with no methods it offers
// SCRAM-SHA-256 only.
func NewAuthenticator(opts Options) *Authenticator {
	if len(opts.Methods) == 0 {
		opts.Methods = []string{MethodSCRAM}
	}
	if len(opts.Secret) == 0 {
		opts.Secret = make([]byte, 32)
		_, _ = rand.Read(opts.Secret)
	}
	return &Authenticator{opts: opts}
}

// Authenticate runs the exchange from the first authentication request up to
// and including AuthenticationOk (held: see Wire.Hold), then binds the
// client to one tenant. A failure is an *Error; whether a user exists never
// changes the messages the client sees, only the Reason.
func (a *Authenticator) Authenticate(ctx context.Context, dir *Directory, w Wire, req Request) (*Identity, error) {
	name, slug := dir.SplitUser(req.StartupUser)
	user, known := dir.User(name)

	authenticated := false
	if known && req.PeerCertificate != nil && slices.Contains(a.opts.Methods, MethodCert) {
		if req.PeerCertificate.Subject.CommonName != name {
			return nil, &Error{Code: CodeInvalidAuthorization,
				Message: fmt.Sprintf("certificate authentication failed for user %q", name), Reason: codeReasonCert}
		}
		authenticated = true
	}
	if !authenticated {
		if err := a.checkPassword(ctx, w, req, name, user, known); err != nil {
			return nil, err
		}
	}

	var id *Identity
	var err error
	if req.Console {
		id, err = consoleIdentity(user, slug)
	} else {
		id, err = a.resolve(dir, user, slug)
	}
	if err != nil {
		return nil, err
	}
	if err := w.Hold(&pgproto3.AuthenticationOk{}); err != nil {
		return nil, protocolError("client went away during authentication", err)
	}
	return id, nil
}

// pickMethod chooses the first configured method that can check user's
// verifier on this connection; for unknown users (or none usable) it
// returns the first method at all and false, so the exchange looks the same.
func (a *Authenticator) pickMethod(user *User, known, tls bool) (string, bool) {
	first := ""
	for _, m := range a.opts.Methods {
		if m == MethodCert || (m == MethodPassword && !tls) {
			continue
		}
		if first == "" {
			first = m
		}
		if !known {
			continue
		}
		isMD5 := strings.HasPrefix(user.Verifier, "md5")
		switch {
		case m == MethodSCRAM && !isMD5, m == MethodMD5 && isMD5, m == MethodPassword:
			return m, true
		}
	}
	return first, false
}

func (a *Authenticator) checkPassword(ctx context.Context, w Wire, req Request, name string, user *User, known bool) error {
	method, usable := a.pickMethod(user, known, req.TLS)
	reason := codeReasonBadPassword
	if !known {
		reason = codeReasonUnknownUser
	} else if !usable {
		reason = codeReasonMethod
	}
	verifier := ""
	if usable {
		verifier = user.Verifier
	}
	var ok bool
	var err error
	switch method {
	case MethodSCRAM:
		ok, err = a.scram(w, name, verifier)
	case MethodMD5:
		ok, err = a.md5(w, name, verifier)
	case MethodPassword:
		ok, err = a.cleartext(w, name, verifier)
	default:
		return &Error{Code: CodeInvalidAuthorization, Message: "no authentication method is available for this connection",
			Reason: codeReasonMethod}
	}
	if err != nil {
		var ae *Error
		if errors.As(err, &ae) {
			return ae
		}
		return protocolError("invalid authentication message", err)
	}
	if !ok || !usable {
		return passwordFailed(name, reason, nil)
	}
	return ctx.Err()
}

func (a *Authenticator) scram(w Wire, name, verifier string) (bool, error) {
	cred, err := ParseSCRAMVerifier(verifier)
	real := err == nil
	if !real {
		cred = fakeCredentials(a.opts.Secret, name)
	}
	conv, err := newSCRAMConversation(cred)
	if err != nil {
		return false, err
	}
	if err := w.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{SCRAMMechanism}}); err != nil {
		return false, err
	}
	body, err := w.ReceivePassword()
	if err != nil {
		return false, err
	}
	var initial pgproto3.SASLInitialResponse
	if err := initial.Decode(body); err != nil {
		return false, protocolError("malformed SASL initial response", err)
	}
	if initial.AuthMechanism != SCRAMMechanism {
		return false, &Error{Code: CodeProtocolViolation, Reason: codeReasonProtocol,
			Message: fmt.Sprintf("SASL mechanism %q is not supported; use %s", initial.AuthMechanism, SCRAMMechanism)}
	}
	out, err := conv.step(initial.Data)
	if err != nil {
		return false, protocolError("malformed SCRAM client-first message", err)
	}
	if err := w.Send(&pgproto3.AuthenticationSASLContinue{Data: out}); err != nil {
		return false, err
	}
	body, err = w.ReceivePassword()
	if err != nil {
		return false, err
	}
	var resp pgproto3.SASLResponse
	if err := resp.Decode(body); err != nil {
		return false, protocolError("malformed SASL response", err)
	}
	out, err = conv.step(resp.Data)
	if err != nil || !conv.valid() || !real {
		// A wrong proof and a malformed final message read alike.
		return false, nil
	}
	if err := w.Hold(&pgproto3.AuthenticationSASLFinal{Data: out}); err != nil {
		return false, err
	}
	return true, nil
}

func (a *Authenticator) md5(w Wire, name, verifier string) (bool, error) {
	var salt [4]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return false, err
	}
	if err := w.Send(&pgproto3.AuthenticationMD5Password{Salt: salt}); err != nil {
		return false, err
	}
	pw, err := a.receivePlain(w)
	if err != nil {
		return false, err
	}
	if !strings.HasPrefix(verifier, "md5") || len(verifier) != 35 {
		return false, nil
	}
	return md5Equal(pw, md5Response(verifier, salt)), nil
}

func (a *Authenticator) cleartext(w Wire, name, verifier string) (bool, error) {
	if err := w.Send(&pgproto3.AuthenticationCleartextPassword{}); err != nil {
		return false, err
	}
	pw, err := a.receivePlain(w)
	if err != nil {
		return false, err
	}
	if verifier == "" {
		// Spend the same work as a real check.
		_, _ = SCRAMVerifier(pw, []byte("vitalproxy-fake!"), SCRAMIterations)
		return false, nil
	}
	return VerifyPlaintext(verifier, name, pw), nil
}

func (a *Authenticator) receivePlain(w Wire) (string, error) {
	body, err := w.ReceivePassword()
	if err != nil {
		return "", err
	}
	var pm pgproto3.PasswordMessage
	if err := pm.Decode(body); err != nil {
		return "", protocolError("malformed password message", err)
	}
	return pm.Password, nil
}

// consoleIdentity admits an authenticated user to the console database.
func consoleIdentity(user *User, slug string) (*Identity, error) {
	if user.Console == "" {
		return nil, &Error{Code: CodeInvalidAuthorization, Reason: codeReasonNoConsole,
			Message: fmt.Sprintf("user %q may not use the console database", user.Name)}
	}
	if slug != "" {
		return nil, &Error{Code: CodeInvalidAuthorization, Reason: codeReasonNoConsole,
			Message: "the console database takes a plain user name, without @tenant"}
	}
	return &Identity{User: user.Name, Console: user.Console, ConsoleTenants: slices.Clone(user.Tenants)}, nil
}

// resolve binds an authenticated user to a tenant. The same words answer an
// unknown tenant and one the user may not use, so a client learns nothing
// about tenants it has no access to.
func (a *Authenticator) resolve(dir *Directory, user *User, slug string) (*Identity, error) {
	if slug == "" {
		if len(user.Tenants) == 0 {
			return nil, &Error{Code: CodeInvalidAuthorization, Reason: codeReasonNoTenant,
				Message: fmt.Sprintf("user %q is not bound to any tenant", user.Name)}
		}
		slug = user.Tenants[0]
	}
	notAvailable := func(reason string) error {
		return &Error{Code: CodeInvalidAuthorization, Reason: reason,
			Message: fmt.Sprintf("tenant %q does not exist or is not available to user %q", slug, user.Name)}
	}
	if !slices.Contains(user.Tenants, slug) {
		return nil, notAvailable(codeReasonTenantNotAllowd)
	}
	t, ok := dir.Tenant(slug)
	if !ok {
		return nil, notAvailable(codeReasonUnknownTenant)
	}
	if !t.Active() {
		return nil, &Error{Code: CodeInvalidAuthorization, Reason: codeReasonSuspendedTenant,
			Message: fmt.Sprintf("tenant %q is %s", slug, t.Status)}
	}
	capability := ReadWrite
	switch {
	case user.ReadOnly:
		capability = ReadOnly
	case user.PlatformAdmin && t.Type == "platform":
		capability = Admin
	}
	return &Identity{User: user.Name, Tenant: t, Capability: capability,
		Role: RoleName(a.opts.RolePrefix, t.Slug, capability), PoolMode: user.PoolMode}, nil
}
