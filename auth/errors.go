package auth

import "fmt"

// Error is an authentication or tenant-resolution failure. Code and Message
// go to the client in an ErrorResponse; Reason labels metrics and logs and
// may say more than the client is told (unknown_user vs bad_password).
type Error struct {
	Code    string // SQLSTATE
	Message string // what the client sees
	Reason  string // metric label
	Err     error  // underlying cause, never shown to the client
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s (%s): %v", e.Message, e.Reason, e.Err)
	}
	return fmt.Sprintf("%s (%s)", e.Message, e.Reason)
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// SQLSTATEs used by authentication.
const (
	CodeInvalidPassword       = "28P01"
	CodeInvalidAuthorization  = "28000"
	CodeProtocolViolation     = "08P01"
	CodeFeatureNotSupported   = "0A000"
	codeReasonBadPassword     = "bad_password"
	codeReasonUnknownUser     = "unknown_user"
	codeReasonUnknownTenant   = "unknown_tenant"
	codeReasonSuspendedTenant = "suspended_tenant"
	codeReasonTenantNotAllowd = "tenant_not_allowed"
	codeReasonNoTenant        = "no_tenant"
	codeReasonProtocol        = "protocol"
	codeReasonMethod          = "no_method"
	codeReasonCert            = "bad_certificate"
	codeReasonNoConsole       = "no_console"
)

func passwordFailed(user, reason string, cause error) *Error {
	return &Error{
		Code:    CodeInvalidPassword,
		Message: fmt.Sprintf("password authentication failed for user %q", user),
		Reason:  reason,
		Err:     cause,
	}
}

func protocolError(msg string, cause error) *Error {
	return &Error{Code: CodeProtocolViolation, Message: msg, Reason: codeReasonProtocol, Err: cause}
}
