package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// workload is one pgbench invocation.
type workload struct {
	name string
	args []string
	// connect is true for -C (a new connection per transaction).
	connect bool
	// prepared is true for -M prepared.
	prepared bool
	// writes is true for workloads that modify the tables.
	writes bool
	// optional workloads run only when named (or with "all").
	optional bool
}

// workloads are the available workloads, in the order they run.
var workloads = []workload{
	{name: "S-c8-simple", args: []string{"-S", "-M", "simple", "-c", "8", "-j", "2"}},
	{name: "S-c8-extended", args: []string{"-S", "-M", "extended", "-c", "8", "-j", "2"}},
	{name: "S-c8-prepared", args: []string{"-S", "-M", "prepared", "-c", "8", "-j", "2"}, prepared: true},
	{name: "S-c64-simple", args: []string{"-S", "-M", "simple", "-c", "64", "-j", "2"}},
	{name: "S-c64-extended", args: []string{"-S", "-M", "extended", "-c", "64", "-j", "2"}},
	{name: "S-c64-prepared", args: []string{"-S", "-M", "prepared", "-c", "64", "-j", "2"}, prepared: true},
	{name: "S-C-c8", args: []string{"-C", "-S", "-M", "simple", "-c", "8", "-j", "2"}, connect: true},
	{name: "tpcb-c8", args: []string{"-M", "simple", "-c", "8", "-j", "2"}, writes: true, optional: true},
}

func workloadNames() []string {
	out := make([]string, 0, len(workloads))
	for _, w := range workloads {
		out = append(out, w.name)
	}
	return out
}

// selectWorkloads applies the -workloads filter.
func selectWorkloads(filter string) ([]workload, error) {
	filter = strings.TrimSpace(filter)
	var out []workload
	switch filter {
	case "":
		for _, w := range workloads {
			if !w.optional {
				out = append(out, w)
			}
		}
		return out, nil
	case "all":
		return slices.Clone(workloads), nil
	}
	for _, name := range strings.Split(filter, ",") {
		name = strings.TrimSpace(name)
		i := slices.IndexFunc(workloads, func(w workload) bool { return w.name == name })
		if i < 0 {
			return nil, fmt.Errorf("unknown workload %q (have %s)", name, strings.Join(workloadNames(), ", "))
		}
		out = append(out, workloads[i])
	}
	return out, nil
}

// pgbenchResult is what one pgbench run reported.
type pgbenchResult struct {
	// TPS is pgbench's tps figure: without the initial connection time,
	// or, under -C, including the reconnections (the only one it prints).
	TPS      float64
	TPSLabel string
	// Transactions is "number of transactions actually processed".
	Transactions int64
	Failed       int64
	// LatencyMS is pgbench's average latency; under -C it leaves out the
	// connection time, reported as ConnMS.
	LatencyMS float64
	ConnMS    float64
}

var (
	reTPS    = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(([^)]*)\)`)
	reTxns   = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	reFailed = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
	reLat    = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	reConn   = regexp.MustCompile(`(?m)^average connection time = ([0-9.]+) ms`)
)

// parsePgbench reads pgbench's summary. connect says whether the run used
// -C, which picks the tps line that includes connection time.
func parsePgbench(out string, connect bool) (pgbenchResult, error) {
	var r pgbenchResult
	tps := reTPS.FindAllStringSubmatch(out, -1)
	if len(tps) == 0 {
		return r, errors.New("no tps line in pgbench's output")
	}
	pick := tps[0]
	for _, m := range tps {
		including := strings.Contains(m[2], "including")
		if including == connect {
			pick = m
			break
		}
	}
	r.TPS, _ = strconv.ParseFloat(pick[1], 64)
	r.TPSLabel = pick[2]
	if m := reTxns.FindStringSubmatch(out); m != nil {
		r.Transactions, _ = strconv.ParseInt(m[1], 10, 64)
	} else {
		return r, errors.New("no transaction count in pgbench's output")
	}
	if m := reFailed.FindStringSubmatch(out); m != nil {
		r.Failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reLat.FindStringSubmatch(out); m != nil {
		r.LatencyMS, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := reConn.FindStringSubmatch(out); m != nil {
		r.ConnMS, _ = strconv.ParseFloat(m[1], 64)
	}
	return r, nil
}

// pgbenchSeconds converts a duration to pgbench's whole seconds (at least 1).
func pgbenchSeconds(d time.Duration) int {
	s := int((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// runPgbench runs pgbench against ep for the given seconds. pgbench is
// killed if it runs a minute past -T.
func runPgbench(ctx context.Context, bin string, ep *endpoint, args []string, seconds int, connect bool) (pgbenchResult, string, error) {
	full := []string{"-n", "-h", ep.host, "-p", strconv.Itoa(ep.port), "-U", ep.user, "-T", strconv.Itoa(seconds)}
	full = append(full, args...)
	full = append(full, ep.db)
	rctx, cancel := context.WithTimeout(ctx, time.Duration(seconds)*time.Second+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(rctx, bin, full...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+ep.password, "PGSSLMODE=disable", "PGGSSENCMODE=disable",
		"PGCONNECT_TIMEOUT=10", "LC_ALL=C")
	cmd.WaitDelay = 5 * time.Second
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	err := cmd.Run()
	out := buf.String()
	if rctx.Err() != nil && ctx.Err() == nil {
		return pgbenchResult{}, out, fmt.Errorf("pgbench overran -T %d by a minute and was killed", seconds)
	}
	if ctx.Err() != nil {
		return pgbenchResult{}, out, ctx.Err()
	}
	res, perr := parsePgbench(out, connect)
	if err != nil {
		return res, out, fmt.Errorf("pgbench: %w: %s", err, firstError(out))
	}
	if perr != nil {
		return res, out, perr
	}
	if res.Failed > 0 {
		return res, out, fmt.Errorf("pgbench: %d failed transactions: %s", res.Failed, firstError(out))
	}
	if res.Transactions == 0 {
		return res, out, errors.New("pgbench completed no transaction")
	}
	return res, out, nil
}

// firstError returns the first line of pgbench's output that reports an
// error, or its last line.
func firstError(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, l := range lines {
		ll := strings.ToLower(l)
		if strings.Contains(ll, "error") || strings.Contains(ll, "fatal") || strings.Contains(ll, "abort") {
			return strings.TrimSpace(l)
		}
	}
	return strings.TrimSpace(lines[len(lines)-1])
}
