package e2e

import (
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/launch/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// TestInstantLaunchBootsBeforeItsDisksAreCopied: with instant launch, a bootable server
// is recovered from overlays over its PIT served from the staging store over NBD. The
// job logs BOOT with the page answering, then HYDRATED once the disks are local; the
// instance then runs with the staging store gone; terminate removes it.
func TestInstantLaunchBootsBeforeItsDisksAreCopied(t *testing.T) {
	needVMs(t)
	testutil.RequireCommand(t, "qemu-storage-daemon", "qemu-system-x86")
	img := testutil.BuildBootImage(t, testutil.BootImageOptions{SizeMiB: 128, Hostname: "web-i", Page: "served before it was copied\n"})
	s := startSite(t, nil)
	fi, _ := os.Stat(img)
	server := recoverytest.Server(t, s.cp, "web-i", map[string]int64{"vda": fi.Size()})
	recoverytest.PIT(t, s.cp, s.repo, server, consistency.Filesystem, time.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: img})
	ls := webSettings(api.ProviderQEMU, "")
	ls.Instant = true
	if _, err := s.admin.SetLaunchSettings(context.Background(), server.ID, ls); err != nil {
		t.Fatal(err)
	}
	id := s.must("recover", server.ID, "--wait")
	job, ri, _ := jobOf(t, s, id)
	if job.Servers[0].LaunchStatus != api.LaunchLaunched {
		t.Fatalf("instant recovery: %+v", job.Servers[0])
	}
	if got := page(t, ri); got != "served before it was copied\n" {
		t.Fatalf("the instant launch serves %q", got)
	}
	events := waitEvent(t, s, id, api.EventHydrated, 5*time.Minute)
	for _, want := range []string{api.EventSnapshotEnd, api.EventLaunchEnd, api.EventBoot, api.EventHydrated} {
		if !strings.Contains(events, want) {
			t.Errorf("the job's log has no %s:\n%s", want, events)
		}
	}
	after, err := s.admin.RecoveryInstance(context.Background(), ri.ID)
	if err != nil || after.ProviderHandle.NBDSocket != "" {
		t.Errorf("after hydration the instance still names an NBD socket: %+v %v", after.ProviderHandle, err)
	}
	if out := qemuImgInfo(t, ri.ProviderHandle.Disks[0]); strings.Contains(out, "backing file") {
		t.Errorf("the hydrated overlay still has a backing file:\n%s", out)
	}
	// The staging store gone, the hydrated instance still serves its page.
	if err := os.Rename(filepath.Join(s.cp.DataDir(), "staging"), filepath.Join(s.cp.DataDir(), "staging.away")); err != nil {
		t.Fatal(err)
	}
	if got := page(t, ri); got != "served before it was copied\n" {
		t.Fatalf("the hydrated instance serves %q", got)
	}
	if err := os.Rename(filepath.Join(s.cp.DataDir(), "staging.away"), filepath.Join(s.cp.DataDir(), "staging")); err != nil {
		t.Fatal(err)
	}
	s.must("recovery-instances", "terminate", ri.ID, "--wait")
	if running(ri.ProviderHandle.PID) {
		t.Errorf("QEMU (pid %d) still runs after terminate", ri.ProviderHandle.PID)
	}
	if _, err := os.Stat(ri.ProviderHandle.Dir); !os.IsNotExist(err) {
		t.Errorf("the recovery instance's directory is still there: %v", err)
	}
}

// TestInstantHydrationSurvivesRestartAndStoreOutage: a disk of random data with holes
// is launched instant, its VM kept stopped (so nothing but the copy writes to it), the
// copy slowed down. The control plane restarts during the copy: the VM stays up and the
// copy resumes. The staging store then goes away for a while: the copy waits
// (HYDRATION_STALLED), then finishes when it is back. The hydrated disk equals the PIT
// byte for byte, and holes were not copied.
func TestInstantHydrationSurvivesRestartAndStoreOutage(t *testing.T) {
	needVMs(t)
	testutil.RequireCommand(t, "qemu-storage-daemon", "qemu-system-x86")
	const size = 64 << 20
	img := filepath.Join(t.TempDir(), "data.raw")
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for off := 0; off < size; off += 1 << 20 {
		if (off>>20)%4 != 3 { // every fourth MiB a hole
			for i := off; i < off+1<<20; i += 8 {
				v := rng.Uint64()
				for k := range 8 {
					data[i+k] = byte(v >> (8 * k))
				}
			}
		}
	}
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	s := startSite(t, func(c *controlplane.Config) { c.Recovery.HydrationBytesPerSecond = 2 << 20 })
	server := recoverytest.Server(t, s.cp, "data-i", map[string]int64{"vda": size})
	recoverytest.PIT(t, s.cp, s.repo, server, consistency.Crash, time.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: img})
	ls := api.DefaultLaunchSettings(1, 256<<20)
	ls.Instant, ls.StartAfterLaunch = true, false
	if _, err := s.admin.SetLaunchSettings(context.Background(), server.ID, ls); err != nil {
		t.Fatal(err)
	}
	id := s.must("recover", server.ID, "--wait")
	_, ri, _ := jobOf(t, s, id)
	pid := ri.ProviderHandle.PID
	time.Sleep(3 * time.Second)
	s.restart()
	if !running(pid) {
		t.Fatal("the VM did not outlive the control plane")
	}
	waitEvent(t, s, id, "serving them again", time.Minute)
	staging := filepath.Join(s.cp.DataDir(), "staging", "data")
	if err := os.Rename(staging, staging+".away"); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, s, id, api.EventHydrationStalled, 2*time.Minute)
	if err := os.Rename(staging+".away", staging); err != nil {
		t.Fatal(err)
	}
	events := waitEvent(t, s, id, api.EventHydrated, 5*time.Minute)
	if strings.Contains(events, api.EventLaunchFailed) {
		t.Fatalf("the job's log:\n%s", events)
	}
	if !running(pid) {
		t.Fatal("the VM did not survive its copy")
	}
	vm, err := qemu.Attach(ri.ProviderHandle.VMDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(t.TempDir(), "hydrated.raw")
	testutil.Run(t, "qemu-img", "convert", "-O", "raw", ri.ProviderHandle.Disks[0], raw)
	got, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != want {
		t.Fatalf("the hydrated disk differs from the PIT in %d blocks of 64 KiB", blockDiff(t, img, raw))
	}
	info := qemuImgInfo(t, ri.ProviderHandle.Disks[0])
	if strings.Contains(info, "backing file") {
		t.Errorf("the hydrated overlay still has a backing file:\n%s", info)
	}
	t.Logf("hydrated overlay:\n%s", info)
	s.must("recovery-instances", "terminate", ri.ID, "--wait")
}

// waitEvent waits until a job's log has an entry whose type or message holds text and
// returns the log (types and messages, without the console).
func waitEvent(t *testing.T, s *site, job, text string, d time.Duration) string {
	t.Helper()
	for end := time.Now().Add(d); ; time.Sleep(500 * time.Millisecond) {
		_, _, events := jobOf(t, s, job)
		var lines []string
		for _, e := range events {
			if e.Type != api.EventConsole {
				lines = append(lines, e.Type+" "+e.Message)
			}
		}
		log := strings.Join(lines, "\n")
		if strings.Contains(log, text) {
			return log
		}
		if time.Now().After(end) {
			t.Fatalf("job %s's log never showed %q:\n%s", job, text, log)
		}
	}
}

// qemuImgInfo is qemu-img info of an image another process may hold open.
func qemuImgInfo(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v\n%s", path, err, out)
	}
	return string(out)
}
