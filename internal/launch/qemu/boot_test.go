package qemu

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/launch/conversion"
	"github.com/lifeboat-dr/lifeboat/internal/launch/conversion/ext4image"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// These tests boot real VMs (TCG: no KVM here), each costing ~15-60 s of CPU, so there
// are two. Every wait is bounded; nothing asserts on how long a boot takes.

// bootBound bounds a guest's boot to HTTP; on a loaded 2-core machine a TCG boot of
// Debian's kernel and initrd has taken up to ~60 s.
const bootBound = 5 * time.Minute

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, nil))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// hostListener stands for something on the source's network: it answers "pong-TOKEN" to
// whoever connects, and counts connections.
type hostListener struct {
	port  int
	token string
	conns atomic.Int32
}

func listenOnHost(t *testing.T) *hostListener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	h := &hostListener{port: l.Addr().(*net.TCPAddr).Port, token: hex.EncodeToString(b)}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			h.conns.Add(1)
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "pong-%s\n", h.token)
			}()
		}
	}()
	return h
}

// probe is the guest's script: connect to the host listener through the user-mode
// network's gateway (10.0.2.2 is the host's 127.0.0.1) and print the answer.
func (h *hostListener) probe() string {
	return fmt.Sprintf("echo ping | nc -w 5 10.0.2.2 %d\necho probe-finished\n", h.port)
}

// waitConsole waits until the serial log holds want, and returns the log.
func waitConsole(ctx context.Context, t *testing.T, v *VM, want string) string {
	t.Helper()
	for {
		b, _ := os.ReadFile(v.SerialLogPath())
		if strings.Contains(string(b), want) {
			return string(b)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the console never showed %q: %v\n--- console tail:\n%s", want, ctx.Err(), tail(string(b), 3000))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// probeOutput is what the guest's probe printed on the console.
func probeOutput(console string) string {
	_, after, _ := strings.Cut(console, testutil.ProbeBeginMarker)
	out, _, _ := strings.Cut(after, testutil.ProbeEndMarker)
	return strings.TrimSpace(out)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// waitHTTP gets url until it answers 200, and returns the body.
func waitHTTP(ctx context.Context, t *testing.T, v *VM, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 3 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && rerr == nil {
				return string(body)
			}
		}
		if !v.alive() {
			b, _ := os.ReadFile(v.LogPath())
			t.Fatalf("the VM died while booting; QEMU's log:\n%s", b)
		}
		select {
		case <-ctx.Done():
			b, _ := os.ReadFile(v.SerialLogPath())
			t.Fatalf("%s never answered: %v (last error %v)\n--- console tail:\n%s", url, ctx.Err(), err, tail(string(b), 3000))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// bootServer builds a test server image, converts it (hostname), extracts its kernel and
// starts it with HTTP forwarded from a free host port.
// With partitioned set, the filesystem is moved into the second partition of a GPT
// disk, as a cloud image's is.
func bootServer(ctx context.Context, t *testing.T, name string, isolated, partitioned bool, h *hostListener) (*VM, string, time.Time) {
	t.Helper()
	needQEMU(t)
	img := testutil.BuildBootImage(t, testutil.BootImageOptions{Hostname: "source-web", Probe: h.probe()})
	if partitioned {
		img = gptDisk(t, img)
	}
	// A test changes the page inside the image, as a replicated change would.
	page := "<h1>recovered " + name + " " + h.token + "</h1>\n"
	if partitioned {
		f, err := ext4image.Root(ctx, img)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.WriteFile(ctx, "/www/index.html", []byte(page), 0o644); err != nil {
			t.Fatal(err)
		}
	} else {
		testutil.SetFileInImage(t, img, "/www/index.html", page)
	}
	// Conversion: the recovered server gets its DR name and the DR network's address.
	if err := conversion.Apply(ctx, img, conversion.Conversion{
		Hostname: name,
		Network:  &conversion.Network{Address: "10.0.2.15/24", Gateway: "10.0.2.2"},
	}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	boot, err := ExtractBoot(ctx, img, filepath.Join(dir, "boot"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(boot.Cmdline, "root=UUID=") || boot.Initrd == "" {
		t.Fatalf("ExtractBoot = %+v, want a kernel, an initrd and root=UUID", boot)
	}
	started := time.Now()
	v, err := Start(ctx, Config{
		Name:        name,
		Dir:         filepath.Join(dir, "vm"),
		Disks:       []Disk{{Path: img, Format: "raw"}},
		Boot:        boot,
		Network:     Network{Isolated: isolated, PortForwards: []PortForward{{GuestPort: 80}}},
		StopTimeout: 2 * time.Minute,
		Logger:      testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, v)
	return v, page, started
}

// A recovered server boots its own kernel (extracted from its disk), comes up with the
// name conversion gave it, serves HTTP on a forwarded port, reaches the host (not
// isolated), is re-attached by a second VM value and stopped through it by the power
// button.
func TestBootRecoveredServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootBound)
	defer cancel()
	h := listenOnHost(t)
	v, page, started := bootServer(ctx, t, "dr-web-1", false, false, h)

	// A control-plane restart: another VM value finds the VM from its directory.
	a, err := Attach(v.Dir())
	if err != nil {
		t.Fatal(err)
	}
	a = a.WithLogger(testLogger(t))
	if a.Pid() != v.Pid() || len(a.Ports()) != 1 || a.Ports()[0] != v.Ports()[0] {
		t.Fatalf("attached: pid %d ports %v; started: pid %d ports %v", a.Pid(), a.Ports(), v.Pid(), v.Ports())
	}
	url := "http://" + a.Ports()[0].Addr()
	bootCtx, cancelBoot := context.WithTimeout(ctx, bootBound)
	defer cancelBoot()
	got := waitHTTP(bootCtx, t, a, url+"/")
	t.Logf("boot to HTTP: %s (Start to the page on %s)", time.Since(started).Round(100*time.Millisecond), url)
	if got != page {
		t.Errorf("page = %q, want %q", got, page)
	}
	if got := waitHTTP(bootCtx, t, a, url+"/hostname"); got != "dr-web-1\n" {
		t.Errorf("the guest's hostname is %q, want the converted dr-web-1", got)
	}
	console := waitConsole(bootCtx, t, a, testutil.ProbeEndMarker)
	t.Logf("probe (not isolated): %q", probeOutput(console))
	if !strings.Contains(console, testutil.BootedMarker+" dr-web-1 ") {
		t.Errorf("the console lacks %q", testutil.BootedMarker+" dr-web-1")
	}
	if !strings.Contains(console, "pong-"+h.token) || h.conns.Load() == 0 {
		t.Errorf("without isolation the guest did not reach the host listener (%d connections); console:\n%s", h.conns.Load(), tail(console, 2000))
	}
	if st, err := a.Status(ctx); err != nil || st != StateRunning {
		t.Errorf("Status = %q, %v; want running", st, err)
	}

	// Stop through the attached value: the guest sees the power button and powers off.
	pid := v.Pid()
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if !gone(pid) {
		t.Fatalf("QEMU (pid %d) still runs after Stop", pid)
	}
	if b, _ := os.ReadFile(v.SerialLogPath()); !strings.Contains(string(b), testutil.PowerdownMarker) {
		t.Errorf("the guest was not powered off by its power button (no %s on the console)", testutil.PowerdownMarker)
	}
	if st, err := v.Status(ctx); err != nil || st != StateStopped {
		t.Errorf("Status after Stop = %q, %v; want stopped", st, err)
	}
	if _, err := Attach(v.Dir()); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Attach after Stop: %v, want ErrNotRunning", err)
	}
}

// A drill's network: the isolated guest cannot reach the host (or anything else), while
// the forwarded port still reaches the guest. Its disk is partitioned (GPT, a BIOS boot
// partition first), so ExtractBoot and root=UUID are also shown to find the root
// filesystem in a partition.
func TestIsolatedNetwork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootBound)
	defer cancel()
	h := listenOnHost(t)
	v, page, started := bootServer(ctx, t, "drill-web-1", true, true, h)
	bootCtx, cancelBoot := context.WithTimeout(ctx, bootBound)
	defer cancelBoot()
	url := "http://" + v.Ports()[0].Addr()
	if got := waitHTTP(bootCtx, t, v, url+"/"); got != page {
		t.Errorf("page = %q, want %q", got, page)
	}
	t.Logf("boot to HTTP: %s (Start to the page on %s)", time.Since(started).Round(100*time.Millisecond), url)
	console := waitConsole(bootCtx, t, v, testutil.ProbeEndMarker)
	t.Logf("probe (isolated): %q", probeOutput(console))
	// The probe ran to its end (it printed after nc gave up) and got no answer.
	if !strings.Contains(console, "probe-finished") {
		t.Fatalf("the probe did not run to its end; console:\n%s", tail(console, 2000))
	}
	if !strings.Contains(console, "(vda2)") {
		t.Errorf("the console does not show the root filesystem mounted from the second partition (vda2)")
	}
	if strings.Contains(console, "pong-"+h.token) || h.conns.Load() != 0 {
		t.Errorf("the isolated guest reached the host listener (%d connections)", h.conns.Load())
	}
	pid := v.Pid()
	if err := v.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := v.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if !gone(pid) {
		t.Errorf("QEMU (pid %d) still runs after Kill and Wait", pid)
	}
}

// gptDisk copies a whole-disk filesystem image into the second partition of a new GPT
// disk (the first is a small BIOS boot partition, as on cloud images).
func gptDisk(t *testing.T, fsImage string) string {
	t.Helper()
	testutil.RequireCommand(t, "sfdisk", "fdisk")
	src, err := os.Open(fsImage)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		t.Fatal(err)
	}
	const start = 4 << 20 // bytes; the partition starts at sector 8192
	disk := filepath.Join(t.TempDir(), "gpt.raw")
	dst, err := os.Create(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := dst.Truncate(start + st.Size() + 1<<20); err != nil {
		t.Fatal(err)
	}
	table := fmt.Sprintf("label: gpt\nstart=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649\nstart=8192, size=%d, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n", st.Size()/512)
	cmd := exec.Command("sfdisk", "-q", disk)
	cmd.Stdin = strings.NewReader(table)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	// Copy, leaving holes where the filesystem has zeros.
	buf := make([]byte, 1<<20)
	zero := make([]byte, len(buf))
	for off := int64(0); ; off += int64(len(buf)) {
		n, err := io.ReadFull(src, buf)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, werr := dst.WriteAt(buf[:n], start+off); werr != nil {
				t.Fatal(werr)
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return disk
}
