package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// TestReplicateExt4VolumeAndExportAPIT: files on a loop-device ext4 volume are
// replicated; after a sync a PIT is taken; the exported PIT passes fsck -n and holds
// exactly the files the source held at that moment. Then more files, another PIT.
func TestReplicateExt4VolumeAndExportAPIT(t *testing.T) {
	t.Run("ebpf", func(t *testing.T) { replicateAndExport(t, false) })
	// The scan tracker reads the whole volume under freeze at each point: the operator
	// gives it a freeze bound it can meet.
	t.Run("scan", func(t *testing.T) { replicateAndExport(t, true) })
}

func replicateAndExport(t *testing.T, scan bool) {
	testutil.RequireCommand(t, "fsck.ext4", "e2fsprogs")
	dev, _ := testutil.LoopDevice(t, 256<<20)
	testutil.MkfsExt4(t, dev)
	mnt := testutil.Mount(t, dev)
	writeFiles(t, mnt, 1, 40, 512)
	testutil.Run(t, "sync")

	c := newCluster(t)
	c.installAgent(dev)
	wantTracker := "ebpf"
	if scan {
		bound := 10000
		if _, err := c.admin.SetServerReplicationSettings(t.Context(), c.agentID, api.ReplicationSettingsOverrides{FreezeTimeoutMs: &bound}); err != nil {
			t.Fatal(err)
		}
		c.startAgent("--scan")
		wantTracker = "scan"
	} else {
		c.startAgent()
	}
	c.waitState(2*time.Minute, api.StateContinuous)
	c.checkInitiationPassed("once CONTINUOUS")
	if !scan {
		// They stay right after a restart of the control plane, and of the agent.
		c.restartServer()
		c.checkInitiationPassed("after the control plane restarted")
		c.agent.stop()
		restarted := time.Now()
		c.startAgent()
		c.waitReported(2*time.Minute, restarted, api.StateContinuous)
		c.checkInitiationPassed("after the agent restarted")
	}
	want := treeHashes(t, mnt)
	pit := c.snapshot()
	if pit.Level != consistency.Filesystem {
		t.Fatalf("the PIT of a mounted ext4 volume is %s, want filesystem\n%s", pit.Level, c.logs())
	}
	c.exportAndCheck(pit, volumeNameOf(dev), want)

	// Changes after the first PIT reach the next one; the first is unchanged.
	writeFiles(t, mnt, 2, 20, 256)
	testutil.Run(t, "sync")
	want2 := treeHashes(t, mnt)
	pit2 := c.snapshot()
	c.exportAndCheck(pit2, volumeNameOf(dev), want2)
	c.exportAndCheck(pit, volumeNameOf(dev), want)
	// A locked PIT cannot be deleted, and the store knows the lock too.
	out := c.cli("snapshots", "protect", pit.ID, "--until", "2h", "-o", "json")
	if !strings.Contains(out, "lockUntil") {
		t.Fatalf("snapshots protect printed %s", out)
	}
	if err := c.admin.DeleteRecoverySnapshot(t.Context(), pit.ID); err == nil {
		t.Fatal("a locked PIT was deleted")
	}
	s, _ := c.admin.SourceServer(t.Context(), c.agentID)
	if !s.Replication.ReadyForRecovery || s.Replication.Tracker != wantTracker {
		t.Fatalf("after two PITs the server is not ready for recovery: %+v", s.Replication)
	}
	t.Logf("tracker %s, lag %v s, %d files", s.Replication.Tracker, deref(s.Replication.LagSeconds), len(want2))
}

// checkInitiationPassed checks that source-servers describe shows each initiation step
// SUCCEEDED (they stayed NOT_STARTED while the server was CONTINUOUS: issue 17).
func (c *cluster) checkInitiationPassed(when string) {
	c.t.Helper()
	out := c.cli("source-servers", "describe", c.agentID)
	for _, step := range []string{api.InitiationRegisterAgent, api.InitiationConnectAgent, api.InitiationStartDataTransfer} {
		if !strings.Contains(out, step+" "+api.StepSucceeded) {
			c.t.Fatalf("%s, source-servers describe does not show %s %s:\n%s", when, step, api.StepSucceeded, out)
		}
	}
}

// waitReported waits until the agent reported one of states after since.
func (c *cluster) waitReported(timeout time.Duration, since time.Time, states ...string) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := c.waitState(time.Until(deadline), states...)
		if s.Replication.UpdatedAt.After(since) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func volumeNameOf(dev string) string {
	out, _ := exec.Command("basename", dev).Output()
	return string(out[:len(out)-1])
}

func deref(p *float64) float64 {
	if p == nil {
		return -1
	}
	return *p
}

// TestVolumeThatGrows: the disk under a mounted ext4 grows (online growth of the
// filesystem itself is refused by this kernel for a loop device, so the filesystem
// keeps its size); the agent notices, replicates the volume at its new size, and the
// next PIT is the grown disk with the filesystem's current files.
func TestVolumeThatGrows(t *testing.T) {
	dev, file := testutil.LoopDevice(t, 128<<20)
	testutil.MkfsExt4(t, dev)
	mnt := testutil.Mount(t, dev)
	writeFiles(t, mnt, 21, 10, 256)
	testutil.Run(t, "sync")
	c := newCluster(t)
	c.installAgent(dev)
	c.startAgent()
	c.waitState(2*time.Minute, api.StateContinuous)
	// Grow the disk to 256 MiB, then the filesystem.
	testutil.Run(t, "truncate", "-s", "256M", file)
	testutil.Run(t, "losetup", "-c", dev)
	writeFiles(t, mnt, 22, 20, 1024)
	testutil.Run(t, "sync")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s, err := c.admin.SourceServer(t.Context(), c.agentID)
		if err == nil && len(s.Volumes) == 1 && s.Volumes[0].SizeBytes == 256<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the control plane does not see the grown volume: %+v\n%s", s.Volumes, c.logs())
		}
		time.Sleep(500 * time.Millisecond)
	}
	c.waitState(2*time.Minute, api.StateContinuous)
	want := treeHashes(t, mnt)
	pit := c.snapshot()
	if len(pit.Volumes) != 1 || pit.Volumes[0].SizeBytes != 256<<20 {
		t.Fatalf("the PIT after the growth has volumes %+v", pit.Volumes)
	}
	c.exportAndCheck(pit, volumeNameOf(dev), want)
}
