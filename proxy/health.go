package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vitalproxy/vitalproxy/config"
)

// httpServer serves /metrics, /healthz and /readyz.
type httpServer struct {
	srv *http.Server
	l   net.Listener
}

// startHTTP opens the metrics listener; nil when metrics.listen is empty.
func (s *Server) startHTTP(cfg *config.Config) (*httpServer, error) {
	if cfg.Metrics.Listen == "" {
		return nil, nil
	}
	l, err := net.Listen("tcp", cfg.Metrics.Listen)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", cfg.Metrics.Listen, err)
	}
	s.mu.Lock()
	s.metricsAddr = l.Addr()
	s.mu.Unlock()
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.readiness(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return &httpServer{
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		l:   l,
	}, nil
}

func (h *httpServer) serve() {
	_ = h.srv.Serve(h.l)
}

func (h *httpServer) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err != nil {
		_ = h.srv.Close()
	}
}

// readinessTimeout bounds one /readyz check.
const readinessTimeout = 5 * time.Second

// readiness reports why the proxy should not get traffic: it is not
// accepting yet or draining, the database is unreachable, or its schema is
// not at the version this binary expects.
func (s *Server) readiness(ctx context.Context) error {
	select {
	case <-s.ready:
	default:
		return errors.New("starting")
	}
	if s.draining.Load() {
		return errors.New("shutting down")
	}
	ctx, cancel := context.WithTimeout(ctx, readinessTimeout)
	defer cancel()
	return s.admin.with(ctx, func(c *pgx.Conn) error {
		if err := c.Ping(ctx); err != nil {
			return fmt.Errorf("database unreachable: %w", err)
		}
		return schemaCurrent(ctx, c)
	})
}
