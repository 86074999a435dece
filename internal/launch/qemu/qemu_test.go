package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/launch/conversion/ext4image"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// needQEMU needs the QEMU binary (and a kernel for the tests that boot).
func needQEMU(t *testing.T) {
	t.Helper()
	testutil.RequireCommand(t, DefaultBinary, "qemu-system-x86")
}

// stopAtEnd kills the VM when the test ends, whatever happened.
func stopAtEnd(t *testing.T, v *VM) {
	t.Cleanup(func() {
		if err := v.Kill(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := v.Wait(ctx); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
}

// emptyDisk makes a small raw disk with nothing on it.
func emptyDisk(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "empty.raw")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 1<<20); err != nil {
		t.Fatal(err)
	}
	return p
}

func gone(pid int) bool {
	_, alive := procStart(pid)
	return !alive
}

// A VM that never boots (paused from the start): the process, QMP, port forwards,
// Attach and Stop, without the cost of a guest.
func TestPausedVMLifecycle(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	dir := t.TempDir()
	cfg := Config{
		Name:        "paused-1",
		Dir:         filepath.Join(dir, "vm"),
		Disks:       []Disk{{Path: emptyDisk(t)}},
		StartPaused: true,
		Network: Network{Isolated: true, PortForwards: []PortForward{
			{GuestPort: 80}, {Proto: "udp", GuestPort: 53}, {GuestPort: 22, HostPort: busyPort},
		}},
	}
	// A host port that is taken is refused with what to do.
	_, err = Start(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "choose another port") {
		t.Fatalf("Start with a busy host port: %v, want an error that says to choose another port", err)
	}
	cfg.Network.PortForwards = cfg.Network.PortForwards[:2]
	v, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, v)
	if st, err := v.Status(ctx); err != nil || st != StatePrelaunch {
		t.Fatalf("Status = %q, %v; want prelaunch", st, err)
	}
	ports := v.Ports()
	if len(ports) != 2 || ports[0].HostPort == 0 || ports[1].HostPort == 0 || ports[0].Proto != "tcp" || ports[1].Proto != "udp" {
		t.Fatalf("Ports = %+v, want the host ports QEMU chose", ports)
	}
	// QEMU listens on the chosen TCP port, even for a guest that is not running.
	c, err := net.Dial("tcp", ports[0].Addr())
	if err != nil {
		t.Fatalf("the forwarded port %s does not accept connections: %v", ports[0].Addr(), err)
	}
	c.Close()
	// The QEMU process is not our child: it survives us (its parent is init, or
	// whichever process adopts orphans).
	if ppid := parentPid(t, v.Pid()); ppid == os.Getpid() {
		t.Errorf("QEMU's parent is the test process: it would not outlive the control plane")
	}
	// A second VM value attaches through the state directory.
	a, err := Attach(cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if a.Pid() != v.Pid() || !reflect.DeepEqual(a.Ports(), ports) || a.Name() != "paused-1" {
		t.Errorf("attached VM: pid %d ports %+v, want pid %d ports %+v", a.Pid(), a.Ports(), v.Pid(), ports)
	}
	// Starting again from the same directory is refused while the VM runs.
	if _, err := Start(ctx, cfg); err == nil || !strings.Contains(err.Error(), "already runs") {
		t.Errorf("second Start from the same directory: %v", err)
	}
	// Events: a QMP client of our own sees RESUME and STOP.
	q, err := DialQMP(ctx, filepath.Join(cfg.Dir, "qmp.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if g := q.Greeting(); g.Version.QEMU.Major < 5 {
		t.Errorf("greeting: %+v", g)
	}
	for _, cmd := range []string{"cont", "stop"} {
		if err := q.Execute(ctx, cmd, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	for len(names) < 2 {
		select {
		case ev := <-q.Events():
			names = append(names, ev.Name)
			if ev.Time.IsZero() {
				t.Errorf("event %s has no time", ev.Name)
			}
		case <-ctx.Done():
			t.Fatalf("events: got %v, waiting for RESUME and STOP", names)
		}
	}
	if !reflect.DeepEqual(names, []string{"RESUME", "STOP"}) {
		t.Errorf("events = %v, want [RESUME STOP]", names)
	}
	var qerr *QMPError
	if err := q.Execute(ctx, "no-such-command", nil, nil); !errors.As(err, &qerr) || qerr.Class != "CommandNotFound" {
		t.Errorf("unknown command: %v, want a CommandNotFound QMPError", err)
	}
	q.Close()
	if st, err := a.Status(ctx); err != nil || st != StatePaused {
		t.Errorf("Status after stop = %q, %v; want paused", st, err)
	}
	// Stop through the attached value: a paused guest cannot see the power button, so
	// QEMU is told to quit.
	pid := v.Pid()
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if !gone(pid) {
		t.Errorf("QEMU (pid %d) still runs after Stop", pid)
	}
	if st, err := v.Status(ctx); err != nil || st != StateStopped {
		t.Errorf("Status of the first value after Stop = %q, %v; want stopped", st, err)
	}
	if _, err := Attach(cfg.Dir); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Attach after Stop: %v, want ErrNotRunning", err)
	}
	if err := a.Stop(ctx); err != nil {
		t.Errorf("Stop of a stopped VM: %v", err)
	}
}

func parentPid(t *testing.T, pid int) int {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

func TestMissingQEMU(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := Start(context.Background(), Config{Name: "x", Dir: t.TempDir(), Disks: []Disk{{Path: emptyDisk(t)}}})
	if err == nil || !strings.Contains(err.Error(), "apt-get install qemu-system-x86") {
		t.Fatalf("Start without QEMU: %v, want the package to install", err)
	}
	_, err = Start(context.Background(), Config{Name: "x", Dir: t.TempDir(), Binary: "/nonexistent/qemu", Disks: []Disk{{Path: emptyDisk(t)}}})
	if err == nil || !strings.Contains(err.Error(), "qemu-system-x86") {
		t.Fatalf("Start with a missing binary: %v, want the package to install", err)
	}
}

func TestUEFIWithoutOVMF(t *testing.T) {
	dir := t.TempDir()
	_, _, err := findOVMF([][2]string{{filepath.Join(dir, "CODE.fd"), filepath.Join(dir, "VARS.fd")}})
	if err == nil || !strings.Contains(err.Error(), "apt-get install ovmf") {
		t.Fatalf("findOVMF: %v, want the package to install", err)
	}
	code, vars := filepath.Join(dir, "c.fd"), filepath.Join(dir, "v.fd")
	for _, p := range []string{code, vars} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c, v, err := findOVMF([][2]string{{filepath.Join(dir, "CODE.fd"), vars}, {code, vars}})
	if err != nil || c != code || v != vars {
		t.Fatalf("findOVMF = %s %s %v", c, v, err)
	}
}

func TestConfigValidation(t *testing.T) {
	disk := emptyDisk(t)
	qcow := filepath.Join(t.TempDir(), "d.qcow2")
	if err := os.WriteFile(qcow, []byte("QFI\xfb\x00\x00\x00\x03"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok := Config{Name: "web-1", Dir: t.TempDir(), Disks: []Disk{{Path: disk}}}
	for name, mutate := range map[string]func(*Config){
		"no name":          func(c *Config) { c.Name = "" },
		"name with comma":  func(c *Config) { c.Name = "a,b" },
		"no dir":           func(c *Config) { c.Dir = "" },
		"long dir":         func(c *Config) { c.Dir = "/" + strings.Repeat("d", 120) },
		"no disk":          func(c *Config) { c.Disks = nil },
		"missing disk":     func(c *Config) { c.Disks = []Disk{{Path: "/nonexistent.raw"}} },
		"qcow2 as raw":     func(c *Config) { c.Disks = []Disk{{Path: qcow, Format: "raw"}} },
		"raw as qcow2":     func(c *Config) { c.Disks = []Disk{{Path: disk, Format: "qcow2"}} },
		"vmdk":             func(c *Config) { c.Disks = []Disk{{Path: disk, Format: "vmdk"}} },
		"accel":            func(c *Config) { c.Accel = "hvf" },
		"kernel missing":   func(c *Config) { c.Boot = Boot{Mode: BootKernel} },
		"cmdline for disk": func(c *Config) { c.Boot = Boot{Cmdline: "x"} },
		"firmware":         func(c *Config) { c.Boot = Boot{Firmware: "coreboot"} },
		"network mode":     func(c *Config) { c.Network.Mode = "bridge" },
		"bad mac":          func(c *Config) { c.Network.MAC = "01:00:5e:00:00:01" },
		"forward no net":   func(c *Config) { c.Network = Network{Mode: NetworkNone, PortForwards: []PortForward{{GuestPort: 80}}} },
		"forward proto":    func(c *Config) { c.Network.PortForwards = []PortForward{{Proto: "sctp", GuestPort: 80}} },
		"forward addr":     func(c *Config) { c.Network.PortForwards = []PortForward{{HostAddr: "::1", GuestPort: 80}} },
		"forward port":     func(c *Config) { c.Network.PortForwards = []PortForward{{GuestPort: 0}} },
		"forward twice": func(c *Config) {
			c.Network.PortForwards = []PortForward{{HostPort: 8080, GuestPort: 80}, {HostPort: 8080, GuestPort: 81}}
		},
	} {
		c := ok
		mutate(&c)
		if _, err := c.normalize(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	n, err := ok.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if n.Accel != "tcg" || n.CPUs != 1 || n.MemoryMiB != 512 || n.Disks[0].Format != "raw" || n.Boot.Mode != BootDisk || n.Network.Mode != NetworkUser {
		t.Errorf("defaults: %+v", n)
	}
	n2, _ := ok.normalize()
	if n.Network.MAC != n2.Network.MAC || !strings.HasPrefix(n.Network.MAC, "52:54:00:") {
		t.Errorf("default MAC %s is not stable and QEMU's", n.Network.MAC)
	}
	q := ok
	q.Disks = []Disk{{Path: qcow}}
	if n, err := q.normalize(); err != nil || n.Disks[0].Format != "qcow2" {
		t.Errorf("qcow2 detection: %+v %v", n.Disks, err)
	}
}

func TestArgs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a,b")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(disk, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Config{
		Name: "web-1", Dir: dir, Accel: "kvm", CPUs: 2, MemoryMiB: 1024,
		Disks:       []Disk{{Path: disk}},
		ExtraDrives: []Disk{{Path: disk}},
		Boot:        Boot{Mode: BootKernel, Kernel: kernel, Cmdline: "root=/dev/vda console=ttyS0"},
		Network: Network{Isolated: true, MAC: "52:54:00:12:34:56", PortForwards: []PortForward{
			{HostPort: 8080, GuestPort: 80}, {Proto: "udp", HostAddr: "127.0.0.2", GuestPort: 53},
		}},
	}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(c.args(firmware{}), " ")
	for _, want := range []string{
		"-accel kvm", "-cpu host", "-smp 2", "-m 1024", "-daemonize",
		"-netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.2:0-:53",
		"virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
		"file=" + strings.ReplaceAll(disk, ",", ",,") + ",format=raw", // commas in paths doubled
		"readonly=on",
		"-kernel " + kernel, "-append root=/dev/vda console=ttyS0",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("QEMU arguments lack %q:\n%s", want, args)
		}
	}
	if strings.Contains(args, "-S") || strings.Contains(args, "bootindex") {
		t.Errorf("unexpected -S or bootindex:\n%s", args)
	}
	c.Network.Isolated = false
	c.Network.Mode = NetworkNone
	c.Network.PortForwards = nil
	c.StartPaused = true
	args = strings.Join(c.args(firmware{}), " ")
	if strings.Contains(args, "restrict") || strings.Contains(args, "-netdev") || !strings.Contains(args, " -S") {
		t.Errorf("no network, paused:\n%s", args)
	}
}

func TestUsernetPorts(t *testing.T) {
	out := "Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n" +
		"  TCP[HOST_FORWARD]  13       127.0.0.1  8080       10.0.2.15    80     0     0\r\n" +
		"  TCP[HOST_FORWARD]  12       127.0.0.1 33595       10.0.2.15    80     0     0\r\n" +
		"  UDP[HOST_FORWARD]  11       127.0.0.1 35464       10.0.2.15    53     0     0\r\n" +
		"  TCP[ESTABLISHED]   20        10.0.2.15 40000       10.0.2.2   80     0     0\r\n"
	rows := parseUsernet(out)
	if len(rows) != 3 {
		t.Fatalf("rows = %+v", rows)
	}
	got, err := assignPorts([]PortForward{
		{Proto: "tcp", HostAddr: "127.0.0.1", GuestPort: 80},
		{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 80},
		{Proto: "udp", HostAddr: "127.0.0.1", GuestPort: 53},
	}, rows)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].HostPort != 33595 || got[1].HostPort != 8080 || got[2].HostPort != 35464 {
		t.Errorf("assigned %+v", got)
	}
	if _, err := assignPorts([]PortForward{{Proto: "tcp", HostAddr: "127.0.0.1", GuestPort: 22}}, rows); err == nil {
		t.Error("a forward QEMU does not list was assigned a port")
	}
}

func FuzzParseUsernet(f *testing.F) {
	f.Add("  TCP[HOST_FORWARD]  12       127.0.0.1 33595       10.0.2.15    80     0     0\r\n")
	f.Add("  UDP[HOST_FORWARD]  11  * 1 x 2 3 4\n")
	f.Fuzz(func(t *testing.T, out string) {
		for _, r := range parseUsernet(out) {
			if r.proto != "tcp" && r.proto != "udp" || r.hostPort < 0 || r.hostPort > 65535 || r.guestPort < 0 || r.guestPort > 65535 {
				t.Fatalf("impossible row %+v", r)
			}
		}
	})
}

func TestDecodeMessage(t *testing.T) {
	for _, c := range []struct {
		in   string
		ok   bool
		kind string
	}{
		{`{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}`, true, "greeting"},
		{`{"return": {}}`, true, "return"},
		{`{"return": {"status": "running", "running": true}, "id": "7"}`, true, "return"},
		{`{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": "8"}`, true, "error"},
		{`{"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}`, true, "event"},
		{`{"return": {}, "event": "STOP"}`, false, ""},
		{`{}`, false, ""},
		{`[1]`, false, ""},
		{`{"event": ""}`, false, ""},
		{`{"error": {}}`, false, ""},
		{`{"return": `, false, ""},
	} {
		m, err := decodeMessage([]byte(c.in))
		if (err == nil) != c.ok {
			t.Errorf("decodeMessage(%s): %v", c.in, err)
			continue
		}
		if !c.ok {
			continue
		}
		kind := ""
		switch {
		case m.greeting != nil:
			kind = "greeting"
		case m.event != nil:
			kind = "event"
		case m.err != nil:
			kind = "error"
		case m.isAnswer:
			kind = "return"
		}
		if kind != c.kind {
			t.Errorf("decodeMessage(%s) is a %s, want %s", c.in, kind, c.kind)
		}
	}
	m, _ := decodeMessage([]byte(`{"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": "SHUTDOWN", "data": {"guest": true}}`))
	if m.event.Name != "SHUTDOWN" || m.event.Time.Unix() != 1700000000 || string(m.event.Data) != `{"guest": true}` {
		t.Errorf("event = %+v", m.event)
	}
}

func FuzzDecodeMessage(f *testing.F) {
	f.Add([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}`))
	f.Add([]byte(`{"return": {"status": "running"}, "id": "1"}`))
	f.Add([]byte(`{"error": {"class": "GenericError", "desc": "x"}}`))
	f.Add([]byte(`{"event": "STOP", "timestamp": {"seconds": -1, "microseconds": 99999999}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeMessage(data)
		if err != nil {
			return
		}
		kinds := 0
		if m.greeting != nil {
			kinds++
		}
		if m.event != nil {
			kinds++
			if m.event.Name == "" {
				t.Fatal("event without a name")
			}
		}
		if m.isAnswer {
			kinds++
		}
		if kinds != 1 {
			t.Fatalf("%d kinds in one message: %q", kinds, data)
		}
		if m.isAnswer && m.err == nil && m.ret == nil {
			t.Fatalf("answer with neither return nor error: %q", data)
		}
		if m.ret != nil && !json.Valid(m.ret) {
			t.Fatalf("return is not JSON: %q", m.ret)
		}
	})
}

func TestPickKernel(t *testing.T) {
	e := func(name string, size int64) ext4image.Entry {
		return ext4image.Entry{Name: name, Mode: 0o644, Size: size}
	}
	link := ext4image.Entry{Name: "vmlinuz-9.9.9", Mode: os.ModeSymlink | 0o777, Size: 10}
	for _, c := range []struct {
		entries        []ext4image.Entry
		kernel, initrd string
	}{
		{[]ext4image.Entry{e("vmlinuz-6.1.0-9-amd64", 1), e("vmlinuz-6.1.0-10-amd64", 1), e("initrd.img-6.1.0-10-amd64", 1), e("initrd.img-6.1.0-9-amd64", 1), link}, "vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-10-amd64"},
		{[]ext4image.Entry{e("vmlinuz-5.14.0-70.el9.x86_64", 1), e("initramfs-5.14.0-70.el9.x86_64.img", 1)}, "vmlinuz-5.14.0-70.el9.x86_64", "initramfs-5.14.0-70.el9.x86_64.img"},
		{[]ext4image.Entry{e("vmlinuz", 1), e("initrd.img", 1)}, "vmlinuz", "initrd.img"},
		{[]ext4image.Entry{e("vmlinuz-6.1", 1)}, "vmlinuz-6.1", ""},
		{[]ext4image.Entry{e("vmlinuz-6.1", 0), e("config-6.1", 1)}, "", ""},
		{[]ext4image.Entry{link}, "", ""},
	} {
		k, i := pickKernel(c.entries)
		if k != c.kernel || i != c.initrd {
			t.Errorf("pickKernel(%v) = %q %q, want %q %q", c.entries, k, i, c.kernel, c.initrd)
		}
	}
}

// The client's whole read path (lines, decoding, answers, events) on whatever a socket
// may carry after a proper greeting: it must neither panic nor hang.
func FuzzQMPClient(f *testing.F) {
	f.Add([]byte(`{"return": {"status": "running"}, "id": "2"}` + "\n"))
	f.Add([]byte(`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}` + "\n" + `{"error": {"class": "GenericError", "desc": "no"}, "id": "2"}` + "\n"))
	f.Add([]byte(`{"return": {}}` + "\n" + `not json` + "\n"))
	f.Add([]byte(`{"return": 5, "id": 2}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		go func() {
			defer server.Close()
			_, _ = server.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}` + "\n"))
			_, _ = bufio.NewReader(server).ReadString('\n') // qmp_capabilities
			_, _ = server.Write([]byte(`{"return": {}, "id": "1"}` + "\n"))
			_, _ = server.Write(data)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := newQMPClient(ctx, client)
		if err != nil {
			t.Fatalf("negotiation with a well-behaved greeting failed: %v", err)
		}
		var st map[string]any
		_ = c.Execute(ctx, "query-status", nil, &st)
		if ctx.Err() != nil {
			t.Fatal("Execute hung until the deadline")
		}
		c.Close()
		for range c.Events() { // closed once the reader stops
		}
	})
}

// helperDirEnv, when set, makes TestMain start a paused VM in that directory and exit:
// a stand-in for a control plane that starts a recovered server and then stops.
const helperDirEnv = "LIFEBOAT_TEST_QEMU_START_AND_EXIT"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperDirEnv); dir != "" {
		disk := filepath.Join(dir, "disk.raw")
		if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
			panic(err)
		}
		v, err := Start(context.Background(), Config{Name: "orphan", Dir: filepath.Join(dir, "vm"), Disks: []Disk{{Path: disk}}, StartPaused: true})
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(3)
		}
		os.Stdout.WriteString(strconv.Itoa(v.Pid()) + "\n")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The process that starts a VM ends (a control-plane restart); the VM runs on, and a new
// process attaches to it and stops it.
func TestVMOutlivesItsStarter(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperDirEnv+"="+dir)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the starter process failed: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("the starter printed %q, not a pid", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v, err := Attach(filepath.Join(dir, "vm"))
	if err != nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("the VM did not outlive the process that started it: %v", err)
	}
	stopAtEnd(t, v)
	if v.Pid() != pid {
		t.Errorf("attached pid %d, the starter started %d", v.Pid(), pid)
	}
	if st, err := v.Status(ctx); err != nil || st != StatePrelaunch {
		t.Errorf("Status = %q, %v; want prelaunch", st, err)
	}
	if err := v.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if !gone(pid) {
		t.Errorf("QEMU (pid %d) still runs after Stop", pid)
	}
}

// A running guest that ignores the power button (here: firmware with nothing to boot) is
// quit once the stop timeout has passed.
func TestStopEscalatesWhenTheGuestIgnoresThePowerButton(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var logs strings.Builder
	var mu sync.Mutex
	v, err := Start(ctx, Config{
		Name: "deaf", Dir: filepath.Join(t.TempDir(), "vm"), Disks: []Disk{{Path: emptyDisk(t)}},
		Network: Network{Mode: NetworkNone}, StopTimeout: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, v)
	if st, err := v.Status(ctx); err != nil || st != StateRunning {
		t.Fatalf("Status = %q, %v; want running", st, err)
	}
	if err := v.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if !gone(v.Pid()) {
		t.Fatalf("QEMU (pid %d) still runs after Stop", v.Pid())
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "did not power off in time") || !strings.Contains(logs.String(), "QEMU quit") {
		t.Errorf("Stop did not go from the power button to quit; its log:\n%s", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// A disk with a separate /boot partition (kernels at its top) before the root partition:
// the kernel comes from the first, root=UUID names the second.
func TestExtractBootSeparateBootPartition(t *testing.T) {
	testutil.RequireCommand(t, "sfdisk", "fdisk")
	testutil.RequireCommand(t, "mkfs.ext4", "e2fsprogs")
	testutil.RequireCommand(t, "debugfs", "e2fsprogs")
	ctx := context.Background()
	dir := t.TempDir()
	write := func(p, content string) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bootTree, rootTree := filepath.Join(dir, "boot"), filepath.Join(dir, "root")
	write(filepath.Join(bootTree, "vmlinuz-6.1.0-9-amd64"), "old kernel")
	write(filepath.Join(bootTree, "initrd.img-6.1.0-9-amd64"), "old initrd")
	write(filepath.Join(bootTree, "vmlinuz-6.1.0-10-amd64"), "new kernel")
	write(filepath.Join(bootTree, "initrd.img-6.1.0-10-amd64"), "new initrd")
	write(filepath.Join(rootTree, "etc", "hostname"), "x\n")
	if err := os.MkdirAll(filepath.Join(rootTree, "boot"), 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 48<<20); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sfdisk", "-q", disk)
	cmd.Stdin = strings.NewReader("label: gpt\nstart=2048, size=32768, type=BC13C2FF-59E6-4262-A352-B275FD6F7172\nstart=34816, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	testutil.Run(t, "mkfs.ext4", "-q", "-F", "-E", "offset=1048576", "-d", bootTree, disk, "16M")
	testutil.Run(t, "mkfs.ext4", "-q", "-F", "-E", fmt.Sprintf("offset=%d", 34816*512), "-d", rootTree, disk, "28M")
	out := filepath.Join(dir, "vm", "boot")
	b, err := ExtractBoot(ctx, disk, out)
	if err != nil {
		t.Fatal(err)
	}
	root, err := ext4image.Root(ctx, disk)
	if err != nil {
		t.Fatal(err)
	}
	if root.Partition != 2 || !strings.Contains(b.Cmdline, "root=UUID="+root.UUID+" ") || b.Mode != BootKernel {
		t.Errorf("Boot = %+v; root filesystem %+v", b, root)
	}
	for p, want := range map[string]string{b.Kernel: "new kernel", b.Initrd: "new initrd"} {
		if got, err := os.ReadFile(p); err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", p, got, err, want)
		}
	}
	// Extracting again replaces the copies.
	if _, err := ExtractBoot(ctx, disk, out); err != nil {
		t.Fatalf("second ExtractBoot: %v", err)
	}
	// A disk with no kernel says to boot from disk instead.
	empty := filepath.Join(dir, "nokernel.raw")
	testutil.Run(t, "mkfs.ext4", "-q", "-F", "-d", rootTree, empty, "16M")
	if _, err := ExtractBoot(ctx, empty, out); err == nil || !strings.Contains(err.Error(), "Boot.Mode disk") {
		t.Errorf("ExtractBoot without a kernel: %v", err)
	}
}
