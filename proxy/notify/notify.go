// Package notify keeps LISTEN/NOTIFY inside a tenant.
//
// PostgreSQL's notification channels are database-wide and no privilege
// governs LISTEN, NOTIFY or pg_notify, so any session could listen to or
// notify another tenant's channel. The proxy gives each tenant a channel
// namespace: a prefix derived from the role secret and the tenant id, which
// no other tenant can compute. The client's LISTEN, UNLISTEN and NOTIFY
// statements and pg_notify calls are rewritten to the prefixed channel, and
// a NotificationResponse is passed to the client with the prefix removed
// only when its channel carries the client's own prefix; any other is
// dropped. Isolation rests on that filter and on the prefix being secret,
// not on the rewriting: a channel named out of the proxy's sight (dynamic
// SQL in a DO block or a function, a U&"..." name) stays unprefixed, and
// what is sent on it never reaches a client through the proxy.
package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"strings"
)

// prefixChars is how many base32 characters of the HMAC the prefix keeps:
// 65 bits, far beyond guessing, while leaving most of PostgreSQL's 63 bytes
// of channel name to the client.
const prefixChars = 13

// MaxChannelLen is the longest channel name (in bytes) a client can use
// through the proxy: PostgreSQL's 63 less the prefix.
const MaxChannelLen = 63 - (2 + prefixChars + 1)

// Namespace is one tenant's channel namespace. Its methods are safe for
// concurrent use.
type Namespace struct {
	prefix string
}

var lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// New returns the namespace of tenantID under the proxy's role secret. Every
// proxy sharing the secret derives the same prefix, so clients of one tenant
// reach each other through any of them.
func New(secret []byte, tenantID string) *Namespace {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("vitalproxy notify channel\x00"))
	m.Write([]byte(strings.ToLower(tenantID)))
	sum := lowerBase32.EncodeToString(m.Sum(nil))
	return &Namespace{prefix: "vp" + sum[:prefixChars] + "_"}
}

// Prefix returns the channel prefix, as it appears in
// pg_listening_channels().
func (n *Namespace) Prefix() string { return n.prefix }

// Channel returns the server-side name of a client's channel.
func (n *Namespace) Channel(name string) string { return n.prefix + name }

// Notification maps the body of a NotificationResponse (process id,
// channel, payload) for the client: the channel loses the namespace prefix.
// The notifying process id passes unchanged: it is the real pid of the
// backend that ran the NOTIFY, what that session's pg_backend_pid()
// returns and, in session mode, the pid its client was told. It reports
// false when the notification is outside the namespace and must be
// dropped, or malformed. dst is reused for the result.
func (n *Namespace) Notification(dst, body []byte) ([]byte, bool) {
	if len(body) < 6 {
		return dst, false
	}
	rest := body[4:]
	end := indexZero(rest)
	if end < 0 || end < len(n.prefix) || string(rest[:len(n.prefix)]) != n.prefix {
		return dst, false
	}
	dst = append(dst, body[:4]...)
	return append(dst, rest[len(n.prefix):]...), true
}

// NotificationMessage maps a whole NotificationResponse message (type,
// length and body) like Notification, appending the new message to dst.
func (n *Namespace) NotificationMessage(dst, msg []byte) ([]byte, bool) {
	if len(msg) < 5 || msg[0] != 'A' {
		return dst, false
	}
	start := len(dst)
	dst = append(dst, 'A', 0, 0, 0, 0)
	dst, ok := n.Notification(dst, msg[5:])
	if !ok {
		return dst[:start], false
	}
	binary.BigEndian.PutUint32(dst[start+1:], uint32(len(dst)-start-1))
	return dst, true
}

// QueryMessage rewrites a Query ('Q') or Parse ('P') message whose SQL
// names channels, appending the new message to dst. It reports false (and
// leaves dst alone) when nothing needs rewriting.
func (n *Namespace) QueryMessage(dst, msg []byte) ([]byte, bool) {
	if len(msg) < 6 {
		return dst, false
	}
	body := msg[5:]
	var sqlStart int
	switch msg[0] {
	case 'Q':
	case 'P':
		name := indexZero(body)
		if name < 0 {
			return dst, false
		}
		sqlStart = name + 1
	default:
		return dst, false
	}
	sqlEnd := indexZero(body[sqlStart:])
	if sqlEnd < 0 {
		return dst, false
	}
	sql := body[sqlStart : sqlStart+sqlEnd]
	if !Mentions(sql) {
		return dst, false
	}
	out, ok := n.RewriteSQL(nil, sql)
	if !ok {
		return dst, false
	}
	start := len(dst)
	dst = append(dst, msg[0], 0, 0, 0, 0)
	dst = append(dst, body[:sqlStart]...)
	dst = append(dst, out...)
	dst = append(dst, body[sqlStart+sqlEnd:]...)
	binary.BigEndian.PutUint32(dst[start+1:], uint32(len(dst)-start-1))
	return dst, true
}

func indexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// Mentions reports whether sql may name a channel (it contains "listen" or
// "notify" in any case): a cheap test that spares nearly every query the
// lexer.
func Mentions(sql []byte) bool {
	for i := 0; i+6 <= len(sql); i++ {
		switch sql[i] | 0x20 {
		case 'l':
			if foldEq(sql[i:i+6], "listen") {
				return true
			}
		case 'n':
			if foldEq(sql[i:i+6], "notify") {
				return true
			}
		}
	}
	return false
}

// foldEq compares b with the lower-case ASCII word w, ignoring ASCII case.
func foldEq(b []byte, w string) bool {
	if len(b) != len(w) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != w[i] {
			return false
		}
	}
	return true
}
