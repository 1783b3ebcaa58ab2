package migrations

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrUnknownVersion: a --to version that is neither 0 nor one of the
	// migrations' versions.
	ErrUnknownVersion = errors.New("unknown migration version")
	// ErrChecksumMismatch: an applied migration's file has changed since.
	ErrChecksumMismatch = errors.New("checksum mismatch")
	// ErrInvalidURL: the database URL cannot be parsed.
	ErrInvalidURL = errors.New("invalid database URL")
)

// ConnectError says, in one line and without the password, why the database
// could not be reached.
type ConnectError struct {
	// Target names the database, address and user tried.
	Target string
	// Reason is the server's message or the network failure.
	Reason string
	err    error
}

func (e *ConnectError) Error() string { return "cannot connect to " + e.Target + ": " + e.Reason }

// Unwrap returns the driver's error.
func (e *ConnectError) Unwrap() error { return e.err }

// MigrationError is a migration that failed. Its transaction was rolled
// back, so nothing of it is applied; the migrations before it stay applied
// and the next run resumes with it.
type MigrationError struct {
	// Name is the migration file.
	Name string
	// Direction is "up", "down" or "reapply".
	Direction string
	Err       error
}

func (e *MigrationError) Error() string {
	switch e.Direction {
	case "down":
		return fmt.Sprintf("rollback of %s failed and was undone (earlier steps stay done; run again once fixed): %s",
			e.Name, oneLine(e.Err))
	case "reapply":
		return fmt.Sprintf("reapplying %s failed and was undone (the database is as before): %s", e.Name, oneLine(e.Err))
	}
	return fmt.Sprintf("migration %s failed and was undone (earlier steps stay done; run again once fixed): %s",
		e.Name, oneLine(e.Err))
}

// Unwrap returns the underlying error.
func (e *MigrationError) Unwrap() error { return e.Err }

// connectError turns a failed connection attempt into a ConnectError.
func connectError(cfg *pgconn.Config, err error) error {
	if err == nil {
		return nil
	}
	target := "the database"
	if cfg != nil {
		target = fmt.Sprintf("database %q on %s as %q", cfg.Database,
			net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)), cfg.User)
	}
	return &ConnectError{Target: target, Reason: connectReason(err), err: err}
}

func connectReason(err error) string {
	var pgErr *pgconn.PgError
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &pgErr):
		return pgErr.Message
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		return "timed out"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused (is PostgreSQL listening there?)"
	case errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH):
		return "host unreachable"
	case errors.As(err, &dnsErr):
		return "unknown host " + dnsErr.Name
	}
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		return "timed out"
	}
	return oneLine(err)
}

// isConnectFailure reports whether err came from failing to reach or log
// in to the server (as opposed to an SQL error on a working connection).
func isConnectFailure(err error) bool {
	var ce *pgconn.ConnectError
	return errors.As(err, &ce)
}

// urlError describes an unparsable URL without echoing it.
func urlError(raw string) error {
	if _, err := url.Parse(raw); err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return fmt.Errorf("%w: %s", ErrInvalidURL, oneLine(ue.Err))
		}
	}
	return fmt.Errorf("%w: expected postgres://user:password@host:port/database", ErrInvalidURL)
}

// oneLine renders err on one line; a server error as its message and
// SQLSTATE.
func oneLine(err error) string {
	if err == nil {
		return ""
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		msg := pgErr.Message
		if pgErr.Detail != "" {
			msg += " (" + pgErr.Detail + ")"
		}
		return fmt.Sprintf("%s (SQLSTATE %s)", msg, pgErr.Code)
	}
	s := strings.Join(strings.Fields(err.Error()), " ")
	if len(s) > 400 {
		s = s[:400] + "..."
	}
	return s
}
