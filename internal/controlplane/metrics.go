package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/metrics"
)

// The control plane's Prometheus metrics (docs/metrics.md lists every series). They are
// read from the database when Prometheus scrapes, by a collector: no background loop
// keeps them, and a scrape costs one query per family whatever the number of servers.
// GET /metrics (a viewer token) serves the caller's account; the metrics listener
// (Config.MetricsListen, no authentication) serves every account.

// metricsTimeout bounds the database reads of one scrape.
const metricsTimeout = 20 * time.Second

// durationBuckets are the histogram buckets of job durations and RTOs, in seconds: a
// drill of a small server takes a minute, a large recovery hours.
var durationBuckets = []float64{15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400}

// cpDescs are the descriptions of the control plane's series.
type cpDescs struct {
	serverInfo, state, ready, lag, rpo, backlog, throughput, freeze, syncRatio *prometheus.Desc
	pitAge, recoverablePITAge, serverCert                                      *prometheus.Desc
	repLive, repHeartbeatAge, repRSS, repCPU, repSessions, repIngest           *prometheus.Desc
	repVolumes, repAssigned, repCert                                           *prometheus.Desc
	jobs, jobDuration, launchRTO, launchServers                                *prometheus.Desc
	planLastDrill, planLastDrillTime, planFailedDrills                         *prometheus.Desc
	cert, build, coordinator                                                   *prometheus.Desc
}

func newCPDescs() *cpDescs {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(metrics.Namespace+"_"+name, help, labels, nil)
	}
	srv := []string{"account", "source_server", "hostname"}
	rep := []string{"account", "replicator", "site"}
	return &cpDescs{
		serverInfo:        d("source_server_info", "A source server: 1, with its hostname and assigned replicator.", append(srv, "replicator")...),
		state:             d("source_server_replication_state", "1 for the source server's current data replication state (STOPPED, INITIATING, INITIAL_SYNC, BACKLOG, CREATING_SNAPSHOT, CONTINUOUS, PAUSED, RESCAN, STALLED, DISCONNECTED).", append(srv, "replicator", "state")...),
		ready:             d("source_server_ready_for_recovery", "1 when the source server has a crash- or filesystem-consistent PIT and is past its initial sync.", srv...),
		lag:               d("source_server_lag_seconds", "Time since the replica last matched the source, as the agent last reported it.", srv...),
		rpo:               d("source_server_rpo_seconds", "Age of the newest data the replica is known to hold (the agent's last match or the newest PIT): what a recovery now would lose. Grows while nothing arrives.", srv...),
		backlog:           d("source_server_backlog_bytes", "Bytes changed on the source and not yet on the replica, as the agent last reported.", srv...),
		throughput:        d("source_server_throughput_bytes_per_second", "Replication throughput the agent last reported.", srv...),
		freeze:            d("source_server_last_freeze_seconds", "How long the last consistency point froze the source's filesystems, as the agent reported.", srv...),
		syncRatio:         d("source_server_initial_sync_ratio", "Progress of the initial sync or rescan, 0 to 1, while one runs.", srv...),
		pitAge:            d("source_server_newest_pit_age_seconds", "Age of the source server's newest recovery snapshot (PIT) of any level.", srv...),
		recoverablePITAge: d("source_server_newest_recoverable_pit_age_seconds", "Age of the source server's newest filesystem- or crash-consistent PIT.", srv...),
		serverCert:        d("source_server_certificate_expiry_seconds", "Seconds until the source server's agent certificate expires (negative: expired).", srv...),
		repLive:           d("replicator_live", "1 when the replicator's heartbeat is recent enough for it to serve source servers, 0 when it is lost.", rep...),
		repHeartbeatAge:   d("replicator_heartbeat_age_seconds", "Time since the replicator's last heartbeat.", rep...),
		repRSS:            d("replicator_heartbeat_rss_bytes", "Resident memory of the replicator's process, as its last heartbeat reported.", rep...),
		repCPU:            d("replicator_heartbeat_cpu_ratio", "CPU the replicator's process used (1 = one core), as its last heartbeat reported.", rep...),
		repSessions:       d("replicator_heartbeat_sessions", "Agents' sessions open on the replicator, as its last heartbeat reported.", rep...),
		repIngest:         d("replicator_heartbeat_ingest_bytes_per_second", "Bytes per second the replicator wrote into staging stores, as its last heartbeat reported.", rep...),
		repVolumes:        d("replicator_heartbeat_volumes_served", "Volumes of open sessions on the replicator, as its last heartbeat reported.", rep...),
		repAssigned:       d("replicator_assigned_source_servers", "Source servers assigned to the replicator.", rep...),
		repCert:           d("replicator_certificate_expiry_seconds", "Seconds until the replicator's certificate expires (negative: expired).", rep...),
		jobs:              d("jobs", "Jobs by type, status and drill.", "account", "type", "status", "drill"),
		jobDuration:       d("job_duration_seconds", "Duration of completed jobs, from creation to end.", "account", "type", "drill"),
		launchRTO:         d("launch_rto_seconds", "RTO of each server launched by a completed drill or recovery: from the job's start to the end of its launch (or of its last post-launch action).", "account", "drill"),
		launchServers:     d("launch_servers", "Servers of drills and recoveries by launch status (PENDING, IN_PROGRESS, LAUNCHED, FAILED, TERMINATED).", "account", "drill", "launch_status"),
		planLastDrill:     d("plan_last_drill_success", "1 when the recovery plan's newest ended drill succeeded, 0 when it failed.", "account", "plan"),
		planLastDrillTime: d("plan_last_drill_timestamp_seconds", "When the recovery plan's newest drill ended (Unix time).", "account", "plan"),
		planFailedDrills:  d("plan_failed_drills", "Failed drill runs among the recovery plan's kept runs.", "account", "plan"),
		cert:              d("certificate_expiry_seconds", "Seconds until a certificate of the control plane expires: server (the CA-issued TLS certificate), operator (--tls-cert), control-plane-ca, agent-ca, replicator-ca.", "certificate"),
		build:             d("build_info", "The control plane's version: 1.", "version"),
		coordinator:       d("coordinator", "1 while this control plane holds the coordinator lease (it runs replicator assignment, consistency groups, plan runs and scheduled drills for every control plane sharing its database), else 0."),
	}
}

func (d *cpDescs) all() []*prometheus.Desc {
	return []*prometheus.Desc{d.serverInfo, d.state, d.ready, d.lag, d.rpo, d.backlog, d.throughput, d.freeze, d.syncRatio,
		d.pitAge, d.recoverablePITAge, d.serverCert, d.repLive, d.repHeartbeatAge, d.repRSS, d.repCPU, d.repSessions,
		d.repIngest, d.repVolumes, d.repAssigned, d.repCert, d.jobs, d.jobDuration, d.launchRTO, d.launchServers,
		d.planLastDrill, d.planLastDrillTime, d.planFailedDrills, d.cert, d.build, d.coordinator}
}

// cpCollector gathers the control plane's series from the database at each scrape.
type cpCollector struct {
	cp      *ControlPlane
	d       *cpDescs
	ctx     context.Context // the scrape's request, or a background context
	account string          // "": every account
}

// Describe sends every series' description.
func (m *cpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range m.d.all() {
		ch <- d
	}
}

// Collect reads the database once per family, in one read-only transaction. A family
// whose query fails is reported as invalid (promhttp logs it and serves the others).
func (m *cpCollector) Collect(ch chan<- prometheus.Metric) {
	now := m.cp.cfg.Now()
	m.collectCertificates(ch, now)
	ch <- prometheus.MustNewConstMetric(m.d.build, prometheus.GaugeValue, 1, m.cp.cfg.Version)
	ch <- prometheus.MustNewConstMetric(m.d.coordinator, prometheus.GaugeValue, boolValue(m.cp.Coordinating()))
	ctx, cancel := context.WithTimeout(m.ctx, metricsTimeout)
	defer cancel()
	families := []struct {
		desc *prometheus.Desc
		read func(*db.Tx) error
	}{
		{m.d.state, func(tx *db.Tx) error { return m.collectServers(tx, ch, now) }},
		{m.d.repLive, func(tx *db.Tx) error { return m.collectReplicators(tx, ch, now) }},
		{m.d.jobs, func(tx *db.Tx) error { return m.collectJobs(tx, ch) }},
		{m.d.jobDuration, func(tx *db.Tx) error { return m.collectJobDurations(tx, ch) }},
		{m.d.launchRTO, func(tx *db.Tx) error { return m.collectRTOs(tx, ch) }},
		{m.d.planLastDrill, func(tx *db.Tx) error { return m.collectPlans(tx, ch) }},
	}
	err := m.cp.db.View(ctx, func(tx *db.Tx) error {
		for _, f := range families {
			if err := f.read(tx); err != nil {
				ch <- prometheus.NewInvalidMetric(f.desc, fmt.Errorf("read the database for %s: %w", f.desc, err))
			}
		}
		return nil
	})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(m.d.state, fmt.Errorf("read the database for metrics: %w", err))
	}
}

// gauge sends a gauge.
func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// collectServers sends the per-server series, from one query.
func (m *cpCollector) collectServers(tx *db.Tx, ch chan<- prometheus.Metric, now time.Time) error {
	servers, err := tx.MetricsServers(m.account)
	if err != nil {
		return err
	}
	d := m.d
	for _, s := range servers {
		l := []string{s.Account, s.ID, s.Hostname}
		st := s.Replication
		gauge(ch, d.serverInfo, 1, append(l, s.Replicator)...)
		gauge(ch, d.state, 1, append(l, s.Replicator, st.DataReplicationState)...)
		gauge(ch, d.ready, boolValue(st.ReadyForRecovery), l...)
		gauge(ch, d.backlog, float64(st.BacklogBytes), l...)
		gauge(ch, d.throughput, float64(st.ThroughputBytesPerSecond), l...)
		gauge(ch, d.serverCert, s.CertificateExpiresAt.Sub(now).Seconds(), l...)
		if st.LagSeconds != nil {
			gauge(ch, d.lag, *st.LagSeconds, l...)
		}
		if t := st.DataThrough(); !t.IsZero() {
			gauge(ch, d.rpo, max(now.Sub(t).Seconds(), 0), l...)
		}
		if st.LastFreezeMs != nil {
			gauge(ch, d.freeze, *st.LastFreezeMs/1000, l...)
		}
		if st.InitialSyncPercent != nil && (st.DataReplicationState == api.StateInitialSync || st.DataReplicationState == api.StateRescan) {
			gauge(ch, d.syncRatio, *st.InitialSyncPercent/100, l...)
		}
		if s.NewestPIT != nil {
			gauge(ch, d.pitAge, max(now.Sub(*s.NewestPIT).Seconds(), 0), l...)
		}
		if s.NewestRecoverablePIT != nil {
			gauge(ch, d.recoverablePITAge, max(now.Sub(*s.NewestRecoverablePIT).Seconds(), 0), l...)
		}
	}
	return nil
}

// collectReplicators sends the replicators' series, as their heartbeats reported.
func (m *cpCollector) collectReplicators(tx *db.Tx, ch chan<- prometheus.Metric, now time.Time) error {
	reps, err := tx.MetricsReplicators(m.account, m.cp.liveSince())
	if err != nil {
		return err
	}
	d := m.d
	for _, r := range reps {
		l := []string{r.Account, r.Name, r.SiteID}
		gauge(ch, d.repLive, boolValue(r.State == api.ReplicatorLive), l...)
		if r.LastHeartbeatAt != nil {
			gauge(ch, d.repHeartbeatAge, max(now.Sub(*r.LastHeartbeatAt).Seconds(), 0), l...)
		}
		gauge(ch, d.repRSS, float64(r.Metrics.RSSBytes), l...)
		gauge(ch, d.repCPU, r.Metrics.CPUPercent/100, l...)
		gauge(ch, d.repSessions, float64(r.Metrics.Sessions), l...)
		gauge(ch, d.repIngest, float64(r.Metrics.IngestBytesPerSecond), l...)
		gauge(ch, d.repVolumes, float64(r.Metrics.VolumesServed), l...)
		gauge(ch, d.repAssigned, float64(r.AssignedSourceServers), l...)
		gauge(ch, d.repCert, r.CertificateExpiresAt.Sub(now).Seconds(), l...)
	}
	return nil
}

// collectJobs sends the jobs by status and the servers of launches by launch status.
func (m *cpCollector) collectJobs(tx *db.Tx, ch chan<- prometheus.Metric) error {
	counts, err := tx.JobCounts(m.account)
	if err != nil {
		return err
	}
	for _, c := range counts {
		gauge(ch, m.d.jobs, float64(c.Count), c.Account, c.Type, c.Status, strconv.FormatBool(c.Drill))
	}
	launches, err := tx.LaunchCounts(m.account)
	if err != nil {
		return err
	}
	for _, c := range launches {
		gauge(ch, m.d.launchServers, float64(c.Count), c.Account, strconv.FormatBool(c.Drill), c.Status)
	}
	return nil
}

// histogram accumulates observations into a constant histogram.
type histogram struct {
	count   uint64
	sum     float64
	buckets map[float64]uint64 // cumulative
}

func (h *histogram) observe(v float64) {
	if h.buckets == nil {
		h.buckets = make(map[float64]uint64, len(durationBuckets))
		for _, b := range durationBuckets {
			h.buckets[b] = 0
		}
	}
	h.count++
	h.sum += v
	for _, b := range durationBuckets {
		if v <= b {
			h.buckets[b]++
		}
	}
}

// sendHistograms sends one constant histogram per label set.
func sendHistograms(ch chan<- prometheus.Metric, d *prometheus.Desc, hs map[[3]string]*histogram, n int) {
	for k, h := range hs {
		ch <- prometheus.MustNewConstHistogram(d, h.count, h.sum, h.buckets, k[:n]...)
	}
}

// collectJobDurations sends the histogram of completed jobs' durations.
func (m *cpCollector) collectJobDurations(tx *db.Tx, ch chan<- prometheus.Metric) error {
	ds, err := tx.FinishedJobDurations(m.account)
	if err != nil {
		return err
	}
	hs := map[[3]string]*histogram{}
	for _, d := range ds {
		k := [3]string{d.Account, d.Type, strconv.FormatBool(d.Drill)}
		if hs[k] == nil {
			hs[k] = &histogram{}
		}
		hs[k].observe(d.Seconds)
	}
	sendHistograms(ch, m.d.jobDuration, hs, 3)
	return nil
}

// collectRTOs sends the histogram of launched servers' RTOs.
func (m *cpCollector) collectRTOs(tx *db.Tx, ch chan<- prometheus.Metric) error {
	rtos, err := tx.LaunchRTOs(m.account)
	if err != nil {
		return err
	}
	hs := map[[3]string]*histogram{}
	for _, r := range rtos {
		k := [3]string{r.Account, strconv.FormatBool(r.Drill)}
		if hs[k] == nil {
			hs[k] = &histogram{}
		}
		hs[k].observe(r.Seconds)
	}
	sendHistograms(ch, m.d.launchRTO, hs, 2)
	return nil
}

// collectPlans sends each recovery plan's drill results.
func (m *cpCollector) collectPlans(tx *db.Tx, ch chan<- prometheus.Metric) error {
	plans, err := tx.PlanDrillResults(m.account)
	if err != nil {
		return err
	}
	for _, p := range plans {
		gauge(ch, m.d.planFailedDrills, float64(p.Failed), p.Account, p.Plan)
		if p.LastEnded != nil {
			gauge(ch, m.d.planLastDrill, boolValue(p.LastSucceeded), p.Account, p.Plan)
			gauge(ch, m.d.planLastDrillTime, float64(p.LastEnded.UnixMilli())/1000, p.Account, p.Plan)
		}
	}
	return nil
}

// collectCertificates sends the expiry of the control plane's own certificates.
func (m *cpCollector) collectCertificates(ch chan<- prometheus.Metric, now time.Time) {
	certs := []struct {
		name string
		cert *x509.Certificate
	}{
		{"server", leaf(&m.cp.tlsCert)},
		{"control-plane-ca", m.cp.ca.ControlPlane.Certificate()},
		{"agent-ca", m.cp.ca.Agents.Certificate()},
		{"replicator-ca", m.cp.ca.Replicators.Certificate()},
	}
	if m.cp.public != nil {
		certs = append(certs, struct {
			name string
			cert *x509.Certificate
		}{"operator", leaf(m.cp.public)})
	}
	for _, c := range certs {
		if c.cert != nil {
			gauge(ch, m.d.cert, c.cert.NotAfter.Sub(now).Seconds(), c.name)
		}
	}
}

// leaf is a TLS certificate's leaf, parsed when the pair did not keep it.
func leaf(c *tls.Certificate) *x509.Certificate {
	if c.Leaf != nil {
		return c.Leaf
	}
	if len(c.Certificate) == 0 {
		return nil
	}
	x, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil
	}
	return x
}

// metricsRegistry is the registry of the metrics listener: every account's series,
// with the process and Go runtime collectors.
func (cp *ControlPlane) metricsRegistry() *prometheus.Registry {
	reg := metrics.NewRegistry()
	reg.MustRegister(&cpCollector{cp: cp, d: newCPDescs(), ctx: context.Background()})
	return reg
}

// serveMetrics answers GET /metrics: the caller's account's series, gathered in a
// registry of the request's own, within the request's context.
func (c *call) serveMetrics(w http.ResponseWriter) error {
	reg := prometheus.NewRegistry()
	if err := reg.Register(&cpCollector{cp: c.cp, d: newCPDescs(), ctx: c.ctx, account: c.p.AccountID}); err != nil {
		return fmt.Errorf("register the metrics collector: %w", err)
	}
	metrics.Handler(reg, c.cp.log).ServeHTTP(w, c.r)
	return nil
}

// metricsRoutes is GET /metrics, for a Prometheus that holds a viewer token.
func metricsRoutes() []*route {
	return []*route{
		{method: "GET", path: metrics.Path, summary: "Prometheus metrics of the caller's account (docs/metrics.md)", access: viewer,
			endpoint: endpoint{raw: true, contentType: "text/plain; version=0.0.4",
				serve: func(c *call, w http.ResponseWriter) (any, error) { return nil, c.serveMetrics(w) }}},
	}
}

// listenMetrics binds the metrics listener, when one is configured.
func (cp *ControlPlane) listenMetrics() error {
	if cp.cfg.MetricsListen == "" || cp.metricsSrv != nil {
		return nil
	}
	srv, err := metrics.Listen(cp.cfg.MetricsListen, cp.metricsReg, cp.log)
	if err != nil {
		return err
	}
	cp.metricsSrv = srv
	return nil
}

// MetricsAddr is the address of the metrics listener ("" when there is none).
func (cp *ControlPlane) MetricsAddr() string {
	if cp.metricsSrv == nil {
		return ""
	}
	return cp.metricsSrv.Addr()
}
