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
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/launch/libvirt"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// The libvirt site of the tests: a bridge on this host the recovered domains join,
// with the host at .1, and the address conversion gives the recovered server.
const (
	lvBridge   = "lbe2ebr0"
	lvHost     = "192.168.150.1"
	lvGuest    = "192.168.150.10"
	lvPool     = "lbe2e"
	lvGuestNet = lvGuest + "/24"
)

// TestRecoverOnALibvirtSite: a bootable server recovers into a libvirt site reached
// through a remote-style URI (qemu+tcp to a libvirtd of its own): its disk is uploaded
// into the site's pool, the domain joins a bridge of this host, and the page is served
// at the address conversion gave it; it reaches the host's network. A drill of it boots
// on a network of its own and reaches nothing. Terminate leaves no domain, volume or
// network behind, as the libvirt API says. A launch into an existing, tagged, shut-off
// domain writes the PIT into its volume.
func TestRecoverOnALibvirtSite(t *testing.T) {
	needVMs(t)
	d := testutil.StartLibvirtd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	lv, err := libvirt.Dial(ctx, libvirt.Config{URI: d.TCPURI})
	if err != nil {
		t.Fatal(err)
	}
	defer lv.Close()
	if _, err := lv.EnsurePool(ctx, lvPool, d.PoolDir(t, lvPool)); err != nil {
		t.Fatal(err)
	}
	hostBridge(t)
	port := serveOn(t, lvHost)
	probe := fmt.Sprintf("if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 %s %d | grep -q source-network; then echo SOURCE-REACHED; else echo SOURCE-UNREACHABLE; fi\n", lvHost, port)
	img := testutil.BuildBootImage(t, testutil.BootImageOptions{SizeMiB: 128, Hostname: "web-lv", Page: "recovered on libvirt\n", Probe: probe})

	s := startSite(t, nil)
	s.must("sites", "create", "dr", "--provider", "libvirt", "--uri", d.TCPURI, "--pool", lvPool)
	tmpl, err := s.admin.ReplicationTemplate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.TargetSite = "dr"
	if _, err := s.admin.SetReplicationTemplate(ctx, tmpl); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(img)
	server := recoverytest.Server(t, s.cp, "web-lv", map[string]int64{"vda": fi.Size()})
	if server.SiteID != "dr" {
		t.Fatalf("the server recovers into site %q, not dr", server.SiteID)
	}
	recoverytest.PIT(t, s.cp, s.repo, server, consistency.Filesystem, time.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: img})
	ls := api.DefaultLaunchSettings(1, 512<<20)
	ls.BootMode, ls.IP = api.BootKernel, lvGuestNet
	ls.Network = api.LaunchNetwork{Mode: api.NetworkBridge, Bridge: lvBridge}
	ls.PostLaunchActions = []api.PostLaunchAction{{Name: "page", Type: "http-check", URL: "http://" + lvGuest + "/", TimeoutSeconds: 600}}
	if _, err := s.admin.SetLaunchSettings(ctx, server.ID, ls); err != nil {
		t.Fatal(err)
	}

	id := s.must("recover", server.ID, "--wait")
	job, ri, _ := jobOf(t, s, id)
	if job.Servers[0].LaunchStatus != api.LaunchLaunched || ri.Provider != api.ProviderLibvirt || ri.SiteID != "dr" {
		t.Fatalf("recovery on the libvirt site: %+v, instance %+v", job.Servers[0], ri)
	}
	t.Logf("recovery RTO on libvirt (to the page answering): %.1f s", *job.Servers[0].RTOSeconds)
	if got := fetch(t, "http://"+lvGuest+"/index.html"); got != "recovered on libvirt\n" {
		t.Fatalf("the recovered domain serves %q", got)
	}
	if c := consoleUntil(t, ri.ProviderHandle.ConsoleLog, testutil.ProbeEndMarker); !strings.Contains(c, "SOURCE-REACHED") {
		t.Fatalf("the recovered domain did not reach the host's network:\n%s", c)
	}
	if !hasLifeboat(t, ctx, lv) {
		t.Fatal("the libvirt host shows no domain or volume of the recovery")
	}

	drill := s.must("drill", server.ID, "--wait")
	dj, dri, _ := jobOf(t, s, drill)
	if dj.Servers[0].LaunchStatus != api.LaunchLaunched || !dri.IsDrill {
		t.Fatalf("drill: %+v", dj.Servers[0])
	}
	if c := consoleUntil(t, dri.ProviderHandle.ConsoleLog, testutil.ProbeEndMarker); !strings.Contains(c, "SOURCE-UNREACHABLE") {
		t.Fatalf("the drill reached the host's network:\n%s", c)
	}
	s.must("recovery-instances", "terminate", ri.ID, dri.ID, "--wait")
	if hasLifeboat(t, ctx, lv) {
		t.Fatal("terminate left domains, volumes or networks on the libvirt host")
	}
	launchIntoDomain(t, ctx, s, d, lv, server.ID, img)
	recoverIntoADownHost(t, ctx, s, img)
}

// recoverIntoADownHost: a site whose libvirt does not answer fails the launch at
// PREPARE with the reason, and nothing is made for it.
func recoverIntoADownHost(t *testing.T, ctx context.Context, s *site, img string) {
	down := fmt.Sprintf("qemu+tcp://127.0.0.1:%d/system", testutil.FreePort(t))
	s.must("sites", "create", "down", "--provider", "libvirt", "--uri", down)
	tmpl, err := s.admin.ReplicationTemplate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.TargetSite = "down"
	if _, err := s.admin.SetReplicationTemplate(ctx, tmpl); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(img)
	server := recoverytest.Server(t, s.cp, "web-down", map[string]int64{"vda": fi.Size()})
	recoverytest.PIT(t, s.cp, s.repo, server, consistency.Filesystem, time.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: img})
	job, err := s.admin.StartRecovery(ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: server.ID}}})
	if err != nil {
		t.Fatal(err)
	}
	js := recoverytest.WaitJob(t, s.admin, job.ID, 3*time.Minute).Servers[0]
	if js.LaunchStatus != api.LaunchFailed || js.Step != api.StepPrepare || !strings.Contains(js.Error, "does not answer") {
		t.Fatalf("a recovery into a libvirt host that is down: %+v", js)
	}
	if _, err := os.Stat(filepath.Join(s.cp.DataDir(), "recovery", js.RecoveryInstanceID)); !os.IsNotExist(err) {
		t.Errorf("the failed launch left its directory: %v", err)
	}
}

// launchIntoDomain: a shut-off domain tagged in its metadata, with an old copy of the
// server in its volume, is registered and launched into; its volume then holds the PIT.
func launchIntoDomain(t *testing.T, ctx context.Context, s *site, d *testutil.Libvirtd, lv *libvirt.Client, server, img string) {
	old := filepath.Join(t.TempDir(), "old.raw")
	testutil.Run(t, "cp", "--sparse=always", img, old)
	testutil.SetFileInImage(t, old, "/www/index.html", "the domain's old page\n")
	f, err := os.Open(old)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	if err := lv.UploadVolume(ctx, libvirt.UploadSpec{Pool: lvPool, Name: "lbe2e-target.raw", Source: f, Size: fi.Size()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lv.DeleteVolume(context.Background(), lvPool, "lbe2e-target.raw") })
	xml := filepath.Join(t.TempDir(), "target.xml")
	dom := fmt.Sprintf(`<domain type='qemu'><name>lbe2e-target</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<metadata><lifeboat:instance xmlns:lifeboat="https://lifeboat.dev/xmlns/instance"><lifeboat:allow-launch>true</lifeboat:allow-launch></lifeboat:instance></metadata>
<os><type arch='x86_64' machine='q35'>hvm</type></os>
<devices><disk type='volume' device='disk'><driver name='qemu' type='raw'/><source pool='%s' volume='lbe2e-target.raw'/><target dev='vda' bus='virtio'/></disk>
<interface type='bridge'><source bridge='%s'/><model type='virtio'/></interface></devices></domain>`, lvPool, lvBridge)
	if err := os.WriteFile(xml, []byte(dom), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := d.Virsh("define", xml); err != nil {
		t.Fatalf("define the target domain: %v %s", err, out)
	}
	t.Cleanup(func() { _, _ = d.Virsh("undefine", "lbe2e-target") })
	in := s.must("instances", "add", "--site", "dr", "--name", "lbe2e-target")
	cur, err := s.admin.LaunchSettings(ctx, server)
	if err != nil {
		t.Fatal(err)
	}
	ls := cur.Settings
	ls.Provider, ls.TargetInstanceID, ls.BootMode, ls.StartAfterLaunch = api.ProviderExistingInstance, in, api.BootBIOS, false
	ls.PostLaunchActions = nil
	if _, err := s.admin.SetLaunchSettings(ctx, server, ls); err != nil {
		t.Fatal(err)
	}
	id := s.must("recover", server, "--force", "--wait")
	job, ri, _ := jobOf(t, s, id)
	if job.Servers[0].LaunchStatus != api.LaunchLaunched || ri.ProviderHandle.InstanceID != "lbe2e-target" {
		t.Fatalf("launch into the domain: %+v %+v", job.Servers[0], ri.ProviderHandle)
	}
	// Only what differs travels: the page and what conversion changed, a few 1 MiB
	// blocks of the 128 (the job's log says how many).
	log := waitEvent(t, s, id, "blocks (the ones that differ)", time.Minute)
	var wrote, of int
	if i := strings.Index(log, "wrote "); i < 0 {
		t.Fatalf("no count of written blocks in the log:\n%s", log)
	} else if _, err := fmt.Sscanf(log[i:], "wrote %d of %d blocks", &wrote, &of); err != nil || wrote < 1 || wrote > 8 || of != 128 {
		t.Fatalf("the launch into the domain wrote %d of %d blocks (%v):\n%s", wrote, of, err, log)
	}
	t.Logf("launch into the domain wrote %d of %d blocks of 1 MiB", wrote, of)
	// The volume is the PIT as conversion left it (the runner's image of it).
	want := fileSum(t, filepath.Join(ri.ProviderHandle.Dir, "disk0.raw"))
	if !testutil.LibvirtVolumeIs(t, ctx, lv, lvPool, "lbe2e-target.raw", fi.Size(), want) {
		t.Fatal("the domain's volume is not the converted PIT")
	}
	s.must("recovery-instances", "terminate", ri.ID, "--wait")
	if st, err := lv.State(ctx, "lbe2e-target"); err != nil || st != libvirt.StateShutoff {
		t.Fatalf("the domain launched into, after terminate: %s %v", st, err)
	}
}

// hostBridge makes the bridge the recovered domains join, with this host on it.
func hostBridge(t *testing.T) {
	t.Helper()
	testutil.Run(t, "ip", "link", "add", lvBridge, "type", "bridge")
	t.Cleanup(func() { _, _ = testutil.Output("ip", "link", "del", lvBridge) })
	testutil.Run(t, "ip", "addr", "add", lvHost+"/24", "dev", lvBridge)
	testutil.Run(t, "ip", "link", "set", lvBridge, "up")
}

// serveOn serves "source-network" on host:random port until the test ends.
func serveOn(t *testing.T, host string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "source-network") })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

func fetch(t *testing.T, url string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("fetch %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// hasLifeboat reports whether the libvirt host has domains, volumes or networks a
// recovery made (named lifeboat-…).
func hasLifeboat(t *testing.T, ctx context.Context, lv *libvirt.Client) bool {
	t.Helper()
	doms, err := lv.Domains(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vols, err := lv.Volumes(ctx, lvPool)
	if err != nil {
		t.Fatal(err)
	}
	nets, err := lv.Networks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, names := range [][]string{doms, vols, nets} {
		for _, n := range names {
			if strings.HasPrefix(n, "lifeboat-") {
				t.Logf("on the libvirt host: %s", n)
				found = true
			}
		}
	}
	return found
}
