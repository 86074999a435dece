package launch_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
	"github.com/lifeboat-dr/lifeboat/internal/launch/libvirt"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

const lbPool = "lbtest-pool"

// libvirtSite starts a private libvirtd with a directory pool and returns a client and
// the site reaching it over TCP.
func libvirtSite(t *testing.T) (*testutil.Libvirtd, *libvirt.Client, launch.LibvirtSite) {
	t.Helper()
	d := testutil.StartLibvirtd(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := libvirt.Dial(ctx, libvirt.Config{URI: d.TCPURI})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.EnsurePool(ctx, lbPool, d.PoolDir(t, lbPool)); err != nil {
		t.Fatal(err)
	}
	return d, c, launch.LibvirtSite{Name: "lbtest-site", URI: d.TCPURI, Pool: lbPool}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// logBuffer collects a provider's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *logBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func options(w io.Writer) launch.Options {
	return launch.Options{Host: "cp-test", Logger: slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))}
}

func drillRequest(t *testing.T, id string, size int64) launch.Request {
	s := api.DefaultLaunchSettings(1, 512<<20)
	s.Provider = "libvirt"
	return launch.Request{RecoveryInstanceID: id, Volumes: []launch.Volume{{Name: "vda", SizeBytes: size}},
		Settings: s, Drill: true, Isolated: true, Dir: t.TempDir()}
}

func wantRefusal(t *testing.T, err error, says string) {
	t.Helper()
	var r *launch.Refusal
	if !errors.As(err, &r) || !strings.Contains(r.Reason, says) {
		t.Fatalf("want a refusal saying %q, got %v", says, err)
	}
}

func TestLibvirtPlanRefusesHostDown(t *testing.T) {
	uri := fmt.Sprintf("qemu+tcp://127.0.0.1:%d/system", testutil.FreePort(t))
	p := launch.NewLibvirt(launch.LibvirtSite{Name: "down", URI: uri}, launch.Options{})
	req := drillRequest(t, "lbtest-down", 1<<20)
	_, err := p.Plan(context.Background(), req)
	wantRefusal(t, err, "libvirt at "+uri+" does not answer")
	if ents, _ := os.ReadDir(req.Dir); len(ents) != 0 {
		t.Fatalf("a refused plan made %v", ents)
	}
}

func TestLibvirtPlanRefusesWhatTheSiteCannotDo(t *testing.T) {
	d, c, site := libvirtSite(t)
	ctx := ctxFor(t)
	req := drillRequest(t, "lbtest-r", 1<<20)
	noPool := site
	noPool.Pool = "lbtest-nopool"
	_, err := launch.NewLibvirt(noPool, launch.Options{}).Plan(ctx, req)
	wantRefusal(t, err, "storage pool lbtest-nopool does not exist")
	p := launch.NewLibvirt(site, launch.Options{})
	user := req
	user.Isolated, user.Settings.Network.Mode = false, api.NetworkUser
	_, err = p.Plan(ctx, user)
	wantRefusal(t, err, `libvirt network "default", which does not exist`)
	fwd := req
	fwd.Settings.Network.PortForwards = []api.PortForward{{Protocol: "tcp", GuestPort: 80}}
	_, err = p.Plan(ctx, fwd)
	wantRefusal(t, err, "no port forwards")
	instant := req
	instant.Settings.Instant = true
	_, err = p.Plan(ctx, instant)
	wantRefusal(t, err, "instant launch is not available on libvirt sites")
	assertLibvirtEmpty(t, c)
	_ = d
}

// TestLibvirtDrillLaunchAndTerminate launches a drill from a bootable disk (direct
// kernel boot, as the e2e tests do) on a fresh isolated network, sees it boot on the
// captured console, and terminates it twice: nothing is left.
func TestLibvirtDrillLaunchAndTerminate(t *testing.T) {
	d, c, site := libvirtSite(t)
	ctx := ctxFor(t)
	img := testutil.BuildBootImage(t, testutil.BootImageOptions{SizeMiB: 128, Hostname: "lbtest-web"})
	var logs logBuffer
	p := launch.NewLibvirt(site, options(&logs))
	req := drillRequest(t, "lbtest-ri1", 128<<20)
	req.Settings.BootMode = api.BootKernel
	plan, err := p.Plan(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Disks) != 1 || plan.Disks[0].Mode != launch.WriteFresh || !strings.HasPrefix(plan.Disks[0].Path, req.Dir) {
		t.Fatalf("plan %+v", plan)
	}
	testutil.Run(t, "cp", "--sparse=always", img, plan.Disks[0].Path) // the runner materializes the PIT here
	start := time.Now()
	l, err := p.Launch(ctx, req, plan, launch.Extras{})
	if err != nil {
		t.Fatalf("%v\nprovider:\n%s\nlibvirtd:\n%s", err, logs.String(), d.Output())
	}
	t.Logf("launched in %v: %+v", time.Since(start), l)
	h := l.Handle
	if l.State != api.InstanceRunning || h.InstanceID != "lifeboat-lbtest-ri1" || len(h.Disks) != 1 || h.ConsoleLog == "" {
		t.Fatalf("launched %+v", l)
	}
	if active, err := c.NetworkActive(ctx, "lifeboat-lbtest-ri1-isolated"); err != nil || !active {
		t.Fatalf("the drill's isolated network: active %v (%v)", active, err)
	}
	if st, err := p.State(ctx, h); err != nil || st != api.InstanceRunning {
		t.Fatalf("state %s (%v)", st, err)
	}
	waitConsole(t, h.ConsoleLog, testutil.BootedMarker+" lbtest-web", 3*time.Minute)
	t.Logf("booted to %s %v after launch", testutil.BootedMarker, time.Since(start))
	for i := 0; i < 2; i++ {
		if err := p.Terminate(ctx, h); err != nil {
			t.Fatalf("terminate #%d: %v", i+1, err)
		}
	}
	assertLibvirtEmpty(t, c)
	if _, err := os.Stat(req.Dir); !os.IsNotExist(err) {
		t.Fatalf("the recovery's directory is still there (%v)", err)
	}
	if st, err := p.State(ctx, h); err != nil || st != api.InstanceStopped {
		t.Fatalf("state after terminate %s (%v)", st, err)
	}
}

// waitConsole waits until the console log holds want.
func waitConsole(t *testing.T, path, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if bytes.Contains(b, []byte(want)) {
			return
		}
		if time.Now().After(deadline) || bytes.Contains(b, []byte("Kernel panic")) {
			t.Fatalf("the console did not show %q within %v; it shows:\n%s", want, timeout, tail(b))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(b []byte) string {
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// assertLibvirtEmpty checks through the API that no domain, network or volume is left.
func assertLibvirtEmpty(t *testing.T, c *libvirt.Client) {
	t.Helper()
	ctx := ctxFor(t)
	if doms, err := c.Domains(ctx); err != nil || len(doms) != 0 {
		t.Errorf("domains left: %v (%v)", doms, err)
	}
	if nets, err := c.Networks(ctx); err != nil || len(nets) != 0 {
		t.Errorf("networks left: %v (%v)", nets, err)
	}
	if vols, err := c.Volumes(ctx, lbPool); err != nil || len(vols) != 0 {
		t.Errorf("volumes left: %v (%v)", vols, err)
	}
}

// existingDomainXML is a domain its owner made, with one disk in the pool; tagged
// when allow is set.
func existingDomainXML(name, vol string, allow bool) string {
	meta := ""
	if allow {
		meta = `<metadata><lifeboat:allow-launch xmlns:lifeboat="` + libvirt.MetadataNS + `">true</lifeboat:allow-launch></metadata>`
	}
	return `<domain type="qemu"><name>` + name + `</name>` + meta + `<memory unit="MiB">128</memory><vcpu>1</vcpu>
<os><type arch="x86_64">hvm</type></os><devices>
<disk type="volume" device="disk"><driver name="qemu" type="raw"/><source pool="` + lbPool + `" volume="` + vol + `"/><target dev="vda" bus="virtio"/></disk>
<interface type="network"><source network="lbtest-prod"/><model type="virtio"/></interface>
<serial type="pty"/><console type="pty"/></devices></domain>`
}

func defineExisting(t *testing.T, d *testutil.Libvirtd, c *libvirt.Client, name string, allow bool, content []byte) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(f, content, 0o600); err != nil {
		t.Fatal(err)
	}
	src, _ := os.Open(f)
	defer src.Close()
	if err := c.UploadVolume(ctxFor(t), libvirt.UploadSpec{Pool: lbPool, Name: name + ".raw", Source: src, Size: int64(len(content))}); err != nil {
		t.Fatal(err)
	}
	x := filepath.Join(t.TempDir(), "dom.xml")
	if err := os.WriteFile(x, []byte(existingDomainXML(name, name+".raw", allow)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := d.Virsh("define", x); err != nil {
		t.Fatalf("define %s: %v %s", name, err, out)
	}
}

// TestLibvirtLaunchIntoExistingDomain writes a PIT that differs in 3 blocks into a
// tagged, shut-off domain's volume (3 blocks written), starts it, and refuses an
// untagged domain and a running one; terminate stops the domain and keeps it.
func TestLibvirtLaunchIntoExistingDomain(t *testing.T) {
	d, c, site := libvirtSite(t)
	ctx := ctxFor(t)
	const size = 16 << 20
	old := make([]byte, size)
	_, _ = rand.Read(old)
	if err := c.CreateIsolatedNetwork(ctx, "lbtest-prod"); err != nil { // the domains' own network
		t.Fatal(err)
	}
	defineExisting(t, d, c, "lbtest-existing", true, old)
	defineExisting(t, d, c, "lbtest-untagged", false, old)
	var logs logBuffer
	p := launch.NewLibvirt(site, options(&logs))
	req := drillRequest(t, "lbtest-ri2", size)
	req.Target = &api.Instance{ID: "inst-1", Name: "lbtest-untagged"}
	_, err := p.Plan(ctx, req)
	wantRefusal(t, err, "does not allow launching into it")

	req.Target = &api.Instance{ID: "inst-2", Name: "lbtest-existing"}
	plan, err := p.Plan(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	pit := bytes.Clone(old)
	pit[3] ^= 1
	pit[7<<20] ^= 1
	pit[size-1] ^= 1
	if err := os.WriteFile(plan.Disks[0].Path, pit, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := p.Launch(ctx, req, plan, launch.Extras{})
	if err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "blocks=16 differing=3 bytes=3145728") {
		t.Fatalf("the launch did not write exactly the 3 differing blocks:\n%s", logs.String())
	}
	if l.State != api.InstanceRunning || l.Handle.InstanceID != "lbtest-existing" || len(l.Handle.Disks) != 0 {
		t.Fatalf("launched %+v", l)
	}
	if live, err := d.Virsh("dumpxml", "lbtest-existing"); err != nil || !strings.Contains(live, "<link state='down'/>") {
		t.Fatalf("the drill's domain is not cut off its network (%v):\n%s", err, live)
	}
	if !testutil.LibvirtVolumeIs(t, ctx, c, lbPool, "lbtest-existing.raw", size, sha256.Sum256(pit)) {
		t.Fatal("the domain's volume is not the PIT")
	}
	_, err = p.Plan(ctx, req)
	wantRefusal(t, err, "is running, not shut off")
	if err := p.Terminate(ctx, l.Handle); err != nil {
		t.Fatal(err)
	}
	if st, err := c.State(ctx, "lbtest-existing"); err != nil || st != libvirt.StateShutoff {
		t.Fatalf("the existing domain after terminate: %s (%v)", st, err)
	}
	if _, err := c.Volume(ctx, lbPool, "lbtest-existing.raw"); err != nil {
		t.Fatalf("terminate deleted the existing domain's volume: %v", err)
	}
	if def, err := d.Virsh("dumpxml", "--inactive", "lbtest-existing"); err != nil || strings.Contains(def, "<link") || !strings.Contains(def, "lbtest-prod") {
		t.Fatalf("the domain's definition changed (%v):\n%s", err, def)
	}
	if err := p.Resume(ctx, l.Handle); err == nil || !strings.Contains(err.Error(), "launch into it again") {
		t.Fatalf("resuming a shut-off domain launched into: %v", err)
	}
}

func TestLibvirtPlanRefusesRefusedCredentials(t *testing.T) {
	d := testutil.StartLibvirtdWith(t, testutil.LibvirtdOptions{TLS: true})
	ctx := ctxFor(t)
	p := launch.NewLibvirt(launch.LibvirtSite{Name: "tls", URI: d.TLSURI, Credentials: d.UntrustedTLSCredentials, Pool: lbPool}, launch.Options{})
	req := drillRequest(t, "lbtest-creds", 1<<20)
	_, err := p.Plan(ctx, req)
	wantRefusal(t, err, "libvirt at "+d.TLSURI+" refuses the connection")
	c, err := libvirt.Dial(ctx, libvirt.Config{URI: d.TLSURI, Credentials: d.TLSCredentials})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if doms, err := c.Domains(ctx); err != nil || len(doms) != 0 {
		t.Fatalf("domains after a refused plan: %v (%v)", doms, err)
	}
	if ents, _ := os.ReadDir(req.Dir); len(ents) != 0 {
		t.Fatalf("a refused plan made %v", ents)
	}
}
