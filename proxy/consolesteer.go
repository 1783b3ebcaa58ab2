package proxy

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/vitalproxy/vitalproxy/proxy/console"
)

// endGrace is how long a transaction-mode session ended by an operator
// may take to tell its client and roll back before its socket is closed.
const endGrace = 10 * time.Second

// operatorEnded is the FATAL message of a session an operator ended.
func operatorEnded(command string) string {
	return fmt.Sprintf("terminating connection due to administrator command: an operator ended this session from the proxy console (%s)", command)
}

// endByOperator ends the session on a console command, telling the client
// why (57P01): a session-mode client's backend is closed and its forwarder
// sends msg; a transaction-mode client's engine stops, rolls back what it
// had open, and the session sends msg (its socket is closed after
// endGrace at the latest); a session still starting up is closed.
func (s *session) endByOperator(msg string) {
	s.ended.Store(&msg)
	// The state is published after s.tx is set (setupTransactionMode).
	if st := sessionState(s.state.Load()); st >= stateForwarding && st < stateClosed && s.tx != nil {
		s.cancel()
		time.AfterFunc(endGrace, func() {
			if sessionState(s.state.Load()) != stateClosed {
				s.forceClose()
			}
		})
		return
	}
	s.kill()
}

// cancelQuery forwards a cancel request for what the session runs, as its
// client's own CancelRequest would; a session that is not forwarding has
// nothing to cancel.
func (s *session) cancelQuery(ctx context.Context) error {
	if sessionState(s.state.Load()) != stateForwarding || !s.hasKey {
		return nil
	}
	target, _ := s.srv.cancels.lookup(s.key.pid, s.key.secret[:])
	if target == nil {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, cancelTimeout)
	defer cancel()
	if err := target.cancel(cctx); err != nil {
		return fmt.Errorf("cancel request: %w", err)
	}
	return nil
}

func (b consoleBackend) KillTenants(_ context.Context, tenants []string) (int, error) {
	s := b.s
	what := "KILL ALL"
	set := map[string]bool{}
	for _, t := range tenants {
		set[t] = true
		what = "KILL TENANT " + t
	}
	msg := operatorEnded(what)
	n := 0
	for _, sess := range s.sessionList() {
		if sess.isConsole.Load() {
			continue
		}
		// A session still authenticating is not admitted yet (nor known
		// not to be a console session).
		info := sess.info.Load()
		if info == nil || (tenants != nil && !set[info.tenant]) {
			continue
		}
		sess.endByOperator(msg)
		n++
	}
	closed, marked := 0, 0
	if tenants == nil {
		closed, marked = s.pool.Reconnect("")
	}
	for _, t := range tenants {
		c, m := s.pool.Reconnect(t)
		closed, marked = closed+c, marked+m
	}
	s.logger.Info("client sessions ended on a console command", "tenants", tenants, "sessions", n,
		"server_conns_closed", closed, "server_conns_marked", marked)
	return n, nil
}

func (b consoleBackend) CancelClient(ctx context.Context, id string) error {
	sess := b.s.sessionByID(id)
	if sess == nil {
		return console.Errorf(console.CodeBadValue, "no client with id %q", id)
	}
	b.s.logger.Info("cancelling a client's query on a console command", "session", id)
	if err := sess.cancelQuery(ctx); err != nil {
		return console.Errorf(console.CodeInternal, "could not cancel the query of client %q: %v", id, err)
	}
	return nil
}

func (b consoleBackend) Reconnect(_ context.Context, tenants []string) (closed, marked int, err error) {
	s := b.s
	if tenants == nil {
		closed, marked = s.pool.Reconnect("")
	}
	for _, t := range tenants {
		c, m := s.pool.Reconnect(t)
		closed, marked = closed+c, marked+m
	}
	s.logger.Info("server connections reconnecting on a console command", "tenants", tenants,
		"server_conns_closed", closed, "server_conns_marked", marked)
	return closed, marked, nil
}

func (b consoleBackend) Shutdown(_ context.Context, wait bool) error {
	s := b.s
	stop := s.stopRun.Load()
	if stop == nil {
		return console.Errorf(console.CodeInternal, "the proxy is not running")
	}
	if s.draining.Load() {
		return console.Errorf(console.CodeBadState, "the proxy is already shutting down")
	}
	if wait {
		s.drainAll.Store(true)
	}
	s.logger.Info("shutting down on a console command", "wait_for_clients", wait)
	(*stop)()
	return nil
}

// drainTimeout is how long the drain waits for clients: timeout, or
// without end after SHUTDOWN WAIT.
func (s *Server) drainTimeout(timeout time.Duration) time.Duration {
	if s.drainAll.Load() {
		return math.MaxInt64
	}
	return timeout
}
