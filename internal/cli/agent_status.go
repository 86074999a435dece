package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"text/tabwriter"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/agent"
	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// agentStatusStale is how old the agent's status may be before agent status --watch
// says the agent stopped writing it (it writes it every 2 s or so).
const agentStatusStale = 30 * time.Second

// readAgentStatus reads the status the agent writes, with errors worded for operators.
func readAgentStatus(stateDir string) (agent.Status, error) {
	s, err := agent.ReadStatus(stateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return s, fmt.Errorf("no agent status in %s: is lifeboat agent run running (systemctl status lifeboat-agent)?", stateDir)
	}
	if err != nil {
		return s, fmt.Errorf("read the agent status: %w", err)
	}
	return s, nil
}

// runAgentStatusWatch follows the agent's initial sync or rescan with a progress bar,
// or lines when not on a terminal, then shows the status.
func runAgentStatusWatch(ctx context.Context, g *globals, stateDir string, every time.Duration) error {
	p := newProgress(g.stderr)
	defer p.Close()
	s, err := watchAgentScan(ctx, p, stateDir, every)
	if err != nil {
		return err
	}
	return g.show(s, func(w *tabwriter.Writer) { agentStatusTable(w, s) })
}

// watchAgentScan reads the agent's status every interval and shows its scan on p,
// waiting for one while the agent is INITIATING; it returns the status once there is
// no scan to follow (or ctx ends).
func watchAgentScan(ctx context.Context, p Progress, stateDir string, every time.Duration) (agent.Status, error) {
	t := time.NewTicker(every)
	defer t.Stop()
	label := ""
	for {
		s, err := readAgentStatus(stateDir)
		if err != nil {
			return s, err
		}
		if age := time.Since(s.UpdatedAt); age > agentStatusStale {
			return s, fmt.Errorf("the agent has not written its status in %s since %s: is lifeboat agent run running (systemctl status lifeboat-agent)?",
				stateDir, s.UpdatedAt.Local().Format(time.RFC3339))
		}
		next, scan := scanLabel(s), true
		if next == "" && s.State == api.StateInitiating {
			next, scan = s.ServerID+" "+api.StateInitiating, false // waiting for the scan
		}
		if next == "" {
			if label != "" {
				p.Finish()
			}
			return s, nil
		}
		switch {
		case next != label && scan:
			p.Start(next, unitBytes, s.ScanTotalBytes)
		case next != label:
			p.Start(next, unitSeconds, 0)
		}
		if scan {
			p.Set(s.ScanDoneBytes, s.ScanTotalBytes)
		}
		label = next
		select {
		case <-ctx.Done():
			return s, nil
		case <-t.C:
		}
	}
}

// scanLabel names the scan the agent runs ("" when none).
func scanLabel(s agent.Status) string {
	if s.Percent == nil || s.ScanTotalBytes <= 0 {
		return ""
	}
	if s.State == api.StateRescan {
		return "rescan of " + s.ServerID
	}
	return "initial sync of " + s.ServerID
}

// scanRow adds to agent status how far the initial sync or rescan is, and how long it
// should still take at the agent's rate.
func scanRow(w *tabwriter.Writer, s agent.Status) {
	if scanLabel(s) == "" {
		return
	}
	text := fmt.Sprintf("%s of %s", bytesIEC(s.ScanDoneBytes), bytesIEC(s.ScanTotalBytes))
	if rest := s.ScanTotalBytes - s.ScanDoneBytes; rest > 0 && s.Throughput > 0 {
		text += ", about " + roundDuration(time.Duration(float64(rest)/float64(s.Throughput)*float64(time.Second))) + " left"
	}
	row(w, "scanned", text+" (lifeboat agent status --watch follows it)")
}
