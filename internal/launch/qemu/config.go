package qemu

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Config describes one recovered server to run as a QEMU VM.
type Config struct {
	// Name names the VM (letters, digits, '.', '_', '-'; at most 63). It also seeds the
	// default MAC address, so a relaunch keeps its MAC.
	Name string
	// Dir is the VM's state directory, created if missing: vm.json (what Attach reads),
	// qemu.pid, qmp.sock, serial.log (the console), qemu.log (QEMU's own messages) and,
	// for UEFI, the firmware variables. Its path must be short enough for a unix socket
	// (under ~100 bytes).
	Dir string
	// Binary is the QEMU system emulator (default: qemu-system-x86_64 from PATH).
	Binary string
	// Accel is "tcg" (default: emulation, works everywhere) or "kvm".
	Accel string
	// CPUs (default 1) and MemoryMiB (default 512).
	CPUs      int
	MemoryMiB int
	// Disks are the recovered disks, in order (the first is /dev/vda), read-write.
	Disks []Disk
	// ExtraDrives are attached read-only after the disks, such as a NoCloud seed image.
	ExtraDrives []Disk
	Boot        Boot
	Network     Network
	// StartPaused starts the VM with its CPUs stopped (QMP status "prelaunch"); Continue
	// runs it.
	StartPaused bool
	// StopTimeout is how long Stop waits for the guest to power off after the ACPI
	// power button before it quits QEMU (default 60 s).
	StopTimeout time.Duration
	// Logger receives what the VM's lifecycle does (nil: discard).
	Logger *slog.Logger
}

// Disk is a disk image attached to the VM as a virtio disk.
type Disk struct {
	Path string
	// Format is "raw" or "qcow2"; empty detects it from the file (a qcow2 header, else
	// raw).
	Format string
}

// Boot modes.
const (
	BootKernel = "kernel" // direct kernel boot: Kernel, Initrd and Cmdline
	BootDisk   = "disk"   // firmware boots the first disk
)

// Firmware for disk boot.
const (
	FirmwareBIOS = "bios" // SeaBIOS, QEMU's default (MBR/BIOS-boot disks)
	FirmwareUEFI = "uefi" // OVMF (Debian package ovmf), for disks with an EFI system partition
)

// Boot says how the VM boots.
type Boot struct {
	// Mode is "kernel" or "disk" (default "disk").
	Mode string
	// Kernel, Initrd and Cmdline are for direct kernel boot (see ExtractBoot). Cmdline
	// defaults to "root=/dev/vda ro console=ttyS0".
	Kernel  string
	Initrd  string
	Cmdline string
	// Firmware is "bios" (default) or "uefi", for disk boot.
	Firmware string
}

// Network modes.
const (
	NetworkUser = "user" // QEMU user-mode networking (slirp): no privileges, port forwards
	NetworkNone = "none" // no NIC
)

// Network says how the VM is connected.
type Network struct {
	// Mode is "user" or "none" (default "user").
	Mode string
	// Isolated cuts the guest off from the host and everything beyond (user-mode
	// restrict=on): it can reach nothing, while port forwards still reach it. Drills run
	// isolated so that they never touch the source's network.
	Isolated bool
	// PortForwards forward host ports to guest ports (user mode only).
	PortForwards []PortForward
	// MAC is the NIC's address (default: 52:54:00 followed by a hash of Name).
	MAC string
}

// PortForward forwards a host port to a guest port.
type PortForward struct {
	Proto     string `json:"proto"`     // "tcp" (default) or "udp"
	HostAddr  string `json:"host_addr"` // default 127.0.0.1
	HostPort  int    `json:"host_port"` // 0 picks a free port: VM.Ports reports it
	GuestPort int    `json:"guest_port"`
}

// Addr is the forward's host address as host:port.
func (p PortForward) Addr() string {
	return net.JoinHostPort(p.HostAddr, strconv.Itoa(p.HostPort))
}

// DefaultBinary is the QEMU binary Start looks for on PATH.
const DefaultBinary = "qemu-system-x86_64"

// validName reports whether a VM name is 1-63 letters, digits, '.', '_' or '-', starting
// with a letter or digit.
func validName(name string) bool {
	if len(name) == 0 || len(name) > 63 {
		return false
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			i > 0 && (r == '.' || r == '_' || r == '-')
		if !ok {
			return false
		}
	}
	return true
}

// maxSocketPath is the longest path a unix socket address holds (sun_path less its NUL).
const maxSocketPath = 107

// normalize fills in defaults and checks the configuration, with messages an operator
// can act on. It does not touch the disk images beyond checking they exist.
func (c Config) normalize() (Config, error) {
	if !validName(c.Name) {
		return c, fmt.Errorf("VM name %q is not valid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", c.Name)
	}
	if c.Dir == "" {
		return c, errors.New("the VM needs a state directory (Config.Dir)")
	}
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return c, fmt.Errorf("state directory %s: %w", c.Dir, err)
	}
	c.Dir = dir
	if n := len(filepath.Join(dir, "qmp.sock")); n > maxSocketPath {
		return c, fmt.Errorf("state directory %s is too long for the VM's monitor socket (%d bytes, at most %d): use a shorter path", dir, n, maxSocketPath)
	}
	if c.Binary == "" {
		c.Binary = DefaultBinary
	}
	switch c.Accel {
	case "":
		c.Accel = "tcg"
	case "tcg", "kvm":
	default:
		return c, fmt.Errorf("accelerator %q is not supported: use tcg or kvm", c.Accel)
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.CPUs < 1 || c.CPUs > 255 {
		return c, fmt.Errorf("%d CPUs: use 1 to 255", c.CPUs)
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 512
	}
	if c.MemoryMiB < 64 || c.MemoryMiB > 16<<20 {
		return c, fmt.Errorf("%d MiB of memory: use at least 64", c.MemoryMiB)
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 60 * time.Second
	}
	if c.StopTimeout < 0 {
		return c, fmt.Errorf("stop timeout %s is negative", c.StopTimeout)
	}
	if len(c.Disks) == 0 {
		return c, errors.New("the VM has no disk: give at least one (Config.Disks)")
	}
	c.Disks = append([]Disk(nil), c.Disks...)
	c.ExtraDrives = append([]Disk(nil), c.ExtraDrives...)
	for _, set := range [][]Disk{c.Disks, c.ExtraDrives} {
		for i := range set {
			d, err := set[i].normalize()
			if err != nil {
				return c, err
			}
			set[i] = d
		}
	}
	if c.Boot, err = c.Boot.normalize(); err != nil {
		return c, err
	}
	if c.Network, err = c.Network.normalize(c.Name); err != nil {
		return c, err
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

func (d Disk) normalize() (Disk, error) {
	if d.Path == "" {
		return d, errors.New("a disk has no path")
	}
	p, err := filepath.Abs(d.Path)
	if err != nil {
		return d, fmt.Errorf("disk %s: %w", d.Path, err)
	}
	d.Path = p
	f, err := os.Open(p)
	if err != nil {
		return d, fmt.Errorf("disk %s: %w", p, err)
	}
	defer f.Close()
	magic := make([]byte, 4)
	_, _ = f.ReadAt(magic, 0)
	isQcow2 := string(magic) == "QFI\xfb"
	switch d.Format {
	case "":
		d.Format = "raw"
		if isQcow2 {
			d.Format = "qcow2"
		}
	case "raw":
		if isQcow2 {
			return d, fmt.Errorf("disk %s is a qcow2 image but its format is given as raw: set Format to qcow2", p)
		}
	case "qcow2":
		if !isQcow2 {
			return d, fmt.Errorf("disk %s is not a qcow2 image: set Format to raw", p)
		}
	default:
		return d, fmt.Errorf("disk %s: format %q is not supported: use raw or qcow2", p, d.Format)
	}
	return d, nil
}

func (b Boot) normalize() (Boot, error) {
	switch b.Mode {
	case "":
		b.Mode = BootDisk
	case BootDisk, BootKernel:
	default:
		return b, fmt.Errorf("boot mode %q is not supported: use kernel or disk", b.Mode)
	}
	switch b.Firmware {
	case "":
		b.Firmware = FirmwareBIOS
	case FirmwareBIOS, FirmwareUEFI:
	default:
		return b, fmt.Errorf("firmware %q is not supported: use bios or uefi", b.Firmware)
	}
	if b.Mode == BootKernel {
		if b.Kernel == "" {
			return b, errors.New("direct kernel boot needs a kernel (Boot.Kernel; ExtractBoot reads one from the disk)")
		}
		var err error
		for _, p := range []*string{&b.Kernel, &b.Initrd} {
			if *p == "" {
				continue
			}
			if *p, err = filepath.Abs(*p); err != nil {
				return b, err
			}
			if _, err := os.Stat(*p); err != nil {
				return b, fmt.Errorf("direct kernel boot: %w", err)
			}
		}
		if b.Cmdline == "" {
			b.Cmdline = "root=/dev/vda ro console=ttyS0"
		}
		if b.Firmware == FirmwareUEFI {
			return b, errors.New("direct kernel boot does not use UEFI firmware: leave Boot.Firmware empty")
		}
	} else if b.Kernel != "" || b.Initrd != "" || b.Cmdline != "" {
		return b, errors.New("a kernel, initrd or command line is given but the boot mode is disk: set Boot.Mode to kernel")
	}
	return b, nil
}

func (n Network) normalize(name string) (Network, error) {
	switch n.Mode {
	case "":
		n.Mode = NetworkUser
	case NetworkUser, NetworkNone:
	default:
		return n, fmt.Errorf("network mode %q is not supported: use user or none", n.Mode)
	}
	if n.Mode == NetworkNone && len(n.PortForwards) > 0 {
		return n, errors.New("port forwards need network mode user")
	}
	if n.MAC == "" {
		sum := sha256.Sum256([]byte(name))
		n.MAC = fmt.Sprintf("52:54:00:%02x:%02x:%02x", sum[0], sum[1], sum[2])
	}
	mac, err := net.ParseMAC(n.MAC)
	if err != nil || len(mac) != 6 || mac[0]&1 != 0 {
		return n, fmt.Errorf("MAC address %q is not a unicast Ethernet address such as 52:54:00:12:34:56", n.MAC)
	}
	n.MAC = mac.String()
	n.PortForwards = append([]PortForward(nil), n.PortForwards...)
	seen := map[string]bool{}
	for i, p := range n.PortForwards {
		if p.Proto == "" {
			p.Proto = "tcp"
		}
		if p.Proto != "tcp" && p.Proto != "udp" {
			return n, fmt.Errorf("port forward protocol %q is not supported: use tcp or udp", p.Proto)
		}
		if p.HostAddr == "" {
			p.HostAddr = "127.0.0.1"
		}
		addr, err := netip.ParseAddr(p.HostAddr)
		if err != nil || !addr.Is4() {
			return n, fmt.Errorf("port forward host address %q is not an IPv4 address (user-mode networking forwards IPv4 only)", p.HostAddr)
		}
		if p.HostPort < 0 || p.HostPort > 65535 || p.GuestPort < 1 || p.GuestPort > 65535 {
			return n, fmt.Errorf("port forward %s %d→%d: ports must be 1-65535 (host port 0 picks a free one)", p.Proto, p.HostPort, p.GuestPort)
		}
		if p.HostPort != 0 {
			key := p.Proto + " " + p.Addr()
			if seen[key] {
				return n, fmt.Errorf("host port %s/%s is forwarded twice", p.Addr(), p.Proto)
			}
			seen[key] = true
		}
		n.PortForwards[i] = p
	}
	return n, nil
}

// OptValue escapes a value for a QEMU comma-separated option list (a comma is doubled).
func OptValue(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// args builds QEMU's command line. firmware is the OVMF code and variables files for
// UEFI boot (empty otherwise).
func (c Config) args(fw firmware) []string {
	f := c.files()
	a := []string{
		"-name", "guest=" + OptValue(c.Name),
		"-machine", "q35",
		"-accel", c.Accel,
		"-smp", strconv.Itoa(c.CPUs),
		"-m", strconv.Itoa(c.MemoryMiB),
		"-nodefaults", "-no-user-config", "-display", "none",
		"-chardev", "file,id=serial0,path=" + OptValue(f.serial),
		"-serial", "chardev:serial0",
		"-qmp", "unix:" + OptValue(f.qmp) + ",server=on,wait=off",
		"-pidfile", f.pid,
		// With a log file, the daemon keeps writing its errors there instead of to
		// /dev/null; guest_errors is the quietest log category.
		"-D", f.log, "-d", "guest_errors",
		"-daemonize",
	}
	if c.Accel == "kvm" {
		a = append(a, "-cpu", "host")
	} else {
		a = append(a, "-cpu", "max")
	}
	for i, d := range c.Disks {
		id := "disk" + strconv.Itoa(i)
		a = append(a,
			"-drive", "if=none,id="+id+",file="+OptValue(d.Path)+",format="+d.Format+",cache=writeback,discard=unmap",
			"-device", "virtio-blk-pci,drive="+id+bootIndex(i == 0 && c.Boot.Mode == BootDisk))
	}
	for i, d := range c.ExtraDrives {
		id := "extra" + strconv.Itoa(i)
		a = append(a,
			"-drive", "if=none,id="+id+",file="+OptValue(d.Path)+",format="+d.Format+",readonly=on",
			"-device", "virtio-blk-pci,drive="+id)
	}
	switch c.Boot.Mode {
	case BootKernel:
		a = append(a, "-kernel", c.Boot.Kernel, "-append", c.Boot.Cmdline)
		if c.Boot.Initrd != "" {
			a = append(a, "-initrd", c.Boot.Initrd)
		}
	case BootDisk:
		if c.Boot.Firmware == FirmwareUEFI {
			a = append(a,
				"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OptValue(fw.code),
				"-drive", "if=pflash,format=raw,unit=1,file="+OptValue(fw.vars))
		}
	}
	if c.Network.Mode == NetworkUser {
		netdev := "user,id=net0"
		if c.Network.Isolated {
			netdev += ",restrict=on"
		}
		for _, p := range c.Network.PortForwards {
			netdev += fmt.Sprintf(",hostfwd=%s:%s:%d-:%d", p.Proto, p.HostAddr, p.HostPort, p.GuestPort)
		}
		a = append(a, "-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,mac="+c.Network.MAC)
	}
	if c.StartPaused {
		a = append(a, "-S")
	}
	return a
}

func bootIndex(first bool) string {
	if first {
		return ",bootindex=1"
	}
	return ""
}

// files are the paths in the state directory.
type stateFiles struct {
	state, pid, qmp, serial, log, vars string
}

func (c Config) files() stateFiles { return filesIn(c.Dir) }

func filesIn(dir string) stateFiles {
	return stateFiles{
		state:  filepath.Join(dir, "vm.json"),
		pid:    filepath.Join(dir, "qemu.pid"),
		qmp:    filepath.Join(dir, "qmp.sock"),
		serial: filepath.Join(dir, "serial.log"),
		log:    filepath.Join(dir, "qemu.log"),
		vars:   filepath.Join(dir, "uefi-vars.fd"),
	}
}

// firmware is a UEFI firmware: its code (read-only) and the VM's own variables file.
type firmware struct{ code, vars string }

// ovmfCandidates are where distributions put OVMF: code and variable template pairs.
func ovmfCandidates() [][2]string {
	return [][2]string{
		{"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"}, // Debian 12+, Ubuntu
		{"/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"},       // older Debian/Ubuntu
		{"/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"},
		{"/usr/share/edk2-ovmf/x64/OVMF_CODE.fd", "/usr/share/edk2-ovmf/x64/OVMF_VARS.fd"},
	}
}

// findOVMF returns the first candidate pair whose files both exist.
func findOVMF(candidates [][2]string) (code, varsTemplate string, err error) {
	for _, c := range candidates {
		if fileExists(c[0]) && fileExists(c[1]) {
			return c[0], c[1], nil
		}
	}
	var tried []string
	for _, c := range candidates {
		tried = append(tried, c[0])
	}
	return "", "", fmt.Errorf("UEFI boot needs the OVMF firmware, which is not installed (apt-get install ovmf); looked for %s", strings.Join(tried, ", "))
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
