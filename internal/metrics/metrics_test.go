package metrics_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dr/lifeboat/internal/metrics"
)

// TestListenerServesTheRegistry: a listener serves its registry's series and the
// process's at /metrics, and stops when its context ends.
func TestListenerServesTheRegistry(t *testing.T) {
	reg := metrics.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_test_value", Help: "A value."})
	g.Set(42)
	reg.MustRegister(g)
	srv, err := metrics.Listen("127.0.0.1:0", reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	body := get(t, "http://"+srv.Addr()+metrics.Path)
	for _, want := range []string{"lifeboat_test_value 42", "process_resident_memory_bytes ", "go_goroutines "} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics does not have %q:\n%s", want, body)
		}
	}
	if body := get(t, "http://"+srv.Addr()+"/"); !strings.Contains(body, metrics.Path) {
		t.Errorf("/ says %q, want a pointer to %s", body, metrics.Path)
	}
}

// TestListenerStops: Serve returns soon after its context ends and the port is free.
func TestListenerStops(t *testing.T) {
	srv, err := metrics.Listen("127.0.0.1:0", metrics.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	get(t, "http://"+srv.Addr()+metrics.Path)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	again, err := metrics.Listen(srv.Addr(), metrics.NewRegistry(), nil)
	if err != nil {
		t.Fatalf("the address is still held after Serve returned: %v", err)
	}
	again.Close()
}

// TestListenRefusesABadAddress: a wrong address fails at Listen, naming the flag.
func TestListenRefusesABadAddress(t *testing.T) {
	_, err := metrics.Listen("256.0.0.1:bad", metrics.NewRegistry(), nil)
	if err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Fatalf("Listen on a bad address: %v, want an error naming --metrics-listen", err)
	}
}

// TestHandlerServesTheRestWhenACollectorFails: one failing collector does not take the
// others' series away.
func TestHandlerServesTheRestWhenACollectorFails(t *testing.T) {
	reg := prometheus.NewRegistry()
	ok := prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_test_ok", Help: "Fine."})
	ok.Set(1)
	reg.MustRegister(ok, failing{prometheus.NewDesc("lifeboat_test_broken", "Broken.", nil, nil)})
	srv, err := metrics.Listen("127.0.0.1:0", reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	if body := get(t, "http://"+srv.Addr()+metrics.Path); !strings.Contains(body, "lifeboat_test_ok 1") {
		t.Fatalf("the working collector's series is missing:\n%s", body)
	}
}

type failing struct{ d *prometheus.Desc }

func (f failing) Describe(ch chan<- *prometheus.Desc) { ch <- f.d }
func (f failing) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(f.d, io.ErrUnexpectedEOF)
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}
