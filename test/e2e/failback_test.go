package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// recoverOntoDevice recovers the cluster's source server from pit onto a block device
// (image provider): the device is then the recovery instance's disk, as it would be
// on a machine of the recovery site.
func (c *cluster) recoverOntoDevice(pit api.RecoverySnapshot, dev string) api.RecoveryInstance {
	c.t.Helper()
	ctx := context.Background()
	ls := api.DefaultLaunchSettings(1, 512<<20)
	ls.Provider, ls.ImageTarget = api.ProviderImage, &api.ImageTarget{Devices: []string{dev}}
	if _, err := c.admin.SetLaunchSettings(ctx, c.agentID, ls); err != nil {
		c.t.Fatal(err)
	}
	out := c.cli("recover", c.agentID, "--pit", pit.ID, "--wait")
	jobID, _, _ := strings.Cut(out, "\n")
	j, err := c.admin.Job(ctx, strings.TrimSpace(jobID))
	if err != nil || len(j.Servers) != 1 || j.Servers[0].LaunchStatus != api.LaunchLaunched {
		c.t.Fatalf("recovery job %+v (%v)\n%s", j, err, out)
	}
	ri, err := c.admin.RecoveryInstance(ctx, j.Servers[0].RecoveryInstanceID)
	if err != nil {
		c.t.Fatal(err)
	}
	return ri
}

// reversedAgentFiles copies out of a recovered disk what its agent starts from, as the
// recovered server would read them from its own root filesystem: the configuration
// without identity, the recovery record and the seed hash table.
func reversedAgentFiles(t *testing.T, disk string) (dir string) {
	dir = t.TempDir()
	for in, out := range map[string]string{api.DefaultAgentConfig: "agent.yaml", api.RecoveryInfoFile: "recovery-instance.json",
		api.SeedTableFile(api.ReverseSeedDir, 0): "seed/seed-0.hashes"} {
		p := filepath.Join(dir, out)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(testutil.ReadFileFromImage(t, disk, in)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// startReversedAgent runs the recovery instance's agent, as the recovered server's
// service would.
func (c *cluster) startReversedAgent(name, dir string, extra ...string) *proc {
	args := append([]string{"agent", "run", "--config", filepath.Join(dir, "agent.yaml"), "--state-dir", filepath.Join(dir, "state"),
		"--recovery-info", filepath.Join(dir, "recovery-instance.json"), "--reverse-seed-dir", filepath.Join(dir, "seed"),
		"--reverse-interval", "300ms", "--log-level", "debug"}, extra...)
	return c.start(name, args...)
}

// TestFailbackCycleOnDevices is the DR cycle on loop devices, agents on this host:
// a source server (an ext4 root with its agent's configuration) is recovered onto
// another device; the recovery instance writes ~12 MiB; its agent waits until reversed
// replication is started, registers as the reversed source server, and replicates the
// instance back — killed half way and restarted, it resumes — sending the changes, not
// the 256 MiB disk; the reversed PIT equals the instance's files. Then a planned
// failback into the origin's device (registered as an instance) writes the final
// consistency point, taken after a last write: the origin's agent, with its own
// configuration back, replicates again as the original source server with its old
// PITs, sending only what changed since; failback complete leaves no reversed server
// and no recovery instance. The failback state goes NOT_STARTED → IN_PROGRESS →
// READY_FOR_LAUNCH → IN_PROGRESS → COMPLETED.
func TestFailbackCycleOnDevices(t *testing.T) {
	const diskBytes = 256 << 20
	dev, mnt := dataVolume(t, diskBytes, 60, 2048) // ~60 MiB: a full resync would send it again
	c := newCluster(t)
	c.installAgent(dev)
	// The agent's configuration lives on the server's root filesystem, as on a real one.
	conf, err := os.ReadFile(c.agentCf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(mnt, "etc", "lifeboat"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "etc", "lifeboat", "agent.yaml"), conf, 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "sync")
	c.startAgent()
	c.waitState(2*time.Minute, api.StateContinuous)
	pit := c.snapshot()
	c.agent.stop() // the disaster: the source is gone

	riDev, _ := testutil.LoopDevice(t, diskBytes)
	ri := c.recoverOntoDevice(pit, riDev)
	if ri.FailbackState != api.FailbackNotStarted {
		t.Fatalf("a new recovery instance's failback state is %q", ri.FailbackState)
	}
	if kept := testutil.ReadFileFromImage(t, riDev, "/etc/lifeboat/agent.yaml.origin"); kept != string(conf) {
		t.Fatalf("conversion did not keep the source's agent configuration aside for failback: %q", kept)
	}
	dir := reversedAgentFiles(t, riDev)

	// The recovery instance runs and writes.
	riMnt := testutil.Mount(t, riDev)
	writeFiles(t, riMnt, 99, 12, 2048)
	testutil.Run(t, "sync")

	// Its agent waits to be told to replicate back.
	ra := c.startReversedAgent("reversed-agent", dir, "--scan-pause", "250ms")
	waitLog(t, filepath.Join(c.dir, "reversed-agent.log"), "waiting for reversed replication", 30*time.Second)
	var rr api.ReverseReplication
	if err := json.Unmarshal([]byte(c.cli("recovery-instances", "reverse-replication", ri.ID, "-o", "json")), &rr); err != nil {
		t.Fatal(err)
	}
	if rr.OriginSourceServerID != c.agentID || rr.SeedSnapshotID != pit.ID || rr.FailbackState != api.FailbackInProgress {
		t.Fatalf("reverse replication: %+v, want origin %s from PIT %s, in progress", rr, c.agentID, pit.ID)
	}
	if _, err := c.admin.StartReverseReplication(context.Background(), ri.ID); err == nil || !strings.Contains(err.Error(), "replicates back already") {
		t.Fatalf("a second reverse replication of %s: %v, want a refusal", ri.ID, err)
	}
	rc := *c
	rc.agentID, rc.agentSt = rr.SourceServerID, filepath.Join(dir, "state")

	// Killed half way through its first pass, it resumes where the replica is.
	rc.waitSent(20, 2*time.Minute)
	first, _ := readStatus(rc.agentSt)
	ra.kill()
	<-ra.done
	rc.startReversedAgent("reversed-agent-2", dir)
	s := rc.waitState(3*time.Minute, api.StateContinuous)
	if s.Reversed == nil || s.Reversed.RecoveryInstanceID != ri.ID || s.Reversed.OriginSourceServerID != c.agentID {
		t.Fatalf("reversed source server %s: reversed %+v", s.ID, s.Reversed)
	}
	want := treeHashes(t, riMnt)
	rpit := rc.snapshot()
	second, _ := readStatus(rc.agentSt)
	sent := first.SentBytes + second.SentBytes
	changed := changedBytes(t, riMnt, "f99-") // the instance's writes, and the agent binary conversion installed
	t.Logf("reverse replication sent %.1f MiB (%.1f + %.1f after the restart) for %.1f MiB written since the PIT on a %d MiB disk",
		float64(sent)/(1<<20), float64(first.SentBytes)/(1<<20), float64(second.SentBytes)/(1<<20), float64(changed)/(1<<20), diskBytes>>20)
	// What the killed agent had sent may go again (its hash tables are saved when a
	// session ends), the rest of the disk (~60 MiB of the source's files) must not.
	if sent < changed || second.SentBytes > changed+changed/8+8<<20 || first.SentBytes >= changed {
		t.Fatalf("reverse replication sent %d bytes (%d after the restart) of a %d-byte disk for %d bytes written since the PIT: the changes were expected, not the disk",
			sent, second.SentBytes, diskBytes, changed)
	}
	rc.exportAndCheck(rpit, volumeNameOf(riDev), want)

	ri, err = c.admin.RecoveryInstance(context.Background(), ri.ID)
	if err != nil || ri.FailbackState != api.FailbackReadyForLaunch || ri.ReversedSourceServerID != rr.SourceServerID {
		t.Fatalf("recovery instance after reversed replication: %+v (%v), want %s", ri, err, api.FailbackReadyForLaunch)
	}
	c.failBack(ri, rr, dev, mnt, riMnt, pit)
}

// failBack runs the second half of TestFailbackCycleOnDevices: a planned failback of
// ri into the origin's device, re-protection, and failback complete.
func (c *cluster) failBack(ri api.RecoveryInstance, rr api.ReverseReplication, dev, mnt, riMnt string, oldPIT api.RecoverySnapshot) {
	t := c.t
	ctx := context.Background()
	// The origin's machine: its device, registered as an instance to launch into.
	testutil.Unmount(t, mnt)
	inst := strings.TrimSpace(c.cli("instances", "add", "--name", "origin", "--disk", dev, "--tag", "AWSDRS=AllowLaunchingIntoThisInstance"))
	// The last write on the recovery instance before the failback: it must come home.
	if err := os.WriteFile(filepath.Join(riMnt, "last-write"), []byte("written just before the failback\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "sync")
	out := c.cli("failback", "launch", ri.ID, "--into", inst, "--no-start", "--wait")
	t.Logf("lifeboat failback launch --wait:\n%s", out)
	ri, err := c.admin.RecoveryInstance(ctx, ri.ID)
	if err != nil || ri.FailbackState != api.FailbackCompleted {
		t.Fatalf("recovery instance after failback: %+v (%v), want %s", ri, err, api.FailbackCompleted)
	}
	want := treeHashes(t, riMnt)
	c.agent = nil
	for k := range want {
		if !strings.HasPrefix(k, "d0") && k != "last-write" {
			delete(want, k) // conversion's files (the agent's configuration, the binary) differ by design
		}
	}
	if got := testutil.ReadFileFromImage(t, dev, api.DefaultAgentConfig); !strings.Contains(got, c.agentID) {
		t.Fatalf("the origin's agent configuration was not put back: %q", got)
	}
	// The machine boots: its agent runs with its own configuration and state directory.
	state := t.TempDir()
	table := "hashes-" + volumeNameOf(dev)
	if err := os.WriteFile(filepath.Join(state, table), []byte(testutil.ReadFileFromImage(t, dev, "/var/lib/lifeboat/agent/"+table)), 0o600); err != nil {
		t.Fatal(err)
	}
	back := testutil.Mount(t, dev)
	got := treeHashes(t, back)
	for k, h := range want {
		if got[k] != h {
			t.Fatalf("the origin's disk after failback: %s is %q, the recovery instance had %q", k, got[k], h)
		}
	}
	c.agentSt = state
	c.startAgent()
	s := c.waitState(3*time.Minute, api.StateContinuous)
	st, _ := readStatus(state)
	t.Logf("re-protection: the origin's agent sent %.1f MiB after the failback", float64(st.SentBytes)/(1<<20))
	if st.SentBytes > 8<<20 {
		t.Fatalf("the origin's agent sent %d bytes after the failback: only what changed since the write was expected", st.SentBytes)
	}
	if !s.Replication.ReadyForRecovery {
		t.Fatalf("the origin after re-protection: %+v", s.Replication)
	}
	newPIT := c.snapshot()
	page, err := c.admin.RecoverySnapshots(ctx, c.agentID, 1000, "")
	if err != nil || !slices.ContainsFunc(page.Items, func(p api.RecoverySnapshot) bool { return p.ID == oldPIT.ID }) {
		t.Fatalf("the origin's PITs after re-protection do not list %s from before the disaster (%v)", oldPIT.ID, err)
	}
	testutil.Run(t, "sync")
	c.exportAndCheckSome(newPIT, volumeNameOf(dev), want)

	c.cli("failback", "complete", ri.ID, "--wait")
	if _, err := c.admin.SourceServer(ctx, rr.SourceServerID); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("the reversed source server %s after failback complete: %v, want it gone", rr.SourceServerID, err)
	}
	left, err := c.admin.RecoveryInstances(ctx, api.RecoveryInstanceFilter{})
	if err != nil || len(left.Items) != 0 {
		t.Fatalf("recovery instances after failback complete: %+v (%v), want none", left.Items, err)
	}
}

// exportAndCheckSome is exportAndCheck for the files of want only.
func (c *cluster) exportAndCheckSome(pit api.RecoverySnapshot, volume string, want map[string]string) {
	c.t.Helper()
	out := filepath.Join(c.dir, "export-"+pit.ID)
	c.cli("export", c.agentID, "--pit", pit.ID, "--to", out)
	mnt := testutil.Mount(c.t, filepath.Join(out, volume+".img"), "-o", "loop,ro,noload")
	got := treeHashes(c.t, mnt)
	for p, h := range want {
		if got[p] != h {
			c.t.Fatalf("PIT %s: %s is %q, want %q", pit.ID, p, got[p], h)
		}
	}
}

// changedBytes is the size of the files under root whose names start with prefix,
// plus that of the agent binary recovery installed.
func changedBytes(t *testing.T, root, prefix string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), prefix) || p == filepath.Join(root, "usr", "local", "sbin", "lifeboat") {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitLog waits until a process's log holds text.
func waitLog(t *testing.T, path, text string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), text) {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(path)
			t.Fatalf("%s did not say %q within %s:\n%s", path, text, timeout, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
