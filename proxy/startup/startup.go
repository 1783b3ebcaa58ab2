package startup

import (
	"encoding/binary"
	"errors"
	"io"
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

// PacketKind classifies a startup-phase packet.
type PacketKind int

// The kinds of startup-phase packets.
const (
	PacketStartup PacketKind = iota + 1
	PacketSSLRequest
	PacketGSSENCRequest
	PacketCancel
)

// Packet is one packet of the startup phase, read by ReadPacket.
type Packet struct {
	Kind PacketKind
	// For PacketStartup: the parsed message (protocol version forced to
	// 3.0), the minor version the client asked for and the protocol options
	// (_pq_.*) the proxy does not know, which it names in a
	// NegotiateProtocolVersion.
	Startup        *pgproto3.StartupMessage
	Minor          uint32
	UnknownOptions []string
	// For PacketCancel.
	Cancel *pgproto3.CancelRequest
}

// ReadPacket reads exactly one startup-phase packet from r: a 4-byte
// length, then exactly that many bytes. It never reads past the packet, so
// whatever the client pipelined after it stays unread. max bounds the
// packet's length. A packet the proxy refuses is an *Error.
func ReadPacket(r io.Reader, max int) (*Packet, error) {
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
	return parsePacket(body)
}

// parsePacket decodes the body of a startup-phase packet (everything
// after the length).
func parsePacket(body []byte) (*Packet, error) {
	if len(body) < 4 {
		return nil, protocolError("invalid length of startup packet")
	}
	code := binary.BigEndian.Uint32(body)
	switch code {
	case sslRequestCode:
		if len(body) != 4 {
			return nil, protocolError("invalid length of SSLRequest")
		}
		return &Packet{Kind: PacketSSLRequest}, nil
	case gssEncRequestCode:
		if len(body) != 4 {
			return nil, protocolError("invalid length of GSSENCRequest")
		}
		return &Packet{Kind: PacketGSSENCRequest}, nil
	case cancelRequestCode:
		// Protocol 3.0 keys are 4 bytes; ours always are.
		if len(body) != 12 {
			return nil, protocolError("invalid length of CancelRequest")
		}
		var c pgproto3.CancelRequest
		if err := c.Decode(body); err != nil {
			return nil, protocolError("invalid CancelRequest")
		}
		return &Packet{Kind: PacketCancel, Cancel: &c}, nil
	}
	major, minor := code>>16, code&0xffff
	if major != 3 {
		if major < 3 && major > 0 {
			return nil, refuse(ReasonUnsupported, codeFeatureNotSupported,
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
	p := &Packet{Kind: PacketStartup, Startup: &m, Minor: minor}
	for k := range m.Parameters {
		if strings.HasPrefix(k, "_pq_.") {
			p.UnknownOptions = append(p.UnknownOptions, k)
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

// Params is what the proxy takes from a StartupMessage.
type Params struct {
	User     string
	Database string
	// Runtime are the allow-listed settings, keyed as the client spelled
	// them, forwarded upstream.
	Runtime map[string]string
	// Dropped are parameters neither allowed nor refused, for a debug log.
	Dropped []string
}

// FilterParams applies the allow-list to a client's startup parameters. A
// parameter the proxy refuses is an *Error.
func FilterParams(params map[string]string) (*Params, error) {
	sp := &Params{Runtime: make(map[string]string, len(params))}
	for k, v := range params {
		switch k {
		case "user":
			sp.User = v
			continue
		case "database":
			sp.Database = v
			continue
		case "replication":
			switch strings.ToLower(v) {
			case "", "false", "off", "no", "0":
				continue
			}
			return nil, refuse(ReasonUnsupported, codeFeatureNotSupported,
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
				sp.Runtime[s[0]] = s[1]
			}
			continue
		}
		name := strings.ToLower(k)
		switch {
		case allowedParams[name]:
			sp.Runtime[k] = v
		case refusedParams[name] || strings.Contains(name, "."):
			return nil, refusedSetting(k)
		default:
			sp.Dropped = append(sp.Dropped, k)
		}
	}
	if sp.User == "" {
		return nil, refuse(ReasonParamRefused, codeInvalidAuthSpec,
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

func refusedSetting(name string) *Error {
	return refuse(ReasonParamRefused, codeInsufficientPriv,
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
				return nil, refuse(ReasonParamRefused, codeProtocolViolation, "startup options: -c needs name=value")
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
			return nil, refuse(ReasonParamRefused, codeInsufficientPriv,
				"startup option %q is not allowed through the proxy", t)
		}
		name, value, ok := strings.Cut(setting, "=")
		if !ok || name == "" {
			return nil, refuse(ReasonParamRefused, codeProtocolViolation,
				"startup options: %q is not name=value", setting)
		}
		out = append(out, [2]string{name, value})
	}
	return out, nil
}
