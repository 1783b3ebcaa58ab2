package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// The many-tenants mode drives its clients from a load generator written
// against pgconn: one connection per client, each looping one autocommit
// transaction. It runs in a child process (this binary started again with
// loadgenEnv=1) so that the in-process proxy's CPU time, measured with
// getrusage(RUSAGE_SELF), does not include the clients' own work.
//
// The parent talks to the child over its standard input and output, one
// line per message:
//
//	parent -> child   {spec as JSON}        what to run
//	child -> parent   ready                 every client is connected (and has prepared its statement)
//	parent -> child   go                    start the warm-up
//	child -> parent   start                 the measured window begins
//	child -> parent   stopped               the window ended
//	child -> parent   result {JSON}         the clients' counts and latencies
//	parent -> child   (end of input)        close the connections and exit
//	child -> parent   error MESSAGE         the run failed; the child exits
//
// The parent reads the CPU counters when start and stopped arrive.

// loadgenEnv makes the bench binary, or its test binary, a load generator
// when it is "1".
const loadgenEnv = "BENCH_LOADGEN"

// loadSpec is one run of the load generator.
type loadSpec struct {
	Clients []loadClient `json:"clients"`
	// Protocol is "extended" (a named prepared statement, ExecPrepared)
	// or "simple" (the query text with its argument inlined).
	Protocol string `json:"protocol"`
	// Unnamed runs the extended protocol with the unnamed statement
	// (Parse, Bind, Execute each time: ExecParams), for poolers that
	// cannot keep named statements in transaction mode.
	Unnamed bool `json:"unnamed"`
	// Query may use $1, which each transaction sets to the client's next
	// argument.
	Query    string        `json:"query"`
	Warmup   time.Duration `json:"warmup"`
	Duration time.Duration `json:"duration"`
	// ConnectParallel is how many clients connect at once.
	ConnectParallel int           `json:"connect_parallel"`
	ConnectTimeout  time.Duration `json:"connect_timeout"`
}

// loadClient is one client connection.
type loadClient struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	User     string `json:"user"`
	Password string `json:"password"`
	Database string `json:"database"`
	// Args are the values of $1, used in turn; none when the query has no
	// parameter.
	Args []string `json:"args,omitempty"`
	// Expect is the first column of the one row every transaction must
	// return; a different answer counts as wrong.
	Expect string `json:"expect"`
}

// loadResult is what the clients did within the measured window.
type loadResult struct {
	Elapsed time.Duration `json:"elapsed"`
	// Txns, Errors and Wrong are per client, in the spec's order.
	Txns       []int64 `json:"txns"`
	Errors     []int64 `json:"errors"`
	Wrong      []int64 `json:"wrong"`
	FirstError string  `json:"first_error,omitempty"`
	FirstWrong string  `json:"first_wrong,omitempty"`
	// P50us and P99us are latency percentiles of the window's
	// transactions, in microseconds.
	P50us       float64       `json:"p50_us"`
	P99us       float64       `json:"p99_us"`
	ConnectTime time.Duration `json:"connect_time"`
}

// total returns the transactions of all clients.
func (r loadResult) total() (txns, errs, wrong int64) {
	for i := range r.Txns {
		txns += r.Txns[i]
		errs += r.Errors[i]
		wrong += r.Wrong[i]
	}
	return txns, errs, wrong
}

// stmtName is the prepared statement every extended-protocol client uses.
const stmtName = "vp_bench"

// loadConn is one client's connection and what it sends.
type loadConn struct {
	conn    *pgconn.PgConn
	mode    string // "prepared", "unnamed" or "simple"
	query   string
	params  [][][]byte // per argument, for the extended protocol
	simple  []string   // per argument, for the simple protocol
	expect  []byte
	next    int
	scratch []byte
}

// dialLoadConn connects c and prepares what its transactions send.
func dialLoadConn(ctx context.Context, spec *loadSpec, c loadClient) (*loadConn, error) {
	cfg, err := pgconn.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Password, cfg.Database = c.Host, uint16(c.Port), c.User, c.Password, c.Database
	cfg.TLSConfig = nil
	cfg.Fallbacks = nil
	cfg.ConnectTimeout = spec.ConnectTimeout
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect as %s: %w", c.User, err)
	}
	lc := &loadConn{conn: conn, query: spec.Query, expect: []byte(c.Expect)}
	args := c.Args
	if len(args) == 0 {
		args = []string{""}
	}
	switch {
	case spec.Protocol == "simple":
		lc.mode = "simple"
		for _, a := range args {
			lc.simple = append(lc.simple, strings.ReplaceAll(spec.Query, "$1", "'"+strings.ReplaceAll(a, "'", "''")+"'"))
		}
	case spec.Protocol == "extended":
		lc.mode = "prepared"
		if spec.Unnamed {
			lc.mode = "unnamed"
		}
		for _, a := range args {
			if len(c.Args) == 0 {
				lc.params = append(lc.params, nil)
			} else {
				lc.params = append(lc.params, [][]byte{[]byte(a)})
			}
		}
		if lc.mode == "prepared" {
			if _, err := conn.Prepare(ctx, stmtName, spec.Query, nil); err != nil {
				conn.Close(context.WithoutCancel(ctx))
				return nil, fmt.Errorf("prepare as %s: %w", c.User, err)
			}
		}
	default:
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("unknown protocol %q", spec.Protocol)
	}
	return lc, nil
}

// once runs one transaction. wrong is set when it succeeded but did not
// return the one expected row.
func (lc *loadConn) once(ctx context.Context) (wrong string, err error) {
	i := lc.next
	lc.next++
	var rows int
	switch lc.mode {
	case "simple":
		mrr := lc.conn.Exec(ctx, lc.simple[i%len(lc.simple)])
		for mrr.NextResult() {
			n, rerr := lc.read(mrr.ResultReader(), rows)
			rows += n
			if rerr != nil && err == nil {
				err = rerr
			}
		}
		if cerr := mrr.Close(); cerr != nil {
			err = cerr
		}
	case "prepared":
		rows, err = lc.read(lc.conn.ExecPrepared(ctx, stmtName, lc.params[i%len(lc.params)], nil, nil), 0)
	default:
		rows, err = lc.read(lc.conn.ExecParams(ctx, lc.query, lc.params[i%len(lc.params)], nil, nil, nil), 0)
	}
	if err != nil {
		return "", err
	}
	if rows != 1 || !bytes.Equal(lc.scratch, lc.expect) {
		return fmt.Sprintf("%d rows, first value %q, want 1 row %q", rows, lc.scratch, lc.expect), nil
	}
	return "", nil
}

// read drains rr, keeping the first column of its first row in scratch
// when seen is 0.
func (lc *loadConn) read(rr *pgconn.ResultReader, seen int) (int, error) {
	n := 0
	if seen == 0 {
		lc.scratch = lc.scratch[:0]
	}
	for rr.NextRow() {
		if seen+n == 0 {
			if v := rr.Values(); len(v) > 0 {
				lc.scratch = append(lc.scratch, v[0]...)
			}
		}
		n++
	}
	_, err := rr.Close()
	return n, err
}

func (lc *loadConn) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	lc.conn.Close(ctx)
}

// runLoad connects every client, calls event("ready"), waits for goCh,
// runs the warm-up and the measured window (event("start") and
// event("stopped") at its edges) and returns what the clients did. The
// returned function closes the connections; call it when done (it is nil
// when runLoad fails, which closes them itself).
func runLoad(ctx context.Context, spec *loadSpec, goCh <-chan struct{}, event func(string)) (loadResult, func(), error) {
	n := len(spec.Clients)
	if n == 0 {
		return loadResult{}, nil, errors.New("no clients")
	}
	if spec.Duration <= 0 {
		return loadResult{}, nil, errors.New("duration must be positive")
	}
	conns := make([]*loadConn, n)
	closeAll := func() {
		var wg sync.WaitGroup
		for _, c := range conns {
			if c != nil {
				wg.Add(1)
				go func() { defer wg.Done(); c.close() }()
			}
		}
		wg.Wait()
	}
	par := max(1, spec.ConnectParallel)
	t0 := time.Now()
	connectErr := func() error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		sem := make(chan struct{}, par)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var first error
		for i := range spec.Clients {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
			}
			if ctx.Err() != nil {
				break
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c, err := dialLoadConn(ctx, spec, spec.Clients[i])
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if first == nil {
						first = fmt.Errorf("client %d of %d: %w", i+1, n, err)
					}
					cancel()
					return
				}
				conns[i] = c
			}()
		}
		wg.Wait()
		if first == nil && ctx.Err() != nil {
			first = ctx.Err()
		}
		return first
	}()
	if connectErr != nil {
		closeAll()
		return loadResult{}, nil, connectErr
	}
	res := loadResult{ConnectTime: time.Since(t0), Txns: make([]int64, n), Errors: make([]int64, n), Wrong: make([]int64, n)}
	event("ready")
	select {
	case <-goCh:
	case <-ctx.Done():
		closeAll()
		return loadResult{}, nil, ctx.Err()
	}

	// The window, in nanoseconds since base (monotonic); a transaction
	// counts when it ended inside it, as in any closed loop: where
	// clients queue for a server connection a transaction can take longer
	// than the window, and counting only those that also started in it
	// would count next to none.
	base := time.Now()
	var winStart, winEnd atomic.Int64
	winStart.Store(math.MaxInt64)
	winEnd.Store(math.MaxInt64)
	var stop atomic.Bool
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	lats := make([][]uint32, n)
	var firstErr, firstWrong atomic.Pointer[string]
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]uint32, 0, 4096)
			for !stop.Load() {
				s := int64(time.Since(base))
				wrong, err := c.once(runCtx)
				e := int64(time.Since(base))
				in := e >= winStart.Load() && e <= winEnd.Load()
				if err != nil {
					if stop.Load() {
						break
					}
					if in {
						res.Errors[i]++
					}
					msg := oneLine(err)
					firstErr.CompareAndSwap(nil, &msg)
					if c.conn.IsClosed() {
						break
					}
					time.Sleep(10 * time.Millisecond)
					continue
				}
				if !in {
					continue
				}
				if wrong != "" {
					res.Wrong[i]++
					firstWrong.CompareAndSwap(nil, &wrong)
					continue
				}
				res.Txns[i]++
				lat = append(lat, uint32(min((e-s)/1000, math.MaxUint32)))
			}
			lats[i] = lat
		}()
	}
	sleep := func(d time.Duration) bool {
		if d <= 0 {
			return true
		}
		select {
		case <-time.After(d):
			return true
		case <-ctx.Done():
			return false
		}
	}
	ok := sleep(spec.Warmup)
	if ok {
		start := int64(time.Since(base))
		winStart.Store(start)
		event("start")
		ok = sleep(spec.Duration)
		end := int64(time.Since(base))
		winEnd.Store(end)
		stop.Store(true)
		event("stopped")
		res.Elapsed = time.Duration(end - start)
	}
	stop.Store(true)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		// A client stuck in a query: cancel it (its connection breaks).
		cancelRun()
		<-done
	}
	if !ok {
		closeAll()
		return loadResult{}, nil, ctx.Err()
	}
	if p := firstErr.Load(); p != nil {
		res.FirstError = *p
	}
	if p := firstWrong.Load(); p != nil {
		res.FirstWrong = *p
	}
	var all []uint32
	for _, l := range lats {
		all = append(all, l...)
	}
	if len(all) > 0 { // JSON has no NaN
		res.P50us, res.P99us = percentile(all, 0.50), percentile(all, 0.99)
	}
	return res, closeAll, nil
}

// percentile returns the q-quantile of v (nearest rank), NaN when empty.
// It sorts v.
func percentile(v []uint32, q float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	k := int(math.Ceil(q*float64(len(v)))) - 1
	k = min(max(k, 0), len(v)-1)
	return float64(v[k])
}

// loadgenMain is the child process: it reads the spec, runs it and
// reports, following the protocol above. It returns the exit code.
func loadgenMain(in io.Reader, out io.Writer) int {
	br := bufio.NewReaderSize(in, 1<<20)
	line, err := br.ReadBytes('\n')
	if err != nil && len(line) == 0 {
		fmt.Fprintf(out, "error read spec: %v\n", err)
		return 1
	}
	var spec loadSpec
	if err := json.Unmarshal(line, &spec); err != nil {
		fmt.Fprintf(out, "error parse spec: %s\n", oneLine(err))
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	goCh := make(chan struct{})
	eof := make(chan struct{})
	go func() {
		started := false
		for {
			l, err := br.ReadString('\n')
			if strings.TrimSpace(l) == "go" && !started {
				started = true
				close(goCh)
			}
			if err != nil {
				close(eof)
				if !started {
					cancel()
				}
				return
			}
		}
	}()
	w := bufio.NewWriter(out)
	event := func(s string) {
		w.WriteString(s + "\n")
		w.Flush()
	}
	res, closeAll, err := runLoad(ctx, &spec, goCh, event)
	if err != nil {
		event("error " + oneLine(err))
		return 1
	}
	b, err := json.Marshal(res)
	if err != nil {
		closeAll()
		event("error " + oneLine(err))
		return 1
	}
	event("result " + string(b))
	// Keep the connections until the parent has read its counters.
	select {
	case <-eof:
	case <-time.After(time.Minute):
	}
	closeAll()
	return 0
}

// loadChild is a running load generator process.
type loadChild struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  *bufio.Scanner
	stderr *tailBuffer
}

// startLoadChild starts this binary as a load generator and sends it spec.
func startLoadChild(ctx context.Context, spec *loadSpec) (*loadChild, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("load generator: %w", err)
	}
	body, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), loadgenEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	tb := &tailBuffer{max: 4096}
	cmd.Stderr = tb
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start load generator: %w", err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	lc := &loadChild{cmd: cmd, stdin: stdin, lines: sc, stderr: tb}
	if _, err := stdin.Write(append(body, '\n')); err != nil {
		lc.kill()
		return nil, fmt.Errorf("send spec to load generator: %w", err)
	}
	return lc, nil
}

// run drives the child through one run, calling onStart and onStopped at
// the measured window's edges, and waits for it to exit.
func (lc *loadChild) run(onStart, onStopped func()) (loadResult, error) {
	var res loadResult
	got := false
	for lc.lines.Scan() {
		line := lc.lines.Text()
		verb, rest, _ := strings.Cut(line, " ")
		switch verb {
		case "ready":
			if _, err := io.WriteString(lc.stdin, "go\n"); err != nil {
				lc.kill()
				return res, fmt.Errorf("load generator: %w", err)
			}
		case "start":
			onStart()
		case "stopped":
			onStopped()
		case "result":
			if err := json.Unmarshal([]byte(rest), &res); err != nil {
				lc.kill()
				return res, fmt.Errorf("load generator result: %w", err)
			}
			got = true
			lc.stdin.Close()
		case "error":
			lc.stdin.Close()
			_ = lc.cmd.Wait()
			return res, errors.New(rest)
		}
	}
	lc.stdin.Close()
	err := lc.cmd.Wait()
	if !got {
		if err == nil {
			err = errors.New("exited without a result")
		}
		return res, fmt.Errorf("load generator: %w %s", err, lastLine(lc.stderr.String()))
	}
	return res, nil
}

func (lc *loadChild) kill() {
	lc.stdin.Close()
	_ = lc.cmd.Process.Kill()
	_ = lc.cmd.Wait()
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = slices.Clone(t.buf[len(t.buf)-t.max:])
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
