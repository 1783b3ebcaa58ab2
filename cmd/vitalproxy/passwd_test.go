package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestPasswd(t *testing.T) {
	tests := []struct {
		name, stdin string
		// verifies is the password the verifier must match.
		verifies string
		wantErr  string
	}{
		{name: "line", stdin: "correct horse battery staple\n", verifies: "correct horse battery staple"},
		{name: "no-newline", stdin: "s3cret-Passw0rd", verifies: "s3cret-Passw0rd"},
		{name: "crlf", stdin: "s3cret\r\nignored\n", verifies: "s3cret"},
		{name: "quote", stdin: `it's "quoted" \ back` + "\n", verifies: `it's "quoted" \ back`},
		// SASLprep maps a soft hyphen to nothing and a no-break space to a
		// space, as PostgreSQL and SCRAM clients do.
		{name: "saslprep", stdin: "pass\u00ADword\u00A0x\n", verifies: "password x"},
		{name: "empty", stdin: "\n", wantErr: "empty password refused: give the password on stdin"},
		{name: "eof", stdin: "", wantErr: "empty password refused: give the password on stdin"},
		{name: "too-long", stdin: strings.Repeat("a", 5000), wantErr: "password is longer than 1024 bytes"},
		{name: "nul", stdin: "a\x00b\n", wantErr: "password must not contain a NUL byte"},
	}
	for _, tt := range tests {
		t.Run("passwd/"+tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			root := newRootCommand()
			root.SetArgs([]string{"passwd"})
			root.SetIn(strings.NewReader(tt.stdin))
			root.SetOut(&out)
			root.SetErr(&errOut)
			err := root.Execute()
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if out.Len() != 0 {
					t.Fatalf("printed %q on error", out.String())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			line := out.String()
			if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") {
				t.Fatalf("output is not one line: %q", line)
			}
			v := strings.TrimSuffix(line, "\n")
			if !verifies(t, v, tt.verifies) || verifies(t, v, tt.verifies+"x") {
				t.Fatalf("verifier does not verify exactly the password")
			}
			if strings.Contains(out.String()+errOut.String(), strings.TrimSpace(tt.stdin)) {
				t.Fatal("the password appears in the output")
			}
		})
	}
}
