package proxy

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vitalproxy/vitalproxy/proxy/startup"
)

// Sentinel errors for errors.Is.
var (
	// ErrAuditFailed is returned by Run when the start-up isolation audit
	// fails and the server was not started with WithUnsafe.
	ErrAuditFailed = errors.New("isolation audit failed")
	// ErrAlreadyStarted is returned by Run when it is called a second time.
	ErrAlreadyStarted = errors.New("proxy: Run called twice")
)

// SQLSTATE codes the proxy sends to clients.
const (
	codeProtocolViolation   = "08P01"
	codeFeatureNotSupported = "0A000"
	codeInvalidAuthSpec     = "28000"
	codeInvalidPassword     = "28P01"
	codeInvalidCatalogName  = "3D000"
	codeInsufficientPriv    = "42501"
	codeTooManyConnections  = "53300"
	codeConnectionFailure   = "08006"
	codeAdminShutdown       = "57P01"
	codeCannotConnectNow    = "57P03"
	codeInternalError       = "XX000"
)

// endReason says why a session ended. It picks the label of the
// connection_attempts_total / session_ends_total metrics and, for failures
// before forwarding, the SQLSTATE the client is told.
type endReason int

// The reasons a session can end.
const (
	reasonNone endReason = iota
	// Before forwarding.
	reasonCancelRequest  // the connection carried a CancelRequest
	reasonProtocolError  // malformed or unexpected bytes (08P01)
	reasonUnsupported    // protocol 2, an unknown request code, replication (0A000)
	reasonStartupTimeout // startup and authentication took too long
	reasonClientGone     // the client hung up before the session was ready
	reasonAuthFailed     // the authenticator refused the client
	reasonParamRefused   // a startup parameter or database that the proxy refuses
	reasonTooManyClients // limits.max_client_conns reached (53300)
	reasonPoolTimeout    // no server connection became free within pool.queue_timeout (53300)
	reasonUpstreamFailed // the upstream login failed (08006)
	reasonContextFailed  // set_tenant_context failed: fail closed
	reasonShuttingDown   // the proxy is draining and takes no new sessions
	reasonInternal       // a bug or an unexpected local failure
	// After forwarding started.
	reasonClientClosed // the client ended the session
	reasonServerClosed // the upstream backend went away
	reasonShutdown     // the drain deadline passed and the proxy closed the session
)

var reasonNames = [...]string{
	reasonNone:           "none",
	reasonCancelRequest:  "cancel_request",
	reasonProtocolError:  "protocol_error",
	reasonUnsupported:    "unsupported",
	reasonStartupTimeout: "startup_timeout",
	reasonClientGone:     "client_gone",
	reasonAuthFailed:     "auth_failed",
	reasonParamRefused:   "param_refused",
	reasonTooManyClients: "too_many_clients",
	reasonPoolTimeout:    "pool_timeout",
	reasonUpstreamFailed: "upstream_failed",
	reasonContextFailed:  "context_failed",
	reasonShuttingDown:   "shutting_down",
	reasonInternal:       "internal_error",
	reasonClientClosed:   "client_closed",
	reasonServerClosed:   "server_closed",
	reasonShutdown:       "shutdown",
}

// startupReason is the end reason of a refusal by package startup.
func startupReason(r startup.Reason) endReason {
	switch r {
	case startup.ReasonUnsupported:
		return reasonUnsupported
	case startup.ReasonParamRefused:
		return reasonParamRefused
	}
	return reasonProtocolError
}

// String returns the metric label of r.
func (r endReason) String() string {
	if r < 0 || int(r) >= len(reasonNames) {
		return "unknown"
	}
	return reasonNames[r]
}

// clientError is a failure the client is told about with a FATAL
// ErrorResponse. Message is written for the client and never holds a secret;
// err holds the detail for the log.
type clientError struct {
	reason  endReason
	code    string
	message string
	detail  string
	err     error
}

func (e *clientError) Error() string {
	if e.err != nil {
		return e.message + ": " + e.err.Error()
	}
	return e.message
}

func (e *clientError) Unwrap() error { return e.err }

// response returns the ErrorResponse that tells the client about e.
func (e *clientError) response() *pgproto3.ErrorResponse {
	return fatal(e.code, e.message, e.detail)
}

func newClientError(reason endReason, code string, err error, format string, args ...any) *clientError {
	return &clientError{reason: reason, code: code, message: fmt.Sprintf(format, args...), err: err}
}

func protocolError(format string, args ...any) *clientError {
	return newClientError(reasonProtocolError, codeProtocolViolation, nil, format, args...)
}

// fatal builds a FATAL ErrorResponse.
func fatal(code, message, detail string) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                code,
		Message:             message,
		Detail:              detail,
	}
}
