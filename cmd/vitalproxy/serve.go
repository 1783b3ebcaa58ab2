package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/proxy"
)

func init() { subcommands = append(subcommands, newServeCommand) }

// serveFlagKeys maps serve's flags onto config keys.
var serveFlagKeys = map[string]string{
	"listen":         "listen",
	"upstream-url":   "upstream.url",
	"metrics-listen": "metrics.listen",
}

func newServeCommand() *cobra.Command {
	var unsafe bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the tenant proxy",
		Long: `Run the tenant proxy: accept PostgreSQL clients, authenticate them, and
forward each to the database as its tenant's own login role.

Before accepting clients the proxy runs the isolation audit and refuses to
start if it fails (--unsafe starts anyway, with a warning on every start).
SIGHUP, or a change to the config file, reloads users, tenants and settings
without dropping connections. SIGTERM stops accepting, lets sessions finish
until limits.shutdown_timeout, then closes the rest.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, serveFlagKeys)
			if err != nil {
				return err
			}
			if err := cfg.RequireServe(); err != nil {
				return err
			}
			logger := newLogger(cfg, cmd.ErrOrStderr())
			srv, err := proxy.New(cfg, logger,
				proxy.WithUnsafe(unsafe),
				proxy.WithVersion(buildVersion()),
				proxy.WithConfigLoader(func() (*config.Config, error) { return loadConfig(cmd, serveFlagKeys) }),
			)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			done := make(chan struct{})
			defer close(done)
			go func() {
				for {
					select {
					case <-hup:
						_ = srv.Reload(ctx)
					case <-done:
						return
					}
				}
			}()
			return srv.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.String("listen", "", "TCP address to accept clients on (listen; default 127.0.0.1:6432)")
	f.String("upstream-url", "", "PostgreSQL URL tenants connect to; its user and password are ignored (upstream.url)")
	f.String("metrics-listen", "", "address of /metrics, /healthz and /readyz; empty string turns them off (metrics.listen; default 127.0.0.1:9930)")
	f.BoolVar(&unsafe, "unsafe", false, "start even if the isolation audit fails (logged at WARN)")
	return cmd
}
