package launch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Image writes a recovery's disks where its launch settings say (a directory of sparse
// images, or block devices) and stops there: the "instance" is the disks, for an
// orchestrator outside Lifeboat to boot.
type Image struct{ opts Options }

// Name is "image".
func (p *Image) Name() string { return api.ProviderImage }

// imageName makes a volume name safe as a file name.
func imageName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, strings.TrimLeft(s, "."))
}

// Plan places one image per volume in the target directory (by default the recovery
// instance's own), or one volume per block device, refusing devices that are missing
// or too small.
func (p *Image) Plan(_ context.Context, req Request) (Plan, error) {
	t := req.Settings.ImageTarget
	plan := Plan{Convert: true}
	if req.Settings.IP != "" {
		plan.Network = &GuestNetwork{Address: req.Settings.IP}
	}
	if t != nil && len(t.Devices) > 0 {
		if len(t.Devices) < len(req.Volumes) {
			return Plan{}, refuse("the image target lists %d devices for %d volumes: give one device per volume", len(t.Devices), len(req.Volumes))
		}
		for i, v := range req.Volumes {
			dev := t.Devices[i]
			size, fi, err := diskSize(dev)
			if err != nil {
				return Plan{}, refuse("image target device %s: %v", dev, err)
			}
			if fi.Mode()&os.ModeDevice == 0 {
				return Plan{}, refuse("image target %s is not a block device: give block devices, or a directory (imageTarget.dir)", dev)
			}
			if size < v.SizeBytes {
				return Plan{}, refuse("image target device %s holds %d bytes and volume %s needs %d: the target disk is too small", dev, size, v.Name, v.SizeBytes)
			}
			plan.Disks = append(plan.Disks, Disk{Volume: v.Name, SizeBytes: v.SizeBytes, Path: dev, Mode: WriteDevice, Format: api.DiskRaw})
		}
		return plan, nil
	}
	dir := filepath.Join(req.Dir, "disks")
	if t != nil && t.Dir != "" {
		dir = t.Dir
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return Plan{}, refuse("image target directory %s does not exist: create it first", dir)
		}
	}
	for i, v := range req.Volumes {
		name := fmt.Sprintf("%s-disk%d-%s.raw", req.RecoveryInstanceID, i, imageName(v.Name))
		plan.Disks = append(plan.Disks, Disk{Volume: v.Name, SizeBytes: v.SizeBytes, Path: filepath.Join(dir, name),
			Mode: WriteFresh, Format: req.Settings.DiskFormat})
	}
	return plan, nil
}

// Launch converts images to their format; nothing runs.
func (p *Image) Launch(ctx context.Context, req Request, plan Plan, _ Extras) (Launched, error) {
	paths, err := finishDisks(ctx, plan.Disks)
	if err != nil {
		return Launched{}, err
	}
	return Launched{Handle: api.ProviderHandle{Host: p.opts.Host, Dir: req.Dir, Disks: paths}, State: api.InstanceStopped}, nil
}

// Adopt: an image launch leaves nothing running; a launch interrupted is done again.
func (p *Image) Adopt(context.Context, Request, Plan) (Launched, error) {
	return Launched{}, ErrNotRunning
}

// State is STOPPED while the images exist.
func (p *Image) State(_ context.Context, h api.ProviderHandle) (string, error) {
	for _, d := range h.Disks {
		if _, err := os.Stat(d); err != nil {
			return "", fmt.Errorf("disk %s of the recovery instance: %w", d, err)
		}
	}
	return api.InstanceStopped, nil
}

// Terminate removes the images it wrote (block devices are left as they are) and the
// recovery instance's directory.
func (p *Image) Terminate(_ context.Context, h api.ProviderHandle) error {
	for _, d := range h.Disks {
		fi, err := os.Lstat(d)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if err := os.Remove(d); err != nil {
			return fmt.Errorf("remove image %s: %w", d, err)
		}
	}
	if h.Dir != "" {
		if err := os.RemoveAll(h.Dir); err != nil {
			return fmt.Errorf("remove the recovery instance's files: %w", err)
		}
	}
	return nil
}
