package cli

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dr/lifeboat/internal/metrics"
)

// metricsFlagHelp is the help of every --metrics-listen.
const metricsFlagHelp = "serve Prometheus metrics on this address (host:port), over plain HTTP without authentication; keep it on 127.0.0.1 or a private network (default off; docs/metrics.md)"

// serveMetrics serves g on a metrics listener at addr (nothing when addr is empty)
// until ctx ends or stop is called; stop returns once the listener is closed. A wrong
// address fails here, before the component starts.
func serveMetrics(ctx context.Context, log *slog.Logger, addr string, g prometheus.Gatherer) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	srv, err := metrics.Listen(addr, g, log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx); err != nil {
			log.Error("the metrics listener stopped", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
	}, nil
}
