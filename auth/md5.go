package auth

import (
	"crypto/md5"
	"crypto/subtle"
	"encoding/hex"
)

// MD5Hash returns PostgreSQL's stored md5 password form: "md5" +
// hex(md5(password + user)). md5 is weak; it is accepted only where
// auth.methods lists it, for old clients.
func MD5Hash(user, password string) string {
	sum := md5.Sum([]byte(password + user))
	return "md5" + hex.EncodeToString(sum[:])
}

// md5Response is what a client sends for a stored hash and a 4-byte salt:
// "md5" + hex(md5(hex-part-of-stored + salt)).
func md5Response(stored string, salt [4]byte) string {
	inner := stored[len("md5"):]
	sum := md5.Sum(append([]byte(inner), salt[:]...))
	return "md5" + hex.EncodeToString(sum[:])
}

func md5Equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
