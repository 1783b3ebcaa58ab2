package integration_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeClientCert writes a client certificate for cn signed by the CA in
// caCert/caKey and returns its paths.
func writeClientCert(t testing.TB, dir, caCert, caKey, cn string) (string, string) {
	t.Helper()
	readPEM := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		return blk.Bytes
	}
	ca, err := x509.ParseCertificate(readPEM(caCert))
	if err != nil {
		t.Fatal(err)
	}
	caPriv, err := x509.ParseECPrivateKey(readPEM(caKey))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caPriv)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "client-"+cn+".crt"), filepath.Join(dir, "client-"+cn+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestClientCertificate logs in with a verified TLS client certificate
// instead of a password.
func TestClientCertificate(t *testing.T) {
	noLeaks(t)
	f := getFixture(t)
	dir := t.TempDir()
	srvCert, srvKey := writeCert(t, dir, "proxy")
	caCert, caKey := writeCert(t, dir, "clients-ca")
	cfg := f.config(t)
	cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.ClientCAFile = srvCert, srvKey, caCert
	cfg.Auth.Methods = []string{"cert", "scram-sha-256"}
	p := startProxy(t, cfg)
	ctx := testCtx(t)

	aliceCert, aliceKey := writeClientCert(t, dir, caCert, caKey, "alice")
	tlsURL := func(user, pw, cert, key string) string {
		u := strings.Replace(p.url(user, pw), "sslmode=disable", "sslmode=verify-ca&sslrootcert="+srvCert, 1)
		if cert != "" {
			u += "&sslcert=" + cert + "&sslkey=" + key
		}
		return u
	}
	conn := connectURL(t, tlsURL("alice", "not-the-password", aliceCert, aliceKey))
	if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatal("not TLS")
	}
	var tenant string
	if err := conn.QueryRow(ctx, "SELECT current_setting('vital.tenant_id', true)").Scan(&tenant); err != nil || tenant != f.tenants[dhSlug] {
		t.Fatalf("tenant %q %v", tenant, err)
	}
	// A certificate for alice does not log in bob.
	if err := tryConnect(ctx, tlsURL("bob", "not-the-password", aliceCert, aliceKey)); err == nil {
		t.Fatal("alice's certificate logged in bob")
	}
	// Without a certificate the password still works.
	if err := tryConnect(ctx, tlsURL("alice", "alice-pw", "", "")); err != nil {
		t.Fatalf("password over TLS: %v", err)
	}
}
