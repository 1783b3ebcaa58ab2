package main

import (
	"fmt"
	"strconv"
	"strings"
)

// The reference endpoints and case of the many-tenants tables.
const (
	roleEndpoint  = "vitalproxy-role"
	peerEndpoint  = "pgbouncer"
	baselineCase  = "single"
	tenantHeading = "## vitalproxy many-tenants benchmark"
)

// skippedEndpoint is an endpoint that could not run, and why.
type skippedEndpoint struct {
	Name   string
	Reason string
}

// tenantReport is a whole many-tenants run: settings, raw runs and the
// summary.
type tenantReport struct {
	Options   options
	Env       []string
	Cases     []tenantCase
	Endpoints []string
	Skipped   []skippedEndpoint
	Runs      []tenantRun
	Notes     []string
	Rows      []tenantSummary
	Key       []string
}

// tenantSummary is one case on one endpoint over all rounds.
type tenantSummary struct {
	Case     string
	Endpoint string
	// Status is "ok" when at least one round succeeded, else "failed",
	// "n/a" or "skipped" with Reason.
	Status string
	Reason string
	// TPS and the other figures are medians over the successful rounds.
	TPS float64
	// XSingle is the median of the per-round ratios to vitalproxy-role's
	// single case, XPeer to PgBouncer's same case.
	XSingle, XPeer                  ratio
	P50ms, P99ms                    float64
	TenantMin, TenantMed, TenantMax float64
	// Starved is the most tenants left without a transaction in a round.
	Starved   int
	ProxyCPU  float64
	HasCPU    bool
	PGCPU     float64
	Logins    float64
	HasLogins bool
	// LoginRate is the median of the rounds' logins per second.
	LoginRate float64
	Errors    int64
	Wrong     int64
	// Rounds holds each round's TPS, "failed" or "n/a".
	Rounds     []string
	Failed     int
	ForeignPct float64
}

// summarize fills Rows, Key and the notes from Runs.
func (r *tenantReport) summarize() {
	type key struct {
		c, e  string
		round int
	}
	byKey := map[key]tenantRun{}
	for _, run := range r.Runs {
		byKey[key{run.Case, run.Endpoint, run.Round}] = run
	}
	okTPS := func(c, e string, round int) (float64, bool) {
		run, ok := byKey[key{c, e, round}]
		if !ok || run.Status != "ok" || run.TPS <= 0 {
			return 0, false
		}
		return run.TPS, true
	}
	r.Rows, r.Key = nil, nil
	for _, c := range r.Cases {
		for _, e := range r.Endpoints {
			row := tenantSummary{Case: c.Name, Endpoint: e}
			var tps, p50, p99, tmin, tmed, tmax, cpu, pg, logins, rates, foreign, xs, xp []float64
			for round := 1; round <= r.Options.repeats; round++ {
				run, ok := byKey[key{c.Name, e, round}]
				switch {
				case !ok:
					row.Rounds = append(row.Rounds, "-")
					continue
				case run.Status == "n/a":
					row.Rounds = append(row.Rounds, "n/a")
					row.Reason = run.Reason
					continue
				case run.Status != "ok":
					row.Rounds = append(row.Rounds, "failed")
					row.Failed++
					if row.Reason == "" {
						row.Reason = run.Reason
					}
					continue
				}
				mark := ""
				if run.ForeignPct > foreignWarn {
					mark = "*"
				}
				row.Rounds = append(row.Rounds, fmt.Sprintf("%.0f%s", run.TPS, mark))
				tps = append(tps, run.TPS)
				p50 = append(p50, run.P50ms)
				p99 = append(p99, run.P99ms)
				tmin = append(tmin, run.TenantMin)
				tmed = append(tmed, run.TenantMed)
				tmax = append(tmax, run.TenantMax)
				foreign = append(foreign, run.ForeignPct)
				row.Starved = max(row.Starved, run.Starved)
				row.Errors += run.Errors
				row.Wrong += run.Wrong
				if run.Wrong > 0 && run.FirstWrong != "" && row.Reason == "" {
					row.Reason = "unexpected answer: " + run.FirstWrong
				}
				if run.Txns > 0 {
					if run.HasCPU {
						cpu = append(cpu, float64(run.ProxyCPU.Nanoseconds())/1e3/float64(run.Txns))
					}
					pg = append(pg, float64(run.PGCPU.Nanoseconds())/1e3/float64(run.Txns))
				}
				if run.Logins >= 0 {
					logins = append(logins, float64(run.Logins))
					if run.Elapsed > 0 {
						rates = append(rates, float64(run.Logins)/run.Elapsed.Seconds())
					}
				}
				if base, ok := okTPS(baselineCase, roleEndpoint, round); ok {
					xs = append(xs, run.TPS/base)
				}
				if peer, ok := okTPS(c.Name, peerEndpoint, round); ok {
					xp = append(xp, run.TPS/peer)
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
			row.TPS, row.P50ms, row.P99ms = median(tps), median(p50), median(p99)
			row.TenantMin, row.TenantMed, row.TenantMax = median(tmin), median(tmed), median(tmax)
			if len(cpu) > 0 {
				row.ProxyCPU, row.HasCPU = median(cpu), true
			}
			if len(pg) > 0 {
				row.PGCPU = median(pg)
			}
			if len(logins) > 0 {
				row.Logins, row.HasLogins = median(logins), true
				if len(rates) > 0 {
					row.LoginRate = median(rates)
				}
			}
			if len(foreign) > 0 {
				row.ForeignPct = median(foreign)
			}
			row.XSingle, row.XPeer = ratioOf(xs), ratioOf(xp)
			if row.Wrong > 0 {
				r.Notes = append(r.Notes, fmt.Sprintf("%s in %s returned %d unexpected answers (%s): its rows are not a valid measurement", e, c.Name, row.Wrong, row.Reason))
			}
			if row.Starved > 0 {
				r.Notes = append(r.Notes, fmt.Sprintf("%s in %s left up to %d tenants without a single transaction in a round", e, c.Name, row.Starved))
			}
			r.Rows = append(r.Rows, row)
		}
		for _, s := range r.Skipped {
			r.Rows = append(r.Rows, tenantSummary{Case: c.Name, Endpoint: s.Name, Status: "skipped", Reason: s.Reason})
		}
	}
	for _, row := range r.Rows {
		if row.Status != "ok" || !strings.HasPrefix(row.Endpoint, "vitalproxy") {
			continue
		}
		var parts []string
		if row.XSingle.N > 0 && !(row.Case == baselineCase && row.Endpoint == roleEndpoint) {
			parts = append(parts, fmt.Sprintf("%.3f of one tenant's throughput (%s %s)", row.XSingle.Med, roleEndpoint, baselineCase))
		}
		if row.XPeer.N > 0 {
			parts = append(parts, fmt.Sprintf("%.3f of PgBouncer's in the same case", row.XPeer.Med))
		}
		if len(parts) > 0 {
			r.Key = append(r.Key, fmt.Sprintf("%s %s runs at %s", row.Endpoint, row.Case, strings.Join(parts, " and ")))
		}
	}
}

// tenantColumns are the headers of each case's table.
var tenantColumns = []string{"endpoint", "TPS (median)", "x role single", "x PgBouncer", "p50 ms", "p99 ms",
	"tenant TPS min / median / max", "proxy CPU us/txn", "PG CPU us/txn", "backend logins", "errors", "foreign %", "TPS per round / note"}

func (row tenantSummary) cells() []string {
	if row.Status != "ok" {
		cells := make([]string, len(tenantColumns))
		cells[0], cells[1], cells[len(cells)-1] = row.Endpoint, row.Status, row.Reason
		if row.Failed > 0 {
			cells[len(cells)-1] = strings.Join(row.Rounds, "/") + ": " + row.Reason
		}
		return cells
	}
	xs := row.XSingle.String()
	if row.Case == baselineCase && row.Endpoint == roleEndpoint {
		xs = "1"
	}
	xp := row.XPeer.String()
	if row.Endpoint == peerEndpoint {
		xp = "1"
	}
	cpu, logins := "", ""
	if row.HasCPU {
		cpu = fmt.Sprintf("%.1f", row.ProxyCPU)
	}
	if row.HasLogins {
		logins = strconv.FormatFloat(row.Logins, 'f', 0, 64)
		if row.Logins > 0 && row.LoginRate > 0 {
			logins += fmt.Sprintf(" (%.1f/s)", row.LoginRate)
		}
	}
	errs := strconv.FormatInt(row.Errors, 10)
	if row.Wrong > 0 {
		errs += fmt.Sprintf(" (+%d wrong)", row.Wrong)
	}
	note := strings.Join(row.Rounds, "/")
	if row.Failed > 0 || row.Reason != "" {
		note += " (" + row.Reason + ")"
	}
	return []string{row.Endpoint, fmt.Sprintf("%.0f", row.TPS), xs, xp,
		fmt.Sprintf("%.3f", row.P50ms), fmt.Sprintf("%.3f", row.P99ms),
		fmt.Sprintf("%.1f / %.1f / %.1f", row.TenantMin, row.TenantMed, row.TenantMax),
		cpu, fmt.Sprintf("%.1f", row.PGCPU), logins, errs, fmt.Sprintf("%.1f", row.ForeignPct), note}
}

// tenantLegend explains the columns.
var tenantLegend = []string{
	"TPS: transactions completed inside the measured window over its length, all clients together; the median over the rounds.",
	"x role single: median of the per-round ratios to vitalproxy-role's TPS in the single case of the same round (rounds are interleaved: round > case > endpoint), i.e. what share of one tenant's throughput the case gets; x PgBouncer: the same against pgbouncer in the same case.",
	"p50 / p99 ms: latency percentiles of the transactions completed in the window, queueing for a server connection included (median over rounds).",
	"tenant TPS: each tenant's transactions over the window, for the tenants that had clients: the smallest, the median and the largest (fairness; medians over rounds). PgBouncer's clients all log in as one role: its tenants are nominal.",
	"proxy CPU us/txn: the endpoint process's CPU time over the window per transaction: the in-process proxy's getrusage(RUSAGE_SELF) (the load generator runs in a child process and does not count), PgBouncer's utime+stime (10 ms ticks); none for direct.",
	"PG CPU us/txn: the PostgreSQL cluster's CPU time over the window per transaction (the postmaster, its reaped and live children).",
	"backend logins: new PostgreSQL sessions during the window (pg_stat_database.sessions delta): server connections the pooler opened (and PostgreSQL authenticated) while the clients ran; in parentheses per second of the window.",
	"errors: failed transactions in the windows of all rounds; wrong: transactions that did not return the tenant's one expected row.",
	"foreign %: median share of all CPUs used during the windows by processes outside the benchmark; rounds above 10% are marked *.",
}

// markdown renders the report.
func (r *tenantReport) markdown() string {
	var b strings.Builder
	b.WriteString(tenantHeading + "\n\n")
	for _, e := range r.Env {
		b.WriteString("- " + e + "\n")
	}
	if len(r.Key) > 0 {
		b.WriteString("\nKey figures:\n\n")
		for _, k := range r.Key {
			b.WriteString("- " + k + "\n")
		}
	}
	esc := func(s string) string { return strings.ReplaceAll(s, "|", "\\|") }
	for _, c := range r.Cases {
		fmt.Fprintf(&b, "\n### %s: %s\n\n", c.Name, c.Desc)
		b.WriteString("| " + strings.Join(tenantColumns, " | ") + " |\n|")
		for i := range tenantColumns {
			if i == 0 || i == len(tenantColumns)-1 {
				b.WriteString("---|")
			} else {
				b.WriteString("---:|")
			}
		}
		b.WriteString("\n")
		for _, row := range r.Rows {
			if row.Case != c.Name {
				continue
			}
			cells := row.cells()
			for i := range cells {
				cells[i] = esc(cells[i])
			}
			b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
		}
	}
	if len(r.Notes) > 0 {
		b.WriteString("\nNotes:\n\n")
		for _, n := range r.Notes {
			b.WriteString("- " + n + "\n")
		}
	}
	b.WriteString("\nColumns:\n\n")
	for _, l := range tenantLegend {
		b.WriteString("- " + l + "\n")
	}
	return b.String()
}
