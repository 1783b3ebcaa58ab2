package tenantroles

import (
	"errors"
	"testing"

	"github.com/vitalproxy/vitalproxy/auth"
)

func TestQuoteLiteral(t *testing.T) {
	tests := []struct {
		in, want string
		err      error
	}{
		{in: "SCRAM-SHA-256$4096:c2FsdA==$a:b", want: "'SCRAM-SHA-256$4096:c2FsdA==$a:b'"},
		{in: "it's", want: "'it''s'"},
		{in: `a\b'`, want: ` E'a\\b'''`},
		{in: "", want: "''"},
		{in: "a\x00b", err: errNUL},
	}
	for _, tt := range tests {
		t.Run("quote/"+tt.in, func(t *testing.T) {
			got, err := quoteLiteral(tt.in)
			if !errors.Is(err, tt.err) || got != tt.want {
				t.Fatalf("quoteLiteral(%q) = %q, %v; want %q, %v", tt.in, got, err, tt.want, tt.err)
			}
		})
	}
	if got := quoteIdent(`we"ird`); got != `"we""ird"` {
		t.Fatalf("quoteIdent = %s", got)
	}
}

func TestVerifierMatches(t *testing.T) {
	v, err := auth.NewSCRAMVerifier("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	slow, err := auth.SCRAMVerifier("s3cret", []byte("0123456789abcdef"), maxVerifyIterations+1)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, stored, pw string
		want             bool
	}{
		{"match", v, "s3cret", true},
		{"wrong-password", v, "other", false},
		{"md5", "md5" + "0123456789abcdef0123456789abcdef", "s3cret", false},
		{"truncated", v[:30], "s3cret", false},
		{"bad-iterations", "SCRAM-SHA-256$x:c2FsdA==$a:b", "s3cret", false},
		{"too-many-iterations", slow, "s3cret", false},
		{"bad-salt", "SCRAM-SHA-256$4096:!!$a:b", "s3cret", false},
	}
	for _, tt := range tests {
		t.Run("verifier/"+tt.name, func(t *testing.T) {
			if got := verifierMatches(tt.stored, tt.pw); got != tt.want {
				t.Fatalf("verifierMatches = %v, want %v", got, tt.want)
			}
		})
	}
}
