package auth_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/vitalproxy/vitalproxy/auth"
)

func TestContextKeyPadsAreHMAC(t *testing.T) {
	key := auth.ContextKey([]byte("secret"))
	ikey, okey := auth.ContextKeyPads(key)
	msg := []byte("message")
	inner := sha256.Sum256(append(append([]byte{}, ikey...), msg...))
	outer := sha256.Sum256(append(append([]byte{}, okey...), inner[:]...))
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	if want := m.Sum(nil); !hmac.Equal(outer[:], want) {
		t.Fatalf("pads do not compute HMAC: %x, want %x", outer, want)
	}
}

func TestTenantContext(t *testing.T) {
	key := auth.ContextKey([]byte("secret"))
	const id = "11111111-2222-3333-4444-555555555555"
	c := auth.TenantContext(key, id, 42, "vt__pooled_rw")
	tests := []struct {
		name  string
		other string
	}{
		{"other pid", auth.TenantContext(key, id, 43, "vt__pooled_rw")},
		{"other role", auth.TenantContext(key, id, 42, "vt__pooled_ro")},
		{"other tenant", auth.TenantContext(key, "11111111-2222-3333-4444-555555555556", 42, "vt__pooled_rw")},
		{"other key", auth.TenantContext(auth.ContextKey([]byte("other")), id, 42, "vt__pooled_rw")},
	}
	for _, tc := range tests {
		if tc.other == c {
			t.Errorf("%s: same context %s", tc.name, c)
		}
	}
	if len(c) != 101 || !strings.HasPrefix(c, id+":") {
		t.Fatalf("context %q: want <uuid>:<64 hex>", c)
	}
	if _, err := hex.DecodeString(c[37:]); err != nil {
		t.Fatalf("mac is not hex: %v", err)
	}
	if auth.PooledRoleName("vt_", auth.ReadWrite) != "vt__pooled_rw" {
		t.Errorf("PooledRoleName = %s", auth.PooledRoleName("vt_", auth.ReadWrite))
	}
}
