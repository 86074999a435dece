package libvirt_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/lifeboat-dr/lifeboat/internal/launch/libvirt"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// dial connects to a private libvirtd over its remote-style TCP URI.
func dial(t *testing.T, d *testutil.Libvirtd) *libvirt.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := libvirt.Dial(ctx, libvirt.Config{URI: d.TCPURI, StallTimeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("%v\nlibvirtd:\n%s", err, d.Output())
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// pool makes a directory pool in the private libvirtd.
func pool(t *testing.T, d *testutil.Libvirtd, c *libvirt.Client, name string) {
	t.Helper()
	if _, err := c.EnsurePool(testCtx(t), name, d.PoolDir(t, name)); err != nil {
		t.Fatal(err)
	}
}

// randomDisk writes a disk image of size bytes: random data with 6 MiB of zeros from
// its second MiB on (longer than the gap an upload sends), when it is large enough.
func randomDisk(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	b := make([]byte, size)
	_, _ = rand.Read(b)
	if size >= 16<<20 {
		clear(b[1<<20 : 7<<20])
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func fileHash(t *testing.T, p string) [32]byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// download reads a whole volume back.
func TestConnectTCPAndUnix(t *testing.T) {
	d := testutil.StartLibvirtd(t)
	ctx := testCtx(t)
	for _, uri := range []string{d.TCPURI, d.UnixURI} {
		c, err := libvirt.Dial(ctx, libvirt.Config{URI: uri})
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		if _, err := c.Domains(ctx); err != nil {
			t.Fatalf("%s: list domains: %v", uri, err)
		}
		c.Close()
	}
}

func TestDialHostDown(t *testing.T) {
	port := testutil.FreePort(t) // nothing listens there
	uri := fmt.Sprintf("qemu+tcp://127.0.0.1:%d/system", port)
	_, err := libvirt.Dial(context.Background(), libvirt.Config{URI: uri})
	if err == nil || !libvirt.IsUnreachable(err) {
		t.Fatalf("dial a port nobody listens on: %v", err)
	}
	if want := "libvirt at " + uri + " does not answer"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
}

func TestUploadReadBack(t *testing.T) {
	d := testutil.StartLibvirtd(t)
	c := dial(t, d)
	ctx := testCtx(t)
	pool(t, d, c, "lbtest-pool")
	const size = 24 << 20
	disk := randomDisk(t, size)
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var mu sync.Mutex
	var last, total int64
	start := time.Now()
	err = c.UploadVolume(ctx, libvirt.UploadSpec{Pool: "lbtest-pool", Name: "lbtest-vol", Source: f, Size: size,
		Progress: func(done, all int64) { mu.Lock(); last, total = done, all; mu.Unlock() }})
	if err != nil {
		t.Fatalf("%v\nlibvirtd:\n%s", err, d.Output())
	}
	t.Logf("uploaded %d MiB in %v", size>>20, time.Since(start))
	if last != total || total != size-(6<<20) {
		t.Fatalf("progress said %d of %d; the disk has %d non-zero bytes", last, total, size-(6<<20))
	}
	if !testutil.LibvirtVolumeIs(t, ctx, c, "lbtest-pool", "lbtest-vol", size, fileHash(t, disk)) {
		t.Fatal("the volume read back differs from the disk uploaded")
	}
	if err := c.DeleteVolume(ctx, "lbtest-pool", "lbtest-vol"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Volume(ctx, "lbtest-pool", "lbtest-vol"); !errors.Is(err, libvirt.ErrNotFound) {
		t.Fatalf("volume after delete: %v", err)
	}
}

func TestUploadPoolFillsRemovesPartialVolume(t *testing.T) {
	d := testutil.StartLibvirtd(t)
	c := dial(t, d)
	ctx := testCtx(t)
	dir := d.PoolDir(t, "lbtest-small")
	d.InNamespace(t, "mount", "-t", "tmpfs", "-o", "size=32m", "lbtest-small", dir)
	if _, err := c.EnsurePool(ctx, "lbtest-small", dir); err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	f, err := os.Open(randomDisk(t, size))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = c.UploadVolume(ctx, libvirt.UploadSpec{Pool: "lbtest-small", Name: "lbtest-big", Source: f, Size: size})
	if err == nil {
		t.Fatal("a 64 MiB upload into a 32 MiB pool succeeded")
	}
	t.Logf("upload into a full pool: %v", err)
	vols, err := c.Volumes(ctx, "lbtest-small")
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 0 {
		t.Fatalf("the failed upload left volumes %v", vols)
	}
}

func TestUploadCancelled(t *testing.T) {
	d := testutil.StartLibvirtd(t)
	c := dial(t, d)
	pool(t, d, c, "lbtest-pool")
	const size = 64 << 20
	f, err := os.Open(randomDisk(t, size))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(testCtx(t))
	err = c.UploadVolume(ctx, libvirt.UploadSpec{Pool: "lbtest-pool", Name: "lbtest-cancel", Source: f, Size: size,
		Progress: func(done, _ int64) {
			if done > 8<<20 {
				cancel()
			}
		}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled upload: %v", err)
	}
	c2 := dial(t, d)
	if vols, err := c2.Volumes(testCtx(t), "lbtest-pool"); err != nil || len(vols) != 0 {
		t.Fatalf("after a cancelled upload the pool holds %v (%v)", vols, err)
	}
}

func TestWriteDifferingWritesOnlyDifferingBlocks(t *testing.T) {
	d := testutil.StartLibvirtd(t)
	c := dial(t, d)
	ctx := testCtx(t)
	pool(t, d, c, "lbtest-pool")
	const size = 16 << 20
	disk := randomDisk(t, size)
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.UploadVolume(ctx, libvirt.UploadSpec{Pool: "lbtest-pool", Name: "lbtest-vol", Source: f, Size: size}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// Change blocks 0, 5 and 6 (adjacent: one range) and 15 (its last byte).
	b, _ := os.ReadFile(disk)
	b[10] ^= 0xff
	b[5<<20+7] ^= 0xff
	b[6<<20] ^= 0xff
	b[size-1] ^= 0xff
	newer := filepath.Join(t.TempDir(), "newer.raw")
	if err := os.WriteFile(newer, b, 0o600); err != nil {
		t.Fatal(err)
	}
	nf, err := os.Open(newer)
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	st, err := c.WriteDiffering(ctx, "lbtest-pool", "lbtest-vol", nf, size, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Blocks != 16 || st.Differing != 4 || st.BytesWritten != 4<<20 {
		t.Fatalf("compared %d blocks, %d differing, wrote %d bytes; want 16, 4, 4 MiB", st.Blocks, st.Differing, st.BytesWritten)
	}
	if !testutil.LibvirtVolumeIs(t, ctx, c, "lbtest-pool", "lbtest-vol", size, sha256.Sum256(b)) {
		t.Fatal("the volume differs from the disk after the differing write")
	}
	st, err = c.WriteDiffering(ctx, "lbtest-pool", "lbtest-vol", nf, size, nil)
	if err != nil || st.Differing != 0 || st.BytesWritten != 0 {
		t.Fatalf("a second write found %d differing blocks, wrote %d (%v)", st.Differing, st.BytesWritten, err)
	}
}

// TestDomainLifecycle defines and starts a TCG domain that boots the host's kernel
// (its serial console says so) from a small volume, on an isolated network, then tears
// it all down and checks through the API that nothing is left.
func TestDomainLifecycle(t *testing.T) {
	d := testutil.StartLibvirtd(t)
	c := dial(t, d)
	ctx := testCtx(t)
	pool(t, d, c, "lbtest-pool")
	kernel, initrd, _ := testutil.HostKernel(t)
	f, err := os.Open(randomDisk(t, 4<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := c.UploadVolume(ctx, libvirt.UploadSpec{Pool: "lbtest-pool", Name: "lbtest-boot", Source: f, Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateIsolatedNetwork(ctx, "lbtest-drill"); err != nil {
		t.Fatalf("%v\n%s", err, d.Output())
	}
	if active, err := c.NetworkActive(ctx, "lbtest-drill"); err != nil || !active {
		t.Fatalf("drill network active %v (%v)", active, err)
	}
	spec := libvirt.DomainSpec{Name: "lbtest-dom", CPUs: 1, MemoryMiB: 256,
		Disks: []libvirt.DiskRef{{Pool: "lbtest-pool", Volume: "lbtest-boot"}},
		NIC:   &libvirt.NIC{Network: "lbtest-drill"}, Kernel: kernel, Initrd: initrd,
		Cmdline: "console=ttyS0 panic=-1", RecoveryInstance: "ri-lbtest"}
	if err := c.DefineDomain(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := c.StartDomain(ctx, "lbtest-dom", false); err != nil {
		t.Fatalf("%v\n%s", err, d.Output())
	}
	if st, err := c.State(ctx, "lbtest-dom"); err != nil || st != libvirt.StateRunning {
		t.Fatalf("state %q (%v)", st, err)
	}
	info, err := c.Domain(ctx, "lbtest-dom")
	if err != nil || info.RecoveryInstance != "ri-lbtest" || info.AllowLaunch || len(info.Disks) != 1 ||
		info.Disks[0].Volume != "lbtest-boot" || len(info.Networks) != 1 {
		t.Fatalf("domain info %+v (%v)", info, err)
	}
	console := captureUntil(t, c, "lbtest-dom", "Linux version", 90*time.Second)
	t.Logf("console: %.200q", console)

	for i := 0; i < 2; i++ { // a second teardown is harmless
		if err := c.DestroyDomain(ctx, "lbtest-dom"); err != nil {
			t.Fatal(err)
		}
		if err := c.UndefineDomain(ctx, "lbtest-dom"); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteVolume(ctx, "lbtest-pool", "lbtest-boot"); err != nil {
			t.Fatal(err)
		}
		if err := c.RemoveNetwork(ctx, "lbtest-drill"); err != nil {
			t.Fatal(err)
		}
	}
	assertNothingLeft(t, c, "lbtest-pool")
}

// captureUntil captures a domain's console until it shows want.
func captureUntil(t *testing.T, c *libvirt.Client, dom, want string, timeout time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	w := &watchWriter{want: []byte(want), found: cancel}
	err := c.CaptureConsole(ctx, dom, w)
	if !w.seen() {
		t.Fatalf("the console did not show %q within %v (%v); it showed %q", want, timeout, err, w.String())
	}
	return w.String()
}

type watchWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	want  []byte
	hit   bool
	found func()
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if !w.hit && bytes.Contains(w.buf.Bytes(), w.want) {
		w.hit = true
		w.found()
	}
	return len(p), nil
}

func (w *watchWriter) seen() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.hit }

func (w *watchWriter) String() string { w.mu.Lock(); defer w.mu.Unlock(); return w.buf.String() }

// assertNothingLeft checks through the API that no domain, network nor volume remains.
func assertNothingLeft(t *testing.T, c *libvirt.Client, pool string) {
	t.Helper()
	ctx := testCtx(t)
	doms, err := c.Domains(ctx)
	if err != nil || len(doms) != 0 {
		t.Errorf("domains left: %v (%v)", doms, err)
	}
	nets, err := c.Networks(ctx)
	if err != nil || len(nets) != 0 {
		t.Errorf("networks left: %v (%v)", nets, err)
	}
	vols, err := c.Volumes(ctx, pool)
	if err != nil || len(vols) != 0 {
		t.Errorf("volumes left in %s: %v (%v)", pool, vols, err)
	}
}

func TestConnectTLSAndRefusedCertificate(t *testing.T) {
	d := testutil.StartLibvirtdWith(t, testutil.LibvirtdOptions{TLS: true})
	ctx := testCtx(t)
	c, err := libvirt.Dial(ctx, libvirt.Config{URI: d.TLSURI, Credentials: d.TLSCredentials})
	if err != nil {
		t.Fatalf("%v\n%s", err, d.Output())
	}
	if _, err := c.Domains(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	_, err = libvirt.Dial(ctx, libvirt.Config{URI: d.TLSURI, Credentials: d.UntrustedTLSCredentials})
	var u *libvirt.UnreachableError
	if !errors.As(err, &u) || !u.Refused || !strings.Contains(err.Error(), "refuses the connection") {
		t.Fatalf("a client certificate of another CA: %v", err)
	}
	t.Logf("refused: %v", err)
	_, err = libvirt.Dial(ctx, libvirt.Config{URI: d.TLSURI})
	if err == nil || !strings.Contains(err.Error(), "needs a client certificate") {
		t.Fatalf("no credentials: %v", err)
	}
}

// TestDialTimesOut dials a host that accepts the connection and never answers.
func TestDialTimesOut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, silent
		}
	}()
	uri := "qemu+tcp://" + ln.Addr().String() + "/system"
	start := time.Now()
	_, err = libvirt.Dial(context.Background(), libvirt.Config{URI: uri, DialTimeout: time.Second})
	if !libvirt.IsUnreachable(err) || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("a silent host: %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("a silent host took %v to give up on with a 1s timeout", took)
	}
	t.Logf("after %v: %v", time.Since(start), err)
}

// sshForwarder is an ssh server (x/crypto/ssh, in the test) that lets one client key
// open direct-streamlocal channels to the private libvirtd's socket, as sshd does.
func sshForwarder(t *testing.T, socket string) (addr string, hostKey ssh.PublicKey, clientKeyPEM []byte) {
	t.Helper()
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	hostSigner, _ := ssh.NewSignerFromKey(hostPriv)
	clientPub, clientPriv, _ := ed25519.GenerateKey(rand.Reader)
	sshClientPub, _ := ssh.NewPublicKey(clientPub)
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if bytes.Equal(k.Marshal(), sshClientPub.Marshal()) {
			return nil, nil
		}
		return nil, errors.New("unknown key")
	}}
	cfg.AddHostKey(hostSigner)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveSSH(c, cfg, socket)
		}
	}()
	blk, err := ssh.MarshalPrivateKey(clientPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	return ln.Addr().String(), hostSigner.PublicKey(), pem.EncodeToMemory(blk)
}

func serveSSH(c net.Conn, cfg *ssh.ServerConfig, socket string) {
	defer c.Close()
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		var p struct {
			Path      string
			Reserved0 string
			Reserved1 uint32
		}
		if nc.ChannelType() != "direct-streamlocal@openssh.com" || ssh.Unmarshal(nc.ExtraData(), &p) != nil || p.Path != socket {
			_ = nc.Reject(ssh.Prohibited, "only the libvirt socket")
			continue
		}
		u, err := net.Dial("unix", p.Path)
		if err != nil {
			_ = nc.Reject(ssh.ConnectionFailed, err.Error())
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			u.Close()
			continue
		}
		go ssh.DiscardRequests(creqs)
		go func() {
			_, _ = io.Copy(ch, u)
			ch.Close()
		}()
		go func() {
			_, _ = io.Copy(u, ch)
			u.Close()
		}()
	}
}

func TestConnectSSH(t *testing.T) {
	d := testutil.StartLibvirtd(t)
	ctx := testCtx(t)
	addr, hostKey, key := sshForwarder(t, d.Socket)
	uri := "qemu+ssh://root@" + addr + "/system?socket=" + d.Socket
	known := addr + " " + string(ssh.MarshalAuthorizedKey(hostKey))
	c, err := libvirt.Dial(ctx, libvirt.Config{URI: uri, Credentials: append(append([]byte{}, key...), known...)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Domains(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	otherHost, _, _ := ed25519.GenerateKey(rand.Reader)
	otherKey, _ := ssh.NewPublicKey(otherHost)
	wrong := addr + " " + string(ssh.MarshalAuthorizedKey(otherKey))
	_, err = libvirt.Dial(ctx, libvirt.Config{URI: uri, Credentials: append(append([]byte{}, key...), wrong...)})
	var u *libvirt.UnreachableError
	if !errors.As(err, &u) || !u.Refused || !strings.Contains(err.Error(), "none of the credentials' known_hosts keys") {
		t.Fatalf("a host key that is not the known one: %v", err)
	}
	_, err = libvirt.Dial(ctx, libvirt.Config{URI: uri, Credentials: key})
	if err == nil || !strings.Contains(err.Error(), "known_hosts line") {
		t.Fatalf("no known_hosts line: %v", err)
	}
}

// TestUEFIDomainUndefinesWithItsVariables starts a UEFI domain (libvirt picks the OVMF
// firmware and makes its variable store) and undefines it with the store.
func TestUEFIDomainUndefinesWithItsVariables(t *testing.T) {
	m, _ := filepath.Glob("/usr/share/qemu/firmware/*edk2-x86_64*.json")
	testutil.Need(t, len(m) > 0, "OVMF firmware (apt-get install ovmf)")
	d := testutil.StartLibvirtd(t)
	c := dial(t, d)
	ctx := testCtx(t)
	pool(t, d, c, "lbtest-pool")
	if _, err := c.CreateVolume(ctx, "lbtest-pool", "lbtest-efi", 4<<20); err != nil {
		t.Fatal(err)
	}
	spec := libvirt.DomainSpec{Name: "lbtest-efi", CPUs: 1, MemoryMiB: 256, Boot: libvirt.BootUEFI,
		Disks: []libvirt.DiskRef{{Pool: "lbtest-pool", Volume: "lbtest-efi"}}, RecoveryInstance: "ri-efi"}
	if err := c.DefineDomain(ctx, spec); err != nil {
		t.Fatalf("%v\n%s", err, d.Output())
	}
	if err := c.StartDomain(ctx, "lbtest-efi", false); err != nil {
		t.Fatalf("%v\n%s", err, d.Output())
	}
	if info, err := c.Domain(ctx, "lbtest-efi"); err != nil || info.Boot != libvirt.BootUEFI {
		t.Fatalf("domain %+v (%v)", info, err)
	}
	nvram, _ := filepath.Glob(filepath.Join(d.Dir, "lib", "qemu", "nvram", "lbtest-efi_VARS*"))
	if len(nvram) != 1 {
		t.Fatalf("variable store: %v", nvram)
	}
	if err := c.DestroyDomain(ctx, "lbtest-efi"); err != nil {
		t.Fatal(err)
	}
	if err := c.UndefineDomain(ctx, "lbtest-efi"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(nvram[0]); !os.IsNotExist(err) {
		t.Fatalf("the variable store outlived its domain (%v)", err)
	}
	if err := c.DeleteVolume(ctx, "lbtest-pool", "lbtest-efi"); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, c, "lbtest-pool")
}
