package proxy

import (
	"context"
	"sync"
	"testing"
)

// fakeTarget counts the cancels that reach it.
type fakeTarget struct {
	mu sync.Mutex
	n  int
}

func (f *fakeTarget) cancel(context.Context) error {
	f.mu.Lock()
	f.n++
	f.mu.Unlock()
	return nil
}

func (f *fakeTarget) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// cancelWith looks (pid, secret) up and forwards the cancel when found, as
// serveCancel does.
func cancelWith(m *cancelMap, pid uint32, secret []byte) cancelLookup {
	target, res := m.lookup(pid, secret)
	if target != nil {
		_ = target.cancel(context.Background())
	}
	return res
}

func TestCancelMap(t *testing.T) {
	m := newCancelMap()
	a, b, c := &fakeTarget{}, &fakeTarget{}, &fakeTarget{}
	ka, err := m.register(a)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := m.register(b)
	if err != nil {
		t.Fatal(err)
	}
	if ka.pid == 0 || ka.pid > 1<<31-1 || ka.pid == kb.pid {
		t.Fatalf("pids %d %d", ka.pid, kb.pid)
	}
	// c shares a's pid, as a real pid of another upstream server may.
	kc, err := m.registerPID(ka.pid, c)
	if err != nil {
		t.Fatal(err)
	}
	if kc.pid != ka.pid || kc.secret == ka.secret {
		t.Fatalf("registerPID(%d) = %+v beside %+v", ka.pid, kc, ka)
	}
	wrong := ka.secret
	wrong[0] ^= 1
	tests := []struct {
		name   string
		pid    uint32
		secret []byte
		want   *fakeTarget // the target the cancel reaches; nil: none
		result cancelLookup
	}{
		{"right key", ka.pid, ka.secret[:], a, cancelFound},
		{"same pid, the other key", kc.pid, kc.secret[:], c, cancelFound},
		{"other session's secret", ka.pid, kb.secret[:], nil, cancelRefused},
		{"wrong secret", ka.pid, wrong[:], nil, cancelRefused},
		{"short secret", ka.pid, ka.secret[:3], nil, cancelRefused},
		{"long secret", ka.pid, append(ka.secret[:], 0), nil, cancelRefused},
		{"unknown pid", ka.pid ^ kb.pid ^ 1, ka.secret[:], nil, cancelUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := map[*fakeTarget]int{a: a.count(), b: b.count(), c: c.count()}
			if res := cancelWith(m, tt.pid, tt.secret); res != tt.result {
				t.Fatalf("lookup = %s, want %s", res, tt.result)
			}
			for target, n := range before {
				want := n
				if target == tt.want {
					want++
				}
				if got := target.count(); got != want {
					t.Fatalf("a target got %d cancels, want %d", got-n, want-n)
				}
			}
		})
	}
	m.remove(ka)
	if res := cancelWith(m, ka.pid, ka.secret[:]); res != cancelRefused {
		t.Fatalf("removed key: %s, want refused (its pid is still live)", res)
	}
	m.remove(kc)
	if res := cancelWith(m, ka.pid, ka.secret[:]); res != cancelUnknown {
		t.Fatalf("removed key: %s, want unknown", res)
	}
	m.remove(kc) // removing twice is harmless
	if m.len() != 1 {
		t.Fatalf("len = %d", m.len())
	}
	if _, err := m.registerPID(0, a); err == nil {
		t.Fatal("registerPID(0) succeeded")
	}
}

// TestCancelKeyOfReusedBackend: a pooled backend keeps its pid for its
// next client; the earlier client's key then reaches nothing, and a cancel
// already looked up when the key was removed does nothing either.
func TestCancelKeyOfReusedBackend(t *testing.T) {
	const pid = 4242
	m := newCancelMap()
	first, second := &fakeTarget{}, &fakeTarget{}
	k1, err := m.registerPID(pid, first)
	if err != nil {
		t.Fatal(err)
	}
	stale, _ := m.lookup(pid, k1.secret[:])
	m.remove(k1)
	k2, err := m.registerPID(pid, second)
	if err != nil {
		t.Fatal(err)
	}
	if k2.secret == k1.secret {
		t.Fatal("the next client got the same secret")
	}
	if res := cancelWith(m, pid, k1.secret[:]); res != cancelRefused {
		t.Fatalf("old key: %s, want refused", res)
	}
	if err := stale.cancel(context.Background()); err != nil {
		t.Fatal(err)
	}
	if first.count() != 0 || second.count() != 0 {
		t.Fatalf("old key reached a backend: %d, %d cancels", first.count(), second.count())
	}
	if res := cancelWith(m, pid, k2.secret[:]); res != cancelFound || second.count() != 1 {
		t.Fatalf("new key: %s, %d cancels", res, second.count())
	}
}

// blockingTarget holds a cancel until released.
type blockingTarget struct {
	entered, release chan struct{}
	n                int
}

func (b *blockingTarget) cancel(context.Context) error {
	close(b.entered)
	<-b.release
	b.n++
	return nil
}

// TestCancelRemoveWaitsForForwarding: remove returns only once a cancel
// being forwarded with the key is done, so the backend can be handed to
// another client afterwards.
func TestCancelRemoveWaitsForForwarding(t *testing.T) {
	m := newCancelMap()
	bt := &blockingTarget{entered: make(chan struct{}), release: make(chan struct{})}
	k, err := m.registerPID(77, bt)
	if err != nil {
		t.Fatal(err)
	}
	target, _ := m.lookup(k.pid, k.secret[:])
	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		_ = target.cancel(context.Background())
	}()
	<-bt.entered
	removed := make(chan struct{})
	go func() {
		defer close(removed)
		m.remove(k)
	}()
	select {
	case <-removed:
		t.Fatal("remove returned while a cancel was being forwarded")
	default:
	}
	close(bt.release)
	<-forwarded
	<-removed
	if bt.n != 1 {
		t.Fatalf("cancels forwarded: %d", bt.n)
	}
}
