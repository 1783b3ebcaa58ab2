package txmode_test

import (
	"os"
	"testing"
	"time"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
)

func TestZZDebug(t *testing.T) {
	mode := os.Getenv("ZZMODE")
	if mode == "" {
		t.Skip()
	}
	e := newEnv(t, pool.Config{MaxConns: 20}, nil)
	initPgbench(t, e, 1)
	runPgbench(t, e.c.BinDir, e.url(dh), mode, 8, 1*time.Second)
	for i := 0; i < 4; i++ {
		before := selfCPU()
		r := runPgbench(t, e.c.BinDir, e.url(dh), mode, 8, 3*time.Second)
		used := selfCPU() - before
		t.Logf("%.0f tps, %.1f us/txn", r.tps, float64(used.Microseconds())/float64(r.processed))
	}
}
