package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
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
	lab := newFailbackLab(t)
	c, ri, pit := lab.c, lab.ri, lab.pit
	rr, rc := lab.reverse(true)
	want := treeHashes(t, lab.riMnt)
	rpit := rc.snapshot()
	rc.exportAndCheck(rpit, volumeNameOf(lab.riDev), want)
	ri, err := c.admin.RecoveryInstance(context.Background(), ri.ID)
	if err != nil || ri.FailbackState != api.FailbackReadyForLaunch || ri.ReversedSourceServerID != rr.SourceServerID {
		t.Fatalf("recovery instance after reversed replication: %+v (%v), want %s", ri, err, api.FailbackReadyForLaunch)
	}
	c.failBack(ri, rr, lab.dev, lab.mnt, lab.riMnt, pit)
}

// failbackLab is the first half of the DR cycle on loop devices: a source server (an
// ext4 root holding its agent's configuration and ~60 MiB of files) with a PIT, its
// agent stopped (the disaster), recovered onto another device that then received
// ~12 MiB of writes.
type failbackLab struct {
	c                              *cluster
	dev, mnt, riDev, riMnt, agents string // agents: the reversed agent's files
	pit                            api.RecoverySnapshot
	ri                             api.RecoveryInstance
}

const labDiskBytes = 256 << 20

func newFailbackLab(t *testing.T) *failbackLab {
	l := &failbackLab{}
	l.dev, l.mnt = dataVolume(t, labDiskBytes, 60, 2048) // ~60 MiB: a full resync would send it again
	c := newCluster(t)
	l.c = c
	c.installAgent(l.dev)
	// The agent's configuration lives on the server's root filesystem, as on a real one.
	conf, err := os.ReadFile(c.agentCf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(l.mnt, "etc", "lifeboat"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.mnt, "etc", "lifeboat", "agent.yaml"), conf, 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "sync")
	c.startAgent()
	c.waitState(2*time.Minute, api.StateContinuous)
	l.pit = c.snapshot()
	c.agent.stop() // the disaster: the source is gone

	l.riDev, _ = testutil.LoopDevice(t, labDiskBytes)
	l.ri = c.recoverOntoDevice(l.pit, l.riDev)
	if l.ri.FailbackState != api.FailbackNotStarted {
		t.Fatalf("a new recovery instance's failback state is %q", l.ri.FailbackState)
	}
	if kept := testutil.ReadFileFromImage(t, l.riDev, "/etc/lifeboat/agent.yaml.origin"); kept != string(conf) {
		t.Fatalf("conversion did not keep the source's agent configuration aside for failback: %q", kept)
	}
	l.agents = reversedAgentFiles(t, l.riDev)
	// The recovery instance runs and writes.
	l.riMnt = testutil.Mount(t, l.riDev)
	writeFiles(t, l.riMnt, 99, 12, 2048)
	testutil.Run(t, "sync")
	return l
}

// reverse starts the recovery instance's agent, which waits to be told to replicate
// back, starts reversed replication and waits until it is CONTINUOUS; with killMidway
// the agent is killed half way through its first pass and started again. It checks
// that only the changes travelled, and returns the reversed server's cluster view.
func (l *failbackLab) reverse(killMidway bool) (api.ReverseReplication, *cluster) {
	c, t, ri := l.c, l.c.t, l.ri
	pause := []string{}
	if killMidway {
		pause = []string{"--scan-pause", "250ms"}
	}
	started := time.Now()
	ra := c.startReversedAgent("reversed-agent", l.agents, pause...)
	waitLog(t, filepath.Join(c.dir, "reversed-agent.log"), "waiting for reversed replication", 30*time.Second)
	var rr api.ReverseReplication
	if err := json.Unmarshal([]byte(c.cli("recovery-instances", "reverse-replication", ri.ID, "-o", "json")), &rr); err != nil {
		t.Fatal(err)
	}
	if rr.OriginSourceServerID != c.agentID || rr.SeedSnapshotID != l.pit.ID || rr.FailbackState != api.FailbackInProgress {
		t.Fatalf("reverse replication: %+v, want origin %s from PIT %s, in progress", rr, c.agentID, l.pit.ID)
	}
	if _, err := c.admin.StartReverseReplication(context.Background(), ri.ID); err == nil || !strings.Contains(err.Error(), "replicates back already") {
		t.Fatalf("a second reverse replication of %s: %v, want a refusal", ri.ID, err)
	}
	rc := *c
	rc.agentID, rc.agentSt = rr.SourceServerID, filepath.Join(l.agents, "state")
	var first agentStatusT
	if killMidway {
		// Killed half way through its first pass, it resumes where the replica is.
		rc.waitSent(20, 2*time.Minute)
		first, _ = readStatus(rc.agentSt)
		ra.kill()
		<-ra.done
		rc.startReversedAgent("reversed-agent-2", l.agents)
	}
	s := rc.waitState(3*time.Minute, api.StateContinuous)
	if s.Reversed == nil || s.Reversed.RecoveryInstanceID != ri.ID || s.Reversed.OriginSourceServerID != c.agentID {
		t.Fatalf("reversed source server %s: reversed %+v", s.ID, s.Reversed)
	}
	second := settledStatus(t, rc.agentSt)
	sent := first.SentBytes + second.SentBytes
	changed := changedBytes(t, l.riMnt, "f99-") // the instance's writes, and the agent binary conversion installed
	t.Logf("reverse replication sent %.1f MiB (%.1f + %.1f after the restart) for %.1f MiB written since the PIT on a %d MiB disk",
		float64(sent)/(1<<20), float64(first.SentBytes)/(1<<20), float64(second.SentBytes)/(1<<20), float64(changed)/(1<<20), labDiskBytes>>20)
	// What the killed agent had sent may go again (its hash tables are saved when a
	// session ends), the rest of the disk (~60 MiB of the source's files) must not.
	if sent < changed || second.SentBytes > changed+changed/8+8<<20+pointWrites(started) || first.SentBytes >= changed {
		t.Fatalf("reverse replication sent %d bytes (%d after the restart) of a %d-byte disk for %d bytes written since the PIT: the changes were expected, not the disk",
			sent, second.SentBytes, labDiskBytes, changed)
	}
	// Its job followed it to CONTINUOUS and says what it sent.
	j := recoverytest.WaitJob(t, c.admin, rr.JobID, time.Minute)
	events := recoverytest.EventTypes(t, c.admin, j.ID)
	if j.Type != api.JobReverseReplication || j.Servers[0].LaunchStatus != api.LaunchLaunched ||
		!slices.Contains(events, api.EventReverseRegistered) || !slices.Contains(events, api.EventReverseContinuous) {
		t.Fatalf("reversed replication's job %+v, log %v", j, events)
	}
	return rr, &rc
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
	// Completing before the origin replicates again would delete the PIT its replica
	// is rebased onto: refused.
	if _, err := c.admin.CompleteFailback(ctx, ri.ID); err == nil || !strings.Contains(err.Error(), "does not replicate again yet") {
		t.Fatalf("failback complete before re-protection: %v, want a refusal", err)
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
	started := time.Now()
	c.startAgent()
	s := c.waitState(3*time.Minute, api.StateContinuous)
	st := settledStatus(t, state)
	t.Logf("re-protection: the origin's agent sent %.1f MiB after the failback", float64(st.SentBytes)/(1<<20))
	if st.SentBytes > 8<<20+pointWrites(started) {
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

// pointBlocks is how many blocks an idle ext4 volume's consistency points write each
// second, with a margin: each freeze and each thaw writes the filesystem's superblock
// and the journal's (two 64 KiB blocks a point, a point a second).
const pointBlocks = 4

// pointWrites is the most an idle volume's consistency points have written since.
func pointWrites(since time.Time) int64 {
	return int64(time.Since(since).Seconds()+1) * pointBlocks * 64 << 10
}

// settledStatus reads an agent's status file once its counters stopped moving but for
// what the consistency points themselves write (it is written every second or so,
// after what the control plane is told).
func settledStatus(t *testing.T, dir string) agentStatusT {
	t.Helper()
	prev, _ := readStatus(dir)
	for i := 0; i < 30; i++ {
		time.Sleep(1500 * time.Millisecond)
		cur, err := readStatus(dir)
		if err == nil && cur.SentBlocks-prev.SentBlocks <= 2*pointBlocks {
			return cur
		}
		prev = cur
	}
	t.Fatalf("the agent's status in %s kept changing", dir)
	return prev
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

// TestFailbackThroughTheFailbackClient: the origin's machine lost its OS (its disk's
// first 8 MiB are garbage) and runs the failback client (as from the rescue media, here
// on this host with --device). It registers with a one-use failback token (a second use
// is refused); a failback into it writes only the blocks that differ; its link to the
// control plane is cut once mid-write, and it resumes; while it writes, the disk's first
// block is zeros (nothing boots or mounts a half-written disk). Afterwards the disk
// holds the recovery instance's files, the origin's agent configuration is back, and a
// second failback of the instance is refused.
func TestFailbackThroughTheFailbackClient(t *testing.T) {
	lab := newFailbackLab(t)
	c, ri := lab.c, lab.ri
	ctx := context.Background()
	lab.reverse(false)
	testutil.Unmount(t, lab.mnt)
	garbage(t, lab.dev, 8<<20)

	tok, err := c.admin.CreateToken(ctx, api.CreateTokenRequest{Kind: api.TokenInstall, Scope: api.ScopeFailback, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	tokFile := c.tokenFile("failback.token", tok.Secret)
	var zeroAtCut atomic.Int32 // 0: no cut yet; 1: first block zero; 2: not zero
	proxy := cutOnce(t, strings.TrimPrefix(c.url, "https://"), 4<<20, func() {
		if firstBlockZero(t, lab.dev) {
			zeroAtCut.Store(1)
		} else {
			zeroAtCut.Store(2)
		}
	})
	client := c.start("failback-client", "failback-client", "--server", "https://"+proxy, "--token-file", tokFile,
		"--device", lab.dev, "--poll", "300ms", "--log-level", "debug")
	var fcID string
	for deadline := time.Now().Add(time.Minute); fcID == ""; time.Sleep(200 * time.Millisecond) {
		l, err := c.admin.FailbackClients(ctx)
		if err == nil && len(l.Items) == 1 {
			fcID = l.Items[0].ID
		}
		if time.Now().After(deadline) {
			t.Fatalf("the failback client did not register: %v", err)
		}
	}
	again := exec.Command(binary, "failback-client", "--server", c.url, "--token-file", tokFile, "--device", lab.dev)
	if out, err := again.CombinedOutput(); err == nil || !strings.Contains(string(out), "token") {
		t.Fatalf("a second failback client with the same one-use token: %v\n%s", err, out)
	}

	if err := os.WriteFile(filepath.Join(lab.riMnt, "last-write"), []byte("written just before the failback\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "sync")
	out := c.cli("failback", "launch", ri.ID, "--into", fcID, "--wait")
	t.Logf("lifeboat failback launch --into %s --wait:\n%s", fcID, out)
	select {
	case <-client.done:
	case <-time.After(time.Minute):
		t.Fatal("the failback client did not exit after the failback")
	}
	if code := client.cmd.ProcessState.ExitCode(); code != 0 {
		b, _ := os.ReadFile(filepath.Join(c.dir, "failback-client.log"))
		t.Fatalf("the failback client exited %d:\n%s", code, b)
	}
	if z := zeroAtCut.Load(); z != 1 {
		t.Fatalf("link cut: %d (0: never cut, 2: the disk's first block was not zero while half written)", z)
	}
	want := treeHashes(t, lab.riMnt)
	back := testutil.Mount(t, lab.dev)
	got := treeHashes(t, back)
	for k, h := range want {
		if (strings.HasPrefix(k, "d0") || k == "last-write") && got[k] != h {
			t.Fatalf("the origin's disk after failback: %s is %q, the recovery instance had %q", k, got[k], h)
		}
	}
	if b, err := os.ReadFile(filepath.Join(back, "etc", "lifeboat", "agent.yaml")); err != nil || !strings.Contains(string(b), c.agentID) {
		t.Fatalf("the origin's agent configuration was not put back: %q (%v)", b, err)
	}
	if _, err := c.admin.StartFailback(ctx, ri.ID, api.FailbackRequest{Into: fcID}); err == nil || !strings.Contains(err.Error(), "failed back already") {
		t.Fatalf("a second failback of %s: %v, want a refusal", ri.ID, err)
	}
}

// garbage overwrites the first n bytes of a device with random bytes.
func garbage(t *testing.T, dev string, n int) {
	t.Helper()
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>9)
	}
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// firstBlockZero reports whether the first 64 KiB of dev are zeros.
func firstBlockZero(t *testing.T, dev string) bool {
	f, err := os.Open(dev)
	if err != nil {
		t.Error(err)
		return false
	}
	defer f.Close()
	b := make([]byte, 64<<10)
	if _, err := io.ReadFull(f, b); err != nil {
		t.Error(err)
		return false
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// cutOnce is a TCP proxy to target that cuts, once, the first connection that carried
// more than limit bytes from target, calling onCut first. It returns its address.
func cutOnce(t *testing.T, target string, limit int64, onCut func()) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var cut atomic.Bool
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() {
				defer in.Close()
				defer out.Close()
				var n int64
				buf := make([]byte, 32<<10)
				for {
					k, err := out.Read(buf)
					if k > 0 {
						n += int64(k)
						if n > limit && cut.CompareAndSwap(false, true) {
							onCut()
							return
						}
						if _, werr := in.Write(buf[:k]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// TestFailbackIntoANewMachine: failing back into a new machine at the origin site makes
// an instance (a sparse disk under the control plane's data directory) and writes the
// final point onto it, with the origin's identity back.
func TestFailbackIntoANewMachine(t *testing.T) {
	lab := newFailbackLab(t)
	c, ri := lab.c, lab.ri
	lab.reverse(false)
	out := c.cli("failback", "launch", ri.ID, "--into", "new", "--no-start", "--wait")
	t.Logf("lifeboat failback launch --into new --wait:\n%s", out)
	list, err := c.admin.Instances(context.Background())
	if err != nil || len(list.Items) != 1 || len(list.Items[0].Disks) != 1 {
		t.Fatalf("instances after a failback into a new machine: %+v (%v)", list.Items, err)
	}
	in := list.Items[0]
	if !strings.Contains(in.Name, "-failback-") || in.Tags[api.LaunchIntoTagDRS] != api.LaunchIntoTagValue {
		t.Fatalf("the new machine is named %q", in.Name)
	}
	mnt := testutil.Mount(t, in.Disks[0].Path, "-o", "loop,ro,noload")
	want, got := treeHashes(t, lab.riMnt), treeHashes(t, mnt)
	for k, h := range want {
		if strings.HasPrefix(k, "d0") && got[k] != h {
			t.Fatalf("the new machine's disk: %s is %q, the recovery instance had %q", k, got[k], h)
		}
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "etc", "lifeboat", "agent.yaml")); err != nil || !strings.Contains(string(b), c.agentID) {
		t.Fatalf("the new machine does not hold the origin's agent configuration: %q (%v)", b, err)
	}
	if ri, err = c.admin.RecoveryInstance(context.Background(), ri.ID); err != nil || ri.FailbackState != api.FailbackCompleted {
		t.Fatalf("recovery instance after failback into a new machine: %+v (%v)", ri, err)
	}
}
