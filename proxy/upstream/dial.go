// Package upstream logs in to PostgreSQL as a tenant's role.
//
// It speaks the start-up protocol itself instead of going through pgconn so
// that it can (a) cache each role's SCRAM keys: the salted password is a
// PBKDF2 stretch of 4096 rounds, the same for every login of a role, so it
// is computed once and a new backend then costs a TCP connect and a few
// messages; and (b) pipeline the tenant-context assertion right behind the
// authentication, saving a round trip. URL parsing, TLS settings and libpq's
// sslmode fallbacks come from pgconn.ParseConfig.
//
// Every read is exact (header, then body), so when Dial returns nothing the
// server sent is left in a buffer: the caller may splice the raw connection.
package upstream

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// MaxMessageLen bounds a message read during login.
const MaxMessageLen = 1 << 20

// Dialer logs in to one PostgreSQL server as any role whose password it can
// compute. It is safe for concurrent use.
type Dialer struct {
	cfg      *pgconn.Config
	password func(role string) string
	timeout  time.Duration

	mu   sync.Mutex
	keys map[keyID]scramKeys
}

type keyID struct {
	role  string
	salt  string
	iters int
}

type scramKeys struct {
	clientKey []byte
	storedKey []byte
	serverKey []byte
}

// NewDialer parses the upstream URL (its user and password are ignored) and
// returns a Dialer that asks password for each role's password.
func NewDialer(upstreamURL string, password func(role string) string, connectTimeout time.Duration) (*Dialer, error) {
	cfg, err := pgconn.ParseConfig(upstreamURL)
	if err != nil {
		return nil, fmt.Errorf("parse upstream URL: %w", err)
	}
	if connectTimeout <= 0 {
		connectTimeout = 10 * time.Second
	}
	return &Dialer{cfg: cfg, password: password, timeout: connectTimeout, keys: map[keyID]scramKeys{}}, nil
}

// Database is the database tenants log in to.
func (d *Dialer) Database() string { return d.cfg.Database }

// Conn is a logged-in server connection. The caller owns Conn and must
// close it.
type Conn struct {
	net.Conn
	// PID and SecretKey identify the backend for CancelRequests.
	PID       uint32
	SecretKey []byte
	// Params are the server's ParameterStatus messages in arrival order.
	Params []pgproto3.ParameterStatus
	// Addr is where the connection went, for cancel requests.
	Network, Address string
	tlsConfig        *tls.Config
	// RoleDefaults: when the connection logged in, its role had defaults
	// of its own (ALTER ROLE ... SET). They became the session's reset
	// values, which DISCARD ALL returns to even after the defaults are
	// removed, so such a connection must not outlive its first borrower.
	// Known only when the tenant context was asserted at login.
	RoleDefaults bool
}

// Options for one login.
type Options struct {
	Role string
	// RuntimeParams go into the StartupMessage (application_name, ...).
	RuntimeParams map[string]string
	// TenantID, when set, is asserted with SELECT set_tenant_context($1)
	// before Dial returns; a failure fails the login.
	TenantID string
	// Pooled: the role is a pooled role of context mode, whose backends
	// enter a tenant's context per transaction. No context is asserted at
	// login, but Conn.RoleDefaults is learnt the same way.
	Pooled bool
}

// Error is a server ErrorResponse received during login.
type Error = pgconn.PgError

// ErrBadServerSignature means the server could not prove it knows the
// role's verifier: not the server we meant to reach.
var ErrBadServerSignature = errors.New("upstream server's SCRAM signature is wrong")

// Dial connects and logs in as opts.Role, trying each address and TLS
// fallback of the URL in order like libpq.
func (d *Dialer) Dial(ctx context.Context, opts Options) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	targets := append([]*pgconn.FallbackConfig{{Host: d.cfg.Host, Port: d.cfg.Port, TLSConfig: d.cfg.TLSConfig}}, d.cfg.Fallbacks...)
	var errs []error
	for _, t := range targets {
		c, err := d.dialOne(ctx, t, opts)
		if err == nil {
			return c, nil
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			// The server answered: another address or TLS mode won't help.
			return nil, err
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// DialHost connects to one server, host and port (a Unix socket directory
// when host starts with /), and logs in as opts.Role, trying the TLS
// configurations in order (nil: plaintext) like libpq's sslmode
// fallbacks. The URL's other hosts are not tried: the caller picked this
// one (a primary, a standby).
func (d *Dialer) DialHost(ctx context.Context, host string, port uint16, tlsConfigs []*tls.Config, opts Options) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	if len(tlsConfigs) == 0 {
		tlsConfigs = []*tls.Config{nil}
	}
	var errs []error
	for _, tc := range tlsConfigs {
		c, err := d.dialOne(ctx, &pgconn.FallbackConfig{Host: host, Port: port, TLSConfig: tc}, opts)
		if err == nil {
			return c, nil
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return nil, err
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

func (d *Dialer) dialOne(ctx context.Context, t *pgconn.FallbackConfig, opts Options) (*Conn, error) {
	network, address := "tcp", net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port)))
	if strings.HasPrefix(t.Host, "/") {
		network, address = "unix", fmt.Sprintf("%s/.s.PGSQL.%d", t.Host, t.Port)
	}
	var nd net.Dialer
	raw, err := nd.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		raw.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c := &Conn{Conn: raw, Network: network, Address: address, tlsConfig: t.TLSConfig}
	if t.TLSConfig != nil {
		if err := c.startTLS(ctx, t.TLSConfig); err != nil {
			raw.Close()
			return nil, err
		}
	}
	if err := d.login(c, opts); err != nil {
		c.Conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("log in to %s: %w", address, ctx.Err())
		}
		return nil, err
	}
	if !stop() {
		c.Conn.Close()
		return nil, ctx.Err()
	}
	c.Conn.SetDeadline(time.Time{})
	return c, nil
}

func (c *Conn) startTLS(ctx context.Context, cfg *tls.Config) error {
	req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if _, err := c.Conn.Write(req); err != nil {
		return fmt.Errorf("send SSLRequest: %w", err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c.Conn, b[:]); err != nil {
		return fmt.Errorf("read SSLRequest answer: %w", err)
	}
	if b[0] != 'S' {
		return errors.New("upstream server refused TLS")
	}
	tc := tls.Client(c.Conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake with upstream: %w", err)
	}
	c.Conn = tc
	return nil
}

func (d *Dialer) login(c *Conn, opts Options) error {
	// role=none overrides any default a tenant gave its own role with
	// ALTER ROLE ... SET role (startup settings beat role defaults, and
	// DISCARD ALL returns to them): the session's current_user is its login
	// role.
	params := map[string]string{"user": opts.Role, "database": d.cfg.Database, "role": "none"}
	for k, v := range opts.RuntimeParams {
		if k != "user" && k != "database" && k != "role" {
			params[k] = v
		}
	}
	buf, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := c.Conn.Write(buf); err != nil {
		return fmt.Errorf("send startup message: %w", err)
	}
	r := reader{conn: c.Conn}
	var scram *scramClient
	for {
		typ, body, err := r.next()
		if err != nil {
			return err
		}
		switch typ {
		case 'R':
			done, out, err := d.authStep(&scram, opts.Role, body)
			if err != nil {
				return err
			}
			if done {
				// Pipeline the context assertion behind the start-up.
				if opts.Pooled {
					out = appendPooledQuery(out)
				} else {
					out = appendContextQuery(out, opts.TenantID)
				}
			}
			if len(out) > 0 {
				if _, err := c.Conn.Write(out); err != nil {
					return fmt.Errorf("send to upstream: %w", err)
				}
			}
		case 'E':
			return decodeError(body)
		case 'S':
			var ps pgproto3.ParameterStatus
			if err := ps.Decode(body); err != nil {
				return err
			}
			c.Params = append(c.Params, ps)
		case 'K':
			var k pgproto3.BackendKeyData
			if err := k.Decode(body); err != nil {
				return err
			}
			c.PID, c.SecretKey = k.ProcessID, k.SecretKey
		case 'Z':
			if opts.TenantID == "" && !opts.Pooled {
				return nil
			}
			defaults, err := awaitContext(&r)
			c.RoleDefaults = defaults
			return err
		case 'N', 'v':
			// Notices and NegotiateProtocolVersion need no answer here.
		default:
			return fmt.Errorf("unexpected message %q from upstream during login", typ)
		}
	}
}

// awaitContext reads the answer to the pipelined context query: whether
// the login role has defaults of its own, and any error.
func awaitContext(r *reader) (roleDefaults bool, err error) {
	var failure error
	for {
		typ, body, err := r.next()
		if err != nil {
			return false, err
		}
		switch typ {
		case 'E':
			failure = decodeError(body)
		case 'Z':
			return roleDefaults, failure
		case 'D':
			var row pgproto3.DataRow
			if err := row.Decode(body); err == nil && len(row.Values) == 2 {
				roleDefaults = string(row.Values[1]) != "f"
			}
		case '1', '2', 'C', 'N', 'S', 'T', 'n':
		default:
			return false, fmt.Errorf("unexpected message %q from upstream after set_tenant_context", typ)
		}
	}
}

// contextQuery asserts the tenant (set_tenant_context raises 42501 unless
// the tenant is the one the login role belongs to) and reports whether the
// login role has defaults of its own, in any database (see
// Conn.RoleDefaults).
const contextQuery = "SELECT public.set_tenant_context($1::uuid), EXISTS (SELECT FROM pg_catalog.pg_db_role_setting s " +
	"JOIN pg_catalog.pg_roles r ON r.oid = s.setrole WHERE r.rolname = session_user)"

// pooledQuery reports, like contextQuery, whether a pooled role has
// defaults of its own.
const pooledQuery = "SELECT NULL, EXISTS (SELECT FROM pg_catalog.pg_db_role_setting s " +
	"JOIN pg_catalog.pg_roles r ON r.oid = s.setrole WHERE r.rolname = session_user)"

func appendPooledQuery(dst []byte) []byte {
	dst, _ = (&pgproto3.Parse{Query: pooledQuery}).Encode(dst)
	dst, _ = (&pgproto3.Bind{}).Encode(dst)
	dst, _ = (&pgproto3.Execute{}).Encode(dst)
	dst, _ = (&pgproto3.Sync{}).Encode(dst)
	return dst
}

func appendContextQuery(dst []byte, tenantID string) []byte {
	if tenantID == "" {
		return dst
	}
	dst, _ = (&pgproto3.Parse{Query: contextQuery}).Encode(dst)
	dst, _ = (&pgproto3.Bind{Parameters: [][]byte{[]byte(tenantID)}}).Encode(dst)
	dst, _ = (&pgproto3.Execute{}).Encode(dst)
	dst, _ = (&pgproto3.Sync{}).Encode(dst)
	return dst
}

// authStep answers one Authentication message; done reports AuthenticationOk.
func (d *Dialer) authStep(sc **scramClient, role string, body []byte) (done bool, out []byte, err error) {
	if len(body) < 4 {
		return false, nil, errors.New("short authentication message from upstream")
	}
	switch binary.BigEndian.Uint32(body) {
	case pgproto3.AuthTypeOk:
		if *sc != nil && !(*sc).verified {
			return false, nil, ErrBadServerSignature
		}
		return true, nil, nil
	case pgproto3.AuthTypeSASL:
		var m pgproto3.AuthenticationSASL
		if err := m.Decode(body); err != nil {
			return false, nil, err
		}
		if !containsString(m.AuthMechanisms, "SCRAM-SHA-256") {
			return false, nil, fmt.Errorf("upstream offers no SCRAM-SHA-256 (offers %v)", m.AuthMechanisms)
		}
		*sc = newSCRAMClient()
		out, err := (&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte((*sc).clientFirst())}).Encode(nil)
		return false, out, err
	case pgproto3.AuthTypeSASLContinue:
		if *sc == nil {
			return false, nil, errors.New("SASL continue without SASL start")
		}
		var m pgproto3.AuthenticationSASLContinue
		if err := m.Decode(body); err != nil {
			return false, nil, err
		}
		final, err := (*sc).clientFinal(string(m.Data), func(salt string, iters int) (scramKeys, error) {
			return d.roleKeys(role, salt, iters)
		})
		if err != nil {
			return false, nil, err
		}
		out, err := (&pgproto3.SASLResponse{Data: []byte(final)}).Encode(nil)
		return false, out, err
	case pgproto3.AuthTypeSASLFinal:
		if *sc == nil {
			return false, nil, errors.New("SASL final without SASL start")
		}
		var m pgproto3.AuthenticationSASLFinal
		if err := m.Decode(body); err != nil {
			return false, nil, err
		}
		return false, nil, (*sc).verifyServer(string(m.Data))
	case pgproto3.AuthTypeCleartextPassword:
		out, err := (&pgproto3.PasswordMessage{Password: d.password(role)}).Encode(nil)
		return false, out, err
	default:
		return false, nil, fmt.Errorf("upstream asks for an authentication method vitalproxy does not use (type %d); configure scram-sha-256 for tenant roles", binary.BigEndian.Uint32(body))
	}
}

// roleKeys returns the role's SCRAM keys, stretching the password only the
// first time a (role, salt, iterations) triple is seen.
func (d *Dialer) roleKeys(role, salt string, iters int) (scramKeys, error) {
	id := keyID{role, salt, iters}
	d.mu.Lock()
	k, ok := d.keys[id]
	d.mu.Unlock()
	if ok {
		return k, nil
	}
	if iters < 1 || iters > 1<<20 {
		return k, fmt.Errorf("upstream asks for %d SCRAM iterations", iters)
	}
	saltBytes, err := base64.StdEncoding.DecodeString(salt)
	if err != nil {
		return k, fmt.Errorf("bad SCRAM salt from upstream: %w", err)
	}
	salted, err := pbkdf2.Key(sha256.New, d.password(role), saltBytes, iters, sha256.Size)
	if err != nil {
		return k, err
	}
	k.clientKey = hmacSum(salted, "Client Key")
	sk := sha256.Sum256(k.clientKey)
	k.storedKey = sk[:]
	k.serverKey = hmacSum(salted, "Server Key")
	d.mu.Lock()
	if len(d.keys) > 100000 {
		clear(d.keys) // bound the cache; roles are few in practice
	}
	d.keys[id] = k
	d.mu.Unlock()
	return k, nil
}

// CachedKeys reports how many roles' SCRAM keys are cached.
func (d *Dialer) CachedKeys() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.keys)
}

func hmacSum(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// scramClient is the client side of SCRAM-SHA-256 without channel binding.
type scramClient struct {
	nonce       string
	clientBare  string
	serverFirst string
	authMessage string
	serverKey   []byte
	verified    bool
}

func newSCRAMClient() *scramClient {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return &scramClient{nonce: base64.RawStdEncoding.EncodeToString(b)}
}

func (s *scramClient) clientFirst() string {
	s.clientBare = "n=,r=" + s.nonce
	return "n,," + s.clientBare
}

func (s *scramClient) clientFinal(serverFirst string, keys func(salt string, iters int) (scramKeys, error)) (string, error) {
	s.serverFirst = serverFirst
	var nonce, salt string
	iters := 0
	for _, f := range strings.Split(serverFirst, ",") {
		switch {
		case strings.HasPrefix(f, "r="):
			nonce = f[2:]
		case strings.HasPrefix(f, "s="):
			salt = f[2:]
		case strings.HasPrefix(f, "i="):
			iters, _ = strconv.Atoi(f[2:])
		}
	}
	if !strings.HasPrefix(nonce, s.nonce) || len(nonce) == len(s.nonce) || salt == "" || iters == 0 {
		return "", errors.New("malformed SCRAM server-first message from upstream")
	}
	k, err := keys(salt, iters)
	if err != nil {
		return "", err
	}
	withoutProof := "c=biws,r=" + nonce
	s.authMessage = s.clientBare + "," + serverFirst + "," + withoutProof
	sig := hmacSum(k.storedKey, s.authMessage)
	proof := make([]byte, len(sig))
	for i := range sig {
		proof[i] = k.clientKey[i] ^ sig[i]
	}
	s.serverKey = k.serverKey
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), nil
}

func (s *scramClient) verifyServer(serverFinal string) error {
	v, ok := strings.CutPrefix(serverFinal, "v=")
	if !ok {
		return ErrBadServerSignature
	}
	got, err := base64.StdEncoding.DecodeString(v)
	if err != nil || !hmac.Equal(got, hmacSum(s.serverKey, s.authMessage)) {
		return ErrBadServerSignature
	}
	s.verified = true
	return nil
}

// reader reads whole messages with exact reads.
type reader struct {
	conn net.Conn
	hdr  [5]byte
	buf  []byte
}

func (r *reader) next() (byte, []byte, error) {
	if _, err := io.ReadFull(r.conn, r.hdr[:]); err != nil {
		return 0, nil, fmt.Errorf("read from upstream: %w", err)
	}
	n := int(binary.BigEndian.Uint32(r.hdr[1:])) - 4
	if n < 0 || n > MaxMessageLen {
		return 0, nil, fmt.Errorf("upstream message of %d bytes during login", n)
	}
	if cap(r.buf) < n {
		r.buf = make([]byte, n)
	}
	body := r.buf[:n]
	if _, err := io.ReadFull(r.conn, body); err != nil {
		return 0, nil, fmt.Errorf("read from upstream: %w", err)
	}
	return r.hdr[0], body, nil
}

func decodeError(body []byte) error {
	var e pgproto3.ErrorResponse
	if err := e.Decode(body); err != nil {
		return fmt.Errorf("malformed error from upstream: %w", err)
	}
	return &pgconn.PgError{Severity: e.Severity, Code: e.Code, Message: e.Message, Detail: e.Detail, Hint: e.Hint}
}

// Cancel asks the server to cancel the query running on this connection.
func (c *Conn) Cancel(ctx context.Context) error {
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, c.Network, c.Address)
	if err != nil {
		return fmt.Errorf("dial for cancel: %w", err)
	}
	defer conn.Close()
	msg, err := (&pgproto3.CancelRequest{ProcessID: c.PID, SecretKey: c.SecretKey}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("send cancel: %w", err)
	}
	// The server closes the connection when done; wait briefly for that.
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = conn.Read(make([]byte, 1))
	return nil
}

// Terminate says goodbye and closes the connection.
func (c *Conn) Terminate() error {
	c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Conn.Write([]byte{'X', 0, 0, 0, 4})
	return c.Conn.Close()
}
