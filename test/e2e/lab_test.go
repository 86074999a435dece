package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/launch/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// labServer is one of the lab's web servers: a QEMU VM booted from its own disk image,
// the Lifeboat agent running inside it (installed at first boot), serving its page.
type labServer struct {
	name   string
	image  string
	port   int // the host port forwarded to its port 80
	vm     *qemu.VM
	server api.SourceServer
}

// labCGI lets the test change a server's page over HTTP (busybox httpd runs it).
const labCGI = `#!/bin/sh
cat > /www/index.html
sync
printf 'Content-Type: text/plain\r\n\r\nwritten\n'
`

// labProbe runs at every boot of a lab server once its network is up: the first boot
// registers the agent (its install token is in the image), every boot starts it. A
// recovered copy (a recovery instance) has a configuration without an identity: its
// agent waits for reversed replication.
func labProbe(cpURL, name string) string {
	return fmt.Sprintf(`chmod 755 /www/cgi-bin/write
export PATH=/usr/local/sbin:$PATH
if [ -f /etc/lifeboat/install.token ]; then
  lifeboat agent install --server %s --token-file /etc/lifeboat/install.token --volume /dev/vda --no-service --machine-id lab-%s && rm -f /etc/lifeboat/install.token
fi
lifeboat agent run --log-level info --verify-every 0 >/dev/console 2>&1 &
echo agent started
`, cpURL, name)
}

// newLabServer builds a server's disk image and boots it.
func newLabServer(t *testing.T, c *cluster, name, cpURL string) *labServer {
	t.Helper()
	tok, err := c.admin.CreateToken(context.Background(), api.CreateTokenRequest{Kind: api.TokenInstall, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	img := testutil.BuildBootImage(t, testutil.BootImageOptions{SizeMiB: 256, Hostname: name, Page: name + " v1\n",
		Probe: labProbe(cpURL, name), Files: map[string]string{"/usr/sbin/lifeboat": string(bin),
			"/etc/lifeboat/install.token": tok.Secret + "\n", "/www/cgi-bin/write": labCGI}})
	s := &labServer{name: name, image: img, port: testutil.FreePort(t)}
	s.boot(t, c.dir)
	return s
}

// boot starts the server's VM from its disk (its own kernel, extracted from it).
func (s *labServer) boot(t *testing.T, dir string) {
	t.Helper()
	ctx := context.Background()
	vmDir := filepath.Join(dir, "vm-"+s.name)
	_ = os.RemoveAll(vmDir)
	b, err := qemu.ExtractBoot(ctx, s.image, filepath.Join(dir, "boot-"+s.name))
	if err != nil {
		t.Fatal(err)
	}
	s.vm, err = qemu.Start(ctx, qemu.Config{Name: s.name, Dir: vmDir, MemoryMiB: 512, Disks: []qemu.Disk{{Path: s.image, Format: "raw"}},
		Boot: b, Network: qemu.Network{PortForwards: []qemu.PortForward{{GuestPort: 80, HostPort: s.port}}}, StopTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
}

// kill ends the server's VM at once: the disaster.
func (s *labServer) kill(t *testing.T) {
	t.Helper()
	if err := s.vm.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = s.vm.Wait(context.Background())
}

// httpGet fetches a URL (bounded), returning "" while it does not answer 200.
func httpGet(url string) string {
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != 200 {
		return ""
	}
	return string(b)
}

// waitPage waits until url serves want.
func waitPage(t *testing.T, url, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	got := ""
	for time.Now().Before(deadline) {
		if got = httpGet(url); got == want {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("%s served %q within %s, want %q", url, got, timeout, want)
}

// waitServer waits until a source server of that hostname is registered and in state.
func (c *cluster) waitServer(hostname string, timeout time.Duration, state string) api.SourceServer {
	c.t.Helper()
	return c.waitServerWhere(hostname, timeout, state, func(s api.SourceServer) bool { return s.Replication.DataReplicationState == state })
}

// waitServerWhere waits for the source server of hostname to be as ok says (what: the
// words for it in the failure).
func (c *cluster) waitServerWhere(hostname string, timeout time.Duration, what string, ok func(api.SourceServer) bool) api.SourceServer {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last api.SourceServer
	for time.Now().Before(deadline) {
		page, err := c.admin.ListSourceServers(context.Background(), api.SourceServerFilter{Full: true})
		if err == nil {
			for _, s := range page.Items {
				if s.Hostname == hostname && s.Reversed == nil {
					last = s
					if ok(s) {
						return s
					}
				}
			}
		}
		time.Sleep(time.Second)
	}
	c.t.Fatalf("source server %s did not reach %s within %s: %+v\n%s", hostname, what, timeout, last.Replication, c.logs())
	return last
}

// TestLab is the lab of the DRS material, with real VMs and a real load balancer: two
// web servers (QEMU VMs, the Lifeboat agent inside each) behind HAProxy, both
// replicated; the disaster kills both; both are recovered and HAProxy is pointed at the
// recovery instances; new content is written on them; they replicate back; one fails
// back into its original VM, the other through the failback client booted from the
// rescue ISO; HAProxy is pointed back; the original servers serve what was written
// during the failover, their agents replicate again with their old PITs; failback
// complete leaves no recovery instance and no reversed source server.
func TestLab(t *testing.T) {
	needVMs(t)
	testutil.RequireCommand(t, "haproxy", "haproxy")
	dir, err := os.MkdirTemp("", "lb-lab-") // QEMU's monitor socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	recoverytest.KillVMsAtCleanup(t, dir)
	c := newClusterWith(t, clusterOptions{advertise: "10.0.2.2", dir: dir})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(c.url, "https://"))
	cpURL := "https://10.0.2.2:" + port

	web := []*labServer{newLabServer(t, c, "web1", cpURL), newLabServer(t, c, "web2", cpURL)}
	for _, s := range web {
		waitPage(t, fmt.Sprintf("http://127.0.0.1:%d/", s.port), s.name+" v1\n", 3*time.Minute)
	}
	for _, s := range web {
		s.server = c.waitServer(s.name, 5*time.Minute, api.StateContinuous)
		t.Logf("%s replicates as %s", s.name, s.server.ID)
	}
	lb := startHAProxy(t, c, web[0].port, web[1].port)
	lb.wantSite(t, "web1 v1\n", "web2 v1\n")
	var before []api.RecoverySnapshot // the PITs from before the disaster
	for _, s := range web {
		before = append(before, c.snapshotOf(s.server.ID))
	}

	// The disaster: both servers are gone. Both are recovered; the site moves to them.
	for _, s := range web {
		s.kill(t)
	}
	ris := c.labRecover(web)
	lb.point(t, ris[0].PortForwards[0].HostPort, ris[1].PortForwards[0].HostPort)
	lb.wantSite(t, "web1 v1\n", "web2 v1\n")
	for i, ri := range ris {
		page := fmt.Sprintf("web%d v2, written during the failover\n", i+1)
		if got := httpPost(fmt.Sprintf("http://127.0.0.1:%d/cgi-bin/write", ri.PortForwards[0].HostPort), page); got != "written\n" {
			t.Fatalf("write on %s: %q", ri.ID, got)
		}
	}
	lb.wantSite(t, "web1 v2, written during the failover\n", "web2 v2, written during the failover\n")

	// The way home: both replicate back; web1 fails back into its own VM, web2 through
	// the failback client booted from the rescue ISO (its OS counted as lost).
	for _, ri := range ris {
		c.cli("recovery-instances", "reverse-replication", ri.ID)
	}
	for _, ri := range ris {
		c.waitFailbackState(ri.ID, api.FailbackReadyForLaunch, 6*time.Minute)
	}
	c.labFailbackIntoVM(web[0], ris[0])
	c.labFailbackThroughISO(web[1], ris[1], cpURL)
	lb.point(t, web[0].port, web[1].port)
	lb.wantSite(t, "web1 v2, written during the failover\n", "web2 v2, written during the failover\n")

	// Re-protected: the original servers replicate again, their old PITs still listed.
	for i, s := range web {
		back := c.waitServer(s.name, 5*time.Minute, api.StateContinuous)
		page, err := c.admin.RecoverySnapshots(context.Background(), back.ID, 1000, "")
		if back.ID != s.server.ID || err != nil || !slices.ContainsFunc(page.Items, func(p api.RecoverySnapshot) bool { return p.ID == before[i].ID }) {
			t.Fatalf("%s after failback: server %s (was %s), PIT %s listed: %v", s.name, back.ID, s.server.ID, before[i].ID, err)
		}
	}
	for _, ri := range ris {
		c.cli("failback", "complete", ri.ID, "--wait")
	}
	left, err := c.admin.RecoveryInstances(context.Background(), api.RecoveryInstanceFilter{})
	servers, err2 := c.admin.AllSourceServers(context.Background(), api.SourceServerFilter{})
	if err != nil || err2 != nil || len(left.Items) != 0 || len(servers) != 2 {
		t.Fatalf("after failback complete: %d recovery instances, %d source servers (want 0 and the 2 originals): %v %v", len(left.Items), len(servers), err, err2)
	}
}

// httpPost posts body to url and returns the answer ("" when it is not 200).
func httpPost(url, body string) string {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Post(url, "text/plain", strings.NewReader(body))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != 200 {
		return ""
	}
	return string(b)
}

// snapshotOf asks a server for a PIT now and waits for it.
func (c *cluster) snapshotOf(id string) api.RecoverySnapshot {
	cc := *c
	cc.agentID = id
	return cc.snapshot()
}

// labRecover recovers the lab's servers (QEMU, their page forwarded) and returns their
// recovery instances, in order.
func (c *cluster) labRecover(web []*labServer) []api.RecoveryInstance {
	t := c.t
	ctx := context.Background()
	args := []string{"recover"}
	for _, s := range web {
		if _, err := c.admin.SetLaunchSettings(ctx, s.server.ID, webSettings(api.ProviderQEMU, "")); err != nil {
			t.Fatal(err)
		}
		args = append(args, s.server.ID)
	}
	out := c.cli(append(args, "--wait")...)
	t.Logf("lifeboat recover --wait:\n%s", out)
	jobID, _, _ := strings.Cut(out, "\n")
	j, err := c.admin.Job(ctx, strings.TrimSpace(jobID))
	if err != nil {
		t.Fatal(err)
	}
	ris := make([]api.RecoveryInstance, len(web))
	for _, js := range j.Servers {
		ri, err := c.admin.RecoveryInstance(ctx, js.RecoveryInstanceID)
		if err != nil || js.LaunchStatus != api.LaunchLaunched || len(ri.PortForwards) != 1 {
			t.Fatalf("recovery of %s: %+v %+v (%v)", js.SourceServerID, js, ri, err)
		}
		for i, s := range web {
			if s.server.ID == js.SourceServerID {
				ris[i] = ri
			}
		}
	}
	return ris
}

// waitFailbackState waits until a recovery instance's failback state is want.
func (c *cluster) waitFailbackState(id, want string, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var ri api.RecoveryInstance
	var err error
	for time.Now().Before(deadline) {
		if ri, err = c.admin.RecoveryInstance(context.Background(), id); err == nil && ri.FailbackState == want {
			return
		}
		time.Sleep(2 * time.Second)
	}
	c.t.Fatalf("recovery instance %s is %q after %s, want %s (%v)\n%s", id, ri.FailbackState, timeout, want, err, c.logs())
}

// labFailbackIntoVM fails a recovery instance back into its origin's VM, registered as
// an instance: the control plane writes the differing blocks and starts the VM.
func (c *cluster) labFailbackIntoVM(s *labServer, ri api.RecoveryInstance) {
	t := c.t
	ls := webSettings(api.ProviderQEMU, "")
	ls.Network.PortForwards[0].HostPort = s.port // the origin's machine answers where it always did
	if _, err := c.admin.SetLaunchSettings(context.Background(), s.server.ID, ls); err != nil {
		t.Fatal(err)
	}
	inst := strings.TrimSpace(c.cli("instances", "add", "--name", s.name+"-origin", "--disk", s.image, "--boot-mode", "kernel",
		"--tag", "AWSDRS=AllowLaunchingIntoThisInstance"))
	out := c.cli("failback", "launch", ri.ID, "--into", inst, "--wait")
	t.Logf("lifeboat failback launch %s --into %s --wait:\n%s", ri.ID, inst, out)
	waitPage(t, fmt.Sprintf("http://127.0.0.1:%d/", s.port), s.name+" v2, written during the failover\n", 3*time.Minute)
}

// labFailbackThroughISO boots the origin's machine from the rescue ISO: the failback
// client registers, the failback writes the differing blocks, the machine reboots
// (here: QEMU exits) and then boots its own, restored disk.
func (c *cluster) labFailbackThroughISO(s *labServer, ri api.RecoveryInstance, cpURL string) {
	t := c.t
	ctx := context.Background()
	tok, err := c.admin.CreateToken(ctx, api.CreateTokenRequest{Kind: api.TokenInstall, Scope: api.ScopeFailback, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	iso := filepath.Join(c.dir, "rescue.iso")
	c.cli("failback-client", "build-iso", "--out", iso, "--server", cpURL, "--token-file", c.tokenFile("failback.token", tok.Secret),
		"--append", "lifeboat.disk=vda")
	serial := filepath.Join(c.dir, "rescue-serial.log")
	qm := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-display", "none", "-monitor", "none", "-no-reboot",
		"-serial", "file:"+serial, "-cdrom", iso, "-boot", "d", "-drive", "file="+s.image+",if=virtio,format=raw",
		"-netdev", "user,id=n", "-device", "virtio-net-pci,netdev=n")
	testutil.StartProcess(t, qm)
	exited := make(chan error, 1)
	go func() { exited <- qm.Wait() }()
	var fc string
	for deadline := time.Now().Add(3 * time.Minute); fc == ""; time.Sleep(time.Second) {
		if l, err := c.admin.FailbackClients(ctx); err == nil && len(l.Items) == 1 {
			fc = l.Items[0].ID
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(serial)
			t.Fatalf("the failback client booted from the ISO did not register:\n%s", tail(string(b), 40))
		}
	}
	out := c.cli("failback", "launch", ri.ID, "--into", fc, "--wait")
	t.Logf("lifeboat failback launch %s --into %s --wait:\n%s", ri.ID, fc, out)
	select {
	case <-exited:
	case <-time.After(3 * time.Minute):
		t.Fatal("the rescue media did not reboot after the failback")
	}
	if b, _ := os.ReadFile(serial); !strings.Contains(string(b), "LIFEBOAT-RESCUE-REBOOT") {
		t.Fatalf("the rescue media ended without LIFEBOAT-RESCUE-REBOOT:\n%s", tail(string(b), 40))
	}
	s.boot(t, c.dir)
	waitPage(t, fmt.Sprintf("http://127.0.0.1:%d/", s.port), s.name+" v2, written during the failover\n", 3*time.Minute)
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// haproxy is the lab's load balancer: a frontend on 127.0.0.1, a backend of two web
// servers whose addresses the test sets through the runtime API.
type haproxy struct {
	port   int
	socket string
}

func startHAProxy(t *testing.T, c *cluster, p1, p2 int) *haproxy {
	t.Helper()
	h := &haproxy{port: testutil.FreePort(t), socket: filepath.Join(c.dir, "haproxy.sock")}
	cfg := fmt.Sprintf(`global
  stats socket %s mode 600 level admin
  maxconn 200
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend site
  bind 127.0.0.1:%d
  default_backend web
backend web
  balance roundrobin
  server web1 127.0.0.1:%d
  server web2 127.0.0.1:%d
`, h.socket, h.port, p1, p2)
	path := filepath.Join(c.dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c.startCmd("haproxy", "haproxy", "-f", path, "-db")
	testutil.WaitTCP(t, fmt.Sprintf("127.0.0.1:%d", h.port), 30*time.Second)
	return h
}

// point sets the backend's two servers' addresses (HAProxy's runtime API).
func (h *haproxy) point(t *testing.T, p1, p2 int) {
	t.Helper()
	for i, p := range []int{p1, p2} {
		conn, err := net.DialTimeout("unix", h.socket, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "set server web/web%d addr 127.0.0.1 port %d\n", i+1, p)
		b, _ := io.ReadAll(conn)
		conn.Close()
		if !strings.Contains(string(b), "changed") && !strings.Contains(string(b), "no need to change") {
			t.Fatalf("HAProxy refused the new address of web%d: %q", i+1, b)
		}
	}
}

// wantSite checks that the site, through HAProxy, serves both pages (round robin).
func (h *haproxy) wantSite(t *testing.T, pages ...string) {
	t.Helper()
	url := fmt.Sprintf("http://127.0.0.1:%d/", h.port)
	seen := map[string]bool{}
	deadline := time.Now().Add(2 * time.Minute)
	for len(seen) < len(pages) && time.Now().Before(deadline) {
		got := httpGet(url)
		if slices.Contains(pages, got) {
			seen[got] = true
		} else {
			time.Sleep(500 * time.Millisecond)
		}
	}
	if len(seen) < len(pages) {
		t.Fatalf("the site through HAProxy served %v, want every one of %q", seen, pages)
	}
}
