package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// PooledRoleName is the login role that backends shared by many tenants
// (isolation mode context) log in as, one per capability: e.g.
// vt__pooled_rw. Tenant slugs never start with '_', so no tenant's role
// can have this name.
func PooledRoleName(prefix string, c Capability) string {
	return prefix + "_pooled_" + string(c)
}

// contextKeyLabel separates the context key from role passwords, which
// derive from the same secret.
const contextKeyLabel = "vitalproxy tenant context key v1"

// ContextKey derives the key that signs tenant contexts from the proxy's
// role secret. The database keeps it (vital.context_key) to verify them.
func ContextKey(secret []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(contextKeyLabel))
	return m.Sum(nil)
}

// ContextKeyPads returns HMAC-SHA256's two padded keys (key XOR ipad, key
// XOR opad), as the database stores them so that it can verify a context
// with its sha256 function alone.
func ContextKeyPads(key []byte) (ikey, okey []byte) {
	const block = 64
	k := key
	if len(k) > block {
		s := sha256.Sum256(k)
		k = s[:]
	}
	ikey, okey = make([]byte, block), make([]byte, block)
	copy(ikey, k)
	copy(okey, k)
	for i := range block {
		ikey[i] ^= 0x36
		okey[i] ^= 0x5c
	}
	return ikey, okey
}

// TenantContext is the value the proxy gives enter_tenant_context on a
// shared backend: "<tenant uuid>:<hex HMAC>", the HMAC binding the tenant to
// that backend's pid and login role, so a client that reads its own context
// can neither forge another tenant's nor replay it on another backend.
func TenantContext(key []byte, tenantID string, pid uint32, role string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("vitalproxy tenant context v1:" + tenantID + ":" + strconv.FormatUint(uint64(pid), 10) + ":" + role))
	return tenantID + ":" + hex.EncodeToString(m.Sum(nil))
}
