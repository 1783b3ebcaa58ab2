package proxy

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/config"
	"github.com/vitalproxy/vitalproxy/migrations/audit"
)

// audit runs the isolation audit through the admin connection and exports
// its checks as vitalproxy_isolation_check. At start a failure (or an audit
// that cannot run) refuses to start unless the server runs unsafe; later it
// is logged.
func (s *Server) audit(ctx context.Context, atStart bool) error {
	prefix := s.rt.Load().cfg.RolePrefix
	var checks []audit.Check
	err := s.admin.with(ctx, func(c *pgx.Conn) error {
		var err error
		checks, err = audit.Run(ctx, c, prefix)
		return err
	})
	if err != nil {
		s.metrics.AuditRun("error")
		if atStart && !s.opts.unsafe {
			return fmt.Errorf("%w: the audit could not run: %w (start with --unsafe to skip it)", ErrAuditFailed, err)
		}
		s.logger.Warn("isolation audit could not run", "error", err)
		return nil
	}
	s.metrics.IsolationChecks(checks)
	var failed []string
	for _, c := range checks {
		if !c.OK {
			failed = append(failed, fmt.Sprintf("%s (%s)", c.Name, c.Detail))
		}
	}
	if len(failed) == 0 {
		s.metrics.AuditRun("pass")
		s.logger.Info("isolation audit passed", "checks", len(checks))
		return nil
	}
	s.metrics.AuditRun("fail")
	if atStart && !s.opts.unsafe {
		return fmt.Errorf("%w: %s; fix the database (vitalproxy check, vitalproxy tenant sync) or start with --unsafe",
			ErrAuditFailed, strings.Join(failed, "; "))
	}
	if atStart {
		s.logger.Warn("isolation audit failed; running anyway because of --unsafe", "failed", failed)
	} else {
		s.logger.Error("isolation audit failed", "failed", failed)
	}
	return nil
}

// loadDirectory reads users (config and database) and tenants.
func (s *Server) loadDirectory(ctx context.Context, cfg *config.Config) (*auth.Directory, error) {
	var dir *auth.Directory
	err := s.admin.with(ctx, func(c *pgx.Conn) error {
		d, err := auth.LoadDirectory(ctx, cfg, c)
		dir = d
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("load users and tenants: %w", err)
	}
	return dir, nil
}

// Reload re-reads the configuration (when the server has a config loader)
// and the users and tenants, and swaps them in without dropping any
// connection; sessions keep the settings they started with. An invalid
// configuration leaves the running one in place. Settings that need a
// restart (listen addresses, the admin URL) are reported and ignored. The
// isolation audit runs again afterwards.
func (s *Server) Reload(ctx context.Context) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	err := s.reload(ctx)
	if err != nil {
		s.metrics.ConfigReload(false)
		s.logger.Error("reload failed; keeping the running configuration", "error", err)
		return err
	}
	s.metrics.ConfigReload(true)
	s.logger.Info("configuration reloaded")
	if err := s.audit(ctx, false); err != nil {
		s.logger.Warn("isolation audit after reload", "error", err)
	}
	return nil
}

func (s *Server) reload(ctx context.Context) error {
	old := s.rt.Load()
	rt := old
	if s.opts.loader != nil {
		s.fileStamp = fileStamp(old.cfg.File)
		cfg, err := s.opts.loader()
		if err != nil {
			return err
		}
		if rt, err = buildRuntime(cfg); err != nil {
			return err
		}
		for _, c := range restartOnly(old.cfg, cfg) {
			s.logger.Warn("setting changed but needs a restart; keeping the running value", "setting", c)
		}
	}
	dir, err := s.loadDirectory(ctx, rt.cfg)
	if err != nil {
		return err
	}
	s.rt.Store(rt)
	s.dir.Store(dir)
	s.endSuspended(dir)
	return nil
}

// restartOnly lists settings that changed between a and b but only take
// effect on restart.
func restartOnly(a, b *config.Config) []string {
	var out []string
	if a.Listen != b.Listen {
		out = append(out, "listen")
	}
	if a.ListenSocketDir != b.ListenSocketDir {
		out = append(out, "listen_socket_dir")
	}
	if a.Metrics.Listen != b.Metrics.Listen {
		out = append(out, "metrics.listen")
	}
	if a.Upstream.AdminURL != b.Upstream.AdminURL {
		out = append(out, "upstream.admin_url")
	}
	if a.Metrics.TenantLabelCap != b.Metrics.TenantLabelCap {
		out = append(out, "metrics.tenant_label_cap")
	}
	return out
}

// fileStamp identifies a version of a file by modification time and size;
// empty when there is no file.
func fileStamp(path string) string {
	if path == "" {
		return ""
	}
	st, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	return fmt.Sprintf("%d/%d", st.ModTime().UnixNano(), st.Size())
}

// background refreshes the directory, re-runs the audit and watches the
// config file until ctx is done.
func (s *Server) background(ctx context.Context) {
	tick := func(d time.Duration) (<-chan time.Time, func()) {
		if d <= 0 {
			return nil, func() {}
		}
		t := time.NewTicker(d)
		return t.C, t.Stop
	}
	cfg := s.rt.Load().cfg
	refreshC, stop1 := tick(s.opts.refresh)
	defer stop1()
	auditC, stop2 := tick(cfg.Audit.Interval)
	defer stop2()
	var pollC <-chan time.Time
	if s.opts.loader != nil && cfg.File != "" {
		c, stop3 := tick(s.opts.configPoll)
		defer stop3()
		pollC = c
	}
	refreshFailing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-refreshC:
			// Under reloadMu so that a refresh that started with the old
			// configuration cannot overwrite what a reload stored.
			s.reloadMu.Lock()
			dir, err := s.loadDirectory(ctx, s.rt.Load().cfg)
			if err == nil {
				s.dir.Store(dir)
				s.endSuspended(dir)
			}
			s.reloadMu.Unlock()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				if !refreshFailing {
					s.logger.Warn("refreshing users and tenants failed; keeping the last ones", "error", err)
				}
				refreshFailing = true
				continue
			}
			if refreshFailing {
				s.logger.Info("refreshing users and tenants works again")
			}
			refreshFailing = false
		case <-auditC:
			_ = s.audit(ctx, false)
		case <-pollC:
			s.reloadMu.Lock()
			changed := fileStamp(s.rt.Load().cfg.File) != s.fileStamp
			s.reloadMu.Unlock()
			if changed {
				s.logger.Info("config file changed; reloading")
				_ = s.Reload(ctx)
			}
		}
	}
}
