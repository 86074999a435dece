// Package metrics is what every Lifeboat component shares to expose Prometheus metrics:
// a registry per component with the process and Go runtime collectors, the text
// exposition handler, and an optional plain-HTTP listener of its own (`--metrics-listen`)
// for a Prometheus on the same host or network. The series themselves are each
// component's (internal/controlplane, internal/replicator, internal/agent); docs/metrics.md
// lists them.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every series Lifeboat defines.
const Namespace = "lifeboat"

// Path is where the exposition is served, on the API and on a metrics listener.
const Path = "/metrics"

// NewRegistry returns a registry for one component, with the process collector (RSS,
// CPU, open files: process_*) and the Go runtime collector (go_*). Never the default
// global registry: two components in one process (lifeboat up, tests) keep theirs apart.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector())
	return reg
}

// Handler serves g in the Prometheus text format (or OpenMetrics when asked). A
// collector that fails is logged and left out; the others are still served.
func Handler(g prometheus.Gatherer, log *slog.Logger) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorLog: errorLog{log}, ErrorHandling: promhttp.ContinueOnError})
}

// errorLog gives promhttp's errors to slog.
type errorLog struct{ log *slog.Logger }

func (e errorLog) Println(v ...any) { e.log.Warn("gathering metrics failed", "err", fmt.Sprint(v...)) }

// Server is a metrics listener: plain HTTP, no authentication, Path only. Bind it to
// 127.0.0.1 or a private network: anyone who reaches it reads the metrics.
type Server struct {
	l   net.Listener
	srv *http.Server
	log *slog.Logger
}

// Listen binds addr (host:port) for the exposition of g, so that a wrong address fails
// at start; Serve serves it.
func Listen(addr string, g prometheus.Gatherer, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for metrics on %s: %w (choose another address with --metrics-listen)", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+Path, Handler(g, log))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = fmt.Fprintf(w, "Lifeboat metrics are at %s\n", Path)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	return &Server{l: l, srv: srv, log: log}, nil
}

// Addr is the address the listener is bound to (with the port chosen for :0).
func (s *Server) Addr() string { return s.l.Addr().String() }

// Serve serves until ctx ends, then shuts down (scrapes in flight get 5 seconds).
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.l) }()
	s.log.Info("serving metrics", "url", "http://"+s.Addr()+Path)
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = s.srv.Shutdown(shut)
		cancel()
		<-errc
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("metrics listener %s: %w", s.Addr(), err)
	}
	return nil
}

// Close releases a listener that was never served.
func (s *Server) Close() error { return s.l.Close() }
