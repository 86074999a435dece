package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/freeze"
	"github.com/lifeboat-dr/lifeboat/internal/tracker"
)

// volume is one replicated volume and what the agent keeps for it.
type volume struct {
	api.Volume
	dev    *tracker.Volume // open for direct reads
	device bool            // a block device (eBPF can track it), not an image file
	kdev   uint32          // kernel dev_t of a block device
	dirty  *tracker.DirtySet
	table  *tracker.HashTable
	mounts []freeze.Mount
}

// skipDevice says which kernel block devices discovery leaves out.
func skipDevice(name string) bool {
	for _, p := range []string{"loop", "ram", "zram", "sr", "fd", "nbd", "dm-", "md"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// discover lists the volumes to replicate: the paths given, or every disk under
// /sys/block but virtual ones (loop, ram, zram, optical, device-mapper and md, which sit
// on disks that are replicated themselves).
func discover(paths []string) ([]string, error) {
	if len(paths) > 0 {
		return paths, nil
	}
	entries, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, fmt.Errorf("discover volumes: %w", err)
	}
	var out []string
	for _, e := range entries {
		if skipDevice(e.Name()) {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "size")); err == nil && strings.TrimSpace(string(b)) == "0" {
			continue // an empty slot (card reader, …)
		}
		out = append(out, "/dev/"+e.Name())
	}
	sort.Strings(out)
	if len(out) == 0 {
		return nil, errors.New("no disks found under /sys/block: name the volumes to replicate with --volume")
	}
	return out, nil
}

// volumeName is a volume's stable name: a device's kernel name (vda, nvme0n1), or an
// image file's base name.
func volumeName(path string) string {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	return filepath.Base(path)
}

// openVolumes opens the volumes for direct reads and describes them.
func openVolumes(paths []string) ([]*volume, error) {
	var out []*volume
	seen := map[string]bool{}
	for _, p := range paths {
		tv, err := tracker.OpenVolume(p)
		if err != nil {
			closeVolumes(out)
			return nil, fmt.Errorf("open volume %s: %w", p, err)
		}
		v := &volume{Volume: api.Volume{Name: volumeName(p), Path: p, SizeBytes: tv.Size()}, dev: tv, device: tv.IsDevice()}
		if seen[v.Name] {
			tv.Close()
			closeVolumes(out)
			return nil, fmt.Errorf("two volumes are named %s: give image files distinct names", v.Name)
		}
		seen[v.Name] = true
		if v.device {
			if v.kdev, err = tracker.KernelDev(p); err != nil {
				tv.Close()
				closeVolumes(out)
				return nil, err
			}
			v.MajorMinor = fmt.Sprintf("%d:%d", v.kdev>>20, v.kdev&(1<<20-1))
			if ms, err := freeze.MountsOf([]string{p}); err == nil {
				v.mounts = ms
				for _, m := range ms {
					v.MountPoints = append(v.MountPoints, m.MountPoint)
				}
			}
		}
		out = append(out, v)
	}
	return out, nil
}

func closeVolumes(vs []*volume) {
	for _, v := range vs {
		v.dev.Close()
	}
}

// apiVolumes is what the control plane is told.
func apiVolumes(vs []*volume) []api.Volume {
	out := make([]api.Volume, len(vs))
	for i, v := range vs {
		out[i] = v.Volume
	}
	return out
}

// DescribeVolume reports the size, device number and mount points of a block device or
// image file named with --volume.
func DescribeVolume(path string) (api.Volume, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return api.Volume{}, err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return api.Volume{}, fmt.Errorf("--volume %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(real, &st); err != nil {
		return api.Volume{}, fmt.Errorf("--volume %s: %w", path, err)
	}
	v := api.Volume{Name: filepath.Base(real), Path: abs}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		v.SizeBytes = st.Size
	case unix.S_IFBLK:
		maj, min := unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))
		v.MajorMinor = fmt.Sprintf("%d:%d", maj, min)
		b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/size", maj, min))
		if err != nil {
			return api.Volume{}, fmt.Errorf("--volume %s: read its size: %w", path, err)
		}
		sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return api.Volume{}, fmt.Errorf("--volume %s: unreadable size %q", path, b)
		}
		v.SizeBytes = sectors * 512
		if ms, err := freeze.MountsOf([]string{real}); err == nil {
			for _, m := range ms {
				v.MountPoints = append(v.MountPoints, m.MountPoint)
			}
		}
	default:
		return api.Volume{}, fmt.Errorf("--volume %s is neither a block device nor a regular file", path)
	}
	return v, nil
}
