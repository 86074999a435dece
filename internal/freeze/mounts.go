package freeze

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is a mounted filesystem that lives on one of the server's volumes.
type Mount struct {
	// Device is the volume it lives on, as given to MountsOf.
	Device string
	// Source is the mount's source as the kernel shows it (for example /dev/vda1 or
	// /dev/mapper/vg-root: a partition of the volume or a device built on it).
	Source string
	// Major and Minor are the filesystem's device number (st_dev of its files).
	Major, Minor uint32
	// MountPoint is where it is mounted; FSType its type.
	MountPoint string
	FSType     string
}

// MountsOf returns the filesystems mounted on the given block devices: on the devices
// themselves, on their partitions, and on devices built on them (device-mapper, LVM,
// md, found through sysfs "holders"). A filesystem mounted in several places (bind
// mounts) is listed once, at its mount of the filesystem's root when there is one.
// Devices with nothing mounted simply have no entry: the caller reports them.
func MountsOf(devices []string) ([]Mount, error) {
	owner := map[uint64]string{} // device number → the volume it belongs to
	for _, d := range devices {
		var st unix.Stat_t
		if err := unix.Stat(d, &st); err != nil {
			return nil, fmt.Errorf("mounts of %s: %w", d, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFBLK {
			return nil, fmt.Errorf("mounts of %s: not a block device", d)
		}
		for _, dev := range stackedOn(unix.Major(st.Rdev), unix.Minor(st.Rdev)) {
			if _, ok := owner[dev]; !ok {
				owner[dev] = d
			}
		}
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read the mount table: %w", err)
	}
	entries, err := parseMountinfo(string(data))
	if err != nil {
		return nil, err
	}
	var out []Mount
	index := map[uint64]int{} // filesystem device number → position in out
	atRoot := map[uint64]bool{}
	for _, e := range entries {
		dev := unix.Mkdev(e.major, e.minor)
		vol, ok := owner[dev]
		if !ok && strings.HasPrefix(e.source, "/dev/") {
			// Filesystems such as btrfs show an anonymous device number; their
			// source names the block device.
			var st unix.Stat_t
			if unix.Stat(e.source, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK {
				vol, ok = owner[st.Rdev]
			}
		}
		if !ok {
			continue
		}
		m := Mount{Device: vol, Source: e.source, Major: e.major, Minor: e.minor, MountPoint: e.mountPoint, FSType: e.fsType}
		if i, seen := index[dev]; seen {
			if e.root == "/" && !atRoot[dev] {
				out[i] = m
				atRoot[dev] = true
			}
			continue
		}
		atRoot[dev] = e.root == "/"
		index[dev] = len(out)
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Mount) int { return strings.Compare(a.MountPoint, b.MountPoint) })
	return out, nil
}

// stackedOn returns the device and every block device on it: its partitions and,
// recursively, the devices that hold them (device-mapper, md).
func stackedOn(major, minor uint32) []uint64 {
	var out []uint64
	seen := map[string]bool{}
	var walk func(sysdir string)
	walk = func(sysdir string) {
		real, err := filepath.EvalSymlinks(sysdir)
		if err != nil || seen[real] {
			return
		}
		seen[real] = true
		if dev, ok := readDevFile(filepath.Join(real, "dev")); ok {
			out = append(out, dev)
		}
		entries, _ := os.ReadDir(real)
		for _, e := range entries {
			sub := filepath.Join(real, e.Name())
			if _, err := os.Stat(filepath.Join(sub, "partition")); err == nil {
				walk(sub)
			}
		}
		holders, _ := os.ReadDir(filepath.Join(real, "holders"))
		for _, h := range holders {
			walk(filepath.Join(real, "holders", h.Name()))
		}
	}
	dir := fmt.Sprintf("/sys/dev/block/%d:%d", major, minor)
	walk(dir)
	if len(out) == 0 {
		out = append(out, unix.Mkdev(major, minor))
	}
	return out
}

func readDevFile(path string) (uint64, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	a, b, ok := strings.Cut(strings.TrimSpace(string(data)), ":")
	ma, err1 := strconv.ParseUint(a, 10, 32)
	mi, err2 := strconv.ParseUint(b, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, false
	}
	return unix.Mkdev(uint32(ma), uint32(mi)), true
}

type mountEntry struct {
	major, minor uint32
	root         string
	mountPoint   string
	fsType       string
	source       string
}

// parseMountinfo parses /proc/self/mountinfo (see proc(5)):
//
//	36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
func parseMountinfo(text string) ([]mountEntry, error) {
	var out []mountEntry
	for n, line := range strings.Split(text, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if sep < 6 || len(f) < sep+3 {
			return nil, fmt.Errorf("mount table line %d is malformed: %q", n+1, line)
		}
		a, b, ok := strings.Cut(f[2], ":")
		ma, err1 := strconv.ParseUint(a, 10, 32)
		mi, err2 := strconv.ParseUint(b, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("mount table line %d has a bad device number %q", n+1, f[2])
		}
		out = append(out, mountEntry{
			major: uint32(ma), minor: uint32(mi),
			root:       unescape(f[3]),
			mountPoint: unescape(f[4]),
			fsType:     f[sep+1],
			source:     unescape(f[sep+2]),
		})
	}
	return out, nil
}

// unescape undoes mountinfo's octal escapes (\040 is a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
