package nbd

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// These tests read the server with clients from other projects: qemu-img and qemu-nbd
// (Debian qemu-utils), nbdinfo and nbdcopy (Debian libnbd-bin). Without them they skip
// with a message, and fail in CI.

// interopServer serves the 64 MiB "disk" and a sparse "sparse" export, listing both.
func interopServer(t *testing.T, network string, tc *testCert) (*testServer, []byte) {
	srv, want := newServer(t)
	sparse := &sparseExport{memExport{data: make([]byte, 4<<20), holes: []Extent{
		{Length: 1 << 20}, {Length: 2 << 20, Hole: true}, {Length: 1 << 20}}}}
	copy(sparse.data, want[:1<<20])
	copy(sparse.data[3<<20:], want[3<<20:4<<20])
	exports := map[string]Export{"disk": &memExport{data: want}, "sparse": sparse}
	srv.Exports = exportsOf(exports)
	srv.List = func(context.Context) ([]string, error) { return []string{"disk", "sparse"}, nil }
	if tc != nil {
		srv.TLSConfig = &tc.server
	}
	return startServer(t, network, srv), want
}

// hostPort splits a test server's TCP address.
func hostPort(t *testing.T, ts *testServer) (string, string) {
	host, port, err := net.SplitHostPort(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

func sameFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(want) {
		checkBytes(t, path, got, want)
	}
}

func TestQemuImgConvert(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img", "qemu-utils")
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			ts, want := interopServer(t, network, nil)
			url := "nbd+unix:///disk?socket=" + ts.addr
			if network == "tcp" {
				host, port := hostPort(t, ts)
				url = fmt.Sprintf("nbd://%s:%s/disk", host, port)
			}
			info := testutil.Run(t, "qemu-img", "info", "-f", "raw", url)
			if !strings.Contains(info, fmt.Sprint(exportSize)) {
				t.Fatalf("qemu-img info does not give the size %d:\n%s", exportSize, info)
			}
			out := filepath.Join(t.TempDir(), "out.raw")
			testutil.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", url, out)
			sameFile(t, out, want)
		})
	}
}

// TestQemuImgTLS reads through TLS with QEMU's x509 credentials.
func TestQemuImgTLS(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img", "qemu-utils")
	tc := newTestCert(t)
	ts, want := interopServer(t, "tcp", tc)
	host, port := hostPort(t, ts)
	out := filepath.Join(t.TempDir(), "out.raw")
	testutil.Run(t, "qemu-img", "convert", "-O", "raw",
		"--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+tc.dir,
		"--image-opts", fmt.Sprintf("driver=nbd,host=%s,port=%s,export=disk,tls-creds=tls0", host, port), out)
	sameFile(t, out, want)
	// Without TLS, qemu-img is refused.
	if _, err := testutil.Output("qemu-img", "info", "-f", "raw", fmt.Sprintf("nbd://%s:%s/disk", host, port)); err == nil {
		t.Fatal("qemu-img read a TLS-only server without TLS")
	}
}

func TestQemuNBDList(t *testing.T) {
	testutil.RequireCommand(t, "qemu-nbd", "qemu-utils")
	ts, _ := interopServer(t, "unix", nil)
	out := testutil.Run(t, "qemu-nbd", "--list", "--socket="+ts.addr)
	for _, name := range []string{"disk", "sparse"} {
		if !strings.Contains(out, "export: '"+name+"'") {
			t.Fatalf("qemu-nbd --list does not show export %s:\n%s", name, out)
		}
	}
	if !strings.Contains(out, "base:allocation") {
		t.Fatalf("qemu-nbd --list does not show base:allocation:\n%s", out)
	}
}

func TestNbdinfo(t *testing.T) {
	testutil.RequireCommand(t, "nbdinfo", "libnbd-bin")
	tc := newTestCert(t)
	for _, withTLS := range []bool{false, true} {
		var cert *testCert
		scheme, query := "nbd", ""
		if withTLS {
			cert, scheme, query = tc, "nbds", "?tls-certificates="+tc.dir
		}
		ts, _ := interopServer(t, "tcp", cert)
		host, port := hostPort(t, ts)
		base := fmt.Sprintf("%s://%s:%s/", scheme, host, port)
		list := testutil.Run(t, "nbdinfo", "--list", base+query)
		if !strings.Contains(list, `export="disk"`) || !strings.Contains(list, `export="sparse"`) {
			t.Fatalf("nbdinfo --list (tls %v):\n%s", withTLS, list)
		}
		if size := strings.TrimSpace(testutil.Run(t, "nbdinfo", "--size", base+"disk"+query)); size != fmt.Sprint(exportSize) {
			t.Fatalf("nbdinfo --size: %s", size)
		}
		got := strings.Fields(testutil.Run(t, "nbdinfo", "--map", base+"sparse"+query))
		want := strings.Fields(fmt.Sprintf("0 %d 0 data %d %d 3 hole,zero %d %d 0 data", 1<<20, 1<<20, 2<<20, 3<<20, 1<<20))
		if !slices.Equal(got, want) {
			t.Fatalf("nbdinfo --map (tls %v): %q, want %q", withTLS, got, want)
		}
	}
}

// TestNbdcopy copies with libnbd's nbdcopy, which reads over several connections at
// once and skips holes by block status.
func TestNbdcopy(t *testing.T) {
	testutil.RequireCommand(t, "nbdcopy", "libnbd-bin")
	ts, want := interopServer(t, "unix", nil)
	dir := t.TempDir()
	for name, data := range map[string][]byte{"disk": want, "sparse": nil} {
		out := filepath.Join(dir, name+".raw")
		if err := os.WriteFile(out, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		testutil.Run(t, "nbdcopy", "nbd+unix:///"+name+"?socket="+ts.addr, out)
		if data == nil {
			data = make([]byte, 4<<20)
			copy(data, want[:1<<20])
			copy(data[3<<20:], want[3<<20:4<<20])
		}
		sameFile(t, out, data)
	}
}

// TestQcow2OverlayHydrates is instant launch in miniature, offline: a qcow2 overlay with
// the NBD export as its backing file takes a write (the guest's), then qemu-img rebase
// copies every block it lacks from the server (the hydration), after which the overlay
// stands alone and equals the export with the write.
func TestQcow2OverlayHydrates(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img", "qemu-utils")
	testutil.RequireCommand(t, "qemu-io", "qemu-utils")
	ts, want := interopServer(t, "unix", nil)
	dir := t.TempDir()
	overlay := filepath.Join(dir, "overlay.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
		"-b", "nbd+unix:///disk?socket="+ts.addr, overlay)
	testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 64k", overlay)
	testutil.Run(t, "qemu-img", "rebase", "-q", "-f", "qcow2", "-b", "", overlay)
	ts.stop(t) // the overlay must not need the server any more
	expected := slices.Clone(want)
	for i := 1 << 20; i < 1<<20+64<<10; i++ {
		expected[i] = 0xab
	}
	raw := filepath.Join(dir, "expected.raw")
	if err := os.WriteFile(raw, expected, 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", overlay, raw)
	if info := testutil.Run(t, "qemu-img", "info", overlay); strings.Contains(info, "backing file") {
		t.Fatalf("the hydrated overlay still has a backing file:\n%s", info)
	}
}

// TestBlockStreamHydrates is the hydration instant launch will run, minus the guest:
// qemu-storage-daemon opens a qcow2 overlay whose backing is the export, and QMP
// block-stream copies every block into the overlay and drops the backing; afterwards
// the overlay equals the export with the server gone.
func TestBlockStreamHydrates(t *testing.T) {
	testutil.RequireCommand(t, "qemu-storage-daemon", "qemu-utils")
	ts, want := interopServer(t, "unix", nil)
	dir := t.TempDir()
	overlay, qmp := filepath.Join(dir, "overlay.qcow2"), filepath.Join(dir, "qmp.sock")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
		"-b", "nbd+unix:///disk?socket="+ts.addr, overlay)
	testutil.StartProcess(t, exec.Command("qemu-storage-daemon",
		"--blockdev", "driver=nbd,node-name=base,server.type=unix,server.path="+ts.addr+",export=disk,read-only=on",
		"--blockdev", "driver=file,node-name=file0,filename="+overlay,
		"--blockdev", "driver=qcow2,node-name=overlay,file=file0,backing=base",
		"--chardev", "socket,id=qmp0,path="+qmp+",server=on,wait=off",
		"--monitor", "chardev=qmp0"))
	m := dialQMP(t, qmp)
	m.command(`{"execute":"qmp_capabilities"}`)
	m.command(`{"execute":"block-stream","arguments":{"job-id":"hydrate","device":"overlay"}}`)
	ev := m.event("BLOCK_JOB_COMPLETED")
	if ev.Data["error"] != nil || ev.Data["offset"] != ev.Data["len"] {
		t.Fatalf("block-stream ended with %v", ev.Data)
	}
	m.command(`{"execute":"quit"}`)
	ts.stop(t)
	raw := filepath.Join(dir, "expected.raw")
	if err := os.WriteFile(raw, want, 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", overlay, raw)
}

// qmpConn is a QMP monitor connection: one JSON message per line.
type qmpConn struct {
	t   *testing.T
	dec *json.Decoder
	nc  net.Conn
}

type qmpMessage struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Desc string `json:"desc"`
	} `json:"error"`
	Event string         `json:"event"`
	Data  map[string]any `json:"data"`
}

// dialQMP connects to the monitor socket once it exists and reads the greeting.
func dialQMP(t *testing.T, path string) *qmpConn {
	deadline := time.Now().Add(10 * time.Second)
	for {
		nc, err := net.Dial("unix", path)
		if err == nil {
			_ = nc.SetDeadline(time.Now().Add(60 * time.Second))
			t.Cleanup(func() { nc.Close() })
			m := &qmpConn{t: t, dec: json.NewDecoder(nc), nc: nc}
			m.next() // the greeting
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("the QMP socket %s did not open: %v", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (m *qmpConn) next() qmpMessage {
	m.t.Helper()
	var msg qmpMessage
	if err := m.dec.Decode(&msg); err != nil {
		m.t.Fatalf("read from QMP: %v", err)
	}
	return msg
}

// command sends a command and waits for its return, skipping events.
func (m *qmpConn) command(cmd string) {
	m.t.Helper()
	if _, err := io.WriteString(m.nc, cmd+"\n"); err != nil {
		m.t.Fatalf("QMP %s: %v", cmd, err)
	}
	for {
		msg := m.next()
		if msg.Error != nil {
			m.t.Fatalf("QMP %s: %s", cmd, msg.Error.Desc)
		}
		if msg.Return != nil {
			return
		}
	}
}

// event waits for an event.
func (m *qmpConn) event(name string) qmpMessage {
	m.t.Helper()
	for {
		if msg := m.next(); msg.Event == name {
			return msg
		}
	}
}
