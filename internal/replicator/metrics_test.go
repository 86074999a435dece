package replicator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// gathered is a registry's series: name → labels (k=v,…) → value.
type gathered map[string]map[string]float64

func gather(t *testing.T, g prometheus.Gatherer) gathered {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatalf("gather the replicator's metrics: %v", err)
	}
	out := gathered{}
	for _, f := range fams {
		out[f.GetName()] = map[string]float64{}
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			out[f.GetName()][strings.Join(ls, ",")] = value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	}
	return -1
}

// TestMetricsCountWhatASessionDid: a session that writes two new blocks, one already
// stored and a zero block, then seals a crash-consistent PIT, shows in the replicator's
// registry as one session, the bytes ingested, two chunks written, one deduplicated,
// one zero block, one PIT sealed, and the store's two chunks.
func TestMetricsCountWhatASessionDid(t *testing.T) {
	ctx := context.Background()
	e := newIngestEnv(t, store.Options{}, 8)
	cp := &stubControlPlane{}
	r := e.replicator(cp)
	before := gather(t, r.Registry())
	if v := before["lifeboat_replicator_sessions_total"][""]; v != 0 {
		t.Fatalf("sessions_total before any session = %v", v)
	}
	a, served := e.connect(ctx, r)
	if _, _, err := wire.Open(a, e.hello(), guard); err != nil {
		t.Fatal(err)
	}
	if v := gather(t, r.Registry())["lifeboat_replicator_sessions_open"][""]; v != 1 {
		t.Errorf("sessions_open during a session = %v, want 1", v)
	}
	same := content(false)
	write(t, a, e.blocks(1, 0, map[uint64][]byte{0: same, 1: content(false)}))
	write(t, a, e.blocks(2, 0, map[uint64][]byte{2: same, 3: make([]byte, testBlockSize)}))
	write(t, a, e.marker(3, 1))
	var sealed *wire.Sealed
	for sealed == nil {
		sealed, _ = read(t, a).(*wire.Sealed)
	}
	if sealed.PITID == "" {
		t.Fatalf("the PIT was not sealed: %+v", sealed)
	}
	write(t, a, &wire.Goodbye{})
	readAll(a)
	<-served

	got := gather(t, r.Registry())
	st := "store=test:store"
	for _, w := range []struct {
		name, labels string
		want         float64
	}{
		{"lifeboat_replicator_sessions_total", "", 1},
		{"lifeboat_replicator_sessions_open", "", 0},
		{"lifeboat_replicator_ingested_bytes_total", "", 4 * testBlockSize},
		{"lifeboat_replicator_pits_sealed_total", "level=crash", 1},
		{"lifeboat_replicator_pits_sealed_total", "level=filesystem", 0},
		{"lifeboat_replicator_pit_seal_failures_total", "", 0},
		{"lifeboat_replicator_blocks_written_total", st, 4},
		{"lifeboat_replicator_chunks_written_total", st, 2},
		{"lifeboat_replicator_chunks_deduplicated_total", st, 1},
		{"lifeboat_replicator_zero_blocks_total", st, 1},
		{"lifeboat_replicator_store_chunks", st, 2},
		{"lifeboat_replicator_store_unique_bytes", st, 2 * testBlockSize},
	} {
		if v, ok := got[w.name][w.labels]; !ok || v != w.want {
			t.Errorf("%s{%s} = %v (present %v), want %v; all of it: %v", w.name, w.labels, v, ok, w.want, got[w.name])
		}
	}
	if v := got["lifeboat_replicator_store_stored_bytes"][st]; v <= 0 || v > 2*testBlockSize+1024 {
		t.Errorf("store_stored_bytes = %v, want the two random chunks as stored (about 2 blocks)", v)
	}
	if v := got["process_resident_memory_bytes"][""]; v <= 0 {
		t.Errorf("process_resident_memory_bytes = %v, want the process's RSS", v)
	}
}

// TestIngestRate: the heartbeat's ingest rate is the bytes since the last beat over the
// time since it.
func TestIngestRate(t *testing.T) {
	var r ingestRate
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if v := r.next(1000, now); v != 0 {
		t.Errorf("the first rate = %d, want 0 (nothing to compare with)", v)
	}
	if v := r.next(21000, now.Add(10*time.Second)); v != 2000 {
		t.Errorf("20000 bytes in 10 s = %d B/s, want 2000", v)
	}
	if v := r.next(500, now.Add(20*time.Second)); v != 0 {
		t.Errorf("a counter that went back gives %d, want 0", v)
	}
}
