package txmode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/vitalproxy/vitalproxy/proxy/notify"
	"github.com/vitalproxy/vitalproxy/proxy/pool"
)

// Defaults for zero Options fields.
const (
	// DefaultMaxPreparedPerBackend caps the statements the engine keeps
	// prepared on one backend; the least recently used is closed beyond it.
	DefaultMaxPreparedPerBackend = 250
	// DefaultCleanupTimeout bounds cleaning a backend after the client
	// left mid-transaction, and each reset of a backend's session state.
	DefaultCleanupTimeout = 5 * time.Second
)

// Options configure one client's transaction-mode session.
type Options struct {
	// Pool lends backends; Key names the pool (the tenant's login role).
	Pool *pool.Pool
	Key  pool.Key
	// Route, when set, picks the upstream host of every backend the
	// client borrows: the backend comes from the pool of Key with Host
	// set to what Route returns. When the backend cannot be dialled (the
	// host is unreachable), Route is called once more with that host as
	// failed. Its error (a *pgconn.PgError: an ERROR for the client)
	// refuses the transaction.
	Route func(ctx context.Context, failed string) (string, error)
	// StartupParams are the client's allow-listed startup settings
	// (application_name, DateStyle, TimeZone, search_path,
	// client_encoding, extra_float_digits, IntervalStyle, ...), applied on
	// every backend that serves the client. Names are case-insensitive;
	// role, session_authorization, is_superuser, row_security and dotted
	// custom settings are refused.
	StartupParams map[string]string
	// StatementTimeout and IdleInTransactionTimeout, when positive, are
	// applied as statement_timeout and idle_in_transaction_session_timeout
	// unless the client's startup parameters set them.
	StatementTimeout         time.Duration
	IdleInTransactionTimeout time.Duration
	// MaxMessageSize bounds one client message (default
	// DefaultMaxMessageSize); a larger one ends the session with FATAL
	// 08P01.
	MaxMessageSize int
	// MaxPreparedPerBackend caps the statements kept prepared on one
	// backend (default DefaultMaxPreparedPerBackend).
	MaxPreparedPerBackend int
	// CleanupTimeout bounds returning a backend the client left
	// mid-transaction, and resetting a backend's session state (default
	// DefaultCleanupTimeout). A backend that misses it is closed.
	CleanupTimeout time.Duration
	// Channels, when set, is the tenant's notification channel namespace:
	// LISTEN, UNLISTEN, NOTIFY and pg_notify in the client's Query and
	// Parse messages are moved into it, and a NotificationResponse reaches
	// the client only from inside it (see package notify).
	Channels *notify.Namespace
	// EnterContext, required when Key.Shared, returns the signed tenant
	// context (auth.TenantContext) for the backend with process id pid.
	// Before a shared backend serves the client, the engine calls
	// public.enter_tenant_context with it, which clears the session state
	// a previous borrower left and returns the tenant the database
	// verified; anything but Key.TenantID closes the backend.
	EnterContext func(pid uint32) string
	// Logger receives the session's log lines (default: discarded).
	Logger *slog.Logger
	// Hooks observe the engine for metrics.
	Hooks Hooks
}

// Hooks are optional callbacks for metrics. They run on the engine's
// goroutines, some under the client's lock: they must be fast, must not
// block and must be safe for concurrent use.
type Hooks struct {
	// OnTransaction is called when a backend is returned to the pool after
	// serving the client, with how long the client had it (from asking the
	// pool, so a wait in its queue is included).
	OnTransaction func(held time.Duration)
	// OnPrepared is called when a client uses one of its named prepared
	// statements: hit means the backend had it, otherwise the engine
	// prepared it there first.
	OnPrepared func(hit bool)
	// OnReset is called after the engine reset a backend's session state
	// (RESET ALL or DISCARD ALL and the tenant context); ok is false when
	// the reset failed and the backend was closed.
	OnReset func(ok bool)
	// OnQueueTimeout is called when the client was refused with 53300
	// because no backend became free in time.
	OnQueueTimeout func()
	// OnServerLost is called when a backend died while serving the client.
	OnServerLost func()
	// OnNotificationDropped is called when a notification outside the
	// client's channel namespace was kept from it (see Options.Channels).
	OnNotificationDropped func()
	// OnContextSwitch is called after a shared backend entered the
	// client's tenant context; ok is false when that failed and the
	// backend was closed.
	OnContextSwitch func(ok bool)
}

func (o *Options) validate() error {
	var errs []error
	if o.Pool == nil {
		errs = append(errs, errors.New("txmode: Options.Pool is required"))
	}
	if o.Key.Role == "" {
		errs = append(errs, errors.New("txmode: Options.Key.Role is required"))
	}
	if o.Key.Shared && (o.Key.TenantID == "" || o.EnterContext == nil) {
		errs = append(errs, errors.New("txmode: a shared key needs Key.TenantID and Options.EnterContext"))
	}
	if o.Key.TenantID != "" && !isUUID(o.Key.TenantID) {
		errs = append(errs, fmt.Errorf("txmode: tenant id %q is not a UUID", o.Key.TenantID))
	}
	if o.MaxMessageSize < 0 || o.MaxPreparedPerBackend < 0 || o.CleanupTimeout < 0 ||
		o.StatementTimeout < 0 || o.IdleInTransactionTimeout < 0 {
		errs = append(errs, errors.New("txmode: negative limit in Options"))
	}
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.MaxPreparedPerBackend == 0 {
		o.MaxPreparedPerBackend = DefaultMaxPreparedPerBackend
	}
	if o.CleanupTimeout == 0 {
		o.CleanupTimeout = DefaultCleanupTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return errors.Join(errs...)
}

// isUUID accepts the canonical 8-4-4-4-12 hexadecimal form.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch i {
		case 8, 13, 18, 23:
			if ch != '-' {
				return false
			}
		default:
			if !(ch >= '0' && ch <= '9' || ch >= 'a' && ch <= 'f' || ch >= 'A' && ch <= 'F') {
				return false
			}
		}
	}
	return true
}
