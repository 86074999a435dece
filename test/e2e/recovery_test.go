// Package e2e holds Lifeboat's end-to-end tests: real control plane, real staging store,
// real QEMU VMs booting a real (tiny) Linux, driven through the command line.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
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
	"github.com/lifeboat-dr/lifeboat/internal/cli"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// site is a control plane with a staging store, and the command line pointed at it.
type site struct {
	t     *testing.T
	cfg   controlplane.Config
	cp    *controlplane.ControlPlane
	stop  func()
	repo  *store.Repo
	admin *api.Client
	token string
	// tokenFile holds token, for --token-file (a token in argv warns).
	tokenFile string
	ca        string
}

func needVMs(t *testing.T) {
	t.Helper()
	testutil.RequireCommand(t, "qemu-system-x86_64", "qemu-system-x86")
	testutil.RequireCommand(t, "debugfs", "e2fsprogs")
}

// startSite starts a control plane in a short temporary directory (QEMU's monitor
// socket paths must stay short); every VM under it is killed when the test ends.
func startSite(t *testing.T, configure func(*controlplane.Config)) *site {
	t.Helper()
	dir, err := os.MkdirTemp("", "lb-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	recoverytest.KillVMsAtCleanup(t, dir) // runs before the directory is removed
	s := &site{t: t, cfg: controlplane.Config{DataDir: dir, Listen: "127.0.0.1:0"}}
	if testing.Verbose() {
		s.cfg.Logger = testLogger(t)
	}
	if configure != nil {
		configure(&s.cfg)
	}
	s.open()
	tok, err := s.cp.CreateToken(context.Background(), s.cp.SystemAccountID(), api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleAdmin})
	if err != nil {
		t.Fatal(err)
	}
	s.token, s.ca = tok.Secret, filepath.Join(dir, "pki", "ca.crt")
	s.tokenFile = filepath.Join(dir, "cli.token")
	if err := os.WriteFile(s.tokenFile, []byte(s.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.connect()
	s.repo = recoverytest.Store(t, s.cp)
	return s
}

// open starts the control plane (again) on the site's data directory.
func (s *site) open() {
	t := s.t
	t.Helper()
	cp, err := controlplane.Open(context.Background(), s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Listen(); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Serve(sctx) }()
	stopped := false
	s.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
			cp.Close()
		}
	}
	t.Cleanup(s.stop)
	s.cp = cp
}

// connect makes the admin client for the running control plane.
func (s *site) connect() {
	admin, err := api.NewClient(api.ClientConfig{Server: s.cp.URL(), Token: s.token, CAPEM: s.cp.CACertPEM()})
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(admin.Close)
	s.admin = admin
}

// restart stops the control plane (its VMs keep running) and starts it again.
func (s *site) restart() {
	s.t.Helper()
	s.stop()
	s.open()
	s.connect()
}

// lifeboat runs the command line against the site and returns stdout, stderr and the
// exit status.
func (s *site) lifeboat(args ...string) (string, string, int) {
	s.t.Helper()
	var out, errb bytes.Buffer
	full := append([]string{"--server", s.cp.URL(), "--token-file", s.tokenFile, "--ca-cert", s.ca}, args...)
	code := cli.Main(context.Background(), full, strings.NewReader(""), &out, &errb)
	s.t.Logf("lifeboat %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	return out.String(), errb.String(), code
}

// must runs a command that must succeed and returns its first output line (an id).
func (s *site) must(args ...string) string {
	s.t.Helper()
	out, errs, code := s.lifeboat(args...)
	if code != 0 {
		s.t.Fatalf("lifeboat %s: exit %d: %s", strings.Join(args, " "), code, errs)
	}
	first, _, _ := strings.Cut(out, "\n")
	return strings.TrimSpace(first)
}

// webSettings launches the server as a QEMU VM booting its own kernel, its port 80
// forwarded from a free host port, with a health check on the page: the job's RTO is
// measured to the page answering.
func webSettings(provider, target string) api.LaunchSettings {
	ls := api.DefaultLaunchSettings(1, 512<<20)
	ls.Provider, ls.TargetInstanceID = provider, target
	ls.BootMode = api.BootKernel
	ls.Network = api.LaunchNetwork{Mode: api.NetworkUser, PortForwards: []api.PortForward{{Protocol: "tcp", GuestPort: 80}}}
	ls.PostLaunchActions = []api.PostLaunchAction{{Name: "page", Type: "http-check", URL: "http://${LIFEBOAT_PORT_TCP_80}/", TimeoutSeconds: 600}}
	return ls
}

// page fetches the page of a recovery instance through its forwarded port.
func page(t *testing.T, ri api.RecoveryInstance) string {
	t.Helper()
	if len(ri.PortForwards) != 1 || ri.PortForwards[0].HostPort == 0 {
		t.Fatalf("recovery instance %s forwards %+v", ri.ID, ri.PortForwards)
	}
	u := fmt.Sprintf("http://%s/index.html", net.JoinHostPort(ri.PortForwards[0].HostAddr, fmt.Sprint(ri.PortForwards[0].HostPort)))
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("fetch %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("fetch %s: %s", u, resp.Status)
	}
	return string(b)
}

// consoleUntil waits until a VM's console log holds marker, then returns the log (a
// hang guard bounds the wait).
func consoleUntil(t *testing.T, path, marker string) string {
	t.Helper()
	end := time.Now().Add(5 * time.Minute)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), marker) {
			return string(b)
		}
		if time.Now().After(end) {
			t.Fatalf("the console %s never showed %q:\n%s", path, marker, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func jobOf(t *testing.T, s *site, id string) (api.Job, api.RecoveryInstance, []api.JobLogEvent) {
	t.Helper()
	ctx := context.Background()
	j, err := s.admin.Job(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	ri, err := s.admin.RecoveryInstance(ctx, j.Servers[0].RecoveryInstanceID)
	if err != nil {
		t.Fatal(err)
	}
	var events []api.JobLogEvent
	tok := ""
	for {
		l, err := s.admin.JobLog(ctx, id, 0, tok)
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Items) == 0 {
			break
		}
		events, tok = append(events, l.Items...), l.NextPageToken
	}
	return j, ri, events
}

// TestRecoverAndDrillServeThePIT: a bootable Linux is replicated (two PITs, the second
// with its page changed); `lifeboat recover --wait` launches a QEMU VM from the newest
// one and the page fetched through the forwarded port is the changed one; the
// recovered server reaches the source's network. A drill of the same server serves the
// same page but cannot reach the source's network. Both are terminated, with
// termination protection in the way first.
func TestRecoverAndDrillServeThePIT(t *testing.T) {
	needVMs(t)
	// The "source network": a web server on the host, which a QEMU user-mode guest
	// reaches at 10.0.2.2 unless it is isolated.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "source-network") })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	port := l.Addr().(*net.TCPAddr).Port
	probe := fmt.Sprintf("if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.0.2.2 %d | grep -q source-network; then echo SOURCE-REACHED; else echo SOURCE-UNREACHABLE; fi\n", port)

	img1 := testutil.BuildBootImage(t, testutil.BootImageOptions{SizeMiB: 128, Hostname: "web-1", Page: "version 1\n", Probe: probe})
	img2 := filepath.Join(t.TempDir(), "v2.raw")
	testutil.Run(t, "cp", "--sparse=always", img1, img2)
	testutil.SetFileInImage(t, img2, "/www/index.html", "version 2: changed before the PIT\n")

	s := startSite(t, func(c *controlplane.Config) { c.Recovery.ConsoleCapture = 10 * time.Minute })
	fi, _ := os.Stat(img1)
	server := recoverytest.Server(t, s.cp, "web-1", map[string]int64{"vda": fi.Size()})
	now := time.Now()
	recoverytest.PIT(t, s.cp, s.repo, server, consistency.Filesystem, now.Add(-time.Hour), recoverytest.Volume{Name: "vda", Image: img1})
	pit2, changedBlocks := recoverytest.PIT(t, s.cp, s.repo, server, consistency.Filesystem, now.Add(-time.Minute),
		recoverytest.Volume{Name: "vda", Image: img2, Previous: img1})
	t.Logf("the page change made %d blocks of 64 KiB differ", changedBlocks)
	if _, err := s.admin.SetLaunchSettings(context.Background(), server.ID, webSettings(api.ProviderQEMU, "")); err != nil {
		t.Fatal(err)
	}

	recJob := s.must("recover", server.ID, "--wait")
	job, ri, events := jobOf(t, s, recJob)
	if job.Servers[0].LaunchStatus != api.LaunchLaunched || job.Servers[0].SnapshotID != pit2.ID || job.Servers[0].RTOSeconds == nil {
		t.Fatalf("recovery job %+v", job)
	}
	t.Logf("recovery RTO (to the page answering): %.1f s", *job.Servers[0].RTOSeconds)
	if got := page(t, ri); got != "version 2: changed before the PIT\n" {
		t.Fatalf("the recovered server serves %q", got)
	}
	console := consoleUntil(t, ri.ProviderHandle.ConsoleLog, testutil.ProbeEndMarker)
	if !strings.Contains(console, "SOURCE-REACHED") {
		t.Fatalf("the recovered server could not reach the source's network:\n%s", console)
	}
	// The console is copied into the job's log once a second, so the job may have
	// ended (its page answering) a moment before the boot marker's line is copied.
	sawConsole := false
	for deadline := time.Now().Add(15 * time.Second); !sawConsole; {
		for _, e := range events {
			sawConsole = sawConsole || (e.Type == api.EventConsole && strings.Contains(e.Message, testutil.BootedMarker))
		}
		if sawConsole || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
		_, _, events = jobOf(t, s, recJob)
	}
	if !sawConsole {
		t.Errorf("the job's log has no CONSOLE entry with the boot marker %q", testutil.BootedMarker)
	}

	// A second recovery is refused while this one lives.
	_, errs, code := s.lifeboat("recover", server.ID)
	if code != 1 || !strings.Contains(errs, ri.ID) || !strings.Contains(errs, "--force") {
		t.Fatalf("second recovery: exit %d %q", code, errs)
	}

	// The drill: same page, no route to the source.
	drillJob := s.must("drill", server.ID, "--wait")
	dj, dri, _ := jobOf(t, s, drillJob)
	if !dj.IsDrill || dj.Servers[0].LaunchStatus != api.LaunchLaunched || !dri.IsDrill {
		t.Fatalf("drill job %+v", dj)
	}
	if got := page(t, dri); got != "version 2: changed before the PIT\n" {
		t.Fatalf("the drill serves %q", got)
	}
	dconsole := consoleUntil(t, dri.ProviderHandle.ConsoleLog, testutil.ProbeEndMarker)
	if !strings.Contains(dconsole, "SOURCE-UNREACHABLE") || strings.Contains(dconsole, "SOURCE-REACHED") {
		t.Fatalf("the drill reached the source's network:\n%s", dconsole)
	}

	// jobs describe shows the measured RTO; recovery-instances list shows both.
	desc, _, _ := s.lifeboat("jobs", "describe", recJob)
	if !strings.Contains(desc, "RTO") || !strings.Contains(desc, api.LaunchLaunched) {
		t.Errorf("jobs describe does not show the RTO:\n%s", desc)
	}
	list, _, _ := s.lifeboat("recovery-instances", "list")
	if !strings.Contains(list, ri.ID) || !strings.Contains(list, dri.ID) || !strings.Contains(list, "drill") {
		t.Errorf("recovery-instances list:\n%s", list)
	}

	// Termination protection, then terminate: the VMs' processes end.
	s.must("recovery-instances", "protect", ri.ID, "--on")
	_, errs, code = s.lifeboat("recovery-instances", "terminate", ri.ID)
	if code != 1 || !strings.Contains(errs, "protect "+ri.ID+" --off") {
		t.Fatalf("terminate of a protected instance: exit %d %q", code, errs)
	}
	s.must("recovery-instances", "protect", ri.ID, "--off")
	s.must("recovery-instances", "terminate", ri.ID, "--wait")
	s.must("recovery-instances", "terminate", "--drills", "--wait")
	for _, r := range []api.RecoveryInstance{ri, dri} {
		if running(r.ProviderHandle.PID) {
			t.Errorf("QEMU of %s (pid %d) still runs after terminate", r.ID, r.ProviderHandle.PID)
		}
		got, err := s.admin.RecoveryInstance(context.Background(), r.ID)
		if err != nil || got.State != api.InstanceTerminated {
			t.Errorf("%s after terminate: %+v %v", r.ID, got, err)
		}
	}
}

// running reports whether a process runs (a zombie, ended but not yet reaped by init,
// does not).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// blockDiff counts the 64 KiB blocks in which two images differ.
func blockDiff(t *testing.T, a, b string) int {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(x) != len(y) {
		t.Fatalf("%s and %s differ in size", a, b)
	}
	n := 0
	for off := 0; off < len(x); off += 64 << 10 {
		end := min(off+64<<10, len(x))
		if !bytes.Equal(x[off:end], y[off:end]) {
			n++
		}
	}
	return n
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestLaunchIntoAnExistingInstance: an instance (stopped, tagged) holds an older copy of
// the server; the recovery writes into its disk exactly the blocks that differ from the
// PIT (counted here) and it then boots the PIT's content. Without the tag, with another
// boot mode, or with too small a disk, the launch is refused with the reason and the
// instance's disk is left untouched.
func TestLaunchIntoAnExistingInstance(t *testing.T) {
	needVMs(t)
	base := testutil.BuildBootImage(t, testutil.BootImageOptions{SizeMiB: 128, Hostname: "app-1", Page: "the instance's old page\n"})
	pitImg := filepath.Join(t.TempDir(), "pit.raw")
	testutil.Run(t, "cp", "--sparse=always", base, pitImg)
	testutil.SetFileInImage(t, pitImg, "/www/index.html", "the PIT's page\n")
	testutil.SetFileInImage(t, pitImg, "/etc/motd", "recovered\n")
	instDisk := filepath.Join(t.TempDir(), "instance.raw")
	testutil.Run(t, "cp", "--sparse=always", base, instDisk)
	differ := blockDiff(t, instDisk, pitImg)
	if differ == 0 {
		t.Fatal("the PIT does not differ from the instance's disk")
	}

	s := startSite(t, nil)
	fi, _ := os.Stat(pitImg)
	server := recoverytest.Server(t, s.cp, "app-1", map[string]int64{"vda": fi.Size()})
	recoverytest.PIT(t, s.cp, s.repo, server, consistency.Crash, time.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: pitImg})
	ctx := context.Background()

	// Refusals first: none may write a byte.
	small := filepath.Join(t.TempDir(), "small.raw")
	if err := os.WriteFile(small, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	untagged := s.must("instances", "add", "--name", "untagged", "--disk", instDisk, "--boot-mode", "kernel")
	bios := s.must("instances", "add", "--name", "bios", "--disk", instDisk, "--tag", "AWSDRS=AllowLaunchingIntoThisInstance")
	tiny := s.must("instances", "add", "--name", "tiny", "--disk", small, "--boot-mode", "kernel", "--tag", "LIFEBOAT=AllowLaunchingIntoThisInstance")
	before := fileSum(t, instDisk)
	for _, c := range []struct{ instance, reason string }{
		{untagged, "does not allow launching into it"},
		{bios, "boots bios"},
		{tiny, "too small"},
	} {
		if _, err := s.admin.SetLaunchSettings(ctx, server.ID, webSettings(api.ProviderExistingInstance, c.instance)); err != nil {
			t.Fatal(err)
		}
		out, errs, code := s.lifeboat("recover", server.ID, "--wait")
		if code != 1 || !strings.Contains(out, c.reason) {
			t.Fatalf("launch into %s: exit %d, output does not say %q:\n%s%s", c.instance, code, c.reason, out, errs)
		}
	}
	if fileSum(t, instDisk) != before {
		t.Fatal("a refused launch changed the instance's disk")
	}

	// Tagged, stopped, same boot mode, large enough: only the differing blocks go in.
	s.must("instances", "tag", untagged, "AWSDRS=AllowLaunchingIntoThisInstance")
	if _, err := s.admin.SetLaunchSettings(ctx, server.ID, webSettings(api.ProviderExistingInstance, untagged)); err != nil {
		t.Fatal(err)
	}
	jobID := s.must("recover", server.ID, "--wait")
	job, ri, events := jobOf(t, s, jobID)
	if job.Servers[0].LaunchStatus != api.LaunchLaunched || ri.ProviderHandle.InstanceID != untagged {
		t.Fatalf("launch into %s: %+v %+v", untagged, job, ri)
	}
	var written, same float64 = -1, -1
	for _, e := range events {
		if e.Type == api.EventSnapshotEnd {
			written, same = e.Detail["writtenBlocks"].(float64), e.Detail["sameBlocks"].(float64)
		}
	}
	if int(written) != differ {
		t.Fatalf("the launch wrote %v blocks into the instance's disk; %d differ from the PIT", written, differ)
	}
	t.Logf("wrote %d differing blocks, kept %v", differ, same)
	if got := page(t, ri); got != "the PIT's page\n" {
		t.Fatalf("the instance serves %q after the launch", got)
	}
	in, err := s.admin.Instance(ctx, untagged)
	if err != nil || in.State != api.InstanceRunning || in.RecoveryInstanceID != ri.ID {
		t.Fatalf("instance after the launch: %+v %v", in, err)
	}
	// Terminating the recovery stops the instance and leaves its disk, now the PIT's.
	s.must("recovery-instances", "terminate", ri.ID, "--wait")
	in, err = s.admin.Instance(ctx, untagged)
	if err != nil || in.State != api.InstanceStopped || in.RecoveryInstanceID != "" {
		t.Fatalf("instance after terminate: %+v %v", in, err)
	}
	if got := testutil.ReadFileFromImage(t, instDisk, "/www/index.html"); got != "the PIT's page\n" {
		t.Fatalf("the instance's disk holds the page %q after terminate", got)
	}
	info := testutil.ReadFileFromImage(t, instDisk, api.RecoveryInfoFile)
	if !strings.Contains(info, ri.ID) || !strings.Contains(info, server.ID) {
		t.Fatalf("conversion did not leave the recovery's record for reversed replication: %s", info)
	}
}

// TestRestartDuringALaunchAdoptsTheVM: the control plane stops while a recovery waits
// in its post-launch checks; started again, it resumes the job, adopts the VM the
// launch started (the same QEMU process, not a second one) and finishes the checks.
func TestRestartDuringALaunchAdoptsTheVM(t *testing.T) {
	needVMs(t)
	img := testutil.BuildBootImage(t, testutil.BootImageOptions{SizeMiB: 128, Hostname: "web-2", Page: "adopted\n"})
	s := startSite(t, nil)
	fi, _ := os.Stat(img)
	server := recoverytest.Server(t, s.cp, "web-2", map[string]int64{"vda": fi.Size()})
	recoverytest.PIT(t, s.cp, s.repo, server, consistency.Filesystem, time.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: img})
	// A gate the job waits at until the test opens it, after the restart.
	gate := testutil.FreePort(t)
	ls := webSettings(api.ProviderQEMU, "")
	ls.PostLaunchActions = append([]api.PostLaunchAction{{Name: "gate", Type: "tcp-check",
		Address: fmt.Sprintf("127.0.0.1:%d", gate), TimeoutSeconds: 600}}, ls.PostLaunchActions...)
	ctx := context.Background()
	if _, err := s.admin.SetLaunchSettings(ctx, server.ID, ls); err != nil {
		t.Fatal(err)
	}
	job, err := s.admin.StartRecovery(ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: server.ID}}})
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(5 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		j, err := s.admin.Job(ctx, job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if j.Servers[0].Step == api.StepPostLaunch {
			break
		}
		if j.Status == api.JobCompleted || time.Now().After(end) {
			t.Fatalf("the job never waited in its post-launch checks: %+v", j)
		}
	}
	before, err := s.admin.RecoveryInstance(ctx, job.Servers[0].RecoveryInstanceID)
	if err != nil {
		t.Fatal(err)
	}
	s.restart()
	if !running(before.ProviderHandle.PID) {
		t.Fatal("the VM did not outlive the control plane")
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", gate))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	j := recoverytest.WaitJob(t, s.admin, job.ID, 10*time.Minute)
	_, ri, events := jobOf(t, s, job.ID)
	var log []string
	for _, e := range events {
		if e.Type != api.EventConsole {
			log = append(log, e.Type+" "+e.Message)
		}
	}
	text := strings.Join(log, "\n")
	if j.Servers[0].LaunchStatus != api.LaunchLaunched || !strings.Contains(text, "restarted during post_launch") ||
		!strings.Contains(text, "adopted") {
		t.Fatalf("after the restart: %+v\n%s", j.Servers[0], text)
	}
	if ri.ProviderHandle.PID != before.ProviderHandle.PID || !running(ri.ProviderHandle.PID) {
		t.Fatalf("the recovery instance's QEMU is pid %d, it was %d: a second VM was started", ri.ProviderHandle.PID, before.ProviderHandle.PID)
	}
	if got := page(t, ri); got != "adopted\n" {
		t.Fatalf("the adopted instance serves %q", got)
	}
	s.must("recovery-instances", "terminate", ri.ID, "--wait")
}

// TestLaunchStoppedThenStart: with start after launch off, the VM is created but does
// not run (STOPPED, nothing answers) until recovery-instances start.
func TestLaunchStoppedThenStart(t *testing.T) {
	needVMs(t)
	img := testutil.BuildBootImage(t, testutil.BootImageOptions{SizeMiB: 128, Hostname: "web-3", Page: "started later\n"})
	s := startSite(t, nil)
	fi, _ := os.Stat(img)
	server := recoverytest.Server(t, s.cp, "web-3", map[string]int64{"vda": fi.Size()})
	recoverytest.PIT(t, s.cp, s.repo, server, consistency.Filesystem, time.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: img})
	ls := webSettings(api.ProviderQEMU, "")
	ls.StartAfterLaunch, ls.PostLaunchActions = false, nil
	ctx := context.Background()
	if _, err := s.admin.SetLaunchSettings(ctx, server.ID, ls); err != nil {
		t.Fatal(err)
	}
	_, ri, _ := jobOf(t, s, s.must("recover", server.ID, "--wait"))
	if ri.State != api.InstanceStopped {
		t.Fatalf("launched with start after launch off: state %s", ri.State)
	}
	b, _ := os.ReadFile(ri.ProviderHandle.ConsoleLog)
	if len(b) != 0 {
		t.Fatalf("a VM launched stopped wrote to its console:\n%s", b)
	}
	s.must("recovery-instances", "start", ri.ID)
	consoleUntil(t, ri.ProviderHandle.ConsoleLog, testutil.BootedMarker)
	if got := page(t, ri); got != "started later\n" {
		t.Fatalf("after start the instance serves %q", got)
	}
	if got, err := s.admin.RecoveryInstance(ctx, ri.ID); err != nil || got.State != api.InstanceRunning {
		t.Fatalf("after start: %+v %v", got, err)
	}
	s.must("recovery-instances", "terminate", ri.ID, "--wait")
}
