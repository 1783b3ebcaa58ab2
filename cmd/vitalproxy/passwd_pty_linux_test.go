//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Skipf("pty number: %v", err)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open pty: %v", err)
	}
	t.Cleanup(func() { tty.Close() })
	return master, tty
}

// TestPasswdTerminal feeds the password through a terminal: it is asked
// for twice and both answers must agree.
func TestPasswdTerminal(t *testing.T) {
	tests := []struct {
		name, typed string
		wantErr     string
	}{
		{name: "confirmed", typed: "tty-secret\ntty-secret\n"},
		{name: "mismatch", typed: "tty-secret\ntty-other\n", wantErr: "passwords do not match"},
		{name: "empty", typed: "\n", wantErr: "empty password refused: give the password on stdin"},
	}
	for _, tt := range tests {
		t.Run("passwd/tty/"+tt.name, func(t *testing.T) {
			master, tty := openPTY(t)
			if _, err := master.WriteString(tt.typed); err != nil {
				t.Fatal(err)
			}
			var out, prompts bytes.Buffer
			root := newRootCommand()
			root.SetArgs([]string{"passwd"})
			root.SetIn(tty)
			root.SetOut(&out)
			root.SetErr(&prompts)
			err := root.Execute()
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(prompts.String(), "Password: ") || !strings.Contains(prompts.String(), "Repeat password: ") {
				t.Fatalf("prompts = %q", prompts.String())
			}
			if v := strings.TrimSpace(out.String()); !verifies(t, v, "tty-secret") {
				t.Fatalf("verifier does not verify the typed password")
			}
			if strings.Contains(out.String()+prompts.String(), "tty-secret") {
				t.Fatal("the password appears in the output")
			}
		})
	}
}
