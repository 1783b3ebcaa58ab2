package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Request codes of the startup phase (the first four bytes after the length).
const (
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
	cancelRequestCode = 80877102
	protocolV3        = 3 << 16
)

// packetKind classifies a startup-phase packet.
type packetKind int

const (
	packetStartup packetKind = iota + 1
	packetSSLRequest
	packetGSSENCRequest
	packetCancel
)

// startupPacket is one packet of the startup phase, read by readStartupPacket.
type startupPacket struct {
	kind packetKind
	// For packetStartup: the parsed message (protocol version forced to 3.0),
	// the minor version the client asked for and the protocol options
	// (_pq_.*) the proxy does not know.
	startup      *pgproto3.StartupMessage
	minor        uint32
	unknownProto []string
	// For packetCancel.
	cancel *pgproto3.CancelRequest
}

// readStartupPacket reads exactly one startup-phase packet from r: a 4-byte
// length, then exactly that many bytes. It never reads past the packet, so
// whatever the client pipelined after it stays unread. max bounds the
// packet's length.
func readStartupPacket(r io.Reader, max int) (*startupPacket, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < 8 || n > int64(max) {
		return nil, protocolError("invalid length of startup packet")
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, protocolError("incomplete startup packet")
		}
		return nil, err
	}
	return parseStartupPacket(body)
}

// parseStartupPacket decodes the body of a startup-phase packet (everything
// after the length).
func parseStartupPacket(body []byte) (*startupPacket, error) {
	if len(body) < 4 {
		return nil, protocolError("invalid length of startup packet")
	}
	code := binary.BigEndian.Uint32(body)
	switch code {
	case sslRequestCode:
		if len(body) != 4 {
			return nil, protocolError("invalid length of SSLRequest")
		}
		return &startupPacket{kind: packetSSLRequest}, nil
	case gssEncRequestCode:
		if len(body) != 4 {
			return nil, protocolError("invalid length of GSSENCRequest")
		}
		return &startupPacket{kind: packetGSSENCRequest}, nil
	case cancelRequestCode:
		// Protocol 3.0 keys are 4 bytes; ours always are.
		if len(body) != 12 {
			return nil, protocolError("invalid length of CancelRequest")
		}
		var c pgproto3.CancelRequest
		if err := c.Decode(body); err != nil {
			return nil, protocolError("invalid CancelRequest")
		}
		return &startupPacket{kind: packetCancel, cancel: &c}, nil
	}
	major, minor := code>>16, code&0xffff
	if major != 3 {
		if major < 3 && major > 0 {
			return nil, newClientError(reasonUnsupported, codeFeatureNotSupported, nil,
				"unsupported frontend protocol %d.%d: the proxy supports protocol 3.0", major, minor)
		}
		return nil, protocolError("invalid startup packet: unknown request code %d", code)
	}
	// pgproto3 decodes 3.0 and 3.2 only; the proxy answers every 3.x with
	// 3.0, so decode a copy stamped 3.0.
	b := make([]byte, len(body))
	copy(b, body)
	binary.BigEndian.PutUint32(b, protocolV3)
	var m pgproto3.StartupMessage
	if err := m.Decode(b); err != nil {
		return nil, protocolError("invalid startup packet layout")
	}
	p := &startupPacket{kind: packetStartup, startup: &m, minor: minor}
	for k := range m.Parameters {
		if strings.HasPrefix(k, "_pq_.") {
			p.unknownProto = append(p.unknownProto, k)
			delete(m.Parameters, k)
		}
	}
	return p, nil
}

// allowedParams are the settings a client may pass at startup (as a
// parameter or as -c in options); they are forwarded upstream unchanged.
// Everything here is a setting any role may SET anyway: the list exists so
// that nothing else (role, session_authorization, custom vital.* settings,
// row_security, replication) ever reaches the upstream startup packet.
var allowedParams = map[string]bool{
	"application_name":                    true,
	"client_encoding":                     true,
	"datestyle":                           true,
	"timezone":                            true,
	"intervalstyle":                       true,
	"extra_float_digits":                  true,
	"search_path":                         true,
	"standard_conforming_strings":         true,
	"statement_timeout":                   true,
	"lock_timeout":                        true,
	"idle_in_transaction_session_timeout": true,
	"idle_session_timeout":                true,
	"default_transaction_isolation":       true,
	"default_transaction_read_only":       true,
	"default_transaction_deferrable":      true,
	"bytea_output":                        true,
	"client_min_messages":                 true,
	"lc_monetary":                         true,
	"lc_numeric":                          true,
	"lc_time":                             true,
	"geqo":                                true,
	"jit":                                 true,
	"work_mem":                            true,
}

// refusedParams are refused outright (rather than silently dropped) because
// a client that sends them expects an effect the proxy never grants.
var refusedParams = map[string]bool{
	"role":                  true,
	"session_authorization": true,
	"row_security":          true,
	"is_superuser":          true,
}

// startupParams is what the proxy takes from a StartupMessage.
type startupParams struct {
	user     string
	database string
	// runtime are the allow-listed settings, keyed as the client spelled
	// them, forwarded upstream.
	runtime map[string]string
	// dropped are parameters neither allowed nor refused, for a debug log.
	dropped []string
}

// filterStartupParams applies the allow-list to a client's startup
// parameters.
func filterStartupParams(params map[string]string) (*startupParams, error) {
	sp := &startupParams{runtime: make(map[string]string, len(params))}
	for k, v := range params {
		switch k {
		case "user":
			sp.user = v
			continue
		case "database":
			sp.database = v
			continue
		case "replication":
			switch strings.ToLower(v) {
			case "", "false", "off", "no", "0":
				continue
			}
			return nil, newClientError(reasonUnsupported, codeFeatureNotSupported, nil,
				"replication connections are not supported by the proxy")
		case "options":
			settings, err := parseOptions(v)
			if err != nil {
				return nil, err
			}
			for _, s := range settings {
				if err := checkSetting(s[0]); err != nil {
					return nil, err
				}
				sp.runtime[s[0]] = s[1]
			}
			continue
		}
		name := strings.ToLower(k)
		switch {
		case allowedParams[name]:
			sp.runtime[k] = v
		case refusedParams[name] || strings.Contains(name, "."):
			return nil, refusedSetting(k)
		default:
			sp.dropped = append(sp.dropped, k)
		}
	}
	if sp.user == "" {
		return nil, newClientError(reasonParamRefused, codeInvalidAuthSpec, nil,
			"no PostgreSQL user name specified in startup packet")
	}
	return sp, nil
}

// checkSetting accepts an allow-listed setting from the options parameter.
func checkSetting(name string) error {
	if allowedParams[strings.ToLower(name)] {
		return nil
	}
	return refusedSetting(name)
}

func refusedSetting(name string) *clientError {
	return newClientError(reasonParamRefused, codeInsufficientPriv, nil,
		"startup setting %q is not allowed through the proxy", name)
}

// parseOptions splits the startup "options" parameter the way PostgreSQL
// does (whitespace separated, backslash escapes) and returns its -c
// name=value and --name=value settings. Any other switch is refused.
func parseOptions(s string) ([][2]string, error) {
	var toks []string
	var cur strings.Builder
	inTok, esc := false, false
	for _, r := range s {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case r == '\\':
			esc, inTok = true, true
		case r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\f' || r == '\v':
			if inTok {
				toks = append(toks, cur.String())
				cur.Reset()
				inTok = false
			}
		default:
			cur.WriteRune(r)
			inTok = true
		}
	}
	if inTok {
		toks = append(toks, cur.String())
	}
	var out [][2]string
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		var setting string
		switch {
		case t == "-c":
			if i+1 >= len(toks) {
				return nil, newClientError(reasonParamRefused, codeProtocolViolation, nil, "startup options: -c needs name=value")
			}
			i++
			setting = toks[i]
		case strings.HasPrefix(t, "-c"):
			setting = t[2:]
		case strings.HasPrefix(t, "--"):
			setting = strings.ReplaceAll(t[2:], "-", "_")
			if eq := strings.IndexByte(t[2:], '='); eq >= 0 {
				setting = strings.ReplaceAll(t[2:2+eq], "-", "_") + t[2+eq:]
			}
		default:
			return nil, newClientError(reasonParamRefused, codeInsufficientPriv, nil,
				"startup option %q is not allowed through the proxy", t)
		}
		name, value, ok := strings.Cut(setting, "=")
		if !ok || name == "" {
			return nil, newClientError(reasonParamRefused, codeProtocolViolation, nil,
				"startup options: %q is not name=value", setting)
		}
		out = append(out, [2]string{name, value})
	}
	return out, nil
}

// clientWire is the client connection during authentication (auth.Wire). It
// reads each message with exact-length reads from the socket: nothing past
// the message is consumed. Not safe for concurrent use.
type clientWire struct {
	conn   net.Conn
	maxLen int
	buf    []byte
	held   int // leading bytes of buf that Hold encoded and no write sent yet
}

// Send encodes msgs and writes them, after any held messages, in one write.
func (w *clientWire) Send(msgs ...pgproto3.BackendMessage) error {
	if err := w.Hold(msgs...); err != nil {
		return err
	}
	b := w.buf[:w.held]
	w.held = 0
	_, err := w.conn.Write(b)
	return err
}

// Hold encodes msgs to be written with the next Send (see auth.Wire).
func (w *clientWire) Hold(msgs ...pgproto3.BackendMessage) error {
	b := w.buf[:w.held]
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			return fmt.Errorf("encode %T: %w", m, err)
		}
	}
	w.buf, w.held = b, len(b)
	return nil
}

// ReceivePassword returns the body of the next message, which must be a
// password-type ('p') message: PasswordMessage, SASLInitialResponse or
// SASLResponse. The caller owns the returned slice.
func (w *clientWire) ReceivePassword() ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(w.conn, hdr[:]); err != nil {
		return nil, err
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[1:])))
	if hdr[0] == 'X' && n == 4 {
		return nil, errClientTerminated
	}
	if hdr[0] != 'p' {
		return nil, protocolError("expected a password message during authentication, got message type %q", hdr[0])
	}
	if n < 4 || n-4 > int64(w.maxLen) {
		return nil, protocolError("invalid message length during authentication")
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(w.conn, body); err != nil {
		return nil, err
	}
	return body, nil
}

// errClientTerminated means the client sent Terminate during authentication.
var errClientTerminated = errors.New("client sent Terminate during authentication")
