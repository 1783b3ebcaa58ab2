package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/xdg-go/stringprep"
	"golang.org/x/term"

	"github.com/vitalproxy/vitalproxy/auth"
)

func init() { subcommands = append(subcommands, newPasswdCommand) }

func newPasswdCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "passwd",
		Short: "Print a SCRAM-SHA-256 verifier for a password read from stdin",
		Long: `Read a password from stdin and print its SCRAM-SHA-256 verifier in
PostgreSQL's format (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>),
for the password field of a user in the config file.

On a terminal the password is read without echo and asked for twice; from a
pipe the first line is read. The password itself is never printed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			verifier, err := readVerifier(cmd)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), verifier)
			return err
		},
	}
}

// maxPasswordLen bounds a password read from stdin.
const maxPasswordLen = 1024

// readVerifier reads a new password from the command's stdin and returns
// its SCRAM-SHA-256 verifier.
func readVerifier(cmd *cobra.Command) (string, error) {
	pw, err := readPasswordInput(cmd.InOrStdin(), cmd.ErrOrStderr())
	if err != nil {
		return "", err
	}
	// PostgreSQL and SCRAM clients normalise passwords with SASLprep
	// before hashing; a verifier must be built from the same string. A
	// password SASLprep rejects is used as is, as PostgreSQL does.
	if prepped, err := stringprep.SASLprep.Prepare(pw); err == nil {
		pw = prepped
	}
	return auth.NewSCRAMVerifier(pw)
}

// readPasswordInput reads a new password: on a terminal without echo and
// twice (prompts go to prompt), otherwise one line from in. An empty
// password is refused.
func readPasswordInput(in io.Reader, prompt io.Writer) (string, error) {
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fd := int(f.Fd())
		ask := func(label string) (string, error) {
			fmt.Fprint(prompt, label)
			b, err := term.ReadPassword(fd)
			fmt.Fprintln(prompt)
			if err != nil {
				return "", fmt.Errorf("read password: %w", err)
			}
			return string(b), nil
		}
		pw, err := ask("Password: ")
		if err != nil {
			return "", err
		}
		if err := checkPassword(pw); err != nil {
			return "", err
		}
		again, err := ask("Repeat password: ")
		if err != nil {
			return "", err
		}
		if again != pw {
			return "", errors.New("passwords do not match")
		}
		return pw, nil
	}
	// A longer input is cut at the limit, and then fails checkPassword.
	r := bufio.NewReaderSize(io.LimitReader(in, maxPasswordLen+2), maxPasswordLen+2)
	line, err := r.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read password from stdin: %w", err)
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	if err := checkPassword(pw); err != nil {
		return "", err
	}
	return pw, nil
}

func checkPassword(pw string) error {
	switch {
	case pw == "":
		return errors.New("empty password refused: give the password on stdin")
	case len(pw) > maxPasswordLen:
		return fmt.Errorf("password is longer than %d bytes", maxPasswordLen)
	case strings.ContainsRune(pw, 0):
		return errors.New("password must not contain a NUL byte")
	}
	return nil
}
