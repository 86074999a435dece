package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/metrics"
)

// freezeBuckets are the freeze histogram's buckets, in seconds: ~2 ms with expedited
// RCU, ~30 ms without, up to the default bound of 200 ms and past it.
var freezeBuckets = []float64{0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1}

// pointMetrics are what the agent measures of its consistency points. A nil
// *pointMetrics measures nothing (tests of a session alone).
type pointMetrics struct {
	points *prometheus.CounterVec // sealed, by level
	freeze prometheus.Histogram   // every freeze, from the first FIFREEZE to the thaw
}

func newPointMetrics() *pointMetrics {
	name := func(n string) string { return metrics.Namespace + "_agent_" + n }
	m := &pointMetrics{
		points: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("points_total"),
			Help: "Consistency points sealed as PITs by the replicator, by consistency level (filesystem, crash, none)."}, []string{"level"}),
		freeze: prometheus.NewHistogram(prometheus.HistogramOpts{Name: name("freeze_duration_seconds"),
			Help: "How long each consistency point froze the filesystems (writes wait meanwhile).", Buckets: freezeBuckets}),
	}
	for _, l := range []consistency.Level{consistency.Filesystem, consistency.Crash, consistency.None} {
		m.points.WithLabelValues(l.String()) // present at 0 before the first point
	}
	return m
}

func (m *pointMetrics) sealed(l consistency.Level) {
	if m != nil {
		m.points.WithLabelValues(l.String()).Inc()
	}
}

func (m *pointMetrics) froze(ms float64) {
	if m != nil {
		m.freeze.Observe(ms / 1000)
	}
}

// thaw ends a freeze (nil: there was none), says how long it held in milliseconds, and
// measures it.
func (s *session) thaw(fr Frozen) (float64, error) {
	ms, err := thaw(fr)
	if fr != nil {
		s.st.metrics.froze(ms)
	}
	return ms, err
}

// Registry is the agent's Prometheus registry (docs/metrics.md): what it sent, its
// points and their freezes, its state, lag and backlog, and the process's own. `lifeboat
// agent run --metrics-listen` serves it. Every series but the process's carries the
// source server's id (label source_server).
func (a *Agent) Registry() *prometheus.Registry { return a.reg }

// newRegistry builds the agent's registry over its status.
func (a *Agent) newRegistry() *prometheus.Registry {
	reg := metrics.NewRegistry()
	r := prometheus.WrapRegistererWith(prometheus.Labels{"source_server": a.cfg.ServerID}, reg)
	name := func(n string) string { return metrics.Namespace + "_agent_" + n }
	st := a.st
	r.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name("blocks_sent_total"), Help: "Blocks sent to the replicator (a block sent again counts again)."},
			func() float64 { return float64(st.sentBlocks.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name("zero_blocks_sent_total"), Help: "Of the blocks sent, those all zero (sent without payload)."},
			func() float64 { return float64(st.sentZero.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name("bytes_sent_total"), Help: "Bytes of the blocks sent, before compression."},
			func() float64 { return float64(st.sentBytes.Load()) }),
		st.metrics.points, st.metrics.freeze,
		&stateCollector{st: st,
			state:   prometheus.NewDesc(name("replication_state"), "1 for the agent's current data replication state.", []string{"state"}, nil),
			lag:     prometheus.NewDesc(name("lag_seconds"), "Time since the replica last matched the source (absent until it first did).", nil, nil),
			backlog: prometheus.NewDesc(name("backlog_bytes"), "Bytes changed and not yet acknowledged by the replicator.", nil, nil),
		},
	)
	return reg
}

// stateCollector sends the agent's state, lag and backlog as its status says them now.
type stateCollector struct {
	st                  *status
	state, lag, backlog *prometheus.Desc
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.state
	ch <- c.lag
	ch <- c.backlog
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s, _ := c.st.snapshot(time.Now(), 0)
	ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, 1, s.State)
	ch <- prometheus.MustNewConstMetric(c.backlog, prometheus.GaugeValue, float64(s.BacklogBytes))
	if s.LagSeconds != nil {
		ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, *s.LagSeconds)
	}
}
