package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// startFio runs fio writing files under dir until stopped (bounded by runtime), and
// writes its pid to pidFile.
func startFio(t *testing.T, dir, pidFile string, runtime time.Duration, args ...string) *exec.Cmd {
	t.Helper()
	testutil.RequireCommand(t, "fio", "fio")
	base := []string{"--name=load", "--directory=" + dir, "--rw=randwrite", "--bs=4k", "--size=16m", "--numjobs=2",
		"--thread", "--time_based", fmt.Sprintf("--runtime=%d", int(runtime.Seconds())), "--group_reporting", "--output=/dev/null"}
	cmd := exec.Command("fio", append(base, args...)...)
	testutil.StartProcess(t, cmd)
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// TestConsistencyPointsUnderWriteLoad: fio writes continuously to files on a loop-device
// ext4 while consistency points are taken every 2 s. A pre-freeze hook pauses fio and
// copies the files (the test's view of the volume at the point); for several points
// the exported PIT passes fsck -n and its files equal that copy.
func TestConsistencyPointsUnderWriteLoad(t *testing.T) {
	dev, mnt := dataVolume(t, 256<<20, 5, 64)
	work := t.TempDir()
	copies := filepath.Join(work, "copies")
	pidFile := filepath.Join(work, "fio.pid")
	os.MkdirAll(copies, 0o755)
	pre := fmt.Sprintf(`kill -STOP $(cat %[1]s) 2>/dev/null; sleep 0.2; d=%[2]s/$(date +%%s%%N); mkdir -p $d.tmp && cp -a %[3]s/. $d.tmp/ && mv $d.tmp $d`,
		pidFile, copies, mnt)
	post := fmt.Sprintf(`kill -CONT $(cat %s) 2>/dev/null; true`, pidFile)
	c := newCluster(t)
	c.installAgentWith(dev, "--pre-freeze", pre, "--post-thaw", post)
	bound := 5000 // the copy happens before the freeze; the freeze itself stays short
	if _, err := c.admin.SetServerReplicationSettings(t.Context(), c.agentID, api.ReplicationSettingsOverrides{FreezeTimeoutMs: &bound}); err != nil {
		t.Fatal(err)
	}
	c.startAgent()
	c.waitState(2*time.Minute, api.StateContinuous)
	fio := startFio(t, mnt, pidFile, 40*time.Second, "--rate=5m")
	time.Sleep(25 * time.Second) // ~10 points under load
	_ = fio.Process.Signal(os.Interrupt)

	// Match copies to PITs: the PIT of a copy is the first one after it.
	ents, _ := os.ReadDir(copies)
	var times []int64
	for _, e := range ents {
		if n, err := strconv.ParseInt(e.Name(), 10, 64); err == nil {
			times = append(times, n)
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	page, err := c.admin.RecoverySnapshots(t.Context(), c.agentID, 1000, "")
	if err != nil {
		t.Fatal(err)
	}
	pits := page.Items
	sort.Slice(pits, func(i, j int) bool { return pits[i].Time.Before(pits[j].Time) })
	checked := 0
	for i, ct := range times {
		if i == 0 || checked >= 4 || i%2 == 1 {
			continue // check every other point, a few of them
		}
		var pit *api.RecoverySnapshot
		for k := range pits {
			if pits[k].Time.UnixNano() > ct && (i+1 >= len(times) || pits[k].Time.UnixNano() < times[i+1]) {
				pit = &pits[k]
				break
			}
		}
		if pit == nil {
			continue // that point's PIT was not sealed (or not yet)
		}
		if pit.Level != consistency.Filesystem {
			t.Fatalf("PIT %s under load is %s, want filesystem", pit.ID, pit.Level)
		}
		want := treeHashes(t, filepath.Join(copies, strconv.FormatInt(ct, 10)))
		c.exportAndCheck(*pit, volumeNameOf(dev), want)
		checked++
	}
	if checked < 3 {
		t.Fatalf("only %d points could be checked (%d copies, %d PITs)\n%s", checked, len(times), len(pits), c.logs())
	}
	t.Logf("%d points checked against the copies made at their freeze; %d PITs in %d copies", checked, len(pits), len(times))
}

// TestWriteStormOverflowsTheRingThenRescans: with a tiny eBPF ring buffer, a storm of
// small direct writes loses events: the agent reports it, rescans, returns to
// CONTINUOUS, and the next PIT equals the files.
func TestWriteStormOverflowsTheRingThenRescans(t *testing.T) {
	dev, mnt := dataVolume(t, 256<<20, 5, 64)
	c := newCluster(t)
	c.installAgent(dev)
	c.startAgent("--ebpf-ring-bytes", "4096")
	c.waitState(2*time.Minute, api.StateContinuous)
	fio := startFio(t, mnt, filepath.Join(t.TempDir(), "pid"), 8*time.Second, "--direct=1", "--iodepth=1")
	sawRescan := false
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && !sawRescan {
		s, _ := c.admin.SourceServer(t.Context(), c.agentID)
		st, _ := readStatus(c.agentSt)
		if s.Replication.DataReplicationState == api.StateRescan || (s.Replication.Error != nil && s.Replication.Error.Code == api.ErrTrackerEventsLost) ||
			st.Generation > 1 {
			sawRescan = true
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = fio.Wait()
	if !sawRescan {
		t.Fatalf("a write storm through a 4 KiB ring did not lead to a rescan\n%s", c.logs())
	}
	testutil.Run(t, "sync")
	c.waitState(2*time.Minute, api.StateContinuous)
	want := treeHashes(t, mnt)
	c.exportAndCheck(c.snapshot(), volumeNameOf(dev), want)
}

// TestAgentKilledDuringFreezeLeavesTheVolumeWritable: the agent is SIGKILLed while it
// holds the filesystem frozen; the watchdog thaws it, and replication resumes.
func TestAgentKilledDuringFreezeLeavesTheVolumeWritable(t *testing.T) {
	dev, mnt := dataVolume(t, 128<<20, 5, 64)
	c := newCluster(t)
	c.installAgent(dev)
	bound := 60000
	if _, err := c.admin.SetServerReplicationSettings(t.Context(), c.agentID, api.ReplicationSettingsOverrides{FreezeTimeoutMs: &bound}); err != nil {
		t.Fatal(err)
	}
	c.startAgent()
	c.waitState(2*time.Minute, api.StateContinuous)
	c.agent.stop()
	c.startAgent("--freeze-hold", "40s")
	// Wait until a write blocks: the filesystem is frozen.
	frozen := func() bool {
		done := make(chan error, 1)
		go func() { done <- os.WriteFile(filepath.Join(mnt, "probe"), []byte(time.Now().String()), 0o644) }()
		select {
		case <-done:
			return false
		case <-time.After(2 * time.Second):
			return true
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for !frozen() {
		if time.Now().After(deadline) {
			t.Fatalf("the agent never froze the filesystem\n%s", c.logs())
		}
	}
	c.agent.kill()
	writable := make(chan error, 1)
	go func() {
		err := os.WriteFile(filepath.Join(mnt, "after-kill"), []byte("written"), 0o644)
		if err == nil {
			err = exec.Command("sync", "-f", filepath.Join(mnt, "after-kill")).Run()
		}
		writable <- err
	}()
	select {
	case err := <-writable:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		_, _ = exec.Command("fsfreeze", "--unfreeze", mnt).CombinedOutput()
		t.Fatal("the volume stayed frozen after the agent was killed")
	}
	c.startAgent()
	c.waitState(2*time.Minute, api.StateContinuous)
	want := treeHashes(t, mnt)
	c.exportAndCheck(c.snapshot(), volumeNameOf(dev), want)
}

// TestHookThatHangsOrFailsGivesCrashPoints: a pre-freeze hook that hangs, then one that
// fails: the points are taken without a freeze (crash-consistent on the idle volume)
// and the state says why, replication goes on, and once the hook works again the
// points are filesystem-consistent and the notice is gone.
func TestHookThatHangsOrFailsGivesCrashPoints(t *testing.T) {
	dev, mnt := dataVolume(t, 128<<20, 5, 64)
	flags := t.TempDir()
	hook := fmt.Sprintf(`if [ -e %[1]s/hang ]; then sleep 60; fi; if [ -e %[1]s/fail ]; then echo database refused to flush >&2; exit 3; fi`, flags)
	os.WriteFile(filepath.Join(flags, "hang"), nil, 0o644)
	c := newCluster(t)
	c.installAgentWith(dev, "--pre-freeze", hook)
	c.startAgent("--hook-timeout", "3s")
	c.waitState(2*time.Minute, api.StateContinuous)
	waitErr := func(substr string) {
		deadline := time.Now().Add(60 * time.Second)
		for {
			s, _ := c.admin.SourceServer(context.Background(), c.agentID)
			if e := s.Replication.Error; e != nil && e.Code == api.ErrPointsCrashConsistent && strings.Contains(e.Message, substr) &&
				strings.Contains(e.Message, "this one is crash") {
				t.Logf("%s: %s", s.Replication.DataReplicationState, e.Message)
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s notice saying %q of a crash point: %+v\n%s", api.ErrPointsCrashConsistent, substr, s.Replication, c.logs())
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	waitErr("did not finish")
	// Replication goes on meanwhile: new files reach the replica (the next PIT shows it).
	writeFiles(t, mnt, 11, 10, 128)
	testutil.Run(t, "sync")
	os.Remove(filepath.Join(flags, "hang"))
	os.WriteFile(filepath.Join(flags, "fail"), nil, 0o644)
	waitErr("database refused to flush")
	os.Remove(filepath.Join(flags, "fail"))
	want := treeHashes(t, mnt)
	c.exportAndCheck(c.snapshot(), volumeNameOf(dev), want)
	// The agent clears the notice when a point under freeze is sealed, and reports it with
	// its next state report (every few seconds). (The hook, a shell, may make points slow
	// enough on a busy machine that the agent widens their interval: that notice may stay.)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		s, _ := c.admin.SourceServer(context.Background(), c.agentID)
		if e := s.Replication.Error; e == nil || e.Code == api.ErrPointIntervalWidened {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the error stayed after the hook worked again: %+v", s.Replication.Error)
		}
	}
}
