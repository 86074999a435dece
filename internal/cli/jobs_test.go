package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
)

// A drill followed with --wait, its log read back (as text, as JSON, and followed once
// it has ended), then terminated with --drills: the job log and the recovery instance
// listings are read page by page.
func TestDrillLogAndTerminate(t *testing.T) {
	e := startCLIEnv(t)
	repo := recoverytest.Store(t, e.cp)
	img := filepath.Join(e.dir, "vda.img")
	if err := os.WriteFile(img, []byte(strings.Repeat("lifeboat", 1<<17)), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": 1 << 20})
	pit, _ := recoverytest.PIT(t, e.cp, repo, srv, consistency.Crash, time.Now().Add(-time.Hour), recoverytest.Volume{Name: "vda", Image: img})
	e.must("settings", "launch", "set", srv.ID, "--provider", "image")

	out := e.must("drill", srv.ID, "--wait")
	jobID, _, _ := strings.Cut(out, "\n")
	if !api.ValidID(api.PrefixJob, jobID) || !strings.Contains(out, api.LaunchLaunched) || !strings.Contains(out, pit.ID) {
		t.Fatalf("drill --wait printed %q", out)
	}
	want := []string{api.EventJobStart, api.EventUsingPreviousSnapshot, api.EventSnapshotStart, api.EventSnapshotEnd,
		api.EventConversionStart, api.EventConversionEnd, api.EventLaunchStart, api.EventLaunchEnd, api.EventJobEnd}
	if got := logTypes(out); !slices.Equal(got, want) {
		t.Fatalf("drill --wait printed the events %v, want %v", got, want)
	}
	log := e.must("jobs", "log", jobID)
	if got := logTypes(log); !slices.Equal(got, want) {
		t.Fatalf("jobs log printed %v, want %v", got, want)
	}
	if followed := e.must("jobs", "log", jobID, "--follow"); followed != log {
		t.Fatalf("jobs log --follow of an ended job printed %q, want %q", followed, log)
	}
	var l api.JobLog
	if err := json.Unmarshal([]byte(e.must("-o", "json", "jobs", "log", jobID)), &l); err != nil || len(l.Items) != len(want) {
		t.Fatalf("jobs log -o json: %v, %d entries, want %d", err, len(l.Items), len(want))
	}

	if list := e.must("recovery-instances", "list", "--drills"); strings.Count(list, srv.ID) != 1 {
		t.Fatalf("recovery-instances list --drills: %q", list)
	}
	e.must("recovery-instances", "terminate", "--drills", "--wait")
	var ris api.RecoveryInstanceList
	if err := json.Unmarshal([]byte(e.must("-o", "json", "recovery-instances", "list")), &ris); err != nil || ris.Items == nil || len(ris.Items) != 0 {
		t.Fatalf("recovery-instances list after terminate --drills: %v %+v", err, ris)
	}
	if _, errs, code := e.run("recovery-instances", "terminate", "--drills"); code != 0 || !strings.Contains(errs, "no drill instance") {
		t.Fatalf("terminate --drills without drills: exit %d, %q", code, errs)
	}
}

// logTypes returns the event types of the job log lines in out ("15:04:05 SERVER TYPE
// message"), without console and progress lines ("15:04:05 SERVER STEP: 50% …").
func logTypes(out string) []string {
	var types []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || len(f[0]) != 8 || f[0][2] != ':' || f[2] == "console" || strings.HasSuffix(f[2], ":") {
			continue
		}
		types = append(types, f[2])
	}
	return types
}

// A job's servers that report progress at once are summed on one step; a server whose
// step ended counts whole; the step ends when none reports any.
func TestJobProgress(t *testing.T) {
	r := &recorder{}
	jp := &jobProgress{p: r}
	server := func(id, status, step string, done, total int64) api.JobServer {
		s := api.JobServer{SourceServerID: id, RecoveryInstanceID: "i-" + id, LaunchStatus: status, Step: step}
		if total > 0 {
			s.Progress = &api.JobProgress{DoneBytes: done, TotalBytes: total}
		}
		return s
	}
	const ip, ok = api.LaunchInProgress, api.LaunchLaunched
	for _, servers := range [][]api.JobServer{
		{server("s-1", ip, api.StepPrepare, 0, 0), server("s-2", ip, api.StepPrepare, 0, 0)},
		{server("s-1", ip, api.StepSnapshot, 10, 100), server("s-2", ip, api.StepPrepare, 0, 0)},
		{server("s-1", ip, api.StepSnapshot, 60, 100), server("s-2", ip, api.StepSnapshot, 50, 200)},
		{server("s-1", ip, api.StepLaunch, 0, 0), server("s-2", ip, api.StepSnapshot, 150, 200)},
		{server("s-1", ok, "", 0, 0), server("s-2", ip, api.StepLaunch, 0, 0)},
	} {
		jp.update(api.Job{Servers: servers})
	}
	want := []string{"start s-1 SNAPSHOT bytes 0", "set 10 100", "set 110 300", "set 250 300", "finish"}
	if !slices.Equal(r.calls, want) {
		t.Fatalf("calls %q, want %q", r.calls, want)
	}
	if got := jobProgressLabel([]string{"s-1", "s-2"}, []string{api.StepSnapshot, api.StepReverse}); got != "2 servers SNAPSHOT+REVERSE" {
		t.Fatalf("label %q", got)
	}
}
