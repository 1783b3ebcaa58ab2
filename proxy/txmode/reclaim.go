package txmode

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
)

// Reclaim readies a backend that transaction-mode clients used for another
// kind of borrower, such as a session-mode client of the same pool. The
// engine leaves its clients' startup settings and shared prepared
// statements on a backend it returns (the next client of the same
// settings needs them); Reclaim runs DISCARD ALL, asserts the tenant
// context again (b.Key.TenantID) and forgets the engine's state. A backend
// the engine never used is left alone. On error the backend must be
// released as not reusable.
func Reclaim(ctx context.Context, b *pool.Backend) error {
	st, ok := b.Data.(*serverState)
	if !ok {
		return nil
	}
	timeout := DefaultCleanupTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	if !st.usable(time.Time{}) {
		return fmt.Errorf("txmode: reclaim: %w: unexpected data from the server", errBroken)
	}
	if st.applied.len() > 0 || len(st.stmts) > 0 || st.dirty || st.discard {
		msgs := appendQuery(nil, "DISCARD ALL")
		wantZ := 1
		if id := b.Key.TenantID; id != "" {
			if !isUUID(id) {
				return fmt.Errorf("txmode: reclaim: tenant id %q is not a UUID", id)
			}
			msgs, _ = (&pgproto3.Parse{Query: setTenantContextSQL}).Encode(msgs)
			msgs, _ = (&pgproto3.Bind{Parameters: [][]byte{[]byte(id)}}).Encode(msgs)
			msgs, _ = (&pgproto3.Execute{}).Encode(msgs)
			msgs = appendSync(msgs)
			wantZ = 2
		}
		status, pgErr, err := st.exec(msgs, wantZ, timeout)
		switch {
		case err != nil:
			return fmt.Errorf("txmode: reclaim: %w", err)
		case pgErr != nil:
			return fmt.Errorf("txmode: reclaim: %w", pgErr)
		case status != 'I':
			return fmt.Errorf("txmode: reclaim: %w: transaction status %q", errBroken, status)
		}
	} else if st.deadline {
		if err := st.conn.SetReadDeadline(time.Time{}); err != nil {
			return fmt.Errorf("txmode: reclaim: %w", err)
		}
	}
	b.Data = nil
	return nil
}
