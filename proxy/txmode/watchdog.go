package txmode

import (
	"sync"
	"sync/atomic"
	"time"
)

// syncWait is about how long the client goroutine waits for the server's
// answer before handing the wait to the server goroutine (between one and
// three halves of it).
const syncWait = 50 * time.Millisecond

// watchdog interrupts the client goroutines' long waits for the server. A
// client goroutine that starts waiting stores the current tick (an atomic
// store: no timer per transaction); the watchdog ticks every syncWait/2
// and sets a past read deadline on the backend of any wait that began two
// ticks ago. It runs while clients are registered.
type watchdog struct {
	tick atomic.Uint64

	mu      sync.Mutex
	clients map[*Client]struct{}
	running bool
}

var dog = watchdog{clients: map[*Client]struct{}{}}

func (w *watchdog) add(c *Client) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.clients[c] = struct{}{}
	if !w.running {
		w.running = true
		w.tick.Add(1) // never zero: zero means "not waiting"
		go w.run()
	}
}

func (w *watchdog) remove(c *Client) {
	w.mu.Lock()
	delete(w.clients, c)
	w.mu.Unlock()
}

func (w *watchdog) run() {
	t := time.NewTicker(syncWait / 2)
	defer t.Stop()
	for range t.C {
		now := w.tick.Add(1)
		w.mu.Lock()
		if len(w.clients) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		for c := range w.clients {
			if s := c.waitSince.Load(); s != 0 && now-s >= 2 {
				c.interrupt(s)
			}
		}
		w.mu.Unlock()
	}
}

// interrupt ends the client goroutine's wait that began at tick s, if it
// still waits. A client busy under its lock is tried again next tick.
func (c *Client) interrupt(s uint64) {
	if !c.mu.TryLock() {
		return
	}
	if c.waitSince.Load() == s && c.waitSt != nil && !c.interrupted {
		c.interrupted = true
		_ = c.waitSt.conn.SetReadDeadline(aLongTimeAgo)
	}
	c.mu.Unlock()
}
