package main

import (
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vitalproxy/vitalproxy/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries a process exit code for a failure that has already been
// described.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// globalFlags are shared by every subcommand.
type globalFlags struct {
	configFile string
}

var globals globalFlags

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "vitalproxy",
		Short:         "PostgreSQL tenant proxy: one tenant's view of the data per client, enforced by the database",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&globals.configFile, "config", "", "YAML config file (also VITALPROXY_CONFIG)")
	root.PersistentFlags().String("database-url", "", "administrative database URL (VITALPROXY_DATABASE_URL)")
	root.PersistentFlags().String("log-level", "", "log level: debug, info, warn, error (VITALPROXY_LOG_LEVEL)")
	root.PersistentFlags().String("log-format", "", "log format: text or json (VITALPROXY_LOG_FORMAT)")
	root.AddCommand(newVersionCommand())
	for _, add := range subcommands {
		root.AddCommand(add())
	}
	return root
}

// subcommands are registered by the files that define them.
var subcommands []func() *cobra.Command

// globalFlagKeys maps the persistent flags onto config keys.
var globalFlagKeys = map[string]string{
	"database-url": "database_url",
	"log-level":    "log.level",
	"log-format":   "log.format",
}

// loadConfig loads the configuration for cmd, binding the global flags and
// any extra flag-to-key pairs of the command.
func loadConfig(cmd *cobra.Command, extra map[string]string) (*config.Config, error) {
	keys := make(map[string]string, len(globalFlagKeys)+len(extra))
	for k, v := range globalFlagKeys {
		keys[k] = v
	}
	for k, v := range extra {
		keys[k] = v
	}
	fs := pflag.NewFlagSet(cmd.Name(), pflag.ContinueOnError)
	fs.AddFlagSet(cmd.Flags())
	fs.AddFlagSet(cmd.InheritedFlags())
	return config.Load(config.Options{File: globals.configFile, Flags: fs, FlagKeys: keys})
}

// newLogger builds the process logger from the config.
func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	switch strings.ToLower(cfg.Log.Level) {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "vitalproxy %s\n", buildVersion())
			return nil
		},
	}
}

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}
