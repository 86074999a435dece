package launch

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/launch/qemu"
)

// The address QEMU user-mode networking gives the guest, and its gateway and DNS.
const (
	userNetGuest   = "10.0.2.15"
	userNetPrefix  = 24
	userNetGateway = "10.0.2.2"
	userNetDNS     = "10.0.2.3"
)

// vmStopTimeout is how long a terminate waits for the guest to power off cleanly.
const vmStopTimeout = 30 * time.Second

// QEMU runs each recovered server as a QEMU VM on the control plane's host.
type QEMU struct{ opts Options }

// Name is "qemu".
func (q *QEMU) Name() string { return api.ProviderQEMU }

// checkBinary refuses a launch when QEMU is not installed, before anything is written.
func (q *QEMU) checkBinary() error {
	bin := q.opts.QEMUBinary
	if bin == "" {
		bin = qemu.DefaultBinary
	}
	if _, err := exec.LookPath(bin); err != nil {
		return refuse("QEMU (%s) is not installed on the control plane's host: install the Debian package qemu-system-x86 (apt-get install qemu-system-x86)", bin)
	}
	return nil
}

// checkNetwork refuses network settings the VM cannot have and returns the guest's
// network for conversion.
func checkNetwork(s api.LaunchSettings) (*GuestNetwork, error) {
	if s.Network.Mode == api.NetworkBridge {
		return nil, refuse("the qemu provider has no bridged networking: use network mode user (with port forwards) or isolated")
	}
	addr := fmt.Sprintf("%s/%d", userNetGuest, userNetPrefix)
	if s.IP != "" {
		p, err := netip.ParsePrefix(s.IP)
		if err != nil || p.Addr().String() != userNetGuest {
			return nil, refuse("ip %s cannot be used with the qemu provider's user-mode network, where the instance is %s: leave ip empty", s.IP, userNetGuest)
		}
		addr = s.IP
	}
	return &GuestNetwork{Address: addr, Gateway: userNetGateway, DNS: []string{userNetDNS}}, nil
}

// Plan refuses what the VM cannot be, and plans one sparse raw image per volume in the
// recovery instance's directory.
func (q *QEMU) Plan(_ context.Context, req Request) (Plan, error) {
	if err := q.checkBinary(); err != nil {
		return Plan{}, err
	}
	netw, err := checkNetwork(req.Settings)
	if err != nil {
		return Plan{}, err
	}
	p := Plan{Convert: true, Network: netw}
	for i, v := range req.Volumes {
		d := Disk{Volume: v.Name, SizeBytes: v.SizeBytes, Mode: WriteFresh,
			Path: filepath.Join(req.Dir, fmt.Sprintf("disk%d.raw", i)), Format: req.Settings.DiskFormat}
		if req.Settings.Instant {
			d.Mode, d.Format, d.Path = WriteOverlay, api.DiskQcow2, filepath.Join(req.Dir, fmt.Sprintf("disk%d.qcow2", i))
		}
		p.Disks = append(p.Disks, d)
	}
	return p, nil
}

// vmSpec is one VM to start: a recovery's, or an existing instance's.
type vmSpec struct {
	name     string // VM name
	dir      string // its directory: vm/ (QEMU state) and boot/ (an extracted kernel)
	disks    []Disk // raw images (or devices) in boot order
	settings api.LaunchSettings
	isolated bool
	seed     string
}

func (s vmSpec) vmDir() string { return filepath.Join(s.dir, "vm") }

// startVM extracts the kernel (direct kernel boot), converts disks to their launch
// format and starts the VM.
func (q *QEMU) startVM(ctx context.Context, s vmSpec) (*qemu.VM, []string, error) {
	if len(s.disks) == 0 {
		return nil, nil, errors.New("the VM has no disk")
	}
	boot := qemu.Boot{Mode: qemu.BootDisk, Firmware: qemu.FirmwareBIOS}
	switch s.settings.BootMode {
	case api.BootUEFI:
		boot.Firmware = qemu.FirmwareUEFI
	case api.BootKernel:
		b, err := extractBoot(ctx, s.disks[0], filepath.Join(s.dir, "boot"))
		if err != nil {
			return nil, nil, err
		}
		if s.settings.KernelArgs != "" {
			b.Cmdline = s.settings.KernelArgs
		}
		boot = b
	}
	paths, err := finishDisks(ctx, s.disks)
	if err != nil {
		return nil, nil, err
	}
	cfg := qemu.Config{Name: s.name, Dir: s.vmDir(), Binary: q.opts.QEMUBinary, Accel: q.opts.Accel,
		CPUs: s.settings.CPUs, MemoryMiB: s.settings.MemoryMiB, Boot: boot,
		Network: qemu.Network{Mode: qemu.NetworkUser,
			Isolated: s.isolated || s.settings.Network.Mode == api.NetworkIsolated},
		StartPaused: !s.settings.StartAfterLaunch, StopTimeout: vmStopTimeout, Logger: q.opts.Logger}
	for _, p := range paths {
		cfg.Disks = append(cfg.Disks, qemu.Disk{Path: p})
	}
	if s.seed != "" {
		cfg.ExtraDrives = append(cfg.ExtraDrives, qemu.Disk{Path: s.seed, Format: "raw"})
	}
	for _, f := range s.settings.Network.PortForwards {
		cfg.Network.PortForwards = append(cfg.Network.PortForwards, qemu.PortForward{Proto: f.Protocol,
			HostAddr: f.HostAddr, HostPort: f.HostPort, GuestPort: f.GuestPort})
	}
	vm, err := qemu.Start(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return vm, paths, nil
}

// extractBoot extracts the kernel from a boot disk, through a raw view when the disk
// is an instant launch's overlay.
func extractBoot(ctx context.Context, d Disk, dir string) (qemu.Boot, error) {
	if d.Mode != WriteOverlay {
		return qemu.ExtractBoot(ctx, d.Path, dir)
	}
	v, err := OpenRawView(ctx, filepath.Dir(d.Path), []string{d.Path}, []int64{d.SizeBytes})
	if err != nil {
		return qemu.Boot{}, err
	}
	b, err := qemu.ExtractBoot(ctx, v.Paths[0], dir)
	if cerr := v.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close the raw view of %s: %w", d.Path, cerr)
	}
	return b, err
}

// launched describes a running VM.
func (q *QEMU) launched(ctx context.Context, vm *qemu.VM, dir string, disks []string) Launched {
	l := Launched{Handle: api.ProviderHandle{Host: q.opts.Host, Dir: dir, Disks: disks, VMDir: vm.Dir(), PID: vm.Pid(),
		ConsoleLog: vm.SerialLogPath()}, State: api.InstanceRunning}
	for _, p := range vm.Ports() {
		l.Ports = append(l.Ports, api.PortForward{Protocol: p.Proto, HostAddr: p.HostAddr, HostPort: p.HostPort, GuestPort: p.GuestPort})
		if l.Address == "" {
			l.Address = p.HostAddr
		}
	}
	if st, err := vm.Status(ctx); err == nil && st != qemu.StateRunning {
		l.State = api.InstanceStopped
	}
	return l
}

// Launch starts the VM.
func (q *QEMU) Launch(ctx context.Context, req Request, plan Plan, extras Extras) (Launched, error) {
	vm, paths, err := q.startVM(ctx, vmSpec{name: req.RecoveryInstanceID, dir: req.Dir, disks: plan.Disks,
		settings: req.Settings, isolated: req.Isolated, seed: extras.Seed})
	if err != nil {
		return Launched{}, err
	}
	return q.launched(ctx, vm, req.Dir, paths), nil
}

// Adopt finds the VM of an interrupted launch.
func (q *QEMU) Adopt(ctx context.Context, req Request, plan Plan) (Launched, error) {
	vm, err := q.attach(filepath.Join(req.Dir, "vm"))
	if errors.Is(err, qemu.ErrNotRunning) {
		return Launched{}, ErrNotRunning
	}
	if err != nil {
		return Launched{}, err
	}
	var disks []string
	for _, d := range plan.Disks {
		disks = append(disks, d.Path)
	}
	return q.launched(ctx, vm, req.Dir, disks), nil
}

// attach finds the VM running from a state directory, logging to the provider's logger.
func (q *QEMU) attach(dir string) (*qemu.VM, error) {
	vm, err := qemu.Attach(dir)
	if err != nil {
		return nil, err
	}
	return vm.WithLogger(q.opts.Logger), nil
}

// vmState is the state of the VM in a state directory.
func vmState(ctx context.Context, vmDir string) (string, error) {
	vm, err := qemu.Attach(vmDir)
	if errors.Is(err, qemu.ErrNotRunning) {
		return api.InstanceStopped, nil
	}
	if err != nil {
		return "", err
	}
	st, err := vm.Status(ctx)
	if err != nil {
		return "", err
	}
	if st == qemu.StateRunning {
		return api.InstanceRunning, nil
	}
	return api.InstanceStopped, nil
}

// stopVM stops the VM in a state directory, if one runs.
func (q *QEMU) stopVM(ctx context.Context, vmDir string) error {
	vm, err := q.attach(vmDir)
	if errors.Is(err, qemu.ErrNotRunning) {
		return nil
	}
	if err != nil {
		return err
	}
	return vm.Stop(ctx)
}

// State is the VM's state.
func (q *QEMU) State(ctx context.Context, h api.ProviderHandle) (string, error) {
	if h.VMDir == "" {
		return api.InstanceStopped, nil
	}
	return vmState(ctx, h.VMDir)
}

// Terminate stops the VM and removes the recovery instance's directory.
func (q *QEMU) Terminate(ctx context.Context, h api.ProviderHandle) error {
	if h.VMDir != "" {
		if err := q.stopVM(ctx, h.VMDir); err != nil {
			return err
		}
	}
	if h.Dir != "" {
		if err := os.RemoveAll(h.Dir); err != nil {
			return fmt.Errorf("remove the recovery instance's files: %w", err)
		}
	}
	return nil
}

// Resume runs a VM that was launched paused (start after launch off) or paused since.
func (q *QEMU) Resume(ctx context.Context, h api.ProviderHandle) error {
	if h.VMDir == "" {
		return refuse("the instance has no VM")
	}
	vm, err := q.attach(h.VMDir)
	if errors.Is(err, qemu.ErrNotRunning) {
		return refuse("the instance's VM is off (powered off from inside, or stopped): terminate it and launch again")
	}
	if err != nil {
		return err
	}
	st, err := vm.Status(ctx)
	if err != nil {
		return err
	}
	if st == qemu.StateRunning {
		return nil
	}
	return vm.Continue(ctx)
}
