package launch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Existing launches into a registered instance: its disks (image files or block devices
// on the control plane's host) get only the blocks that differ from the PIT, then it
// runs as a QEMU VM. It accepts an instance only while it is stopped, tagged
// AWSDRS=AllowLaunchingIntoThisInstance (or LIFEBOAT=…), boots the way the server's
// launch settings say, and has a disk at least as large as each volume; anything else
// is refused with the reason, before anything is written.
type Existing struct{ qemu *QEMU }

// Name is "existing-instance".
func (e *Existing) Name() string { return api.ProviderExistingInstance }

// InstanceDir is where an instance's VM keeps its state (vm/) and kernel (boot/).
func (e *Existing) InstanceDir(id string) string { return filepath.Join(e.qemu.opts.InstanceDir, id) }

func (e *Existing) vmDir(id string) string { return filepath.Join(e.InstanceDir(id), "vm") }

// Running reports whether the instance's VM runs on this host.
func (e *Existing) Running(ctx context.Context, in api.Instance) (bool, error) {
	st, err := vmState(ctx, e.vmDir(in.ID))
	return st == api.InstanceRunning, err
}

// CheckTarget says why a launch into the instance is refused, or nil.
func (e *Existing) CheckTarget(ctx context.Context, in api.Instance, s api.LaunchSettings, volumes []Volume) error {
	if !api.AllowsLaunchInto(in.Tags) {
		return refuse("instance %s (%s) does not allow launching into it: tag it %s=%s (lifeboat instances tag %s %s=%s)",
			in.ID, in.Name, api.LaunchIntoTagDRS, api.LaunchIntoTagValue, in.ID, api.LaunchIntoTagDRS, api.LaunchIntoTagValue)
	}
	running, err := e.Running(ctx, in)
	if err != nil {
		return fmt.Errorf("state of instance %s: %w", in.ID, err)
	}
	if running {
		return refuse("instance %s (%s) is not stopped: stop it first (lifeboat instances stop %s)", in.ID, in.Name, in.ID)
	}
	if in.BootMode != s.BootMode {
		return refuse("instance %s (%s) boots %s and the server's launch settings say %s: the boot modes must match (lifeboat settings launch set --boot-mode %s)",
			in.ID, in.Name, in.BootMode, s.BootMode, in.BootMode)
	}
	if len(in.Disks) < len(volumes) {
		return refuse("instance %s (%s) has %d disks and the PIT %d volumes: it needs a disk per volume", in.ID, in.Name, len(in.Disks), len(volumes))
	}
	for i, v := range volumes {
		d := in.Disks[i].Path
		size, _, err := diskSize(d)
		if err != nil {
			return refuse("disk %s of instance %s: %v", d, in.ID, err)
		}
		if size < v.SizeBytes {
			return refuse("disk %s of instance %s holds %d bytes and volume %s needs %d: the instance's disk is too small", d, in.ID, size, v.Name, v.SizeBytes)
		}
		if isQcow2(d) {
			return refuse("disk %s of instance %s is a qcow2 image: only raw images and block devices can be written in place", d, in.ID)
		}
	}
	return nil
}

// Plan checks the instance and plans in-place writes of the differing blocks.
func (e *Existing) Plan(ctx context.Context, req Request) (Plan, error) {
	if req.Target == nil {
		return Plan{}, refuse("launch settings name no instance to launch into: set one (lifeboat settings launch set --target-instance inst-…)")
	}
	if err := e.qemu.checkBinary(); err != nil {
		return Plan{}, err
	}
	netw, err := checkNetwork(req.Settings)
	if err != nil {
		return Plan{}, err
	}
	if err := e.CheckTarget(ctx, *req.Target, req.Settings, req.Volumes); err != nil {
		return Plan{}, err
	}
	p := Plan{Convert: true, Network: netw}
	for i, v := range req.Volumes {
		p.Disks = append(p.Disks, Disk{Volume: v.Name, SizeBytes: v.SizeBytes, Path: req.Target.Disks[i].Path,
			Mode: WriteDiffering, Format: api.DiskRaw})
	}
	return p, nil
}

func (e *Existing) spec(in api.Instance, disks []Disk, s api.LaunchSettings, isolated bool, seed string) vmSpec {
	return vmSpec{name: in.ID, dir: e.InstanceDir(in.ID), disks: disks, settings: s, isolated: isolated, seed: seed}
}

// Launch starts the instance's VM with the server's launch settings.
func (e *Existing) Launch(ctx context.Context, req Request, plan Plan, extras Extras) (Launched, error) {
	vm, paths, err := e.qemu.startVM(ctx, e.spec(*req.Target, plan.Disks, req.Settings, req.Isolated, extras.Seed))
	if err != nil {
		return Launched{}, err
	}
	l := e.qemu.launched(ctx, vm, req.Dir, paths)
	l.Handle.InstanceID = req.Target.ID
	return l, nil
}

// Adopt finds the instance's VM an interrupted launch started.
func (e *Existing) Adopt(ctx context.Context, req Request, plan Plan) (Launched, error) {
	if req.Target == nil {
		return Launched{}, ErrNotRunning
	}
	l, err := e.qemu.Adopt(ctx, Request{Dir: e.InstanceDir(req.Target.ID)}, plan)
	if err != nil {
		return l, err
	}
	l.Handle.Dir, l.Handle.InstanceID = req.Dir, req.Target.ID
	return l, nil
}

// State is the instance's VM's state.
func (e *Existing) State(ctx context.Context, h api.ProviderHandle) (string, error) {
	return e.qemu.State(ctx, h)
}

// Terminate stops the instance's VM and removes the recovery instance's directory; the
// instance and its disks stay.
func (e *Existing) Terminate(ctx context.Context, h api.ProviderHandle) error {
	if h.VMDir != "" {
		if err := e.qemu.stopVM(ctx, h.VMDir); err != nil {
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

// Start starts an instance's VM outside any recovery (lifeboat instances start): with
// the settings of the recovery it holds, or 1 CPU, 512 MiB and an isolated network.
func (e *Existing) Start(ctx context.Context, in api.Instance, s *api.LaunchSettings, isolated bool) (Launched, error) {
	if s == nil {
		d := api.DefaultLaunchSettings(1, 512<<20)
		d.BootMode = in.BootMode
		s = &d
	}
	s.StartAfterLaunch = true
	var disks []Disk
	for _, d := range in.Disks {
		disks = append(disks, Disk{Path: d.Path, Format: api.DiskRaw})
	}
	if err := e.qemu.checkBinary(); err != nil {
		return Launched{}, err
	}
	vm, paths, err := e.qemu.startVM(ctx, e.spec(in, disks, *s, isolated, ""))
	if err != nil {
		return Launched{}, err
	}
	l := e.qemu.launched(ctx, vm, "", paths)
	l.Handle.InstanceID = in.ID
	return l, nil
}

// Stop stops an instance's VM (nothing when it is not running).
func (e *Existing) Stop(ctx context.Context, in api.Instance) error {
	err := e.qemu.stopVM(ctx, e.vmDir(in.ID))
	if errors.Is(err, ErrNotRunning) {
		return nil
	}
	return err
}

// Resume runs the instance's VM launched paused.
func (e *Existing) Resume(ctx context.Context, h api.ProviderHandle) error {
	return e.qemu.Resume(ctx, h)
}
