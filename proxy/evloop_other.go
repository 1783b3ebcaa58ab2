//go:build !linux

package proxy

// Event-loop forwarding is Linux only; elsewhere sessions use the goroutine
// copy.

type evGroup struct{}

type fwdResult struct {
	clientEnded bool
	err         error
	c2s, s2c    int64
}

func newEvGroup(int) (*evGroup, error) { return nil, nil }

func (g *evGroup) close() {}

func (s *session) forwardLoop(*evGroup) (fwdResult, bool) { return fwdResult{}, false }

func (s *session) killLoopForward() bool { return false }

func (s *session) ended(tenantMetrics, fwdResult) (endReason, bool) { return reasonInternal, false }
