package cli

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/agent"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
)

// writeAgentStatus writes a status file as the agent does.
func writeAgentStatus(t *testing.T, dir string, s agent.Status) {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.WriteFile(agent.StatusFile(dir), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// agent status --watch waits while the agent is INITIATING, follows the initial sync
// on one step, and ends it once the agent is CONTINUOUS.
func TestAgentStatusWatchFollowsTheScan(t *testing.T) {
	dir := t.TempDir()
	scanning := func(done int64) agent.Status {
		p := 100 * float64(done) / float64(4*mib)
		return agent.Status{ServerID: "s-1", State: api.StateInitialSync, ScanDoneBytes: done, ScanTotalBytes: 4 * mib,
			Percent: &p, UpdatedAt: time.Now()}
	}
	steps := []struct {
		s    agent.Status
		hold time.Duration
	}{
		{agent.Status{ServerID: "s-1", State: api.StateInitiating, UpdatedAt: time.Now()}, 100 * time.Millisecond},
		{scanning(mib), 100 * time.Millisecond},
		{scanning(3 * mib), 100 * time.Millisecond},
		{scanning(4 * mib), 150 * time.Millisecond},
		{agent.Status{ServerID: "s-1", State: api.StateContinuous, UpdatedAt: time.Now()}, 0},
	}
	writeAgentStatus(t, dir, steps[0].s)
	go func() {
		for i := 1; i < len(steps); i++ {
			time.Sleep(steps[i-1].hold)
			b, _ := json.Marshal(steps[i].s)
			if err := atomicfile.WriteFile(agent.StatusFile(dir), b, 0o600); err != nil {
				t.Error(err)
			}
		}
	}()
	r := &recorder{}
	s, err := watchAgentScan(context.Background(), r, dir, 5*time.Millisecond)
	if err != nil || s.State != api.StateContinuous {
		t.Fatalf("watch ended with %s, %v; want CONTINUOUS", s.State, err)
	}
	calls := slices.Compact(slices.Clone(r.calls))
	want := []string{"start s-1 INITIATING seconds 0", "start initial sync of s-1 bytes 4194304",
		"set 1048576 4194304", "set 3145728 4194304", "set 4194304 4194304", "finish"}
	if !slices.Equal(calls, want) {
		t.Fatalf("calls %q, want %q", calls, want)
	}
}

// A status the agent stopped writing is not followed as if it were live.
func TestAgentStatusWatchStaleStatus(t *testing.T) {
	dir := t.TempDir()
	writeAgentStatus(t, dir, agent.Status{ServerID: "s-1", State: api.StateInitialSync, UpdatedAt: time.Now().Add(-time.Hour)})
	_, err := watchAgentScan(context.Background(), &recorder{}, dir, time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "has not written its status") {
		t.Fatalf("watch of a stale status: %v", err)
	}
	if _, err := watchAgentScan(context.Background(), &recorder{}, t.TempDir(), time.Millisecond); err == nil ||
		!strings.Contains(err.Error(), "is lifeboat agent run running") {
		t.Fatalf("watch without a status: %v", err)
	}
}

// agent status says how far a scan is and how long it should still take.
func TestAgentStatusScanRow(t *testing.T) {
	p := 25.0
	s := agent.Status{ServerID: "s-1", State: api.StateInitialSync, ScanDoneBytes: mib, ScanTotalBytes: 4 * mib,
		Percent: &p, Throughput: mib}
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	agentStatusTable(w, s)
	w.Flush()
	if !strings.Contains(b.String(), "1.0 MiB of 4.0 MiB, about 3s left") {
		t.Fatalf("agent status:\n%s", b.String())
	}
	s.State, s.Percent = api.StateContinuous, nil
	b.Reset()
	agentStatusTable(w, s)
	w.Flush()
	if strings.Contains(b.String(), "scanned") {
		t.Fatalf("agent status of a server not scanning:\n%s", b.String())
	}
}
