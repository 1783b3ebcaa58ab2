package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/xdg-go/scram"
)

// SCRAMMechanism is the only SASL mechanism offered to clients. The -PLUS
// variant (channel binding) is not offered; clients that support it answer
// with the "y" flag, which the SCRAM library accepts.
const SCRAMMechanism = "SCRAM-SHA-256"

// ErrBadVerifier means a stored verifier is not in PostgreSQL's format.
var ErrBadVerifier = errors.New("not a SCRAM-SHA-256 verifier")

// ParseSCRAMVerifier parses PostgreSQL's verifier format
// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (base64 parts).
func ParseSCRAMVerifier(v string) (scram.StoredCredentials, error) {
	var sc scram.StoredCredentials
	rest, ok := strings.CutPrefix(v, "SCRAM-SHA-256$")
	if !ok {
		return sc, ErrBadVerifier
	}
	iterSalt, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return sc, ErrBadVerifier
	}
	iterText, saltText, ok := strings.Cut(iterSalt, ":")
	if !ok {
		return sc, ErrBadVerifier
	}
	storedText, serverText, ok := strings.Cut(keys, ":")
	if !ok {
		return sc, ErrBadVerifier
	}
	iters, err := strconv.Atoi(iterText)
	if err != nil || iters < 1 {
		return sc, fmt.Errorf("%w: bad iteration count", ErrBadVerifier)
	}
	salt, err1 := base64.StdEncoding.DecodeString(saltText)
	stored, err2 := base64.StdEncoding.DecodeString(storedText)
	server, err3 := base64.StdEncoding.DecodeString(serverText)
	if err1 != nil || err2 != nil || err3 != nil || len(stored) != sha256.Size || len(server) != sha256.Size || len(salt) == 0 {
		return sc, fmt.Errorf("%w: bad base64 part", ErrBadVerifier)
	}
	sc.Salt = string(salt)
	sc.Iters = iters
	sc.StoredKey = stored
	sc.ServerKey = server
	return sc, nil
}

// fakeCredentials returns credentials for a user that does not exist, stable
// per name so that repeated probes see the same salt, derived from the
// proxy's secret so that they cannot be told from real ones.
func fakeCredentials(secret []byte, name string) scram.StoredCredentials {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("vitalproxy fake scram salt\x00" + name))
	sum := m.Sum(nil)
	keys := hmacSHA256(sum, []byte("keys"))
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(sum[:16]), Iters: SCRAMIterations},
		StoredKey:  keys,
		ServerKey:  hmacSHA256(keys, []byte("server")),
	}
}

// scramConversation is the server side of one SCRAM-SHA-256 exchange.
type scramConversation struct {
	conv *scram.ServerConversation
}

func newSCRAMConversation(cred scram.StoredCredentials) (*scramConversation, error) {
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return cred, nil })
	if err != nil {
		return nil, fmt.Errorf("scram server: %w", err)
	}
	return &scramConversation{conv: srv.NewConversation()}, nil
}

// step feeds one client message and returns the server's answer.
func (c *scramConversation) step(in []byte) ([]byte, error) {
	out, err := c.conv.Step(string(in))
	return []byte(out), err
}

// valid reports whether the client proved knowledge of the password.
func (c *scramConversation) valid() bool { return c.conv.Done() && c.conv.Valid() }

// VerifyPlaintext checks a cleartext password against a stored verifier
// (SCRAM or md5).
func VerifyPlaintext(verifier, user, password string) bool {
	if strings.HasPrefix(verifier, "md5") {
		want := MD5Hash(user, password)
		return hmac.Equal([]byte(want), []byte(verifier))
	}
	sc, err := ParseSCRAMVerifier(verifier)
	if err != nil {
		return false
	}
	got, err := SCRAMVerifier(password, []byte(sc.Salt), sc.Iters)
	if err != nil {
		return false
	}
	gotSC, err := ParseSCRAMVerifier(got)
	if err != nil {
		return false
	}
	return hmac.Equal(gotSC.StoredKey, sc.StoredKey) && hmac.Equal(gotSC.ServerKey, sc.ServerKey)
}
