package txmode_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vitalproxy/vitalproxy/proxy/pool"
)

// initPgbench loads pgbench's tables as the superuser and lets tenants
// read them.
func initPgbench(t testing.TB, e *env, scale int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(e.c.BinDir, "pgbench"), "-i", "-q", "-s", strconv.Itoa(scale), e.c.URL(e.db.Name))
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	if _, err := e.super(t).Exec(context.Background(),
		"GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO vital_tenant"); err != nil {
		t.Fatal(err)
	}
}

var (
	tpsRe       = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	processedRe = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	failedRe    = regexp.MustCompile(`number of failed transactions: (\d+)`)
)

// pgbenchResult is what one pgbench run reports.
type pgbenchResult struct {
	tps       float64
	processed int
	failed    int
	out       string
}

// runPgbench runs a select-only pgbench against a libpq URL.
func runPgbench(t testing.TB, binDir, url, mode string, clients int, d time.Duration) pgbenchResult {
	t.Helper()
	args := []string{"-n", "-S", "-M", mode, "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, 2)),
		"-T", strconv.Itoa(int(d.Seconds())), url}
	cmd := exec.Command(filepath.Join(binDir, "pgbench"), args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	r := pgbenchResult{out: string(out)}
	if err != nil {
		t.Fatalf("pgbench %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if m := tpsRe.FindSubmatch(out); m != nil {
		r.tps, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	if m := processedRe.FindSubmatch(out); m != nil {
		r.processed, _ = strconv.Atoi(string(m[1]))
	}
	if m := failedRe.FindSubmatch(out); m != nil {
		r.failed, _ = strconv.Atoi(string(m[1]))
	}
	return r
}

// TestPgbench runs pgbench, as a process, through the engine with
// prepared statements and with the simple protocol, with more clients than
// backends.
func TestPgbench(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, pool.Config{MaxConns: 3}, nil)
	initPgbench(t, e, 1)
	for _, mode := range []string{"prepared", "simple", "extended"} {
		t.Run("pgbench/"+mode, func(t *testing.T) {
			r := runPgbench(t, e.c.BinDir, e.url(dh, "application_name", "pgbench-"+mode), mode, 8, 2*time.Second)
			if r.processed == 0 || r.failed != 0 || strings.Contains(r.out, "error") {
				t.Errorf("pgbench -M %s: processed %d, failed %d\n%s", mode, r.processed, r.failed, r.out)
			}
			t.Logf("pgbench -M %s -c 8 through a pool of 3: %.0f tps", mode, r.tps)
		})
	}
	if errs := e.fe.runErrors(); len(errs) > 0 {
		t.Errorf("sessions ended with errors: %v", errs)
	}
	if n := e.pool.Total(); n > 3 {
		t.Errorf("%d server connections, want at most 3", n)
	}
}
