package replicator

import (
	"maps"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/metrics"
)

// ingestStats are what the sessions' ingests did, for the replicator's metrics and its
// heartbeat. A nil *ingestStats counts nothing (tests of the ingest alone).
type ingestStats struct {
	bytes          atomic.Int64    // block bytes written into heads
	sealed         [3]atomic.Int64 // PITs sealed and recorded, by consistency level
	sealFailed     atomic.Int64    // PITs that could not be sealed
	recordFailed   atomic.Int64    // PITs sealed that the control plane did not record
	sessionsOpened atomic.Int64
}

func (s *ingestStats) wrote(n int64) {
	if s != nil {
		s.bytes.Add(n)
	}
}

func (s *ingestStats) sealedPIT(l consistency.Level) {
	if s != nil && l.Valid() {
		s.sealed[l].Add(1)
	}
}

func (s *ingestStats) failed(recorded bool) {
	switch {
	case s == nil:
	case recorded:
		s.recordFailed.Add(1)
	default:
		s.sealFailed.Add(1)
	}
}

// Registry is the replicator's own Prometheus registry (docs/metrics.md): sessions,
// bytes ingested, chunks written and deduplicated, PITs sealed, the size of its staging
// stores, and the process's own (RSS, CPU). `lifeboat replicator --metrics-listen`
// serves it.
func (r *Replicator) Registry() *prometheus.Registry { return r.reg }

// newRegistry builds the replicator's registry; the series are read from its counters
// at each scrape.
func (r *Replicator) newRegistry() *prometheus.Registry {
	reg := metrics.NewRegistry()
	name := func(n string) string { return metrics.Namespace + "_replicator_" + n }
	st := &r.stats
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name("sessions_open"), Help: "Agents' sessions open."},
			func() float64 { return float64(r.openSessions()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name("sessions_total"), Help: "Agents' sessions opened (past their checks)."},
			func() float64 { return float64(st.sessionsOpened.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name("volumes_served"), Help: "Volumes of the open sessions."},
			func() float64 { return float64(r.volumes.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name("ingested_bytes_total"), Help: "Bytes of blocks written into the staging stores' heads."},
			func() float64 { return float64(st.bytes.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name("pit_seal_failures_total"), Help: "PITs that could not be sealed in the staging store."},
			func() float64 { return float64(st.sealFailed.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name("pit_record_failures_total"), Help: "PITs sealed that the control plane did not record."},
			func() float64 { return float64(st.recordFailed.Load()) }),
		&pitCollector{st: st, desc: prometheus.NewDesc(name("pits_sealed_total"), "PITs sealed and recorded, by consistency level.", []string{"level"}, nil)},
		newStoreCollector(r),
	)
	return reg
}

// pitCollector sends the PITs sealed by level.
type pitCollector struct {
	st   *ingestStats
	desc *prometheus.Desc
}

func (c *pitCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *pitCollector) Collect(ch chan<- prometheus.Metric) {
	for l := range c.st.sealed {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(c.st.sealed[l].Load()), consistency.Level(l).String())
	}
}

// storeCollector sends, per staging store the replicator has open, what its heads were
// given and the size of its index: cheap counters, no walk of the store.
type storeCollector struct {
	r                                     *Replicator
	blocks, zero, written, dedup, stored  *prometheus.Desc
	chunks, uniqueBytes, storedBytesTotal *prometheus.Desc
}

func newStoreCollector(r *Replicator) *storeCollector {
	d := func(n, help string) *prometheus.Desc {
		return prometheus.NewDesc(metrics.Namespace+"_replicator_"+n, help, []string{"store"}, nil)
	}
	return &storeCollector{r: r,
		blocks:           d("blocks_written_total", "Blocks written into the store's heads."),
		zero:             d("zero_blocks_total", "Blocks written that were all zero (nothing stored)."),
		written:          d("chunks_written_total", "Blocks stored as new chunks (compressed, encrypted, packed)."),
		dedup:            d("chunks_deduplicated_total", "Blocks whose chunk the store held already."),
		stored:           d("chunk_stored_bytes_total", "Bytes the new chunks take in the store."),
		chunks:           d("store_chunks", "Data chunks (blocks' contents, not tree nodes) in the store's index as the replicator sees it."),
		uniqueBytes:      d("store_unique_bytes", "The store's data chunks uncompressed: the unique data it holds."),
		storedBytesTotal: d("store_stored_bytes", "The store's data chunks as stored (compressed and encrypted)."),
	}
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.blocks, c.zero, c.written, c.dedup, c.stored, c.chunks, c.uniqueBytes, c.storedBytesTotal} {
		ch <- d
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	c.r.mu.Lock()
	repos := maps.Clone(c.r.repos)
	c.r.mu.Unlock()
	for u, repo := range repos {
		label := storeLabel(u)
		w := repo.WriteCounters()
		for d, v := range map[*prometheus.Desc]int64{c.blocks: w.Blocks, c.zero: w.ZeroBlocks, c.written: w.ChunksWritten,
			c.dedup: w.ChunksDeduplicated, c.stored: w.StoredBytes} {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), label)
		}
		n, raw, stored := repo.IndexSize()
		ch <- prometheus.MustNewConstMetric(c.chunks, prometheus.GaugeValue, float64(n), label)
		ch <- prometheus.MustNewConstMetric(c.uniqueBytes, prometheus.GaugeValue, float64(raw), label)
		ch <- prometheus.MustNewConstMetric(c.storedBytesTotal, prometheus.GaugeValue, float64(stored), label)
	}
}

// storeLabel names a staging store by its URL without user information or query (an
// S3 endpoint's options), which may say more than a metric should.
func storeLabel(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "unparsable"
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}

// openSessions is how many agents' sessions are open.
func (r *Replicator) openSessions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sessions)
}

// ingestRate measures the rate of bytes ingested between heartbeats.
type ingestRate struct {
	last int64
	at   time.Time
}

// next returns the bytes per second since the previous call (0 on the first).
func (i *ingestRate) next(total int64, now time.Time) int64 {
	var rate int64
	if el := now.Sub(i.at).Seconds(); !i.at.IsZero() && el > 0.1 && total >= i.last {
		rate = int64(float64(total-i.last) / el)
	}
	i.last, i.at = total, now
	return rate
}
