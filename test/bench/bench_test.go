package main

import (
	"bytes"
	"context"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs one short workload against direct PostgreSQL and the
// proxy. It checks that the harness works end to end, not how fast anything
// is.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL cluster and runs pgbench")
	}
	o := defaultOptions()
	o.duration = time.Second
	o.repeats = 1
	o.warmup = 0
	o.scale = 1
	o.workloads = "S-c8-simple"
	o.endpoints = "direct,vitalproxy"
	o.out = filepath.Join(t.TempDir(), "bench.md")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	var rep *report
	// One second of pgbench on a loaded machine can end before its
	// clients have connected: a failed round is run once more (a broken
	// endpoint fails both).
	for attempt := 1; ; attempt++ {
		stdout.Reset()
		stderr.Reset()
		var err error
		rep, err = run(ctx, o, &stdout, &stderr)
		if err != nil {
			t.Fatalf("run: %v\n%s", err, stderr.String())
		}
		failed := false
		for _, r := range rep.Results {
			failed = failed || r.Status != "ok"
		}
		if !failed || attempt == 2 {
			break
		}
		t.Logf("attempt %d had a failed round; running it again:\n%s", attempt, stderr.String())
	}

	done := map[string]int64{}
	for _, r := range rep.Results {
		if r.Status != "ok" {
			t.Errorf("%s on %s: %s %s", r.Workload, r.Endpoint, r.Status, r.Reason)
		}
		done[r.Endpoint] += r.Transactions
	}
	for _, ep := range []string{"direct", "vitalproxy"} {
		if done[ep] <= 0 {
			t.Errorf("%s completed %d transactions, want > 0", ep, done[ep])
		}
	}
	for _, r := range rep.Results {
		if r.Endpoint == "vitalproxy" && !r.HasCPU {
			t.Errorf("no CPU time measured for the in-process proxy")
		}
	}

	f, err := os.Open(o.out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := parseMarkdown(f)
	if err != nil {
		t.Fatalf("parse %s: %v", o.out, err)
	}
	seen := map[string]bool{}
	for _, row := range rows {
		if row.Workload != "S-c8-simple" {
			t.Errorf("unexpected workload row %q", row.Workload)
		}
		if math.IsNaN(row.TPS) || row.TPS <= 0 {
			t.Errorf("%s: TPS cell %q is not a positive number", row.Endpoint, row.Cells["TPS (median)"])
		}
		seen[row.Endpoint] = true
	}
	if !seen["direct"] || !seen["vitalproxy"] || len(rows) != 2 {
		t.Errorf("table rows %v, want direct and vitalproxy", rows)
	}
	if !strings.Contains(stdout.String(), "S-c8-simple") {
		t.Errorf("text table lacks the workload:\n%s", stdout.String())
	}
}

func TestParsePgbench(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		connect bool
		want    pgbenchResult
	}{
		{name: "select-only", out: `transaction type: <builtin: select only>
number of transactions actually processed: 123456
number of failed transactions: 0 (0.000%)
latency average = 0.648 ms
initial connection time = 12.345 ms
tps = 12345.678901 (without initial connection time)
`, want: pgbenchResult{TPS: 12345.678901, TPSLabel: "without initial connection time", Transactions: 123456, LatencyMS: 0.648}},
		{name: "connect", connect: true, out: `number of transactions actually processed: 2000
number of failed transactions: 0 (0.000%)
latency average = 40.000 ms
average connection time = 9.500 ms
tps = 199.5 (including reconnection times)
`, want: pgbenchResult{TPS: 199.5, TPSLabel: "including reconnection times", Transactions: 2000, LatencyMS: 40, ConnMS: 9.5}},
		{name: "older-pgbench", connect: true, out: `number of transactions actually processed: 10
tps = 100.0 (including connections establishing)
tps = 120.0 (excluding connections establishing)
`, want: pgbenchResult{TPS: 100, TPSLabel: "including connections establishing", Transactions: 10}},
		{name: "older-pgbench/no-connect", out: `number of transactions actually processed: 10
tps = 100.0 (including connections establishing)
tps = 120.0 (excluding connections establishing)
`, want: pgbenchResult{TPS: 120, TPSLabel: "excluding connections establishing", Transactions: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePgbench(tt.out, tt.connect)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	if _, err := parsePgbench("pgbench: error: connection refused\n", false); err == nil {
		t.Error("output without a tps line parsed")
	}
}

func TestParseProcStat(t *testing.T) {
	got, err := parseProcStat("4242 (pgbouncer (x)) S 1 4242 4242 0 -1 4194560 300 0 0 0 150 50 0 0 20 0 1 0 100 0 0")
	if err != nil {
		t.Fatal(err)
	}
	if want := 2 * time.Second; got != want {
		t.Errorf("utime+stime = %v, want %v", got, want)
	}
}

func TestSummaryRatios(t *testing.T) {
	rep := &report{
		Options:   options{repeats: 2},
		Workloads: []string{"w"},
		Endpoints: []endpointInfo{{Name: "direct", Kind: "direct"}, {Name: "vitalproxy", Kind: "vitalproxy", Mode: "session"},
			{Name: "pgbouncer-session", Kind: "pgbouncer", Mode: "session"}},
		Results: []runResult{
			{Workload: "w", Endpoint: "direct", Round: 1, Status: "ok", TPS: 100},
			{Workload: "w", Endpoint: "vitalproxy", Round: 1, Status: "ok", TPS: 90, Transactions: 900, CPU: 9 * time.Millisecond, HasCPU: true},
			{Workload: "w", Endpoint: "pgbouncer-session", Round: 1, Status: "ok", TPS: 80},
			{Workload: "w", Endpoint: "direct", Round: 2, Status: "ok", TPS: 200},
			{Workload: "w", Endpoint: "vitalproxy", Round: 2, Status: "ok", TPS: 100, Transactions: 1000, CPU: 20 * time.Millisecond, HasCPU: true},
			{Workload: "w", Endpoint: "pgbouncer-session", Round: 2, Status: "failed", Reason: "boom"},
		},
	}
	rep.summarize()
	p := rep.Rows[1]
	if p.Endpoint != "vitalproxy" || p.TPS != 95 {
		t.Fatalf("row %+v", p)
	}
	// Paired ratios 0.9 and 0.5: median 0.7.
	if math.Abs(p.XDirect.Med-0.7) > 1e-9 || p.XDirect.N != 2 {
		t.Errorf("x direct = %+v, want median 0.7 of 2", p.XDirect)
	}
	// Only round 1 has a PgBouncer result: 90/80.
	if math.Abs(p.XPeer.Med-1.125) > 1e-9 || p.XPeer.N != 1 {
		t.Errorf("x pgbouncer = %+v, want 1.125 of 1", p.XPeer)
	}
	// 10 and 20 us per transaction: median 15.
	if !p.HasCPU || math.Abs(p.CPUPerTxn-15) > 1e-9 {
		t.Errorf("cpu per txn = %v", p.CPUPerTxn)
	}
	if b := rep.Rows[2]; b.Failed != 1 || b.TPS != 80 {
		t.Errorf("pgbouncer row %+v", b)
	}
	rows, err := parseMarkdown(strings.NewReader(rep.markdown()))
	if err != nil || len(rows) != 3 || rows[1].TPS != 95 {
		t.Errorf("markdown round trip: %v %+v", err, rows)
	}
}

func TestLocalPortsTo(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	var conns []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	inodes, err := socketInodes(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	ports, err := localPortsTo(inodes, l.Addr().(*net.TCPAddr).Port)
	if err != nil {
		t.Fatal(err)
	}
	own, err := ownPortsTo(l.Addr().(*net.TCPAddr).Port)
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) != len(conns) || len(own) != len(conns) {
		t.Errorf("found %d (sock_diag) and %d (own sockets) connections to the listener, want %d", len(ports), len(own), len(conns))
	}
	for _, c := range conns {
		if p := c.LocalAddr().(*net.TCPAddr).Port; !ports[p] || !own[p] {
			t.Errorf("local port %d not found", p)
		}
	}
}

func BenchmarkLocalPortsTo(b *testing.B) {
	inodes, err := socketInodes(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := localPortsTo(inodes, 5432); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOwnPortsTo(b *testing.B) {
	for b.Loop() {
		if _, err := ownPortsTo(5432); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSummaryPeerByMode: each proxy endpoint is compared with the PgBouncer
// endpoint of its own pool mode, whatever the endpoints are called.
func TestSummaryPeerByMode(t *testing.T) {
	rep := &report{
		Options:   options{repeats: 1},
		Workloads: []string{"w"},
		Endpoints: []endpointInfo{
			{Name: "vitalproxy", Kind: "vitalproxy", Mode: "session"},
			{Name: "vitalproxy-tx", Kind: "vitalproxy", Mode: "transaction"},
			{Name: "pgbouncer-session", Kind: "pgbouncer", Mode: "session"},
			{Name: "pgbouncer-tx", Kind: "pgbouncer", Mode: "transaction"},
		},
		Results: []runResult{
			{Workload: "w", Endpoint: "vitalproxy", Round: 1, Status: "ok", TPS: 110},
			{Workload: "w", Endpoint: "vitalproxy-tx", Round: 1, Status: "ok", TPS: 90},
			{Workload: "w", Endpoint: "pgbouncer-session", Round: 1, Status: "ok", TPS: 100},
			{Workload: "w", Endpoint: "pgbouncer-tx", Round: 1, Status: "ok", TPS: 100},
		},
	}
	rep.summarize()
	want := map[string]struct {
		peer  string
		ratio float64
	}{"vitalproxy": {"pgbouncer-session", 1.1}, "vitalproxy-tx": {"pgbouncer-tx", 0.9}}
	for _, row := range rep.Rows {
		w, ok := want[row.Endpoint]
		if !ok {
			continue
		}
		if row.Peer != w.peer || math.Abs(row.XPeer.Med-w.ratio) > 1e-9 {
			t.Errorf("%s: peer %q x %v, want %q x %v", row.Endpoint, row.Peer, row.XPeer.Med, w.peer, w.ratio)
		}
	}
}
