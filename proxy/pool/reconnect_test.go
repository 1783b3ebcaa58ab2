package pool_test

import (
	"testing"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
)

func TestReconnect(t *testing.T) {
	e := newEnv(t)
	p := newPool(t, e, pool.Config{MaxConns: 10})
	idleDH, lentDH, idlePL := acquire(t, p, e.dh), acquire(t, p, e.dh), acquire(t, p, e.pl)
	p.Release(idleDH, true)
	p.Release(idlePL, true)
	if closed, marked := p.Reconnect(e.dh.Tenant); closed != 1 || marked != 1 {
		t.Fatalf("Reconnect(dh) closed %d, marked %d; want 1, 1", closed, marked)
	}
	// The marked backend is closed when released, even as reusable.
	p.Release(lentDH, true)
	if s := stats(p, e.dh); s.Idle != 0 || s.Closed[pool.ReasonReconnect] != 2 {
		t.Fatalf("dh after Reconnect: %+v", s)
	}
	// The other tenant's idle backend stays, and the next dh backend is new.
	if s := stats(p, e.pl); s.Idle != 1 || s.Closed[pool.ReasonReconnect] != 0 {
		t.Fatalf("the other tenant was touched: %+v", s)
	}
	b := acquire(t, p, e.dh)
	if b.Reused {
		t.Fatalf("after Reconnect a backend was reused (pid %d)", b.PID)
	}
	p.Release(b, true)
	if closed, marked := p.Reconnect(""); closed != 2 || marked != 0 {
		t.Fatalf("Reconnect(all) closed %d, marked %d; want 2, 0", closed, marked)
	}
	if n := p.Total(); n != 0 {
		t.Fatalf("%d backends left after Reconnect(all)", n)
	}
}
