package startup

import (
	"errors"
	"fmt"
)

// SQLSTATE codes of the refusals.
const (
	codeProtocolViolation   = "08P01"
	codeFeatureNotSupported = "0A000"
	codeInvalidAuthSpec     = "28000"
	codeInsufficientPriv    = "42501"
)

// Reason says what kind of refusal an Error is; the caller turns it into
// its session-end reason.
type Reason int

// The reasons of a refusal.
const (
	// ReasonProtocol: malformed or unexpected bytes (08P01).
	ReasonProtocol Reason = iota + 1
	// ReasonUnsupported: protocol 2, an unknown protocol, replication
	// (0A000).
	ReasonUnsupported
	// ReasonParamRefused: a startup parameter or option the proxy refuses.
	ReasonParamRefused
)

// Error is a startup packet, message or setting the proxy refuses. Message
// is written for the client and holds no secret; Code is the SQLSTATE of
// the FATAL ErrorResponse that tells the client.
type Error struct {
	Reason  Reason
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

func refuse(reason Reason, code, format string, args ...any) *Error {
	return &Error{Reason: reason, Code: code, Message: fmt.Sprintf(format, args...)}
}

func protocolError(format string, args ...any) *Error {
	return refuse(ReasonProtocol, codeProtocolViolation, format, args...)
}

// ErrClientTerminated means the client sent Terminate during
// authentication.
var ErrClientTerminated = errors.New("client sent Terminate during authentication")
