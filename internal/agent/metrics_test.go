package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// metricValues gathers g into name → labels (k=v,… without source_server) → value;
// histograms give NAME_count.
func metricValues(t *testing.T, g prometheus.Gatherer) map[string]map[string]float64 {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatalf("gather the agent's metrics: %v", err)
	}
	out := map[string]map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				if l.GetName() != "source_server" {
					ls = append(ls, l.GetName()+"="+l.GetValue())
				}
			}
			name, v := f.GetName(), 0.0
			switch {
			case m.GetCounter() != nil:
				v = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				v = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				name, v = name+"_count", float64(m.GetHistogram().GetSampleCount())
			}
			if out[name] == nil {
				out[name] = map[string]float64{}
			}
			out[name][strings.Join(ls, ",")] = v
		}
	}
	return out
}

// TestMetricsOfPointsAndSends: points under freeze count as filesystem points, each
// freeze is in the histogram, the blocks sent are counted, and the state and backlog
// are the status's; every agent series names its source server.
func TestMetricsOfPointsAndSends(t *testing.T) {
	src := newFakeSource(true, 16)
	src.mounts = []string{t.TempDir()}
	link, rep := pipeLink(t, 1)
	s := testSession(src, link, sessionOptions{})
	s.st.metrics = newPointMetrics()
	a := &Agent{cfg: Config{ServerID: "s-00000000000000001"}, st: s.st}
	reg := a.newRegistry()
	if got := metricValues(t, reg); got["lifeboat_agent_points_total"]["level=filesystem"] != 0 || got["lifeboat_agent_blocks_sent_total"][""] != 0 {
		t.Fatalf("before any point: %v", got)
	}
	src.write(0, 3, 7)
	src.write(0, 5, 9)
	if err := runFor(t, s, testConfig(), false, func() bool { return len(rep.levels()) >= 2 && s.st.lastSealed() != nil }); err != nil {
		t.Fatal(err)
	}
	got := metricValues(t, reg)
	if v := got["lifeboat_agent_points_total"]["level=filesystem"]; v < 1 {
		t.Errorf("points_total{level=filesystem} = %v, want the points sealed under freeze", v)
	}
	if v := got["lifeboat_agent_points_total"]["level=none"]; v != 0 {
		t.Errorf("points_total{level=none} = %v, want 0: every point froze", v)
	}
	if v := got["lifeboat_agent_freeze_duration_seconds_count"][""]; v < 2 {
		t.Errorf("freeze_duration_seconds has %v observations, want one per point (%d markers)", v, len(rep.levels()))
	}
	if v := got["lifeboat_agent_blocks_sent_total"][""]; v < 2 {
		t.Errorf("blocks_sent_total = %v, want the 2 blocks written", v)
	}
	if v := got["lifeboat_agent_bytes_sent_total"][""]; v < 2*testBS {
		t.Errorf("bytes_sent_total = %v, want at least 2 blocks' worth", v)
	}
	if v, ok := got["lifeboat_agent_replication_state"]["state="+api.StateContinuous]; !ok || v != 1 {
		t.Errorf("replication_state: %v, want CONTINUOUS = 1", got["lifeboat_agent_replication_state"])
	}
	if _, ok := got["lifeboat_agent_backlog_bytes"][""]; !ok {
		t.Error("no backlog_bytes series")
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), "lifeboat_agent_") {
			continue
		}
		for _, m := range f.GetMetric() {
			found := false
			for _, l := range m.GetLabel() {
				found = found || (l.GetName() == "source_server" && l.GetValue() == "s-00000000000000001")
			}
			if !found {
				t.Errorf("%s has no source_server label", f.GetName())
			}
		}
	}
}

// TestLagAppearsOnceTheReplicaMatched: no lag series before the replica first matched
// the source, then the time since it did.
func TestLagAppearsOnceTheReplicaMatched(t *testing.T) {
	st := &status{State: api.StateContinuous, metrics: newPointMetrics()}
	a := &Agent{cfg: Config{ServerID: "s-00000000000000001"}, st: st}
	reg := a.newRegistry()
	if v, ok := metricValues(t, reg)["lifeboat_agent_lag_seconds"]; ok {
		t.Fatalf("a lag series before the replica ever matched: %v", v)
	}
	st.matched(time.Now().Add(-3 * time.Second))
	if v := metricValues(t, reg)["lifeboat_agent_lag_seconds"][""]; v < 3 || v > 10 {
		t.Fatalf("lag_seconds = %v, want about 3", v)
	}
}
