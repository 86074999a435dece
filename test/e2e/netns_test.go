package e2e

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// netns makes a network namespace joined to the host by a veth pair and returns its
// name, the host's address and the namespace's address; both go when the test ends.
// cut and restore take the namespace's side of the link down and up.
type netns struct {
	t            *testing.T
	name, inner  string
	hostIP, nsIP string
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "ip", "iproute2")
	id := rand.IntN(200) + 20
	n := &netns{t: t, name: fmt.Sprintf("lbe2e%d", id), inner: fmt.Sprintf("lbn%d", id),
		hostIP: fmt.Sprintf("10.231.%d.1", id), nsIP: fmt.Sprintf("10.231.%d.2", id)}
	outer := fmt.Sprintf("lbh%d", id)
	testutil.Run(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() { _, _ = testutil.Output("ip", "netns", "del", n.name) })
	testutil.Run(t, "ip", "link", "add", outer, "type", "veth", "peer", "name", n.inner)
	testutil.Run(t, "ip", "link", "set", n.inner, "netns", n.name)
	testutil.Run(t, "ip", "addr", "add", n.hostIP+"/24", "dev", outer)
	testutil.Run(t, "ip", "link", "set", outer, "up")
	testutil.Run(t, "ip", "netns", "exec", n.name, "ip", "addr", "add", n.nsIP+"/24", "dev", n.inner)
	testutil.Run(t, "ip", "netns", "exec", n.name, "ip", "link", "set", n.inner, "up")
	testutil.Run(t, "ip", "netns", "exec", n.name, "ip", "link", "set", "lo", "up")
	return n
}

func (n *netns) cut() {
	testutil.Run(n.t, "ip", "netns", "exec", n.name, "ip", "link", "set", n.inner, "down")
}
func (n *netns) restore() {
	testutil.Run(n.t, "ip", "netns", "exec", n.name, "ip", "link", "set", n.inner, "up")
}

// TestConnectionCutRecoversWithoutResync: the replicator runs in its own network
// namespace; the link is taken down while the agent streams: the server reports
// UNSTABLE_NETWORK, and when the link returns replication resumes without a full resync.
func TestConnectionCutRecoversWithoutResync(t *testing.T) {
	n := newNetns(t)
	dev, mnt := dataVolume(t, 256<<20, 30, 512)
	c := newClusterWith(t, clusterOptions{cpHost: n.hostIP, repNS: n.name, repHost: n.nsIP})
	c.installAgent(dev)
	c.startAgent()
	c.waitState(2*time.Minute, api.StateContinuous)
	first := settledStatus(t, c.agentSt)
	firstAt := time.Now()
	writeFiles(t, mnt, 9, 40, 1024)
	testutil.Run(t, "sync")
	data := nonZeroBlocks(t, dev)
	n.cut()
	deadline := time.Now().Add(90 * time.Second)
	for {
		s, err := c.admin.SourceServer(t.Context(), c.agentID)
		if err == nil && s.Replication.Error != nil && s.Replication.Error.Code == api.ErrUnstableNetwork {
			t.Logf("with the link down: %s, %s", s.Replication.DataReplicationState, s.Replication.Error.Message)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not report UNSTABLE_NETWORK with its link down: %+v\n%s", s.Replication, c.logs())
		}
		time.Sleep(500 * time.Millisecond)
	}
	n.restore()
	s := c.waitState(2*time.Minute, api.StateContinuous)
	for s.Replication.Error != nil && time.Now().Before(deadline.Add(time.Minute)) {
		time.Sleep(500 * time.Millisecond)
		s, _ = c.admin.SourceServer(t.Context(), c.agentID)
	}
	after := settledStatus(t, c.agentSt)
	resent := (after.SentBlocks - after.SentZeroBlocks) - (first.SentBlocks - first.SentZeroBlocks)
	written := changedBytes(t, mnt, "f9-")/(64<<10) + 64 // blocks of the new files, their metadata and journal
	t.Logf("%d data blocks on the volume, %d of them new; %d sent after the first sync (the new ones, and again what was in flight when the link went down)",
		data, written, resent)
	// A resync would read the volume again under a new tracker generation, and send the
	// blocks that were there before too; what was in flight (at most the new blocks) may
	// go twice, and each consistency point writes a few blocks of its own.
	if after.Generation != first.Generation || resent > 2*written+pointWrites(firstAt)/(64<<10) {
		t.Fatalf("after the link came back: tracker generation %d (was %d), %d data blocks sent for %d new: a resync", after.Generation, first.Generation, resent, written)
	}
	want := treeHashes(t, mnt)
	c.exportAndCheck(c.snapshot(), volumeNameOf(dev), want)
}
