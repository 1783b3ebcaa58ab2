// Command bench compares vitalproxy with direct PostgreSQL and PgBouncer
// using pgbench, on one machine, in one run.
//
// It starts a throwaway PostgreSQL cluster, applies the migrations, creates
// the tenant roles, loads pgbench's tables (pgbench -i) and grants a tenant
// what pgbench needs. Every endpoint is then used by a non-superuser role:
//
//	direct             PostgreSQL itself, as the tenant's read-write role
//	vitalproxy         the proxy in session mode, run in-process
//	vitalproxy-tx      the proxy with pool.mode transaction (skipped if refused)
//	pgbouncer-session  PgBouncer, pool_mode=session (if installed)
//	pgbouncer-tx       PgBouncer, pool_mode=transaction (if installed)
//
// Each workload runs against every endpoint interleaved (A B C A B C ...)
// for several rounds, so that ratios between endpoints hold on a noisy host.
// The table gives the median TPS, the median of the per-round ratios to
// direct and to PgBouncer of the same pool mode, and the CPU time the proxy
// (or PgBouncer) spent per transaction.
//
// Usage:
//
//	go run ./test/bench [-duration 10s] [-repeats 3] [-workloads LIST] [-endpoints LIST] [-out FILE.md]
//
// With -tenants it measures many tenants sharing one server-connection
// budget instead (see tenants.go):
//
//	go run ./test/bench -tenants [-cases single,T200xC2,T1000xC1,zipf] [-budget 40]
//	    [-protocol extended|simple] [-duration 10s] [-repeats 3]
//	    [-tenant-endpoints vitalproxy-role,vitalproxy-context,pgbouncer,direct] [-out FILE.md]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// options are the command-line settings.
type options struct {
	duration      time.Duration
	repeats       int
	warmup        time.Duration
	scale         int
	workloads     string
	endpoints     string
	out           string
	cpuProfile    string
	sessionPool   int
	txPool        int
	pgbouncer     string
	proxyLogLevel string
	// maxForeign (percent, 0 = off) and foreignRetries redo runs that
	// other processes disturbed.
	maxForeign     float64
	foreignRetries int

	// The many-tenants mode (-tenants).
	tenantMode      bool
	cases           string
	budget          int
	protocol        string
	tenantQuery     string
	tenantEndpoints string
}

func defaultOptions() options {
	return options{
		duration:       10 * time.Second,
		repeats:        3,
		warmup:         3 * time.Second,
		scale:          10,
		sessionPool:    100,
		txPool:         20,
		proxyLogLevel:  "warn",
		foreignRetries: 2,

		cases:           defaultTenantCases,
		budget:          40,
		protocol:        "extended",
		tenantQuery:     "point",
		tenantEndpoints: defaultTenantEndpoints,
	}
}

func main() {
	if os.Getenv(loadgenEnv) == "1" {
		os.Exit(loadgenMain(os.Stdin, os.Stdout))
	}
	o := defaultOptions()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.DurationVar(&o.duration, "duration", o.duration, "length of one pgbench run (whole seconds, pgbench -T)")
	fs.IntVar(&o.repeats, "repeats", o.repeats, "interleaved rounds per workload")
	fs.DurationVar(&o.warmup, "warmup", o.warmup, "warm-up per endpoint before measuring (0 = none); with -tenants before every run, its clients connected")
	fs.IntVar(&o.scale, "scale", o.scale, "pgbench scale factor (pgbench -i -s)")
	fs.StringVar(&o.workloads, "workloads", "", "comma-separated workloads, or \"all\" (default: every workload but tpcb-c8): "+strings.Join(workloadNames(), ", "))
	fs.StringVar(&o.endpoints, "endpoints", "", "comma-separated endpoints (default all): "+strings.Join(endpointNames(), ", "))
	fs.StringVar(&o.out, "out", "", "also write the results as Markdown to this file")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the in-process proxy's runs to this file (go tool pprof)")
	fs.IntVar(&o.sessionPool, "session-pool", o.sessionPool, "PgBouncer session-mode default_pool_size")
	fs.IntVar(&o.txPool, "tx-pool", o.txPool, "server connections of the transaction-mode poolers (PgBouncer default_pool_size, vitalproxy pool.max_server_conns_per_tenant)")
	fs.StringVar(&o.pgbouncer, "pgbouncer", "", "PgBouncer binary (default /usr/sbin/pgbouncer, else pgbouncer on PATH)")
	fs.StringVar(&o.proxyLogLevel, "proxy-log-level", o.proxyLogLevel, "log level of the in-process proxy (debug, info, warn, error)")
	fs.Float64Var(&o.maxForeign, "max-foreign", 0, "on a shared machine: redo a run when processes outside the benchmark used more than this percent of all CPUs (0 = off)")
	fs.IntVar(&o.foreignRetries, "foreign-retries", o.foreignRetries, "how often -max-foreign redoes one run")
	fs.BoolVar(&o.tenantMode, "tenants", false, "many-tenants mode: tenants sharing one server-connection budget (the flags below; -duration, -repeats, -warmup, -out, -pgbouncer and -max-foreign apply too)")
	fs.StringVar(&o.cases, "cases", o.cases, "-tenants: comma-separated cases: single (1 tenant x 400 clients), TxC (T tenants x C clients each, e.g. T200xC2), zipf (400 clients over 200 tenants, Zipf s=1.1)")
	fs.IntVar(&o.budget, "budget", o.budget, "-tenants: server connections the poolers share among all tenants (vitalproxy pool.max_server_conns, PgBouncer default_pool_size)")
	fs.StringVar(&o.protocol, "protocol", o.protocol, "-tenants: extended (a prepared statement) or simple")
	fs.StringVar(&o.tenantQuery, "tenant-query", o.tenantQuery, "-tenants: point (select one of the tenant's agents by id) or count (count(*) of the agents the tenant sees)")
	fs.StringVar(&o.tenantEndpoints, "tenant-endpoints", o.tenantEndpoints, "-tenants: comma-separated endpoints: "+strings.Join(tenantEndpointNames, ", "))
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected argument %q\n", fs.Arg(0))
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	if o.tenantMode {
		_, err = runTenants(ctx, o, os.Stdout, os.Stderr)
	} else {
		_, err = run(ctx, o, os.Stdout, os.Stderr)
	}
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", oneLine(err))
		os.Exit(1)
	}
}

// oneLine folds an error onto one line.
func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

// logf prints a time-stamped progress line.
func logf(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
