package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// TestRecoverReplicated is issue 6's "done" through the real replication path: a source
// volume (a loop device) holding a bootable Linux is replicated by the agent and the
// replicator (separate lifeboat processes); the page is changed on the mounted source;
// a PIT is taken; `lifeboat recover --wait` launches a QEMU VM from it and the page
// fetched through the forwarded port is the changed one, and the recovered server
// reaches the source's network. The same with `lifeboat drill --wait`, which serves the
// same page but cannot reach the source's network.
func TestRecoverReplicated(t *testing.T) {
	needVMs(t)
	// The source's network: a web server on the host, reached by user-mode guests at
	// 10.0.2.2 unless they are isolated.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "source-network") })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	probe := fmt.Sprintf("if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.0.2.2 %d | grep -q source-network; then echo SOURCE-REACHED; else echo SOURCE-UNREACHABLE; fi\n",
		l.Addr().(*net.TCPAddr).Port)

	// The source server's disk: the bootable image on a loop device, mounted.
	img := testutil.BuildBootImage(t, testutil.BootImageOptions{SizeMiB: 256, Hostname: "web-src", Page: "version 1\n", Probe: probe})
	fi, _ := os.Stat(img)
	dev, _ := testutil.LoopDevice(t, fi.Size())
	copyInto(t, img, dev)
	mnt := testutil.Mount(t, dev)

	c := newCluster(t)
	recoverytest.KillVMsAtCleanup(t, c.dir)
	c.installAgent(dev)
	c.startAgent()
	c.waitState(3*time.Minute, api.StateContinuous)
	if err := os.WriteFile(filepath.Join(mnt, "www", "index.html"), []byte("version 2: changed on the source\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "sync")
	pit := c.snapshot()
	ctx := context.Background()
	if _, err := c.admin.SetLaunchSettings(ctx, c.agentID, webSettings(api.ProviderQEMU, "")); err != nil {
		t.Fatal(err)
	}

	want := "version 2: changed on the source\n"
	for _, kind := range []string{"recover", "drill"} {
		// The recovery takes the newest consistent PIT (consistency points come every
		// 2 s here, so it may be newer than the one asked for, with the same page);
		// the drill names the PIT.
		args := []string{kind, c.agentID, "--wait"}
		if kind == "drill" {
			args = append(args, "--pit", pit.ID)
		}
		out := c.cli(args...)
		t.Logf("lifeboat %s --wait:\n%s", kind, out)
		jobID, _, _ := strings.Cut(out, "\n")
		j, err := c.admin.Job(ctx, strings.TrimSpace(jobID))
		if err != nil {
			t.Fatal(err)
		}
		s := j.Servers[0]
		if s.LaunchStatus != api.LaunchLaunched || s.RTOSeconds == nil || j.IsDrill != (kind == "drill") {
			t.Fatalf("%s job %+v, want LAUNCHED", kind, j)
		}
		ri, err := c.admin.RecoveryInstance(ctx, s.RecoveryInstanceID)
		if err != nil {
			t.Fatal(err)
		}
		if ri.SnapshotTime.Before(pit.Time) || (kind == "drill" && ri.SnapshotID != pit.ID) {
			t.Fatalf("the %s used PIT %s of %s; the PIT taken after the change is %s of %s", kind, ri.SnapshotID, ri.SnapshotTime, pit.ID, pit.Time)
		}
		if got := page(t, ri); got != want {
			t.Fatalf("the %s instance serves %q, want %q", kind, got, want)
		}
		console := consoleUntil(t, ri.ProviderHandle.ConsoleLog, testutil.ProbeEndMarker)
		reached := strings.Contains(console, "SOURCE-REACHED")
		if kind == "recover" && !reached {
			t.Fatalf("the recovered server could not reach the source's network:\n%s", console)
		}
		if kind == "drill" && (reached || !strings.Contains(console, "SOURCE-UNREACHABLE")) {
			t.Fatalf("the drill reached the source's network:\n%s", console)
		}
		t.Logf("%s: RTO %.1f s (to the page answering), PIT age %.0f s", kind, *s.RTOSeconds, ri.PITAgeSeconds)
	}
	c.cli("recovery-instances", "terminate", "--drills", "--wait")
	list, err := c.admin.RecoveryInstances(ctx, api.RecoveryInstanceFilter{})
	if err != nil || len(list.Items) != 1 || list.Items[0].IsDrill {
		t.Fatalf("after terminating the drills: %+v %v", list.Items, err)
	}
	c.cli("recovery-instances", "terminate", list.Items[0].ID, "--wait")
}

// copyInto writes an image onto a block device.
func copyInto(t *testing.T, img, dev string) {
	t.Helper()
	src, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
