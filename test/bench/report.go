package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// endpointInfo describes a started endpoint in the report.
type endpointInfo struct {
	Name string
	Kind string
	Mode string
	Pool int
}

// report is a whole benchmark: settings, raw runs and the summary.
type report struct {
	Options   options
	Env       []string
	Workloads []string
	Endpoints []endpointInfo
	Results   []runResult
	Notes     []string
	Rows      []summaryRow
}

// summaryRow is one workload on one endpoint over all rounds.
type summaryRow struct {
	Workload string
	Endpoint string
	// Status is "ok" when at least one round succeeded, else "n/a" or
	// "failed" with Reason.
	Status string
	Reason string
	// TPS and LatencyMS are medians over the successful rounds.
	TPS       float64
	LatencyMS float64
	ConnMS    float64
	// XDirect is the median of the per-round ratios TPS/TPS(direct).
	XDirect ratio
	// Peer is the PgBouncer endpoint of the same pool mode; XPeer the
	// median of the per-round ratios to it.
	Peer  string
	XPeer ratio
	// CPUPerTxn is the median endpoint CPU time per transaction, in
	// microseconds.
	CPUPerTxn float64
	HasCPU    bool
	// ServerConns is the most tenant-role backends the endpoint's process
	// held in any round (-1 when not measured).
	ServerConns int
	// ForeignPct is the median share of all CPUs used outside the
	// benchmark during the rounds.
	ForeignPct float64
	// Rounds holds each round's TPS, "failed" or "n/a".
	Rounds []string
	Failed int
}

// ratio is a median of paired ratios with their range.
type ratio struct {
	Med, Min, Max float64
	N             int
}

func (r ratio) String() string {
	switch {
	case r.N == 0:
		return ""
	case r.N == 1:
		return fmt.Sprintf("%.3f", r.Med)
	default:
		return fmt.Sprintf("%.3f (%.2f..%.2f)", r.Med, r.Min, r.Max)
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func ratioOf(v []float64) ratio {
	if len(v) == 0 {
		return ratio{}
	}
	return ratio{Med: median(v), Min: slices.Min(v), Max: slices.Max(v), N: len(v)}
}

// summarize fills Rows from Results.
func (r *report) summarize() {
	type key struct {
		w, e  string
		round int
	}
	byKey := map[key]runResult{}
	for _, res := range r.Results {
		byKey[key{res.Workload, res.Endpoint, res.Round}] = res
	}
	// peerOf names the PgBouncer endpoint of e's pool mode, if one ran.
	peerOf := func(e endpointInfo) string {
		for _, p := range r.Endpoints {
			if p.Kind == "pgbouncer" && p.Mode == e.Mode {
				return p.Name
			}
		}
		return ""
	}
	r.Rows = nil
	warned := map[string]bool{}
	for _, w := range r.Workloads {
		for _, e := range r.Endpoints {
			row := summaryRow{Workload: w, Endpoint: e.Name, ServerConns: -1}
			if e.Kind == "vitalproxy" {
				row.Peer = peerOf(e)
			}
			var tps, lat, conn, cpu, xd, xp, foreign []float64
			for round := 1; round <= r.Options.repeats; round++ {
				res, ok := byKey[key{w, e.Name, round}]
				switch {
				case !ok:
					row.Rounds = append(row.Rounds, "-")
					continue
				case res.Status == "n/a":
					row.Rounds = append(row.Rounds, "n/a")
					row.Reason = res.Reason
					continue
				case res.Status != "ok":
					row.Rounds = append(row.Rounds, "failed")
					row.Failed++
					if row.Reason == "" {
						row.Reason = res.Reason
					}
					continue
				}
				mark := ""
				if res.ForeignPct > foreignWarn {
					mark = "*"
				}
				row.Rounds = append(row.Rounds, fmt.Sprintf("%.0f%s", res.TPS, mark))
				foreign = append(foreign, res.ForeignPct)
				tps = append(tps, res.TPS)
				lat = append(lat, res.LatencyMS)
				if res.ConnMS > 0 {
					conn = append(conn, res.ConnMS)
				}
				if us, ok := res.CPUPerTxn(); ok {
					cpu = append(cpu, us)
				}
				if res.ServerConns > row.ServerConns {
					row.ServerConns = res.ServerConns
				}
				if d, ok := byKey[key{w, "direct", round}]; ok && d.Status == "ok" && d.TPS > 0 && e.Name != "direct" {
					xd = append(xd, res.TPS/d.TPS)
				}
				if row.Peer != "" {
					if p, ok := byKey[key{w, row.Peer, round}]; ok && p.Status == "ok" && p.TPS > 0 {
						xp = append(xp, res.TPS/p.TPS)
					}
				}
			}
			switch {
			case len(tps) > 0:
				row.Status = "ok"
			case row.Failed > 0:
				row.Status = "failed"
			default:
				row.Status = "n/a"
			}
			row.TPS, row.LatencyMS = median(tps), median(lat)
			if len(conn) > 0 {
				row.ConnMS = median(conn)
			}
			if len(cpu) > 0 {
				row.CPUPerTxn, row.HasCPU = median(cpu), true
			}
			row.XDirect, row.XPeer = ratioOf(xd), ratioOf(xp)
			if len(foreign) > 0 {
				row.ForeignPct = median(foreign)
			}
			if e.Kind == "vitalproxy" && e.Mode == "transaction" && e.Pool > 0 && row.ServerConns > e.Pool && !warned[e.Name] {
				warned[e.Name] = true
				r.Notes = append(r.Notes, fmt.Sprintf("%s held %d server connections in %s, more than its pool of %d: pool.mode transaction is not in effect in this build, so its rows measure session mode", e.Name, row.ServerConns, w, e.Pool))
			}
			r.Rows = append(r.Rows, row)
		}
	}
}

// columns are the table's headers.
var columns = []string{"workload", "endpoint", "TPS (median)", "x direct", "x PgBouncer (same mode)", "latency ms", "conn ms", "CPU us/txn", "server conns", "foreign %", "TPS per round / note"}

// foreignWarn marks rounds during which processes outside the benchmark
// used more than this share of the machine.
const foreignWarn = 10.0

// cells renders a row for the tables.
func (row summaryRow) cells() []string {
	if row.Status != "ok" {
		return []string{row.Workload, row.Endpoint, row.Status, "", "", "", "", "", "", "", row.Reason}
	}
	xd := row.XDirect.String()
	if row.Endpoint == "direct" {
		xd = "1"
	}
	xp := row.XPeer.String()
	conn, cpu, sc := "", "", ""
	if row.ConnMS > 0 {
		conn = fmt.Sprintf("%.3f", row.ConnMS)
	}
	if row.HasCPU {
		cpu = fmt.Sprintf("%.1f", row.CPUPerTxn)
	}
	if row.ServerConns >= 0 {
		sc = strconv.Itoa(row.ServerConns)
	}
	rounds := strings.Join(row.Rounds, "/")
	if row.Failed > 0 {
		rounds += fmt.Sprintf(" (%d failed: %s)", row.Failed, row.Reason)
	}
	return []string{row.Workload, row.Endpoint, fmt.Sprintf("%.0f", row.TPS), xd, xp,
		fmt.Sprintf("%.3f", row.LatencyMS), conn, cpu, sc, fmt.Sprintf("%.1f", row.ForeignPct), rounds}
}

// legend explains the columns.
var legend = []string{
	"TPS: pgbench's tps without the initial connection time; for S-C-c8 (-C, a new connection per transaction) the figure including the connections, the only one pgbench prints then.",
	"x direct / x PgBouncer: median of the per-round paired ratios (rounds are interleaved, so each pair ran back to back); range in parentheses.",
	"latency ms: pgbench's average latency (without connection time); conn ms: pgbench's average connection time under -C.",
	"CPU us/txn: CPU time of the endpoint's own process over the run divided by the transactions: the in-process proxy's getrusage(RUSAGE_SELF) delta (the harness only waits for pgbench meanwhile; pgbench is a child and does not count), PgBouncer's utime+stime from /proc/<pid>/stat (10 ms ticks).",
	"server conns: the most backends of the tenant role that the endpoint's process held at once (sampled every second; PgBouncer keeps idle ones pooled); direct has one per client.",
	"foreign %: median share of all CPUs used during the runs by processes outside the benchmark (other users, steal; not the cluster, pgbench, the endpoints, irq/softirq or kernel threads); rounds above 10% are marked *.",
	"x PgBouncer compares vitalproxy with pgbouncer-session and vitalproxy-tx with pgbouncer-tx.",
}

// writeText prints the summary table.
func (r *report) writeText(w io.Writer) error {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "==================== vitalproxy benchmark ====================")
	for _, e := range r.Env {
		fmt.Fprintln(w, e)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(columns, "\t"))
	for _, row := range r.Rows {
		fmt.Fprintln(tw, strings.Join(row.cells(), "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Notes) > 0 {
		fmt.Fprintln(w, "\nnotes:")
		for _, n := range r.Notes {
			fmt.Fprintln(w, "  - "+n)
		}
	}
	fmt.Fprintln(w, "\ncolumns:")
	for _, l := range legend {
		fmt.Fprintln(w, "  - "+l)
	}
	return nil
}

// markdown renders the report as Markdown.
func (r *report) markdown() string {
	var b strings.Builder
	b.WriteString("## vitalproxy benchmark\n\n")
	for _, e := range r.Env {
		b.WriteString("- " + e + "\n")
	}
	b.WriteString("\n| " + strings.Join(columns, " | ") + " |\n|")
	for i := range columns {
		if i >= 2 && i <= 9 {
			b.WriteString("---:|")
		} else {
			b.WriteString("---|")
		}
	}
	b.WriteString("\n")
	for _, row := range r.Rows {
		c := row.cells()
		for i := range c {
			c[i] = strings.ReplaceAll(c[i], "|", "\\|")
		}
		b.WriteString("| " + strings.Join(c, " | ") + " |\n")
	}
	if len(r.Notes) > 0 {
		b.WriteString("\nNotes:\n\n")
		for _, n := range r.Notes {
			b.WriteString("- " + n + "\n")
		}
	}
	b.WriteString("\nColumns:\n\n")
	for _, l := range legend {
		b.WriteString("- " + l + "\n")
	}
	return b.String()
}

// tableRow is one row read back from a Markdown table.
type tableRow struct {
	Workload string
	Endpoint string
	// TPS is NaN when the cell is not a number (n/a, failed).
	TPS   float64
	Cells map[string]string
}

// parseMarkdown reads the results table back from the Markdown report.
func parseMarkdown(r io.Reader) ([]tableRow, error) {
	sc := bufio.NewScanner(r)
	var header []string
	var rows []tableRow
	split := func(line string) []string {
		line = strings.TrimSpace(line)
		line = strings.TrimPrefix(strings.TrimSuffix(line, "|"), "|")
		parts := strings.Split(line, "|")
		for i := range parts {
			parts[i] = strings.TrimSpace(parts[i])
		}
		return parts
	}
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "|") {
			if header != nil && len(rows) > 0 {
				break
			}
			continue
		}
		cells := split(line)
		if header == nil {
			if len(cells) > 0 && cells[0] == "workload" {
				header = cells
			}
			continue
		}
		if strings.HasPrefix(cells[0], "---") {
			continue
		}
		if len(cells) != len(header) {
			return nil, fmt.Errorf("row has %d cells, header %d: %q", len(cells), len(header), line)
		}
		row := tableRow{Workload: cells[0], Endpoint: cells[1], TPS: math.NaN(), Cells: map[string]string{}}
		for i, h := range header {
			row.Cells[h] = cells[i]
		}
		if v, err := strconv.ParseFloat(cells[2], 64); err == nil {
			row.TPS = v
		}
		rows = append(rows, row)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if header == nil {
		return nil, errors.New("no results table found")
	}
	return rows, nil
}
