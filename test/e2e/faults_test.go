package e2e

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// nonZeroBlocks counts the 64 KiB blocks of a device that hold data.
func nonZeroBlocks(t *testing.T, dev string) int {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf, zero := make([]byte, 64<<10), make([]byte, 64<<10)
	n := 0
	for {
		k, err := f.Read(buf)
		if k > 0 && !bytes.Equal(buf[:k], zero[:k]) {
			n++
		}
		if err != nil {
			return n
		}
	}
}

// dataVolume makes a loop-device ext4 volume with files on it, mounted.
func dataVolume(t *testing.T, size int64, files, maxKiB int) (dev, mnt string) {
	t.Helper()
	testutil.RequireCommand(t, "fsck.ext4", "e2fsprogs")
	dev, _ = testutil.LoopDevice(t, size)
	testutil.MkfsExt4(t, dev)
	mnt = testutil.Mount(t, dev)
	writeFiles(t, mnt, 7, files, maxKiB)
	testutil.Run(t, "sync")
	return dev, mnt
}

// waitSent waits until the agent's status says it sent at least n blocks.
func (c *cluster) waitSent(n int64, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if s, err := readStatus(c.agentSt); err == nil && s.SentBlocks >= n {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the agent did not send %d blocks within %s\n%s", n, timeout, c.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAgentKilledMidSyncResumes: SIGKILL in the middle of the initial sync; the
// restarted agent sends only what the replica does not hold, and the PIT is exact.
func TestAgentKilledMidSyncResumes(t *testing.T) {
	dev, mnt := dataVolume(t, 256<<20, 120, 1536)
	data := nonZeroBlocks(t, dev)
	c := newCluster(t)
	c.installAgent(dev)
	c.startAgent("--scan-pause", "400ms") // a slow initial sync, to kill it in the middle
	c.waitSent(int64(data/4), 2*time.Minute)
	time.Sleep(6 * time.Second) // the hash table is saved every 5 s
	c.agent.kill()
	before := agentStatusAt(t, c.agentSt)
	if before.SentBlocks-before.SentZeroBlocks >= int64(data) {
		t.Fatalf("the agent sent all %d blocks before it was killed: the test did not kill it mid-sync", data)
	}
	c.startAgent()
	c.waitState(3*time.Minute, api.StateContinuous)
	after := agentStatusAt(t, c.agentSt)
	beforeData, afterData := before.SentBlocks-before.SentZeroBlocks, after.SentBlocks-after.SentZeroBlocks
	t.Logf("%d data blocks; before the kill %d sent; after the restart %d sent (all-zero blocks not counted)", data, beforeData, afterData)
	if afterData > int64(data)-beforeData/2 {
		t.Fatalf("after a restart the agent resent %d data blocks of %d: it restarted the sync instead of resuming\n%s", afterData, data, c.logs())
	}
	want := treeHashes(t, mnt)
	c.exportAndCheck(c.snapshot(), volumeNameOf(dev), want)
}

// TestReplicatorKilledMidStream: the replicator dies while an agent streams; the agent
// waits, resumes when it is back, and the PIT sealed before is intact.
func TestReplicatorKilledMidStream(t *testing.T) {
	dev, mnt := dataVolume(t, 256<<20, 30, 512)
	c := newCluster(t)
	c.installAgent(dev)
	c.startAgent()
	c.waitState(2*time.Minute, api.StateContinuous)
	want1 := treeHashes(t, mnt)
	pit1 := c.snapshot()

	writeFiles(t, mnt, 8, 80, 1536)
	testutil.Run(t, "sync")
	c.rep.kill() // mid-stream: the agent is sending the new files
	time.Sleep(3 * time.Second)
	s, _ := c.admin.SourceServer(context.Background(), c.agentID)
	t.Logf("with the replicator down: %s %+v", s.Replication.DataReplicationState, s.Replication.Error)
	c.startReplicator()
	c.waitState(2*time.Minute, api.StateContinuous)
	want2 := treeHashes(t, mnt)
	pit2 := c.snapshot()
	c.exportAndCheck(pit2, volumeNameOf(dev), want2)
	c.exportAndCheck(pit1, volumeNameOf(dev), want1)
	c.cli("store", "verify", "--read-data", "--store", "file://"+c.dir+"/staging", "--key", c.masterKey())
}

func agentStatusAt(t *testing.T, dir string) agentStatusT {
	t.Helper()
	s, err := readStatus(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStagingStorageFull: the staging filesystem fills up: the server is STALLED with
// STAGING_STORAGE_FULL, the PIT sealed before is intact, and replication resumes by
// itself when space returns.
func TestStagingStorageFull(t *testing.T) {
	testutil.RequireRoot(t)
	stage := t.TempDir()
	testutil.Run(t, "mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", stage)
	t.Cleanup(func() { _, _ = testutil.Output("umount", stage) })
	dev, mnt := dataVolume(t, 256<<20, 20, 256)
	c := newClusterWith(t, clusterOptions{store: stage + "/staging"})
	c.installAgent(dev)
	c.startAgent()
	c.waitState(2*time.Minute, api.StateContinuous)
	want1 := treeHashes(t, mnt)
	pit1 := c.snapshot()

	writeFiles(t, mnt, 10, 60, 2048) // ~60 MiB of random data: more than the store has room for
	testutil.Run(t, "sync")
	s := c.waitState(2*time.Minute, api.StateStalled)
	if s.Replication.Error == nil || s.Replication.Error.Code != api.ErrStagingStorageFull {
		t.Fatalf("a full staging store gives %+v, want STALLED with STAGING_STORAGE_FULL", s.Replication)
	}
	t.Logf("with the store full: %s: %s", s.Replication.Error.Code, s.Replication.Error.Message)
	c.exportAndCheck(pit1, volumeNameOf(dev), want1) // nothing earlier is lost

	testutil.Run(t, "mount", "-o", "remount,size=512m", stage)
	c.waitState(3*time.Minute, api.StateContinuous)
	want2 := treeHashes(t, mnt)
	c.exportAndCheck(c.snapshot(), volumeNameOf(dev), want2)
	c.cli("store", "verify", "--read-data", "--store", "file://"+stage+"/staging", "--key", c.masterKey())
}
