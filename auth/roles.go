package auth

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// Capability is what a tenant login role may do.
type Capability string

// The capabilities a tenant role can have; each has its own login role.
const (
	ReadWrite Capability = "rw"
	ReadOnly  Capability = "ro"
	// Admin exists only for the platform tenant; is_platform_admin()
	// recognises it.
	Admin Capability = "admin"
)

// maxIdentifier is PostgreSQL's NAMEDATALEN-1.
const maxIdentifier = 63

// RoleName returns the login role of tenant slug for capability c, e.g.
// vt_digital_health_startup_rw. Names are lower case, [a-z0-9_] only and
// at most 63 bytes: a long slug is cut and suffixed with a hash of the whole
// slug so that two long slugs never share a role. Slugs are [a-z0-9-], so
// mapping '-' to '_' keeps names distinct.
func RoleName(prefix, slug string, c Capability) string {
	var b strings.Builder
	for _, r := range strings.ToLower(slug) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	body := b.String()
	suffix := "_" + string(c)
	if len(prefix)+len(body)+len(suffix) > maxIdentifier {
		sum := sha256.Sum256([]byte(slug))
		h := "_" + hex.EncodeToString(sum[:4])
		room := maxIdentifier - len(prefix) - len(suffix) - len(h)
		if room < len(body) {
			body = body[:room]
		}
		body += h
	}
	return prefix + body + suffix
}

// RolePassword derives the login password of role from the proxy's role
// secret: hex(HMAC-SHA256(secret, role)). The proxy recomputes it on every
// upstream login, so no per-tenant password is stored anywhere.
func RolePassword(secret []byte, role string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(role))
	return hex.EncodeToString(m.Sum(nil))
}

// SCRAMIterations is the PBKDF2 iteration count of verifiers we create,
// PostgreSQL's default.
const SCRAMIterations = 4096

// NewSCRAMVerifier returns a SCRAM-SHA-256 verifier for password in
// PostgreSQL's format (SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>)
// with a random 16-byte salt. Storing it (as ALTER ROLE ... PASSWORD or in the
// user store) never sends or keeps the password itself.
func NewSCRAMVerifier(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("read random salt: %w", err)
	}
	return SCRAMVerifier(password, salt, SCRAMIterations)
}

// SCRAMVerifier computes a verifier with the given salt and iteration count.
// The password is used as given (PostgreSQL applies SASLprep, which leaves
// ASCII passwords such as the derived role passwords unchanged).
func SCRAMVerifier(password string, salt []byte, iterations int) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("derive SCRAM key: %w", err)
	}
	clientKey := hmacSHA256(salted, []byte("Client Key"))
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, []byte("Server Key"))
	enc := base64.StdEncoding
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, enc.EncodeToString(salt),
		enc.EncodeToString(storedKey[:]), enc.EncodeToString(serverKey)), nil
}

func hmacSHA256(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}
