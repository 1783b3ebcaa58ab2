package observe

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// HTTP serves /metrics, /healthz and /readyz. Build it with ListenHTTP.
type HTTP struct {
	srv *http.Server
	l   net.Listener
}

// ListenHTTP opens the listener of the metrics and health endpoints:
// /metrics serves g, /healthz answers as long as the process runs, /readyz
// answers 503 with the reason when ready returns an error. Serve starts
// serving.
func ListenHTTP(addr string, g prometheus.Gatherer, ready func(context.Context) error) (*HTTP, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return &HTTP{
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		l:   l,
	}, nil
}

// Addr returns the address the endpoints listen on.
func (h *HTTP) Addr() net.Addr { return h.l.Addr() }

// Serve serves until Shutdown.
func (h *HTTP) Serve() {
	_ = h.srv.Serve(h.l)
}

// Shutdown stops serving, letting requests in flight finish for a few
// seconds.
func (h *HTTP) Shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err != nil {
		_ = h.srv.Close()
	}
}
